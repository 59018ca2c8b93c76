"""btrfs backend: a snapshot is a subvolume snapshot, atomic and O(1).

Why btrfsutil and not ``btrfs`` CLI output: the library returns errno and
typed values; CLI text changes between versions and locales.

Layout (snapper / shadow_copy2 convention): the volume is the subvolume that
contains the share; snapshots live in ``<subvolume>/.snapshots/<name>``.
``.snapshots`` is made a subvolume itself, so a snapshot of the volume holds
one empty stub for it instead of one stub per earlier snapshot.
The read-only bit is on disk (BTRFS_SUBVOL_RDONLY): it survives reboots and
refuses root with EROFS, so ``restore_protection`` has nothing to do.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import btrfsutil

from remotevss.snapshots import mounts
from remotevss.snapshots.base import (
    NotSupported,
    SnapRequest,
    SnapshotError,
    Usage,
    Volume,
    validate_snapshot_name,
)

SNAPSHOT_DIR = ".snapshots"
log = logging.getLogger("remotevss.snapshots")

# The snapshot ioctl, called directly through ctypes: python3-btrfsutil and
# fcntl.ioctl (for this size of argument) hold the GIL through it, so their
# calls from several threads would run one after another.
# BTRFS_IOC_SNAP_CREATE_V2 = _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2):
# s64 fd (the source subvolume), u64 transid, u64 flags, 32 bytes of union,
# then the new entry's name (up to 4039 bytes + NUL); 4096 bytes in all.
_VOL_ARGS_V2 = 4096
_SNAP_CREATE_V2 = (1 << 30) | (_VOL_ARGS_V2 << 16) | (0x94 << 8) | 23
_SUBVOL_RDONLY = 1 << 1
_NAME_OFFSET = 56
# BTRFS_IOC_GET_SUBVOL_INFO = _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args):
# 504 bytes; otransid (u64) at 352, otime (u64 sec, u32 nsec) at 392.  The
# binding's otime is rounded to the second.
_SUBVOL_INFO_ARGS = 504
_GET_SUBVOL_INFO = (2 << 30) | (_SUBVOL_INFO_ARGS << 16) | (0x94 << 8) | 60
_OTRANSID_OFFSET = 352
_OTIME_OFFSET = 392
MAX_THREADS = 64  # snapshot ioctls in flight at once


@dataclass
class Spread:
    """How close together the snapshots of the last ``create_many`` were: the
    btrfs transaction commits (distinct generations) that made them, and the
    time between the first and the last one's creation time (kernel otime)."""

    snapshots: int = 0
    commits: int = 0
    seconds: float = 0.0


@dataclass
class _SnapJob:
    src_fd: int
    dst_fd: int
    name: str
    read_only: bool
    done: bool = False
    error: OSError | None = None

    def __post_init__(self) -> None:
        """The argument is built here, in the caller's thread: the snapshot
        threads, once released, only make the call."""
        raw = bytearray(_VOL_ARGS_V2)
        struct.pack_into("=qQQ", raw, 0, self.src_fd, 0, _SUBVOL_RDONLY if self.read_only else 0)
        name = os.fsencode(self.name)
        raw[_NAME_OFFSET:_NAME_OFFSET + len(name)] = name
        self._args = (ctypes.c_char * _VOL_ARGS_V2).from_buffer(raw)

    def run(self) -> None:
        # ctypes releases the GIL for the call; fcntl.ioctl keeps it for a buffer
        # over 1024 bytes, and this one is 4096.
        if mounts.libc.ioctl(self.dst_fd, ctypes.c_ulong(_SNAP_CREATE_V2), self._args) != 0:
            err = ctypes.get_errno()
            self.error = OSError(err, os.strerror(err))
            return
        self.done = True


def _run_together(jobs: list[_SnapJob]) -> None:
    """Every job's ioctl at once: the threads are started first and released
    together, so none waits behind another's thread start-up."""
    if len(jobs) == 1:
        jobs[0].run()
        return
    go = threading.Event()
    lanes = [jobs[i::MAX_THREADS] for i in range(min(len(jobs), MAX_THREADS))]

    def lane(mine: list[_SnapJob]) -> None:
        go.wait()
        for job in mine:
            job.run()

    started: list[threading.Thread] = []
    inline: list[list[_SnapJob]] = []  # a thread that could not start: its jobs run here
    for mine in lanes:
        t = threading.Thread(target=lane, args=(mine,), name="btrfs-snapshot")
        try:
            t.start()
        except RuntimeError:
            inline.append(mine)
            continue
        started.append(t)
    go.set()
    for mine in inline:
        for job in mine:
            job.run()
    for t in started:
        t.join()


