"""What a SIGHUP does with each configuration key: applied at once, or needs a restart.

Why a table: every key of the configuration must have an answer, and the
answer must be said.  A key silently ignored on reload (an administrator
tightens ``[rpc_auth] min_level`` and nothing happens) is worse than a
restart.  The table is keyed like the file (``section.key``; ``[agent]`` keys
by their field name) and checked against the schema: a new key without a rule
fails the tests (tests/system/test_reload.py), never slips through.

Rules:
- ``RELOAD``: the new value is in the running config (read per call:
  sequence timer, snapshot names, share name format), or re-applied by
  ``Operations.reload`` (the authorization policy, the ntlm_auth pool's size
  and timeout, logging, GC, storage).
- ``RESTART``: sockets, paths, shares, the Samba wiring, Kerberos and the
  helper program: listeners and components built once at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from remotevss.agent.config import AgentConfig

RELOAD = "reload"
RESTART = "restart"

RULES: dict[str, str] = {
    "socket_path": RESTART,
    "socket_group": RESTART,  # the socket file's group is set when it is created
    "state_dir": RESTART,
    "expose_dir": RESTART,
    "mode": RESTART,
    "sequence_timeout": RELOAD,
    "netbios_name": RESTART,  # behind Samba it is smb.conf's, never the file's
    "share_name_format": RELOAD,
    "backend": RESTART,
    "max_connections": RESTART,
    "snapshot_names": RELOAD,
    "shares": RESTART,
    "admin_socket": RESTART,
    "samba.config_file": RESTART,
    "samba.pipe_dir": RESTART,
    "samba.shares": RESTART,
    "samba.expose": RESTART,
    "samba.allowed_sids": RELOAD,
    "samba.allowed_groups": RELOAD,
    "gc.interval": RELOAD,
    "gc.orphan_after": RELOAD,
    "gc.max_age": RELOAD,
    "gc.max_age_by_context": RELOAD,
    "storage.max": RELOAD,
    "storage.policy": RELOAD,
    "log.format": RELOAD,
    "log.level": RELOAD,
    "log.trace": RELOAD,
    "log.events": RELOAD,
    "metrics.port": RESTART,
    "metrics.address": RESTART,
    "rpc_auth.min_level": RELOAD,
    "rpc_auth.ntlm_auth": RESTART,
    "rpc_auth.helpers": RELOAD,
    "rpc_auth.helper_idle": RELOAD,
    "rpc_auth.timeout": RELOAD,
    "rpc_auth.identity_mismatch": RELOAD,
    "rpc_auth.kerberos": RESTART,
    "rpc_auth.keytab": RESTART,
    "rpc_auth.realm": RELOAD,
}

#: Keys the authorization policy is built from (authz.policy_for): a reload that
#: changes one rebuilds it.
POLICY_KEYS = frozenset({
    "samba.allowed_sids", "samba.allowed_groups", "rpc_auth.min_level",
    "rpc_auth.identity_mismatch", "rpc_auth.realm",
})  # fmt: skip


def flat(config: AgentConfig) -> dict[str, Any]:
    """Every key of ``config``: ``[agent]`` fields by name, sections as ``section.key``."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            for sub in fields(value):
                out[f"{f.name}.{sub.name}"] = getattr(value, sub.name)
        else:
            out[f.name] = value
    return out


def with_key(config: AgentConfig, key: str, value: Any) -> AgentConfig:
    """``config`` with one key (as :func:`flat` names it) set to ``value``."""
    section, _, name = key.partition(".")
    if not name:
        return replace(config, **{section: value})
    return replace(config, **{section: replace(getattr(config, section), **{name: value})})


@dataclass(frozen=True)
class ReloadPlan:
    config: AgentConfig  # the running config from now on
    changed: list[str]  # keys applied
    needs_restart: list[str]  # keys that differ but wait for a restart
    #: Why the agent would not start with the new file (checked now, not at the
    #: next restart, when a service manager finds out the hard way).
    blocks_restart: list[str] = field(default_factory=list)


def plan(old: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """The config to run with: ``old`` with every ``RELOAD`` key of ``new``."""
    before, after = flat(old), flat(new)
    missing = sorted(set(before) - set(RULES))
    if missing:  # a programming error: tests/system/test_reload.py catches it first
        raise KeyError(f"no reload rule for {', '.join(missing)}")
    changed = [k for k in before if before[k] != after[k] and RULES[k] == RELOAD]
    restart = [k for k in before if before[k] != after[k] and RULES[k] == RESTART]
    config = old
    for key in changed:
        config = with_key(config, key, after[key])
    return ReloadPlan(config, changed, restart, _start_problems(new, restart))


def _start_problems(new: AgentConfig, restart: list[str]) -> list[str]:
    """What a restart-only key now names that does not exist (the start would fail)."""
    problems = []
    if "samba.config_file" in restart and new.samba.config_file and not os.path.isfile(
            new.samba.config_file):
        problems.append(f"samba.config_file {new.samba.config_file} does not exist")
    return problems
