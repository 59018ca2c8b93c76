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
