"""Looking into recovery points without FUSE: ``backup ls`` and ``backup diff``.

Why generators over an explicit stack: a point may hold millions of entries,
so both verbs stream; only the trees on the path being walked are held (one
directory's entries per level), and a stack rather than nested generators
keeps a deep tree from reaching Python's recursion limit.

Why ``diff`` reads so little: trees are content-addressed, so a subtree with
the same id in both points is the same and is skipped unread; files are
compared by their chunk lists (and sizes), so no file data is ever read.

Names are stored as ``os.fsdecode`` gives them (undecodable bytes as
``\\udcXX`` surrogates); ``escape`` makes them printable and unambiguous.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from remotevss.backup.index import PointRow
from remotevss.backup.progress import human
from remotevss.backup.repo import RepoError, Repository
from remotevss.backup.snapshot_source import BLOCK, CHAR, SYMLINK
from remotevss.backup.tree import Entry, find_entry

_TYPE_BITS = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "p": stat.S_IFIFO,
              "c": stat.S_IFCHR, "b": stat.S_IFBLK, "s": stat.S_IFSOCK}
#: Fields whose change is a change of content (``M``): a file's data, a hardlink's
#: first name, a symlink's target, a device's number.
CONTENT_FIELDS = ("size", "content", "link", "target", "rdev")
#: Fields whose change alone is a metadata change (``U``).  Not atime (reading a
#: file changes it) nor ctime (it changes with every other change, and with a
#: new hardlink: it would add only noise).
META_FIELDS = ("mode", "uid", "gid", "user", "group", "mtime", "xattrs", "attrib", "btime")
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


class PathNotFound(RepoError):
    """A PATH the point does not have (exit 1, as other bad arguments to a reader)."""


def escape(text: str) -> str:
    """``text`` printable on one line and reversible (``unescape``): a backslash as
    ``\\\\``, an undecodable byte (a surrogate escape) or an ASCII control as
    ``\\xNN``, any other unprintable character as ``\\uXXXX``."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c.isprintable():
            out.append(c)
        elif "\udc80" <= c <= "\udcff":
            out.append(f"\\x{ord(c) - 0xdc00:02x}")
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xffff else f"\\U{ord(c):08x}")
    return "".join(out)


def unescape(text: str) -> str:
    """The name ``escape`` printed as ``text`` (so a path copied from ``ls`` output
    finds its entry); text that is no such output is returned unchanged."""
    raw = bytearray()
    i = 0
    simple = {"\\": b"\\", "n": b"\n", "t": b"\t", "r": b"\r"}
    try:
        while i < len(text):
            c = text[i]
            if c != "\\":
                raw += os.fsencode(c)
                i += 1
                continue
            k = text[i + 1]
            if k in simple:
                raw += simple[k]
                i += 2
            elif k in "xuU":
                width = {"x": 2, "u": 4, "U": 8}[k]
                digits = text[i + 2:i + 2 + width]
                if len(digits) != width:
                    return text
                n = int(digits, 16)
                raw += bytes([n]) if k == "x" else chr(n).encode("utf-8", "surrogatepass")
                i += 2 + width
            else:
                return text
    except (IndexError, ValueError):
        return text
    return os.fsdecode(bytes(raw))


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def locate(repo: Repository, point: PointRow, path: str) -> tuple[str, Entry | None]:
    """The stored point path and entry of ``path`` (``('', None)``: the point's
    root); a path given as ``ls`` printed it (``escape``) is found too.  Raises
    PathNotFound."""
    parts = _parts(path)
    if not parts:
        return "", None
    found = _find(repo, point, parts)
    if found is None and "\\" in path:
        parts = _parts(unescape(path))
        found = _find(repo, point, parts)
    if found is None:
        raise PathNotFound(f"{escape('/'.join(parts))}: no such path in recovery point "
                           f"{point.id}")
    return "/".join(parts), found


def _find(repo: Repository, point: PointRow, parts: list[str]) -> Entry | None:
    return find_entry(repo.read_tree, point.root, parts)


def _stacked(first: Iterator[Any]) -> Iterator[Any]:
    """Run generators that yield results or further generators (a subdirectory's,
    whose results come before the rest of this one's): depth first, no recursion."""
    stack = [first]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, Iterator):
            stack.append(item)
        else:
            yield item


# -- ls ----------------------------------------------------------------------------

def entries(repo: Repository, point: PointRow, path: str = "",
            depth: int | None = None) -> Iterator[tuple[str, Entry]]:
    """(point path, entry) of everything below ``path``, depth first in tree order:
    a directory's contents (not itself), a file alone; ``depth``: levels below
    ``path`` (1: its own entries only; None: all)."""
    where, top = locate(repo, point, path)
    if top is None:
        return _stacked(_dir_entries(repo, point.root, "", depth))
    if "subtree" not in top:
        return iter([(where, top)])
    return _stacked(_dir_entries(repo, bytes.fromhex(top["subtree"]), where, depth))


