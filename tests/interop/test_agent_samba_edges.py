"""The agent's FSRVP behaviour at the edges, as an SMB client sees it through smbd.

A private smbd 4.17 without rpcd_fsrvp on a loop btrfs and a real ``remotevss
agent`` (spec mode) on its \\pipe\\FssagentRpc, driven over SMB with our codec
(tests/support/samba_agent.py).  Every share is a subvolume holding
``file.txt``.

* Share names: whatever IsPathSupported calls supported must make it through
  the whole sequence: a snapshot share the client can read, gone again after
  DeleteShareMapping.  Samba's own rpcd_fsrvp exposes each of these names
  (checked by hand against 4.17); so must we.
* Writable (ATTR_AUTO_RECOVERY) snapshots: read-only for good once
  RecoveryComplete returns, also for a client that opened a file before; and
  never more writable than their base share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, CTX_BACKUP, Attr, HResult
from remotevss.samba.private import PrivateAgent, PrivateSamba, missing_tools
from tests.support.samba_agent import (
    FsrvpOverSmb,
    agent_behind_samba,
    fresh_tree,
    journal_mappings,
    leftovers,
    smb_login,
    smb_read,
    smb_write,
    subvolume_shares,
)

TOOLS = ("smbd", "smbclient", "smbpasswd", "net", "mkfs.btrfs")
_missing = missing_tools(*TOOLS)
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, loop btrfs)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/system tools: {_missing}"),
]

#: The longest share name the agent accepts (Windows' and Samba's 80): its snapshot
#: share name is 119 characters, which smbd serves.
LONG = "L" * 80
#: Characters Windows refuses in share names but Samba serves (smb.conf sections).
#: ``%x`` is no substitution (smbd would expand ``%h`` in a share's name).
PUNCTUATED = ("data+1", "a,b", "c;d", "e=f", "g%x", "i[j")
NAMES = (LONG, *PUNCTUATED)


@dataclass
class Stack:
    samba: PrivateSamba
    agent: PrivateAgent


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pytest.importorskip("btrfsutil")
    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("share-names")
    with loop_filesystem("btrfs", 512, work) as mnt:
        shares = subvolume_shares(mnt, [f"vol{i}" for i in range(len(NAMES))] + ["rw", "ro"])
        named = {name: shares[f"vol{i}"] for i, name in enumerate(NAMES)}
        named |= {"rw": shares["rw"], "ro": shares["ro"]}
        ro = {"ro": {"read only": "yes"}}
        with agent_behind_samba(work, named, share_options=ro, mode="spec") as (samba, agent):
            yield Stack(samba, agent)


@pytest.mark.parametrize("share", NAMES, ids=["long", *PUNCTUATED])
def test_every_supported_share_name_is_exposed_and_deleted(stack: Stack, share: str) -> None:
    unc = f"\\\\127.0.0.1\\{share}\\"
    c = smb_login(stack.samba.port, stack.samba.password)
    pipe = FsrvpOverSmb(c, stack.samba.port)
    try:
        r = pipe.call(calls.IsPathSupportedRequest(unc))
        assert r.return_value == HResult.ZERO and r.supported_by_this_provider
        sid, cid, name = pipe.create_expose(unc)
        assert name == f"{share}@{{{cid}}}"
        i = list(NAMES).index(share)
        assert smb_read(c, fresh_tree(c, name), "file.txt") == f"vol{i} content\n"
        pipe.ok(calls.RecoveryCompleteShadowCopySetRequest(sid))
        pipe.ok(calls.DeleteShareMappingRequest(sid, cid, unc))
    finally:
        pipe.close()
        c.close()
    assert journal_mappings(stack.agent) == [] and leftovers(stack.samba) == []


def test_recovery_complete_seals_a_writable_copy_against_open_handles(stack: Stack) -> None:
    """ATTR_AUTO_RECOVERY: the client may modify the snapshot between Expose and
    RecoveryComplete, "after that it is and stays read-only".  A handle opened
    before must not write on (it did: the snapshot changed after the answer),
    and a new tree connect is offered a read-only share."""
    from impacket.smbconnection import SessionError

    unc = "\\\\127.0.0.1\\rw\\"
    c = smb_login(stack.samba.port, stack.samba.password)
    pipe = FsrvpOverSmb(c, stack.samba.port)
    try:
        sid, cid, name = pipe.create_expose(unc, CTX_BACKUP | Attr.ATTR_AUTO_RECOVERY)
        [snap] = [m.snapshot_path for m in journal_mappings(stack.agent) if m.copy_id == cid]
        tid = fresh_tree(c, name)
        fid = c.createFile(tid, "recovered.txt")
        c.writeFile(tid, fid, b"auto-recovery\n")  # allowed until RecoveryComplete
        pipe.ok(calls.RecoveryCompleteShadowCopySetRequest(sid))
        with pytest.raises(SessionError):
            c.writeFile(tid, fid, b"too late\n", offset=14)
        assert (Path(snap) / "recovered.txt").read_bytes() == b"auto-recovery\n"
        assert smb_write(c, fresh_tree(c, name), "new.txt", b"x") == "ERR STATUS_ACCESS_DENIED"
        assert not (Path(snap) / "new.txt").exists()
        assert smb_read(c, fresh_tree(c, name), "recovered.txt") == "auto-recovery\n"
        pipe.ok(calls.DeleteShareMappingRequest(sid, cid, unc))
    finally:
        pipe.close()
        c.close()
    assert journal_mappings(stack.agent) == [] and leftovers(stack.samba) == []


def test_timer_seals_a_persistent_writable_copy_against_open_handles(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The same for the server's own seal: an Exposed persistent writable set whose
    client never calls RecoveryComplete is sealed and kept when the message
    sequence timer expires (docs/decisions.md row 6a)."""
    from impacket.smbconnection import SessionError

    from remotevss.loopfs import loop_filesystem

    unc = "\\\\127.0.0.1\\rw\\"
    work = tmp_path_factory.mktemp("seal-on-expiry")
    with loop_filesystem("btrfs", 512, work) as mnt:
        shares = subvolume_shares(mnt, ["rw"])
        with agent_behind_samba(work, shares, mode="spec", sequence_timeout=2) as (samba, agent):
            c = smb_login(samba.port, samba.password)
            pipe = FsrvpOverSmb(c, samba.port)
            try:
                sid, cid, name = pipe.create_expose(
                    unc, CTX_APP_ROLLBACK | Attr.ATTR_AUTO_RECOVERY
                )
                [snap] = [m.snapshot_path for m in journal_mappings(agent)]
                tid = fresh_tree(c, name)
                fid = c.createFile(tid, "recovered.txt")
                c.writeFile(tid, fid, b"auto-recovery\n")
                deadline = time.monotonic() + 20
                while [m.status for m in journal_mappings(agent)] != ["Recovered"]:
                    assert time.monotonic() < deadline, journal_mappings(agent)
                    time.sleep(0.1)
                with pytest.raises(SessionError):
                    c.writeFile(tid, fid, b"too late\n", offset=14)
                assert (Path(snap) / "recovered.txt").read_bytes() == b"auto-recovery\n"
                new = smb_write(c, fresh_tree(c, name), "new.txt", b"x")
                assert new == "ERR STATUS_ACCESS_DENIED"
                pipe.ok(calls.DeleteShareMappingRequest(sid, cid, unc))
            finally:
                pipe.close()
                c.close()
            assert journal_mappings(agent) == [] and leftovers(samba) == []


