"""Samba's configuration as smbd sees it: smb.conf (with includes) plus registry shares.

Why Samba's own loadparm, not a parser of our own: smb.conf has includes,
``copy =``, synonyms and inverted synonyms (``writeable = yes`` is ``read
only = no``), ``include = registry`` and registry shares; only Samba's code
reads it the way smbd will.  Why not in this process: python-samba costs the
agent ~17 MB resident for good, for a handful of values.  So:

* :class:`SambaConf` (the agent's): a snapshot made by a short-lived child,
  ``python -m remotevss.samba.loadparm`` (samba/loadparm.py, ~75 ms): the
  globals the agent reads, every file share's path and flags, each file's
  sections as written (what a snapshot share clones, as Samba's own FSRVP
  server does, ``fss_conf_get_share_def``) and the stamps (mtime, size,
  inode) of smb.conf and every included file.  :meth:`SambaConf.refresh`
  stats those files (a few microseconds) and runs the child again only when
  one changed.  No python-samba module is ever imported by it.
* Registry shares (``HKLM\\Software\\Samba\\smbconf`` in ``<state
  dir>/registry.tdb``) are not in the snapshot: they are read live (~30 us)
  with the ``tdb`` binding (samba/regdb.py), or through
  :attr:`SambaConf.registry_reader` when the exposer provides one.  Registry
  *globals* (``include = registry``) are read by the child, so they are seen
  at start and whenever smb.conf changes; the agent reads only start-up facts
  (names, directories) from them.
* :class:`InProcessSambaConf`: python-samba in the calling process, for
  python-samba's worker child (samba/worker.py, the fallback for clustered
  Samba or a registry format samba/regdb.py refuses), which needs
  loadparm for messaging and libsmbconf's registry backend anyway.  One
  Samba per such process: source3 loadparm is a C global and the first
  ``registry.tdb`` opened stays open for the life of the process.

A refresh that fails (smb.conf no longer parses) keeps the last good
snapshot, logs Samba's error once and sets :attr:`SambaConf.last_error`; the
next change of a watched file tries again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remotevss.samba import loadparm
from remotevss.samba._lib import LOCK, SambaUnavailable, module
from remotevss.samba.loadparm import param_key, quiet_load

__all__ = ["param_key", "quiet_load"]  # re-exported: registry_exposer, sam_logon, pipedir

log = logging.getLogger("remotevss.samba")

#: A snapshot share: ``<base share>@{<guid>}`` with an optional hidden-share ``$``
#: (Samba's ``map_share_name``; ours in fsrvp/machine.py ``exposed_share_name``).
SNAPSHOT_SHARE_RE = re.compile(
    r"^(?P<base>.+)@\{(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}(?P<hidden>\$?)$"
)

SBC_ERR_NO_SUCH_SERVICE = 7  # samba.smbconf.SBC_ERR_NO_SUCH_SERVICE


class SambaConfigError(RuntimeError):
    """Samba's configuration cannot be read or does not allow what we need."""


def is_snapshot_share_name(name: str) -> bool:
    return SNAPSHOT_SHARE_RE.match(name) is not None


def samba_bool(value: object, default: bool = False) -> bool:
    """A boolean parameter value as Samba parses it (yes/no, true/false, 1/0, on/off)."""
    if isinstance(value, bool):
        return value
    if value is None:
        return default
    text = str(value).strip().lower()
    if text in ("yes", "true", "1", "on"):
        return True
    if text in ("no", "false", "0", "off"):
        return False
    return default


@dataclass(frozen=True)
class ShareDefinition:
    """One share section as written: ``source`` is the file it came from or ``"registry"``."""

    name: str
    params: tuple[tuple[str, str], ...]
    source: str

    def get(self, param: str) -> str | None:
        """Last value of ``param`` (Samba's parameter-name matching: case, spaces and
        underscores do not matter)."""
        key = param_key(param)
        value = None
        for k, v in self.params:
            if param_key(k) == key:
                value = v
        return value


def open_registry_files() -> set[str]:
    """Every ``registry.tdb`` this process has open (Linux: /proc/self/fd)."""
    found: set[str] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith("/registry.tdb"):
            found.add(os.path.realpath(target))
    return found



_Stamp = list[int] | None
LOADPARM_TIMEOUT = 30.0  # seconds for the child; it takes ~75 ms
_FileSections = list[tuple[str, list[tuple[str, list[tuple[str, str]]]]]]


