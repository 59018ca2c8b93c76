"""FILETIME: 100-nanosecond ticks since 1601-01-01 UTC, to and from Unix time.

Why one module: FSRVP's share mapping carries a FILETIME creation time (the
agent writes it, the client and the backup requestor read it) and SMB2 file
times are FILETIMEs too (the backup's reader and its restore onto a share).
The epoch offset and the rounding rules live here, once.

Rules: 0 means "unknown" in both FSRVP and SMB, so 0 (and None) maps to
"unknown" in each direction rather than to 1601 or 1970; conversions to
``datetime`` never raise on a value out of range (None instead).
"""

from __future__ import annotations

from datetime import UTC, datetime

#: Seconds from 1601-01-01 to 1970-01-01 (both UTC).
EPOCH_OFFSET_SECONDS = 11_644_473_600
#: The same in FILETIME ticks (100 ns).
EPOCH_OFFSET_TICKS = EPOCH_OFFSET_SECONDS * 10_000_000
TICKS_PER_SECOND = 10_000_000


def from_unix(seconds: float) -> int:
    """The FILETIME of a Unix time in seconds (rounded to the nearest tick)."""
    return int(round((seconds + EPOCH_OFFSET_SECONDS) * TICKS_PER_SECOND))


def to_datetime(ft: int | None) -> datetime | None:
    """An aware UTC ``datetime``; None for 0, None or a value out of range."""
    if not ft:
        return None
    try:
        return datetime.fromtimestamp(ft / TICKS_PER_SECOND - EPOCH_OFFSET_SECONDS, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def to_unix_ns(ft: int) -> int:
    """Nanoseconds since 1970; 0 (unknown) stays 0."""
    return (ft - EPOCH_OFFSET_TICKS) * 100 if ft else 0


def from_unix_ns(ns: int | None) -> int:
    """The FILETIME of nanoseconds since 1970 (truncated to the tick); 0 or None gives 0."""
    return ns // 100 + EPOCH_OFFSET_TICKS if ns else 0


__all__ = [
    "EPOCH_OFFSET_SECONDS",
    "EPOCH_OFFSET_TICKS",
    "TICKS_PER_SECOND",
    "from_unix",
    "from_unix_ns",
    "to_datetime",
    "to_unix_ns",
]
