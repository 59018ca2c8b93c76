"""Samba's configuration as smbd sees it: smb.conf (with includes) plus registry shares.

Why smbd's own loadparm (``samba.samba3.param``) and libsmbconf
(``samba.smbconf`` / ``samba.samba3.smbconf``), not a parser of our own:
smb.conf has includes, ``copy =``, synonyms and inverted synonyms
(``writeable = yes`` is ``read only = no``) and registry shares; only Samba's
code reads it the way smbd will.  What each piece is used for:

* ``samba.samba3.param.get_context()`` -- the process's source3 loadparm:
  file shares after includes and ``copy =``, global values (netbios name,
  state/lock directories, ``registry shares``).  It does *not* hold registry
  shares: smbd loads those on demand at tree connect
  (``find_service`` -> ``load_registry_service``).
* ``samba.samba3.smbconf.init_reg(None)`` -- the registry backend
  (``HKLM\\Software\\Samba\\smbconf`` in ``<state dir>/registry.tdb``):
  registry shares, read live (a lookup costs ~30 us) and written in
  transactions.
* ``samba.smbconf.init_txt(path)`` -- the literal parameters of a section of
  smb.conf (or an included file), which is what a snapshot share clones, as
  Samba's own FSRVP server does (``fss_conf_get_share_def``).

One Samba per process: source3 loadparm is a C global, and the first
``registry.tdb`` opened (by ``lp.load`` of a config with ``include =
registry``, or by ``init_reg``) stays open for the life of the process.  A
second :class:`SambaConf` with another state directory is refused rather than
silently reading the first one's registry.

Re-reading: :meth:`SambaConf.refresh` stats smb.conf and every included file
(a few microseconds) and reloads only when one changed; registry shares need
no refresh because they are read live.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remotevss.samba._lib import LOCK, module

log = logging.getLogger("remotevss.samba")

#: A snapshot share: ``<base share>@{<guid>}`` with an optional hidden-share ``$``
#: (Samba's ``map_share_name``; ours in fsrvp/machine.py ``exposed_share_name``).
SNAPSHOT_SHARE_RE = re.compile(
    r"^(?P<base>.+)@\{(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}(?P<hidden>\$?)$"
)

SBC_ERR_NO_SUCH_SERVICE = 7  # samba.smbconf.SBC_ERR_NO_SUCH_SERVICE

_Stamp = tuple[int, int, int] | None

# The state directory of the registry this process is bound to (see module doc).
_bound_state_dir: str | None = None


class SambaConfigError(RuntimeError):
    """Samba's configuration cannot be read or does not allow what we need."""


def is_snapshot_share_name(name: str) -> bool:
    return SNAPSHOT_SHARE_RE.match(name) is not None


def quiet_load(lp: Any, config_file: str) -> None:
    """``lp.load`` without Samba's debug output on our stderr (smb.conf's ``log level``,
    2 and up prints ``Processing section "[x]"`` per share per load, is for smbd's
    logs), and without registry shares: loadparm would reload every one and keep
    registry.tdb open for the life of the process, so that the tdb binding could
    not open it here (samba/regdb.py; :attr:`SambaConf.registry_shares` reads
    smbd's setting from the files).  Values set before the load are command-line
    settings, which the file does not override."""
    lp.set("log level", "0")
    lp.set("registry shares", "no")
    lp.load(config_file)


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


