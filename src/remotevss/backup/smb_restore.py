r"""Restore a recovery point (or chosen items of it) back onto an SMB share.

``remotevss backup restore POINT --to '\\server\share\path'`` writes over
SMB 3 with the connection and session of :mod:`remotevss.backup.smb`
(signing always, AES encryption unless turned off), to the one host the user
named and no other.

Why two passes: the first walks what is to be restored and lists every
target directory that already exists (one compound per directory), so an
existing file is found *before* anything is written; without ``overwrite``
the restore is then refused whole and the share is left as it was.  The
second pass writes.  Creates still use FILE_CREATE without ``overwrite``, so
a file that appears between the passes is skipped, never replaced.

Why this order per file, all in one related compound for files up to
``SMALL_FILE``: Create, Write(s), SetInfo(end of file), SetInfo(security
descriptor), SetInfo(basic: times, attributes), Close.  Times go last
because writing changes them (an explicitly set LastWriteTime sticks on
the handle, so Close keeps it); a directory's metadata is set after all its
children are written, for the same reason.  Up to ``DEPTH`` file compounds are
in flight; large files are written in ``WRITE_SIZE`` requests, ``WRITE_DEPTH``
in flight.  Holes and all-zero 64 KiB blocks are not sent (the file is
extended by SetInfo(end of file)), so sparse files stay sparse where the
server's file system allows.

Rules: names SMB cannot carry (``\ / : * ? " < > |``, controls, non-UTF-8)
and entries SMB cannot create (symlinks, FIFOs, devices, sockets) are
skipped and reported; hardlinks are written as separate files; a directory
that already existed keeps its own metadata unless ``overwrite``; a file
whose data is damaged is deleted again (delete-on-close) and reported.
"""

from __future__ import annotations

import contextlib
import errno
import re
import struct
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from smbprotocol.header import NtStatus

from remotevss.backup import signals
from remotevss.backup.chunker import is_zero
from remotevss.backup.index import PointRow
from remotevss.backup.progress import Progress
from remotevss.backup.repo import BlobError, RepoError, Repository
from remotevss.backup.smb import (
    _CREATE_REQ,
    _IMPERSONATION,
    _RELATED,
    _SHARE_ALL,
    SD_XATTR,
    SMALL_FILE,
    SmbSession,
    SmbSource,
    _close,
    _Created,
    _Raw,
    _Status,
)
from remotevss.backup.snapshot_source import DIR, FILE
from remotevss.backup.tree import Entry, decode_tree, find_entry, xattrs_of
from remotevss.client.errors import BadUnc
from remotevss.client.unc import Unc, parse_unc, unc_text
from remotevss.fsrvp import filetime

WRITE_SIZE = 1 << 20  # bytes per write request of a large file (16 credits)
WRITE_DEPTH = 4  # write requests in flight per large file
DEPTH = 8  # small-file compounds in flight
CREDIT_RESERVE = 32
TREE_CACHE = 4096  # decoded trees kept between the two passes
HOLE_BLOCK = 64 << 10
MAX_TARGET_CHARS = 1024
MAX_CONFLICTS_SHOWN = 20

# MS-SMB2 / MS-FSCC values
_FILE_WRITE_DATA = 0x2
_FILE_READ_ATTRIBUTES = 0x80
_FILE_WRITE_ATTRIBUTES = 0x100
_DELETE = 0x10000
_WRITE_DAC = 0x40000
_WRITE_OWNER = 0x80000
_SYNCHRONIZE = 0x100000
_FILE_OPEN, _FILE_CREATE, _FILE_OPEN_IF, _FILE_OVERWRITE_IF = 1, 2, 3, 5
_FILE_DIRECTORY_FILE = 0x1
_FILE_NON_DIRECTORY_FILE = 0x40
_FILE_OPEN_FOR_BACKUP_INTENT = 0x4000
_FILE_DELETE_ON_CLOSE = 0x1000
_ATTR_NORMAL = 0x80
_ATTR_DIRECTORY = 0x10
#: DOS attributes a client may set: read-only, hidden, system, archive, temporary,
#: offline, not-content-indexed.
_SETTABLE_ATTRS = 0x1 | 0x2 | 0x4 | 0x20 | 0x100 | 0x1000 | 0x2000
_INFO_FILE, _INFO_SECURITY = 1, 3
_FILE_BASIC_INFORMATION = 4
_FILE_DISPOSITION_INFORMATION = 13
_FILE_END_OF_FILE_INFORMATION = 20
_OWNER_GROUP_DACL = 0x1 | 0x2 | 0x4
_SMB2_WRITE, _SMB2_SET_INFO = 0x09, 0x11
_WRITE_REQ = struct.Struct("<HHIQ16sIIHHI")  # 48 bytes, then the data
_SET_INFO_REQ = struct.Struct("<HBBIHHI16s")  # 32 bytes, then the buffer
_BASIC = struct.Struct("<qqqqII")
# Characters SMB does not carry in a path component, plus the controls.
_BAD_NAME_CHARS = re.compile(r'[\x00-\x1f"*/:<>?\\|]')


