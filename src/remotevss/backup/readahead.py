"""Small local files read by two threads ahead of the backup's reading thread.

Why: on a tree of small files the reading thread's own system calls (open,
fstat, pread, close, listxattr: ~50 µs a file) wait for the GIL behind the
compression workers; threads that make them ahead, in the order the walk
will want the files, leave the reading thread its Python bookkeeping only.

Rules: only dense regular files of at most ``SMALL`` bytes with one link are
read ahead, with LocalFile's checks (O_NOFOLLOW, O_NOATIME where allowed, a
regular file with the listed inode); at most ``MAX_FILES`` files and
``MAX_BYTES`` bytes are held; directories are served depth first, the way
the walk goes (the newest announced directory first); a file not read ahead
(or skipped by the walk) costs nothing but its own read by the caller, as
before.  All bookkeeping runs in the reading thread: only the reads run in
the pool.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from remotevss.backup.snapshot_source import SourceEntry

SMALL = 1 << 20
MAX_FILES = 256
MAX_BYTES = 8 << 20


@dataclass(slots=True)
class Got:
    """A file read ahead: its size at open, its bytes, its xattrs (None: not read)."""

    size: int
    data: bytes
    xattrs: dict[str, bytes] | None


class ReadFile:
    """A FileReader over a file read ahead (the same answers LocalFile would give)."""

    def __init__(self, got: Got) -> None:
        self.size = got.size
        self._data = got.data

    def extents(self) -> list[tuple[int, int]]:
        return [(0, self.size)] if self.size else []

    def pread(self, offset: int, n: int) -> bytes:
        if offset == 0 and n >= len(self._data):
            return self._data
        return self._data[offset:offset + n]

    def readinto(self, offset: int, buf: memoryview) -> int:
        chunk = self._data[offset:offset + len(buf)]
        buf[:len(chunk)] = chunk
        return len(chunk)

    def xattrs(self) -> dict[str, bytes] | None:
        return None

    def close(self) -> None:
        self._data = b""


def read_small(path: str, ino: int) -> Got | None:
    """Open, check and read one file; None when it is not small and dense any more."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != ino:
            raise OSError(errno.ESTALE, "file was replaced while being backed up", path)
        if st.st_size > SMALL or st.st_blocks * 512 < st.st_size:
            return None  # grew, or sparse/inline: the caller reads it with extents
        data = os.pread(fd, st.st_size, 0) if st.st_size else b""
        xattrs: dict[str, bytes] | None = {}
        try:
            for name in os.listxattr(fd):
                try:
                    xattrs[name] = os.getxattr(fd, name)  # type: ignore[index]
                except OSError:
                    continue
        except OSError:
            xattrs = None  # the caller asks by path, as before
        return Got(st.st_size, data, xattrs)
    finally:
        os.close(fd)


class _DirQueue:
    __slots__ = ("pending", "submitted")

    def __init__(self, entries: list[tuple[str, str, SourceEntry]]) -> None:
        self.pending: deque[tuple[str, str, SourceEntry]] = deque(entries)
        self.submitted: OrderedDict[str, tuple[Future[Got | None], int]] = OrderedDict()


class ReadAhead:
    """The pool and the queue of announced files (used from the reading thread only)."""

    def __init__(self, workers: int = 2) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="rvss-read")
        self.dirs: OrderedDict[str, _DirQueue] = OrderedDict()  # a stack: last = deepest
        self.files = 0
        self.bytes = 0

    def announce(self, reldir: str, files: list[tuple[str, str, SourceEntry]]) -> None:
        """(name, absolute path, entry) of the files of ``reldir`` the walk will open."""
        files = [f for f in files
                 if f[2].size <= SMALL and f[2].nlink == 1 and f[2].allocated >= f[2].size]
        if files:
            self.dirs.pop(reldir, None)
            self.dirs[reldir] = _DirQueue(files)
            self._fill()

    def _fill(self) -> None:
        for q in reversed(self.dirs.values()):
            while q.pending and self.files < MAX_FILES and self.bytes < MAX_BYTES:
                name, path, e = q.pending.popleft()
                q.submitted[name] = (self.pool.submit(read_small, path, e.ino), e.size)
                self.files += 1
                self.bytes += e.size
            if self.files >= MAX_FILES or self.bytes >= MAX_BYTES:
                return

    def _drop(self, fut: Future[Got | None], size: int) -> None:
        fut.cancel()
        self.files -= 1
        self.bytes -= size

    def _find(self, reldir: str, name: str, take: bool) -> Future[Got | None] | None:
        q = self.dirs.get(reldir)
        if q is None:
            return None
        # Directories announced after this one are finished: the walk is back here.
        while next(reversed(self.dirs)) != reldir:
            _d, done = self.dirs.popitem()
            for fut, size in done.submitted.values():
                self._drop(fut, size)
        # Files before it (names are in order) were skipped by the walk.
        while q.submitted:
            first = next(iter(q.submitted))
            if first >= name:
                break
            self._drop(*q.submitted.pop(first))
        while q.pending and q.pending[0][0] < name:
            q.pending.popleft()
        item = q.submitted.get(name)
        if item is None:
            if take and q.pending and q.pending[0][0] == name:
                q.pending.popleft()
            return None
        fut, size = item
        if take:
            del q.submitted[name]
            self.files -= 1
            self.bytes -= size
            if not q.submitted and not q.pending:
                del self.dirs[reldir]
            self._fill()
        return fut

    def xattrs(self, reldir: str, name: str) -> dict[str, bytes] | None:
        """The xattrs read with the file, or None (not read ahead: ask by path)."""
        fut = self._find(reldir, name, take=False)
        if fut is None:
            return None
        try:
            got = fut.result()
        except OSError:
            return None
        return None if got is None else got.xattrs

    def take(self, reldir: str, name: str) -> Got | None:
        """The file read ahead (raises what reading it raised), or None: read it now."""
        fut = self._find(reldir, name, take=True)
        return None if fut is None else fut.result()

    def close(self) -> None:
        for q in self.dirs.values():
            for fut, _size in q.submitted.values():
                fut.cancel()
        self.dirs.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
