"""The client's GlobalShadowCopySetTable, persisted (MS-FSRVP 3.2.1, 3.2.3).

Why persisted: ``remotevss shadow list`` and ``delete`` run in later
processes than ``create``, and FSRVP has no call that enumerates a server's
sets -- a client must remember what it made.  The spec keys the table by
(ShadowCopySetId, ServerName); we key by the *server's* set id and the
server's host name as written in the set's UNCs, and keep the client's
(VSS-level) set id too, which groups the per-server sets of one creation.

Where: ``$REMOTEVSS_CLIENT_STATE`` if set, else
``$XDG_STATE_HOME/remotevss/client.sqlite3``, else
``~/.local/state/remotevss/client.sqlite3`` (directory 0700, file 0600).
SQLite from the standard library, WAL, one short transaction per change, so
two invocations at once are safe.  Nothing secret is stored.

Entries can go stale (the server deleted a set: timer expiry, a restart, an
administrator); :mod:`remotevss.client.shadow` checks them against the server
and marks them ``stale`` here.

Statuses are :class:`SetStatus` and :class:`CopyStatus` (string enums: the
table, the JSON output and the text output hold their lower-case values).
"""

from __future__ import annotations

import enum
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from remotevss.client.errors import StateError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS sets (
    set_id TEXT NOT NULL,
    server TEXT NOT NULL,
    port INTEGER NOT NULL,
    owner TEXT NOT NULL,
    client_set_id TEXT NOT NULL,
    context INTEGER NOT NULL,
    writable INTEGER NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (set_id, server)
) STRICT;
CREATE TABLE IF NOT EXISTS copies (
    copy_id TEXT NOT NULL,
    set_id TEXT NOT NULL,
    server TEXT NOT NULL,
    share_unc TEXT NOT NULL,
    exposed_name TEXT,
    exposed_unc TEXT,
    creation_time INTEGER,
    status TEXT NOT NULL DEFAULT 'ok',
    seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (copy_id, server),
    FOREIGN KEY (set_id, server) REFERENCES sets (set_id, server) ON DELETE CASCADE
) STRICT;
CREATE TABLE IF NOT EXISTS pending (
    unc TEXT PRIMARY KEY,
    added REAL NOT NULL
) STRICT;
"""


def default_state_path(env: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """Where the client table lives (see the module docstring)."""
    env = env if env is not None else os.environ
    explicit = env.get("REMOTEVSS_CLIENT_STATE")
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_STATE_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".local" / "state"
    return root / "remotevss" / "client.sqlite3"


def _why(exc: OSError | sqlite3.Error) -> str:
    """SQLite's or the OS's reason, in a few words."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    text = str(exc)
    if "readonly" in text:
        return f"{text} (the file or its directory is not writable)"
    return text


class SetStatus(enum.StrEnum):
    """A set's status in the client table: MS-FSRVP 3.2.1's, plus our end states."""

    NEW = "new"
    STARTED = "started"
    ADDED = "added"
    COMMITTED = "committed"
    EXPOSED = "exposed"
    RECOVERED = "recovered"
    ABORTED = "aborted"
    DELETED = "deleted"
    STALE = "stale"  # recorded here, no longer on the server


class CopyStatus(enum.StrEnum):
    """One shadow copy's status in the client table."""

    OK = "ok"
    STALE = "stale"


@dataclass
class CopyRecord:
    copy_id: UUID
    set_id: UUID
    server: str
    share_unc: str
    exposed_name: str | None = None
    exposed_unc: str | None = None
    creation_time: int | None = None  # FILETIME
    status: CopyStatus = CopyStatus.OK


@dataclass
class SetRecord:
    set_id: UUID
    server: str
    port: int
    owner: str
    client_set_id: UUID
    context: int
    writable: bool
    status: SetStatus
    created: float
    updated: float
    note: str = ""
    copies: list[CopyRecord] = field(default_factory=list)


