"""glibc malloc and garbage collector settings for the backup commands (peak RSS is a
target: <= 150 MB; time too).

Why: a backup allocates chunk-sized buffers (up to 4 MiB read, compressed and
sealed) in three threads.  glibc raises its mmap threshold to the size of
the largest block freed, after which such buffers come from per-thread
arenas and stay resident after being freed (measured: ~15 MB of a 156 MB
peak on a 51,000-file tree).  A fixed 256 KiB threshold sends them back to
the kernel on free, and two arenas are enough for two workers.

Rules: best effort; on a libc without ``mallopt`` nothing happens.

The cyclic garbage collector: see :func:`fewer_collections`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Iterator

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 10
ARENAS = 2
# Net container allocations between two collections of the youngest generation while a
# backup runs (CPython's default: 700).
GC_THRESHOLD = 100_000


def tune_malloc() -> bool:
    """Apply the settings; True when glibc took them."""
    try:
        # The process's own symbols (libc is among them): ``ctypes.util.find_library``
        # would run ``ldconfig -p`` in a child process, ~5 ms of every command's start.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENAS))


def collect_rarely() -> tuple[int, int, int]:
    """Let the cyclic garbage collector run rarely from now on (its young generation
    every GC_THRESHOLD net container allocations); returns the old thresholds.

    Why: a backup keeps tens of thousands of objects alive (listings read
    ahead, tree entries, files-cache rows) and every older-generation
    collection walks them all.  At CPython's thresholds the collector took
    0.62 s of a full backup of 51,283 files and 0.1-0.2 s of its unchanged
    incremental (~0.7 s), while what it found to free over that whole full
    backup was 1,451 objects: the rest goes by reference counting.  Young
    cycles are still collected, every GC_THRESHOLD allocations."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], GC_THRESHOLD), *old[1:])
    return old


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """:func:`collect_rarely` while the block runs; the thresholds are restored after."""
    old = collect_rarely()
    try:
        yield
    finally:
        gc.set_threshold(*old)
