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

import io
import pickle
import threading
from collections.abc import Mapping, Sequence
from operator import attrgetter

import blake3

from remotevss.backup.snapshot_source import DIR, FILE, LocalSource, Source, SourceEntry

# Entries listed but not yet walked: up to ~30 MB while the passphrase's scrypt
# runs (so an unchanged incremental finds most of its listings ready; that phase's
# peak is scrypt's 64 MiB anyway), ~5 MB once the walk has begun (``run_backup``
# lowers it: a full backup's walk is slower than the listing).
MAX_AHEAD = 65536
WALK_AHEAD = 16384


class ListingPrefetch:
    """Lists one source's directories ahead of the walk."""

    def __init__(self, source: Source, max_entries: int = MAX_AHEAD) -> None:
        self.source = source
        self.max_entries = max_entries
        self._cond = threading.Condition()
        self._ready: dict[str, tuple[list[SourceEntry], bytes | None] | OSError] = {}
        self._digest = source.listing_proves_unchanged
        self._waiting = 0  # entries in _ready
        self._listed: list[str] = []  # directories listed since the last take_listed
        self._track = True  # whether to keep them (see ignore_listed)
        self._stopped = False
        self._done = False
        self._thread = threading.Thread(target=self._run, name="rvss-list", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            stack = [""]
            while stack:
                rel = stack.pop()
                got: tuple[list[SourceEntry], bytes | None] | OSError
                try:
                    listing = self.source.scandir(rel)
                    got = (listing, listing_digest(listing, self.source)
                           if self._digest else None)
                except OSError as exc:
                    got = exc
                with self._cond:
                    while self._waiting >= self.max_entries and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    self._ready[rel] = got
                    if self._track:
                        self._listed.append(rel)
                    self._waiting += _weight(got)
                    self._cond.notify_all()
                if not isinstance(got, OSError):
                    prefix = f"{rel}/" if rel else ""
                    stack.extend(prefix + e.name for e in reversed(listing) if e.type == DIR)
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def scandir(self, relpath: str) -> list[SourceEntry]:
        """The listing of ``relpath``: read ahead if it was, else read now."""
        return self.scandir_digest(relpath)[0]

    def scandir_digest(self, relpath: str) -> tuple[list[SourceEntry], bytes | None]:
        """The listing and its ``listing_digest`` (None if the source's listings do
        not prove a directory unchanged)."""
        with self._cond:
            while (relpath not in self._ready and not self._done
                   and self._waiting < self.max_entries):
                self._cond.wait()
            got = self._ready.pop(relpath, None)
            if got is not None:
                self._waiting -= _weight(got)
                self._cond.notify_all()
        if got is None:  # not read ahead (the reader is elsewhere, full, or finished)
            listing = self.source.scandir(relpath)
            return listing, listing_digest(listing, self.source) if self._digest else None
        if isinstance(got, OSError):
            raise got
        return got

    def take_listed(self) -> list[str]:
        """The directories listed since the last call (walked or not), in order:
        the walk asks the files cache about them in a few large queries."""
        with self._cond:
            listed, self._listed = self._listed, []
        return listed

    def ignore_listed(self) -> None:
        """No one will ``take_listed`` (a source's first backup asks the files
        cache nothing): stop keeping the names, which would grow with the tree."""
        with self._cond:
            self._track = False
            self._listed.clear()

    def stop(self) -> None:
        """Let the thread end (it drops what it has read)."""
        with self._cond:
            self._stopped = True
            self._ready.clear()
            self._listed.clear()
            self._waiting = 0
            self._cond.notify_all()
        self._thread.join()


def _weight(got: tuple[list[SourceEntry], bytes | None] | OSError) -> int:
    return 1 if isinstance(got, OSError) else len(got[0]) + 1


# What of an entry goes into its directory's listing digest: every field that goes
# into the tree or the files-cache key, except the owner names (per distinct ids,
# below) and the device (snapshots of one tree differ in it).
_DIGESTED = attrgetter("name", "type", "mode", "uid", "gid", "size", "mtime_ns", "atime_ns",
                       "ctime_ns", "ino", "rdev", "target", "attributes", "btime_ns")
_NLINK = attrgetter("nlink")
_IDS = attrgetter("uid", "gid")


def listing_digest(listing: list[SourceEntry], src: Source) -> bytes | None:
    """A digest of every listed field that goes into the directory's tree and the
    files-cache key (not the device: snapshots of one tree differ in it); None
    when a file has several links (which name comes first depends on the rest
    of the tree).  Unkeyed: the engine keys it before storing it; computed here
    so that it overlaps the passphrase's key derivation.

    The owner names enter once per distinct (uid, gid), as the sources whose
    listings prove a directory unchanged name owners by those ids alone; the
    fields are taken with ``attrgetter`` (C): listing an unchanged tree is
    most of an unchanged incremental, and this ran once per entry."""
    if max(map(_NLINK, listing), default=0) > 1 and any(
            e.nlink > 1 and e.type == FILE for e in listing):
        return None
    want = set(map(_IDS, listing))
    owners = []
    owner = src.owner
    for e in listing:  # one entry of each (uid, gid): usually the first few
        ids = (e.uid, e.gid)
        if ids in want:
            want.discard(ids)
            owners.append((ids, owner(e)))
            if not want:
                break
    owners.sort()
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=5)
    p.fast = True  # no memo: equal values give equal bytes
    p.dump((list(map(_DIGESTED, listing)), owners))
    return blake3.blake3(buf.getbuffer()).digest()


def prefetch_listings(sources: Sequence[Source]) -> Mapping[str, ListingPrefetch]:
    """Start reading ahead for every local source (by label).  SMB sources list a
    directory in one compound of their own session, which is not shared with a thread."""
    labels = [s.label for s in sources]
    return {s.label: ListingPrefetch(s) for s in sources
            if isinstance(s, LocalSource) and labels.count(s.label) == 1}
