"""Snapshot shares as Samba registry shares: the Exposer behind smbd.

Why registry shares: smbd finds them at the next tree connect without a
restart or a rewrite of smb.conf, libsmbconf writes them in a transaction,
and Samba's own FSRVP server does the same (so srvsvc, ``net conf`` and
``testparm`` all see the share).  What :meth:`RegistryExposer.expose` does,
in this order, so that no client ever sees a half-made share:

1. **Clone the definition** of the base share from smb.conf (or an included
   file) or else the registry, as written (``fss_conf_get_share_def``), then
   set ``path`` to the snapshot, ``comment = Shadow copy of <share> taken
   <date>``, ``read only = yes`` unless writable (a read-only clone also loses
   ``write list``: those users would otherwise write; a writable one keeps the
   base share's own ``read only``), and the marker
   ``remotevss:base share = <share>`` by which :meth:`exposed` knows its own.
2. **Clone the share ACL** (``<state dir>/share_info.tdb``, key
   ``SECDESC/<lower-case name>``) of the base share, *before* the share
   exists: Samba's own server writes it after, leaving a moment in which the
   snapshot share has the default "Everyone: Full" ACL.  A base share with no
   stored ACL has Samba's default; the clone then has no entry either.
3. **Write the share** in one registry transaction (replacing a share of the
   same name: expose is idempotent).  If that fails the ACL entry is put
   back as it was and :class:`ExposeError` is raised: nothing is left half-made.
4. **Notify smbd** (remotevss.samba.notify): MSG_SMB_CONF_UPDATED, and if an
   existing share of that name pointed elsewhere, MSG_SMB_FORCE_TDIS first so
   no tree keeps reading the old snapshot.

:meth:`unexpose` deletes the registry share (one transaction), then its ACL
entry, then sends MSG_SMB_FORCE_TDIS (open trees are closed: clients get
NETWORK_NAME_DELETED) and MSG_SMB_CONF_UPDATED.  Deleting a share that is not
there is fine; deleting a share that is not a snapshot share, or a snapshot
share we did not make, is refused.

Where it runs (:meth:`RegistryExposer._choose_ops`): registry reads and
writes with the ``tdb`` binding in Samba's own format (samba/regdb.py), and
the messages as datagrams (samba/dgm.py), all in this process -- no
python-samba call, so nothing leaks per call (the agent's loadparm runs in a
child too, samba/loadparm.py).  When something else in this process holds
``registry.tdb`` (python-samba's loadparm of a config with ``include =
registry``; tdb allows one handle per file and process), the registry part
runs in a tiny child (samba/child.py, ~12 MB, only while there is work).
python-samba's worker
(samba/worker.py, ~30 MB) is left as the fallback for clustered Samba and
for a registry format or a share name the light code refuses, logged once.

:meth:`seal_many` (optional, not part of the agent's Exposer protocol) flips
exposed shares to ``read only = yes`` and disconnects their trees: the agent
calls it at RecoveryComplete of a writable set, before it seals the snapshots
at filesystem level (read-only subvolume / bind mount).  The filesystem seal
alone binds new opens only: a handle opened while the share was writable
wrote on into the "sealed" snapshot.

Cost (2-core VM, ext4 state dir, median): expose 3.8-6.6 ms, unexpose
3.3-6.8 ms (4.0 / 3.9 ms in the agent, 4.6 / 4.6 ms through the light
child), nearly all of it the two fsync'd tdb transaction commits (0.75 /
0.5 ms with the state directory on tmpfs), against ~58 ms for ``net conf
addshare`` plus ``smbcontrol smbd reload-config``.  bench/samba_expose.py
measures it; docs/samba.md "Snapshot shares" has the table.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from remotevss.samba._lib import LOCK, SambaUnavailable, module
from remotevss.samba.conf import (
    SNAPSHOT_SHARE_RE,
    SambaConf,
    SambaConfigError,
    ShareDefinition,
    open_registry_files,
    param_key,
    samba_bool,
)
from remotevss.samba.light import LightOps, LightPaths
from remotevss.samba.regdb import (
    RegdbBusy,
    RegdbError,
    RegdbFormatError,
    RegdbMissing,
    RegdbUnsupported,
    takes_name,
)
from remotevss.samba.worker import SambaWorker, WorkerError
from remotevss.shares.exposer import ExposeError, ShareRequest

log = logging.getLogger("remotevss.samba")

MARKER = "remotevss:base share"
_MARKER_KEY = param_key(MARKER)
# A snapshot share name smbd serves and the registry stores as one key (a
# backslash would make a nested key): any base share the agent accepts (shares/
# table.py: up to 80 characters, ``[]%+=;,`` included, which Windows refuses and
# smbd serves) plus ``@{GUID}`` and a hidden share's ``$``: up to 120 characters.
_SHARE_NAME_RE = re.compile(r"^[^\\/\x00-\x1f\"*:<>?|]{1,120}$")
# Parameters the clone sets itself (compared as loadparm does).
_REPLACED = {
    param_key(p)
    for p in ("path", "directory", "comment", "read only", "writeable", "writable", "write ok")
}
_GMT_RE = re.compile(r"@GMT-(\d{4})\.(\d{2})\.(\d{2})-(\d{2})\.(\d{2})\.(\d{2})")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(unix_seconds: float) -> str:
    """Samba's ``http_timestring`` as Debian's 4.17 prints it: ``Sun, 22 Nov 2026 07:28:42 UTC``."""
    t = time.gmtime(unix_seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} UTC"
    )


def snapshot_time(path: str) -> float | None:
    """The time in the last ``@GMT-YYYY.MM.DD-HH.MM.SS`` token of ``path``, if any."""
    found = _GMT_RE.findall(path)
    if not found:
        return None
    y, mo, d, h, mi, s = (int(x) for x in found[-1])
    try:
        return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


class RegistryOps(Protocol):
    """What RegistryExposer runs: samba/light.py's LightOps in this process, or
    samba/worker.py's SambaWorker (a child running either kind)."""

    def check(self) -> None: ...
    def write_shares(self, shares: list[tuple[str, list[tuple[str, str]]]]) -> None: ...
    def delete_shares(self, names: list[str]) -> None: ...
    def get_share(self, name: str) -> tuple[str, list[tuple[str, str]]] | None: ...
    def share_names(self) -> list[str]: ...
    def notify(self, *, force_tdis: Sequence[str] = (), conf_updated: bool = True) -> int: ...
    def close(self) -> None: ...