@dataclass(frozen=True)
class ConfSnapshot:
    """What samba/loadparm.py printed: see its module doc."""

    globals: dict[str, Any]  # by param_key
    services: dict[str, tuple[str, dict[str, Any]]]  # casefold name -> (name, params)
    files: _FileSections
    stamps: dict[str, _Stamp]
    registry_shares: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ConfSnapshot:
        return cls(
            {param_key(k): v for k, v in d["globals"].items()},
            {str(n).casefold(): (str(n), dict(p)) for n, p in d["services"]},
            [(str(path), [(str(n), [(str(k), str(v)) for k, v in p]) for n, p in sections])
             for path, sections in d["files"]],  # fmt: skip
            {str(p): s for p, s in d["stamps"]},
            bool(d["registry_shares"]),
        )

    def changed(self) -> bool:
        """A watched file is not as it was when the snapshot was taken."""
        return any(loadparm.stamp(p) != s for p, s in self.stamps.items())


def run_loadparm(config_file: str, timeout: float = LOADPARM_TIMEOUT) -> dict[str, Any]:
    """The child's snapshot of ``config_file`` (samba/loadparm.py); SambaConfigError
    with Samba's words if it cannot load it, SambaUnavailable without python-samba."""
    cmd = [sys.executable, "-m", "remotevss.samba.loadparm", config_file]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False,
                              close_fds=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:  # e.g. a hung child: timeout
        raise SambaConfigError(f"cannot read Samba config {config_file}: {exc}") from exc
    try:
        reply = json.loads(proc.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:  # it died without an answer (a crash)
        raise SambaConfigError(
            f"cannot read Samba config {config_file}: the loadparm child exited "
            f"{proc.returncode} without an answer ({_samba_said(proc.stderr)})"
        ) from exc
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = str(reply.get("error", "no answer")) if isinstance(reply, dict) else "bad answer"
        said = _samba_said(proc.stderr)
        if said:
            error += f" (Samba: {said})"
        if isinstance(reply, dict) and reply.get("kind") == "ImportError":
            raise SambaUnavailable(error)
        raise SambaConfigError(error)
    return dict(reply["snapshot"])


def _samba_said(stderr: bytes, limit: int = 400) -> str:
    """The child's stderr (Samba's level-0 messages: why a load failed), on one line."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return " / ".join(lines)[-limit:]


class SambaConf:
    """The agent's view of one Samba configuration (see the module docstring)."""

    def __init__(self, config_file: str | os.PathLike[str]) -> None:
        self.config_file = str(Path(config_file).absolute())
        self.generation = 0
        #: Samba's error from the last refresh that failed ("" after a good one).
        self.last_error = ""
        #: Snapshots taken, and the seconds the last one took (docs/samba.md).
        self.loads = 0
        self.load_seconds = 0.0
        #: Reads existing registry shares: the agent sets these to RegistryExposer's
        #: readers; by default samba/regdb.py on ``<state dir>/registry.tdb``.
        self.registry_reader: Callable[[str], tuple[str, list[tuple[str, str]]] | None] | None = (
            None
        )
        #: The names of the registry shares, likewise (``global`` left out).
        self.registry_names_reader: Callable[[], list[str]] | None = None
        self._refreshing = threading.Lock()  # one snapshot taken at a time
        self._starting = threading.Lock()  # one background refresh started at a time
        self._failed_at: dict[str, _Stamp] | None = None
        self._background: threading.Thread | None = None
        self._snap = self._take()
        self.generation = 1

    # ------------------------------------------------------------ loading

    def _take(self) -> ConfSnapshot:
        if not os.path.isfile(self.config_file):
            raise SambaConfigError(f"Samba config {self.config_file} does not exist")
        t0 = time.perf_counter()
        snap = ConfSnapshot.from_json(run_loadparm(self.config_file))
        self.loads += 1
        self.load_seconds = time.perf_counter() - t0
        return snap

    def stale(self) -> bool:
        """A watched file changed since the snapshot (and since a failed refresh)."""
        snap = self._snap
        if not snap.changed():
            return False
        failed = self._failed_at
        return failed is None or any(loadparm.stamp(p) != s for p, s in failed.items())

    def refresh(self, *, wait: bool = True) -> bool:
        """Take a new snapshot if a watched file changed; True if one was taken.

        ``wait=False`` (the event-loop thread): start it in a background thread
        and go on with the current snapshot.  A config Samba cannot load keeps the
        last good snapshot (see the module doc)."""
        if not self.stale():
            return False
        if not wait:
            with self._starting:  # not _refreshing: held for the whole child run
                if self._background is None or not self._background.is_alive():
                    self._background = threading.Thread(
                        target=self.refresh, name="samba-loadparm", daemon=True
                    )
                    self._background.start()
            return False
        with self._refreshing:
            if not self.stale():
                return False  # another thread took it meanwhile
            current = {p: loadparm.stamp(p) for p in self._snap.stamps}
            try:
                snap = self._take()
            except (SambaConfigError, SambaUnavailable) as exc:
                self._failed_at = current
                if str(exc) != self.last_error:
                    log.error("%s; still using the configuration read before", exc)
                self.last_error = str(exc)
                return False
            self._snap, self._failed_at, self.last_error = snap, None, ""
            self.generation += 1
            log.info("re-read %s (%.0f ms)", self.config_file, self.load_seconds * 1e3)
            return True

    async def refresh_async(self) -> bool:
        """:meth:`refresh` off the event loop (the stat check stays inline: ~us)."""
        if not self.stale():
            return False
        return await asyncio.to_thread(self.refresh)

    # ------------------------------------------------------------ globals

    def get(self, name: str, service: str | None = None) -> Any:
        """A parameter as smbd computes it (``None`` if the service is unknown).
        Only what the snapshot holds (loadparm.GLOBALS, loadparm.SHARE_PARAMS)."""
        snap = self._snap
        key = param_key(name)
        if service is None:
            if key not in snap.globals:
                raise SambaConfigError(
                    f"{name!r} is not in the snapshot of {self.config_file} "
                    "(remotevss.samba.loadparm.GLOBALS)"
                )
            return snap.globals[key]
        found = snap.services.get(service.casefold())
        if found is None:
            return None
        params = {param_key(k): v for k, v in found[1].items()}
        if key not in params:
            raise SambaConfigError(f"share parameter {name!r} is not in the snapshot")
        return params[key]

    @property
    def netbios_name(self) -> str:
        """What Samba calls itself (FSRVP's OwnerMachineName, ShareNameUNC's host)."""
        return str(self.get("netbios name") or "").upper()

    @property
    def state_dir(self) -> str:
        return str(self.get("state directory"))

    @property
    def lock_dir(self) -> str:
        return str(self.get("lock directory"))

    @property
    def private_dir(self) -> str:
        return str(self.get("private dir"))

    @property
    def registry_shares(self) -> bool:
        """smbd loads registry shares (``registry shares = yes``, implied by
        ``include = registry`` and ``config backend = registry``), as the files say."""
        return self._snap.registry_shares

    # ------------------------------------------------------------ shares

    def file_services(self) -> list[str]:
        """Share sections of the file config (after includes), including
        ``homes``/``printers``; registry shares are not among them."""
        return [name for name, _params in self._snap.services.values()]

    def registry_share(self, name: str) -> ShareDefinition | None:
        """A registry share by case-insensitive name, read live (~30 us; through
        :attr:`registry_reader` when set)."""
        with LOCK:
            if self.registry_reader is not None:
                found = self.registry_reader(name)
            else:
                found = self._regdb_call("get_share", name)
            if found is None:
                return None
            return ShareDefinition(found[0], tuple(found[1]), "registry")

    def registry_share_names(self) -> list[str]:
        with LOCK:
            if self.registry_names_reader is not None:
                return self.registry_names_reader()
            return [str(n) for n in self._regdb_call("share_names") or []]

    def _regdb_call(self, op: str, *args: Any) -> Any:
        from remotevss.samba.regdb import RegdbError, RegistryDb

        path = os.path.join(self.state_dir, "registry.tdb")
        if not os.path.exists(path):
            return None  # smbd has not made it yet: no registry shares
        try:
            return getattr(RegistryDb(path), op)(*args)
        except RegdbError as exc:
            raise SambaConfigError(f"registry shares in {path}: {exc}") from exc

    def file_share(self, name: str) -> ShareDefinition | None:
        """A share section as written in smb.conf and the files it includes: every
        section of that name, in reading order, as smbd merges them (a later value
        wins).  Why all: a clone of only the first would lose, say, the ``valid
        users`` an included file adds, and open the snapshot to more users than the
        share.  ``source``: the first file."""
        found = [(n, params, path) for path, sections in self._snap.files
                 for n, params in sections
                 if n.casefold() == name.casefold() and n.casefold() != "global"]
        if not found:
            return None
        merged = tuple(p for _n, params, _path in found for p in params)
        return ShareDefinition(found[0][0], merged, found[0][2])

    def share_definition(self, name: str) -> ShareDefinition | None:
        """File first, then registry: the order smbd resolves names in."""
        return self.file_share(name) or (
            self.registry_share(name) if self.registry_shares else None
        )

    def watched_files(self) -> Iterator[str]:
        return iter(self._snap.stamps)


# The state directory of the registry an InProcessSambaConf bound this process to.
_bound_state_dir: str | None = None


class InProcessSambaConf(SambaConf):
    """python-samba's loadparm and libsmbconf in this process: for python-samba's
    worker child (samba/worker.py), which needs :attr:`lp` (messaging) and
    :attr:`registry` (libsmbconf's registry backend).  Not for the agent."""

    def __init__(self, config_file: str | os.PathLike[str]) -> None:
        global _bound_state_dir
        self._param = module("samba.samba3.param")
        self._smbconf = module("samba.smbconf")
        self._s3smbconf = module("samba.samba3.smbconf")
        self._registry: Any = None
        with LOCK:
            self._lp: Any = self._param.get_context()
            super().__init__(config_file)
            state_dir = self.state_dir
            if _bound_state_dir is not None and _bound_state_dir != state_dir:
                raise SambaConfigError(
                    f"this process already uses the Samba registry in {_bound_state_dir}; "
                    f"{self.config_file} has state directory {state_dir} (python-samba keeps "
                    "the first registry.tdb open for the life of the process: one Samba per "
                    "process)"
                )
            self._check_registry_file()
            _bound_state_dir = state_dir

    def _take(self) -> ConfSnapshot:
        if not os.path.isfile(self.config_file):
            raise SambaConfigError(f"Samba config {self.config_file} does not exist")
        with LOCK:
            try:
                d = loadparm.take(self._lp, self._smbconf, self.config_file)
            except RuntimeError as exc:
                raise SambaConfigError(
                    f"cannot load Samba config {self.config_file}: {exc}"
                ) from exc
        self.loads += 1
        return ConfSnapshot.from_json(d)

    def _ensure_loaded(self) -> None:
        """Someone else in this process may have loaded another file into the global."""
        if self._lp.configfile != self.config_file:
            self._snap = self._take()
            self.generation += 1

    def get(self, name: str, service: str | None = None) -> Any:
        """Any parameter, from loadparm itself."""
        with LOCK:
            self._ensure_loaded()
            return self._lp.get(name) if service is None else self._lp.get(name, service)

    @property
    def lp(self) -> Any:
        """The loaded source3 loadparm context (for samba.messaging)."""
        with LOCK:
            self._ensure_loaded()
            return self._lp

    @property
    def registry(self) -> Any:
        """The registry smbconf backend (opened once)."""
        with LOCK:
            if self._registry is None:
                self._ensure_loaded()
                try:
                    self._registry = self._s3smbconf.init_reg(None)
                except Exception as exc:  # SMBConfError or RuntimeError
                    raise SambaConfigError(
                        f"cannot open the Samba registry in {self.state_dir}: {exc}"
                    ) from exc
                self._check_registry_file()
            return self._registry

    def _check_registry_file(self) -> None:
        """Refuse to work on another Samba's registry: whatever opened a registry.tdb
        first in this process pins it, and init_reg would silently use that one."""
        ours = os.path.realpath(os.path.join(self.state_dir, "registry.tdb"))
        other = sorted(p for p in open_registry_files() if p != ours)
        if other:
            raise SambaConfigError(
                f"this process already has {other[0]} open (python-samba keeps the first "
                f"registry.tdb for the life of the process); {self.config_file} needs {ours}: "
                "use one Samba configuration per process"
            )

    def registry_share(self, name: str) -> ShareDefinition | None:
        """Through :attr:`registry_reader` when set, else libsmbconf."""
        with LOCK:
            if self.registry_reader is not None:
                return super().registry_share(name)
            try:
                got, params = self.registry.get_share(name)
            except self._smbconf.SMBConfError as exc:
                if exc.args and exc.args[0] == SBC_ERR_NO_SUCH_SERVICE:
                    return None
                raise SambaConfigError(f"registry share {name!r}: {exc}") from exc
            # the registry answers with the name as stored, not as asked
            return ShareDefinition(str(got), tuple(params), "registry")

    def registry_share_names(self) -> list[str]:
        with LOCK:
            if self.registry_names_reader is not None:
                return self.registry_names_reader()
            return [str(n) for n in self.registry.share_names() if n != "global"]


_CONFS: dict[str, SambaConf] = {}
_CONFS_LOCK = threading.Lock()  # not LOCK: a first snapshot takes ~65 ms


def shared_conf(config_file: str | os.PathLike[str]) -> SambaConf:
    """This process's SambaConf for ``config_file`` (one snapshot, one child run),
    refreshed if a watched file changed: what the agent and samba/pipedir.py use."""
    path = str(Path(config_file).absolute())
    with _CONFS_LOCK:
        conf = _CONFS.get(path)
        if conf is None:
            conf = _CONFS[path] = SambaConf(path)
            return conf
    conf.refresh()
    return conf