def param_key(name: str) -> str:
    """Normalize a parameter name the way loadparm compares them (``strwicmp``)."""
    return name.lower().replace(" ", "").replace("_", "").replace("\t", "")


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


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class SambaConf:
    """The process's view of one Samba configuration (see the module docstring)."""

    def __init__(self, config_file: str | os.PathLike[str]) -> None:
        global _bound_state_dir
        self.config_file = str(Path(config_file).absolute())
        self._param = module("samba.samba3.param")
        self._smbconf = module("samba.smbconf")
        self._s3smbconf = module("samba.samba3.smbconf")
        self.generation = 0
        self._stamps: dict[str, _Stamp] = {}
        # (file, its sections as parsed at load: [(name, [(param, value), ...]), ...])
        self._txt: list[tuple[str, list[tuple[str, list[tuple[str, str]]]]]] = []
        self._registry: Any = None
        #: Reads existing registry shares without python-samba (its get_share leaks
        #: ~1.3 KB per share returned, RELIABILITY.md §5): the agent sets these to
        #: RegistryExposer's readers (samba/regdb.py).  (name, params) or None.
        self.registry_reader: Callable[[str], tuple[str, list[tuple[str, str]]] | None] | None = (
            None
        )
        #: The names of the registry shares, likewise (``global`` left out).
        self.registry_names_reader: Callable[[], list[str]] | None = None
        with LOCK:
            self._lp: Any = self._param.get_context()
            self._load()
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

    # ------------------------------------------------------------ loading

    def _load(self) -> None:
        if not os.path.isfile(self.config_file):
            raise SambaConfigError(f"Samba config {self.config_file} does not exist")
        try:
            quiet_load(self._lp, self.config_file)
        except RuntimeError as exc:
            raise SambaConfigError(f"cannot load Samba config {self.config_file}: {exc}") from exc
        stamps: dict[str, _Stamp] = {}
        txt: list[tuple[str, list[tuple[str, list[tuple[str, str]]]]]] = []
        pending = [self.config_file]
        while pending and len(stamps) < 64:
            path = pending.pop(0)
            if path in stamps:
                continue
            stamps[path] = _stamp(path)
            if stamps[path] is None:
                continue  # a missing include: watched, so creating it triggers a reload
            try:
                backend = self._smbconf.init_txt(path)
                sections = backend.get_config()
            except Exception as exc:  # unreadable include: loadparm skipped it too
                log.debug("cannot parse %s: %s", path, exc)
                continue
            # Parsed once here, not asked again per lookup: every share_names/get_share
            # call on a txt backend leaks ~0.9 KB in python-samba 4.17 (found by the soak).
            txt.append((path, [(str(n), [(str(k), str(v)) for k, v in p]) for n, p in sections]))
            for _section, params in sections:
                for key, value in params:
                    # "registry" is not a file; per-user/per-client (%) includes are not followed
                    if (
                        param_key(key) == "include"
                        and value.lower() != "registry"
                        and ("%" not in value)
                    ):
                        pending.append(str(Path(path).parent / value))
        self._stamps = stamps
        self._txt = txt
        self.generation += 1

    def _ensure_loaded(self) -> None:
        """Someone else in this process may have loaded another file into the global."""
        if self._lp.configfile != self.config_file:
            self._load()

    def refresh(self) -> bool:
        """Reload if smb.conf or an included file changed; True if it did."""
        with LOCK:
            if any(_stamp(p) != s for p, s in self._stamps.items()):
                self._load()
                return True
            self._ensure_loaded()
            return False

    # ------------------------------------------------------------ globals

    def get(self, name: str, service: str | None = None) -> Any:
        """A parameter as smbd computes it (``None`` if the service is unknown)."""
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
        ``include = registry`` and ``config backend = registry``), as the files say:
        this process's loadparm has it off (see :meth:`_load`)."""
        with LOCK:
            self._ensure_loaded()
            value, backend = "no", ""
            for _path, sections in self._txt:
                for section, params in sections:
                    if section.casefold() != "global":
                        continue
                    for k, v in params:
                        key = param_key(k)
                        if key == "registryshares":
                            value = v
                        elif key == "include" and v.strip().lower() == "registry":
                            value = "yes"  # process_registry_globals sets it
                        elif key == "configbackend":
                            backend = v
            return samba_bool(value) or backend.strip().lower() == "registry"

    # ------------------------------------------------------------ shares

    def file_services(self) -> list[str]:
        """Share sections of the loaded file config (after includes), including
        ``homes``/``printers``; registry shares are not among them.

        Only names that are still sections of smb.conf or an included file: a
        reload adds and updates services but never drops one (smbd drops unused
        ones itself, ``lp_killunused``), so a deleted section would linger."""
        with LOCK:
            self._ensure_loaded()
            present = {n.casefold() for _path, sections in self._txt for n, _ in sections}
            return [str(s) for s in self._lp.services() if str(s).casefold() in present]

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
        first in this process (an lp.load of a config with ``include = registry``
        does) pins it, and init_reg would silently use that one."""
        ours = os.path.realpath(os.path.join(self.state_dir, "registry.tdb"))
        other = sorted(p for p in open_registry_files() if p != ours)
        if other:
            raise SambaConfigError(
                f"this process already has {other[0]} open (python-samba keeps the first "
                f"registry.tdb for the life of the process); {self.config_file} needs {ours}: "
                "use one Samba configuration per process"
            )

    def registry_share(self, name: str) -> ShareDefinition | None:
        """A registry share by case-insensitive name, read live (~30 us; through
        :attr:`registry_reader` when set)."""
        with LOCK:
            if self.registry_reader is not None:
                found = self.registry_reader(name)
                if found is None:
                    return None
                return ShareDefinition(found[0], tuple(found[1]), "registry")
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

    def file_share(self, name: str) -> ShareDefinition | None:
        """A share section as written in smb.conf or an included file (first match)."""
        with LOCK:
            for path, sections in self._txt:
                for n, params in sections:
                    if n.casefold() == name.casefold() and n.casefold() != "global":
                        return ShareDefinition(n, tuple(params), path)
            return None

    def share_definition(self, name: str) -> ShareDefinition | None:
        """File first, then registry: the order smbd resolves names in."""
        return self.file_share(name) or (
            self.registry_share(name) if self.registry_shares else None
        )

    def watched_files(self) -> Iterator[str]:
        return iter(self._stamps)