def subvolume_birth(path: str) -> tuple[int, float]:
    """A subvolume's creating transaction (otransid) and creation time (otime, ns)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = bytearray(_SUBVOL_INFO_ARGS)
        fcntl.ioctl(fd, _GET_SUBVOL_INFO, buf)
    finally:
        os.close(fd)
    (otransid,) = struct.unpack_from("=Q", buf, _OTRANSID_OFFSET)
    sec, nsec = struct.unpack_from("=QI", buf, _OTIME_OFFSET)
    return otransid, sec + nsec / 1e9


def _spread(paths: list[str]) -> Spread:
    births = []
    for path in paths:
        try:
            births.append(subvolume_birth(path))
        except OSError:  # only a report: never fail a made set for it
            log.debug("no creation record for %s", path, exc_info=True)
    if not births:
        return Spread(len(paths))
    times = [t for _, t in births]
    return Spread(len(paths), len({g for g, _ in births}), max(times) - min(times))


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """btrfsutil raises BtrfsUtilError (an OSError): keep its errno."""
    try:
        yield
    except OSError as exc:
        raise SnapshotError(f"{what}: {exc}", exc.errno) from exc


def on_btrfs(path: str) -> bool:
    return mounts.fs_magic(path) == mounts.BTRFS_SUPER_MAGIC


def _subvolume_root(path: str, table: list[mounts.Mount]) -> str:
    """Walk up to the root directory of the subvolume containing ``path``.

    Every directory of one subvolume shares its st_dev; the root is the top one
    and has inode 256.  The walk stops at mount points: a bind mount of a plain
    directory hides its subvolume root, and a path computed across it would be
    wrong, so that case is NotSupported.
    """
    mount_points = {m.mount_point for m in table}
    dev = os.stat(path).st_dev
    p = path
    while True:
        if btrfsutil.is_subvolume(p):
            return p
        parent = os.path.dirname(p)
        if p in mount_points or parent == p or os.stat(parent).st_dev != dev:
            raise NotSupported(
                f"{path}: the root of its btrfs subvolume is not reachable from this path "
                f"(bind mount of a subdirectory?)"
            )
        p = parent


def _guarded(snap_path: str) -> str:
    """Refuse paths that are not ``.../.snapshots/<name>``: a corrupt journal
    must not make us delete or freeze the share's own subvolume."""
    path = os.path.abspath(snap_path)
    validate_snapshot_name(os.path.basename(path))
    if os.path.basename(os.path.dirname(path)) != SNAPSHOT_DIR:
        raise SnapshotError(f"{snap_path}: not inside a {SNAPSHOT_DIR} directory", errno.EINVAL)
    return path