def _dir_entries(repo: Repository, tree_id: bytes, prefix: str,
                 depth: int | None) -> Iterator[Any]:
    for e in repo.read_tree(tree_id):
        path = f"{prefix}/{e['name']}" if prefix else e["name"]
        yield path, e
        if "subtree" in e and (depth is None or depth > 1):
            yield _dir_entries(repo, bytes.fromhex(e["subtree"]), path,
                               None if depth is None else depth - 1)


def mode_string(e: Entry) -> str:
    """``ls -l``'s ``-rw-r--r--`` for an entry (its type letter and permission bits)."""
    return stat.filemode(_TYPE_BITS.get(e["type"], 0) | e.get("mode", 0))


def _owner(e: Entry, name: str, id_key: str) -> str:
    if e.get(name) is not None:
        return escape(e[name])
    n = e.get(id_key, -1)
    return "?" if n is None or n < 0 else str(n)


def local_time(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 1_000_000_000))


def long_line(path: str, e: Entry) -> str:
    """``ls -l``-like: mode, user/group (names, else ids), size (devices:
    major,minor), mtime (local), path; ``-> target`` for a symlink, ``link to
    FIRST`` for a second name of a file (as ``tar -tv`` shows both)."""
    t = e["type"]
    if t in (CHAR, BLOCK):
        rdev = e.get("rdev", 0)
        size = f"{os.major(rdev)},{os.minor(rdev)}"
    elif t == SYMLINK:
        size = str(len(os.fsencode(e.get("target", ""))))
    else:
        size = str(e.get("size", 0))
    owner = f"{_owner(e, 'user', 'uid')}/{_owner(e, 'group', 'gid')}"
    line = f"{mode_string(e)} {owner:<15} {size:>10} {local_time(e.get('mtime', 0))} " \
           f"{escape(path)}"
    if t == SYMLINK:
        line += f" -> {escape(e.get('target', ''))}"
    elif "link" in e:
        line += f" link to {escape(e['link'])}"
    return line


def entry_json(path: str, e: Entry) -> dict[str, Any]:
    """The entry's fields as stored (see the tree format) but its chunk list, and
    its point path."""
    d = {k: v for k, v in e.items() if k != "content"}
    d["path"] = path
    return d


def _safe(out: TextIO) -> None:
    """Names are escaped, but a valid non-ASCII one may still not fit a narrow
    locale's encoding: write it as an escape there too, never fail."""
    if isinstance(out, io.TextIOWrapper):
        out.reconfigure(errors="backslashreplace")


def print_ls(repo: Repository, point: PointRow, path: str, long: bool, as_json: bool,
             depth: int | None, out: TextIO) -> int:
    """``backup ls``: one line per entry (NDJSON with ``as_json``); returns the count."""
    _safe(out)
    n = 0
    for p, e in entries(repo, point, path, depth):
        if as_json:
            out.write(json.dumps(entry_json(p, e), sort_keys=True) + "\n")
        else:
            out.write((long_line(p, e) if long else escape(p)) + "\n")
        n += 1
    return n


# -- diff --------------------------------------------------------------------------

@dataclass
class Change:
    """One line of a diff: ``kind`` + added, - removed, M content, U metadata only,
    T type; ``fields``: what differs (M, U); ``old_type`` for T."""

    kind: str
    path: str
    type: str
    fields: list[str] = field(default_factory=list)
    old_type: str = ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"change": self.kind, "path": self.path, "type": self.type}
        if self.fields:
            d["fields"] = self.fields
        if self.old_type:
            d["old_type"] = self.old_type
        return d


@dataclass
class DiffSummary:
    """Counts of each kind, and data bytes: of files added and removed, and of the
    chunks a modified file gained and lost (holes and second names count 0)."""

    added: int = 0
    removed: int = 0
    modified: int = 0
    metadata: int = 0
    type_changed: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)

    def line(self) -> str:
        return (f"{self.added} added, {self.removed} removed, {self.modified} modified, "
                f"{self.metadata} metadata only, {self.type_changed} type changed; "
                f"data +{human(self.bytes_added)} -{human(self.bytes_removed)}")


def _data(e: Entry) -> int:
    return sum(length for _off, length, _cid in e.get("content", ()))


def _chunk_bytes(content: Iterable[list[Any]], other: Iterable[list[Any]]) -> int:
    """Bytes of the chunks of ``content`` that ``other`` lacks."""
    have = {cid for _off, _len, cid in other}
    return sum(length for _off, length, cid in content if cid not in have)


