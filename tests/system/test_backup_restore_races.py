"""A local restore run by root writes nothing outside its target, whatever another
user does in the target meanwhile.

The attack: root restores into a tree another user owns (a home directory, a
live share); that user swaps one of its directories for a symlink to a
directory outside the target (here ``outside``, root's, standing for /etc)
while the restore writes into it.  A restore that looks paths up by name
writes, chowns or chmods through the symlink.  Checked with real processes on
the real file system, no mocks:

- a racing process, run as another user (uid 1500, ``setpriv``), that keeps
  swapping the target's directories for symlinks to ``outside`` and back while
  restores run (many files, several rounds, in-process and with a writer
  process): ``outside`` is unchanged to the byte, mode, owner, ctime and
  xattr;
- the same swap at a known moment (after the first files of a directory are
  written: the restore's own progress callback), in-process and with the
  writer process, for a whole restore and for ``--include``;
- symlinks planted before the restore at every kind of place: the target
  itself and a directory on the way to it (refused unless root's own in a
  directory only root can write), a directory below the target, a file's
  name, a special file's name, both names of a hardlink, and a hardlink of
  an outside file standing at a file's name.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from remotevss.backup.backup import run_backup
from remotevss.backup.progress import Progress
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.restore import restore
from remotevss.backup.snapshot_source import LocalSource
from tests.support.backup_cli import CLI, rand

USER = 1500  # the other user
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root restores; another uid "
                                "owns the tree and attacks")
#: The attacker's interpreter: the system's, which any uid may run (the venv may
#: lie below a directory only root can enter).
PYTHON = os.path.realpath(sys.executable)

Snapshot = dict[str, tuple[Any, ...]]


def snapshot(root: Path) -> Snapshot:
    """Everything about ``root`` and all below it that a write, chown, chmod, utime,
    setxattr, create or unlink would change (ctime catches any metadata change,
    even to the same value)."""
    out: Snapshot = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        data = None
        if stat.S_ISREG(st.st_mode):
            data = hashlib.sha256(path.read_bytes()).hexdigest()
        xattrs = sorted(os.listxattr(path, follow_symlinks=False))
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                            st.st_mtime_ns, st.st_ctime_ns, st.st_nlink,
                                            data, xattrs)
    return out


def make_outside(tmp_path: Path) -> Path:
    """Root's directory outside the target (standing for /etc), with a file and a
    subdirectory whose names the point also has."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "f000").write_bytes(b"root's own file")
    (outside / "sub" / "g00").write_bytes(b"root's other file")
    (outside / "victim").write_bytes(b"do not touch")
    for p in (outside, outside / "sub"):
        os.chmod(p, 0o755)
    os.chmod(outside / "victim", 0o600)
    return outside


