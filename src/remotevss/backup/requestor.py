r"""``backup run \\fs\share ...``: back up SMB shares from one shadow copy set.

The sequence, and why:

1. **Leftovers first.**  Sets made by earlier runs are recorded in the
   requestor's own client table (``backup-sets.sqlite3``, beside the shadow
   client's table).  A run holds an ``flock`` on ``backup-runs/<creation
   id>.lock`` for its whole life; a recorded set whose lock can be taken
   belongs to a run that died (SIGKILL, power loss) and is released now.
   Why the requestor must do it: Samba's message sequence timer drops only
   sets that never reached Exposed; an exposed, recovered set -- which is
   what a run killed mid-copy leaves -- stays on the server with its
   snapshots until someone deletes it.
2. **One auto-release set** (context ``backup``) for all the shares, per
   server, created in step (all adds, prepares, commits, exposes) by
   :func:`remotevss.client.shadow.create_shadow_copies`: one point in time
   across the shares (the server commits them together).
3. **Copy** every exposed snapshot share into one recovery point: over SMB
   (:class:`~remotevss.backup.smb.SmbSource`) or, on the file server itself,
   directly from the snapshot path (:class:`LocalSource`, the fast path:
   the exposed share's ``path`` from ``net conf showshare``, used only when
   the host is this machine, the path is readable, and its top-level listing
   matches the one SMB shows).  Labels are the original share names, so the
   files cache carries over from run to run.
4. **Release** the set (DeleteShareMapping for every copy) in a ``finally``:
   after success, failure, Ctrl-C or SIGTERM (the CLI turns SIGTERM into an
   exception with :func:`terminate_as`, and holds it back while the release
   runs; an API caller without such a handler is killed by SIGTERM, and the
   next run releases the set).  A release that
   fails leaves the set recorded, and the next run releases it (step 1).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from remotevss.backup.backup import RecoveryPoint, local_sources, run_backup
from remotevss.backup.excludes import Excludes
from remotevss.backup.progress import Progress
from remotevss.backup.repo import Repository
from remotevss.backup.signals import _hold_sigterm, terminate_as
from remotevss.backup.snapshot_source import DIR, FILE, LocalSource, Source
from remotevss.client.connection import ConnectOptions, Credentials
from remotevss.client.errors import ClientError, UsageError
from remotevss.client.shadow import Connector, CreateRequest, ShadowCopySet, create_shadow_copies
from remotevss.client.state import ClientState, SetStatus, default_state_path
from remotevss.client.unc import Unc, parse_unc, snapshot_share
from remotevss.fsrvp import filetime

log = logging.getLogger(__name__)

READ_MODES = ("auto", "smb", "local")


def default_backup_state(env: Mapping[str, str] | None = None) -> Path:
    """``$REMOTEVSS_BACKUP_STATE``, else ``backup-sets.sqlite3`` beside the client table."""
    env = env if env is not None else os.environ
    explicit = env.get("REMOTEVSS_BACKUP_STATE")
    if explicit:
        return Path(explicit).expanduser()
    return default_state_path(dict(env)).with_name("backup-sets.sqlite3")


def is_unc(text: str) -> bool:
    return text.startswith(("\\\\", "//"))


@dataclass
class ShareSpec:
    label: str
    unc: Unc


def split_specs(specs: Sequence[str]) -> tuple[list[str], list[ShareSpec]]:
    r"""``[LABEL=]PATH`` and ``[LABEL=]\\host\share`` arguments: (local specs, shares).
    A share's label defaults to its name (the files cache is keyed on it)."""
    local: list[str] = []
    shares: list[ShareSpec] = []
    for spec in specs:
        label, sep, rest = spec.partition("=")
        if is_unc(spec):
            u = parse_unc(spec)
            shares.append(ShareSpec(u.share, u))
        elif sep and is_unc(rest):
            if not label or "/" in label or label in (".", ".."):
                raise UsageError(f"bad label {label!r} for {rest}")
            shares.append(ShareSpec(label, parse_unc(rest)))
        else:
            local.append(spec)
    labels = [s.label.casefold() for s in shares]
    if len(set(labels)) != len(labels):
        raise UsageError("two shares would get the same label; name them: LABEL=\\\\host\\share")
    return local, shares