class BtrfsBackend:
    name = "btrfs"
    #: delete() is one ioctl that leaves the freeing to the kernel's cleaner thread
    quick_delete = True

    def __init__(self) -> None:
        self.last_spread = Spread()

    def check(self, share_path: str) -> Volume:
        path = os.path.realpath(share_path)
        if not os.path.isdir(path):
            raise NotSupported(f"{share_path}: not an existing directory", errno.ENOENT)
        if not on_btrfs(path):
            raise NotSupported(f"{share_path}: not on btrfs")
        with _errors(f"inspecting {share_path}"):
            table = mounts.read_mounts()  # once: the walk up and the look below
            root = _subvolume_root(path, table)
            snapdir = os.path.join(root, SNAPSHOT_DIR)
            sub = os.path.relpath(path, root)
            sub = "" if sub == "." else sub
            if below := mounts.mounts_below(path, exclude=(snapdir,), table=table):
                raise NotSupported(f"{share_path}: mount points below the share: {below}")
            if nested := self._nested_subvolumes(root, sub):
                raise NotSupported(f"{share_path}: subvolumes below the share: {nested}")
        return Volume(self.name, root, snapdir, sub)

    @staticmethod
    def _nested_subvolumes(root: str, sub: str) -> list[str]:
        """Subvolumes under the share (a snapshot would hold empty stubs for them),
        except our own snapshot directory and what is inside it."""
        found = []
        # An fd, not the path: python3-btrfsutil 6.2 leaks the path argument of every
        # SubvolumeIterator (~80 bytes per IsPathSupported/Add; found by the soak).
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with btrfsutil.SubvolumeIterator(fd) as it:
                for rel, _id in it:
                    if rel == SNAPSHOT_DIR or rel.startswith(SNAPSHOT_DIR + "/"):
                        continue
                    if not sub or rel.startswith(sub + "/"):
                        found.append(rel)
        finally:
            os.close(fd)
        return found

    def _ensure_snapshot_dir(self, snapdir: str) -> None:
        try:
            btrfsutil.create_subvolume(snapdir)
            os.chmod(snapdir, 0o755)  # noqa: S103 - share users may browse snapshots
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        mounts.check_private_dir(snapdir)

    def create(self, volume: Volume, snap_name: str, writable: bool) -> str:
        validate_snapshot_name(snap_name)
        target = os.path.join(volume.snapshot_dir, snap_name)
        share = os.path.join(volume.root, volume.share_subpath)
        if below := mounts.mounts_below(share, exclude=(volume.snapshot_dir,)):
            raise NotSupported(f"{share}: mount points below the share: {below}")
        with _errors(f"snapshot of {volume.root} to {target}"):
            self._ensure_snapshot_dir(volume.snapshot_dir)
            if os.path.lexists(target):
                raise SnapshotError(f"{target} already exists", errno.EEXIST)
            btrfsutil.create_snapshot(volume.root, target, read_only=not writable)
        return target

    def create_many(self, requests: list[SnapRequest]) -> list[str]:
        """Every snapshot of a set (BatchBackend): all checks first, then every
        snapshot ioctl at once from threads of its own, so that btrfs puts them
        in as few transaction commits as it can (one snapshot ioctl waits for
        the commit that makes it; ioctls that join a transaction before its
        commit starts land in that commit: same generation, otimes microseconds
        apart).  All or nothing: a failure removes every snapshot the call made.
        ``last_spread`` tells how far apart they were."""
        plan: list[tuple[SnapRequest, str]] = []
        seen: set[str] = set()
        table = mounts.read_mounts()  # once for the whole set
        for r in requests:
            validate_snapshot_name(r.snap_name)
            target = os.path.join(r.volume.snapshot_dir, r.snap_name)
            share = os.path.join(r.volume.root, r.volume.share_subpath)
            if below := mounts.mounts_below(share, exclude=(r.volume.snapshot_dir,), table=table):
                raise NotSupported(f"{share}: mount points below the share: {below}")
            if target in seen:
                raise SnapshotError(f"{target} requested twice", errno.EEXIST)
            seen.add(target)
            with _errors(f"snapshot of {r.volume.root} to {target}"):
                self._ensure_snapshot_dir(r.volume.snapshot_dir)
                if os.path.lexists(target):
                    raise SnapshotError(f"{target} already exists", errno.EEXIST)
            plan.append((r, target))
        fds: list[tuple[int, int]] = []
        try:
            for r, _ in plan:
                with _errors(f"opening {r.volume.root}"):
                    src = os.open(r.volume.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    try:
                        dst = os.open(r.volume.snapshot_dir,
                                      os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    except OSError:
                        os.close(src)
                        raise
                fds.append((src, dst))
            jobs = [_SnapJob(src, dst, r.snap_name, not r.writable)
                    for (src, dst), (r, _) in zip(fds, plan, strict=True)]
            _run_together(jobs)
        finally:
            for src, dst in fds:
                os.close(src)
                os.close(dst)
        failed = next((j for j in jobs if j.error is not None), None)
        made = [t for j, (_, t) in zip(jobs, plan, strict=True) if j.done]
        if failed is not None:
            for path in made:
                try:
                    self.delete(path)
                except SnapshotError:
                    log.error("could not remove %s after a failed batch", path, exc_info=True)
            r = plan[jobs.index(failed)][0]
            err = failed.error
            assert err is not None
            raise SnapshotError(
                f"snapshot of {r.volume.root} to {r.volume.snapshot_dir}/{r.snap_name}: "
                f"{os.strerror(err.errno) if err.errno else err}", err.errno) from err
        self.last_spread = _spread([t for _, t in plan])
        if len(plan) > 1:
            log.info("btrfs: %d snapshots in %d transaction commit(s), spread %.1f ms",
                     self.last_spread.snapshots, self.last_spread.commits,
                     self.last_spread.seconds * 1000)
        return [t for _, t in plan]

    def seal(self, snap_path: str) -> None:
        path = _guarded(snap_path)
        with _errors(f"sealing {snap_path}"):
            btrfsutil.set_subvolume_read_only(path, True)

    def delete(self, snap_path: str) -> None:
        """Deleting a read-only subvolume needs no flag change (root may)."""
        path = _guarded(snap_path)
        if not os.path.lexists(path):
            return
        with _errors(f"deleting {snap_path}"):
            try:
                btrfsutil.delete_subvolume(path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise

    def exists(self, snap_path: str) -> bool:
        return os.path.isdir(snap_path)

    def restore_protection(self, snap_path: str, read_only: bool) -> None:
        """The read-only flag is on disk; nothing is lost across restarts."""

    def usage(self, volume: Volume) -> Usage:
        """``used`` is unknown without qgroups (shared extents make du meaningless)."""
        return mounts.statvfs_usage(volume.root, used=None)
