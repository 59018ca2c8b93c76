"""btrfs qgroup accounting read straight from the quota tree (BTRFS_IOC_TREE_SEARCH).

Why an ioctl and not ``btrfs qgroup show``: the CLI's text changes between
versions and locales; the quota tree's items are a stable on-disk format
(``struct btrfs_qgroup_status_item`` / ``btrfs_qgroup_info_item``).  libbtrfsutil
(python3-btrfsutil) has no qgroup query.

What it gives: for a subvolume (a snapshot is one), the level-0 qgroup's
*exclusive* bytes: the space that deleting it would free.  That is exactly
"shadow copy storage used" in vssadmin's sense.  Quotas must be enabled on
the filesystem (``btrfs quota enable``); when they are not, or the numbers
are flagged inconsistent (a rescan is due), callers get ``None`` and say so.
Numbers are updated at transaction commit (about every 30 s, or at sync).
Needs CAP_SYS_ADMIN (the agent runs as root).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

BTRFS_IOC_TREE_SEARCH = (3 << 30) | (4096 << 16) | (0x94 << 8) | 17
QUOTA_TREE_OBJECTID = 8
QGROUP_STATUS_KEY = 240
QGROUP_INFO_KEY = 242
STATUS_FLAG_ON = 1
STATUS_FLAG_RESCAN = 2
STATUS_FLAG_INCONSISTENT = 4
U64_MAX = (1 << 64) - 1

_KEY = struct.Struct("=7Q4I4Q")  # struct btrfs_ioctl_search_key (104 bytes)
_HEADER = struct.Struct("=3Q2I")  # struct btrfs_ioctl_search_header (32 bytes)
_STATUS = struct.Struct("<4Q")  # version, generation, flags, rescan
_INFO = struct.Struct("<5Q")  # generation, rfer, rfer_cmpr, excl, excl_cmpr
_ARGS_SIZE = 4096


@dataclass(frozen=True)
class QgroupInfo:
    referenced: int
    exclusive: int


class QuotaUnavailable(Exception):
    """Quotas are off, being rescanned, or inconsistent; the message says which."""


def _search(
    fd: int, min_type: int, max_type: int, min_offset: int, max_offset: int
) -> list[tuple[int, int, int, bytes]]:
    """One TREE_SEARCH over the quota tree, objectid 0: (type, offset, transid, item)."""
    key = _KEY.pack(
        QUOTA_TREE_OBJECTID, 0, 0, min_offset, max_offset, 0, U64_MAX,
        min_type, max_type, 4096, 0, 0, 0, 0, 0,
    )
    buf = ctypes.create_string_buffer(key + b"\0" * (_ARGS_SIZE - len(key)), _ARGS_SIZE)
    fcntl.ioctl(fd, BTRFS_IOC_TREE_SEARCH, buf, True)
    nr_items = _KEY.unpack_from(buf.raw)[9]
    out: list[tuple[int, int, int, bytes]] = []
    pos = _KEY.size
    for _ in range(nr_items):
        transid, _objectid, offset, type_, length = _HEADER.unpack_from(buf.raw, pos)
        pos += _HEADER.size
        out.append((type_, offset, transid, buf.raw[pos : pos + length]))
        pos += length
    return out


def qgroup_info(path: str, subvolume_ids: list[int]) -> dict[int, QgroupInfo]:
    """Level-0 qgroup numbers of ``subvolume_ids`` on the filesystem holding ``path``.

    Raises QuotaUnavailable when quotas are off or not trustworthy, OSError otherwise.
    Subvolumes without a qgroup (created before quotas were enabled and not
    rescanned) are missing from the result.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            status = _search(fd, QGROUP_STATUS_KEY, QGROUP_STATUS_KEY, 0, 0)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # no quota tree
                raise QuotaUnavailable("quotas are not enabled (btrfs quota enable)") from exc
            raise
        if not status:
            raise QuotaUnavailable("quotas are not enabled (btrfs quota enable)")
        _version, _gen, flags, _rescan = _STATUS.unpack_from(status[0][3])
        if not flags & STATUS_FLAG_ON:
            raise QuotaUnavailable("quotas are not enabled (btrfs quota enable)")
        if flags & STATUS_FLAG_INCONSISTENT:
            raise QuotaUnavailable("qgroup numbers are inconsistent (btrfs quota rescan)")
        if flags & STATUS_FLAG_RESCAN:
            raise QuotaUnavailable("a qgroup rescan is running")
        found: dict[int, QgroupInfo] = {}
        for sid in subvolume_ids:  # level-0 qgroup id = subvolume id
            for type_, offset, _t, item in _search(fd, QGROUP_INFO_KEY, QGROUP_INFO_KEY, sid, sid):
                if type_ == QGROUP_INFO_KEY and offset == sid and len(item) >= _INFO.size:
                    _g, rfer, _rc, excl, _ec = _INFO.unpack_from(item)
                    found[sid] = QgroupInfo(rfer, excl)
        return found
    finally:
        os.close(fd)