@dataclass
class RunSettings:
    credentials: Credentials
    options: ConnectOptions = field(default_factory=ConnectOptions)
    state_path: Path | None = None
    read_mode: str = "auto"
    smb_conf: str | None = None
    encrypt: bool = True
    security: bool = True
    smb_timeout: float = 120.0
    follow_owner: bool = True  # reconnect to IsPathSupported's OwnerMachineName
    resolve: bool = False  # DNS to tell an address and a name of one server apart
    connector: Connector | None = None  # tests: a fake FSRVP binding
    excludes: Excludes | None = None  # what is left out of every source (excludes.py)


@dataclass
class ReleaseOutcome:
    server: str
    set_id: str
    released: bool
    detail: str = ""


@dataclass
class ShareRun:
    point: RecoveryPoint | None = None
    released: list[ReleaseOutcome] = field(default_factory=list)
    leftovers: list[ReleaseOutcome] = field(default_factory=list)
    readers: dict[str, str] = field(default_factory=dict)

    @property
    def release_failed(self) -> bool:
        return any(not r.released for r in self.released)

    def to_json(self) -> dict[str, Any]:
        return {"point": self.point.__dict__ if self.point else None,
                "released": [r.__dict__ for r in self.released],
                "leftovers": [r.__dict__ for r in self.leftovers], "readers": self.readers}


# ----------------------------------------------------------------------- run locks
def _runs_dir(state_path: Path) -> Path:
    return state_path.with_name("backup-runs")


def _lock_path(state_path: Path, creation_id: UUID) -> Path:
    return _runs_dir(state_path) / f"{creation_id}.lock"