def source_tree(src: Path, dirs: int, files: int) -> None:
    """``dirs`` directories of ``files`` small files and a subdirectory each, owned by
    the other user with modes that would show on ``outside`` if root set them there
    (0777, set-gid), plus an xattr."""
    for i in range(dirs):
        d = src / f"d{i}"
        (d / "sub").mkdir(parents=True)
        for j in range(files):
            (d / f"f{j:03d}").write_bytes(rand(f"{i}/{j}", 300 + j))
        for j in range(files // 4):
            (d / "sub" / f"g{j:02d}").write_bytes(rand(f"{i}/sub/{j}", 200))
        os.setxattr(d, "user.tag", b"from the point")
        for p in (d, d / "sub"):
            os.chmod(p, 0o2777)
            os.chown(p, USER, USER)


def backed_up(tmp_path: Path, src: Path) -> Path:
    repo_path = tmp_path / "repo"
    init_repo(repo_path, encrypted=False)
    with Repository(repo_path, "write") as repo:
        run_backup(repo, [LocalSource(src, "s")], processes=0)
    return repo_path


def users_tree(target: Path, dirs: int) -> None:
    """The tree the restore goes over: the target and its directories exist and
    belong to the other user, who can therefore rename and replace them."""
    for i in range(dirs):
        (target / f"d{i}" / "sub").mkdir(parents=True, exist_ok=True)
    for p in [target, *target.rglob("*")]:
        os.chown(p, USER, USER)
        os.chmod(p, 0o755)


ATTACKER = r"""
import os, signal, sys
target, outside, names = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
swaps = 0
print("ready", flush=True)
while not stop:
    for n in names:
        away = f"{n}.away{swaps}"
        try:  # the real directory out of the way, a symlink to outside in its place
            os.rename(n, away, src_dir_fd=target, dst_dir_fd=target)
        except OSError:
            continue
        try:
            os.symlink(outside, n, dir_fd=target)
            swaps += 1
        except OSError:
            continue
        for _ in range(20):  # keep it there a while (the restore's window)
            pass
        try:  # and back, so later files are looked up through the real one again
            if os.readlink(n, dir_fd=target) == outside:
                os.unlink(n, dir_fd=target)
                os.rename(away, n, src_dir_fd=target, dst_dir_fd=target)
        except OSError:
            pass
print(swaps, flush=True)
"""


def start_attacker(target: Path, outside: Path, names: list[str]) -> subprocess.Popen[str]:
    """The other user's racing process, working on the target through a descriptor
    it inherits (it need not reach the target by name)."""
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = subprocess.Popen(
            ["setpriv", "--reuid", str(USER), "--regid", str(USER), "--clear-groups",
             PYTHON, "-c", ATTACKER, str(fd), str(outside), *names],
            stdout=subprocess.PIPE, text=True, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop_attacker(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return int(out.split()[-1])


def test_a_racing_user_swapping_directories_for_symlinks_reaches_nothing_outside(
        tmp_path: Path) -> None:
    """Rounds of restores (2,400 files each, in-process and with a writer process)
    over the other user's tree while that user's process keeps swapping its
    directories for symlinks to ``outside``: ``outside`` stays exactly as it was
    (no file created or written, nothing chowned, chmodded, touched or given an
    xattr), and every round the attacker did swap."""
    dirs, files = 4, 480
    src = tmp_path / "src"
    source_tree(src, dirs, files)
    repo_path = backed_up(tmp_path, src)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    names = [f"d{i}" for i in range(dirs)]
    total_swaps = 0
    with Repository(repo_path, "read") as repo:
        point = repo.find_point("latest")
        for rnd, processes in enumerate((0, 1, 0, 1, 0, 1)):
            target = tmp_path / f"home{rnd}"
            users_tree(target, dirs)
            attacker = start_attacker(target, outside, names)
            try:
                result = restore(repo, point, target, "s", processes=processes,
                                 pool_from=(0, 0) if processes else (10**9, 1 << 62))
            finally:
                swaps = stop_attacker(attacker)
            total_swaps += swaps
            assert swaps > 0, f"round {rnd}: the attacker never swapped"
            assert snapshot(outside) == before, (
                f"round {rnd} ({processes} writer): the restore reached outside the "
                f"target after {swaps} swaps; errors: {result.errors[:3]}")
            # What the restore wrote is in the target (under the names it has now);
            # what it did not is named as an error (a file, or a directory of it).
            written = sum(name.startswith("f") for _d, _s, names_ in os.walk(target)
                          for name in names_)
            failed = [e["path"].rstrip("/") for e in result.errors]
            expected = sum(1 for i in range(dirs) for j in range(files)
                           if not any(f"s/d{i}/f{j:03d}" == f or f"s/d{i}/f{j:03d}".startswith(
                               f + "/") for f in failed))
            assert written >= expected, (written, expected, result.errors[:3])
    assert total_swaps >= 6


def swapping_progress(target: Path, outside: Path, victim: str, after: int
                      ) -> tuple[Progress, list[str]]:
    """A progress sink (the restore's own callback) that, once ``after`` files are
    done, moves the directory ``victim`` of ``target`` away and puts a symlink to
    ``outside`` in its place: the swap at a known moment."""
    done: list[str] = []

    class Swapping(Progress):
        def file_done(self, nbytes: int = 0) -> None:
            super().file_done(nbytes)
            if not done and self.files >= after:
                os.rename(target / victim, target / (victim + ".away"))
                os.symlink(outside, target / victim)
                done.append(victim)

    return Swapping(enabled=False), done


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "with-a-writer"])
@pytest.mark.parametrize("how", ["whole", "include"])
def test_a_directory_swapped_for_a_symlink_mid_restore_is_not_followed(
        tmp_path: Path, processes: int, how: str) -> None:
    """The swap at a known moment, after the first files of ``d0`` are written:
    the rest of ``d0`` (its files, its subdirectory, its mode, owner, xattr and
    times, set at the end) goes to the directory the restore opened -- now
    ``d0.away`` -- and nothing to ``outside``; the symlink is left alone."""
    from remotevss.backup.restore_items import restore_items

    src = tmp_path / "src"
    source_tree(src, 1, 1200)  # a writer starts from 500 files on (--include)
    repo_path = backed_up(tmp_path, src)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    target = tmp_path / "target"
    target.mkdir()
    where = target / "s" if how == "include" else target
    progress, swapped = swapping_progress(where, outside, "d0", after=5)
    pool_from = (0, 0) if processes else (10**9, 1 << 62)
    with Repository(repo_path, "read") as repo:
        point = repo.find_point("latest")
        if how == "whole":
            result = restore(repo, point, target, "s", progress, processes, pool_from)
        else:
            result = restore_items(repo, point, target, "", ["s/d0"], progress, processes)
    assert swapped == ["d0"]
    assert snapshot(outside) == before, "the restore wrote through the swapped-in symlink"
    assert os.readlink(where / "d0") == str(outside)
    assert not result.errors, result.errors[:3]
    moved = where / "d0.away"
    assert sorted(p.name for p in moved.iterdir()) == sorted(
        p.name for p in (src / "d0").iterdir())
    for p in (src / "d0").rglob("*"):
        if p.is_file():
            assert (moved / p.relative_to(src / "d0")).read_bytes() == p.read_bytes()
    st = os.lstat(moved)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o2777, USER)
    assert os.getxattr(moved, "user.tag") == b"from the point"


