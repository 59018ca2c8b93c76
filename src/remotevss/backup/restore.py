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
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import select
import stat
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remotevss.backup import signals, workers
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

#: A file for a writer: (restored path, its entry, point path, whether its directory
#: was made by this restore without a default ACL, whether its directory has one).
FileTask = tuple[str, "Entry", str, bool, bool]
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
                 restored: dict[str, str] | None = None) -> None:
        self.repo = repo
        self.point = point
        self.progress = progress
        self.result = RestoreResult()
        self.as_root = os.geteuid() == 0
        # point path -> restored path (for hardlinks); shared by the items of one
        # --include restore, so two names of one file stay one file.
        self.restored: dict[str, str] = {} if restored is None else restored
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
        self.processes = processes
        self.pool_from = pool_from
        self.pool: _Writers | None = None
        self.met = [0, 0]  # files and bytes met before the pool started
        self.batch: list[FileTask] = []
        self.batch_bytes = 0
        self.later_links: list[tuple[str, Entry, str]] = []
        self.later_dirs: list[tuple[str, Entry, str, bool]] = []

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
    def apply_meta(self, path: str, e: Entry, point_path: str, inherited: bool = False
                   ) -> None:
        """``inherited``: ``path`` was made in a directory with a default ACL."""
        link = e["type"] == SYMLINK
        if self.as_root and (e["uid"], e["gid"]) != (-1, -1):  # -1: unknown (SMB sources)
            try:
                os.chown(path, e["uid"], e["gid"], follow_symlinks=False)
            except OSError as exc:
                self.fail(point_path, f"chown: {exc.strerror}", warning=True)
        for name, value in xattrs_of(e).items():
            if name.startswith(FOREIGN_XATTR_PREFIXES):
                continue  # e.g. an SMB security descriptor: no local equivalent
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as exc:
                self.fail(point_path, f"xattr {name}: {exc.strerror}", warning=True)
        if inherited and not link:
            self.drop_inherited_acls(path, e, point_path)
        if not link:
            os.chmod(path, e["mode"])
        os.utime(path, ns=(e["atime"], e["mtime"]), follow_symlinks=False)

    def apply_meta_fd(self, fd: int, e: Entry, point_path: str, mode_set: bool) -> None:
        """``apply_meta`` for a regular file still open: the calls act on the open
        file, so the kernel does not look its path up five more times."""
        if self.as_root and (e["uid"], e["gid"]) != (-1, -1):
            try:
                os.fchown(fd, e["uid"], e["gid"])
            except OSError as exc:
                self.fail(point_path, f"chown: {exc.strerror}", warning=True)
        for name, value in xattrs_of(e).items():
            if name.startswith(FOREIGN_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(fd, name, value)
            except OSError as exc:
                self.fail(point_path, f"xattr {name}: {exc.strerror}", warning=True)
        if self.inherit_dir:
            self.drop_inherited_acls(fd, e, point_path)
        if not mode_set:  # created with it (``created_with_mode``)
            os.fchmod(fd, e["mode"])
        os.utime(fd, ns=(e["atime"], e["mtime"]))

    def drop_inherited_acls(self, target: int | str, e: Entry, point_path: str) -> None:
        """Remove the ACLs a new entry inherited from its directory's default ACL that
        the point does not have: restored as it was, not as the target would make
        it (an inherited entry can grant access the source never did)."""
        names = (ACL_ACCESS, ACL_DEFAULT) if e["type"] == DIR else (ACL_ACCESS,)
        for name in names:
            if name in e.get("xattrs", ()):
                continue  # set from the point just before
            try:
                if isinstance(target, int):
                    os.removexattr(target, name)
                else:
                    os.removexattr(target, name, follow_symlinks=False)
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
    def restore_dir_contents(self, dirpath: str, entries: list[Entry], point_prefix: str,
                             made: bool = False) -> None:
        """``made``: the directory was created by this restore (so it holds no
        entries of its own and, unless inherited, no default ACL)."""
        if self.pool is None:
            self.locate(entries)
        inherits = _has_default_acl(dirpath)
        plain = made and not inherits
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
            path = os.path.join(dirpath, name)
            if e["type"] == FILE and self.hand_over(path, e, point_path):
                continue
            self.restore_entry(path, e, point_path)

    # -- files written by worker processes ------------------------------------------------
    def hand_over(self, path: str, e: Entry, point_path: str) -> bool:
        """Queue a regular file for the writers, starting them once ``pool_from`` is
        met; a hardlink waits for ``finish``.  False: restore it here, now."""
        if self.pool is None:
            if not self.processes:
                return False
            self.met[0] += 1
            self.met[1] += e.get("size", 0)
            if self.met[0] < self.pool_from[0] and self.met[1] < self.pool_from[1]:
                return False
            self.drop_ahead()  # opened for files that now go to the writers
            self.pool = _Writers(self.processes, self.repo)
        if "link" in e or point_path in self.restored:
            self.later_links.append((path, e, point_path))
            return True
        self.restored[point_path] = path
        self.batch.append((path, e, point_path, self.plain_dir, self.inherit_dir))
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
            self.outcomes(batch, write_batch(self, batch))
            self.plain_dir, self.inherit_dir = saved

    def outcomes(self, batch: list[FileTask], done: list[FileOutcome]) -> None:
        for (_path, _e, point_path, _plain, _inherits), (ok, nbytes, errors, warnings) in zip(
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
        order they ended in), so that nothing changes them afterwards."""
        assert self.pool is not None
        self.dispatch()
        self.pool.drain(self.outcomes)
        links, self.later_links = self.later_links, []
        for path, e, point_path in links:
            self.restore_entry(path, e, point_path)
        dirs, self.later_dirs = self.later_dirs, []
        for path, e, point_path, inherited in dirs:
            try:
                self.apply_meta(path, e, point_path, inherited)
            except OSError as exc:
                self.fail(point_path, exc)

    def drop_ahead(self) -> None:
        """Forget the chunks opened or located ahead (those not started are cancelled)."""
        for fut, _n in self.ahead.values():
            fut.cancel()
        self.ahead.clear()
        self.ahead_bytes = 0
        self.located.clear()

    def restore_entry(self, path: str, e: Entry, point_path: str) -> None:
        kind = e["type"]
        try:
            if kind == DIR:
                self.restore_dir(path, e, point_path)
                return
            if kind == FILE:  # metadata set on the open file (or shared by a hardlink)
                if self.restore_file(path, e, point_path):
                    self.result.files += 1
                return
            _remove_existing(path)
            if kind == SYMLINK:
                os.symlink(e["target"], path)
                self.result.others += 1
            elif kind == FIFO:
                os.mkfifo(path, 0o600)
                self.result.others += 1
            elif kind in (CHAR, BLOCK, SOCKET):
                fmt = {CHAR: stat.S_IFCHR, BLOCK: stat.S_IFBLK, SOCKET: stat.S_IFSOCK}[kind]
                os.mknod(path, fmt | 0o600, e.get("rdev", 0))
                self.result.others += 1
            else:
                self.fail(point_path, f"unknown entry type {kind!r}")
                return
            self.apply_meta(path, e, point_path, self.inherit_dir)
        except OSError as exc:
            self.fail(point_path, exc)

    def restore_dir(self, path: str, e: Entry, point_path: str, top: bool = False) -> None:
        """``top``: ``path`` is the target the user named, which may be a symlink to a
        directory; below it nothing is followed."""
        inherited = self.inherit_dir  # (set for the entries of its parent's loop)
        made = _make_dir(path, follow=top)
        self.result.dirs += 1
        try:
            children = self.tree(e["subtree"])
        except (RepoError, ValueError) as exc:
            self.fail(point_path + "/", f"directory listing unreadable: {exc}")
        else:
            self.restore_dir_contents(path, children, point_path, made)
        if self.pool is not None:
            self.later_dirs.append((path, e, point_path, inherited))  # files may still be written
            if len(self.later_dirs) >= SETTLE_AT or len(self.later_links) >= SETTLE_AT:
                self.settle()
        else:
            self.apply_meta(path, e, point_path, inherited)

    def restore_file(self, path: str, e: Entry, point_path: str) -> bool:
        if "link" not in e and point_path in self.restored:
            # The first name of a hardlinked file, whose later name an earlier item
            # of this --include restore already wrote (as a copy): one file again.
            e = {**e, "link": point_path}
        if "link" in e:
            first = self.restored.get(e["link"])
            if first is not None:
                _remove_existing(path)
                os.link(first, path)
                return True
            target = self.find(e["link"])  # first name lies outside what is restored
            if target is None:
                self.fail(point_path, f"hardlink target {e['link']} missing from the point")
                return False
            if not self.write_content(path, target, point_path):
                return False
            self.restored[e["link"]] = path
            return True
        if not self.write_content(path, e, point_path):
            return False
        self.restored[point_path] = path
        return True

    def write_content(self, path: str, e: Entry, point_path: str) -> bool:
        """Data, then owner, xattrs, mode and times on the open file."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        mode_set = self.created_with_mode(e)
        mode = e["mode"] if mode_set else 0o600
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:  # replaced, not written through (it may be a hardlink)
            _remove_existing(path)
            fd = os.open(path, flags, mode)
        try:
            end = 0  # the file's size so far
            for off, length, cid in e.get("content", ()):
                signals.check()
                data = self.chunk(cid)
                if len(data) != length:
                    raise BlobError(bytes.fromhex(cid), "length differs from the tree")
                end = max(end, _pwrite_sparse(fd, data, off))
                self.result.bytes += length
                self.progress.add_bytes(length)
            if end != e["size"]:  # a hole at the end (on ext4 a truncate costs ~7 us)
                os.ftruncate(fd, e["size"])
        except (RepoError, OSError) as exc:
            os.close(fd)
            os.unlink(path)
            self.fail(point_path, f"not restored: {exc}")
            return False
        except BaseException:  # stopped or interrupted: no truncated file under its name
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        try:
            self.apply_meta_fd(fd, e, point_path, mode_set)
        finally:
            os.close(fd)
        self.progress.file_done()
        return True


def write_batch(r: _Restorer, batch: list[FileTask]) -> list[FileOutcome]:
    """Write whole files (in a worker process, or the parent when the workers are
    busy), each as the parent writes one; what became of each is returned, to be
    reported by the parent (``_Restorer.outcomes``)."""
    entries = [t[1] for t in batch]
    r.locate(entries)
    saved = r.result, r.progress
    r.progress = Progress(stream=io.StringIO(), enabled=False)
    out: list[FileOutcome] = []
    looked = (0, 0)
    try:
        for i, (path, e, point_path, plain, inherits) in enumerate(batch):
            if r.ahead_bytes < AHEAD_BYTES // 2 or looked[0] < i:
                looked = r.look_ahead(entries, max(looked, (i, 0)))
            r.result = RestoreResult()
            r.plain_dir, r.inherit_dir = plain, inherits
            try:
                ok = r.write_content(path, e, point_path)
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


def _has_default_acl(path: str) -> bool:
    """Whether new entries of ``path`` take their mode from a default ACL (an
    error other than "no such attribute" counts as yes: the fchmod stays)."""
    try:
        os.getxattr(path, "system.posix_acl_default")
    except OSError as exc:
        return exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP)
    return True


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


