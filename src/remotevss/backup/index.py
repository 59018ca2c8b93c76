"""The SQLite index: blob id -> (pack, offset, length), packs, recovery points, files cache.

Why SQLite: transactions give the atomicity the repository relies on (a
recovery point and its files-cache rows appear in one commit), WAL lets
restore/verify read while backups append (several at once: SQLite serialises
their commits), and lookups by blob id are a B-tree probe, so memory stays
flat however large the repository grows.

Schema 2 (format 2) keeps nothing readable that the packs hide: a point's
meta and stats, and the files cache (one row per directory, keyed by a keyed
hash of label and path) are sealed with the repository's codec, with the
row's key as associated data, so a row changed or moved does not open.  Blob
and pack rows stay plain (ids are keyed hashes; ``check`` compares every row
with the authenticated pack trailers).  Schema 1 (format 1) is read and
written as it was.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from remotevss.backup.crypto import Codec, SealError
from remotevss.backup.packs import BlobEntry

SCHEMA_VERSION = 2
ID_LEN = 32  # blob ids: blake3-256
# json_each and ->> (SQLite 3.38): a pack's blob rows in one statement.
_ONE_STATEMENT = sqlite3.sqlite_version_info >= (3, 38)


# A blob's place: (id, pack name, type, compression, offset, stored_len, raw_len).
_LOCATE = ("SELECT b.id, p.name, b.type, b.compression, b.offset, b.stored_len, "
           "b.raw_len FROM blobs b JOIN packs p ON p.id = b.pack WHERE b.id")


def _location(row: tuple[Any, ...]) -> Location:
    return Location(row[1], BlobEntry(row[0], *row[2:]))


class IndexDamaged(Exception):
    """A sealed index row does not open (changed, moved, or another repository's)."""


SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY,
    pack INTEGER NOT NULL REFERENCES packs(id),
    type INTEGER NOT NULL,
    compression INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs(pack);
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    time_ns INTEGER NOT NULL,
    root BLOB NOT NULL,
    record BLOB NOT NULL,
    sealed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS files_cache (
    source BLOB NOT NULL,
    dir BLOB NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (source, dir)
) WITHOUT ROWID;
"""

SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY,
    pack INTEGER NOT NULL REFERENCES packs(id),
    type INTEGER NOT NULL,
    compression INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs(pack);
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    time_ns INTEGER NOT NULL,
    root BLOB NOT NULL,
    record BLOB NOT NULL,
    meta TEXT NOT NULL,
    stats TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files_cache (
    source TEXT NOT NULL,
    dir BLOB NOT NULL,
    name BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    content TEXT NOT NULL,
    xattrs TEXT NOT NULL,
    PRIMARY KEY (source, dir, name)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Location:
    """A blob's place: pack name plus its trailer entry."""

    pack: str
    entry: BlobEntry


@dataclass(frozen=True, slots=True)
class PointRow:
    id: int
    uuid: str
    time_ns: int
    root: bytes
    record: bytes
    meta: dict[str, Any]
    stats: dict[str, Any]
    damaged: str = ""  # why the row's sealed part did not open (schema 2)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "uuid": self.uuid, "time_ns": self.time_ns,
                "root": self.root.hex(), "meta": self.meta, "stats": self.stats}


class CacheRow(NamedTuple):
    """A tuple, so that a directory's rows go to JSON as they are (arrays), without
    building a list per file: sealing the rows of a large directory is on the path
    of every incremental in which one of its files changed."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    content: str
    xattrs: str  # JSON {name: base64}, as in the tree


_new_row: Callable[[Iterable[Any]], CacheRow] = partial(tuple.__new__, CacheRow)

# A directory's files-cache row ready to write: (source key, dir key, sealed row or
# None to delete it); schema 1: (source, directory, the rows themselves).
PreparedDir = tuple[Any, Any, bytes | dict[str, CacheRow] | None]


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open the index in WAL mode with FULL sync: a commit survives power loss."""
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    con = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                          timeout=30)
    if readonly and _wal_unopenable(con, path):
        # On a read-only file system without the -shm/-wal files (a write-protected
        # copy) SQLite cannot open a WAL database; nothing can change it there and no
        # WAL holds commits, so it is opened as immutable.
        con.close()
        con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                              isolation_level=None, check_same_thread=False, timeout=30)
    con.execute("PRAGMA synchronous=FULL")
    if not readonly:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA foreign_keys=ON")
    return con


