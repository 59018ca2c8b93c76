"""Samba's own FSRVP test suite, smbtorture ``rpc.fsrvp``, through smbd against our agent.

A private smbd 4.17 without rpcd_fsrvp (docs/samba.md, recipe B) on a loop
btrfs, share ``fsrvp_share`` (a subvolume; smbtorture hard-codes the name)
with ``vfs objects = shadow_copy2`` and ``shadow:snapdir = .snapshots`` so
that snapshots are previous versions (FSCTL_SRV_ENUM_SNAPS), and a real
``remotevss agent`` process on the pipe: ``mode = "samba"`` (Samba's codes
where smbtorture checks them, docs/decisions.md), ``sequence_timeout = 1``
(smbtorture's ``--option='fss:sequence timeout=1'`` is the client's side),
``snapshot_names = "gmt"`` (exact ``@GMT-`` names shadow_copy2 maps back).
Shares are Samba's and snapshot shares are registry shares.

Each of the 10 tests runs on its own from a clean server (``enum_created``
needs zero snapshots), then the whole suite once.  Also here: an SMB
session opened before Expose reaches the new snapshot share at once and
loses it at once after DeleteShareMapping, and previous versions of two
shadow copies taken within one second.

smbtorture gets a client-only config: Samba's source4 loadparm (smbtorture)
refuses the server config's ``include = registry``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import HResult
from remotevss.samba.private import PrivateAgent, PrivateSamba, missing_tools
from tests.support.samba_agent import (
    FsrvpOverSmb,
    agent_behind_samba,
    delete_everything,
    fresh_tree,
    journal_mappings,
    leftovers,
    smb_login,
    smb_read,
    smb_write,
)

TOOLS = ("smbd", "smbtorture", "smbclient", "rpcclient", "smbpasswd", "net", "mkfs.btrfs")
_missing = missing_tools(*TOOLS)
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, loop btrfs)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/system tools: {_missing}"),
]

SHARE = "fsrvp_share"
UNC = f"\\\\127.0.0.1\\{SHARE}"
#: rpc.fsrvp's tests in the order the suite runs them (smbtorture --list).
TESTS = [
    "share_sd",
    "enum_created",
    "sc_share_io",
    "bad_id",
    "sc_set_abort",
    "create_simple",
    "set_ctx",
    "get_version",
    "is_path_supported",
    "seq_timeout",
]
SHADOW_COPY2 = {
    "vfs objects": "shadow_copy2",
    "shadow:snapdir": ".snapshots",
    "shadow:sort": "desc",
}


@dataclass
class Stack:
    samba: PrivateSamba
    agent: PrivateAgent
    share: Path
    client_conf: Path

    def smbtorture(self, test: str, binding: str = "",
                   user: str = "ANCHORFS\\root") -> subprocess.CompletedProcess[str]:  # fmt: skip
        """``binding``: "" (no RPC auth), or "sign"/"seal"[",spnego"|",ntlm"]; ``user``
        as ``-U`` names it (``root`` alone: smbtorture adds its workgroup)."""
        return subprocess.run(
            ["smbtorture", "-s", str(self.client_conf),
             f"ncacn_np:127.0.0.1[{binding}]" if binding else "ncacn_np:127.0.0.1",
             "-U", f"{user}%{self.samba.password}",
             f"--option=smb ports={self.samba.port}",
             "--option=fss:sequence timeout=1", test],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip

    def clean(self) -> None:
        """Delete every exposed shadow copy; wait for the 1 s timer to drop the rest."""
        delete_everything(self.agent)
        deadline = time.monotonic() + 10
        while journal_mappings(self.agent) or leftovers(self.samba):
            assert time.monotonic() < deadline, (journal_mappings(self.agent), leftovers(self.samba))
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import btrfsutil

    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("smbtorture")
    with loop_filesystem("btrfs", 512, work) as mnt:
        share = mnt / SHARE
        btrfsutil.create_subvolume(str(share))
        client_conf = work / "client.conf"
        client_conf.write_text("[global]\n")
        with agent_behind_samba(
            work,
            {SHARE: share},
            share_options={SHARE: SHADOW_COPY2},
            mode="samba",
            sequence_timeout=1,
            snapshot_names="gmt",
            winbind=True,
        ) as (samba, agent):
            yield Stack(samba, agent, share, client_conf)


@pytest.fixture
def clean(stack: Stack) -> Stack:
    stack.clean()
    return stack


def _results(stdout: str) -> dict[str, str]:
    return dict(
        (m.group(2), m.group(1))
        for m in re.finditer(r"^(success|failure|error|skip): fsrvp\.(\w+)", stdout, re.M)
    )


@pytest.mark.parametrize("test", TESTS)
def test_smbtorture_rpc_fsrvp(clean: Stack, test: str) -> None:
    out = clean.smbtorture(f"rpc.fsrvp.fsrvp.{test}")
    assert _results(out.stdout) == {test: "success"}, out.stdout + out.stderr
    assert out.returncode == 0


@pytest.mark.parametrize("binding", ["", "sign", "seal", "seal,ntlm"])
def test_smbtorture_whole_suite(clean: Stack, capsys: pytest.CaptureFixture[str],
                                binding: str) -> None:  # fmt: skip
    """The whole suite without RPC auth ([rpc_auth] min_level = "none" here), signed and
    sealed (SPNEGO, smbtorture's default), and sealed with raw NTLMSSP."""
    offset = clean.agent.log.stat().st_size
    t0 = time.monotonic()
    out = clean.smbtorture("rpc.fsrvp", binding)
    took = time.monotonic() - t0
    results = _results(out.stdout)
    passed = sorted(t for t, r in results.items() if r == "success")
    with capsys.disabled():
        print(f"\n[smbtorture] rpc.fsrvp [{binding or 'no auth'}] against our agent: "
              f"{len(passed)}/{len(TESTS)} passed in {took:.1f} s")  # fmt: skip
    log = clean.agent.log.read_bytes()[offset:].decode(errors="replace")
    if binding:  # every pipe the suite opened authenticated at the asked level
        level = 6 if binding.startswith("seal") else 5
        opened, authed = log.count("pipe opened by"), log.count(f"ANCHORFS\\root at level {level}")
        assert opened >= 1 and authed == opened and "refused" not in log, (opened, authed)
    assert results == dict.fromkeys(TESTS, "success"), out.stdout + out.stderr
    assert out.returncode == 0
    # enum_created leaves its two shadow copies exposed, as against Samba; nothing else
    exposed = [m for m in journal_mappings(clean.agent) if m.status == "Exposed"]
    assert len(exposed) == 2 and len(leftovers(clean.samba)) == 4


@pytest.mark.parametrize("binding", ["seal", "sign,ntlm"])
def test_smbtorture_user_without_domain(clean: Stack, binding: str) -> None:
    """``-U root%secret``, what an admin types: smbtorture names its workgroup
    (WORKGROUP, the client config has none).  Samba's own server maps that to its
    SAM and accepts the binds (8/10 there; its two failures, enum_created and
    sc_share_io, are not about authentication); the agent now maps the name as
    smbd does and passes all 10, where before every bind was refused."""
    offset = clean.agent.log.stat().st_size
    out = clean.smbtorture("rpc.fsrvp", binding, user="root")
    log = clean.agent.log.read_bytes()[offset:].decode(errors="replace")
    assert "NO_LOGON_SERVERS" not in log and "refused" not in log, log[-3000:]
    level = 6 if binding.startswith("seal") else 5
    opened, authed = log.count("pipe opened by"), log.count(f"ANCHORFS\\root at level {level}")
    assert opened >= 1 and authed == opened, (opened, authed, log[-3000:])
    assert "NTLM WORKGROUP\\root checked against the local SAM" in log
    assert _results(out.stdout) == dict.fromkeys(TESTS, "success"), out.stdout + out.stderr
    assert out.returncode == 0


def test_session_opened_before_expose_sees_the_share_at_once(clean: Stack) -> None:
    """The client's own session (trees open, the FSRVP pipe on it) connects to the
    snapshot share the moment Expose returns; after DeleteShareMapping its open
    tree is cut and the share is gone, with no wait in between."""
    live = clean.share / "before.txt"
    live.write_text("point in time")
    c = smb_login(clean.samba.port, clean.samba.password)
    pipe = None
    try:
        base_tid = fresh_tree(c, SHARE)
        assert smb_read(c, base_tid, "before.txt") == "point in time"
        pipe = FsrvpOverSmb(c, clean.samba.port)
        sid, cid, name = pipe.create_expose(UNC)
        live.write_text("changed later")
        assert name == f"{SHARE}@{{{cid}}}"
        tid = fresh_tree(c, name)  # at once, on the session opened before
        assert smb_read(c, tid, "before.txt") == "point in time"
        assert smb_read(c, base_tid, "before.txt") == "changed later"
        assert smb_write(c, tid, "new.txt", b"x").startswith("ERR ")  # read-only
        r = pipe.call(calls.DeleteShareMappingRequest(sid, cid, UNC))
        assert r.return_value == HResult.ZERO
        # gone at once: the open tree is disconnected, a new connect is refused
        assert smb_read(c, tid, "before.txt") == "ERR STATUS_NETWORK_NAME_DELETED"
        from impacket.smbconnection import SessionError

        with pytest.raises(SessionError) as exc:
            fresh_tree(c, name)
        assert "BAD_NETWORK_NAME" in str(exc.value)
        assert smb_read(c, base_tid, "before.txt") == "changed later"  # the base share lives on
    finally:
        if pipe is not None:
            pipe.close()
        c.close()
    assert journal_mappings(clean.agent) == [] and leftovers(clean.samba) == []


def test_previous_versions_of_two_copies_within_one_second(clean: Stack) -> None:
    """Samba's own server fails the second Commit within a second (same @GMT name);
    ours names it one second on, and shadow_copy2 lists and opens both."""
    live = clean.share / "pv.txt"
    c = smb_login(clean.samba.port, clean.samba.password)
    pipe = FsrvpOverSmb(c, clean.samba.port)
    try:
        live.write_text("first")
        t0 = time.monotonic()
        pipe.create_expose(UNC)
        live.write_text("second")
        pipe.create_expose(UNC)
        both = time.monotonic() - t0
        live.write_text("live")
    finally:
        pipe.close()
        c.close()
    names = sorted(p.name for p in (clean.share / ".snapshots").iterdir())
    assert len(names) == 2 and all(re.fullmatch(r"@GMT-[\d.]+-[\d.]+", n) for n in names), names
    out = clean.samba.smbclient(SHARE, "allinfo pv.txt").stdout
    labels = re.findall(r"^(@GMT-\S+)", out, re.M)
    assert sorted(labels) == names, out  # both listed, each under its own name
    got = {
        label: clean.samba.smbclient(SHARE, f"get {label}/pv.txt -").stdout.split("getting")[0]
        for label in labels
    }
    assert got == {names[0]: "first", names[1]: "second"}, (got, both)
