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
        # a standalone server: binds naming another domain (rpcclient's -U root sends
        # WORKGROUP) go to the local SAM without winbindd; only SERVER\user needs it
        detail = checks["winbindd via ntlm_auth"]["detail"]
        assert "every NTLM RPC bind" not in detail and "local SAM" in detail, detail

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


@pytest.mark.root
def test_doctor_checks_registry_shares_and_the_agent_warns_why_it_refuses_one(
    tmp_path: Path,
) -> None:
    """A ``net conf addshare`` share whose directory went: the agent serves registry
    shares, so doctor checks them too, and the agent's refusal says why at WARNING
    (the client only sees FSRVP_E_NOT_SUPPORTED)."""
    if missing := missing_tools("smbd", "net"):
        pytest.skip(f"not installed: {', '.join(missing)}")
    from remotevss.client.local import LocalClient
    from remotevss.fsrvp.constants import HResult

    data, gone = tmp_path / "data", tmp_path / "gone"
    data.mkdir()
    gone.mkdir()
    with agent_behind_samba(tmp_path / "w", {"data": data}) as (samba, agent):
        samba.net("conf", "addshare", "gone", str(gone), "writeable=y")
        rc, checks = doctor(agent.config)
        assert checks["registry share [gone]"]["result"] in ("ok", "warn"), checks  # copy: warn
        failed = {n for n, c in checks.items() if c["result"] == "FAIL"}
        gone.rmdir()
        rc, checks = doctor(agent.config)
        assert rc == 1, checks
        assert checks["registry share [gone]"]["result"] == "FAIL"
        assert "not an existing directory" in checks["registry share [gone]"]["detail"]
        assert {n for n, c in checks.items() if c["result"] == "FAIL"} - failed == {
            "registry share [gone]"}
        with LocalClient(str(agent.socket)) as c:
            r = c.is_path_supported("\\\\localhost\\gone\\")
            assert r.return_value == HResult.FSRVP_E_NOT_SUPPORTED
        (line,) = [x for x in agent.log.read_text().splitlines()
                   if "share gone not supported" in x]
        assert "WARNING" in line and "not an existing directory" in line, line


def test_doctor_fails_the_configuration_on_an_unknown_socket_group(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('[agent]\nsocket_group = "nosuchgroup"\n')
    rc, checks = doctor(bad)
    assert rc == 2
    assert checks["agent configuration"]["result"] == "FAIL"
    assert "unknown unix group 'nosuchgroup'" in checks["agent configuration"]["detail"]
