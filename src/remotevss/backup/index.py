"""The SQLite index: blob id -> (pack, offset, length), packs, recovery points, files cache.

Why SQLite: transactions give the atomicity the repository relies on (a
recovery point and its files-cache rows appear in one commit), WAL lets
restore/verify read while a backup appends, and lookups by blob id are a
B-tree probe, so memory stays flat however large the repository grows.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remotevss.backup.packs import BlobEntry

SCHEMA_VERSION = 1

SCHEMA = """
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

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "uuid": self.uuid, "time_ns": self.time_ns,
                "root": self.root.hex(), "meta": self.meta, "stats": self.stats}


@dataclass(frozen=True, slots=True)
class CacheRow:
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    content: str
    xattrs: str  # JSON {name: base64}, as in the tree


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open the index in WAL mode with FULL sync: a commit survives power loss."""
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    con = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                          timeout=30)
    con.execute("PRAGMA synchronous=FULL")
    if not readonly:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA foreign_keys=ON")
    return con


class Index:
    """Typed queries over one connection; callers group writes with ``transaction``."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.con = connect(path, readonly)
        if not readonly:
            self.con.executescript(SCHEMA)
            self.con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                             (str(SCHEMA_VERSION),))
        row = self.con.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise ValueError(f"index schema {row and row[0]} is not {SCHEMA_VERSION}")

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
        row = self.con.execute(
            "SELECT p.name, b.type, b.compression, b.offset, b.stored_len, b.raw_len "
            "FROM blobs b JOIN packs p ON p.id = b.pack WHERE b.id=?", (blob_id,)).fetchone()
        if row is None:
            return None
        return Location(row[0], BlobEntry(blob_id, row[1], row[2], row[3], row[4], row[5]))

    def add_pack(self, name: str, size: int, entries: Iterable[BlobEntry]) -> int:
        """Record a sealed pack and its blobs (inside the caller's transaction)."""
        cur = self.con.execute("INSERT INTO packs (name, size) VALUES (?, ?)", (name, size))
        pack_id = cur.lastrowid
        assert pack_id is not None
        self.con.executemany(
            "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(e.id, pack_id, e.type, e.compression, e.offset, e.stored_len, e.raw_len)
             for e in entries])
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
    def add_point(self, uuid: str, time_ns: int, root: bytes, record: bytes,
                  meta: dict[str, Any], stats: dict[str, Any]) -> int:
        cur = self.con.execute(
            "INSERT INTO points (uuid, time_ns, root, record, meta, stats) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (uuid, time_ns, root, record, json.dumps(meta, sort_keys=True),
             json.dumps(stats, sort_keys=True)))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def points(self) -> list[PointRow]:
        return [PointRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]))
                for r in self.con.execute(
                    "SELECT id, uuid, time_ns, root, record, meta, stats FROM points ORDER BY id")]

    def delete_point(self, point_id: int) -> None:
        self.con.execute("DELETE FROM points WHERE id=?", (point_id,))

    # -- files cache --------------------------------------------------------
    # Paths are stored as bytes (os.fsencode): file names need not be UTF-8.
    def cache_dir(self, source: str, directory: str) -> dict[str, CacheRow]:
        """All cached files of one directory: one query per directory, not per file."""
        return {r[0].decode("utf-8", "surrogateescape"): CacheRow(*r[1:]) for r in self.con.execute(
            "SELECT name, size, mtime_ns, ctime_ns, ino, content, xattrs FROM files_cache "
            "WHERE source=? AND dir=?", (source, os.fsencode(directory)))}

    def cache_put(self, rows: list[tuple[str, str, str, int, int, int, int, str, str]]) -> None:
        self.con.executemany(
            "INSERT OR REPLACE INTO files_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r[0], os.fsencode(r[1]), os.fsencode(r[2]), *r[3:]) for r in rows])

    def cache_dirs(self, source: str) -> set[str]:
        return {os.fsdecode(r[0]) for r in self.con.execute(
            "SELECT DISTINCT dir FROM files_cache WHERE source=?", (source,))}

    def cache_delete_dir(self, source: str, directory: str) -> None:
        self.con.execute("DELETE FROM files_cache WHERE source=? AND dir=?",
                         (source, os.fsencode(directory)))

    def cache_rows(self) -> Iterator[tuple[str, str, str, str]]:
        for source, d, name, content in self.con.execute(
                "SELECT source, dir, name, content FROM files_cache"):
            yield source, os.fsdecode(d), os.fsdecode(name), content

    def cache_delete(self, keys: list[tuple[str, str, str]]) -> None:
        self.con.executemany(
            "DELETE FROM files_cache WHERE source=? AND dir=? AND name=?",
            [(k[0], os.fsencode(k[1]), os.fsencode(k[2])) for k in keys])
