"""Directory listings read ahead of the backup walk, in a thread.

Why: listing a directory (readdir plus one lstat per entry) is a third of an
unchanged incremental, and it needs neither the repository nor its key; so
it can run while the passphrase's scrypt (which releases the GIL) derives
the key, and during a full backup it keeps the reading thread from waiting
on those system calls.

Rules: listings are produced in exactly the walk's order (depth first,
entries in name order, into every directory entry) and handed over once; at
most ``max_entries`` entries wait at a time (memory stays bounded whatever
the tree's size); a directory the reader did not list (the walk went another
way) is listed by the walk itself; a listing error is raised in the walk,
as if it had listed the directory then.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from remotevss.backup.snapshot_source import DIR, LocalSource, Source, SourceEntry

MAX_AHEAD = 16384  # entries listed but not yet walked (~5 MB)


class ListingPrefetch:
    """Lists one source's directories ahead of the walk."""

    def __init__(self, source: Source, max_entries: int = MAX_AHEAD) -> None:
        self.source = source
        self.max_entries = max_entries
        self._cond = threading.Condition()
        self._ready: dict[str, list[SourceEntry] | OSError] = {}
        self._waiting = 0  # entries in _ready
        self._stopped = False
        self._done = False
        self._thread = threading.Thread(target=self._run, name="rvss-list", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            stack = [""]
            while stack:
                rel = stack.pop()
                try:
                    listing: list[SourceEntry] | OSError = self.source.scandir(rel)
                except OSError as exc:
                    listing = exc
                with self._cond:
                    while self._waiting >= self.max_entries and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    self._ready[rel] = listing
                    self._waiting += _weight(listing)
                    self._cond.notify_all()
                if isinstance(listing, list):
                    prefix = f"{rel}/" if rel else ""
                    stack.extend(prefix + e.name for e in reversed(listing) if e.type == DIR)
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def scandir(self, relpath: str) -> list[SourceEntry]:
        """The listing of ``relpath``: read ahead if it was, else read now."""
        with self._cond:
            while (relpath not in self._ready and not self._done
                   and self._waiting < self.max_entries):
                self._cond.wait()
            got = self._ready.pop(relpath, None)
            if got is not None:
                self._waiting -= _weight(got)
                self._cond.notify_all()
        if got is None:  # not read ahead (the reader is elsewhere, full, or finished)
            return self.source.scandir(relpath)
        if isinstance(got, OSError):
            raise got
        return got

    def stop(self) -> None:
        """Let the thread end (it drops what it has read)."""
        with self._cond:
            self._stopped = True
            self._ready.clear()
            self._waiting = 0
            self._cond.notify_all()
        self._thread.join()


def _weight(listing: list[SourceEntry] | OSError) -> int:
    return len(listing) + 1 if isinstance(listing, list) else 1


def prefetch_listings(sources: Sequence[Source]) -> Mapping[str, ListingPrefetch]:
    """Start reading ahead for every local source (by label).  SMB sources list a
    directory in one compound of their own session, which is not shared with a thread."""
    labels = [s.label for s in sources]
    return {s.label: ListingPrefetch(s) for s in sources
            if isinstance(s, LocalSource) and labels.count(s.label) == 1}