def restore_cli(repo_path: Path, *args: str | Path, check: int = 0
                ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, "restore", "latest", "--repo", str(repo_path),
                           *map(str, args)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == check, (proc.returncode, proc.stderr)
    return proc


def test_a_target_through_another_users_symlink_is_refused(tmp_path: Path) -> None:
    """``--to`` that is, or passes through, a symlink another user owns (planted in a
    directory that user can write) is refused before anything is written; root's own
    symlink in a directory only root can write is followed, as before; root's
    symlink in a directory others can write (they could have moved it there) is
    refused."""
    src = tmp_path / "src"
    source_tree(src, 1, 3)
    repo_path = backed_up(tmp_path, src)
    outside = make_outside(tmp_path)
    before = snapshot(outside)
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, USER, USER)
    for name in ("restore", "via"):
        os.symlink(outside, home / name)
        os.lchown(home / name, USER, USER)

    for to in (home / "restore", home / "via" / "new", home / "via" / "sub"):
        proc = restore_cli(repo_path, "--path", "s", "--to", to, check=1)
        assert "not followed" in proc.stderr, proc.stderr
        assert snapshot(outside) == before, f"--to {to} was followed"
        proc = restore_cli(repo_path, "--include", "s/d0/f000", "--to", to, check=1)
        assert snapshot(outside) == before, f"--to {to} --include was followed"

    shared = tmp_path / "shared"  # like /tmp
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)
    os.symlink(outside / "sub", shared / "moved-here")
    proc = restore_cli(repo_path, "--path", "s", "--to", shared / "moved-here", check=1)
    assert "not followed" in proc.stderr
    assert snapshot(outside) == before

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    real = tmp_path / "real"
    os.symlink(real, mine / "link")
    restore_cli(repo_path, "--path", "s", "--to", mine / "link")
    assert (real / "d0" / "f000").read_bytes() == (src / "d0" / "f000").read_bytes()
    assert os.path.islink(mine / "link")


def plant(where: Path, name: str, to: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    os.symlink(to, where / name)


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "with-a-writer"])
def test_symlinks_planted_at_every_place_below_the_target_are_replaced(
        tmp_path: Path, processes: int) -> None:
    """Before the restore: symlinks to ``outside`` (or into it) stand where the point
    has a directory, a deeper directory, a file, a FIFO, a symlink and both names
    of a hardlink, and a hardlink of an outside file stands at a file's name.
    Each is replaced by what the point has; ``outside`` is unchanged."""
    src = tmp_path / "src"
    source_tree(src, 2, 600)
    os.mkfifo(src / "d0" / "fifo", 0o640)
    os.symlink("f001", src / "d0" / "ln")
    os.link(src / "d0" / "f002", src / "d1" / "hl")  # d1/hl: the second name
    repo_path = backed_up(tmp_path, src)
    outside = make_outside(tmp_path)
    target = tmp_path / "target"
    plant(target, "d1", outside)  # a directory
    plant(target / "d0", "sub", outside / "sub")  # a directory below another
    plant(target / "d0", "f000", outside / "f000")  # a file's name
    plant(target / "d0", "fifo", outside / "victim")  # a FIFO's name
    plant(target / "d0", "ln", outside / "victim")  # a symlink's name
    plant(target / "d0", "f002", outside / "victim")  # a hardlink's first name
    before = snapshot(outside)
    os.link(outside / "victim", target / "d0" / "f003")  # an outside file's hardlink
    with Repository(repo_path, "read") as repo:
        result = restore(repo, repo.find_point("latest"), target, "s", processes=processes,
                         pool_from=(0, 0) if processes else (10**9, 1 << 62))
    assert not result.errors, result.errors[:3]
    after = snapshot(outside)
    # The planted hardlink was removed from the target: outside/victim's ctime
    # changed with its link count (back to 1); nothing else of it did.
    v_after, v_before = after.pop("victim"), before.pop("victim")
    assert (v_after[:5], v_after[6:]) == (v_before[:5], v_before[6:])
    assert after == before
    assert (outside / "victim").read_bytes() == b"do not touch"
    for p in (target / "d1", target / "d0" / "sub"):
        assert not p.is_symlink() and p.is_dir()
    assert stat.S_ISFIFO(os.lstat(target / "d0" / "fifo").st_mode)
    assert os.readlink(target / "d0" / "ln") == "f001"
    a, b = os.lstat(target / "d0" / "f002"), os.lstat(target / "d1" / "hl")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert os.lstat(target / "d0" / "f003").st_ino != os.lstat(outside / "victim").st_ino
    for p in src.rglob("*"):
        if p.is_file() and not p.is_symlink() and not stat.S_ISFIFO(os.lstat(p).st_mode):
            assert (target / p.relative_to(src)).read_bytes() == p.read_bytes(), p