class ClientState:
    """The persisted table; each method is one transaction."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_state_path()
        try:
            self._db = self._open()
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"client table {self.path}: {_why(exc)}") from None

    def _open(self) -> sqlite3.Connection:
        """Open (or make) the table and prove it writable: commands record what
        they do on a server as they go, so a table that cannot take a write must
        fail here, before the first call is sent."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not self.path.exists()
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            if fresh:
                os.chmod(self.path, 0o600)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise StateError(
                    f"client table {self.path}: schema {row[0]} is newer than this remotevss"
                )
            db.execute("BEGIN IMMEDIATE")
            try:  # a write that is rolled back: fails on a read-only file or directory
                db.execute("UPDATE meta SET value=value WHERE key='schema'")
            finally:
                db.execute("ROLLBACK")
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ClientState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- sets
    def put_set(self, rec: SetRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO sets VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    str(rec.set_id),
                    rec.server,
                    rec.port,
                    rec.owner,
                    str(rec.client_set_id),
                    rec.context,
                    int(rec.writable),
                    rec.status,
                    rec.created,
                    rec.updated,
                    rec.note,
                ),
            )
            for i, c in enumerate(rec.copies):
                self._put_copy(db, c, i)

    def set_status(self, set_id: UUID, server: str, status: SetStatus, note: str = "") -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE sets SET status=?, note=?, updated=? WHERE set_id=? AND server=?",
                (status, note, time.time(), str(set_id), server),
            )

    def remove_set(self, set_id: UUID, server: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sets WHERE set_id=? AND server=?", (str(set_id), server))

    # ------------------------------------------------------------- copies
    @staticmethod
    def _put_copy(db: sqlite3.Connection, c: CopyRecord, seq: int) -> None:
        db.execute(
            "INSERT OR REPLACE INTO copies VALUES (?,?,?,?,?,?,?,?,?)",
            (
                str(c.copy_id),
                str(c.set_id),
                c.server,
                c.share_unc,
                c.exposed_name,
                c.exposed_unc,
                c.creation_time,
                c.status,
                seq,
            ),
        )

    def put_copy(self, c: CopyRecord) -> None:
        with self._tx() as db:
            (seq,) = db.execute(
                "SELECT COUNT(*) FROM copies WHERE set_id=? AND server=?",
                (str(c.set_id), c.server),
            ).fetchone()
            self._put_copy(db, c, int(seq))
            db.execute(
                "UPDATE sets SET updated=? WHERE set_id=? AND server=?",
                (time.time(), str(c.set_id), c.server),
            )

    def update_copy(self, c: CopyRecord) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE copies SET exposed_name=?, exposed_unc=?, creation_time=?, status=? "
                "WHERE copy_id=? AND server=?",
                (
                    c.exposed_name,
                    c.exposed_unc,
                    c.creation_time,
                    c.status,
                    str(c.copy_id),
                    c.server,
                ),
            )

    def remove_copy(self, copy_id: UUID, server: str) -> None:
        """Remove one copy; its set goes too when it was the last one."""
        with self._tx() as db:
            row = db.execute(
                "SELECT set_id FROM copies WHERE copy_id=? AND server=?", (str(copy_id), server)
            ).fetchone()
            db.execute("DELETE FROM copies WHERE copy_id=? AND server=?", (str(copy_id), server))
            if row is not None:
                (left,) = db.execute(
                    "SELECT COUNT(*) FROM copies WHERE set_id=? AND server=?", (row[0], server)
                ).fetchone()
                if left == 0:
                    db.execute("DELETE FROM sets WHERE set_id=? AND server=?", (row[0], server))

    # ------------------------------------------------------------- queries
    def sets(self) -> list[SetRecord]:
        """Every set with its copies, oldest first."""
        out: list[SetRecord] = []
        rows = self._db.execute(
            "SELECT set_id, server, port, owner, client_set_id, context, writable, status, "
            "created, updated, note FROM sets ORDER BY created, set_id"
        ).fetchall()
        for r in rows:
            rec = SetRecord(
                UUID(r[0]),
                r[1],
                r[2],
                r[3],
                UUID(r[4]),
                r[5],
                bool(r[6]),
                SetStatus(r[7]),
                r[8],
                r[9],
                r[10],
            )
            for c in self._db.execute(
                "SELECT copy_id, set_id, server, share_unc, exposed_name, exposed_unc, "
                "creation_time, status FROM copies WHERE set_id=? AND server=? ORDER BY seq",
                (r[0], r[1]),
            ).fetchall():
                rec.copies.append(
                    CopyRecord(
                        UUID(c[0]), UUID(c[1]), c[2], c[3], c[4], c[5], c[6], CopyStatus(c[7])
                    )
                )
            out.append(rec)
        return out

    def find(self, ident: UUID) -> tuple[list[SetRecord], CopyRecord | None]:
        """Sets whose server or client set id is ``ident``, or the copy with that id.

        Returns (sets, None) for a set id (several sets for a client set id
        that spans servers), ([its set], copy) for a copy id, ([], None) if unknown.
        """
        all_sets = self.sets()
        by_set = [s for s in all_sets if ident in (s.set_id, s.client_set_id)]
        if by_set:
            return by_set, None
        for s in all_sets:
            for c in s.copies:
                if c.copy_id == ident:
                    return [s], c
        return [], None

    # ------------------------------------------------------------- pending adds
    def add_pending(self, unc: str) -> bool:
        """Remember a share for the next ``create``; False if it was already there."""
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO pending VALUES (?, ?)", (unc, time.time()))
            return cur.rowcount > 0

    def pending(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT unc FROM pending ORDER BY added, unc")]

    def clear_pending(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM pending")
