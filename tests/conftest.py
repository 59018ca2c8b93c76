"""Shared fixtures: real filesystems on loop devices, made and torn down per test.

Why real filesystems: snapshot backends depend on what the kernel does
(btrfs subvolumes, FICLONE, read-only mounts, ENOSPC); a fake would only test
our assumptions.  Tests that need them are marked ``root`` and skip with a
reason where root, mkfs.<type> or loop devices are missing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from remotevss.loopfs import MIN_SIZE_MB, MKFS
from tests.support import reaper

# Backup repositories are encrypted by default and take their passphrase from
# this variable (the CLI and the library alike); tests that are about
# passphrases set or remove it themselves.
os.environ.setdefault("REMOTEVSS_BACKUP_PASSWORD", "correct horse battery staple")
from tests.support.zfs_fuse import ZfsFuse, ZfsFuseUnavailable


class LoopFs(Protocol):
    def __call__(self, fstype: str, size_mb: int = 0) -> Path: ...


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Give the run its own temporary root and token (tests/support/reaper.py) and
    turn SIGTERM into KeyboardInterrupt, so that fixtures tear down as on Ctrl-C."""
    root = tempfile.mkdtemp(prefix="rv-", dir=tempfile.gettempdir())
    os.chmod(root, 0o755)  # noqa: S103 - it is every child's TMPDIR, smbd's users' too
    token = secrets.token_hex(8)
    config.stash[_RUN] = (token, root)
    Path(root, reaper.TOKEN_FILE).write_text(token)
    os.environ["TMPDIR"] = root
    os.environ[reaper.TOKEN_VAR] = token
    tempfile.tempdir = None
    if config.option.basetemp is None:  # tmp_path right below it: socket paths stay short
        config.option.basetemp = os.path.join(root, "t")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


_RUN = pytest.StashKey[tuple[str, str]]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture has torn down: whatever the run left is removed, and a
    run that was not interrupted fails for it (a test or fixture leaked)."""
    token, root = session.config.stash[_RUN]
    found = reaper.reap(token, root)
    if found:
        print(f"\nleft behind by this run and removed now: {found.describe()}", file=sys.stderr)
        if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RUN not in config.stash:
        return
    token, root = config.stash[_RUN]
    reaper.reap(token, root)
    if not os.environ.get("REMOTEVSS_KEEP_TMP"):
        reaper.remove_tree(Path(root))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount)")


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")


def _loop_devices_of(image: Path) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                         check=False).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line]


def _require(fstype: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount)")
    if fstype == "tmpfs":
        return
    if shutil.which(MKFS[fstype][0]) is None:
        pytest.skip(f"{MKFS[fstype][0]} is not installed")
    if not os.path.exists("/dev/loop-control") or shutil.which("losetup") is None:
        pytest.skip("no loop device support (/dev/loop-control, losetup)")


@pytest.fixture
def loopfs(tmp_path: Path) -> Iterator[LoopFs]:
    """``make(fstype, size_mb=0) -> mount point``; fstype is btrfs, xfs, ext4 or
    tmpfs (no loop device).  Sizes below the type's minimum are raised to it
    (XFS needs about 300 MB).  At teardown every mount below each mount point,
    our bind mounts included, is removed (``umount -R``) and the loop device
    is detached; a loop device left behind fails the test."""
    made: list[tuple[Path, Path | None]] = []

    def make(fstype: str, size_mb: int = 0) -> Path:
        _require(fstype)
        n = len(made)
        mnt = tmp_path / f"{fstype}{n}"
        mnt.mkdir()
        if fstype == "tmpfs":
            _run("mount", "-t", "tmpfs", "-o", f"size={max(size_mb, 16)}m", "tmpfs", str(mnt))
            made.append((mnt, None))
            return mnt
        image = tmp_path / f"{fstype}{n}.img"
        with open(image, "wb") as f:
            f.truncate(max(size_mb, MIN_SIZE_MB[fstype]) << 20)
        _run(*MKFS[fstype], str(image))
        try:
            _run("mount", "-o", "loop", str(image), str(mnt))
        except RuntimeError as exc:
            if "loop" in str(exc):
                pytest.skip(f"cannot mount a loop device here: {exc}")
            raise
        made.append((mnt, image))
        return mnt

    yield make

    leaks = []
    for mnt, image in reversed(made):
        subprocess.run(["umount", "-R", str(mnt)], capture_output=True, check=False)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-R", "-l", str(mnt)], capture_output=True, check=False)
        if image is None:
            continue
        deadline = time.monotonic() + 5
        while (devs := _loop_devices_of(image)) and time.monotonic() < deadline:
            for dev in devs:  # autoclear normally did it already
                subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
            time.sleep(0.05)
        leaks += devs
    assert not leaks, f"loop devices left behind: {leaks}"


@pytest.fixture
def subvolume() -> Callable[[Path], Path]:
    """``make(path) -> path``: create a btrfs subvolume (parents must exist)."""
    btrfsutil = pytest.importorskip("btrfsutil")

    def make(path: Path) -> Path:
        btrfsutil.create_subvolume(str(path))
        return path

    return make


class ZfsPool(Protocol):
    def __call__(self, size_mb: int = 128) -> tuple[str, Path]: ...


@pytest.fixture(scope="session")
def zfs_fuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsFuse]:
    """The zfs-fuse daemon, started once per session (skip where it cannot run).
    Stopped at the end of the session, also after Ctrl-C (pytest tears down
    session fixtures on KeyboardInterrupt)."""
    daemon = ZfsFuse(tmp_path_factory.mktemp("zfs-fuse") / "daemon.log")
    try:
        daemon.start()
    except ZfsFuseUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def zfspool(zfs_fuse: ZfsFuse, tmp_path: Path) -> Iterator[ZfsPool]:
    """``make(size_mb=128) -> (pool name, mount point)``: a pool on a file;
    destroyed at teardown, holds released first."""
    made: list[str] = []

    def make(size_mb: int = 128) -> tuple[str, Path]:
        name = f"rvt{os.getpid() % 10000}x{len(made)}{time.monotonic_ns() % 100000}"
        mnt = zfs_fuse.pool(name, tmp_path, size_mb)
        made.append(name)
        return name, mnt

    yield make
    for name in reversed(made):
        zfs_fuse.destroy_pool(name)