# Open share_info.tdb handles, by path: tdb refuses a second open of one file in
# one process (EBUSY), and two exposers may exist (e.g. a test and an agent).
_TDB_HANDLES: dict[str, tuple[int, Any]] = {}


class ShareSecurityDb:
    """Share ACLs in ``share_info.tdb`` (source3/lib/sharesec.c's format: key
    ``SECDESC/<lower-case share name>\\0``, value an NDR security_descriptor,
    copied as bytes -- no parsing needed to clone one)."""

    VERSION_KEY = b"INFO/version\0"
    VERSION_3 = (3).to_bytes(4, "little")  # SHARE_DATABASE_VERSION_V3: lower-case names

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)
        self._tdb_mod = module("tdb")
        self.transactions = 0  # ACL writes made by this process (benchmarks)

    @staticmethod
    def key(share: str) -> bytes:
        return b"SECDESC/" + share.lower().encode("utf-8") + b"\0"

    def _open(self, create: bool) -> Any:
        """The process's handle on the file (re-opened if the file was replaced)."""
        with LOCK:
            try:
                ino: int | None = os.stat(self.path).st_ino
            except FileNotFoundError:
                ino = None
            cached = _TDB_HANDLES.get(self.path)
            if cached is not None and cached[0] == ino:
                return cached[1]
            if cached is not None:
                cached[1].close()
                del _TDB_HANDLES[self.path]
            if ino is None and not create:
                return None
            t = self._tdb_mod
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            db = t.Tdb(self.path, 0, t.DEFAULT, flags, 0o600)
            _TDB_HANDLES[self.path] = (os.stat(self.path).st_ino, db)
            if db.get(self.VERSION_KEY) is None:  # made by us: mark it as smbd would
                self._store(db, {self.VERSION_KEY: self.VERSION_3})
            return db

    def get(self, share: str) -> bytes | None:
        with LOCK:
            db = self._open(create=False)
            if db is None:
                return None
            value = db.get(self.key(share))
            return None if value is None else bytes(value)

    def set(self, share: str, sd: bytes | None) -> None:
        """Store (or with None delete) ``share``'s ACL, in one tdb transaction; no
        transaction at all when it already is so."""
        self.set_many({share: sd})

    def set_many(self, items: dict[str, bytes | None]) -> bool:
        """:meth:`set` for several shares in one tdb transaction (none if nothing
        changes); True if a transaction was made."""
        with LOCK:
            changed = {k: v for k, v in items.items() if self.get(k) != v}
            if not changed:
                return False
            self._store(self._open(create=True), {self.key(k): v for k, v in changed.items()})
            self.transactions += 1
            return True

    def _store(self, db: Any, items: dict[bytes, bytes | None]) -> None:
        db.transaction_start()
        try:
            for k, v in items.items():
                if v is None:
                    if db.get(k) is not None:
                        db.delete(k)
                else:
                    db.store(k, v, self._tdb_mod.REPLACE)
            db.transaction_commit()
        except BaseException:
            db.transaction_cancel()
            raise

    def close(self) -> None:
        """Close the process's handle on the file (others re-open it on demand)."""
        with LOCK:
            cached = _TDB_HANDLES.pop(self.path, None)
            if cached is not None:
                cached[1].close()


