"""The agent's first start on a fresh machine: before smbd has ever made registry.tdb.

The agent's unit runs before smbd's, so on a new server registry.tdb does not
exist yet when the agent starts.  The agent then used to fall back, for good,
to python-samba's worker child for every registry share (~30 MB, slower, and
its check created registry.tdb itself).  Now it keeps its own registry code
and looks again when the registry is used; smbd, which every FSRVP call
passes through, has made the file by then.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from remotevss.agent import admin
from remotevss.samba.private import PrivateAgent, PrivateSamba, missing_tools
from tests.conftest import LoopFs
from tests.support.samba_agent import subvolume_shares

_missing = missing_tools("smbd", "smbpasswd", "rpcclient", "smbclient")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba tools: {_missing}"),
]


def test_agent_started_before_smbd_ever_ran_keeps_the_registry_in_the_agent(
    loopfs: LoopFs, tmp_path: Path,
) -> None:
    shares = subvolume_shares(loopfs("btrfs"), ["data"])
    # registry shares = yes alone, as `remotevss setup samba` writes it
    samba = PrivateSamba(tmp_path / "samba", shares, samba_fsrvp=False, include_registry=False)
    samba.write_config()
    registry = samba.root / "state" / "registry.tdb"
    agent = PrivateAgent(tmp_path / "agent", samba, snapshot_names="gmt")
    try:
        agent.start()
        assert not registry.exists(), "the agent made registry.tdb: smbd's job"
        samba.start()
        assert registry.exists(), "smbd makes registry.tdb when it starts"
        out = samba.rpcclient("fss_create_expose backup ro data", check=False)
        assert out.returncode == 0, out.stdout + out.stderr + agent.log.read_text()
        name = next(w for w in out.stdout.split() if w.startswith("data@{"))
        got = samba.smbclient(name, "get file.txt -")
        assert "data content" in got.stdout, got.stdout + got.stderr
        io = admin.request(f"{agent.socket}.admin", "status")["io"]
        assert io["registry_ops_agent"] > 0, io
        assert io["registry_ops_samba_worker"] == 0 and io["registry_ops_light_child"] == 0, io
        log = agent.log.read_text()
        assert "python-samba" not in log, log
        assert "checked when first used" in log  # it said why it did not decide at start
    finally:
        agent.stop()
        samba.stop()


def test_a_write_before_smbd_ever_ran_lets_samba_make_the_registry(
    tmp_path: Path,
) -> None:
    """No smbd yet, and still a share to write (through the agent's own socket): the
    file is made by Samba's libsmbconf, once, and the agent's own code does the rest."""
    from remotevss.samba.conf import SambaConf
    from remotevss.samba.registry_exposer import RegistryExposer

    data = tmp_path / "data"
    data.mkdir()
    samba = PrivateSamba(tmp_path / "samba", {"data": data}, samba_fsrvp=False,
                         include_registry=False)
    samba.write_config()
    registry = samba.root / "state" / "registry.tdb"
    exposer = RegistryExposer(SambaConf(samba.conf))
    try:
        assert not registry.exists()
        assert exposer.exposed() == {}, "no registry yet: nothing exposed"
        exposer.unexpose("data@{11111111-2222-3333-4444-555555555555}")  # nothing to delete
        exposer.expose("data@{11111111-2222-3333-4444-555555555555}", "data", str(data), False)
        assert registry.exists()
        exposer.expose("data@{66666666-2222-3333-4444-555555555555}", "data", str(data), False)
        names = sorted(exposer.exposed())
        assert len(names) == 2, names
        listed = samba.net("conf", "listshares").stdout.split()
        assert set(names) <= set(listed), listed  # Samba reads both
        io = exposer.io_counters()
        assert io["registry_ops_samba_worker"] == 1, io  # the first write only
        assert io["registry_ops_agent"] >= 2, io
    finally:
        exposer.close()
