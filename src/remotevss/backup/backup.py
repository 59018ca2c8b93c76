"""``run_backup``: turn one or more sources into a recovery point.

Why this pipeline: on two cores the fastest arrangement measured is the
chunker (and reads) in the calling thread and blake3+zstd in a 2-worker
pool; both C extensions release the GIL.  Small files are batched so a
worker task costs one future per ~1 MiB rather than per file.  Results are
consumed in submission order, so packs get blobs in a deterministic order and
a directory's tree is written as soon as its last file is hashed.

Files whose (size, mtime, ctime, file id) match the files cache are not read
at all: that is where an unchanged incremental gets its speed.  A directory
whose listing fingerprint (every entry as it would be encoded, the cached
content lists of its files, its subdirectories' tree ids) matches the one
cached with its tree id reuses that tree: no parsing of content lists, no
re-encoding, no hashing, no index probe.

Cheaper still, for sources whose listing proves a directory unchanged (local
file systems: any change of an entry's data, xattrs or ACL moves its ctime):
a digest of the raw listing (names, types, modes, owners, sizes, times,
inodes) is kept in a small row of its own; when it matches, the directory's
files are not looked at at all (no files-cache row opened, no entry built,
no listxattr), only its subdirectories are walked, and if their tree ids are
also unchanged the cached tree id is reused.  If a subdirectory changed, the
directory is then processed the ordinary way from the same listing.
Directories holding a file with several hardlinks are always processed the
ordinary way (which name comes first depends on the rest of the tree).
"""

from __future__ import annotations

import io
import json
import json.scanner
import os
import pickle
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import compress as select
from operator import attrgetter
from typing import Any, TypeGuard

from remotevss.backup.chunker import compress, is_zero
from remotevss.backup.crypto import Codec
from remotevss.backup.excludes import Excludes
from remotevss.backup.index import CacheRow, IndexDamaged, PreparedDir
from remotevss.backup.listing import (
    WALK_AHEAD,
    ListingPrefetch,
    listing_digest,
    prefetch_listings,
)
from remotevss.backup.memory import fewer_collections
from remotevss.backup.packs import DATA, POINT, TREE
from remotevss.backup.progress import Progress
from remotevss.backup.records import point_record, rebuild_records
from remotevss.backup.repo import BlobWriter, RepoError, Repository, blob_aad
from remotevss.backup.snapshot_source import (
    DIR,
    FILE,
    FileReader,
    LocalSource,
    RangeStream,
    Source,
    SourceEntry,
)
from remotevss.backup.tree import (
    Entry,
    Part,
    encode_tree,
    encode_tree_stored,
    encode_xattrs,
    file_text,
    make_entry,
    owner_parts,
    with_subtrees,
)
from remotevss.backup.workers import SMALL_FILE, Pool, Result, Task, WorkerDied, serve_batch

# The files-cache row that holds a directory's tree id and listing fingerprint.
# NUL cannot occur in a file name; the row has a file row's shape (content: the
# tree id as one segment, xattrs: the fingerprint), so prune drops it when the
# tree blob goes, and a program that does not know it sees a vanished file.
TREE_ROW = "\0tree"
TREE_FP_VERSION = b"rvss-tree-fp-1"
# The files-cache "directory" SKIP_DIR + relpath holds one TREE_ROW whose content
# is the directory's tree id and whose xattrs field is the hex of the listing
# digest followed by the hex of the digest over it and the subdirectories' tree ids.
SKIP_DIR = "\0skip\0"
SKIP_FP_VERSION = b"rvss-dir-skip-2"  # 2: owner names per distinct ids (listing.py)
# A live directory's file written while it was read is kept as read, and named: its
# copy may mix old and new data (its changed ctime makes the next run read it again).
CHANGED_WHILE_READ = "changed while it was read (stored as read; may mix old and new data)"
BATCH_BYTES = 1 << 20
BATCH_OPS = 256
WHOLE_READ = 8 << 20  # extents up to this size are read with one pread
MAX_ERRORS_KEPT = 1000
# Worker processes (local sources only) start once this many bytes are to be read:
# below it forking costs more than it saves (an incremental reads little or nothing).
PROCESSES_FROM = 32 << 20
DEFAULT_PROCESSES = 1  # two were not faster on the 2-core VM and cost ~25 MB more PSS
RUN_AHEAD = 8192  # listing entries read ahead once files are being read in earnest
TASK_FILES = 64
TASK_BYTES = 1 << 20

_TYPE = attrgetter("type")
_SIZE = attrgetter("size")
Chunk = bytes | memoryview
WorkResult = list[tuple[bytes | None, int, bytes | bytearray | None]]
# The C scanner behind json.loads, without its Python layers (3x faster per call):
# an unchanged incremental parses one cached content list per file.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder())  # type: ignore[arg-type]


@dataclass
class RecoveryPoint:
    """A committed recovery point, as returned to callers of ``run_backup``."""

    id: int
    uuid: str
    time_ns: int
    root: str
    meta: dict[str, Any]
    stats: dict[str, Any]


@dataclass
class Stats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    cache_hits: int = 0
    trees_reused: int = 0  # directories whose tree came from the files cache
    parent_read: int = 0  # bytes of files the parent read itself while workers were busy
    new_blobs: int = 0
    new_raw: int = 0
    new_stored: int = 0
    packs: int = 0
    seconds: float = 0.0
    error_count: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _work(chunks: list[Chunk], known: Callable[[bytes], bool], codec: Codec) -> WorkResult:
    """Worker: hash every chunk; compress and seal only those the repository lacks."""
    out: WorkResult = []
    for data in chunks:
        if is_zero(data):
            out.append((None, 0, None))
            continue
        cid = codec.blob_id(data)
        if known(cid):
            out.append((cid, 0, None))
        else:
            comp, packed = compress(data)
            out.append((cid, comp, codec.seal_chunk(packed, blob_aad(cid, DATA))))
    return out