def test_writable_copy_of_a_read_only_share_stays_read_only(stack: Stack) -> None:
    """ATTR_AUTO_RECOVERY makes the snapshot writable, but the snapshot share copies
    the base share's permissions: on a ``read only = yes`` share nobody may write
    through it (Samba's rpcd_fsrvp keeps ``read only = yes`` too).  It was
    ``read only = no``: every user of the base share could alter the snapshot
    a backup was about to read."""
    unc = "\\\\127.0.0.1\\ro\\"
    c = smb_login(stack.samba.port, stack.samba.password)
    pipe = FsrvpOverSmb(c, stack.samba.port)
    try:
        assert smb_write(c, fresh_tree(c, "ro"), "base.txt", b"x") == "ERR STATUS_ACCESS_DENIED"
        sid, cid, name = pipe.create_expose(unc, CTX_BACKUP | Attr.ATTR_AUTO_RECOVERY)
        [snap] = [m.snapshot_path for m in journal_mappings(stack.agent) if m.copy_id == cid]
        assert smb_write(c, fresh_tree(c, name), "w.txt", b"x") == "ERR STATUS_ACCESS_DENIED"
        assert not (Path(snap) / "w.txt").exists()
        assert smb_read(c, fresh_tree(c, name), "file.txt") == "ro content\n"
        pipe.ok(calls.RecoveryCompleteShadowCopySetRequest(sid))
        pipe.ok(calls.DeleteShareMappingRequest(sid, cid, unc))
    finally:
        pipe.close()
        c.close()
    assert journal_mappings(stack.agent) == [] and leftovers(stack.samba) == []
