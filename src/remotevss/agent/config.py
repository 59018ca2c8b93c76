"""Agent configuration: one TOML file, every key optional, defaults that work.

Why a typed dataclass and not a dict: a typo in the file must fail at start
with the key's name, not surface as a wrong default at 3 a.m.  See
``docs/configuration.md`` for every key.
"""

from __future__ import annotations

import grp
import math
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from remotevss.fsrvp import contexts
from remotevss.fsrvp.machine import Mode

BACKEND_NAMES = ("auto", "btrfs", "reflink", "copy", "zfs", "zfs-enclosing")


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


CONTEXT_NAMES = contexts.CONFIG_NAMES  # [gc.max_age_by_context] keys
STORAGE_POLICIES = ("delete_oldest", "refuse")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class GcConfig:
    """Orphan collection (docs/operations.md); seconds, 0 turns a rule off."""

    interval: float = 300.0  # between passes (one runs at start-up too); 0: start-up only
    orphan_after: float = 12 * 3600.0  # auto-release sets with no FSRVP call for this long
    max_age: float = 24 * 3600.0  # any shadow copy older than this (Windows' 24 h)
    max_age_by_context: tuple[tuple[str, float], ...] = ()  # (context name, seconds) overrides

    def max_age_for(self, context_name: str) -> float:
        return dict(self.max_age_by_context).get(context_name, self.max_age)


@dataclass(frozen=True)
class StorageConfig:
    """Shadow storage limit for volumes without one set by ``remotevss storage resize``."""

    max: str = "unbounded"  # bytes ("10G", "512MiB"), percent of the filesystem ("20%")
    policy: str = "delete_oldest"  # or "refuse": what a commit over the limit does


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"  # "text" or "json" (one JSON object per line)
    level: str = "warning"
    trace: bool = False  # every PDU and effect (the vsstrace equivalent)
    events: bool = True  # one JSON event line per FSRVP call and per GC deletion


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0  # Prometheus endpoint; 0 = off
    address: str = "127.0.0.1"


@dataclass(frozen=True)
class RpcAuthConfig:
    """DCE/RPC authentication on the Samba pipe (docs/security.md)."""

    #: Lowest auth level a call may run at: "integrity" (MS-FSRVP 3.1.4), "privacy",
    #: or "none" (compatibility: rpcclient/smbtorture without sign/seal).
    min_level: str = "integrity"
    ntlm_auth: tuple[str, ...] = ("ntlm_auth",)  # Samba's helper (argv prefix)
    #: At most this many ntlm_auth helpers (~16 MB each), so at most this many
    #: connections authenticating at once; others wait up to ``timeout``.
    helpers: int = 2
    helper_idle: float = 30.0  # seconds an idle helper is kept (0: until the agent stops)
    timeout: float = 10.0  # per helper answer (a domain member waits for its DC)
    #: The RPC identity must be the SMB session's user ("refuse"), or a mismatch is
    #: logged and the SMB session's token authorizes ("allow").
    identity_mismatch: str = "refuse"
    #: Kerberos (auth type 16, and SPNEGO carrying it): "auto" when the keytab is
    #: readable and holds keys, "on" (refuse to start without them), "off".
    kerberos: str = "auto"
    #: Empty: smb.conf's ``dedicated keytab file``, else KRB5_KTNAME, else /etc/krb5.keytab.
    keytab: str = ""
    #: The realm whose principals are this server's users (user@REALM is the SMB
    #: user REALM's domain\\user).  Empty: smb.conf's ``realm``.
    realm: str = ""


KERBEROS_MODES = ("auto", "on", "off")
RPC_AUTH_LEVELS = {"none": 1, "integrity": 5, "privacy": 6}


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
    #: "unique": @GMT-<second>.<usec>-<copy id>; "gmt": exact @GMT-<second> (shadow_copy2)
    snapshot_names: str = "unique"
    shares: tuple[ShareConfig, ...] = ()
    samba: SambaConfig = field(default_factory=SambaConfig)
    admin_socket: str = ""  # status/storage requests; default: <socket>.admin
    gc: GcConfig = field(default_factory=GcConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    rpc_auth: RpcAuthConfig = field(default_factory=RpcAuthConfig)

    @property
    def journal_path(self) -> Path:
        return Path(self.state_dir) / "journal.sqlite3"

    @property
    def admin_socket_path(self) -> str:
        return self.admin_socket or self.socket_path + ".admin"


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
    "admin_socket": "admin_socket",
    "snapshot_names": "snapshot_names",
}