class _Differ:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.summary = DiffSummary()

    def tree(self, e: Entry) -> list[Entry]:
        return self.repo.read_tree(bytes.fromhex(e["subtree"]))

    def trees(self, old: list[Entry], new: list[Entry], prefix: str) -> Iterator[Any]:
        """The changes between two directories' entries, in name order."""
        a = {e["name"]: e for e in old}
        b = {e["name"]: e for e in new}
        for name in sorted(a.keys() | b.keys()):
            path = f"{prefix}/{name}" if prefix else name
            yield from self.entry(path, a.get(name), b.get(name))

    def entry(self, path: str, a: Entry | None, b: Entry | None) -> Iterator[Any]:
        """The changes of one path; a directory's contents follow as a generator."""
        if a == b:
            return  # the same entry, the same subtree id: nothing below differs
        s = self.summary
        if a is None:
            assert b is not None
            yield from self.side(path, b, "+")
            return
        if b is None:
            yield from self.side(path, a, "-")
            return
        if a["type"] != b["type"]:
            s.type_changed += 1
            s.bytes_removed += _data(a)
            s.bytes_added += _data(b)
            yield Change("T", path, b["type"], old_type=a["type"])
            if "subtree" in a:
                yield self.below(a, path, "-")
            if "subtree" in b:
                yield self.below(b, path, "+")
            return
        content = [k for k in CONTENT_FIELDS if a.get(k) != b.get(k)]
        meta = [k for k in META_FIELDS if a.get(k) != b.get(k)]
        if content:
            s.modified += 1
            s.bytes_added += _chunk_bytes(b.get("content", ()), a.get("content", ()))
            s.bytes_removed += _chunk_bytes(a.get("content", ()), b.get("content", ()))
            yield Change("M", path, b["type"], content + meta)
        elif meta:
            s.metadata += 1
            yield Change("U", path, b["type"], meta)
        if a.get("subtree") != b.get("subtree") and "subtree" in a and "subtree" in b:
            yield self.trees(self.tree(a), self.tree(b), path)

    def side(self, path: str, e: Entry, kind: str) -> Iterator[Any]:
        """An entry only one point has, and (as a generator) all below it."""
        if kind == "+":
            self.summary.added += 1
            self.summary.bytes_added += _data(e)
        else:
            self.summary.removed += 1
            self.summary.bytes_removed += _data(e)
        yield Change(kind, path, e["type"])
        if "subtree" in e:
            yield self.below(e, path, kind)

    def below(self, e: Entry, path: str, kind: str) -> Iterator[Any]:
        for child in self.tree(e):
            yield from self.side(f"{path}/{child['name']}", child, kind)


def diff(repo: Repository, old: PointRow, new: PointRow, path: str = "",
         summary: Callable[[DiffSummary], None] | None = None) -> Iterator[Change]:
    """The changes from ``old`` to ``new`` below ``path``, depth first in name order
    (a directory's own change before its contents'); ``summary`` is called with the
    totals once the last change is out.  A path neither point has: PathNotFound."""
    d = _Differ(repo)
    parts = _parts(path)
    if not parts:
        first = d.trees(repo.read_tree(old.root), repo.read_tree(new.root), "")
    else:
        where, a = _locate_or_none(repo, old, path)
        if a is None:
            where, b = _locate_or_none(repo, new, path)
        else:
            b = _find(repo, new, _parts(where))
        if a is None and b is None:
            raise PathNotFound(f"{escape('/'.join(parts))}: no such path in recovery point "
                               f"{old.id} nor in {new.id}")
        first = d.entry(where, a, b)
    yield from _stacked(first)
    if summary is not None:
        summary(d.summary)


def _locate_or_none(repo: Repository, point: PointRow, path: str
                    ) -> tuple[str, Entry | None]:
    try:
        return locate(repo, point, path)
    except PathNotFound:
        return "", None


def change_line(c: Change) -> str:
    return f"{c.kind}  {escape(c.path)}"


def print_diff(repo: Repository, old: PointRow, new: PointRow, path: str, as_json: bool,
               out: TextIO) -> DiffSummary:
    """``backup diff``: one line per change, then the summary (NDJSON with
    ``as_json``: the changes, then ``{"summary": {...}}``)."""
    _safe(out)
    totals: list[DiffSummary] = []
    for c in diff(repo, old, new, path, totals.append):
        out.write((json.dumps(c.to_json(), sort_keys=True) if as_json else change_line(c))
                  + "\n")
    s = totals[0]
    out.write((json.dumps({"summary": s.to_json()}, sort_keys=True) if as_json
               else s.line()) + "\n")
    return s


def quiet_broken_pipe() -> None:
    """After ``ls | head`` stops reading: later writes (and the exit's flush) go
    nowhere instead of raising again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