class RestoreRefused(RepoError):
    """The restore would overwrite something (or put a file where a directory is):
    nothing was written."""

    def __init__(self, conflicts: list[dict[str, str]]) -> None:
        shown = "; ".join(f"{c['target']} ({c['reason']})" for c in conflicts[:MAX_CONFLICTS_SHOWN])
        more = len(conflicts) - MAX_CONFLICTS_SHOWN
        super().__init__(
            f"{len(conflicts)} target(s) already exist, nothing was restored: {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + ("" if any(c["reason"] != "exists" for c in conflicts)
               else " (--overwrite replaces existing files)"))
        self.conflicts = conflicts


@dataclass(frozen=True)
class ShareTarget:
    r"""``\\host\share`` plus a path below it (components, no separators)."""

    unc: Unc
    path: tuple[str, ...] = ()

    def smb_path(self, *more: str) -> str:
        return "\\".join((*self.path, *more))

    def text(self, *more: str) -> str:
        rest = self.smb_path(*more)
        base = unc_text(self.unc.host, self.unc.share)
        return base + ("\\" + rest if rest else "")


def is_share_target(text: str) -> bool:
    r"""Whether ``--to`` names a share (``\\host\share[\path]`` or ``//host/share[/path]``)."""
    return text.startswith(("\\\\", "//"))


def parse_target(text: str) -> ShareTarget:
    r"""``\\host\share[\dir\...]`` -> :class:`ShareTarget`; BadUnc for anything else."""
    if len(text) > MAX_TARGET_CHARS:
        raise BadUnc(text[:80] + "...", f"longer than {MAX_TARGET_CHARS} characters")
    if not is_share_target(text):
        raise BadUnc(text, r"expected \\host\share[\path]")
    parts = text[2:].replace("/", "\\").split("\\")
    while len(parts) > 2 and parts[-1] == "":
        parts.pop()  # trailing separators
    if len(parts) < 2:
        raise BadUnc(text, r"expected \\host\share[\path]")
    unc = parse_unc("\\\\" + parts[0] + "\\" + parts[1])
    for comp in parts[2:]:
        reason = bad_name(comp)
        if reason:
            raise BadUnc(text, f"path component {comp!r}: {reason}")
    return ShareTarget(unc, tuple(parts[2:]))


def bad_name(name: str) -> str | None:
    """Why ``name`` cannot be a file name over SMB (None: it can)."""
    if not name or name in (".", ".."):
        return "empty or a dot name"
    if len(name) > 255:
        return "longer than 255 characters"
    m = _BAD_NAME_CHARS.search(name)
    if m:
        return f"contains {m.group()!r}, which SMB does not carry"
    try:
        name.encode("utf-16-le")
    except UnicodeEncodeError:
        return "not valid UTF-8 (cannot be sent over SMB)"
    return None


def fold(name: str) -> str:
    """``name`` as a case-insensitive share compares it: each character upper-cased
    on its own (Windows' and Samba's upcase tables map one code point to one, so
    "ß" stays and "ı" meets "i"), not Python's full case folding."""
    if name.isascii():
        return name.upper()
    return "".join(u if len(u := c.upper()) == 1 else c for c in name)


#: DOS device names: a share lists a file so named (with any extension) under a
#: mangled 8.3 name, as it does one whose name ends in a dot or a space.
_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                       *(f"LPT{i}" for i in range(1, 10))})


def listed_otherwise(name: str) -> bool:
    """Whether Samba would show an existing file of this name under another (mangled)
    name in a directory listing, so that only opening it tells whether it exists."""
    return name[-1] in ". " or name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED


@dataclass
class ShareRestoreResult:
    target: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _create(path: str, access: int, disposition: int, options: int, attrs: int = 0,
            sd: bytes | None = None) -> _Raw:
    """A Create request; ``sd`` goes along as an SMB2_CREATE_SD_BUFFER context ("SecD"),
    applied by the server to a file it creates (one SetInfo fewer per file)."""
    name = path.encode("utf-16-le") or b"\0\0"
    ctx = b""
    ctx_off = 0
    if sd:
        pad = -(120 + len(name)) % 8
        name += b"\0" * pad
        ctx_off = 120 + len(name)
        ctx = struct.pack("<IHHHHI", 0, 16, 4, 0, 24, len(sd)) + b"SecD\0\0\0\0" + sd
    body = _CREATE_REQ.pack(57, 0, 0, _IMPERSONATION, 0, 0, access, attrs, _SHARE_ALL,
                            disposition, options | _FILE_OPEN_FOR_BACKUP_INTENT, 120,
                            len(path.encode("utf-16-le")), ctx_off, len(ctx))
    return _Raw(0x05, body + name + ctx)


