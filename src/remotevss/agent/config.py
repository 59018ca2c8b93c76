"""Agent configuration: one TOML file, every key optional, defaults that work.

Why a typed dataclass and not a dict: a typo in the file must fail at start
with the key's name, not surface as a wrong default at 3 a.m.  See
``docs/configuration.md`` for every key.
"""

from __future__ import annotations

import grp
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from remotevss.fsrvp.machine import Mode

BACKEND_NAMES = ("auto", "btrfs", "reflink", "copy")


class ConfigError(ValueError):
    """The configuration file is invalid; the message names the key."""


@dataclass(frozen=True)
class ShareConfig:
    name: str
    path: str
    backend: str = "auto"


@dataclass(frozen=True)
class SambaConfig:
    """How the agent sits behind Samba (empty ``config_file``: no Samba)."""

    config_file: str = ""  # e.g. /etc/samba/smb.conf; enables the pipe, shares and exposure
    pipe_dir: str = ""  # where smbd looks for np sockets; default: <ncalrpc dir>/np from Samba
    shares: str = "samba"  # "samba": shares come from Samba's config; "agent": from [shares]
    expose: str = "registry"  # "registry": share@{guid} as a Samba registry share; "symlink"
    allowed_sids: tuple[str, ...] = ()  # admitted besides Administrators and Backup Operators
    allowed_groups: tuple[str, ...] = ()  # unix groups (names or gids) of admitted SMB users


@dataclass(frozen=True)
class AgentConfig:
    socket_path: str = "/run/remotevss/agent.sock"
    socket_group: str = "root"
    state_dir: str = "/var/lib/remotevss"
    expose_dir: str = "/run/remotevss/exposed"
    mode: Mode = Mode.SPEC
    sequence_timeout: float | None = None  # None: spec values (180/1800 s); 0: timer off
    netbios_name: str = field(default_factory=lambda: socket.gethostname().split(".")[0].upper())
    share_name_format: str = (
        "bare"  # "bare": share@{guid} (Samba, DiskShadow); "unc": \\host\share@{guid}
    )
    backend: str = "auto"
    max_connections: int = 64
    shares: tuple[ShareConfig, ...] = ()
    samba: SambaConfig = field(default_factory=SambaConfig)

    @property
    def journal_path(self) -> Path:
        return Path(self.state_dir) / "journal.sqlite3"


_AGENT_KEYS = {
    "socket": "socket_path",
    "socket_group": "socket_group",
    "state_dir": "state_dir",
    "expose_dir": "expose_dir",
    "mode": "mode",
    "sequence_timeout": "sequence_timeout",
    "netbios_name": "netbios_name",
    "share_name_format": "share_name_format",
    "backend": "backend",
    "max_connections": "max_connections",
}


def load_config(path: str | Path | None, **overrides: Any) -> AgentConfig:
    """Read ``path`` (None = defaults only) and apply command-line overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    unknown = set(data) - {"agent", "shares", "samba"}
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in dict(data.get("agent", {})).items():
        if key not in _AGENT_KEYS:
            raise ConfigError(f"[agent] unknown key {key!r}")
        kwargs[_AGENT_KEYS[key]] = value
    shares = [_share(name, spec) for name, spec in dict(data.get("shares", {})).items()]
    samba = dict(data.get("samba", {}))
    samba_keys = {f.name for f in fields(SambaConfig)}
    if set(samba) - samba_keys:
        raise ConfigError(f"[samba] unknown key(s): {', '.join(sorted(set(samba) - samba_keys))}")
    for key, value in samba.items():
        if key in _SAMBA_LISTS:
            samba[key] = _string_list(key, value)
        elif not isinstance(value, str):
            raise ConfigError("[samba] values must be strings")
    if overrides.get("samba_config"):
        samba["config_file"] = overrides["samba_config"]
    kwargs["samba"] = SambaConfig(**samba)
    if kwargs["samba"].shares not in ("samba", "agent"):
        raise ConfigError('[samba] shares must be "samba" or "agent"')
    if kwargs["samba"].expose not in ("registry", "symlink"):
        raise ConfigError('[samba] expose must be "registry" or "symlink"')
    special = ("shares", "samba_config")
    kwargs.update({k: v for k, v in overrides.items() if v is not None and k not in special})
    shares.extend(overrides.get("shares") or ())
    kwargs["shares"] = tuple(shares)
    return _validated(kwargs)


_SAMBA_LISTS = ("allowed_sids", "allowed_groups")
_SID_RE = re.compile(r"^S-1-(\d+|0x[0-9a-f]+)(-\d+){0,15}$")  # as Samba prints them


def _string_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[samba] {key} must be a list of strings")
    for v in value:
        if key == "allowed_sids" and not _SID_RE.match(v):
            raise ConfigError(f"[samba] allowed_sids: {v!r} is not a SID (S-1-5-...)")
        if key == "allowed_groups":
            group_id(v)
    return tuple(value)


def group_id(name: str) -> int:
    """A unix group name or number, as a gid (ConfigError if unknown)."""
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError as exc:
        raise ConfigError(f"unknown unix group {name!r}") from exc


def _share(name: str, spec: Any) -> ShareConfig:
    if isinstance(spec, str):
        return ShareConfig(name, spec)
    if isinstance(spec, dict) and set(spec) <= {"path", "backend"} and "path" in spec:
        return ShareConfig(name, str(spec["path"]), str(spec.get("backend", "auto")))
    raise ConfigError(f"[shares] {name!r}: expected a path or {{path=..., backend=...}}")


def _validated(kwargs: dict[str, Any]) -> AgentConfig:
    try:
        if "mode" in kwargs:
            kwargs["mode"] = Mode(kwargs["mode"])
    except ValueError as exc:
        raise ConfigError(f"mode must be one of {[m.value for m in Mode]}") from exc
    types = {f.name: f.type for f in fields(AgentConfig)}
    for key in ("socket_path", "socket_group", "state_dir", "expose_dir", "netbios_name"):
        if key in kwargs and not isinstance(kwargs[key], str):
            raise ConfigError(f"{key} must be a string ({types[key]})")
    timeout = kwargs.get("sequence_timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ConfigError("sequence_timeout must be a number of seconds >= 0")
    if kwargs.get("share_name_format", "bare") not in ("bare", "unc"):
        raise ConfigError('share_name_format must be "bare" or "unc"')
    backends = [kwargs.get("backend", "auto")] + [s.backend for s in kwargs["shares"]]
    for b in backends:
        if b not in BACKEND_NAMES:
            raise ConfigError(f"backend {b!r} is not one of {', '.join(BACKEND_NAMES)}")
    names = [s.name.casefold() for s in kwargs["shares"]]
    if len(names) != len(set(names)):
        raise ConfigError("share names must be unique (case-insensitively)")
    for s in kwargs["shares"]:
        if not s.name or any(ch in s.name for ch in '\\/@{}[]:"|<>+=;,*?') or len(s.name) > 80:
            raise ConfigError(f"invalid share name {s.name!r}")
        if not Path(s.path).is_absolute():
            raise ConfigError(f"share {s.name!r}: path must be absolute")
    mc = kwargs.get("max_connections", 64)
    if not isinstance(mc, int) or mc < 1:
        raise ConfigError("max_connections must be a positive integer")
    return AgentConfig(**kwargs)
