"""A private zfs-fuse daemon and pools on files, for tests of the zfs backend.

Why zfs-fuse: the kernel here has no ZFS module, and Debian's zfs-fuse is
Sun's ZFS code (pool version 23) in user space on /dev/fuse: real ``zfs``
and ``zpool`` commands, real snapshots, clones, holds and user properties.

Rules: pools are made with ``cachefile=none`` so that nothing about them
outlives the daemon (a daemon that dies with a busy pool leaves no pool to
import at its next start); the daemon is started in the foreground as our
child and stopped by its pid only; a daemon that was already running (not
ours) is used but never stopped.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

SOCKET = "/var/run/zfs/zfs_socket"
POOL_MIN_MB = 64  # zpool refuses vdevs below 64 MiB


class ZfsFuseUnavailable(Exception):
    """Why the tests cannot run here (a skip reason)."""


def _run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _daemon_answers() -> bool:
    if not os.path.exists(SOCKET):
        return False
    return _run("zpool", "list", "-H", check=False).returncode == 0


class ZfsFuse:
    """The daemon: ``start()`` once, ``pool()`` per test, ``stop()`` at the end."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.pools: list[str] = []

    @staticmethod
    def check_available() -> None:
        if os.geteuid() != 0:
            raise ZfsFuseUnavailable("needs root (zfs-fuse daemon, FUSE mounts)")
        for tool in ("zfs-fuse", "zfs", "zpool"):
            if shutil.which(tool) is None:
                raise ZfsFuseUnavailable(f"{tool} is not installed (Debian package zfs-fuse)")
        if not os.path.exists("/dev/fuse"):
            raise ZfsFuseUnavailable("no /dev/fuse")

    def start(self) -> None:
        self.check_available()
        if _daemon_answers():
            return  # someone else's daemon: use it, never stop it
        with open(self.log, "ab") as log:
            # -a/-e 0: no FUSE attribute/entry caching (Debian's zfsrc sets an hour,
            # which would show stale files across clone and destroy).
            self.proc = subprocess.Popen(
                ["zfs-fuse", "--no-daemon", "--no-kstat-mount", "-a", "0", "-e", "0",
                 "-m", "64"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while not _daemon_answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ZfsFuseUnavailable(f"zfs-fuse did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.1)

    def pool(self, name: str, directory: Path, size_mb: int = 128) -> Path:
        """A new pool on a file in ``directory``, mounted at ``directory/name``."""
        image = directory / f"{name}.img"
        with open(image, "wb") as f:
            f.truncate(max(size_mb, POOL_MIN_MB) << 20)
        mnt = directory / name
        _run("zpool", "create", "-o", "cachefile=none", "-m", str(mnt), name, str(image))
        self.pools.append(name)
        return mnt

    def destroy_pool(self, name: str) -> None:
        """Release our holds, then destroy; busy pools are retried (FUSE unmounts
        lag).  A pool holding a clone that was detached while busy (the backend
        marks it org.remotevss:doomed) is not destroyed: zfs-fuse would block in
        ``zpool destroy`` holding its pool namespace lock, and every later
        command would hang.  Our daemon is restarted instead (the pool goes with
        it: cachefile=none)."""
        doomed = _run("zfs", "get", "-H", "-r", "-o", "value", "org.remotevss:doomed", name,
                      check=False).stdout.split()
        if "yes" in doomed:
            if self.proc is not None:
                self.restart()
            elif name in self.pools:
                self.pools.remove(name)
            return
        for line in _run("zfs", "list", "-H", "-t", "snapshot", "-o", "name,userrefs", "-r",
                         name, check=False).stdout.splitlines():
            snap, _, refs = line.partition("\t")
            if refs.strip() not in ("", "0", "-"):
                _run("zfs", "release", "remotevss", snap, check=False)
        for _ in range(10):
            try:
                if _run("zpool", "destroy", "-f", name, check=False, timeout=20).returncode == 0:
                    break
            except subprocess.TimeoutExpired:
                break  # a wedged pool: it goes with the daemon (cachefile=none)
            time.sleep(0.25)
        if name in self.pools:
            self.pools.remove(name)

    def restart(self) -> None:
        """Kill our daemon hard (a busy dataset can make it hang on SIGTERM), drop
        its dead FUSE mounts, start a new one.  Every pool is gone after it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self.pools.clear()
        for mp in _fuse_zfs_mounts():
            _run("umount", "-l", mp, check=False)
        if os.path.exists(SOCKET):
            os.unlink(SOCKET)
        self.start()

    def stop(self) -> None:
        for name in list(self.pools):
            self.destroy_pool(name)
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for mp in _fuse_zfs_mounts():  # a daemon killed hard leaves dead FUSE mounts
            _run("umount", "-l", mp, check=False)


def _fuse_zfs_mounts() -> list[str]:
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split(" ")
                sep = fields.index("-")
                if fields[sep + 1] == "fuse.zfs" and fields[sep + 2] != "-":
                    out.append(fields[4])
    except OSError as exc:  # pragma: no cover
        if exc.errno != errno.ENOENT:
            raise
    return sorted(out, key=len, reverse=True)


def zfs(*args: str) -> str:
    """Run the zfs command line (argument list) and return its output."""
    return subprocess.run(["zfs", *args], capture_output=True, text=True, check=True).stdout


def datasets(pool: str, mnt: Path, names: Iterable[str], text: str = "{name}\n",
             file: str = "f.txt") -> dict[str, Path]:
    """One dataset per name below ``pool`` (mounted under ``mnt``), each with a
    small file; the share table tests hand to the agent."""
    shares = {}
    for name in names:
        zfs("create", f"{pool}/{name}")
        (mnt / name / file).write_text(text.format(name=name))
        shares[name] = mnt / name
    return shares
