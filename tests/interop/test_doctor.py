"""`remotevss doctor` against a private Samba and agent: passes when all is well, and
names the failure and its fix when one prerequisite is broken."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from remotevss.samba.private import missing_tools
from tests.conftest import LoopFs
from tests.support.samba_agent import agent_behind_samba, subvolume_shares

CLI = [sys.executable, "-m", "remotevss.cli"]


def doctor(config: Path) -> tuple[int, dict[str, dict[str, str]]]:
    p = subprocess.run([*CLI, "doctor", "--config", str(config), "--json"], capture_output=True,
                       text=True, timeout=120, check=False)
    return p.returncode, {c["name"]: c for c in json.loads(p.stdout)}


@pytest.mark.root
def test_doctor_passes_then_names_each_broken_prerequisite(loopfs: LoopFs, tmp_path: Path) -> None:
    if missing := missing_tools("smbd", "winbindd", "ntlm_auth"):
        pytest.skip(f"not installed: {', '.join(missing)}")
    shares = subvolume_shares(loopfs("btrfs"), ["data"])
    with agent_behind_samba(tmp_path, shares, winbind=True, min_level="integrity") as (samba,
                                                                                       agent):
        rc, checks = doctor(agent.config)
        assert rc == 0, checks
        assert checks["share [data]"]["result"] == "ok"
        assert "btrfs" in checks["share [data]"]["detail"]
        assert checks["winbindd via ntlm_auth"]["result"] == "ok"
        assert checks["FSRVP pipe socket"]["result"] == "ok"

        conf = samba.conf.read_text()
        samba.conf.write_text(conf.replace("vfs objects = btrfs", "vfs objects = btrfs nosuchmodule")
                              .replace("rpc start on demand helpers = false",
                                       "rpc start on demand helpers = yes"))
        rc, checks = doctor(agent.config)
        assert rc == 1
        assert checks["VFS modules"]["result"] == "FAIL"
        assert "nosuchmodule" in checks["VFS modules"]["detail"]
        assert checks["VFS modules"]["fix"] == "apt-get install samba-vfs-modules"
        assert checks["rpc start on demand helpers"]["result"] == "FAIL"
        samba.conf.write_text(conf)

        for p in samba.procs:  # winbindd is the last daemon started
            if "winbindd" in " ".join(map(str, p.args)):
                p.terminate()
                p.wait(30)
        rc, checks = doctor(agent.config)
        assert rc == 1 and checks["winbindd via ntlm_auth"]["result"] == "FAIL", checks
        assert "winbind" in checks["winbindd via ntlm_auth"]["fix"]

        agent.stop()
        rc, checks = doctor(agent.config)
        assert rc == 1
        assert checks["agent"]["result"] == "FAIL" and checks["FSRVP pipe socket"]["result"] == "FAIL"


def test_doctor_exit_2_on_an_unreadable_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("[agent\n")
    p = subprocess.run([*CLI, "doctor", "--config", str(bad)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "agent configuration" in p.stdout