class RegistryExposer:
    """The agent's Exposer (shares/exposer.py) for a Samba server."""

    def __init__(
        self,
        conf: SambaConf,
        *,
        clock: Callable[[], float] = time.time,
        ops: RegistryOps | None = None,
    ) -> None:
        self.conf = conf
        self.clock = clock
        try:
            conf.refresh()  # not under LOCK: it may run samba/loadparm.py's child (~75 ms)
            with LOCK:
                if not conf.registry_shares:
                    raise ExposeError(
                        f"{conf.config_file}: smbd would not see registry shares; "
                        "set 'registry shares = yes' (or 'include = registry') in [global]"
                    )
                self.paths = LightPaths.from_conf(conf)
                self.clustered = samba_bool(conf.get("clustering"))
                self.security = ShareSecurityDb(os.path.join(conf.state_dir, "share_info.tdb"))
        except (SambaConfigError, SambaUnavailable) as exc:
            raise ExposeError(str(exc)) from exc
        #: smbd messages: datagrams from this process (samba/dgm.py); clustered
        #: Samba's go through ctdb, which only python-samba's messaging speaks.
        self.messenger: RegistryOps = LightOps(self.paths)
        self._fallback: SambaWorker | None = None
        #: Registry reads and writes (see :func:`registry_ops`).
        self.ops: RegistryOps = ops if ops is not None else self._choose_ops()
        if self.clustered:
            self.messenger = self._samba_worker()
        self.counters = {"registry_transactions": 0, "smbd_message_rounds": 0,
                         "registry_ops_agent": 0, "registry_ops_light_child": 0,
                         "registry_ops_samba_worker": 0}

    def _choose_ops(self) -> RegistryOps:
        """In this process if it can open registry.tdb (the agent's loadparm runs in
        a child, so it can unless python-samba's loadparm was used in this process,
        as in a test), else in the tiny light child; python-samba's worker child for clustered
        Samba or a registry the light code refuses (logged once) -- its check then
        says why the registry is unusable, in Samba's words.  No registry.tdb yet (a
        first start, before smbd's) decides nothing: see :meth:`_run`."""
        if self.clustered:
            log.warning("clustered Samba: registry shares through python-samba's "
                        "libsmbconf in the Samba worker")  # fmt: skip
            return self._checked(self._samba_worker())
        held = os.path.realpath(self.paths.registry) in open_registry_files()
        light: RegistryOps = (
            SambaWorker(self.conf.config_file, mode="light", light_paths=self.paths)
            if held
            else LightOps(self.paths)
        )
        try:
            light.check()
            return light
        except (RegdbMissing, WorkerError) as exc:
            missing = not isinstance(exc, WorkerError) or exc.kind == "RegdbMissing"
            if missing and os.access(os.path.dirname(self.paths.registry), os.W_OK):
                # A first start, before smbd's: smbd makes the file when it starts (and
                # every call reaches the agent through smbd); the format is checked on
                # each use, so deciding now would only pin the heavy worker for good.
                log.info("%s: checked when first used", exc)
                return light
            light.close()  # another refusal, or a directory Samba cannot write: its words
            log.warning("registry shares through python-samba's libsmbconf in the "
                        "Samba worker: %s", exc)  # fmt: skip
            return self._checked(self._samba_worker())
        except RegdbBusy:
            light.close()
            return self._checked(
                SambaWorker(self.conf.config_file, mode="light", light_paths=self.paths)
            )
        except RegdbError as exc:
            light.close()
            log.warning("registry shares through python-samba's libsmbconf in the Samba "
                        "worker: %s", exc)  # fmt: skip
        return self._checked(self._samba_worker())

    def _checked(self, ops: RegistryOps) -> RegistryOps:
        try:
            ops.check()
        except Exception as exc:
            ops.close()
            raise ExposeError(f"cannot use the Samba registry: {exc}") from exc
        return ops

    def _samba_worker(self) -> SambaWorker:
        if self._fallback is None:
            self._fallback = SambaWorker(self.conf.config_file)
        return self._fallback

    def _run(self, op: str, *args: Any) -> Any:
        """``op`` on :attr:`ops`.  registry.tdb held by something else in this process
        after all (python-samba's loadparm of a config with ``include = registry``):
        the light child from now on.  A name or format the light code refuses: python-samba's
        worker for this call (a format error: from now on; logged).  No registry.tdb
        yet: reads find nothing; a write goes to the worker, whose libsmbconf creates
        the file as Samba does, and the light code serves the calls after it."""
        try:
            result = getattr(self.ops, op)(*args)
            self._served(self.ops)
            return result
        except RegdbBusy as exc:
            log.warning("registry shares through the light child from now on: %s", exc)
            self.ops.close()
            self.ops = SambaWorker(self.conf.config_file, mode="light", light_paths=self.paths)
            result = getattr(self.ops, op)(*args)
            self._served(self.ops)
            return result
        except (RegdbUnsupported, RegdbFormatError, RegdbMissing, WorkerError) as exc:
            kind = exc.kind if isinstance(exc, WorkerError) else type(exc).__name__
            if kind not in ("RegdbUnsupported", "RegdbFormatError", "RegdbMissing") \
                    or self.ops is self._fallback:  # fmt: skip
                raise
            fallback = self._samba_worker()
            if kind == "RegdbFormatError":
                log.warning("registry shares through python-samba from now on: %s", exc)
                self.ops.close()
                self.ops = fallback
            elif kind == "RegdbMissing":  # Samba's libsmbconf creates it, as smbd would
                log.info("%s: created through python-samba's libsmbconf for this write; "
                         "the registry stays in the agent afterwards", exc)  # fmt: skip
            result = getattr(fallback, op)(*args)
            self._served(fallback)
            return result

    def _served(self, ops: RegistryOps) -> None:
        """Count a registry operation by where it ran (``remotevss status`` io)."""
        where = ("registry_ops_samba_worker" if ops is self._fallback
                 else "registry_ops_light_child" if isinstance(ops, SambaWorker)
                 else "registry_ops_agent")  # fmt: skip
        self.counters[where] = self.counters.get(where, 0) + 1

    def read_share(self, name: str) -> tuple[str, list[tuple[str, str]]] | None:
        """A registry share as stored, or None (SambaConf.registry_reader)."""
        return self._run("get_share", name)  # type: ignore[no-any-return]

    def share_names(self) -> list[str]:
        """Registry shares but ``global`` (SambaConf.registry_names_reader)."""
        return [str(n) for n in self._run("share_names") if str(n).lower() != "global"]

    def _registry_share(self, name: str) -> ShareDefinition | None:
        found = self.read_share(name)
        return None if found is None else ShareDefinition(found[0], tuple(found[1]), "registry")

    # ------------------------------------------------------------ Exposer

    def expose(
        self, name: str, base_share: str, path: str, writable: bool, *, taken: float | None = None
    ) -> None:
        """Create (or replace) snapshot share ``name`` of ``base_share`` at ``path``.
        ``taken`` (unix time) goes into the comment; default: the ``@GMT-`` token of
        ``path``, else now."""
        self.expose_many([ShareRequest(name, base_share, path, writable)], taken=taken)

    def expose_many(
        self, requests: Sequence[ShareRequest], *, taken: float | None = None
    ) -> None:
        """:meth:`expose` for a whole set: every share's ACL in one tdb transaction,
        every share in one registry transaction, one round of smbd messages.  All
        or nothing: on failure the ACL entries are put back and ExposeError raised."""
        if len({r.name.casefold() for r in requests}) != len(requests):
            raise ExposeError("cannot expose a share twice in one batch")
        for r in requests:
            self._check_name(r.name, r.base_share)
            if not os.path.isabs(r.path) or "\0" in r.path:
                raise ExposeError(
                    f"cannot expose {r.name}: snapshot path {r.path!r} is not absolute"
                )
        what = ", ".join(r.name for r in requests)
        moved: list[str] = []
        try:
            self.conf.refresh()  # not under LOCK (see __init__); in a worker thread
        except Exception as exc:
            raise ExposeError(f"cannot expose {what}: {exc}") from exc
        with LOCK:
            try:
                bases: dict[str, ShareDefinition] = {}
                writes: list[tuple[str, list[tuple[str, str]]]] = []
                acls: dict[str, bytes | None] = {}
                old_acls: dict[str, bytes | None] = {}
                for r in requests:
                    base = bases.get(r.base_share) or self._base_share(r.base_share)
                    if base is None:
                        raise ExposeError(
                            f"cannot expose {r.name}: no share {r.base_share!r} in Samba"
                        )
                    bases[r.base_share] = base
                    old = self._registry_share(r.name)
                    if old is not None and old.get(MARKER) is None:
                        raise ExposeError(f"cannot expose {r.name}: a share of that name exists")
                    if old is not None and old.get("path") != r.path:
                        moved.append(r.name)  # no tree may stay on an old snapshot
                    when = taken if taken is not None else snapshot_time(r.path)
                    stamp = http_date(when or self.clock())
                    comment = f"Shadow copy of {r.base_share} taken {stamp}"
                    writes.append((r.name, _clone(base, r.path, comment, r.writable)))
                    acls[r.name] = self.security.get(base.name)
                    old_acls[r.name] = self.security.get(r.name)
                self.security.set_many(acls)
                try:
                    self._write_shares(writes)
                except BaseException:
                    _restore_sds(self.security, old_acls)
                    raise
            except ExposeError:
                raise
            except Exception as exc:  # SMBConfError, tdb's RuntimeError/OSError, ...
                raise ExposeError(f"cannot expose {what}: {exc}") from exc
        self._notify(force_tdis=moved)
        for r in requests:
            log.info("exposed %s (%s, %s) at %s", r.name, bases[r.base_share].name,
                     "rw" if r.writable else "ro", r.path)

    def quick_unexpose(self, name: str) -> bool:
        """True while ``name``'s removal is written in this process (one tdb
        transaction, ~1 ms), not through a child process: the registry is ours
        and the name one the in-process code takes (others go through
        python-samba's worker)."""
        return isinstance(self.ops, LightOps) and not self.clustered and takes_name(name)

    def unexpose(self, name: str) -> None:
        """Delete snapshot share ``name`` and its ACL and disconnect its trees."""
        self.unexpose_many([name])

    def unexpose_many(self, names: Sequence[str]) -> None:
        """:meth:`unexpose` for a whole set: one registry transaction, one tdb
        transaction for the ACLs, one round of smbd messages."""
        for name in names:
            if not SNAPSHOT_SHARE_RE.match(name) or not _SHARE_NAME_RE.match(name):
                raise ExposeError(f"refusing to unexpose {name!r}: not a snapshot share name")
        what = ", ".join(names)
        present: list[str] = []
        with LOCK:
            try:
                for name in names:
                    old = self._registry_share(name)
                    if old is None:
                        continue
                    if old.get(MARKER) is None:
                        raise ExposeError(f"refusing to unexpose {name}: not made by remotevss")
                    present.append(name)
                if present:
                    self._delete_shares(present)
                self.security.set_many(dict.fromkeys(names))
            except ExposeError:
                raise
            except Exception as exc:  # SMBConfError, tdb's RuntimeError/OSError, ...
                raise ExposeError(f"cannot unexpose {what}: {exc}") from exc
        self._notify(force_tdis=list(names))
        for name in present:
            log.info("unexposed %s", name)

    def exposed(self) -> dict[str, str]:
        """Our snapshot shares (those carrying the marker) and their paths."""
        out: dict[str, str] = {}
        with LOCK:
            try:
                for n in self.share_names():
                    if not SNAPSHOT_SHARE_RE.match(n):
                        continue
                    d = self._registry_share(n)
                    if d is not None and d.get(MARKER) is not None:
                        out[d.name] = d.get("path") or ""
            except Exception as exc:  # SMBConfError, ...
                raise ExposeError(f"cannot list exposed shares: {exc}") from exc
        return out

    def seal(self, name: str) -> None:
        """Make exposed share ``name`` read-only (see :meth:`seal_many`)."""
        self.seal_many([name])

    def seal_many(self, names: Sequence[str]) -> None:
        """Make exposed shares read-only (RecoveryComplete of a writable set): one
        registry transaction, then MSG_SMB_FORCE_TDIS for them, so that no tree
        or handle opened while they were writable writes on (a handle keeps
        writing into a snapshot made read-only underneath it)."""
        what = ", ".join(names)
        with LOCK:
            try:
                writes: list[tuple[str, list[tuple[str, str]]]] = []
                for name in names:
                    old = self._registry_share(name)
                    if old is None:
                        continue  # removed by hand: nothing left to connect to
                    if old.get(MARKER) is None:
                        raise ExposeError(f"cannot seal {name}: not an exposed snapshot share")
                    params = [
                        (k, v)
                        for k, v in old.params
                        if param_key(k)
                        not in (_REPLACED - {param_key("path"), param_key("comment")})
                        and param_key(k) != param_key("write list")
                    ]
                    writes.append((name, [*params, ("read only", "yes")]))
                if writes:
                    self._write_shares(writes)
            except ExposeError:
                raise
            except Exception as exc:  # SMBConfError, tdb's RuntimeError/OSError, ...
                raise ExposeError(f"cannot seal {what}: {exc}") from exc
        self._notify(force_tdis=list(names))

    def warm_up(self) -> None:
        """A set has started: have the worker child (if any) ready for its Expose."""
        warm = getattr(self.ops, "warm", None)
        if callable(warm):
            warm()

    def close(self) -> None:
        with LOCK:
            self.security.close()
            self.ops.close()
            self.messenger.close()
            if self._fallback is not None:
                self._fallback.close()

    def _base_share(self, name: str) -> ShareDefinition | None:
        """File first, then registry: the order smbd resolves names in."""
        return self.conf.file_share(name) or (
            self._registry_share(name) if self.conf.registry_shares else None
        )

    # ------------------------------------------------------------ helpers

    def _check_name(self, name: str, base_share: str) -> None:
        m = SNAPSHOT_SHARE_RE.match(name)
        if (
            m is None
            or not _SHARE_NAME_RE.match(name)
            or m.group("base") != base_share
            or SNAPSHOT_SHARE_RE.match(base_share)
        ):
            raise ExposeError(f"invalid snapshot share name {name!r} for share {base_share!r}")

    def _notify(self, force_tdis: list[str] | None = None) -> None:
        """Tell smbd; a failure is logged, not raised: the registry already says what
        is true, new tree connects read it, and a retry would change nothing."""
        self.counters["smbd_message_rounds"] += 1
        try:
            self.messenger.notify(force_tdis=force_tdis or [])
        except Exception:
            log.error("could not notify smbd (force_tdis=%s)", force_tdis, exc_info=True)

    def _write_share(self, name: str, params: list[tuple[str, str]]) -> None:
        """Replace share ``name`` with ``params``: one registry transaction."""
        self._write_shares([(name, params)])

    def _write_shares(self, shares: list[tuple[str, list[tuple[str, str]]]]) -> None:
        """Replace each share with its parameters: one registry transaction."""
        self.counters["registry_transactions"] += 1
        self._run("write_shares", shares)

    def _delete_shares(self, names: list[str]) -> None:
        self.counters["registry_transactions"] += 1
        self._run("delete_shares", names)

    def io_counters(self) -> dict[str, int]:
        """Registry and share-ACL transactions and smbd message rounds so far."""
        return {**self.counters, "acl_transactions": self.security.transactions}


def _restore_sds(db: ShareSecurityDb, sds: dict[str, bytes | None]) -> None:
    try:
        db.set_many(sds)
    except Exception:
        log.error("could not put back the ACL entries of %s", ", ".join(sds), exc_info=True)


def _clone(base: ShareDefinition, path: str, comment: str, writable: bool) -> list[tuple[str, str]]:
    """The snapshot share's parameters: the base share's, as written, with ours on top.

    Read-only: ``read only = yes`` and no ``write list``.  Writable
    (ATTR_AUTO_RECOVERY): exactly as writable as the base share (its ``read only``
    and synonyms kept, Samba's default ``yes`` included), never more, as
    Samba's own server clones it: the spec copies the base share's permissions."""
    drop = {_MARKER_KEY, param_key("path"), param_key("directory"), param_key("comment")}
    if not writable:
        drop |= _REPLACED | {param_key("write list")}
    params = [(k, v) for k, v in base.params if param_key(k) not in drop]
    return [
        *params,
        ("path", path),
        ("comment", comment),
        *([] if writable else [("read only", "yes")]),
        (MARKER, base.name),
    ]
