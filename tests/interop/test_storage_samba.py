"""``remotevss storage`` behind a real smbd: the shares are Samba's (smb.conf and
registry), not ``[shares]``, whether the agent runs or not (docs/operations.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remotevss.samba.private import missing_tools
from tests.support.samba_agent import agent_behind_samba

_missing = missing_tools("smbd", "smbpasswd", "net")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba tools: {_missing}"),
]

CLI = [sys.executable, "-m", "remotevss.cli"]


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def _limits(state: Path) -> dict[str, str]:
    return dict(json.loads((state / "storage-limits.json").read_text())["volumes"])


def test_resize_takes_samba_share_names_and_refuses_paths_of_no_share(tmp_path: Path) -> None:
    data, reg = tmp_path / "data", tmp_path / "reg"
    data.mkdir()
    reg.mkdir()
    with agent_behind_samba(tmp_path / "w", {"data": data}) as (samba, agent):
        samba.net("conf", "addshare", "reg", str(reg), "writeable=y")
        config = str(agent.config)
        for name, path in (("data", data), ("REG", reg)):  # smb.conf's, the registry's
            p = _cli("storage", "resize", name, "--max", "20%", "--config", config)
            assert p.returncode == 0, p.stdout + p.stderr
            assert f"maximum of {path}: 20%" in p.stdout
        p = _cli("storage", "list", "--json", "--config", config)
        assert {str(data), str(reg)} <= {v["root"] for v in json.loads(p.stdout)}, p.stdout
        p = _cli("storage", "resize", "/etc", "--max", "1G", "--config", config)
        assert p.returncode == 2 and "no maximum would apply" in p.stderr, p.stderr

        agent.stop()  # stopped: the command reads Samba's shares itself
        p = _cli("storage", "resize", "data", "--max", "25%", "--config", config)
        assert p.returncode == 0 and "agent not running" in p.stderr, p.stdout + p.stderr
        assert f"maximum of {data}: 25%" in p.stdout
        p = _cli("storage", "resize", "/etc", "--max", "1G", "--config", config)
        assert p.returncode == 2 and "no maximum would apply" in p.stderr, p.stderr
        p = _cli("storage", "list", "--json", "--config", config)
        assert {str(data), str(reg)} <= {v["root"] for v in json.loads(p.stdout)}, p.stdout
        assert _limits(agent.state_dir) == {str(data): "25%", str(reg): "20%"}
