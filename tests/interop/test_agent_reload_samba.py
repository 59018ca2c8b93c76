"""SIGHUP on a real agent behind a private smbd: an unchanged file reloads to no
change at all (the netbios name is smb.conf's, not the file's), ``[rpc_auth]
min_level`` takes effect on the next call (rpcclient without sign/seal is let
in, then refused), ``snapshot_names`` is applied, ``mode`` is named as needing
a restart.  Key by key: tests/system/test_reload.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from remotevss.samba.private import PrivateAgent, PrivateSamba, missing_tools
from tests.support.samba_agent import agent_behind_samba

_missing = missing_tools("smbd", "rpcclient", "smbpasswd")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba tools: {_missing}"),
]


def _events(agent: PrivateAgent) -> list[dict[str, Any]]:
    text = agent.log.read_text(errors="replace")
    return [json.loads(line.split("remotevss.events INFO ", 1)[1])
            for line in text.splitlines() if "remotevss.events INFO " in line]  # fmt: skip


def _sighup(agent: PrivateAgent) -> dict[str, Any]:
    before = len([e for e in _events(agent) if e.get("event") == "reload"])
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while True:
        reloads = [e for e in _events(agent) if e.get("event") == "reload"]
        if len(reloads) > before:
            return reloads[-1]
        assert time.monotonic() < deadline, agent.log.read_text()[-2000:]
        time.sleep(0.05)


def _unauthenticated_call(samba: PrivateSamba) -> str:
    r = samba.rpcclient("fss_get_sup_version", check=False)
    return r.stdout + r.stderr


def test_sighup_behind_samba(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    with agent_behind_samba(tmp_path / "w", {"data": share}, min_level="none") as (samba, agent):
        assert "supports FSRVP versions" in _unauthenticated_call(samba)

        # the file as it was: nothing changed, nothing waits for a restart
        event = _sighup(agent)
        assert event["changed"] == [] and event["needs_restart"] == [], event

        text = agent.config.read_text()
        text = text.replace('min_level = "none"', 'min_level = "integrity"')
        text = text.replace('snapshot_names = "unique"', 'snapshot_names = "gmt"')
        agent.config.write_text(text)
        event = _sighup(agent)
        assert sorted(event["changed"]) == ["rpc_auth.min_level", "snapshot_names"], event
        assert event["needs_restart"] == [], event
        out = _unauthenticated_call(samba)
        assert re.search(r"(?i)access.?denied|0x80070005", out), out
        assert "below the required 5" in agent.log.read_text()

        agent.config.write_text(text.replace('mode = "spec"', 'mode = "samba"'))
        event = _sighup(agent)
        assert event["changed"] == [] and event["needs_restart"] == ["mode"], event
        assert "mode changed but only take effect at restart" in agent.log.read_text()