def _wal_unopenable(con: sqlite3.Connection, path: Path) -> bool:
    """Whether a read-only ``con`` fails only because a read-only file system keeps
    SQLite from making the WAL's shared-memory file next to a database whose WAL
    is empty or absent."""
    try:
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        return False
    except sqlite3.OperationalError:
        wal = Path(f"{path}-wal")
        return (os.statvfs(path).f_flag & os.ST_RDONLY != 0
                and (not wal.exists() or wal.stat().st_size == 0))


class Index:
    """Typed queries over one connection; callers group writes with ``transaction``."""

    def __init__(self, path: Path, readonly: bool = False, codec: Codec | None = None) -> None:
        self.path = path
        self.codec = codec or Codec()
        self.schema = 1 if self.codec.legacy else SCHEMA_VERSION
        self.con = connect(path, readonly)
        if not readonly:
            self.con.executescript(SCHEMA_1 if self.schema == 1 else SCHEMA_2)
            self.con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                             (str(self.schema),))
        try:
            row = self.con.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            self.con.close()
            raise ValueError(f"index.sqlite: {exc}") from None
        if row is None or row[0] != str(self.schema):
            self.con.close()
            raise ValueError(f"index.sqlite: schema {row and row[0]!r} is not {self.schema}")

    def schema_differences(self) -> list[str]:
        """Tables and indexes that differ from what this code creates (a changed byte
        in the stored schema text would otherwise go unnoticed: SQLite accepts it)."""
        mem = sqlite3.connect(":memory:")
        try:
            mem.executescript(SCHEMA_1 if self.schema == 1 else SCHEMA_2)
            want = set(mem.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        finally:
            mem.close()
        have = set(self.con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        return [f"schema entry {row[1]!r} is not what this program created"
                for row in sorted(have ^ want, key=str)]

    def reader(self) -> Index:
        """Another read-only connection (for a worker thread)."""
        return Index(self.path, readonly=True, codec=self.codec)

    def writer(self) -> Index:
        """Another connection that may write (for a thread committing packs)."""
        return Index(self.path, codec=self.codec)

    def close(self) -> None:
        self.con.close()

    # -- transactions -------------------------------------------------------
    def begin(self) -> None:
        self.con.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.con.execute("COMMIT")

    def rollback(self) -> None:
        if self.con.in_transaction:
            self.con.execute("ROLLBACK")

    # -- blobs and packs ----------------------------------------------------
    def has_blob(self, blob_id: bytes) -> bool:
        return self.con.execute("SELECT 1 FROM blobs WHERE id=?", (blob_id,)).fetchone() is not None

    def locate(self, blob_id: bytes) -> Location | None:
        row = self.con.execute(f"{_LOCATE}=?", (blob_id,)).fetchone()  # noqa: S608 - constant
        return None if row is None else _location(row)

    def locate_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, Location]:
        """``locate`` of many blobs, in one query per 500 (missing ones left out).
        Why: a restore of small files asked once per chunk, and each statement of a
        read-only connection takes and drops SQLite's file locks (two fcntl calls)."""
        ids = list(dict.fromkeys(blob_ids))
        out: dict[bytes, Location] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            marks = ",".join("?" * len(part))
            query = f"{_LOCATE} IN ({marks})"  # noqa: S608 - only placeholders
            for row in self.con.execute(query, part):
                out[row[0]] = _location(row)
        return out

    def add_pack(self, name: str, size: int, entries: Iterable[BlobEntry]) -> int:
        """Record a sealed pack and its blobs (inside the caller's transaction)."""
        cur = self.con.execute("INSERT INTO packs (name, size) VALUES (?, ?)", (name, size))
        pack_id = cur.lastrowid
        assert pack_id is not None
        rows = sorted(entries, key=lambda e: e.id)  # in key order: fewer B-tree pages touched
        if _ONE_STATEMENT and all(len(e.id) == ID_LEN for e in rows):
            # One statement for the whole pack: executemany releases and retakes the
            # GIL per row, and each retake waited for another busy thread's time
            # slice (25,000 rows took 16-29 s next to a busy thread, 0.1 s alone).
            self.con.execute(
                "INSERT OR REPLACE INTO blobs SELECT substr(?1, key * ?2 + 1, ?2), ?3, "
                "value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?4)",
                (b"".join(e.id for e in rows), ID_LEN, pack_id, json.dumps(
                    [[e.type, e.compression, e.offset, e.stored_len, e.raw_len] for e in rows],
                    separators=(",", ":"))))
            return pack_id
        self.con.executemany(
            "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(e.id, pack_id, e.type, e.compression, e.offset, e.stored_len, e.raw_len)
             for e in rows])
        return pack_id

    def packs(self) -> list[tuple[int, str, int]]:
        return list(self.con.execute("SELECT id, name, size FROM packs ORDER BY id"))

    def pack_blobs(self, pack_id: int) -> list[BlobEntry]:
        return [BlobEntry(*r) for r in self.con.execute(
            "SELECT id, type, compression, offset, stored_len, raw_len FROM blobs "
            "WHERE pack=? ORDER BY offset", (pack_id,))]

    def delete_pack(self, pack_id: int) -> None:
        self.con.execute("DELETE FROM blobs WHERE pack=?", (pack_id,))
        self.con.execute("DELETE FROM packs WHERE id=?", (pack_id,))

    def blob_count(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM blobs").fetchone()[0])

    # -- recovery points ----------------------------------------------------
    @staticmethod
    def _point_aad(pid: int, uuid: str, time_ns: int, root: bytes, record: bytes) -> bytes:
        return b"point\0" + struct.pack("<qq", pid, time_ns) + uuid.encode() + root + record

    def add_point(self, uuid: str, time_ns: int, root: bytes, record: bytes,
                  meta: dict[str, Any], stats: dict[str, Any]) -> int:
        if self.schema == 1:
            cur = self.con.execute(
                "INSERT INTO points (uuid, time_ns, root, record, meta, stats) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (uuid, time_ns, root, record, json.dumps(meta, sort_keys=True),
                 json.dumps(stats, sort_keys=True)))
            assert cur.lastrowid is not None
            return cur.lastrowid
        cur = self.con.execute(
            "INSERT INTO points (uuid, time_ns, root, record, sealed) VALUES (?, ?, ?, ?, x'')",
            (uuid, time_ns, root, record))
        pid = cur.lastrowid
        assert pid is not None
        body = json.dumps({"meta": meta, "stats": stats}, sort_keys=True).encode()
        self.con.execute("UPDATE points SET sealed=? WHERE id=?",
                         (self.codec.seal(body, self._point_aad(pid, uuid, time_ns, root,
                                                                record)), pid))
        return pid

    def points(self) -> list[PointRow]:
        if self.schema == 1:
            return [PointRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]))
                    for r in self.con.execute(
                        "SELECT id, uuid, time_ns, root, record, meta, stats FROM points "
                        "ORDER BY id")]
        out = []
        for pid, uuid, time_ns, root, record, sealed in self.con.execute(
                "SELECT id, uuid, time_ns, root, record, sealed FROM points ORDER BY id"):
            try:
                body = json.loads(self.codec.open(
                    sealed, self._point_aad(pid, uuid, time_ns, root, record)))
                out.append(PointRow(pid, uuid, time_ns, root, record, body["meta"],
                                    body["stats"]))
            except (SealError, ValueError, KeyError, TypeError) as exc:
                out.append(PointRow(pid, uuid, time_ns, root, record, {}, {},
                                    f"index row of point {pid} is damaged ({exc})"))
        return out

    def delete_point(self, point_id: int) -> None:
        self.con.execute("DELETE FROM points WHERE id=?", (point_id,))

    # -- files cache --------------------------------------------------------
    # Schema 2: one sealed row per directory, {name: [size, mtime, ctime, ino,
    # content JSON, xattrs JSON]}; schema 1: one plain row per file.  Paths are
    # bytes (os.fsencode): file names need not be UTF-8.
    def _cache_keys(self, source: str, directory: str) -> tuple[bytes, bytes]:
        return self.codec.cache_key(source), self.codec.cache_key(source, directory)

    @staticmethod
    def _cache_aad(skey: bytes, dkey: bytes) -> bytes:
        return b"cache\0" + struct.pack("<I", len(skey)) + skey + dkey

    def _open_cache(self, skey: bytes, dkey: bytes, sealed: bytes) -> dict[str, CacheRow]:
        return self._open_cache_text(skey, dkey, sealed)[0]

    def _open_cache_text(self, skey: bytes, dkey: bytes, sealed: bytes
                         ) -> tuple[dict[str, CacheRow], str]:
        try:
            text = self.codec.open(sealed, self._cache_aad(skey, dkey)).decode()
            doc = json.loads(text)
            # Built in C (CacheRow._make is a Python call per row); its length check
            # for all rows at once.
            rows = dict(zip(doc, map(_new_row, doc.values()), strict=True))
            if not set(map(len, rows.values())) <= {len(CacheRow._fields)}:
                raise ValueError("a row has the wrong number of fields")
            return rows, text
        except (SealError, ValueError, TypeError, AttributeError) as exc:
            raise IndexDamaged(f"files-cache row does not open ({exc})") from None

    def cache_dir(self, source: str, directory: str) -> dict[str, CacheRow]:
        """All cached files of one directory: one query per directory, not per file.

        Raises IndexDamaged for a row that does not open (the caller reads the
        directory's files again and the commit replaces the row)."""
        if self.schema == 1:
            return {r[0].decode("utf-8", "surrogateescape"): CacheRow(*r[1:])
                    for r in self.con.execute(
                        "SELECT name, size, mtime_ns, ctime_ns, ino, content, xattrs "
                        "FROM files_cache WHERE source=? AND dir=?",
                        (source, os.fsencode(directory)))}
        return self.cache_dir_text(source, directory)[0]

    def cache_dir_text(self, source: str, directory: str
                       ) -> tuple[dict[str, CacheRow], str | None]:
        """``cache_dir`` and the row's JSON text as stored (None: no row, or schema
        1), for ``cache_prepare``'s ``base``."""
        if self.schema == 1:
            return self.cache_dir(source, directory), None
        skey, dkey = self._cache_keys(source, directory)
        row = self.con.execute("SELECT sealed FROM files_cache WHERE source=? AND dir=?",
                               (skey, dkey)).fetchone()
        return ({}, None) if row is None else self._open_cache_text(skey, dkey, row[0])

    def cache_dirs(self, source: str, directories: list[str]
                   ) -> dict[str, dict[str, CacheRow] | IndexDamaged] | None:
        """``cache_dir`` of several directories in one query per 500 (missing ones
        are left out; a row that does not open is returned as its IndexDamaged).
        None for schema 1, whose rows are per file: ask ``cache_dir`` instead."""
        if self.schema == 1:
            return None
        skey = self.codec.cache_key(source)
        by_key = {self.codec.cache_key(source, d): d for d in directories}
        keys = list(by_key)
        out: dict[str, dict[str, CacheRow] | IndexDamaged] = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            marks = ",".join("?" * len(part))
            for dkey, sealed in self.con.execute(
                    f"SELECT dir, sealed FROM files_cache WHERE source=? AND dir IN ({marks})",  # noqa: S608 - only placeholders
                    (skey, *part)):
                try:
                    out[by_key[dkey]] = self._open_cache(skey, dkey, sealed)
                except IndexDamaged as exc:
                    out[by_key[dkey]] = exc
        return out

    def cache_write_dir(self, source: str, directory: str, rows: dict[str, CacheRow]) -> None:
        """Replace one directory's cached files (inside the caller's transaction)."""
        if self.schema == 1:
            d = os.fsencode(directory)
            self.con.execute("DELETE FROM files_cache WHERE source=? AND dir=?", (source, d))
            self.con.executemany(
                "INSERT INTO files_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(source, d, os.fsencode(n), r.size, r.mtime_ns, r.ctime_ns, r.ino, r.content,
                  r.xattrs) for n, r in rows.items()])
            return
        self._write_sealed(*self._cache_keys(source, directory), rows)

    def cache_has_source(self, source: str) -> bool:
        """Whether any directory of ``source`` is cached (False: its first backup)."""
        key = source if self.schema == 1 else self.codec.cache_key(source)
        return self.con.execute("SELECT 1 FROM files_cache WHERE source=? LIMIT 1",
                                (key,)).fetchone() is not None

    def cache_prepare(self, source: str, directory: str, rows: dict[str, CacheRow],
                      base: tuple[dict[str, CacheRow], str] | None = None) -> PreparedDir:
        """A directory's row encoded and sealed now, for ``cache_write_prepared`` in
        the final transaction.  Why: the final commit is the one step of a backup
        that nothing overlaps; sealed text is also smaller than the rows it holds.

        ``base``: the rows as ``cache_dir_text`` read them, with their text; a row
        of ``rows`` that is the very object read there goes in as its old text
        (``_splice``), only the others are encoded."""
        if self.schema == 1:
            return source, directory, rows
        skey, dkey = self._cache_keys(source, directory)
        if not rows:
            return skey, dkey, None
        body = _splice(rows, *base) if base is not None else None
        if body is None:
            body = json.dumps(rows, separators=(",", ":"))  # CacheRow: a JSON array
        return skey, dkey, self.codec.seal(body.encode(), self._cache_aad(skey, dkey))

    def cache_write_prepared(self, prepared: Iterable[PreparedDir]) -> None:
        """Write rows from ``cache_prepare`` (inside the caller's transaction); a
        directory appears at most once."""
        if self.schema == 1:
            for source, directory, rows in prepared:
                assert isinstance(rows, dict)
                self.cache_write_dir(source, directory, rows)
            return
        puts: list[PreparedDir] = []
        drops: list[tuple[Any, Any]] = []
        for skey, dkey, sealed in prepared:
            if sealed is None:
                drops.append((skey, dkey))
            else:
                puts.append((skey, dkey, sealed))
        self.con.executemany("INSERT OR REPLACE INTO files_cache VALUES (?, ?, ?)", puts)
        self.con.executemany("DELETE FROM files_cache WHERE source=? AND dir=?", drops)

    def _seal_rows(self, skey: bytes, dkey: bytes, rows: dict[str, CacheRow]) -> bytes:
        body = json.dumps(rows, separators=(",", ":")).encode()  # CacheRow: a JSON array
        return self.codec.seal(body, self._cache_aad(skey, dkey))

    def _write_sealed(self, skey: bytes, dkey: bytes, rows: dict[str, CacheRow]) -> None:
        if not rows:
            self.con.execute("DELETE FROM files_cache WHERE source=? AND dir=?", (skey, dkey))
            return
        self.con.execute("INSERT OR REPLACE INTO files_cache VALUES (?, ?, ?)",
                         (skey, dkey, self._seal_rows(skey, dkey, rows)))

    def cache_prune_dirs(self, source: str, visited: set[str]) -> None:
        """Forget the directories of ``source`` that the run did not see (deleted)."""
        if self.schema == 1:
            for (d,) in list(self.con.execute(
                    "SELECT DISTINCT dir FROM files_cache WHERE source=?", (source,))):
                if os.fsdecode(d) not in visited:
                    self.con.execute("DELETE FROM files_cache WHERE source=? AND dir=?",
                                     (source, d))
            return
        skey = self.codec.cache_key(source)
        keep = {self.codec.cache_key(source, d) for d in visited}
        gone = [(skey, d) for (d,) in self.con.execute(
            "SELECT dir FROM files_cache WHERE source=?", (skey,)) if d not in keep]
        self.con.executemany("DELETE FROM files_cache WHERE source=? AND dir=?", gone)

    def cache_scan(self) -> Iterator[tuple[Any, Any, dict[str, CacheRow] | None]]:
        """(source key, dir key, rows or None if the row does not open) for every
        cached directory: for prune and check."""
        if self.schema == 1:
            rows: dict[tuple[str, bytes], dict[str, CacheRow]] = {}
            for r in self.con.execute("SELECT source, dir, name, size, mtime_ns, ctime_ns, ino, "
                                      "content, xattrs FROM files_cache"):
                rows.setdefault((r[0], r[1]), {})[os.fsdecode(r[2])] = CacheRow(*r[3:])
            for (source, d), entries in rows.items():
                yield source, d, entries
            return
        for skey, dkey, sealed in list(self.con.execute(
                "SELECT source, dir, sealed FROM files_cache")):
            try:
                yield skey, dkey, self._open_cache(skey, dkey, sealed)
            except IndexDamaged:
                yield skey, dkey, None

    def cache_clear(self) -> int:
        """Forget the whole files cache (every source's next backup reads all files
        again); returns the directories it held.  Inside the caller's transaction."""
        return self.con.execute("DELETE FROM files_cache").rowcount

    def forget_blobs(self, blob_ids: Iterable[bytes]) -> None:
        """Drop the rows of blobs whose stored bytes are lost or damaged, so that the
        next backup of the same data stores them again.  Inside a transaction."""
        self.con.executemany("DELETE FROM blobs WHERE id=?", [(b,) for b in blob_ids])

    def cache_replace(self, skey: Any, dkey: Any, rows: dict[str, CacheRow]) -> None:
        """Rewrite a directory found by ``cache_scan`` (by its stored keys)."""
        if self.schema == 1:
            self.con.execute("DELETE FROM files_cache WHERE source=? AND dir=?", (skey, dkey))
            self.con.executemany(
                "INSERT INTO files_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(skey, dkey, os.fsencode(n), r.size, r.mtime_ns, r.ctime_ns, r.ino, r.content,
                  r.xattrs) for n, r in rows.items()])
            return
        self._write_sealed(skey, dkey, rows)