class _CacheDir:
    """The files-cache rows of one directory as this run leaves them."""

    __slots__ = ("source", "relpath", "rows", "changed", "base")

    def __init__(self, source: str, relpath: str) -> None:
        self.source = source
        self.relpath = relpath
        self.rows: dict[str, CacheRow] = {}
        self.changed = False
        # The rows as read, with their text: unchanged ones are written as that text.
        self.base: tuple[dict[str, CacheRow], str] | None = None


class _Dir:
    __slots__ = ("entry", "children", "parent", "pending", "sealed", "cdir", "tree_row",
                 "listing_fp", "skip_row", "skip_from", "incomplete")

    def __init__(self, entry: Entry, parent: _Dir | None) -> None:
        self.entry = entry
        # Entries, or unchanged files' finished tree text (walk_listing).
        self.children: list[Part] = []
        self.parent = parent
        self.pending = 0  # children whose content or subtree is not known yet
        self.sealed = False  # all children listed
        # Files' content lists stay JSON text, as a 1-tuple, until close_dir:
        # parsed only when the directory's tree has to be encoded again.
        self.cdir: _CacheDir | None = None
        self.tree_row: CacheRow | None = None  # the cached (tree id, fingerprint)
        self.listing_fp: bytes | None = None  # digest of the raw listing (if it may skip)
        self.skip_row: CacheRow | None = None  # set while the directory is being skipped
        # What a skipped directory needs to be processed after all: source,
        # relpath, point path and the listing.
        self.skip_from: tuple[Source, str, str, list[SourceEntry]] | None = None
        self.incomplete = False  # an entry could not be read: keep no listing digest


# A later name of a hardlinked file waiting for its first name's read:
# (source, directory, its cache rows, relpath, point path, listing entry, tree entry).
_LinkWaiter = tuple[Source, "_Dir", "_CacheDir", str, str, SourceEntry, Entry]


class _File:
    __slots__ = ("entry", "parent", "segments", "pending", "sealed", "failed", "cache_row",
                 "link_first")

    def __init__(self, entry: Entry, parent: _Dir,
                 cache_row: tuple[_CacheDir, str, int, int, int, int]) -> None:
        self.entry = entry
        self.parent = parent
        self.segments: list[list[Any]] = []  # [offset, length, chunk id or None (zeros)]
        self.pending = 0
        self.sealed = False
        self.failed = False
        self.cache_row = cache_row
        # Its point path and (dev, ino), if other names may link to it.
        self.link_first: tuple[str, tuple[int, int]] | None = None


