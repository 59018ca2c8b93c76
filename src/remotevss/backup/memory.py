"""glibc malloc settings for the backup commands (peak RSS is a target: <= 150 MB).

Why: a backup allocates chunk-sized buffers (up to 4 MiB read, compressed and
sealed) in three threads.  glibc raises its mmap threshold to the size of
the largest block freed, after which such buffers come from per-thread
arenas and stay resident after being freed (measured: ~15 MB of a 156 MB
peak on a 51,000-file tree).  A fixed 256 KiB threshold sends them back to
the kernel on free, and two arenas are enough for two workers.

Rules: best effort; on a libc without ``mallopt`` nothing happens.
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 10
ARENAS = 2


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
