"""SQLite journal: the agent's durable memory.

Why: MS-FSRVP asks the server to persist its table after every successful
call and to reload it at start-up; and a backup component must never leak a
snapshot or a share.  So every external effect is written here as an
*intent* before it happens and cleared (in the same transaction that records
its result in the set tables) after.  A crash at any instant leaves either
the old state plus a pending intent, or the new state: start-up reconciles
pending intents against the disk.

WAL with ``synchronous=FULL``: a transaction is on disk when commit returns.
A transaction may ask for less (``durable=False``): it survives a crash of
the agent (the WAL is in the kernel's page cache) but not a power cut,
until the next durable transaction or :meth:`Journal.sync` puts the WAL on
disk.  Where that is allowed, and what a power cut can then leave, is in
RELIABILITY.md ("Power loss").
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from remotevss.fsrvp.machine import MappedShare, ShadowCopy, ShadowCopySet, Status

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS sets (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, context INTEGER NOT NULL, updated REAL NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS copies (
    id TEXT PRIMARY KEY,
    set_id TEXT NOT NULL REFERENCES sets(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL, volume_name TEXT NOT NULL, creation_time REAL NOT NULL,
    snapshot_path TEXT NOT NULL, writable INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS mappings (
    copy_id TEXT NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL, share_name TEXT NOT NULL, local_share TEXT NOT NULL,
    exposed_name TEXT NOT NULL, is_exposed INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, detail TEXT NOT NULL, created REAL NOT NULL
) STRICT;
"""


@dataclass(frozen=True)
class Intent:
    """An external effect that was about to happen (or to be retried)."""

    id: int
    kind: str  # one of agent/intents.py's KINDS (typed there: intents.from_row)
    detail: dict[str, str | bool]


def _owner_only(path: Path) -> None:
    """The journal (share names, paths, set ids) and its WAL readable by the agent's
    user alone, whatever the umask and the directory's mode: a state directory
    made 0755 (by hand, or by an older ``setup samba``) left them world-readable.
    SQLite gives the -wal and -shm files the main file's mode when it makes them."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if extra.lstat().st_mode & 0o077 and not extra.is_symlink():
                extra.chmod(0o600)
        except FileNotFoundError:
            pass


class Journal:
    """One SQLite file; all writes go through :meth:`transaction`."""

    def __init__(self, path: str | Path, fake_disk: str | Path | None = None) -> None:
        """``fake_disk`` (tests only, a named fake for a power cut, which cannot be
        caused for real): a directory that gets a copy of the journal's files each
        time they are on disk, i.e. what a power cut would leave."""
        self.path = Path(path)
        self.fake_disk = Path(fake_disk) if fake_disk else None
        self.syncs = 0  # Journal.sync calls that had something to put on disk
        self._unsynced = 0  # commits since the WAL was last on disk
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _owner_only(self.path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._durable = True
        self.transactions = 0  # commits, and those fsync'd (benchmarks, status)
        self.durable_transactions = 0
        self._db.execute("PRAGMA foreign_keys=ON")
        for stmt in _SCHEMA.strip().split(";"):
            if stmt.strip():
                self._db.execute(stmt)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"journal {self.path} has schema {row[0]}, expected {SCHEMA_VERSION}"
            )
        self._on_disk()

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._db.close()  # closing checkpoints the WAL into the file (and syncs it)

    @property
    def unsynced(self) -> int:
        """Commits not yet on disk (``durable=False`` since the last fsync)."""
        return self._unsynced

    def sync(self) -> None:
        """Put every commit so far on disk: one fsync of the WAL (nothing if every
        commit was durable).  Blocking; the service calls it from a worker thread."""
        with self._lock:
            if not self._unsynced:
                return
            try:
                fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # checkpointed: the database file was synced
                fd = -1
            if fd >= 0:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._unsynced = 0
            self.syncs += 1
            self._on_disk()

    def _on_disk(self) -> None:
        """Test only (``fake_disk``): what is on disk now, copied aside."""
        if self.fake_disk is None:
            return
        self.fake_disk.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal"):
            src = Path(f"{self.path}{suffix}")
            dst = self.fake_disk / (self.path.name + suffix)
            if src.exists():
                shutil.copyfile(src, dst)
            else:
                dst.unlink(missing_ok=True)

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[_Txn]:
        """One atomic write.  ``durable`` (the default) means on disk when this
        returns (fsync of the WAL); otherwise it survives a crash of the agent but
        not necessarily of the machine, for ~1/20 of the cost."""
        with self._lock:
            if durable != self._durable:
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _Txn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.transactions += 1
            self.durable_transactions += durable
            if durable:
                self._unsynced = 0
                self._on_disk()
            else:
                self._unsynced += 1

    # ----------------------------------------------------------------- reads

    def load_sets(self) -> list[ShadowCopySet]:
        db = self._db
        sets: dict[str, ShadowCopySet] = {}
        for sid, status, context in db.execute(
            "SELECT id, status, context FROM sets ORDER BY updated"
        ):
            sets[sid] = ShadowCopySet(UUID(sid), Status(status), context)
        copies: dict[str, ShadowCopy] = {}
        for cid, sid, vol, ctime, path, writable in db.execute(
            "SELECT id, set_id, volume_name, creation_time, snapshot_path, writable "
            "FROM copies ORDER BY set_id, ord"
        ):
            c = ShadowCopy(UUID(cid), vol, ctime, [], path, bool(writable))
            copies[cid] = c
            sets[sid].copies.append(c)
        for cid, share, local, exposed, is_exposed in db.execute(
            "SELECT copy_id, share_name, local_share, exposed_name, is_exposed "
            "FROM mappings ORDER BY copy_id, ord"
        ):
            copies[cid].mappings.append(MappedShare(share, local, exposed, bool(is_exposed)))
        return list(sets.values())

    def pending_intents(self) -> list[Intent]:
        rows = self._db.execute("SELECT id, kind, detail FROM intents ORDER BY id").fetchall()
        return [Intent(i, k, json.loads(d)) for i, k, d in rows]


class _Txn:
    """The write operations, valid inside :meth:`Journal.transaction`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def save_set(self, s: ShadowCopySet) -> None:
        db = self._db
        sid = str(s.id)
        db.execute("DELETE FROM sets WHERE id=?", (sid,))
        db.execute(
            "INSERT INTO sets VALUES (?,?,?,?)", (sid, s.status.value, s.context, time.time())
        )
        for i, c in enumerate(s.copies):
            db.execute(
                "INSERT INTO copies VALUES (?,?,?,?,?,?,?)",
                (
                    str(c.id),
                    sid,
                    i,
                    c.volume_name,
                    c.creation_time,
                    c.snapshot_path,
                    int(c.writable),
                ),
            )
            db.executemany(
                "INSERT INTO mappings VALUES (?,?,?,?,?,?)",
                [
                    (str(c.id), j, m.share_name, m.local_share, m.exposed_name, int(m.is_exposed))
                    for j, m in enumerate(c.mappings)
                ],
            )

    def save_sets(self, sets: Iterable[ShadowCopySet]) -> None:
        for s in sets:
            self.save_set(s)

    def delete_set(self, set_id: UUID) -> None:
        self._db.execute("DELETE FROM sets WHERE id=?", (str(set_id),))

    def add_intent(self, kind: str, detail: dict[str, str | bool]) -> int:
        cur = self._db.execute(
            "INSERT INTO intents (kind, detail, created) VALUES (?,?,?)",
            (kind, json.dumps(detail, sort_keys=True), time.time()),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def clear_intent(self, intent_id: int) -> None:
        self._db.execute("DELETE FROM intents WHERE id=?", (intent_id,))