def _write(fid: bytes, offset: int, data: bytes | memoryview) -> _Raw:
    body = _WRITE_REQ.pack(49, 64 + _WRITE_REQ.size, len(data), offset, fid, 0, 0, 0, 0, 0)
    return _Raw(_SMB2_WRITE, body + bytes(data), length=len(data), write_channel_info_length=0)


def _set_info(fid: bytes, info_type: int, cls: int, buf: bytes, additional: int = 0) -> _Raw:
    body = _SET_INFO_REQ.pack(33, info_type, cls, len(buf), 64 + _SET_INFO_REQ.size, 0,
                              additional, fid)
    return _Raw(_SMB2_SET_INFO, body + buf)


def data_runs(data: bytes, offset: int) -> Iterator[tuple[int, memoryview]]:
    """The parts of a chunk worth sending: all-zero 64 KiB blocks (aligned to the
    file) are left out, so they stay holes (as local restore does)."""
    n = len(data)
    view = memoryview(data)
    if n < 2 * HOLE_BLOCK:
        if n and not is_zero(view):
            yield offset, view
        return
    pos, run = 0, -1
    while pos < n:
        end = min(n, ((offset + pos) // HOLE_BLOCK + 1) * HOLE_BLOCK - offset)
        if is_zero(view[pos:end]):
            if run >= 0:
                yield offset + run, view[run:pos]
                run = -1
        elif run < 0:
            run = pos
        pos = end
    if run >= 0:
        yield offset + run, view[run:]


@dataclass
class _Pending:
    point_path: str
    target: str
    reqs: list[Any]
    kinds: list[str]  # what each request is: create, write, eof, sd, basic, close
    size: int
    again: Callable[[], tuple[list[Any], list[str]]]  # what to send if it must be retried
    sd_in_create: bool  # (then setting the descriptor by SetInfo; see _ShareRestorer.finish)


class _ShareRestorer:
    def __init__(self, repo: Repository, point: PointRow, session: SmbSession,
                 target: ShareTarget, overwrite: bool, security: bool,
                 progress: Progress) -> None:
        self.repo = repo
        self.point = point
        self.session = session
        self.target = target
        self.overwrite = overwrite
        self.security = security
        self.progress = progress
        self.result = ShareRestoreResult(target.text())
        self.src = SmbSource(session, target.unc.share, "restore", security=False)
        self.tree_ = self.src.tree
        self._trees: OrderedDict[bytes, list[Entry]] = OrderedDict()  # LRU of decoded trees
        self.existing_dirs: set[str] = set()  # share paths (folded) that exist
        self.conflicts: list[dict[str, str]] = []
        # Point paths whose name differs only in case from a sibling's (-> that name):
        # one file on a case-insensitive share; the first in the point is restored.
        self.same_name: dict[str, str] = {}
        self.pending: deque[_Pending] = deque()
        self.total_files = 0
        self.total_bytes = 0

    # -- the point ------------------------------------------------------------------
    def tree(self, tree_id: str | bytes) -> list[Entry]:
        tid = bytes.fromhex(tree_id) if isinstance(tree_id, str) else tree_id
        cached = self._trees.get(tid)
        if cached is None:
            cached = self._trees[tid] = decode_tree(self.repo.read_blob(tid))
            if len(self._trees) > TREE_CACHE:
                self._trees.popitem(last=False)
        else:
            self._trees.move_to_end(tid)
        return cached

    def find(self, path: str) -> Entry | None:
        return find_entry(self.tree, self.point.root, [p for p in path.split("/") if p])

    def note(self, kind: str, path: str, why: str) -> None:
        """Record an ``error``, a ``skipped`` entry or a ``warning`` (named on stderr)."""
        bucket = {"error": self.result.errors, "skipped": self.result.skipped,
                  "warning": self.result.warnings}[kind]
        bucket.append({"path": path, "error": why})
        if kind == "error":
            self.progress.errors += 1
        self.progress.message(f"restore: {kind}: {path}: {why}")

    # -- the share ------------------------------------------------------------------
    def listing(self, rel: tuple[str, ...]) -> dict[str, str] | None:
        """folded name -> type of a target directory; None if it does not exist."""
        try:
            entries = self.src.scandir("/".join((*self.target.path, *rel)))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        return {fold(e.name): e.type for e in entries}

    def probe(self, rel: tuple[str, ...]) -> str | None:
        """The type of an existing target entry, found by opening it (for names a
        listing shows mangled); None if there is none."""
        path = self.target.smb_path(*rel)
        reqs = self.session.send(self.tree_, [
            _create(path, _FILE_READ_ATTRIBUTES | _SYNCHRONIZE, _FILE_OPEN, 0),
            _close(_RELATED)], related=True)
        created, _closed = self.session.recv_all(reqs)
        if isinstance(created, _Status):
            if created.status in (NtStatus.STATUS_OBJECT_NAME_NOT_FOUND,
                                  NtStatus.STATUS_OBJECT_PATH_NOT_FOUND):
                return None
            return FILE  # there, but not for us to open: in the way all the same
        return DIR if _Created(created).attrs & _ATTR_DIRECTORY else FILE

    def _key(self, rel: tuple[str, ...]) -> str:
        return fold(self.target.smb_path(*rel))

    # -- pass 1: what exists ------------------------------------------------------------
    def plan_dir(self, rel: tuple[str, ...], entries: list[Entry], prefix: str,
                 wanted: Selection, exists: bool) -> None:
        present = self.listing(rel) if exists else None
        if present is not None:
            self.existing_dirs.add(self._key(rel))
        first: dict[str, str] = {}  # folded name -> the point's first name for it
        for e in entries:
            name = e["name"]
            point_path = f"{prefix}/{name}" if prefix else name
            sel = wanted.below(name)
            if sel is None or bad_name(name) or e["type"] not in (DIR, FILE):
                continue
            folded = fold(name)
            if folded in first:
                self.same_name[point_path] = first[folded]
                continue
            first[folded] = name
            kind = None
            if present is not None:
                kind = (self.probe((*rel, name)) if listed_otherwise(name)
                        else present.get(folded))
            target = self.target.text(*rel, name)
            if e["type"] == DIR:
                if kind is not None and kind != DIR:
                    self.conflicts.append({"path": point_path, "target": target,
                                           "reason": "a file is where a directory goes"})
                    continue
                try:
                    children = self.tree(e["subtree"])
                except (RepoError, ValueError):
                    continue  # reported when writing
                self.plan_dir((*rel, name), children, point_path, sel, kind == DIR)
            else:
                if kind == DIR:
                    self.conflicts.append({"path": point_path, "target": target,
                                           "reason": "a directory is where a file goes"})
                elif kind is not None and not self.overwrite:
                    self.conflicts.append({"path": point_path, "target": target,
                                           "reason": "exists"})
                self.total_files += 1
                self.total_bytes += int(e.get("size", 0))

    # -- pass 2: writing ---------------------------------------------------------------
    def ensure_target_root(self) -> None:
        """Create the target directory and its missing parents inside the share."""
        for i in range(1, len(self.target.path) + 1):
            rel = self.target.path[:i]
            key = fold("\\".join(rel))
            if key in self.existing_dirs:
                continue
            self._mkdir("\\".join(rel), "/".join(rel), fail_exists=False)

    def _mkdir(self, smb_path: str, shown: str, fail_exists: bool) -> bool:
        """Create one directory; True if it was created here."""
        reqs = self.session.send(self.tree_, [
            _create(smb_path, _FILE_READ_ATTRIBUTES | _SYNCHRONIZE,
                    _FILE_CREATE if fail_exists else _FILE_OPEN_IF, _FILE_DIRECTORY_FILE),
            _close(_RELATED)], related=True)
        created, _closed = self.session.recv_all(reqs)
        if isinstance(created, _Status):
            if created.status == NtStatus.STATUS_OBJECT_NAME_COLLISION:
                return False
            raise _smb_os_error(created.status, self.target.unc, smb_path or shown)
        return True

    def restore_dir(self, rel: tuple[str, ...], e: Entry | None, entries: list[Entry],
                    prefix: str, wanted: Selection) -> None:
        """Restore ``entries`` into the target directory ``rel`` (which exists), then
        ``e``'s metadata onto it (when it was created here or ``overwrite``)."""
        for child in entries:
            signals.check()  # between files: every compound sent is whole
            name = child["name"]
            point_path = f"{prefix}/{name}" if prefix else name
            sel = wanted.below(name)
            if sel is None:
                continue
            why = bad_name(name)
            if why:
                self.note("skipped", point_path, f"name: {why}")
                continue
            if point_path in self.same_name:
                self.note("skipped", point_path, "differs only in case from "
                          f"{self.same_name[point_path]!r}, restored in its place (the "
                          "share does not tell such names apart)")
                continue
            kind = child["type"]
            if kind == DIR:
                self.enter_dir((*rel, name), child, point_path, sel)
            elif kind == FILE:
                self.restore_file((*rel, name), child, point_path)
            else:
                what = {"l": "symlink", "p": "FIFO", "c": "device", "b": "device",
                        "s": "socket"}.get(kind, f"type {kind!r}")
                self.note("skipped", point_path,
                          f"a {what} cannot be created over SMB")
        if e is not None:
            self.drain()
            existed = self._key(rel) in self.existing_dirs
            if not existed or self.overwrite:
                self.set_meta(self.target.smb_path(*rel), e, prefix, directory=True)

    def enter_dir(self, rel: tuple[str, ...], e: Entry, point_path: str,
                  wanted: Selection) -> None:
        smb_path = self.target.smb_path(*rel)
        try:
            children = self.tree(e["subtree"])
        except (RepoError, ValueError) as exc:
            self.note("error", point_path + "/", f"directory listing unreadable: {exc}")
            return
        if self._key(rel) not in self.existing_dirs:
            try:
                if not self._mkdir(smb_path, point_path, fail_exists=True):
                    self.existing_dirs.add(self._key(rel))  # appeared since pass 1
            except OSError as exc:
                lost = self.files_below(children, wanted)
                self.note("error", point_path + "/", f"mkdir: {exc.strerror or exc}"
                          + (f"; the {lost} files below it are not restored" if lost else ""))
                return
        self.result.dirs += 1
        self.restore_dir(rel, e, children, point_path, wanted)

    def files_below(self, entries: list[Entry], wanted: Selection) -> int:
        """The files a restore of ``entries`` would write (for a directory that failed)."""
        n = 0
        for e in entries:
            sel = wanted.below(e["name"])
            if sel is None:
                continue
            if e["type"] == FILE:
                n += 1
            elif e["type"] == DIR:
                with contextlib.suppress(RepoError, ValueError):  # named when written
                    n += self.files_below(self.tree(e["subtree"]), sel)
        return n

    def sd_of(self, e: Entry) -> bytes | None:
        return xattrs_of(e).get(SD_XATTR) if self.security else None

    def meta_msgs(self, fid: bytes, e: Entry, directory: bool, with_sd: bool = True
                  ) -> tuple[list[Any], list[str]]:
        msgs: list[Any] = []
        kinds: list[str] = []
        sd = self.sd_of(e) if with_sd else None
        if sd:
            msgs.append(_set_info(fid, _INFO_SECURITY, 0, sd, _OWNER_GROUP_DACL))
            kinds.append("sd")
        attrs = 0
        if "attrib" in e:
            attrs = int(e["attrib"]) & _SETTABLE_ATTRS
            if directory:
                attrs |= _ATTR_DIRECTORY
            elif not attrs:
                attrs = _ATTR_NORMAL
        # A FILETIME of 0 leaves that time unchanged (an unknown time).
        btime, atime, mtime = (filetime.from_unix_ns(e.get(k)) for k in ("btime", "atime", "mtime"))
        msgs.append(_set_info(fid, _INFO_FILE, _FILE_BASIC_INFORMATION,
                              _BASIC.pack(btime, atime, mtime, 0, attrs, 0)))
        kinds.append("basic")
        return msgs, kinds

    def _access(self, e: Entry) -> int:
        access = _FILE_READ_ATTRIBUTES | _FILE_WRITE_ATTRIBUTES | _SYNCHRONIZE
        if self.security and SD_XATTR in e.get("xattrs", {}):
            access |= _WRITE_DAC | _WRITE_OWNER
        return access

    def set_meta(self, smb_path: str, e: Entry, point_path: str, directory: bool) -> None:
        msgs, kinds = self.meta_msgs(_RELATED, e, directory)
        opts = _FILE_DIRECTORY_FILE if directory else _FILE_NON_DIRECTORY_FILE
        reqs = self.session.send(self.tree_, [
            _create(smb_path, self._access(e), _FILE_OPEN, opts), *msgs, _close(_RELATED)],
            related=True)
        self._check(point_path, ["create", *kinds, "close"], self.session.recv_all(reqs))

    def _check(self, point_path: str, kinds: Sequence[str], results: list[Any]) -> bool:
        """Record the failures of one file's requests; False if its data did not land."""
        ok = True
        for kind, res in zip(kinds, results, strict=True):
            if not isinstance(res, _Status):
                continue
            if kind == "create":
                if res.status == NtStatus.STATUS_OBJECT_NAME_COLLISION:
                    self.note("skipped", point_path, "exists (not overwritten)")
                else:
                    self.note("error", point_path, f"create: {_status_text(res)}")
                return False
            if kind in ("write", "eof"):
                if ok:
                    self.note("error", point_path, f"write: {_status_text(res)}")
                ok = False
            elif kind == "sd":
                self.note("warning", point_path,
                          f"security descriptor: {_status_text(res)}")
            elif kind == "basic":
                self.note("warning", point_path, f"times/attributes: "
                          f"{_status_text(res)}")
        return ok

    def content_of(self, e: Entry, point_path: str) -> Entry | None:
        if "link" not in e:
            return e
        first = self.find(e["link"])
        if first is None:
            self.note("error", point_path,
                      f"hardlink target {e['link']} missing from the point")
        return first

    def restore_file(self, rel: tuple[str, ...], e: Entry, point_path: str) -> None:
        data_entry = self.content_of(e, point_path)
        if data_entry is None:
            return
        meta = data_entry if "link" in e else e
        size = int(data_entry.get("size", 0))
        smb_path = self.target.smb_path(*rel)
        if size <= SMALL_FILE:
            try:
                runs = list(self.small_runs(data_entry))
            except (RepoError, ValueError) as exc:
                self.note("error", point_path, f"not restored: {exc}")
                return
            self.send_small(smb_path, meta, point_path, size, runs)
        else:
            self.drain()
            self.write_large(smb_path, meta, data_entry, point_path, size)

    def small_runs(self, e: Entry) -> Iterator[tuple[int, memoryview]]:
        for off, length, cid in e.get("content", ()):
            data = self.repo.read_blob(bytes.fromhex(cid))
            if len(data) != length:
                raise BlobError(bytes.fromhex(cid), "length differs from the tree")
            yield from data_runs(data, off)

    def disposition(self) -> int:
        return _FILE_OVERWRITE_IF if self.overwrite else _FILE_CREATE

    def send_small(self, smb_path: str, e: Entry, point_path: str, size: int,
                   runs: list[tuple[int, memoryview]]) -> None:
        # A new file takes its descriptor with the Create; an overwritten one (which the
        # server does not create) by SetInfo, as does a file whose Create refused it.
        sd = None if self.overwrite else self.sd_of(e)
        msgs, kinds = self.small_msgs(smb_path, e, size, runs, sd)

        def again() -> tuple[list[Any], list[str]]:
            return self.small_msgs(smb_path, e, size, runs, None) if sd else (msgs, kinds)
        need = 4 + len(msgs) + size // 65536
        while self.pending and (len(self.pending) >= DEPTH
                                or self.session.credits() < CREDIT_RESERVE + need):
            self.finish(self.pending.popleft())
        reqs = self.session.send(self.tree_, msgs, related=True)
        self.pending.append(_Pending(point_path, smb_path, reqs, kinds, size, again,
                                     sd is not None))

    def small_msgs(self, smb_path: str, e: Entry, size: int, runs: list[tuple[int, memoryview]],
                   sd: bytes | None) -> tuple[list[Any], list[str]]:
        """Create (with ``sd``), Write(s), SetInfo(s), Close of one file."""
        access = self._access(e) | _FILE_WRITE_DATA
        msgs: list[Any] = [_create(smb_path, access, self.disposition(),
                                   _FILE_NON_DIRECTORY_FILE, _create_attrs(e), sd)]
        kinds = ["create"]
        written = 0
        for off, view in runs:
            msgs.append(_write(_RELATED, off, view))
            kinds.append("write")
            written = max(written, off + len(view))
        if written < size:
            msgs.append(_set_info(_RELATED, _INFO_FILE, _FILE_END_OF_FILE_INFORMATION,
                                  struct.pack("<q", size)))
            kinds.append("eof")
        meta, meta_kinds = self.meta_msgs(_RELATED, e, directory=False, with_sd=sd is None)
        msgs += [*meta, _close(_RELATED)]
        kinds += [*meta_kinds, "close"]
        return msgs, kinds

    def retry_create(self, created: bytes | _Status, smb_path: str) -> bool:
        """Whether an overwrite refused because of the existing file's DOS attributes
        (read-only; hidden or system not asked for) may be tried again: they are
        cleared first (the point's are set again at the end)."""
        if not (self.overwrite and isinstance(created, _Status)
                and created.status == NtStatus.STATUS_ACCESS_DENIED):
            return False
        reqs = self.session.send(self.tree_, [
            _create(smb_path, _FILE_WRITE_ATTRIBUTES | _SYNCHRONIZE, _FILE_OPEN,
                    _FILE_NON_DIRECTORY_FILE),
            _set_info(_RELATED, _INFO_FILE, _FILE_BASIC_INFORMATION,
                      _BASIC.pack(0, 0, 0, 0, _ATTR_NORMAL, 0)),
            _close(_RELATED)], related=True)
        return not any(isinstance(r, _Status) for r in self.session.recv_all(reqs))

    def finish(self, p: _Pending) -> None:
        results = self.session.recv_all(p.reqs)
        again = self.retry_create(results[0], p.target)
        if p.sd_in_create and isinstance(results[0], _Status) and results[0].status != (
                NtStatus.STATUS_OBJECT_NAME_COLLISION):
            again = True  # e.g. an owner the server refuses: then a warning, not a failure
        if again:
            msgs, p.kinds = p.again()
            results = self.session.recv_all(self.session.send(self.tree_, msgs, related=True))
        if self._check(p.point_path, p.kinds, results):
            self._done(p.size)
        elif not isinstance(results[0], _Status):
            self.remove(p.target)  # created, but its data did not land

    def drain(self) -> None:
        while self.pending:
            self.finish(self.pending.popleft())

    def _done(self, size: int) -> None:
        self.result.files += 1
        self.result.bytes += size
        self.progress.add_bytes(size)
        self.progress.file_done()

    def remove(self, smb_path: str) -> None:
        reqs = self.session.send(self.tree_, [
            _create(smb_path, _DELETE | _SYNCHRONIZE, _FILE_OPEN,
                    _FILE_NON_DIRECTORY_FILE | _FILE_DELETE_ON_CLOSE), _close(_RELATED)],
            related=True)
        self.session.recv_all(reqs)

    def write_large(self, smb_path: str, e: Entry, data_entry: Entry, point_path: str,
                    size: int) -> None:
        access = self._access(e) | _FILE_WRITE_DATA | _DELETE
        create = _create(smb_path, access, self.disposition(), _FILE_NON_DIRECTORY_FILE,
                         _create_attrs(e))
        (created,) = self.session.recv_all(self.session.send(self.tree_, [create]))
        if self.retry_create(created, smb_path):
            (created,) = self.session.recv_all(self.session.send(self.tree_, [create]))
        if not self._check(point_path, ["create"], [created]):
            return
        assert isinstance(created, bytes)
        fid = _Created(created).file_id
        inflight: deque[Any] = deque()
        failed: str | None = None
        written = 0
        try:
            for off, length, cid in data_entry.get("content", ()):
                data = self.repo.read_blob(bytes.fromhex(cid))
                if len(data) != length:
                    raise BlobError(bytes.fromhex(cid), "length differs from the tree")
                for run_off, view in data_runs(data, off):
                    for pos in range(0, len(view), WRITE_SIZE):
                        signals.check()
                        piece = view[pos:pos + WRITE_SIZE]
                        while inflight and (len(inflight) >= WRITE_DEPTH or
                                            self.session.credits() < CREDIT_RESERVE + 16):
                            failed = failed or _write_failure(self.session, inflight.popleft())
                        if failed:
                            raise OSError(errno.EIO, failed)
                        (req,) = self.session.send(self.tree_, [_write(fid, run_off + pos,
                                                                       piece)])
                        inflight.append(req)
                        written = max(written, run_off + pos + len(piece))
                self.progress.add_bytes(length)
            while inflight:
                failed = failed or _write_failure(self.session, inflight.popleft())
            if failed:
                raise OSError(errno.EIO, failed)
        except (RepoError, OSError, signals.Stopped) as exc:
            while inflight:
                _write_failure(self.session, inflight.popleft())
            self.session.recv_all(self.session.send(self.tree_, [
                _set_info(fid, _INFO_FILE, _FILE_DISPOSITION_INFORMATION, b"\x01"),
                _close(fid)]))
            if isinstance(exc, signals.Stopped):
                raise  # the partial file is gone
            self.note("error", point_path, f"not restored: "
                      f"{exc.strerror if isinstance(exc, OSError) else exc}")
            return
        msgs: list[Any] = []
        kinds: list[str] = []
        if written < size:
            msgs.append(_set_info(fid, _INFO_FILE, _FILE_END_OF_FILE_INFORMATION,
                                  struct.pack("<q", size)))
            kinds.append("eof")
        meta, meta_kinds = self.meta_msgs(fid, e, directory=False)
        msgs += [*meta, _close(fid)]
        kinds += [*meta_kinds, "close"]
        if self._check(point_path, kinds, self.session.recv_all(
                self.session.send(self.tree_, msgs))):
            self.result.files += 1
            self.result.bytes += size
            self.progress.file_done()
        else:
            self.remove(smb_path)


def _create_attrs(e: Entry) -> int:
    """DOS attributes for Create: hidden and system must be asked for to overwrite a
    file that has them (read-only is set at the end, with the times)."""
    return int(e.get("attrib", 0)) & 0x6


def _write_failure(session: SmbSession, req: Any) -> str | None:
    try:
        session.recv(req)
    except _Status as st:
        return _status_text(st)
    return None


_STATUS_NAMES = {v: k for k, v in vars(NtStatus).items() if k.startswith("STATUS_")}


def _status_text(st: _Status) -> str:
    return _STATUS_NAMES.get(st.status) or f"NTSTATUS 0x{st.status:08x}"


def _smb_os_error(status: int, unc: Unc, path: str) -> OSError:
    from remotevss.backup.smb import _os_error

    return _os_error(status, unc_text(unc.host, unc.share) + "\\" + path)


class Selection:
    """Which entries below a directory are restored: everything (``None`` paths),
    or only those on the way to, or below, one of the ``--include`` paths."""

    def __init__(self, paths: list[tuple[str, ...]] | None) -> None:
        self.paths = paths

    def below(self, name: str) -> Selection | None:
        if self.paths is None:
            return self
        rest = [p[1:] for p in self.paths if p[0] == name]
        if not rest:
            return None
        if any(not p for p in rest):
            return Selection(None)  # an included item: all of it
        return Selection(rest)


def restore_to_share(repo: Repository, point: PointRow, session: SmbSession,
                     target: ShareTarget, subpath: str = "", includes: Sequence[str] = (),
                     overwrite: bool = False, security: bool = True,
                     progress: Progress | None = None) -> ShareRestoreResult:
    r"""Restore ``point`` (or ``subpath`` of it, or only ``includes`` of that) to
    ``target`` over ``session``.

    As the local restore: without ``subpath`` the target receives one directory
    per source label; a directory ``subpath`` *becomes* the target; a file is
    restored into it.  ``includes`` are point paths (``LABEL/dir/file``) at or
    below ``subpath``; each lands where a full restore would put it.  Raises
    :class:`RestoreRefused` (nothing written) if a file exists and not
    ``overwrite``, or if a file and a directory are in each other's way;
    RepoError for a bad ``subpath`` or include.
    """
    r = _ShareRestorer(repo, point, session, target, overwrite, security,
                       progress or Progress(enabled=False))
    sub = "/".join(p for p in subpath.split("/") if p)
    base: Entry | None = None
    if sub:
        base = r.find(sub)
        if base is None:
            raise RepoError(f"{sub}: no such path in recovery point {point.id}")
    inc: list[tuple[str, ...]] = []
    for text in includes:
        path = "/".join(p for p in text.split("/") if p)
        if not path or r.find(path) is None:
            raise RepoError(f"--include {text}: no such path in recovery point {point.id}")
        if sub and not (path == sub or path.startswith(sub + "/")):
            raise RepoError(f"--include {text} is not inside --path {sub}")
        inc.append(tuple(path.split("/")))
    # What the target directory stands for, as (entries, point prefix, selection).
    if base is not None and base["type"] != DIR:
        if base["type"] != FILE:
            raise RepoError(f"{sub}: only files and directories can be restored over SMB")
        parent = sub.rpartition("/")[0]
        entries, prefix, sel = [base], parent, Selection([(base["name"],)])
        base_meta: Entry | None = None
    else:
        entries = r.tree(base["subtree"] if base is not None else point.root)
        prefix, base_meta = sub, base
        depth = len(sub.split("/")) if sub else 0
        sel = Selection([p[depth:] for p in inc] if inc else None)
        if sel.paths is not None and any(not p for p in sel.paths):
            sel = Selection(None)  # --include of the --path itself
    try:
        root_present = r.listing(()) if target.path else {}
        if root_present is not None:
            r.existing_dirs.add(r._key(()))
        else:  # parents of a missing target that do exist need no mkdir
            for i in range(1, len(target.path)):
                if r.listing(target.path[:i]) is not None:
                    r.existing_dirs.add(fold("\\".join(target.path[:i])))
        r.plan_dir((), entries, prefix, sel, root_present is not None)
        if r.conflicts:
            raise RestoreRefused(r.conflicts)
        r.progress.set_total(r.total_files, r.total_bytes)
        r.ensure_target_root()
        r.restore_dir((), base_meta, entries, prefix, sel)
        r.drain()
    except signals.Stopped:
        r.drain()  # the compounds sent are whole files: their answers are read
        raise
    finally:
        r.progress.finish()
        r.src.close()
    return r.result
