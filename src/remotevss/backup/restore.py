"""Restore a recovery point (or a subtree of it) into a local directory.

Why in this order: file data first, then owner, xattrs (ACLs), mode, and
times last, because each earlier step may change what a later one set
(chown clears set-id bits, writing changes mtime); directories get their
metadata after their children for the same reason, and so a read-only
directory does not stop its own restore.  Holes are never written, so sparse
files stay sparse.  A damaged chunk fails only the files that use it.  Large
restores write regular files in a worker process as well (restore_workers.py);
the hardlinks and the directories' metadata then wait until every file is
written.

Why descriptors, not paths: restore usually runs as root into a directory other
users can write, and a path looked up twice can lead elsewhere the second time
(a directory swapped for a symlink to /etc).  So the target is opened once and
everything below it is reached from its parent's descriptor, never followed
through a symlink, and set on what was opened (restore_fs.py); a directory
keeps its descriptor until its metadata is set, and the writer processes open
those very directories (restore_workers.ParentDirs).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import resource
import select
import stat
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remotevss.backup import restore_fs, signals, workers
from remotevss.backup.chunker import is_zero
from remotevss.backup.index import Location, PointRow
from remotevss.backup.progress import Progress
from remotevss.backup.repo import BlobError, RepoError, Repository
from remotevss.backup.snapshot_source import BLOCK, CHAR, DIR, FIFO, FILE, SOCKET, SYMLINK
from remotevss.backup.tree import Entry, decode_tree, find_entry, xattrs_of

#: Pseudo-xattrs of non-local sources, kept in the point but not written to a local
#: file system (Linux has no such namespace): SMB's ``smb.security_descriptor``.
FOREIGN_XATTR_PREFIXES = ("smb.",)
ACL_ACCESS, ACL_DEFAULT = "system.posix_acl_access", "system.posix_acl_default"
#: Chunks of at least this size are read and opened ahead by threads while this
#: one writes (smaller ones cost more to hand over than to open here: 32 KiB and
#: 16 KiB were slower).
AHEAD_MIN = 128 << 10
# Raw bytes opened ahead at most, counted per chunk (a large file's chunks are not
# all handed over at once: that held ~50 MB more at the peak).  Cold, from disk,
# 24 MiB restored the libraries in 2.75 s, 8 MiB in 3.02 s (median of 3), at the
# same peak PSS.
AHEAD_BYTES = 24 << 20
DECODERS = 2  # threads opening chunks ahead (1: waited ~2x as long for them)
#: Worker processes writing files beside this one (restore_workers.py), started
#: once a restore has met this many files or bytes (a start costs ~0.1 s).
PROCESSES = 1
POOL_FROM_FILES = 500
POOL_FROM_BYTES = 64 << 20
#: Files handed over at a time, and batches a worker holds before this process
#: writes the next batch itself.
BATCH_FILES = 64
BATCH_BYTES = 8 << 20
WORKER_BATCHES = 2
#: Directories (or hardlinks) waiting for their files before everything handed over
#: is waited for and they are done: bounds what a restore of millions of
#: directories holds, at the cost of one pause of the writers per this many.
SETTLE_AT = 4096

#: Where something is restored: its names below the restore's root directory.
Rel = tuple[str, ...]
#: A directory the parent holds open: (its descriptor, device, inode).
DirRef = tuple[int, int, int]
#: A file for a writer: (its directory, name, entry, point path, whether its directory
#: was made by this restore without a default ACL, whether its directory has one).
FileTask = tuple[DirRef, str, "Entry", str, bool, bool]
#: What became of it: (written, bytes, errors, warnings).
FileOutcome = tuple[bool, int, list[dict[str, str]], list[dict[str, str]]]


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Restorer:
    def __init__(self, repo: Repository, point: PointRow | None, progress: Progress,
                 processes: int = 0, pool_from: tuple[int, int] = (POOL_FROM_FILES,
                                                                   POOL_FROM_BYTES),
                 restored: dict[str, Rel] | None = None, root: int = -1) -> None:
        self.repo = repo
        self.point = point
        self.progress = progress
        self.result = RestoreResult()
        self.as_root = os.geteuid() == 0
        # The directory everything is restored below (the caller's descriptor), and
        # point path -> where it was restored below it (for hardlinks, found again
        # from there); shared by the items of one --include restore, so two names
        # of one file stay one file.
        self.root = root
        self.restored: dict[str, Rel] = {} if restored is None else restored
        # Large chunks of the files next in the directory, opened by threads:
        # reading, decompressing and hashing release the GIL, so this overlaps
        # the writing (it was one after the other, on one core).
        self.decoder: ThreadPoolExecutor | None = None
        self.ahead: dict[str, tuple[Future[bytes], int]] = {}  # chunk id hex -> (data, length)
        self.ahead_bytes = 0
        self.switch = sys.getswitchinterval()
        # Places of the chunks of the directory being restored (chunk id hex -> place),
        # looked up in one query per directory, not one per chunk.
        self.located: dict[str, Location] = {}
        # Permission bits the umask removes from a new file (None: unknown), whether
        # the directory being restored was made by us without a default ACL, and
        # whether it has one (its new entries then inherit ACLs the point may lack).
        self.umask = _umask()
        self.plain_dir = False
        self.inherit_dir = False
        # Regular files go to worker processes (and this one) in batches once
        # ``pool_from`` (files, bytes) are met; until every file is written the
        # hardlinks and the directories' metadata wait (``finish``).
        # (Without /proc, as in a bare chroot, a writer could not reach the open
        # directories: the files are then all written here.)
        self.processes = processes if processes and os.path.isdir(
            f"/proc/{os.getpid()}/fd") else 0
        self.pool_from = pool_from
        self.pool: _Writers | None = None
        self.met = [0, 0]  # files and bytes met before the pool started
        self.batch: list[FileTask] = []
        self.batch_bytes = 0
        # Waiting for ``settle``: hardlinks (in a directory still open), and the open
        # directories whose walk has ended, with whether they inherited ACLs; at most
        # ``settle_at`` of either (each holds a descriptor).
        self.later_links: list[tuple[int, str, Rel, Entry, str]] = []
        self.later_dirs: list[tuple[int, Entry, str, bool]] = []
        self.settle_at = (min(SETTLE_AT, _descriptor_budget()) if self.processes
                          else SETTLE_AT)

    def look_ahead(self, entries: list[Entry], at: tuple[int, int]) -> tuple[int, int]:
        """Hand large chunks of the files from ``entries[at[0]]``'s chunk ``at[1]`` on to
        the decoding threads while fewer than AHEAD_BYTES wait; returns where it
        stopped, (entry, chunk), to go on from there."""
        i, j = at
        while i < len(entries):
            e = entries[i]
            content = e.get("content", ()) if e.get("type") == FILE and "link" not in e else ()
            while j < len(content):
                if self.ahead_bytes >= AHEAD_BYTES:
                    return i, j
                _off, length, cid = content[j]
                j += 1
                if length < AHEAD_MIN or cid in self.ahead:
                    continue
                if self.decoder is None:
                    self.decoder = ThreadPoolExecutor(DECODERS, "rvss-restore-read")
                    # Hand the GIL over after 1 ms, not 5: the threads retake it
                    # after each read, decompression and hash.
                    sys.setswitchinterval(min(self.switch, 0.001))
                fut = self.decoder.submit(self.repo.read_blob, bytes.fromhex(cid),
                                          self.located.pop(cid, None))
                self.ahead[cid] = (fut, length)
                self.ahead_bytes += length
            i, j = i + 1, 0
        return i, j

    def chunk(self, cid: str) -> bytes:
        got = self.ahead.pop(cid, None)
        if got is None:
            return self.repo.read_blob(bytes.fromhex(cid), self.located.pop(cid, None))
        self.ahead_bytes -= got[1]
        return got[0].result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        dirs, self.later_dirs, self.later_links = self.later_dirs, [], []
        _close_all(fd for fd, *_rest in dirs)  # stopped before they were settled
        self.drop_ahead()
        if self.decoder is not None:
            self.decoder.shutdown(wait=True, cancel_futures=True)
            self.decoder = None
            sys.setswitchinterval(self.switch)

    def tree(self, tree_id: str | bytes) -> list[Entry]:
        tid = bytes.fromhex(tree_id) if isinstance(tree_id, str) else tree_id
        return decode_tree(self.repo.read_blob(tid))

    def find(self, path: str) -> Entry | None:
        """The entry at a '/'-separated point path ('' is not an entry)."""
        assert self.point is not None
        return find_entry(self.tree, self.point.root, [p for p in path.split("/") if p])

    def fail(self, path: str, exc: BaseException | str, warning: bool = False) -> None:
        msg = exc if isinstance(exc, str) else (
            exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
        (self.result.warnings if warning else self.result.errors).append(
            {"path": path, "error": msg})
        if not warning:
            self.progress.errors += 1
        self.progress.message(f"restore: {'warning: ' if warning else ''}{path}: {msg}")

    def locate(self, entries: list[Entry]) -> None:
        """The places of the files' chunks, in one query per 500 chunks."""
        ids = {cid for e in entries if e.get("type") == FILE and "link" not in e
               for _off, _n, cid in e.get("content", ())} - self.located.keys()
        if ids:
            for bid, loc in self.repo.locate_many([bytes.fromhex(c) for c in ids]).items():
                self.located[bid.hex()] = loc

    # -- metadata -----------------------------------------------------------------------
    def apply_meta_fd(self, fd: int, e: Entry, point_path: str, mode_set: bool,
                      inherited: bool) -> None:
        """Owner, xattrs, mode and times on an open file or directory: the calls act on
        what was opened, whatever its name leads to by now.  ``inherited``: it was
        made in a directory with a default ACL."""
        self.apply_owner_xattrs(fd, e, point_path)
        if inherited:
            self.drop_inherited_acls(fd, e, point_path)
        if not mode_set:  # created with it (``created_with_mode``)
            os.fchmod(fd, e["mode"])
        os.utime(fd, ns=(e["atime"], e["mtime"]))

    def apply_meta_made(self, parent: int, name: str, fmt: int, e: Entry, point_path: str,
                        inherited: bool) -> None:
        """``apply_meta_fd`` for a symlink or special file just made at ``name``: these
        cannot be opened for writing, so the calls go to an ``O_PATH`` descriptor of
        that very inode, through ``/proc/self/fd/N`` (restore_fs.open_made)."""
        fd = restore_fs.open_made(parent, name, fmt)
        try:
            path = restore_fs.fd_path(fd)
            self.apply_owner_xattrs(path, e, point_path)
            if fmt != stat.S_IFLNK:
                if inherited:
                    self.drop_inherited_acls(path, e, point_path)
                os.chmod(path, e["mode"])
            os.utime(path, ns=(e["atime"], e["mtime"]))
        finally:
            os.close(fd)

    def apply_owner_xattrs(self, target: int | str, e: Entry, point_path: str) -> None:
        """Owner (as root) and xattrs on ``target``: an open descriptor, or the
        ``/proc/self/fd/N`` of one; a failure is a warning for that entry."""
        if self.as_root and (e["uid"], e["gid"]) != (-1, -1):  # -1: unknown (SMB sources)
            try:
                os.chown(target, e["uid"], e["gid"])
            except OSError as exc:
                self.fail(point_path, f"chown: {exc.strerror}", warning=True)
        for name, value in xattrs_of(e).items():
            if name.startswith(FOREIGN_XATTR_PREFIXES):
                continue  # e.g. an SMB security descriptor: no local equivalent
            try:
                os.setxattr(target, name, value)
            except OSError as exc:
                self.fail(point_path, f"xattr {name}: {exc.strerror}", warning=True)

    def drop_inherited_acls(self, target: int | str, e: Entry, point_path: str) -> None:
        """Remove the ACLs a new entry inherited from its directory's default ACL that
        the point does not have: restored as it was, not as the target would make
        it (an inherited entry can grant access the source never did).
        ``target``: an open descriptor, or the ``/proc/self/fd/N`` of one."""
        names = (ACL_ACCESS, ACL_DEFAULT) if e["type"] == DIR else (ACL_ACCESS,)
        for name in names:
            if name in e.get("xattrs", ()):
                continue  # set from the point just before
            try:
                os.removexattr(target, name)
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                    self.fail(point_path, f"inherited ACL {name}: {exc.strerror}",
                              warning=True)

    def created_with_mode(self, e: Entry) -> bool:
        """Whether a new file can be created with its final mode, sparing an fchmod:
        plain permission bits the umask keeps, no xattrs (an ACL would change the
        group bits), and a directory we made without a default ACL (whose
        entries, not the umask, would set the bits).  Set-id bits always need
        the fchmod: chown clears them."""
        mode = e["mode"]
        return (self.plain_dir and self.umask is not None and mode & ~0o777 == 0
                and mode & self.umask == 0 and "xattrs" not in e)

    # -- entries -------------------------------------------------------------------------
    def restore_dir_contents(self, dir_fd: int, rel: Rel, entries: list[Entry],
                             point_prefix: str, made: bool = False) -> None:
        """Restore ``entries`` into the open directory ``dir_fd`` (at ``rel`` below the
        root).  ``made``: the directory was created by this restore (so it holds no
        entries of its own and, unless inherited, no default ACL)."""
        if self.pool is None:
            self.locate(entries)
        inherits = restore_fs.has_default_acl(dir_fd)
        plain = made and not inherits
        ref: DirRef | None = None  # (descriptor, device, inode): for the writers
        looked = (0, 0)  # the next chunk to look at: (entry, chunk in its content)
        for i, e in enumerate(entries):
            signals.check()  # between entries: nothing is half-made here
            self.plain_dir = plain  # a subdirectory's restore sets them for its own entries
            self.inherit_dir = inherits
            if self.pool is None and (self.ahead_bytes < AHEAD_BYTES // 2 or looked[0] < i):
                looked = self.look_ahead(entries, max(looked, (i, 0)))
            name = e["name"]
            point_path = f"{point_prefix}/{name}" if point_prefix else name
            if not name or "/" in name or "\0" in name or name in (".", ".."):
                self.fail(point_path, "unsafe name in the tree; skipped")
                continue
            if e["type"] == FILE and self.processes:
                if ref is None:
                    st = os.fstat(dir_fd)
                    ref = (dir_fd, st.st_dev, st.st_ino)
                if self.hand_over(ref, name, rel, e, point_path):
                    continue
            self.restore_entry(dir_fd, name, rel, e, point_path)

    # -- files written by worker processes ------------------------------------------------
    def hand_over(self, ref: DirRef, name: str, rel: Rel, e: Entry, point_path: str) -> bool:
        """Queue a regular file for the writers, starting them once ``pool_from`` is
        met; a hardlink waits for ``finish``.  False: restore it here, now.  The
        directory's descriptor stays open until then (``later_dirs``)."""
        if self.pool is None:
            self.met[0] += 1
            self.met[1] += e.get("size", 0)
            if self.met[0] < self.pool_from[0] and self.met[1] < self.pool_from[1]:
                return False
            self.drop_ahead()  # opened for files that now go to the writers
            self.pool = _Writers(self.processes, self.repo)
        if "link" in e or point_path in self.restored:
            self.later_links.append((ref[0], name, rel, e, point_path))
            return True
        self.restored[point_path] = (*rel, name)
        self.batch.append((ref, name, e, point_path, self.plain_dir, self.inherit_dir))
        self.batch_bytes += e.get("size", 0)
        if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
            self.dispatch()
        return True

    def dispatch(self) -> None:
        """The batch to a worker with room, else written here (both cores busy)."""
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        assert self.pool is not None
        self.pool.collect(self.outcomes, block=False)
        if not batch:
            return
        if not self.pool.send(batch):
            saved = self.plain_dir, self.inherit_dir
            self.outcomes(batch, write_batch(self, batch, _own_dir))
            self.plain_dir, self.inherit_dir = saved

    def outcomes(self, batch: list[FileTask], done: list[FileOutcome]) -> None:
        for (_ref, _name, _e, point_path, _plain, _inherits), (ok, nbytes, errors,
                                                               warnings) in zip(
                batch, done, strict=True):
            if ok:
                self.result.files += 1
                self.progress.file_done()
            else:  # a later hardlink to it then restores (or fails) as a copy, named
                self.restored.pop(point_path, None)
            self.result.bytes += nbytes
            self.progress.add_bytes(nbytes)
            for item in errors:
                self.fail(item["path"], item["error"])
            for item in warnings:
                self.fail(item["path"], item["error"], warning=True)

    def finish(self) -> None:
        """At the end: every file written, then what waited for them."""
        if self.pool is not None:
            self.settle()

    def settle(self) -> None:
        """Wait for every file handed over, then make the hardlinks that waited and set
        the metadata of the directories whose walk has ended, deepest first (the
        order they ended in), so that nothing changes them afterwards; their
        descriptors are closed then."""
        assert self.pool is not None
        self.dispatch()
        self.pool.drain(self.outcomes)
        links, self.later_links = self.later_links, []
        for dir_fd, name, rel, e, point_path in links:
            self.restore_entry(dir_fd, name, rel, e, point_path)
        dirs, self.later_dirs = self.later_dirs, []
        for i, (fd, e, point_path, inherited) in enumerate(dirs):
            try:
                self.apply_meta_fd(fd, e, point_path, False, inherited)
            except OSError as exc:
                self.fail(point_path, exc)
            except BaseException:
                _close_all(fd for fd, *_rest in dirs[i:])
                raise
            os.close(fd)

    def drop_ahead(self) -> None:
        """Forget the chunks opened or located ahead (those not started are cancelled)."""
        for fut, _n in self.ahead.values():
            fut.cancel()
        self.ahead.clear()
        self.ahead_bytes = 0
        self.located.clear()

    def restore_entry(self, dir_fd: int, name: str, rel: Rel, e: Entry,
                      point_path: str) -> None:
        """``name`` in the open directory ``dir_fd`` (which is at ``rel``)."""
        kind = e["type"]
        try:
            if kind == DIR:
                self.restore_dir(dir_fd, name, (*rel, name), e, point_path)
                return
            if kind == FILE:  # metadata set on the open file (or shared by a hardlink)
                if self.restore_file(dir_fd, name, rel, e, point_path):
                    self.result.files += 1
                return
            fmt = {SYMLINK: stat.S_IFLNK, FIFO: stat.S_IFIFO, CHAR: stat.S_IFCHR,
                   BLOCK: stat.S_IFBLK, SOCKET: stat.S_IFSOCK}.get(kind)
            if fmt is None:
                self.fail(point_path, f"unknown entry type {kind!r}")
                return
            _make_special(dir_fd, name, fmt, e)
            self.result.others += 1
            self.apply_meta_made(dir_fd, name, fmt, e, point_path, self.inherit_dir)
        except OSError as exc:
            self.fail(point_path, exc)

    def restore_dir(self, parent: int, name: str, rel: Rel, e: Entry,
                    point_path: str) -> None:
        """The directory ``name`` of ``parent`` (at ``rel``): opened, or made, never
        through a symlink (restore_fs.open_dir), then filled."""
        inherited = self.inherit_dir  # (set for the entries of its parent's loop)
        fd, made = restore_fs.open_dir(parent, name, 0o700)
        self.fill_dir(fd, rel, e, point_path, made, inherited)

    def fill_dir(self, fd: int, rel: Rel, e: Entry, point_path: str, made: bool,
                 inherited: bool) -> None:
        """Restore the contents of the open directory ``fd`` (at ``rel``), then its
        metadata -- at once, or once its files handed over are written (``settle``).
        Takes ``fd`` over: it is closed when the directory is done."""
        self.result.dirs += 1
        try:
            try:
                children = self.tree(e["subtree"])
            except (RepoError, ValueError) as exc:
                self.fail(point_path + "/", f"directory listing unreadable: {exc}")
            else:
                self.restore_dir_contents(fd, rel, children, point_path, made)
            if self.pool is None:
                self.apply_meta_fd(fd, e, point_path, False, inherited)
        except BaseException:
            os.close(fd)
            raise
        if self.pool is None:
            os.close(fd)
            return
        self.later_dirs.append((fd, e, point_path, inherited))  # files may still be written
        if len(self.later_dirs) >= self.settle_at or len(self.later_links) >= self.settle_at:
            self.settle()

    def restore_file(self, dir_fd: int, name: str, rel: Rel, e: Entry,
                     point_path: str) -> bool:
        if "link" not in e and point_path in self.restored:
            # The first name of a hardlinked file, whose later name an earlier item
            # of this --include restore already wrote (as a copy): one file again.
            e = {**e, "link": point_path}
        if "link" in e:
            first = self.restored.get(e["link"])
            if first is not None:  # found again from the root, no symlink followed
                src = restore_fs.walk(self.root, first[:-1])
                try:
                    restore_fs.link(src, first[-1], dir_fd, name)
                finally:
                    os.close(src)
                return True
            target = self.find(e["link"])  # first name lies outside what is restored
            if target is None:
                self.fail(point_path, f"hardlink target {e['link']} missing from the point")
                return False
            if not self.write_content(dir_fd, name, target, point_path):
                return False
            self.restored[e["link"]] = (*rel, name)
            return True
        if not self.write_content(dir_fd, name, e, point_path):
            return False
        self.restored[point_path] = (*rel, name)
        return True

    def write_content(self, dir_fd: int, name: str, e: Entry, point_path: str) -> bool:
        """Data, then owner, xattrs, mode and times on the open file, made new at
        ``name`` in ``dir_fd`` (restore_fs.create_file)."""
        mode_set = self.created_with_mode(e)
        fd = restore_fs.create_file(dir_fd, name, e["mode"] if mode_set else 0o600)
        written = 0  # counted as restored only once the file is whole
        try:
            end = 0  # the file's size so far
            for off, length, cid in e.get("content", ()):
                signals.check()
                data = self.chunk(cid)
                if len(data) != length:
                    raise BlobError(bytes.fromhex(cid), "length differs from the tree")
                end = max(end, _pwrite_sparse(fd, data, off))
                written += length
                self.progress.add_bytes(length)
            if end != e["size"]:  # a hole at the end (on ext4 a truncate costs ~7 us)
                os.ftruncate(fd, e["size"])
        except (RepoError, OSError) as exc:
            os.close(fd)
            _unlink_quietly(dir_fd, name)
            self.fail(point_path, f"not restored: {exc}")
            return False
        except BaseException:  # stopped or interrupted: no truncated file under its name
            os.close(fd)
            _unlink_quietly(dir_fd, name)
            raise
        try:
            self.apply_meta_fd(fd, e, point_path, mode_set, self.inherit_dir)
        finally:
            os.close(fd)
        self.result.bytes += written
        self.progress.file_done()
        return True


def _own_dir(ref: DirRef) -> int:
    """In the parent, a task's directory is its own open descriptor."""
    return ref[0]


def write_batch(r: _Restorer, batch: list[FileTask], dir_of: Callable[[DirRef], int]
                ) -> list[FileOutcome]:
    """Write whole files (in a worker process, or the parent when the workers are
    busy), each as the parent writes one; what became of each is returned, to be
    reported by the parent (``_Restorer.outcomes``).  ``dir_of``: the descriptor
    of a task's directory here (the parent's own; a worker opens the parent's,
    restore_workers.ParentDirs)."""
    entries = [t[2] for t in batch]
    r.locate(entries)
    saved = r.result, r.progress
    r.progress = Progress(stream=io.StringIO(), enabled=False)
    out: list[FileOutcome] = []
    looked = (0, 0)
    try:
        for i, (ref, name, e, point_path, plain, inherits) in enumerate(batch):
            if r.ahead_bytes < AHEAD_BYTES // 2 or looked[0] < i:
                looked = r.look_ahead(entries, max(looked, (i, 0)))
            r.result = RestoreResult()
            r.plain_dir, r.inherit_dir = plain, inherits
            try:
                ok = r.write_content(dir_of(ref), name, e, point_path)
            except OSError as exc:
                r.fail(point_path, exc)
                ok = False
            out.append((ok, r.result.bytes, r.result.errors, r.result.warnings))
    finally:
        r.result, r.progress = saved
    return out


class _Writers:
    """The restore's worker processes; each holds at most WORKER_BATCHES batches."""

    def __init__(self, count: int, repo: Repository) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sent: dict[int, deque[list[FileTask]]] = {}  # result fd -> batches in order
        try:
            for _ in range(count):
                proc = workers.spawn("remotevss.backup.restore_workers")
                self.procs.append(proc)
                assert proc.stdin is not None and proc.stdout is not None
                self.sent[proc.stdout.fileno()] = deque()
                init = (str(repo.path), *workers.codec_spec(repo.codec))
                workers.send_obj(proc.stdin.fileno(), init)
        except BaseException:
            self.close(kill=True)
            raise

    def send(self, batch: list[FileTask]) -> bool:
        """To the worker holding the fewest batches; False if each holds enough."""
        proc = min(self.procs, key=lambda p: len(self.sent[_fd(p.stdout)]))
        queue = self.sent[_fd(proc.stdout)]
        if len(queue) >= WORKER_BATCHES:
            return False
        try:
            workers.send_obj(_fd(proc.stdin), batch)
        except BrokenPipeError:
            raise self.died(proc) from None
        queue.append(batch)
        return True

    def collect(self, on: Callable[[list[FileTask], list[FileOutcome]], None],
                block: bool) -> None:
        busy = [fd for fd, q in self.sent.items() if q]
        if not busy:
            return
        ready, _, _ = select.select(busy, [], [], None if block else 0)
        for fd in ready:
            done = workers.recv_obj(fd)
            if done is None:
                raise self.died(next(p for p in self.procs if _fd(p.stdout) == fd))
            on(self.sent[fd].popleft(), done)

    def drain(self, on: Callable[[list[FileTask], list[FileOutcome]], None]) -> None:
        while any(self.sent.values()):
            self.collect(on, block=True)

    @staticmethod
    def died(proc: subprocess.Popen[bytes]) -> RepoError:
        code = proc.wait()
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return RepoError(f"restore worker process {proc.pid} died ({how}); the files it "
                         "was writing are incomplete")

    def close(self, kill: bool = False) -> None:
        kill = kill or any(self.sent.values())  # interrupted: its files are not wanted
        for proc in self.procs:
            if kill and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
            proc.wait()


def _fd(f: Any) -> int:
    assert f is not None
    return int(f.fileno())


HOLE_BLOCK = 64 << 10


def _umask() -> int | None:
    """The process's umask, read without changing it (``os.umask`` sets it, and
    another thread could create a file meanwhile); None where Linux does not say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _pwrite_sparse(fd: int, data: bytes, offset: int) -> int:
    """Write a chunk, leaving its all-zero 64 KiB blocks (aligned to the file) as
    holes; returns the end of what it wrote (``offset`` if nothing).  Why: a
    source that cannot report holes (SMB: Samba answers "all data") still
    produces chunks that are mostly zeros around a sparse file's data."""
    n = len(data)
    if n < 2 * HOLE_BLOCK:
        _pwrite_all(fd, data, offset)
        return offset + n
    view = memoryview(data)
    pos = 0
    run = -1  # start of the pending non-zero run
    last = 0  # end of the last run written
    while pos < n:
        end = min(n, ((offset + pos) // HOLE_BLOCK + 1) * HOLE_BLOCK - offset)
        if is_zero(view[pos:end]):
            if run >= 0:
                _pwrite_all(fd, view[run:pos], offset + run)
                run, last = -1, pos
        elif run < 0:
            run = pos
        pos = end
    if run >= 0:
        _pwrite_all(fd, view[run:], offset + run)
        return offset + n
    return offset + last


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _make_special(parent: int, name: str, fmt: int, e: Entry) -> None:
    """A symlink, FIFO, device node or socket at ``name`` (mode 0600 until its
    metadata is set), replacing what stands there."""
    for _ in range(restore_fs.TRIES):
        restore_fs.remove_nondir(parent, name)
        try:
            if fmt == stat.S_IFLNK:
                os.symlink(e["target"], name, dir_fd=parent)
            elif fmt == stat.S_IFIFO:
                os.mkfifo(name, 0o600, dir_fd=parent)
            else:
                os.mknod(name, fmt | 0o600, e.get("rdev", 0), dir_fd=parent)
            return
        except FileExistsError:
            continue
    raise OSError(errno.EAGAIN, "kept changing while it was restored")


def _unlink_quietly(parent: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=parent)


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


#: Descriptors left for everything but the directories waiting for ``settle`` (the
#: open directories above the one being restored, 32 packs, the index, pipes).
FD_RESERVE = 256


def _descriptor_budget() -> int:
    """How many directories may wait for ``settle`` holding a descriptor each: the
    soft RLIMIT_NOFILE is raised (up to the hard one) so SETTLE_AT fit; what
    does not fit settles sooner."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SETTLE_AT + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, want)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    if soft == resource.RLIM_INFINITY:
        return SETTLE_AT
    return max(16, soft - FD_RESERVE)


def run_restorer(r: _Restorer, body: Callable[[], None]) -> RestoreResult:
    """Run ``body`` (the restore's walk), then what waits for the writers; on a
    stop, the files handed over are finished first; the writers, threads and
    descriptors are released whatever happens."""
    try:
        body()
        r.finish()
    except signals.Stopped:
        if r.pool is not None:  # the files handed over are finished, not cut off
            r.pool.drain(r.outcomes)
        raise
    finally:
        r.close()
        r.progress.finish()
    return r.result


def restore(repo: Repository, point: PointRow, target: str | Path, subpath: str = "",
            progress: Progress | None = None, processes: int = PROCESSES,
            pool_from: tuple[int, int] = (POOL_FROM_FILES, POOL_FROM_BYTES)
            ) -> RestoreResult:
    """Restore ``point`` (or ``subpath`` inside it) to ``target``.

    Without ``subpath``, ``target`` receives one directory per source label.
    With a directory ``subpath``, ``target`` becomes that directory (its
    contents and metadata); with a file, the file is restored into ``target``.
    ``target`` is opened once (restore_fs.open_target: made if missing, a
    symlink in it followed only if trusted) and nothing below it is looked up
    by a path from the root (restore_fs).  ``processes``: worker processes
    writing files beside this one (0: none), started once ``pool_from`` (files,
    bytes) are met.  Inside ``signals.stop_at_safe_points`` a signal stops it
    between files: the file being written is removed, those handed to a worker
    are finished first.
    """
    sub = subpath.strip("/")
    e: Entry | None = None
    progress = progress or Progress(enabled=False)
    if sub:
        e = _Restorer(repo, point, progress).find(sub)
        if e is None:
            raise RepoError(f"{sub}: no such path in recovery point {point.id}")
    top = restore_fs.open_target(os.fspath(target), 0o700 if e and e["type"] == DIR
                                 else 0o777)
    r = _Restorer(repo, point, progress, processes, pool_from, root=top.fd)

    def body() -> None:
        if e is None:
            r.restore_dir_contents(top.fd, (), r.tree(point.root), "")
        elif e["type"] == DIR:  # a target made here takes the point's ACLs only
            r.fill_dir(os.dup(top.fd), (), e, sub, top.made, top.inherited)
        else:
            r.inherit_dir = restore_fs.has_default_acl(top.fd)
            r.restore_entry(top.fd, e["name"], (), e, sub)

    try:
        return run_restorer(r, body)
    finally:
        os.close(top.fd)


def list_paths(repo: Repository, point: PointRow, subpath: str = "") -> Iterator[str]:
    """Point paths below ``subpath`` (used by tests and ``backup ls``-like scripts)."""
    from remotevss.backup.tree import walk

    def load(tid: bytes) -> list[Entry]:
        return decode_tree(repo.read_blob(tid))

    for path, _e in walk(load, point.root, ""):
        if not subpath or path == subpath or path.startswith(subpath.rstrip("/") + "/"):
            yield path
