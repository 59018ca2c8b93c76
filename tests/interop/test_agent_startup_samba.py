"""The agent's start-up output behind a real smbd whose smb.conf says ``log level = 2``
(common on servers being debugged): the serving line counts the shares the agent
serves (Samba's), and python-samba's parser prints nothing (no ``Processing
section`` line per share per load on the agent's stderr)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from remotevss.samba.private import missing_tools
from tests.support.samba_agent import agent_behind_samba

_missing = missing_tools("smbd", "smbpasswd")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba tools: {_missing}"),
]


def test_startup_line_counts_samba_shares_and_samba_is_quiet(tmp_path: Path) -> None:
    shares = {}
    for name in ("alpha", "beta", "gamma"):
        shares[name] = tmp_path / name
        shares[name].mkdir()
    with agent_behind_samba(tmp_path / "w", shares, samba_options={
            "extra_global": {"log level": "2"},
            "extra_lines": ["[printers]", "path = /tmp", "printable = yes"]}) as (samba, agent):
        deadline = time.monotonic() + 10
        while "serving FSRVP" not in agent.log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        samba.rpcclient("fss_get_sup_version")  # a call: the share table is read again
        time.sleep(0.2)
        text = agent.log.read_text(errors="replace")
    (line,) = [x for x in text.splitlines() if "serving FSRVP" in x]
    assert re.search(r"\(3 share\(s\) from Samba, mode spec\)", line), line
    assert "Processing section" not in text, text[:2000]


def _python_samba_libraries(pid: int) -> list[str]:
    """python-samba's extension modules and Samba's private libraries mapped by ``pid``."""
    with open(f"/proc/{pid}/maps") as f:
        return sorted({ln.split()[-1] for ln in f if "/samba/" in ln and ".so" in ln})


def test_agent_reads_smb_conf_in_a_child_and_sees_each_change_at_the_next_call(
    tmp_path: Path,
) -> None:
    """Behind a real smbd the agent process never loads python-samba (its loadparm
    runs in a short-lived child); a share added to smb.conf, its path changed, then
    the share removed: each is what the very next call sees.  A config Samba cannot
    load is reported in the log and the last good one is kept."""
    from remotevss.client.local import LocalClient
    from remotevss.fsrvp.constants import HResult

    plain = tmp_path / "plain"
    plain.mkdir()
    with agent_behind_samba(tmp_path / "w", {"data": plain}) as (samba, agent):
        assert agent.proc is not None
        assert _python_samba_libraries(agent.proc.pid) == []
        original = samba.conf.read_text()
        with LocalClient(str(agent.socket)) as c:

            def answer() -> tuple[int, bool]:
                r = c.is_path_supported("\\\\whatever\\Later\\")  # the host part never matters
                return r.return_value, r.supported_by_this_provider

            assert answer()[0] == HResult.FSRVP_E_OBJECT_NOT_FOUND  # no such share
            samba.conf.write_text(original + f"[later]\npath = {plain}\n")
            assert answer() == (HResult.ZERO, True)  # added
            samba.conf.write_text(original + "[later]\npath = /home/%U\n")
            unsupported = (HResult.FSRVP_E_NOT_SUPPORTED, False)
            assert answer() == unsupported  # the new path: per-user (%U), not snapshot-capable
            samba.conf.write_text(original + f"[later]\npath = {plain}\n[broken\n")
            assert answer() == unsupported  # Samba cannot load it: the last good one is kept
            samba.conf.write_text(original)
            assert answer()[0] == HResult.FSRVP_E_OBJECT_NOT_FOUND  # removed
        log = agent.log.read_text(errors="replace")
        assert "Unable to load file" in log and "still using the configuration read" in log
        assert _python_samba_libraries(agent.proc.pid) == []