def _try_lock(path: Path, create: bool) -> int | None:
    """An fd holding an exclusive flock on ``path``; None if a live process holds it."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return -1  # no lock file: nobody is alive to hold it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


# ----------------------------------------------------------------------- leftovers
def release_leftovers(state: ClientState, state_path: Path, creds: Credentials,
                      options: ConnectOptions, connector: Connector | None = None
                      ) -> list[ReleaseOutcome]:
    """Release every recorded set whose run is gone (its lock is free)."""
    out: list[ReleaseOutcome] = []
    by_creation: dict[UUID, list[Any]] = {}
    for rec in state.sets():
        by_creation.setdefault(rec.client_set_id, []).append(rec)
    for creation_id, records in by_creation.items():
        lock = _lock_path(state_path, creation_id)
        fd = _try_lock(lock, create=False)
        if fd is None:
            continue  # a live run owns these sets
        try:
            ok = True
            for rec in records:
                s = ShadowCopySet.resume(rec, creds, options, state=state, connector=connector)
                try:
                    if rec.status in (SetStatus.EXPOSED, SetStatus.RECOVERED, SetStatus.STALE):
                        s.delete(missing_ok=True)
                    else:
                        s.abort()
                    out.append(ReleaseOutcome(rec.server, str(rec.set_id), True,
                                              "left by an interrupted run; released"))
                except (ClientError, OSError) as exc:
                    ok = False
                    out.append(ReleaseOutcome(rec.server, str(rec.set_id), False,
                                              f"left by an interrupted run; release failed: {exc}"))
                finally:
                    s.close()
            if ok:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        finally:
            if fd >= 0:
                os.close(fd)
    return out


# ----------------------------------------------------------------------- the fast path
def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine: every address it resolves to is loopback
    or bound to one of our interfaces."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    if not infos:
        return False
    for family, _t, _p, _c, addr in infos:
        ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
        if ip.is_loopback:
            continue
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((str(ip), 0))
        except OSError:
            return False
    return True


def share_path(share: str, smb_conf: str | None) -> str | None:
    """The ``path`` of a Samba registry share (how FSRVP servers expose snapshots)."""
    argv = ["net"] + (["-s", smb_conf] if smb_conf else []) + ["conf", "showshare", share]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    for line in r.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "path":
            return value.strip()
    return None


def _same_top_level(local: LocalSource, remote: Source) -> bool:
    """The local directory and the share show the same regular files (name, size)
    and directories at the top.  (Samba shows symlinks as their targets and
    hides dangling ones, so only what SMB cannot disguise is compared.)"""
    try:
        mine = {e.name: (e.type, e.size if e.type == FILE else 0)
                for e in local.scandir("") if e.type in (FILE, DIR)}
        theirs = {e.name: (e.type, e.size if e.type == FILE else 0) for e in remote.scandir("")}
    except OSError:
        return False
    return all(theirs.get(name) == v for name, v in mine.items())


# ----------------------------------------------------------------------- the run
def _iso(ft: int | None) -> str | None:
    dt = filetime.to_datetime(ft)
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def backup_shares(repo: Repository, shares: Sequence[ShareSpec], settings: RunSettings, *,
                  local_specs: Sequence[str] = (), meta: Mapping[str, Any] | None = None,
                  progress: Progress | None = None,
                  on_exposed: Callable[[list[ShadowCopySet]], None] | None = None,
                  run: ShareRun | None = None) -> ShareRun:
    """Shadow-copy ``shares`` (one set per server), back them up (plus any local
    directories) into one recovery point, release the sets whatever happens.

    Raises what failed (FSRVP, SMB, repository errors, KeyboardInterrupt) after
    the release; ``run`` (filled in, and returned on success) says what was
    released, also when an exception is raised."""
    from remotevss.backup.smb import SmbSession, SmbSource

    if not shares:
        raise UsageError("no shares to back up")
    if settings.read_mode not in READ_MODES:
        raise UsageError(f"read mode must be one of {', '.join(READ_MODES)}")
    # A second run of the same share is refused here, before it costs a snapshot
    # (with the copy backend, a full copy of the share).
    repo.lock_sources([s.label for s in shares])
    state_path = settings.state_path or default_backup_state()
    state = ClientState(state_path)
    _runs_dir(state_path).mkdir(mode=0o700, parents=True, exist_ok=True)
    run = run if run is not None else ShareRun()
    creds, options = settings.credentials, settings.options
    creation_id = uuid.uuid4()
    lock = _lock_path(state_path, creation_id)
    lock_fd = _try_lock(lock, create=True)
    assert lock_fd is not None and lock_fd >= 0
    sets: list[ShadowCopySet] = []
    sessions: dict[str, SmbSession] = {}
    smb_sources: list[SmbSource] = []
    try:
        run.leftovers = release_leftovers(state, state_path, creds, options, settings.connector)
        request = CreateRequest([s.unc for s in shares], context="backup",
                                follow_owner=settings.follow_owner, resolve=settings.resolve,
                                client_set_id=creation_id)
        # ``sets`` is filled as soon as the sets exist, so that an interrupt while
        # the creation closes its connections still finds them to release.
        create_shadow_copies(request, creds, options, state=state,
                             connector=settings.connector, created=sets)
        if on_exposed is not None:
            on_exposed(sets)
        labels = {s.unc.key: s.label for s in shares}
        by_name = {s.unc.share.casefold(): s.label for s in shares}
        sources: list[Source] = []
        created: list[int] = []
        snapshot_uncs: list[str] = []
        for sc in sets:
            for c in sc.copies:
                u = parse_unc(c.share_display)  # host form may have been adopted
                label = labels.get(u.key) or by_name.get(u.share.casefold()) or u.share
                host, share = snapshot_share(c.exposed_name or "", sc.owner or c.server)
                snapshot_uncs.append(c.exposed_unc or share)
                if c.creation_filetime:
                    created.append(c.creation_filetime)
                session = sessions.get(host)
                if session is None:
                    session = SmbSession(
                        host, username=creds.username, password=creds.password,
                        domain=creds.domain, nt_hash=creds.nt_hash, kerberos=creds.kerberos(),
                        port=options.port, encrypt=settings.encrypt,
                        timeout=settings.smb_timeout, connect_timeout=options.connect_timeout)
                    sessions[host] = session
                remote = SmbSource(session, share, label, security=settings.security,
                                   excludes=settings.excludes)
                smb_sources.append(remote)
                source: Source = remote
                if settings.read_mode != "smb":
                    local = _local_source(host, share, label, remote, settings.smb_conf,
                                          settings.excludes)
                    if local is not None:
                        source = local
                    elif settings.read_mode == "local":
                        raise UsageError(f"{c.exposed_unc}: no readable local path for this "
                                         "snapshot share (--read local)")
                run.readers[label] = "local" if isinstance(source, LocalSource) else "smb"
                sources.append(source)
        sources += local_sources(local_specs, settings.excludes)
        point_meta: dict[str, Any] = dict(meta or {})
        servers = sorted({sc.server or "" for sc in sets})
        point_meta.update({
            "shadow_copy_set": str(sets[0].set_id) if len(sets) == 1 else str(creation_id),
            "server": ",".join(servers),
            "shares": [c.share_display for sc in sets for c in sc.copies],
            "snapshot_shares": snapshot_uncs,
            "created": _iso(min(created)) if created else None,
            "readers": dict(run.readers),
        })
        if len(sets) > 1:
            point_meta["server_sets"] = {sc.server or "": str(sc.set_id) for sc in sets}
        # SMB shows no mount points: --one-file-system cannot apply to what is read
        # over it, and the point must not claim it did.
        over_smb = sorted(k for k, v in run.readers.items() if v == "smb")
        if settings.excludes is not None and settings.excludes.one_file_system and over_smb:
            point_meta["one_file_system_not_applied"] = over_smb
        run.point = run_backup(repo, sources, point_meta, progress)
        return run
    finally:
        release = _hold_sigterm()
        try:
            for src in smb_sources:
                with contextlib.suppress(Exception):
                    src.close()
            for session in sessions.values():
                session.close()
            for sc in sets:
                try:
                    sc.delete(missing_ok=True)
                    run.released.append(ReleaseOutcome(sc.server or "", str(sc.set_id), True))
                except (ClientError, OSError) as exc:
                    log.warning("could not release shadow copy set %s on %s: %s",
                                sc.set_id, sc.server, exc)
                    run.released.append(ReleaseOutcome(
                        sc.server or "", str(sc.set_id), False,
                        f"{exc}; it stays recorded in {state_path} and the next run releases it"))
                finally:
                    sc.close()
            if not run.release_failed:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
            os.close(lock_fd)
            state.close()
        finally:
            release()


def _local_source(host: str, share: str, label: str, remote: Source,
                  smb_conf: str | None, excludes: Excludes | None = None) -> LocalSource | None:
    if not is_local_host(host):
        return None
    path = share_path(share, smb_conf)
    if not path or not os.path.isdir(path) or not os.access(path, os.R_OK | os.X_OK):
        return None
    local = LocalSource(path, label, excludes)
    if not _same_top_level(local, remote):
        log.warning("%s: %s does not match what SMB shows; reading over SMB", share, path)
        return None
    return local


def describe(exc: BaseException) -> str:
    from remotevss.client.shadow import describe_error

    return describe_error(exc)


__all__ = ["READ_MODES", "ReleaseOutcome", "RunSettings", "ShareRun", "ShareSpec",
           "backup_shares", "default_backup_state", "is_unc", "release_leftovers",
           "split_specs", "terminate_as"]
