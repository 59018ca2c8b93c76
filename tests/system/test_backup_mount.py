"""``remotevss backup mount REPO MOUNTPOINT`` with real FUSE (/dev/fuse, libfuse3).

Two recovery points of a directory with every kind of entry are mounted by the
real CLI in its own process; checked with ordinary file operations:

* points/<id>, by-time/<UTC time> and latest list and resolve;
* every file reads back byte for byte as it was at its point (a multi-chunk
  file, a sparse file with holes, a hardlink, an empty file), ``cp`` copies
  one out, and stat shows the kept sizes, mtimes (ns), modes, owners;
* writing, creating, removing and setting xattrs are refused (EROFS/EACCES);
* ``backup list`` and a new ``backup run`` work while mounted (shared lock),
  and the new point appears; ``prune`` is refused as locked;
* SIGINT and SIGTERM unmount (nothing left in /proc/mounts) and end the
  command with 0.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remotevss.backup.mount import time_name
from tests.support.backup_cli import cli, rand
from tests.support.backup_mount import Mount, mounted

_missing = [] if Path("/dev/fuse").exists() else ["/dev/fuse"]
_missing += [] if shutil.which("cp") else ["cp"]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (FUSE mount)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing: {_missing}"),
]





def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """path -> (mode, uid, gid, size, mtime_ns, data or link target) of everything."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                data: object = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            else:
                data = None
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            mtime = st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else 0
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, size, mtime, data)
    return out


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "docs" / "a.txt").write_bytes(b"first version\n" * 100)
    (src / "docs" / "deep" / "b.bin").write_bytes(rand("b", 70_000))
    (src / "big.bin").write_bytes(rand("big", 9 << 20))  # several chunks
    with open(src / "sparse.img", "wb") as f:
        f.truncate(16 << 20)
        f.seek(5 << 20)
        f.write(rand("island", 300_000))
    (src / "empty").touch()
    os.link(src / "docs" / "a.txt", src / "hard.txt")
    os.symlink("docs/a.txt", src / "link")
    os.chmod(src / "docs" / "deep" / "b.bin", 0o640)
    os.chown(src / "docs" / "deep" / "b.bin", 1234, 4321)
    os.setxattr(src / "empty", "user.note", b"kept")
    old = 1_500_000_000_123_456_789
    os.utime(src / "docs" / "a.txt", ns=(old, old))
    return src


@pytest.fixture
def mount_env(tmp_path: Path, source: Path) -> Iterator[tuple[Path, Path, list[dict[str, tuple[object, ...]]]]]:
    repo = tmp_path / "repo"
    cli("init", "--repo", repo)
    states = []
    cli("run", "--repo", repo, source)
    states.append(snapshot(source))
    (source / "docs" / "a.txt").write_bytes(b"second version\n")
    (source / "new.txt").write_bytes(b"only in point 2")
    cli("run", "--repo", repo, source)
    states.append(snapshot(source))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield repo, mnt, states


def test_points_browse_read_and_stat(mount_env: tuple[Path, Path, list[dict[str, tuple[object, ...]]]],
                                     tmp_path: Path) -> None:
    repo, mnt, states = mount_env
    m = Mount(repo, mnt)
    try:
        assert sorted(os.listdir(mnt)) == ["by-time", "latest", "points"]
        assert sorted(os.listdir(mnt / "points")) == ["1", "2"]
        assert os.readlink(mnt / "latest") == "points/2"
        times = cli("list", "--repo", repo, "--json").stdout
        import json
        listed = json.loads(times)
        names = sorted(os.listdir(mnt / "by-time"))
        assert len(names) == 2
        for name, point in zip(names, listed, strict=True):
            assert name.startswith(time_name(point["time_ns"]))
            assert (mnt / "by-time" / name).resolve() == mnt / "points" / str(point["id"])

        for pid, state in zip(("1", "2"), states, strict=True):
            view = snapshot(mnt / "points" / pid / "src")
            assert view == state, pid
        # as the points were: a.txt changed in 2; the hardlink follows its first name
        assert (mnt / "points/1/src/docs/a.txt").read_bytes() == b"first version\n" * 100
        assert (mnt / "points/1/src/hard.txt").read_bytes() == b"first version\n" * 100
        assert (mnt / "latest/src/docs/a.txt").read_bytes() == b"second version\n"
        assert not (mnt / "points/1/src/new.txt").exists()
        st = (mnt / "points/1/src/docs/a.txt").stat()
        assert st.st_mtime_ns == 1_500_000_000_123_456_789
        st = (mnt / "points/1/src/docs/deep/b.bin").stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 4321)
        sparse = (mnt / "points/1/src/sparse.img").stat()
        assert sparse.st_size == 16 << 20 and sparse.st_blocks * 512 < 1 << 20
        assert os.getxattr(mnt / "points/1/src/empty", "user.note") == b"kept"

        # Copied out with ordinary tools: cp (with -p: times and modes), and ls -l.
        out = tmp_path / "copied.bin"
        subprocess.run(["cp", "-p", str(mnt / "points/1/src/big.bin"), str(out)], check=True)
        assert out.read_bytes() == rand("big", 9 << 20)
        assert out.stat().st_mtime_ns == states[0]["big.bin"][4]
        ls = subprocess.run(["ls", "-l", str(mnt / "points/1/src/docs/deep")],
                            capture_output=True, text=True, check=True).stdout
        assert "-rw-r----- 1 1234 4321 70000" in ls, ls
        # a read in the middle of a file, across a chunk boundary
        with open(mnt / "points/1/src/big.bin", "rb") as f:
            f.seek((4 << 20) - 10)
            assert f.read(1 << 20) == rand("big", 9 << 20)[(4 << 20) - 10:(5 << 20) - 10]
    finally:
        code, err = m.stop()
        m.cleanup()
    assert code == 0, err
    assert "unmounted" in err
    assert not mounted(mnt)


