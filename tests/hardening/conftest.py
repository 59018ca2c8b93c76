"""Fixtures of the hardening tests: one private Samba + agent stack for the session.

Why one stack: starting smbd, samba-dcerpcd and the agent costs ~1-2 s, and the
whole hardening suite must fit in CI's budget (~90 s).  Tests that kill or
break a piece put it back (and check it) before they return.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.harness import SambaAgent, Stack
from tests.support.samba import PrivateSamba

SAMBA_TOOLS = ("smbd", "net", "smbpasswd", "mkfs.btrfs", "pgrep")


def _missing_samba() -> list[str]:
    missing = [t for t in SAMBA_TOOLS if shutil.which(t) is None]
    if not Path("/usr/libexec/samba/samba-dcerpcd").exists():
        missing.append("samba-dcerpcd")
    return missing


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if os.geteuid() != 0:
        pytest.skip("needs root (smbd, loop btrfs)")
    if missing := _missing_samba():
        pytest.skip(f"missing Samba/system tools: {missing}")
    btrfsutil = pytest.importorskip("btrfsutil")
    pytest.importorskip("samba.samba3.smbconf", reason="python3-samba is not installed")
    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("hardening-stack")
    with loop_filesystem("btrfs", 512, work) as mnt:
        shares = {}
        for name in ("data0", "data1"):
            btrfsutil.create_subvolume(str(mnt / name))
            (mnt / name / "f.txt").write_text(f"{name} v1\n")
            shares[name] = mnt / name
        samba = PrivateSamba(
            work / "samba", dict(shares), samba_fsrvp=False, netbios_name="HARDFS",
            extra_global={"map to guest": "Bad User", "restrict anonymous": "0"},
            share_options={n: {"guest ok": "yes"} for n in shares},
        )  # fmt: skip
        (work / "agent").mkdir()
        agent = SambaAgent(work / "agent", {}, sequence_timeout=30, samba_conf=samba.conf)
        st = Stack(samba, agent, shares)
        try:
            samba.start()
            agent.start()
            yield st
        finally:
            agent.stop()
            samba.stop()


@pytest.fixture
def clean_stack(stack: Stack) -> Iterator[Stack]:
    """The stack, checked consistent and empty before and after the test."""
    if stack.agent.proc is None or stack.agent.proc.poll() is not None:
        stack.agent.start()
    j = stack.check()
    assert j.sets == {}, j.sets
    yield stack
    if stack.agent.proc is None or stack.agent.proc.poll() is not None:
        stack.agent.start()
    j = stack.check()
    assert j.sets == {}, f"left behind: {j.sets}"
