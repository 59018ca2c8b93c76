"""The one small interface every snapshot backend implements.

Why: the agent must not care whether a shadow copy is a btrfs subvolume
snapshot, a reflink tree or a plain copy; it asks a backend to check a share
path, create, seal and delete snapshots, and to report usage.  Backends do
real I/O and may block: the agent calls them from worker threads.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Protocol


class SnapshotError(Exception):
    """A backend operation failed; ``errno`` is kept when the OS gave one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class NotSupported(SnapshotError):
    """The path cannot be snapshotted by this backend (FSRVP_E_NOT_SUPPORTED)."""


NAME_MAX = 255


def validate_snapshot_name(name: str) -> None:
    """Reject names that are not one plain directory entry.

    Why: the caller picks names, and a backend joins them to its snapshot
    directory; "..", "/" or NUL would make it write or delete elsewhere.
    """
    raw = os.fsencode(name)
    if not raw or name in (".", "..") or b"/" in raw or b"\0" in raw or len(raw) > NAME_MAX:
        raise SnapshotError(f"invalid snapshot name {name!r}", errno.EINVAL)


@dataclass(frozen=True)
class Volume:
    """The unit that gets snapshotted for a share (FSRVP's VolumeName).

    ``root`` is the directory whose point-in-time image the snapshot holds:
    the btrfs subvolume that contains the share, or the share path itself for
    reflink/copy.  ``snapshot_dir`` is where this backend puts snapshots of
    that volume.  ``share_subpath`` is the share path relative to ``root``
    ("" when they are the same), so the snapshot share's path is
    ``snapshot_path / share_subpath``.
    """

    backend: str
    root: str
    snapshot_dir: str
    share_subpath: str = ""

    @property
    def name(self) -> str:
        """Stable identity used for FSRVP's duplicate-volume check."""
        return f"{self.backend}:{self.root}"


@dataclass(frozen=True)
class Usage:
    """Space accounting for one volume's snapshots, in bytes (None = unknown)."""

    used: int | None
    filesystem_size: int
    filesystem_free: int


class Backend(Protocol):
    name: str

    def check(self, share_path: str) -> Volume:
        """Map a share path to its volume; raise NotSupported if it cannot be snapshotted
        (missing or not a directory, wrong filesystem, mount points below the share
        root, ...).  Read-only: probes leave nothing on disk."""
        ...

    def create(self, volume: Volume, snap_name: str, writable: bool) -> str:
        """Create snapshot ``snap_name`` of ``volume``; return its absolute path.

        Must be all-or-nothing: on failure nothing is left on disk.
        Read-only snapshots refuse writes with EROFS (for every user, root included).
        Raises SnapshotError with the OS errno (ENOSPC stays ENOSPC), EEXIST if the
        name is taken, EINVAL for a bad name (see ``validate_snapshot_name``), and
        NotSupported if a mount appeared below the share since ``check``.
        """
        ...

    def seal(self, snap_path: str) -> None:
        """Make a writable snapshot read-only for good (EROFS on write). Idempotent."""
        ...

    def delete(self, snap_path: str) -> None:
        """Remove a snapshot completely. Idempotent: a missing snapshot is not an error.

        A backend whose deletion is one short system call may say so with a class
        attribute ``quick_delete = True``: the agent then deletes on its event loop
        (agent/service.py, ``_run_io``) rather than in a thread."""
        ...

    def exists(self, snap_path: str) -> bool:
        """True if a snapshot is present at snap_path.

        Whatever sits at snap_path is complete: backends build elsewhere and
        rename into place.  Half-made leftovers are not reported, but
        ``delete(snap_path)`` removes them.
        """
        ...

    def restore_protection(self, snap_path: str, read_only: bool) -> None:
        """Re-apply run-time protection lost across a reboot or agent restart
        (e.g. a read-only bind mount). No-op where the read-only bit is on disk."""
        ...

    def usage(self, volume: Volume) -> Usage:
        """Filesystem size/free (statvfs) and, when cheap to know, bytes held by snapshots."""
        ...


@dataclass(frozen=True)
class SnapRequest:
    """One snapshot of a set to take together with the others (``create_many``).

    The ids are optional labels: a backend that can store them with the
    snapshot (ZFS user properties) does, so orphans can be found from the
    filesystem alone; ``owner`` names the agent (its state directory) so that
    two agents on one pool never collect each other's; ``persistent`` (a
    context without auto-release) lets a backend pin the snapshot (ZFS:
    ``zfs hold``).  Backends that cannot, ignore them.
    """

    volume: Volume
    snap_name: str
    writable: bool
    set_id: str = ""
    copy_id: str = ""
    context: str = ""
    persistent: bool = False
    owner: str = ""


class BatchBackend(Backend, Protocol):
    """A backend that can take several snapshots at once.

    Why: a shadow copy set is meant to be one point in time across its
    volumes; the spread between the first and the last snapshot is the window
    in which a write can land in one share's image and not in another's.  A
    backend that can snapshot several volumes in one operation (ZFS: one
    ``zfs snapshot`` of several datasets of a pool) implements this.
    """

    def create_many(self, requests: list[SnapRequest]) -> list[str]:
        """Create every snapshot of ``requests``; return their paths in order.

        All-or-nothing, like ``create``: on failure every snapshot this call
        made is removed again before the error is raised.
        """
        ...


def supports_batches(backend: Backend) -> bool:
    """True if ``backend`` implements ``create_many`` (see BatchBackend)."""
    return callable(getattr(backend, "create_many", None))
