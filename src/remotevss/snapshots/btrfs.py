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

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """btrfsutil raises BtrfsUtilError (an OSError): keep its errno."""
    try:
        yield
    except OSError as exc:
        raise SnapshotError(f"{what}: {exc}", exc.errno) from exc


def on_btrfs(path: str) -> bool:
    return mounts.fs_magic(path) == mounts.BTRFS_SUPER_MAGIC


def _subvolume_root(path: str) -> str:
    """Walk up to the root directory of the subvolume containing ``path``.

    Every directory of one subvolume shares its st_dev; the root is the top one
    and has inode 256.  The walk stops at mount points: a bind mount of a plain
    directory hides its subvolume root, and a path computed across it would be
    wrong, so that case is NotSupported.
    """
    mount_points = {m.mount_point for m in mounts.read_mounts()}
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

    def check(self, share_path: str) -> Volume:
        path = os.path.realpath(share_path)
        if not os.path.isdir(path):
            raise NotSupported(f"{share_path}: not an existing directory", errno.ENOENT)
        if not on_btrfs(path):
            raise NotSupported(f"{share_path}: not on btrfs")
        with _errors(f"inspecting {share_path}"):
            root = _subvolume_root(path)
            snapdir = os.path.join(root, SNAPSHOT_DIR)
            sub = os.path.relpath(path, root)
            sub = "" if sub == "." else sub
            if below := mounts.mounts_below(path, exclude=(snapdir,)):
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
        """Every snapshot of a set (BatchBackend): all checks first, then the
        snapshot ioctls back to back, so the set's images are as close in time as
        btrfs allows (it takes snapshots one transaction commit at a time:
        threads would not bring them closer).  All or nothing."""
        targets: list[str] = []
        for r in requests:
            validate_snapshot_name(r.snap_name)
            target = os.path.join(r.volume.snapshot_dir, r.snap_name)
            share = os.path.join(r.volume.root, r.volume.share_subpath)
            if below := mounts.mounts_below(share, exclude=(r.volume.snapshot_dir,)):
                raise NotSupported(f"{share}: mount points below the share: {below}")
            with _errors(f"snapshot of {r.volume.root} to {target}"):
                self._ensure_snapshot_dir(r.volume.snapshot_dir)
                if os.path.lexists(target):
                    raise SnapshotError(f"{target} already exists", errno.EEXIST)
            targets.append(target)
        made: list[str] = []
        try:
            for r, target in zip(requests, targets, strict=True):
                with _errors(f"snapshot of {r.volume.root} to {target}"):
                    btrfsutil.create_snapshot(r.volume.root, target, read_only=not r.writable)
                made.append(target)
        except BaseException:
            for path in made:
                try:
                    self.delete(path)
                except SnapshotError:
                    log.error("could not remove %s after a failed batch", path, exc_info=True)
            raise
        return targets

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
