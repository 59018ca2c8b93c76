"""Pick the backend for a share: zfs on ZFS, btrfs, else reflink, else copy.

Why here and not in the agent: the order encodes what each filesystem can do
cheaply (a subvolume snapshot beats per-file clones beats copying), and the
agent should only say "auto" or name one.
"""

from __future__ import annotations

import errno
import os

from remotevss.snapshots.base import (
    Backend,
    NotSupported,
    SnapshotError,
    validate_snapshot_name,
)
from remotevss.snapshots.btrfs import BtrfsBackend, on_btrfs
from remotevss.snapshots.copy import CopyBackend
from remotevss.snapshots.reflink import ReflinkBackend, reflink_supported
from remotevss.snapshots.zfs import ZfsBackend, on_zfs

__all__ = ["BACKENDS", "choose_backend", "validate_snapshot_name"]

BACKENDS: dict[str, Backend] = {
    "btrfs": BtrfsBackend(),
    "reflink": ReflinkBackend(),
    "copy": CopyBackend(),
    "zfs": ZfsBackend(),
    # a share that is a directory inside a dataset snapshots the whole dataset
    "zfs-enclosing": ZfsBackend("zfs-enclosing", enclosing=True),
}


def choose_backend(share_path: str, forced: str | None = None) -> Backend:
    """The backend for ``share_path``; ``forced`` names one and fails with
    NotSupported where it cannot work (btrfs off btrfs, zfs off ZFS, reflink without
    FICLONE)."""
    path = os.path.realpath(share_path)
    if not os.path.isdir(path):
        raise NotSupported(f"{share_path}: not an existing directory", errno.ENOENT)
    if forced is not None and forced not in BACKENDS:
        raise SnapshotError(f"unknown snapshot backend {forced!r}", errno.EINVAL)
    try:
        btrfs = on_btrfs(path)
    except OSError as exc:
        raise NotSupported(f"{share_path}: {exc.strerror}", exc.errno) from exc
    if forced == "btrfs" and not btrfs:
        raise NotSupported(f"{share_path}: not on btrfs")
    zfs = not btrfs and on_zfs(path)
    if forced in ("zfs", "zfs-enclosing") and not zfs:
        raise NotSupported(f"{share_path}: not on ZFS")
    if forced == "reflink" and not reflink_supported(path):
        raise NotSupported(f"{share_path}: the filesystem cannot clone files (FICLONE)")
    if forced is not None:
        return BACKENDS[forced]
    if btrfs:
        return BACKENDS["btrfs"]
    if zfs:
        return BACKENDS["zfs"]
    return BACKENDS["reflink" if reflink_supported(path) else "copy"]
