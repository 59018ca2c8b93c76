r"""The client suite of test_client_samba.py, against our agent behind smbd.

Same scenarios, same test functions (imported from test_client_samba.py),
another server: a private smbd without rpcd_fsrvp (docs/samba.md, recipe B)
and ``remotevss agent`` on its pipe in its default ``spec`` mode, shares from
Samba's config, snapshot shares as registry shares.  After every test nothing
may be left on the server: no ``share@{guid}`` registry share and no snapshot
in any share's ``.snapshots``.

What differs from Samba, and why (the tests check the server they run against):

* DCE/RPC authentication: the client binds NTLM at packet privacy by default
  and the agent runs its default policy (``min_level = "integrity"``), with
  credentials checked by Samba's ntlm_auth through a private winbindd (or,
  for a domain other than ``ANCHORFS``, against the passdb as smbd maps it;
  the client names ``-W ANCHORFS``, ``Server.creds``).  Privacy and integrity work
  as against Samba; level ``none`` is refused with E_ACCESSDENIED here
  (Samba's own server accepts it).
* spec-mode codes: a share that does not exist is FSRVP_E_OBJECT_NOT_FOUND
  (Samba: E_INVALIDARG); IsPathShadowCopied is implemented (Samba answers
  NOT_SUPPORTED, "unknown").
* a restart drops committed-but-unexposed sets with their snapshots (Samba
  reloads them from its tdb).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_client_samba import (  # the suite itself, run against the fixtures below
    SHARES,
    Server,
    _make_server,
    clean,
    cli,
    state,
    test_call_timeout_when_the_server_hangs,
    test_every_command_end_to_end,
    test_failures_are_clear,
    test_interrupted_create_cleans_up,
    test_script_mode,
    test_server_stopped_mid_sequence,
)
from test_client_samba import test_auth_levels as _auth_levels
from test_client_samba import test_cli_create_at_other_levels as _create_at_level

from remotevss.samba.private import missing_tools

TOOLS = ("smbd", "smbpasswd", "net", "mkfs.btrfs")
_missing = missing_tools(*TOOLS)
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, loop btrfs)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/system tools: {_missing}"),
]

__all__ = [
    "clean",
    "state",
    "test_call_timeout_when_the_server_hangs",
    "test_every_command_end_to_end",
    "test_failures_are_clear",
    "test_interrupted_create_cleans_up",
    "test_script_mode",
    "test_server_stopped_mid_sequence",
]


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("client-agent")
    with loop_filesystem("btrfs", 512, work) as mnt:
        yield work, mnt


@pytest.fixture(scope="module")
def server(btrfs: tuple[Path, Path]) -> Iterator[Server]:
    work, mnt = btrfs
    s = _make_server(work / "samba", mnt, "share", SHARES, agent=True)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def own_server(btrfs: tuple[Path, Path]) -> Iterator[Server]:
    """A Samba + agent these tests may stop, freeze and restart."""
    work, mnt = btrfs
    name = f"own{int(time.monotonic() * 1000) % 100000}-"
    s = _make_server(work / name, mnt, name, 2, agent=True)
    try:
        yield s
    finally:
        with contextlib.suppress(ProcessLookupError, AssertionError):
            s.signal_fsrvp(signal.SIGCONT)
        s.stop()
    assert s.leftovers() == []


@pytest.mark.parametrize(("level", "sealed"), [("privacy", True), ("integrity", False)])
def test_auth_levels_signed_and_sealed(clean: Server, level: str, sealed: bool) -> None:
    """test_auth_levels' privacy and integrity cases, against our agent."""
    _auth_levels(clean, level, sealed)


def test_cli_create_at_integrity(clean: Server, state: Path) -> None:
    _create_at_level(clean, state, "integrity")


def test_level_none_is_refused_by_the_default_policy(clean: Server, state: Path) -> None:
    """The caller is root: the message names the real cause, the server's policy on
    the auth level, and the way out; not a missing administrator right."""
    r = cli(clean, state, "--auth-level", "none", "--json", "create", clean.unc("share8"))
    assert r.returncode == 4, r.stderr
    assert "E_ACCESSDENIED" in r.stderr, r.stderr
    assert "administrator or backup operator" not in r.stderr, r.stderr
    assert "packet integrity or privacy" in r.stderr and "--auth-level" in r.stderr, r.stderr
    assert clean.leftovers() == []