def load_config(path: str | Path | None, **overrides: Any) -> AgentConfig:
    """Read ``path`` (None = defaults only) and apply command-line overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    unknown = set(data) - {"agent", "shares", "samba", *_OPS_SECTIONS}
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
    kwargs.update(_ops_sections(data))
    special = ("shares", "samba_config")
    kwargs.update({k: v for k, v in overrides.items() if v is not None and k not in special})
    shares.extend(overrides.get("shares") or ())
    kwargs["shares"] = tuple(shares)
    return _validated(kwargs)


_OPS_SECTIONS = ("gc", "storage", "log", "metrics", "rpc_auth")


def _seconds(section: str, key: str, value: Any) -> float:
    if not _finite(value) or value < 0:
        raise ConfigError(f"[{section}] {key} must be a finite number of seconds >= 0")
    return float(value)


def _finite(value: Any) -> bool:
    """A real number: TOML and ``float()`` accept nan and inf, which no timer can
    use (nan compares false with everything, so a nan deadline never fires)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _keys(section: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    if unknown := set(table) - allowed:
        raise ConfigError(f"[{section}] unknown key(s): {', '.join(sorted(unknown))}")
    return dict(table)


def _ops_sections(data: dict[str, Any]) -> dict[str, Any]:
    """[gc], [storage], [log], [metrics] (docs/configuration.md, docs/operations.md)."""
    from remotevss.agent.sizes import parse_limit

    out: dict[str, Any] = {}
    gc = _keys("gc", data.get("gc", {}), {f.name for f in fields(GcConfig)})
    for key in ("interval", "orphan_after", "max_age"):
        if key in gc:
            gc[key] = _seconds("gc", key, gc[key])
    by_ctx = _keys("gc.max_age_by_context", gc.get("max_age_by_context", {}), set(CONTEXT_NAMES))
    gc["max_age_by_context"] = tuple(
        sorted((k, _seconds("gc.max_age_by_context", k, v)) for k, v in by_ctx.items())
    )
    out["gc"] = GcConfig(**gc)
    st = _keys("storage", data.get("storage", {}), {f.name for f in fields(StorageConfig)})
    if "max" in st:
        if isinstance(st["max"], bool) or not isinstance(st["max"], str | int):
            raise ConfigError('[storage] max must be a string ("10G", "20%", "unbounded") '
                              "or a number of bytes")
        try:
            st["max"] = str(parse_limit(st["max"]))
        except ValueError as exc:
            raise ConfigError(f"[storage] max: {exc}") from exc
    if st.get("policy", "delete_oldest") not in STORAGE_POLICIES:
        raise ConfigError(f"[storage] policy must be one of {', '.join(STORAGE_POLICIES)}")
    out["storage"] = StorageConfig(**st)
    lg = _keys("log", data.get("log", {}), {f.name for f in fields(LogConfig)})
    if lg.get("format", "text") not in ("text", "json"):
        raise ConfigError('[log] format must be "text" or "json"')
    if str(lg.get("level", "warning")).lower() not in LOG_LEVELS:
        raise ConfigError(f"[log] level must be one of {', '.join(LOG_LEVELS)}")
    for key in ("trace", "events"):
        if key in lg and not isinstance(lg[key], bool):
            raise ConfigError(f"[log] {key} must be true or false")
    if "level" in lg:
        lg["level"] = str(lg["level"]).lower()
    out["log"] = LogConfig(**lg)
    mt = _keys("metrics", data.get("metrics", {}), {f.name for f in fields(MetricsConfig)})
    port = mt.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("[metrics] port must be 0 (off) or a TCP port")
    if not isinstance(mt.get("address", ""), str):
        raise ConfigError("[metrics] address must be a string")
    out["metrics"] = MetricsConfig(**mt)
    out["rpc_auth"] = _rpc_auth(data.get("rpc_auth", {}))
    return out


def _rpc_auth(table: Any) -> RpcAuthConfig:
    ra = _keys("rpc_auth", table, {f.name for f in fields(RpcAuthConfig)})
    if ra.get("min_level", "integrity") not in RPC_AUTH_LEVELS:
        raise ConfigError(f"[rpc_auth] min_level must be one of {', '.join(RPC_AUTH_LEVELS)}")
    if ra.get("identity_mismatch", "refuse") not in ("refuse", "allow"):
        raise ConfigError('[rpc_auth] identity_mismatch must be "refuse" or "allow"')
    if "ntlm_auth" in ra:
        argv = ra["ntlm_auth"]
        if isinstance(argv, str):
            argv = [argv]
        if not argv or not all(isinstance(a, str) and a for a in argv):
            raise ConfigError("[rpc_auth] ntlm_auth must be a program or a list of arguments")
        ra["ntlm_auth"] = tuple(argv)
    if ra.get("kerberos", "auto") not in KERBEROS_MODES:
        raise ConfigError('[rpc_auth] kerberos must be "auto", "on" or "off"')
    for key in ("keytab", "realm"):
        if not isinstance(ra.get(key, ""), str):
            raise ConfigError(f"[rpc_auth] {key} must be a string")
    helpers = ra.get("helpers", RpcAuthConfig.helpers)
    if isinstance(helpers, bool) or not isinstance(helpers, int) or not 1 <= helpers <= 64:
        raise ConfigError("[rpc_auth] helpers must be a number from 1 to 64")
    if "timeout" in ra:
        ra["timeout"] = _seconds("rpc_auth", "timeout", ra["timeout"])
    if "helper_idle" in ra:
        ra["helper_idle"] = _seconds("rpc_auth", "helper_idle", ra["helper_idle"])
    return RpcAuthConfig(**ra)


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
    for key in ("socket_path", "socket_group", "state_dir", "expose_dir", "netbios_name",
                "admin_socket"):
        if key in kwargs and not isinstance(kwargs[key], str):
            raise ConfigError(f"{key} must be a string ({types[key]})")
    if "socket_group" in kwargs:  # the sockets' group: unknown fails here, not at bind
        try:
            group_id(kwargs["socket_group"])
        except ConfigError as exc:
            raise ConfigError(f"socket_group: {exc}") from exc
    timeout = kwargs.get("sequence_timeout")
    if timeout is not None and (not _finite(timeout) or timeout < 0):
        raise ConfigError("sequence_timeout must be a finite number of seconds >= 0")
    if kwargs.get("share_name_format", "bare") not in ("bare", "unc"):
        raise ConfigError('share_name_format must be "bare" or "unc"')
    if kwargs.get("snapshot_names", "unique") not in ("unique", "gmt"):
        raise ConfigError('snapshot_names must be "unique" or "gmt"')
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