class _Engine:
    def __init__(self, repo: Repository, progress: Progress, workers: int,
                 ahead: Mapping[str, ListingPrefetch], processes: int = 0,
                 processes_from: int = PROCESSES_FROM) -> None:
        self.repo = repo
        self.workers = workers
        self.processes = processes
        self.processes_from = processes_from
        self.procs: Pool | None = None
        self.to_read = 0  # bytes of files read so far or queued (decides the processes)
        self.tasks: list[Task] = []
        self.task_bytes = 0
        self.tokens: dict[int, tuple[_File, str]] = {}
        self.next_token = 0
        self.ahead = ahead
        self.index = repo.index
        self.writer: BlobWriter = repo.writer()
        self.params = repo.chunker
        self.codec = repo.codec
        self.chunker = self.params.make()
        self.progress = progress
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="rvss-chunk")
        self.max_inflight = max(2, 2 * workers)
        self.fifo: deque[tuple[Future[WorkResult], list[tuple[_File, int]], list[Chunk]]] = deque()
        self.batch_ops: list[tuple[_File, int]] = []
        self.batch_data: list[Chunk] = []
        self.batch_bytes = 0
        self.stats = Stats()
        # Files-cache rows to write at the commit, sealed as each directory closed.
        self.cache_changed: list[PreparedDir] = []
        self.uncached: set[str] = set()  # cache keys of sources without any cached row
        self.visited: dict[str, set[str]] = {}
        # Cache keys of sources in which some directory was not skipped whole (its
        # listing differed, or could not be read): only their rows may need pruning.
        self.ordinary: set[str] = set()
        self.hardlinks: dict[tuple[int, int], str] = {}
        # Later names of a hardlinked file whose first name is still being read (by
        # that point path): their directories wait, since if the read fails a later
        # name must carry the data instead of linking to a name the point lacks.
        self.link_waiters: dict[str, list[_LinkWaiter]] = {}
        # Listing-digest rows fetched with their siblings', until their directory is walked.
        self.skip_ahead: dict[tuple[str, str], dict[str, CacheRow] | IndexDamaged] = {}

    # -- errors ---------------------------------------------------------------------
    def error(self, path: str, exc: BaseException | str) -> None:
        msg = exc if isinstance(exc, str) else (
            f"{exc.strerror}" if isinstance(exc, OSError) and exc.strerror else repr(exc))
        self.stats.error_count += 1
        self.progress.errors += 1
        if len(self.stats.errors) < MAX_ERRORS_KEPT:
            self.stats.errors.append({"path": path, "error": msg})
        self.progress.message(f"backup: {path}: {msg}")

    # -- the chunk pipeline -----------------------------------------------------------
    def add_chunk(self, f: _File, offset: int, data: Chunk) -> None:
        f.segments.append([offset, len(data), None])
        f.pending += 1
        self.batch_ops.append((f, len(f.segments) - 1))
        self.batch_data.append(data)
        self.batch_bytes += len(data)
        if self.batch_bytes >= BATCH_BYTES or len(self.batch_ops) >= BATCH_OPS:
            self.submit()

    def submit(self) -> None:
        if not self.batch_ops:
            return
        fut = self.pool.submit(_work, self.batch_data, self.writer.known, self.codec)
        self.fifo.append((fut, self.batch_ops, self.batch_data))
        self.batch_ops, self.batch_data, self.batch_bytes = [], [], 0
        while len(self.fifo) > self.max_inflight:
            self.resolve_one()

    def resolve_one(self) -> None:
        if not self.fifo[0][0].done():
            self.help()
        fut, ops, datas = self.fifo.popleft()
        results = fut.result()
        for (f, idx), data, (cid, comp, stored) in zip(ops, datas, results, strict=True):
            if cid is not None:
                if not self.writer.has(cid):
                    if stored is None:  # a worker saw it as known; it is not (cannot happen)
                        comp, stored = self.repo.encode(cid, DATA, data)
                    self.writer.add(cid, DATA, comp, stored, len(data))
                f.segments[idx][2] = cid
            f.pending -= 1
            if f.pending == 0 and f.sealed:
                self.finish_file(f)

    def help(self) -> None:
        """Run the newest queued batch in this thread instead of waiting idle.

        Why: when hashing+compression is the bottleneck the reader would
        otherwise sleep; cancelling a not-yet-started batch and doing it here
        keeps both cores busy while results are still consumed in order.
        """
        for i in range(len(self.fifo) - 1, 0, -1):
            fut, ops, datas = self.fifo[i]
            if fut.cancel():
                done: Future[WorkResult] = Future()
                done.set_result(_work(datas, self.writer.known, self.codec))
                self.fifo[i] = (done, ops, datas)
                return

    def drain(self) -> None:
        self.submit()
        while self.fifo:
            self.resolve_one()
        if self.procs is not None:
            self.send_tasks()
            self.procs.drain(self.on_results, self.inline)

    # -- worker processes -------------------------------------------------------------
    def start_processes(self) -> None:
        """Start the workers; files already handed to the threads are finished first
        (their chunks would otherwise stay in memory until the end)."""
        self.submit()
        while self.fifo:
            self.resolve_one()
        for lister in self.ahead.values():  # the walk is slower than the listing now
            lister.max_entries = min(lister.max_entries, RUN_AHEAD)
        self.procs = Pool(self.processes, self.codec, self.params)

    def queue_file(self, f: _File, path: str, ino: int, size: int, point_path: str) -> None:
        token = self.next_token
        self.next_token += 1
        self.tokens[token] = (f, point_path)
        self.tasks.append((token, path, ino))
        self.task_bytes += size
        if len(self.tasks) >= TASK_FILES or self.task_bytes >= TASK_BYTES:
            self.send_tasks()

    def send_tasks(self) -> None:
        assert self.procs is not None
        if self.tasks:
            batch, nbytes = self.tasks, self.task_bytes
            self.tasks, self.task_bytes = [], 0
            self.procs.submit(batch, self.on_results, self.inline, nbytes)
        self.procs.collect(self.on_results, block=False)

    def inline(self, task: Task, limit: int) -> bool:
        """Read a waiting file of at most ``limit`` bytes here, exactly as a worker
        would, while the workers are busy; a large one taking the workers'
        results between its parts (``Pool.poll``) so they are not held up."""
        f, _point_path = self.tokens[task[0]]
        procs = self.procs
        assert procs is not None
        size = f.cache_row[2]
        if size > limit:
            return False
        small = size <= SMALL_FILE

        def send(_last: bool, items: list[Result]) -> None:
            self.on_results(items)
            if not small:
                procs.poll(self.on_results)

        serve_batch([task], self.codec, self.params, self.chunker, send)
        self.stats.parent_read += size
        return True

    def on_results(self, items: list[Result]) -> None:
        writer, stats, progress = self.writer, self.stats, self.progress
        for token, kind, payload in items:
            f, point_path = self.tokens[token]
            if kind == "part":
                for off, n, cid, comp, sealed in payload:
                    f.segments.append([off, n, cid])
                    if cid is not None and not writer.has(cid):
                        writer.add(cid, DATA, comp, sealed, n)
                    stats.bytes_read += n
                    progress.add_bytes(n)
                continue
            del self.tokens[token]
            if kind == "done":
                size, xattrs, changed = payload
                f.entry["size"] = size  # the opened file's size, not the listing's
                if xattrs:  # read by the worker from the open file
                    f.entry["xattrs"] = encode_xattrs(xattrs)
                if changed:
                    self.error(point_path, CHANGED_WHILE_READ)
            else:
                self.error(point_path, payload)
                f.failed = True
            f.sealed = True
            progress.file_done()
            if f.pending == 0:
                self.finish_file(f)

    # -- completion -------------------------------------------------------------------
    def finish_file(self, f: _File) -> None:
        parent = f.parent
        if f.failed:
            parent.children.remove(f.entry)
            parent.incomplete = True
            self.stats.files -= 1  # the point's counts are of what it holds
            self.stats.bytes_total -= f.cache_row[2]
        else:
            # Same text as json.dumps(content, separators=(",", ":")), 5x faster;
            # parsed into the entry only if the directory's tree is encoded.
            text = ",".join([f'[{off},{n},"{cid.hex()}"]' for off, n, cid in f.segments
                             if cid is not None])
            f.entry["content"] = (f"[{text}]",)
            xa = f.entry.get("xattrs")
            xattrs = json.dumps(xa, sort_keys=True) if xa else "{}"  # most files have none
            cdir, name, size, mtime_ns, ctime_ns, ino = f.cache_row
            cdir.rows[name] = CacheRow(size, mtime_ns, ctime_ns, ino, f.entry["content"][0],
                                       xattrs)
        parent.pending -= 1
        if parent.pending == 0 and parent.sealed:
            self.close_dir(parent)
        if f.link_first is not None:
            self.release_links(*f.link_first, f.failed)

    def release_links(self, first: str, key: tuple[int, int], failed: bool) -> None:
        """The first name's read is over: its later names' directories go on; if it
        failed, the next name reads the file itself and the rest link to that one
        (a name not yet walked then becomes a first name of its own)."""
        waiters = self.link_waiters.pop(first, [])
        if failed and self.hardlinks.get(key) == first:
            del self.hardlinks[key]
        if failed and waiters:
            src, node, cdir, relpath, point_path, e, entry = waiters[0]
            del entry["link"]
            self.link_waiters[point_path] = waiters[1:]  # their waits carry over
            for w in waiters[1:]:
                w[6]["link"] = point_path
            self.stats.files -= 1  # file() counts it again, as read this time
            self.stats.bytes_total -= e.size
            cdir.changed = True  # its files-cache row is written as for any file read
            self.file(src, node, cdir, relpath, point_path, e, entry, None)
            waiters = waiters[:1]
        for _src, node, *_rest in waiters:
            node.pending -= 1
            if node.pending == 0 and node.sealed:
                self.close_dir(node)

    def close_dir(self, node: _Dir) -> None:
        if node.skip_row is not None:
            # Either the cached tree is reused, or the directory is now processed
            # the ordinary way and closed again once its files are done.
            self.close_unchanged(node)
            return
        cdir = node.cdir
        # Every input of the tree's bytes: the entries, with subdirectories' tree
        # ids set by now and files' content lists still as JSON text.  Only where
        # no listing digest was taken: with one, a directory reaches this point
        # only when its listing or a subdirectory's tree changed, and either
        # changes its tree too (the digest covers every listed field of an entry),
        # so the fingerprint would never match; skipping it also leaves the rows
        # of a directory whose files are all unchanged unwritten.
        fp = (None if node.listing_fp is not None
              else self.codec.blob_id(TREE_FP_VERSION + _flat_pickle(node.children)).hex())
        row = node.tree_row
        if (fp is not None and row is not None and row.xattrs == fp and len(row.content) == 74
                and row.content.startswith('[[0,0,"')):
            tid_hex = row.content[7:-3]
            self.stats.trees_reused += 1
        else:
            raw = encode_tree_stored(node.children)
            tid = self.codec.blob_id(raw)
            self.writer.add_raw(tid, TREE, raw)
            tid_hex = tid.hex()
            if cdir is not None and fp is not None:
                cdir.rows[TREE_ROW] = CacheRow(0, 0, 0, 0, f'[[0,0,"{tid_hex}"]]', fp)
                cdir.changed = True
        if cdir is not None:
            if row is not None and TREE_ROW not in cdir.rows:
                cdir.rows[TREE_ROW] = row
            if cdir.changed:  # rows of files read in this run were filled in by finish_file
                self.cache_changed.append(self.index.cache_prepare(
                    cdir.source, cdir.relpath, cdir.rows, cdir.base))
            cdir.base = None
            if node.listing_fp is not None and not node.incomplete:
                final = self.skip_digest(node.listing_fp, node.children)
                self.cache_changed.append(self.index.cache_prepare(
                    cdir.source, SKIP_DIR + cdir.relpath,
                    {TREE_ROW: CacheRow(0, 0, 0, 0, f'[[0,0,"{tid_hex}"]]',
                                        node.listing_fp.hex() + final.hex())}))
            node.cdir = None
        self.closed(node, tid_hex)

    def skip_digest(self, listing_fp: bytes, children: list[Part]) -> bytes:
        """The listing digest and the subdirectories' tree ids, in listing order."""
        return self.codec.blob_id(listing_fp + "".join(
            [e["subtree"] for e in children if type(e) is dict and e["type"] == DIR]).encode())

    def close_unchanged(self, node: _Dir) -> None:
        """A directory whose listing matched: reuse its tree if every subdirectory's
        tree id is unchanged too, else process it the ordinary way."""
        row, node.skip_row = node.skip_row, None
        assert row is not None and node.skip_from is not None and node.listing_fp is not None
        src, relpath, point_path, listing = node.skip_from
        final = self.skip_digest(node.listing_fp, node.children)
        if row.xattrs[64:] == final.hex():
            self.count_unchanged(listing)
            self.stats.trees_reused += 1
            self.closed(node, row.content[7:-3])
            return
        if self.patch_tree(node, row, final, listing):
            return
        subtrees = {e["name"]: e["subtree"] for e in node.children  # stand-ins: dicts
                    if type(e) is dict}
        node.children = []
        node.sealed = False
        node.skip_from = None
        self.walk_listing(src, node, relpath, point_path, listing, subtrees)

    def count_unchanged(self, listing: list[SourceEntry]) -> None:
        """A listed directory's files as cache hits, and its other entries.

        Counted in C (map, itertools.compress): this ran once per entry of every
        unchanged directory, after the key derivation, on the critical path."""
        types = list(map(_TYPE, listing))
        is_file = list(map(FILE.__eq__, types))
        files = is_file.count(True)
        nbytes = sum(select(map(_SIZE, listing), is_file))
        self.stats.files += files
        self.stats.cache_hits += files
        self.stats.bytes_total += nbytes
        self.stats.others += len(types) - files - types.count(DIR)
        self.progress.files_done(files, nbytes)

    def patch_tree(self, node: _Dir, row: CacheRow, final: bytes,
                   listing: list[SourceEntry]) -> bool:
        """A directory whose listing matched but a subdirectory's tree id did not:
        its last tree (the skip row names it) with the new subtree ids
        (``tree.with_subtrees``), the same bytes as building it again, since the
        digest covers every listed field of every entry.  False (nothing done) if
        that tree cannot be read or cut: the caller builds it the ordinary way."""
        assert node.skip_from is not None and node.listing_fp is not None
        src, relpath = node.skip_from[0], node.skip_from[1]
        subtrees = [e["subtree"] for e in node.children if type(e) is dict]
        dirs = [(i, e.name, tid) for (i, e), tid in zip(
            filter(lambda ie: ie[1].type == DIR, enumerate(listing)), subtrees, strict=True)]
        try:
            raw = with_subtrees(self.repo.read_blob(bytes.fromhex(row.content[7:-3])),
                                len(listing), dirs)
        except (RepoError, ValueError):
            return False
        if raw is None:
            return False
        tid = self.codec.blob_id(raw)
        self.writer.add_raw(tid, TREE, raw)
        tid_hex = tid.hex()
        self.count_unchanged(listing)
        self.cache_changed.append(self.index.cache_prepare(
            src.cache_key, SKIP_DIR + relpath,
            {TREE_ROW: CacheRow(0, 0, 0, 0, f'[[0,0,"{tid_hex}"]]',
                                node.listing_fp.hex() + final.hex())}))
        node.skip_from = None
        self.closed(node, tid_hex)
        return True

    def closed(self, node: _Dir, tid_hex: str) -> None:
        node.entry["subtree"] = tid_hex
        node.children = []
        parent = node.parent
        if parent is not None:
            parent.pending -= 1
            if parent.pending == 0 and parent.sealed:
                self.close_dir(parent)

    # -- walking ----------------------------------------------------------------------
    def walk(self, src: Source, node: _Dir, relpath: str, point_path: str) -> None:
        self.stats.dirs += 1
        visited = self.visited.setdefault(src.cache_key, set())
        visited.add(relpath)
        lister = self.ahead.get(src.label)
        digest: bytes | None = None
        try:
            if lister is not None:
                listing, digest = lister.scandir_digest(relpath)
            else:
                listing = src.scandir(relpath)
                if src.listing_proves_unchanged:
                    digest = listing_digest(listing, src)
        except OSError as exc:
            self.error(point_path, exc)
            listing = []
            node.incomplete = True
            self.ordinary.add(src.cache_key)
        if src.listing_proves_unchanged and not node.incomplete:
            visited.add(SKIP_DIR + relpath)
            if digest is not None:
                node.listing_fp = fp = self.codec.blob_id(SKIP_FP_VERSION + digest)
                row = self.skip_row(src, relpath)
                if (row is not None and len(row.xattrs) == 128 and row.xattrs[:64] == fp.hex()
                        and len(row.content) == 74 and row.content.startswith('[[0,0,"')):
                    self.walk_unchanged(src, node, relpath, point_path, listing, row)
                    return
        self.skip_ahead.pop((src.cache_key, relpath), None)  # fetched but not needed
        self.walk_listing(src, node, relpath, point_path, listing)

    def skip_row(self, src: Source, relpath: str) -> CacheRow | None:
        if src.cache_key in self.uncached:
            return None
        rows = self.skip_ahead.pop((src.cache_key, relpath), None)
        if rows is None and self.fetch_skip(src, [relpath], 1):
            rows = self.skip_ahead.pop((src.cache_key, relpath), None)
        if rows is None:
            try:
                rows = self.index.cache_dir(src.cache_key, SKIP_DIR + relpath)
            except IndexDamaged:
                return None  # the ordinary way, which writes the row again
        if isinstance(rows, IndexDamaged):
            return None
        return rows.get(TREE_ROW)

    def fetch_skip_rows(self, src: Source, relpath: str, listing: list[SourceEntry],
                        dirs: list[SourceEntry] | None = None) -> None:
        """The listing-digest rows of a directory's subdirectories (``dirs``, if the
        caller has picked them out), in one query: one per directory costs more
        than the rest of an unchanged directory's walk."""
        if src.cache_key in self.uncached:
            return
        prefix = f"{relpath}/" if relpath else ""
        self.fetch_skip(src, [prefix + e.name for e in (_subdirs(listing) if dirs is None
                                                        else dirs)], 2)

    def fetch_skip(self, src: Source, dirs: list[str], least: int) -> bool:
        """The listing-digest rows of ``dirs`` and of every directory the listing
        reader has listed since it was last asked (not yet walked, not yet
        fetched), in one query per 500, if there are at least ``least`` of them;
        whether they were asked for.  Why: with the tree listed during the key
        derivation, an unchanged incremental's 3,742 directories took ~1,000
        queries (one per directory with a single subdirectory), now ~8."""
        key = src.cache_key
        lister = self.ahead.get(src.label)
        ahead = self.skip_ahead
        want = [d for d in dirs if (key, d) not in ahead]
        if lister is not None:  # those walked already would never be taken out of ahead
            walked = self.visited.get(key, set())
            want += [d for d in lister.take_listed() if d not in walked and (key, d) not in ahead]
            want = list(dict.fromkeys(want))
        if len(want) < least:
            return False
        got = self.index.cache_dirs(key, [SKIP_DIR + d for d in want])
        if got is None:
            return False
        for d in want:  # a directory without a row gets {}: no second query for it
            ahead[(key, d)] = got.get(SKIP_DIR + d, {})
        return True

    def walk_unchanged(self, src: Source, node: _Dir, relpath: str, point_path: str,
                       listing: list[SourceEntry], row: CacheRow) -> None:
        """Only the subdirectories of a directory whose listing matched the cached one."""
        node.skip_row = row
        node.skip_from = (src, relpath, point_path, listing)
        dirs = _subdirs(listing)
        self.fetch_skip_rows(src, relpath, listing, dirs)
        for e in dirs:
            # A stand-in entry: only its tree id is needed unless the tree is rebuilt.
            child = _Dir({"name": e.name, "type": DIR}, node)
            node.children.append(child.entry)
            node.pending += 1
            self.walk(src, child, f"{relpath}/{e.name}" if relpath else e.name,
                      f"{point_path}/{e.name}")
        node.sealed = True
        if node.pending == 0:
            self.close_dir(node)

    def walk_listing(self, src: Source, node: _Dir, relpath: str, point_path: str,
                     listing: list[SourceEntry],
                     subtrees: dict[str, str] | None = None) -> None:
        """Every entry of the directory; with ``subtrees`` (name -> tree id, from an
        unchanged listing whose subdirectories changed) they are not walked again."""
        self.ordinary.add(src.cache_key)
        cdir = _CacheDir(src.cache_key, relpath)
        cached: dict[str, CacheRow] = {}
        if src.cache_key not in self.uncached:
            try:
                cached, text = self.index.cache_dir_text(src.cache_key, relpath)
            except IndexDamaged as exc:
                self.progress.message(f"backup: {point_path}: {exc}; its files are read again")
                cdir.changed = True
            else:
                if text is not None:
                    cdir.base = (dict(cached), text)  # ``cached`` is emptied below
        node.cdir = cdir
        node.tree_row = cached.pop(TREE_ROW, None)
        if src.listing_proves_unchanged and subtrees is None:
            self.fetch_skip_rows(src, relpath, listing)
        if src.read_hints:  # tell the source which files will be read (SMB: prefetch them)
            misses = []
            for e in listing:
                if e.type == FILE:
                    c = cached.get(e.name)
                    if c is None or (c.size, c.mtime_ns, c.ctime_ns, c.ino) != (
                            e.size, e.mtime_ns, e.ctime_ns, e.ino):
                        misses.append(e)
            src.will_read(relpath, misses)
        owner, children, rows = src.owner, node.children, cdir.rows
        legacy = self.index.schema == 1
        # Unchanged files go in as their finished tree text (tree.file_text) where
        # nothing else reads the entries: with a listing digest (no fingerprint),
        # not from SMB (attributes, birth times), not with legacy plain rows.
        as_text = node.listing_fp is not None and not legacy
        owners: dict[tuple[int, int], tuple[str, str]] = {}
        hits = hit_bytes = 0
        for e in listing:
            if e.type == FILE and e.nlink < 2:
                # The common case on its own, as ``file`` would take it: an unchanged
                # file with one name (in a directory that changed, every entry passes
                # here; this loop ran ~8 us an entry).
                hit = cached.pop(e.name, None)
                if hit is not None and hit.size == e.size and hit.mtime_ns == e.mtime_ns \
                        and hit.ctime_ns == e.ctime_ns and hit.ino == e.ino:
                    rows[e.name] = hit
                    hits += 1
                    hit_bytes += e.size
                    # unchanged ctime: the cached xattrs hold
                    if as_text and hit.xattrs == "{}" and e.attributes is None \
                            and e.btime_ns is None:
                        ids = (e.uid, e.gid)
                        parts = owners.get(ids)
                        if parts is None:
                            parts = owners[ids] = owner_parts(*owner(e))
                        children.append(file_text(e, parts, hit.content))
                        continue
                    user, group = owner(e)
                    entry = make_entry(e, user, group, {})
                    if hit.xattrs != "{}":
                        entry["xattrs"] = _scan_json(hit.xattrs, 0)[0]
                    entry["content"] = (_scan_json(hit.content, 0)[0] if legacy
                                        else (hit.content,))
                    children.append(entry)
                    continue
                if hit is not None:  # changed: taken the ordinary way, as a miss
                    cached[e.name] = hit
            child_rel = f"{relpath}/{e.name}" if relpath else e.name
            child_point = f"{point_path}/{e.name}"
            user, group = owner(e)
            hit = cached.pop(e.name, None) if e.type == FILE else None
            if hit is not None and (hit.size, hit.mtime_ns, hit.ctime_ns, hit.ino) != (
                    e.size, e.mtime_ns, e.ctime_ns, e.ino):
                hit = None
            if e.type == FILE and not (e.nlink > 1 and (e.dev, e.ino) in self.hardlinks):
                if hit is not None:
                    cdir.rows[e.name] = hit
                else:
                    cdir.changed = True
            if hit is not None:
                # Setting or removing an xattr changes ctime, so an unchanged
                # ctime means the cached xattrs hold: no listxattr per file.
                entry = make_entry(e, user, group, {})
                if hit.xattrs != "{}":
                    entry["xattrs"] = _scan_json(hit.xattrs, 0)[0]
            elif e.type == FILE and self.procs is not None and not (
                    e.nlink > 1 and (e.dev, e.ino) in self.hardlinks):
                entry = make_entry(e, user, group, {})  # the worker reads its xattrs
            else:
                entry = make_entry(e, user, group, src.xattrs(child_rel, e))
            node.children.append(entry)
            if e.type == DIR and subtrees is not None:
                entry["subtree"] = subtrees[e.name]
            elif e.type == DIR:
                child = _Dir(entry, node)
                node.pending += 1
                self.walk(src, child, child_rel, child_point)
            elif e.type == FILE:
                self.file(src, node, cdir, child_rel, child_point, e, entry, hit)
            else:
                self.stats.others += 1
        self.stats.files += hits
        self.stats.cache_hits += hits
        self.stats.bytes_total += hit_bytes
        self.progress.files_done(hits, hit_bytes)
        if cached:  # cached names that are no longer regular files here
            cdir.changed = True
        node.sealed = True
        if node.pending == 0:
            self.close_dir(node)

    def file(self, src: Source, node: _Dir, cdir: _CacheDir, relpath: str, point_path: str,
             e: SourceEntry, entry: Entry, hit: CacheRow | None) -> None:
        self.stats.files += 1
        self.stats.bytes_total += e.size
        if e.nlink > 1:
            first = self.hardlinks.get((e.dev, e.ino))
            if first is not None:
                entry["link"] = first
                waiting = self.link_waiters.get(first)
                if waiting is not None:
                    node.pending += 1
                    waiting.append((src, node, cdir, relpath, point_path, e, entry))
                self.progress.file_done()
                return
            self.hardlinks[(e.dev, e.ino)] = point_path
        if hit is not None:  # (size, mtime, ctime, file id) matched in walk()
            # A sealed row's text is what finish_file wrote: it goes into the tree
            # as it is (encode_tree_stored); a legacy plain row's is parsed first.
            entry["content"] = ((hit.content,) if self.index.schema != 1
                                else _scan_json(hit.content, 0)[0])
            self.stats.cache_hits += 1
            self.progress.file_done(e.size)
            return
        f = _File(entry, node, (cdir, e.name, e.size, e.mtime_ns, e.ctime_ns, e.ino))
        if e.nlink > 1:
            f.link_first = (point_path, (e.dev, e.ino))
            self.link_waiters.setdefault(point_path, [])
        node.pending += 1
        if self.processes and _worker_readable(src):
            self.to_read += e.size
            if self.procs is None and self.to_read >= self.processes_from:
                self.start_processes()
            if self.procs is not None:
                self.queue_file(f, src.path(relpath), e.ino, e.size, point_path)
                return
        try:
            reader = src.open(relpath, e)
        except OSError as exc:
            self.error(point_path, exc)
            f.failed = True
        else:
            try:
                self.read_file(f, reader)
                if reader.changed():
                    self.error(point_path, CHANGED_WHILE_READ)
            except OSError as exc:
                self.error(point_path, exc)
                f.failed = True
            finally:
                reader.close()
        f.sealed = True
        self.progress.file_done()
        if f.pending == 0:
            self.finish_file(f)

    def read_file(self, f: _File, reader: FileReader) -> None:
        f.entry["size"] = reader.size  # the opened file's size, not the listing's
        late = reader.xattrs()
        if late:  # e.g. an SMB security descriptor, fetched with the open
            f.entry["xattrs"] = dict(sorted({**f.entry.get("xattrs", {}),
                                             **encode_xattrs(late)}.items()))
        min_size = self.params.min_size
        for off, length in reader.extents():
            if length <= WHOLE_READ:
                buf = reader.pread(off, length)
                self.stats.bytes_read += len(buf)
                self.progress.add_bytes(len(buf))
                if len(buf) <= min_size:
                    if buf:
                        self.add_chunk(f, off, buf)
                    continue
                for c in self.chunker.cut_buf(buf):
                    self.add_chunk(f, off + c.offset, c.data)
            else:
                for c in self.chunker.cut_stream(RangeStream(reader, off, length)):
                    self.add_chunk(f, off + c.offset, bytes(c.data))
                    self.stats.bytes_read += c.length
                    self.progress.add_bytes(c.length)

    def close(self) -> None:
        if self.procs is not None:
            self.procs.close(kill=True)  # drained on success; on failure nothing waits
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.writer.close()