def test_read_only_refusals(mount_env: tuple[Path, Path, list[dict[str, tuple[object, ...]]]]) -> None:
    repo, mnt, _states = mount_env
    m = Mount(repo, mnt)
    try:
        base = mnt / "points" / "1" / "src"
        refused = (errno.EROFS, errno.EACCES, errno.EPERM)
        attempts = [
            lambda: os.open(base / "docs" / "a.txt", os.O_RDWR),
            lambda: os.open(base / "created.txt", os.O_WRONLY | os.O_CREAT, 0o644),
            lambda: (base / "docs" / "a.txt").unlink(),
            lambda: (base / "newdir").mkdir(),
            lambda: os.rename(base / "empty", base / "moved"),
            lambda: os.chmod(base / "empty", 0o777),
            lambda: os.utime(base / "empty", ns=(1, 1)),
            lambda: os.setxattr(base / "empty", "user.x", b"y"),
            lambda: (mnt / "points" / "3").mkdir(),
        ]
        for i, attempt in enumerate(attempts):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno in refused, (i, info.value)
        assert (base / "docs" / "a.txt").read_bytes() == b"first version\n" * 100
        assert sorted(os.listdir(base)) == ["big.bin", "docs", "empty", "hard.txt", "link",
                                            "sparse.img"]
    finally:
        code, err = m.stop(signal.SIGTERM)
        m.cleanup()
    assert code == 0, err
    assert not mounted(mnt)


def test_repository_stays_usable_while_mounted(
        mount_env: tuple[Path, Path, list[dict[str, tuple[object, ...]]]], source: Path) -> None:
    repo, mnt, _states = mount_env
    m = Mount(repo, mnt)
    try:
        listed = cli("list", "--repo", repo)
        assert len(listed.stdout.strip().splitlines()) == 2
        (source / "third.txt").write_bytes(b"point three")
        cli("run", "--repo", repo, source)  # a writer: shared lock + write.lock
        deadline = time.monotonic() + 10
        while "3" not in os.listdir(mnt / "points"):
            assert time.monotonic() < deadline, "the new point did not appear"
            time.sleep(0.2)
        assert (mnt / "points/3/src/third.txt").read_bytes() == b"point three"
        assert os.readlink(mnt / "latest") == "points/3"
        cli("check", "--repo", repo)
        out = source.parent / "restored"
        cli("restore", "--repo", repo, "3", "--to", out)  # another reader, alongside
        assert snapshot(out / "src") == snapshot(mnt / "points/3/src")
        locked = cli("prune", "--repo", repo, "--keep-last", "1", check=5)
        assert "locked" in locked.stderr
    finally:
        code, err = m.stop(signal.SIGINT)
        m.cleanup()
    assert code == 0, err
    assert not mounted(mnt)
    cli("prune", "--repo", repo, "--keep-last", "1")  # free again after the unmount


def test_umount_ends_the_command(
        mount_env: tuple[Path, Path, list[dict[str, tuple[object, ...]]]]) -> None:
    repo, mnt, _states = mount_env
    m = Mount(repo, mnt)
    try:
        twice = cli("mount", repo, mnt, check=1)
        assert "already mounted" in twice.stderr
        subprocess.run(["umount", str(mnt)], check=True)
        _out, err = m.proc.communicate(timeout=30)
        assert m.proc.returncode == 0, err
        assert "unmounted" in err
    finally:
        m.cleanup()
    assert not mounted(mnt)


def test_bad_mount_points_are_refused(mount_env: tuple[Path, Path, list[dict[str, tuple[object, ...]]]],
                                      tmp_path: Path) -> None:
    repo, _mnt, _states = mount_env
    r = cli("mount", repo, tmp_path / "missing", check=1)
    assert "must be an existing directory" in r.stderr
    r = cli("mount", tmp_path / "norepo", tmp_path, check=1)
    assert "no repository" in r.stderr
    r = cli("mount", repo, tmp_path, "extra", check=2)
    assert not mounted(tmp_path)


def test_a_relative_repository_path_serves_files(
        mount_env: tuple[Path, Path, list[dict[str, tuple[object, ...]]]]) -> None:
    """``backup mount ./repo MNT`` as typed in the repository's parent directory: the
    served files read (libfuse changes the directory the command runs in)."""
    repo, mnt, states = mount_env
    m = Mount(Path(repo.name), mnt, cwd=repo.parent)
    try:
        assert (mnt / "latest" / "src" / "new.txt").read_bytes() == b"only in point 2"
        assert (mnt / "points" / "1" / "src" / "docs" / "a.txt").read_bytes() == (
            states[0]["docs/a.txt"][5])
    finally:
        m.cleanup()
    assert not mounted(mnt)