def _splice(rows: dict[str, CacheRow], old: dict[str, CacheRow], text: str) -> str | None:
    """The JSON text of ``rows`` that ``json.dumps(rows, separators=(",", ":"))``
    would give (up to the order of the rows), taking the text of every row that is
    the very object of ``old`` from ``text``, ``old``'s own JSON text; None if that
    text cannot be cut into ``old``'s rows.

    Why: a directory holding one changed file is written again whole, and encoding
    every row of a large directory (17,948 files in one) cost more than copying.
    How: between two rows the text has '],"' (a row's array closes, the next
    name opens) and nowhere else but at the end of a name ending in '],' (every
    '"' inside a string is escaped); such a name gives one piece too many, so the
    count of pieces equal to ``old``'s count of rows, in the text's order (which
    ``json.loads`` keeps), proves every cut.  A text written another way (other
    separators) gives other counts, so it is encoded anew instead."""
    if not (text.startswith('{"') and text.endswith("]}")):
        return None
    pieces = text[2:-2].split('],"')  # each 'NAME":[VALUES', the name JSON-escaped
    if len(pieces) != len(old):
        return None
    by_name = dict(zip(old, pieces, strict=True))
    out = [by_name[name] if old.get(name) is row else
           json.dumps({name: row}, separators=(",", ":"))[2:-2]
           for name, row in rows.items()]
    return '{"' + '],"'.join(out) + "]}"