def _subdirs(listing: list[SourceEntry]) -> list[SourceEntry]:
    """The directories of a listing, in its order, picked out in C (an unchanged
    tree's walk looks at nothing else of most listings)."""
    return list(select(listing, map(DIR.__eq__, map(_TYPE, listing))))


def _flat_pickle(obj: object) -> bytes:
    """pickle without its memo: the same values give the same bytes whichever
    objects happen to be shared (plain pickle writes a repeated string as a
    reference to its first occurrence)."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=5)
    p.fast = True  # documented: no memo
    p.dump(obj)
    return buf.getvalue()


def _scan_totals(sources: Sequence[Source], progress: Progress, stop: threading.Event) -> None:
    """Count files and bytes in the background so the terminal line can show an ETA."""
    files = nbytes = 0
    for src in sources:
        stack = [""]
        while stack and not stop.is_set():
            rel = stack.pop()
            try:
                listing = src.scandir(rel)
            except OSError:
                continue
            for e in listing:
                if e.type == DIR:
                    stack.append(f"{rel}/{e.name}" if rel else e.name)
                elif e.type == FILE:
                    files += 1
                    nbytes += e.size
    if not stop.is_set():
        progress.set_total(files, nbytes)


def run_backup(repo: Repository, sources: Sequence[Source], meta: Mapping[str, Any] | None = None,
               progress: Progress | None = None, workers: int = 2,
               ahead: Mapping[str, ListingPrefetch] | None = None,
               processes: int = DEFAULT_PROCESSES,
               processes_from: int = PROCESSES_FROM) -> RecoveryPoint:
    """Back up ``sources`` into one new recovery point; atomic: all or nothing.

    ``repo`` must be open in "write" mode.  ``meta`` is stored with the point
    (shadow copy set id, creation time, share names...).  Unreadable files are
    skipped and listed in ``stats["errors"]``; the point is still created.
    ``ahead``: listings already being read (by label); by default local
    sources get their own, stopped on return.  ``processes``: worker processes
    that read and chunk the files of local sources (0: threads only), started
    once ``processes_from`` bytes are to be read.
    """
    with fewer_collections():  # memory.py: the collector took 0.1-0.6 s of a run
        return _run_backup(repo, sources, meta, progress, workers, ahead, processes,
                           processes_from)


def _run_backup(repo: Repository, sources: Sequence[Source], meta: Mapping[str, Any] | None,
                progress: Progress | None, workers: int,
                ahead: Mapping[str, ListingPrefetch] | None, processes: int,
                processes_from: int) -> RecoveryPoint:
    labels = [s.label for s in sources]
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"sources need distinct labels, got {labels}")
    for s in sources:
        excludes = getattr(s, "excludes", None)
        if excludes is not None:  # a repository inside a source is not backed up into itself
            excludes.skip_dir(repo.path)
    repo.lock_sources(labels)
    progress = progress or Progress(enabled=False)
    started = time.monotonic()
    # Hand the GIL over after 1 ms instead of 5: a worker whose zstd call
    # returned otherwise waits for the reading thread's time slice to end.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, 0.001))
    time_ns = time.time_ns()
    own_ahead = ahead is None
    if ahead is None:
        ahead = prefetch_listings(sources)
    for lister in ahead.values():
        lister.max_entries = min(lister.max_entries, WALK_AHEAD)
    engine = _Engine(repo, progress, workers, ahead, processes, processes_from)
    stop = threading.Event()
    scanner = None
    if progress.enabled:
        scanner = threading.Thread(target=_scan_totals, args=(sources, progress, stop),
                                   daemon=True)
        scanner.start()
    try:
        engine.uncached = {s.cache_key for s in sources
                           if not repo.index.cache_has_source(s.cache_key)}
        for s in sources:
            if s.cache_key in engine.uncached and s.label in ahead:
                ahead[s.label].ignore_listed()
        if engine.uncached:
            engine.writer.expect_many_questions()
        if processes and any(_worker_readable(s) and s.cache_key in engine.uncached
                             for s in sources):
            engine.start_processes()  # all is to be read: no reason to wait for 32 MiB
        roots: list[Entry] = []
        for src in sources:
            root = src.stat_root()
            user, group = src.owner(root)
            entry = make_entry(root, user, group, src.xattrs("", root))
            roots.append(entry)
            engine.walk(src, _Dir(entry, None), "", src.label)
        engine.drain()
        root_raw = encode_tree(roots)
        root_id = repo.blob_id(root_raw)
        engine.writer.add_raw(root_id, TREE, root_raw)
        point_uuid = uuid.uuid4().hex
        stats = engine.stats
        stats.new_blobs = engine.writer.new_blobs
        stats.new_raw = engine.writer.new_raw
        stats.new_stored = engine.writer.new_stored
        stats.seconds = round(time.monotonic() - started, 3)
        record = point_record(point_uuid, time_ns, root_id, labels, dict(meta or {}))
        record_id = repo.blob_id(record)
        engine.writer.add_raw(record_id, POINT, record)
        # Records of older points lost with a pack (see records.py) come back
        # once their root tree is stored again, as this run may just have done.
        rebuild_records(repo, engine.writer, {root_id: root_raw})
        stats.packs = engine.writer.packs_written + (engine.writer.pack is not None)
        with engine.writer.final() as idx:
            point_id = idx.add_point(point_uuid, time_ns, root_id, record_id,
                                     dict(meta or {}), stats.to_json())
            idx.cache_write_prepared(engine.cache_changed)
            for src in sources:
                # When every directory's listing matched the cached digest the tree is
                # the one the last committed run saw and pruned for (a directory gone
                # changes its parent's listing): nothing to prune, and no need to key
                # every visited path again (~25 ms on 3,742 directories).
                if src.cache_key in engine.ordinary:
                    idx.cache_prune_dirs(src.cache_key,
                                         engine.visited.get(src.cache_key, set()))
        return RecoveryPoint(point_id, point_uuid, time_ns, root_id.hex(), dict(meta or {}),
                             stats.to_json())
    except WorkerDied as exc:
        raise RepoError(str(exc)) from None
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        if own_ahead:
            for lister in ahead.values():
                lister.stop()
        engine.close()
        progress.finish()


def _worker_readable(src: Source) -> TypeGuard[LocalSource]:
    """Whether worker processes may read this source's files: they open them as
    ``LocalSource.open`` does, so not for a source that opens files its own way."""
    return isinstance(src, LocalSource) and type(src).open is LocalSource.open


def local_sources(specs: Sequence[str], excludes: Excludes | None = None) -> list[Source]:
    """``[LABEL=]PATH`` strings as local sources (the CLI's and tests' form), all
    leaving out what ``excludes`` says."""
    from remotevss.backup.snapshot_source import LocalSource

    out: list[Source] = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or os.path.exists(spec):
            label, path = "", spec
        out.append(LocalSource(path, label or None, excludes))
    return out