def _make_dir(path: str, follow: bool = False, mode: int = 0o700) -> bool:
    """Make a directory for the restore; True if made here.  What stands in its
    place and is not a directory (a file, or a symlink, which is never followed:
    it could lead out of the target) is replaced, as files replace files.
    ``follow``: a symlink to a directory is taken as that directory."""
    try:
        os.mkdir(path, mode)
        return True
    except FileExistsError:
        if follow:
            if os.path.isdir(path):
                return False
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory",
                                     path) from None
        if stat.S_ISDIR(os.lstat(path).st_mode):
            return False
    os.unlink(path)
    os.mkdir(path, mode)
    return True


def make_real_dirs(base: str, parts: list[str]) -> None:
    """Make ``base/parts[0]/parts[1]/...`` real directories below ``base`` (which the
    user named): none of them is a symlink that could lead elsewhere.  New ones
    are plain (mode 777 less the umask), as ``os.makedirs`` makes them."""
    path = base
    for part in parts:
        path = os.path.join(path, part)
        _make_dir(path, mode=0o777)


def _remove_existing(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory is in the way", path)
    os.unlink(path)


def restore(repo: Repository, point: PointRow, target: str | Path, subpath: str = "",
            progress: Progress | None = None, processes: int = PROCESSES,
            pool_from: tuple[int, int] = (POOL_FROM_FILES, POOL_FROM_BYTES),
            restored: dict[str, str] | None = None) -> RestoreResult:
    """Restore ``point`` (or ``subpath`` inside it) to ``target``.

    Without ``subpath``, ``target`` receives one directory per source label.
    With a directory ``subpath``, ``target`` becomes that directory (its
    contents and metadata); with a file, the file is restored into ``target``.
    ``processes``: worker processes writing files beside this one (0: none),
    started once ``pool_from`` (files, bytes) are met.  ``restored``: point path ->
    restored path of the files already written, shared by the calls of one
    ``--include`` restore (hardlinks between items stay hardlinks).  Inside
    ``signals.stop_at_safe_points`` a signal stops it between files: the file
    being written is removed, those handed to a worker are finished first.
    """
    r = _Restorer(repo, point, progress or Progress(enabled=False), processes, pool_from,
                  restored)
    target = os.fspath(target)
    sub = subpath.strip("/")
    try:
        if not sub:
            os.makedirs(target, exist_ok=True)
            r.restore_dir_contents(target, r.tree(point.root), "")
        else:
            e = r.find(sub)
            if e is None:
                raise RepoError(f"{sub}: no such path in recovery point {point.id}")
            if e["type"] == DIR:
                parent = os.path.dirname(os.path.abspath(target))
                os.makedirs(parent, exist_ok=True)
                # A target made here takes the point's ACLs only; one that exists keeps its own.
                r.inherit_dir = not os.path.lexists(target) and _has_default_acl(parent)
                r.restore_dir(target, e, sub, top=True)
            else:
                os.makedirs(target, exist_ok=True)
                r.inherit_dir = _has_default_acl(target)
                r.restore_entry(os.path.join(target, e["name"]), e, sub)
        r.finish()
    except signals.Stopped:
        if r.pool is not None:  # the files handed over are finished, not cut off
            r.pool.drain(r.outcomes)
        raise
    finally:
        r.close()
        r.progress.finish()
    return r.result


def list_paths(repo: Repository, point: PointRow, subpath: str = "") -> Iterator[str]:
    """Point paths below ``subpath`` (used by tests and ``backup ls``-like scripts)."""
    from remotevss.backup.tree import walk

    def load(tid: bytes) -> list[Entry]:
        return decode_tree(repo.read_blob(tid))

    for path, _e in walk(load, point.root, ""):
        if not subpath or path == subpath or path.startswith(subpath.rstrip("/") + "/"):
            yield path
