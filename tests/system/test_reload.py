"""SIGHUP, key by key: every configuration key takes effect on reload or is named
as needing a restart (agent/reload.py; docs/operations.md's table).

The keys come from the configuration schema (the dataclasses), not from a list
here: a key added without a reload rule, or without a value to change it to
below, fails this test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from remotevss.agent.authz import policy_for
from remotevss.agent.config import AgentConfig, LogConfig, ShareConfig
from remotevss.agent.reload import RELOAD, RESTART, RULES, flat, with_key
from remotevss.agent.rpc_security import RpcAuthenticator
from remotevss.fsrvp.machine import Mode
from tests.system.ops_harness import Agent, running_agent

#: For every key, a valid value other than the harness's.
OTHER: dict[str, Any] = {
    "socket_path": "/run/elsewhere.sock",
    "socket_group": "0",
    "state_dir": "/var/lib/elsewhere",
    "expose_dir": "/run/elsewhere",
    "mode": Mode.SAMBA,
    "sequence_timeout": 7.0,
    "netbios_name": "OTHERFS",
    "share_name_format": "unc",
    "backend": "reflink",
    "max_connections": 3,
    "snapshot_names": "gmt",
    "shares": (ShareConfig("other", "/srv/other"),),
    "admin_socket": "/run/elsewhere.admin",
    "samba.config_file": "/etc/samba/other.conf",
    "samba.pipe_dir": "/run/samba/other",
    "samba.shares": "agent",
    "samba.expose": "symlink",
    "samba.allowed_sids": ("S-1-5-21-1-2-3-1000",),
    "samba.allowed_groups": ("0",),
    "gc.interval": 3600.0,
    "gc.orphan_after": 60.0,
    "gc.max_age": 120.0,
    "gc.max_age_by_context": (("backup", 30.0),),
    "storage.max": "1073741824",
    "storage.policy": "refuse",
    "log.format": "json",
    "log.level": "debug",
    "log.trace": True,
    "log.events": False,
    "metrics.port": 9999,
    "metrics.address": "127.0.0.2",
    "rpc_auth.min_level": "privacy",
    "rpc_auth.ntlm_auth": ("/usr/bin/other_ntlm_auth",),
    "rpc_auth.helpers": 9,
    "rpc_auth.helper_idle": 5.0,
    "rpc_auth.timeout": 3.0,
    "rpc_auth.identity_mismatch": "allow",
    "rpc_auth.kerberos": "off",
    "rpc_auth.keytab": "/etc/other.keytab",
    "rpc_auth.realm": "OTHER.EXAMPLE",
}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, list[AgentConfig]]]:
    tmp = tmp_path_factory.mktemp("reload")
    share = tmp / "share"
    share.mkdir()
    reload_to: list[AgentConfig] = []
    # gc interval 0: no timer pass races the reloads; events on, at info, captured below
    with running_agent(tmp, {"data": share}, reload_to=reload_to,
                       log=LogConfig(level="info")) as a:  # fmt: skip
        a.ops.rpc_auth = RpcAuthenticator(a.service.config)  # as main.py wires it behind Samba
        try:
            yield a, reload_to
        finally:
            a.ops.rpc_auth.close()


def _reload(a: Agent, reload_to: list[AgentConfig], config: AgentConfig) -> dict[str, Any]:
    """ops.reload() on the agent's loop, as SIGHUP runs it; what its reload event says
    (also kept as ops.last_reload: ``[log] events = false`` silences the event)."""
    reload_to.append(config)
    before = a.ops.reloads

    async def on_loop() -> None:
        a.ops.reload()

    a.run(on_loop())
    assert a.ops.reloads == before + 1 and a.ops.last_reload is not None
    return {"changed": a.ops.last_reload.changed,
            "needs_restart": a.ops.last_reload.needs_restart}  # fmt: skip


def test_every_schema_key_has_a_rule_and_a_test_value() -> None:
    keys = set(flat(AgentConfig()))
    assert keys == set(RULES), (sorted(keys - set(RULES)), sorted(set(RULES) - keys))
    assert keys == set(OTHER), (sorted(keys - set(OTHER)), sorted(set(OTHER) - keys))
    assert set(RULES.values()) == {RELOAD, RESTART}


@pytest.mark.parametrize("key", sorted(flat(AgentConfig())))
def test_reload_applies_or_names_each_key(agent: tuple[Agent, list[AgentConfig]],
                                          key: str) -> None:  # fmt: skip
    a, reload_to = agent
    base = a.service.config
    assert key in RULES, f"{key}: no reload rule in agent/reload.py"
    assert key in OTHER, f"{key}: no test value in OTHER"
    assert flat(base)[key] != OTHER[key], key
    try:
        event = _reload(a, reload_to, with_key(base, key, OTHER[key]))
        now = flat(a.service.config)
        if RULES[key] == RELOAD:
            assert event["changed"] == [key] and event["needs_restart"] == [], event
            assert now[key] == OTHER[key]  # the running config has it
            assert a.service.config == with_key(base, key, OTHER[key])
            auth = a.ops.rpc_auth
            assert auth is not None
            ra = a.service.config.rpc_auth
            assert (auth.pool.size, auth.pool.timeout, auth.pool.idle_seconds) == (
                ra.helpers, ra.timeout, ra.helper_idle)
            assert (auth.gate.size, auth.gate.timeout) == (ra.helpers, ra.timeout)
            assert a.service.policy == policy_for(a.service.config) or key not in {
                "samba.allowed_sids", "samba.allowed_groups", "rpc_auth.min_level",
                "rpc_auth.identity_mismatch", "rpc_auth.realm"}  # fmt: skip
        else:
            assert event["changed"] == [] and event["needs_restart"] == [key], event
            assert a.service.config == base  # nothing of it applied
            # A start-up prerequisite that does not exist is said now, not at the restart.
            assert a.ops.last_reload is not None
            assert a.ops.last_reload.blocks_restart == (
                ["samba.config_file /etc/samba/other.conf does not exist"]
                if key == "samba.config_file" else []), a.ops.last_reload
    finally:
        back = _reload(a, reload_to, base)
        assert a.service.config == base and back["needs_restart"] == []


def test_unchanged_file_reports_nothing(agent: tuple[Agent, list[AgentConfig]]) -> None:
    a, reload_to = agent
    event = _reload(a, reload_to, replace(a.service.config))
    assert event["changed"] == [] and event["needs_restart"] == []


def test_min_level_reload_changes_who_is_admitted(agent: tuple[Agent, list[AgentConfig]]) -> None:
    from remotevss.agent.authz import Caller

    a, reload_to = agent
    base = a.service.config
    samba_caller = Caller(uid=0, transport="samba", auth_level=5, name="X\\root")
    try:
        _reload(a, reload_to, with_key(base, "rpc_auth.min_level", "integrity"))
        assert a.service.policy.permits(samba_caller)
        _reload(a, reload_to, with_key(base, "rpc_auth.min_level", "privacy"))
        assert not a.service.policy.permits(samba_caller)
        assert "below the required 6" in (a.service.policy.refusal(samba_caller) or "")
    finally:
        _reload(a, reload_to, base)

