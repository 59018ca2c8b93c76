"""Snapshot names: how the agent names what it makes.

Why a module of its own: the names are a contract with Samba's shadow_copy2
(previous versions) and with the journal (the name is part of the snapshot
path an intent records), and they are pure functions of a time and an id; the
service only calls them.

Rules of this module: pure (no I/O, no clock: the time is passed in).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable
from uuid import UUID

GMT_FORMAT = "@GMT-%Y.%m.%d-%H.%M.%S"  # Samba's previous-versions token (SHADOW_COPY_PATH_FORMAT)


def snapshot_name(unix_seconds: float, copy_id: UUID) -> str:
    """``@GMT-YYYY.MM.DD-HH.MM.SS`` (the previous-versions token) plus microseconds and
    the copy id, so back-to-back snapshots within one second never collide yet
    names still sort by creation time."""
    t = time.gmtime(unix_seconds)
    usec = int((unix_seconds % 1) * 1_000_000)
    return time.strftime(GMT_FORMAT, t) + f".{usec:06d}-{copy_id.hex[:8]}"


_GMT_PREFIX = re.compile(r"@GMT-(\d{4})\.(\d\d)\.(\d\d)-(\d\d)\.(\d\d)\.(\d\d)")


def gmt_seconds(name: str) -> int | None:
    """The second named by a leading ``@GMT-YYYY.MM.DD-HH.MM.SS`` (any suffix), if any."""
    m = _GMT_PREFIX.match(name)
    if m is None:
        return None
    try:
        return calendar.timegm(tuple(int(x) for x in m.groups()) + (0, 0, 0))
    except (ValueError, OverflowError):
        return None


def gmt_snapshot_name(unix_seconds: float, taken: Iterable[str]) -> str:
    """``snapshot_names = "gmt"``: exactly ``@GMT-YYYY.MM.DD-HH.MM.SS``, the name
    Samba's shadow_copy2 maps a previous-versions label back to with its default
    format.  One name per second: if this second (or a later one) is already
    taken in the snapshot directory, the second after the newest name is used,
    so names stay unique and sorted by creation (the name may then run ahead of
    the clock by the number of snapshots taken within one second)."""
    second = int(unix_seconds)
    newest = max((t for t in map(gmt_seconds, taken) if t is not None), default=None)
    if newest is not None and newest >= second:
        second = newest + 1
    return time.strftime(GMT_FORMAT, time.gmtime(second))
