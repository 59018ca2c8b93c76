"""restore_fs: the restore's file system steps, one by one, on the real file system.

Checked: ``open_target`` makes what is missing and follows only trusted symlinks
(``..`` after a symlink is the real parent, as in the kernel); ``open_dir``
replaces a symlink or file and reports whether it made the directory;
``create_file`` replaces a symlink and a hardlink of another file instead of
writing through them and refuses a directory; ``open_made`` refuses what is
not the kind it made or has a second name; ``open_parent_dir`` opens a
directory a process holds, and refuses one that is not the one named.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from remotevss.backup import restore_fs


def test_open_target_makes_and_follows_only_trusted_symlinks(tmp_path: Path) -> None:
    made = restore_fs.open_target(str(tmp_path / "a" / "b" / "c"), 0o700)
    try:
        assert made.made and not made.inherited
        st = os.fstat(made.fd)
        assert (st.st_ino, stat.S_IMODE(st.st_mode) & 0o700) == (
            os.stat(tmp_path / "a" / "b" / "c").st_ino, 0o700)
    finally:
        os.close(made.fd)
    again = restore_fs.open_target(str(tmp_path / "a" / "b" / "c"), 0o700)
    os.close(again.fd)
    assert not again.made

    os.chmod(tmp_path, 0o755)  # a directory only we can write: our symlink is followed
    os.symlink(tmp_path / "a" / "b", tmp_path / "ln")
    through = restore_fs.open_target(str(tmp_path / "ln" / ".." / "b" / "c"), 0o700)
    try:
        assert os.fstat(through.fd).st_ino == os.stat(tmp_path / "a" / "b" / "c").st_ino
    finally:
        os.close(through.fd)

    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        restore_fs.open_target(str(tmp_path / "file"), 0o700)
    os.chmod(tmp_path / "a", 0o777)  # others may write where the next symlink lies
    os.symlink(tmp_path / "a" / "b", tmp_path / "a" / "open-ln")
    with pytest.raises(restore_fs.UnsafeTarget, match="not followed"):
        restore_fs.open_target(str(tmp_path / "a" / "open-ln" / "new"), 0o700)
    assert not (tmp_path / "a" / "b" / "new").exists()


def test_open_dir_replaces_what_is_not_a_directory(tmp_path: Path) -> None:
    parent = os.open(tmp_path, restore_fs.O_DIR)
    try:
        (tmp_path / "elsewhere").mkdir()
        os.symlink(tmp_path / "elsewhere", tmp_path / "d")
        (tmp_path / "f").write_bytes(b"x")
        for name in ("d", "f", "new"):
            fd, made = restore_fs.open_dir(parent, name, 0o700)
            os.close(fd)
            assert made and stat.S_ISDIR(os.lstat(tmp_path / name).st_mode), name
        fd, made = restore_fs.open_dir(parent, "d", 0o700)
        os.close(fd)
        assert not made  # there already
        assert os.listdir(tmp_path / "elsewhere") == []
    finally:
        os.close(parent)


def test_create_file_never_writes_through_a_name(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    parent = os.open(tmp_path, restore_fs.O_DIR)
    try:
        os.symlink(outside, tmp_path / "via-symlink")
        os.link(outside, tmp_path / "via-hardlink")
        for name in ("via-symlink", "via-hardlink"):
            fd = restore_fs.create_file(parent, name, 0o600)
            os.write(fd, b"new")
            os.close(fd)
            assert (tmp_path / name).read_bytes() == b"new"
        assert outside.read_bytes() == b"keep" and os.stat(outside).st_nlink == 1
        (tmp_path / "dir").mkdir()
        with pytest.raises(IsADirectoryError, match="a directory is in the way"):
            restore_fs.create_file(parent, "dir", 0o600)
    finally:
        os.close(parent)


def test_open_made_refuses_another_kind_or_a_second_name(tmp_path: Path) -> None:
    parent = os.open(tmp_path, restore_fs.O_DIR)
    try:
        os.mkfifo(tmp_path / "fifo")
        fd = restore_fs.open_made(parent, "fifo", stat.S_IFIFO)
        os.chmod(restore_fs.fd_path(fd), 0o640)  # lands on the FIFO itself
        os.close(fd)
        assert stat.S_IMODE(os.lstat(tmp_path / "fifo").st_mode) == 0o640
        with pytest.raises(OSError, match="replaced"):
            restore_fs.open_made(parent, "fifo", stat.S_IFLNK)
        os.link(tmp_path / "fifo", tmp_path / "fifo2")
        with pytest.raises(OSError, match="replaced"):
            restore_fs.open_made(parent, "fifo", stat.S_IFIFO)
    finally:
        os.close(parent)


def test_open_parent_dir_opens_the_directory_held_and_checks_it(tmp_path: Path) -> None:
    held = os.open(tmp_path, restore_fs.O_DIR)
    try:
        st = os.fstat(held)
        os.rename(tmp_path, tmp_path.with_name(tmp_path.name + "-moved"))  # names change
        mine = restore_fs.open_parent_dir(os.getpid(), held, st.st_dev, st.st_ino)
        assert os.fstat(mine).st_ino == st.st_ino
        os.close(mine)
        with pytest.raises(OSError, match="not there any more"):
            restore_fs.open_parent_dir(os.getpid(), held, st.st_dev, st.st_ino + 1)
    finally:
        os.rename(tmp_path.with_name(tmp_path.name + "-moved"), tmp_path)
        os.close(held)
