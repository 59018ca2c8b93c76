"""The agent behind a private smbd on ZFS shares (zfs-fuse datasets).

Samba's own client (rpcclient ``fss_create_expose`` / ``fss_delete``) runs
the FSRVP sequence through smbd's \\pipe\\FssagentRpc to ``remotevss agent``;
the exposed snapshot share is read back over SMB (impacket): the point-in-time
content, read-only, and gone with every ZFS snapshot and clone after delete.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from remotevss.samba.private import missing_tools
from tests.support.samba import PASSWORD
from tests.support.samba_agent import (
    FsrvpOverSmb,
    agent_behind_samba,
    delete_everything,
    fresh_tree,
    smb_login,
    smb_read,
    smb_write,
)
from tests.support.zfs_fuse import datasets, zfs

TOOLS = ("smbd", "net", "smbclient", "rpcclient", "zfs", "zpool", "zfs-fuse")
_missing = missing_tools(*TOOLS)
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, zfs-fuse)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/ZFS tools: {_missing}"),
]
ZfsPool = Callable[..., tuple[str, Path]]
CREATED = re.compile(r"^([0-9a-f-]{36})\(([0-9a-f-]{36})\): share (\S+)@", re.M)


def test_fsrvp_through_smbd_on_zfs_datasets(tmp_path: Path, zfspool: ZfsPool) -> None:
    pool, mnt = zfspool(256)
    shares = datasets(pool, mnt, ("zdata", "zother"), "{name} before\n", file="file.txt")
    (mnt / "zdata" / "dept").mkdir()
    shares["zdept"] = mnt / "zdata" / "dept"  # a directory inside a dataset
    with agent_behind_samba(tmp_path, shares) as (samba, agent):
        refused = samba.rpcclient("fss_create_expose backup ro zdept", check=False)
        assert refused.returncode != 0 or not CREATED.search(refused.stdout)
        assert "NOT_SUPPORTED" in (refused.stdout + refused.stderr).upper() or \
            "0x8004230c" in (refused.stdout + refused.stderr).lower()

        out = samba.rpcclient("fss_create_expose backup ro zdata zother").stdout
        made = CREATED.findall(out)
        assert sorted(s for _, _, s in made) == ["zdata", "zother"], out
        for name in ("zdata", "zother"):
            (mnt / name / "file.txt").write_text(f"{name} after\n")
        snaps = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", pool).split()
        assert {s.split("@")[0] for s in snaps} == {f"{pool}/zdata", f"{pool}/zother"}
        listing = samba.net("conf", "listshares").stdout
        exposed = {n: re.search(rf"^\s*({n}@\{{[0-9A-Fa-f-]+\}})\s*$", listing, re.M)
                   for n in ("zdata", "zother")}
        assert all(exposed.values()), listing
        c = smb_login(samba.port, PASSWORD)
        try:
            for name, m in exposed.items():
                assert m is not None
                tid = fresh_tree(c, m.group(1))
                assert smb_read(c, tid, "file.txt") == f"{name} before\n"
                assert smb_write(c, tid, "new.txt", b"x").startswith("ERR")
            live = fresh_tree(c, "zdata")
            assert smb_read(c, live, "file.txt") == "zdata after\n"
        finally:
            c.close()
        deletes = "; ".join(f"fss_delete {share} {sid} {cid}" for sid, cid, share in made)
        samba.rpcclient(deletes)
        assert zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", pool).split() == []
        assert "@{" not in samba.net("conf", "listshares").stdout
        for name in ("zdata", "zother"):
            assert os.listdir(mnt / name / ".snapshots") == []


SHADOW_COPY2 = {"vfs objects": "shadow_copy2", "shadow:snapdir": ".snapshots",
                "shadow:sort": "desc"}


def test_previous_versions_of_zfs_snapshots_through_shadow_copy2(
        tmp_path: Path, zfspool: ZfsPool) -> None:
    """docs/samba.md "On ZFS": the btrfs settings show the agent's ZFS copies."""
    pool, mnt = zfspool(256)
    zfs("create", f"{pool}/zdata")
    share = mnt / "zdata"
    live = share / "pv.txt"
    with agent_behind_samba(tmp_path, {"zdata": share}, share_options={"zdata": SHADOW_COPY2},
                            snapshot_names="gmt", mode="samba") as (samba, _agent):
        c = smb_login(samba.port, PASSWORD)
        pipe = FsrvpOverSmb(c, samba.port)
        try:  # mode "samba": sets are kept as Samba keeps them (docs/samba.md)
            for text in ("first", "second"):
                live.write_text(text)
                pipe.create_expose("\\\\127.0.0.1\\zdata")
            live.write_text("live")
            names = sorted(os.listdir(share / ".snapshots"))
            assert len(names) == 2 and all(re.fullmatch(r"@GMT-[\d.-]+", n) for n in names), names
            out = samba.smbclient("zdata", "allinfo pv.txt").stdout
            labels = re.findall(r"^(@GMT-\S+)", out, re.M)
            assert sorted(labels) == names, out
            got = {label: samba.smbclient("zdata", f"get {label}/pv.txt -").stdout.split(
                "getting")[0] for label in labels}
            assert got == {names[0]: "first", names[1]: "second"}, got
        finally:
            pipe.close()
            c.close()
        delete_everything(_agent)
        assert zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", pool).split() == []
        assert os.listdir(share / ".snapshots") == []


def test_smbtorture_rpc_fsrvp_on_a_zfs_share(tmp_path: Path, zfspool: ZfsPool,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Samba's own suite, as tests/interop/test_smbtorture.py runs it on btrfs, with
    ``fsrvp_share`` a zfs-fuse dataset: every test alone from a clean server, then
    the whole suite once (no RPC auth)."""
    if missing_tools("smbtorture"):
        pytest.skip("smbtorture is not installed (samba-testsuite)")
    from tests.interop.test_smbtorture import SHARE, TESTS, Stack, _results

    pool, mnt = zfspool(256)
    zfs("create", "-o", f"mountpoint={mnt / SHARE}", f"{pool}/share")
    share = mnt / SHARE
    client_conf = tmp_path / "client.conf"
    client_conf.write_text("[global]\n")
    with agent_behind_samba(tmp_path, {SHARE: share}, share_options={SHARE: SHADOW_COPY2},
                            mode="samba", sequence_timeout=1, snapshot_names="gmt",
                            winbind=True) as (samba, agent):
        stack = Stack(samba, agent, share, client_conf)
        failed = {}
        for test in TESTS:
            stack.clean()
            out = stack.smbtorture(f"rpc.fsrvp.fsrvp.{test}")
            if _results(out.stdout) != {test: "success"}:
                failed[test] = (out.stdout + out.stderr)[-1500:]
        stack.clean()
        t0 = time.monotonic()
        out = stack.smbtorture("rpc.fsrvp")
        took = time.monotonic() - t0
        results = _results(out.stdout)
        with capsys.disabled():
            print(f"\n[smbtorture] rpc.fsrvp on ZFS (zfs-fuse): "
                  f"{sum(r == 'success' for r in results.values())}/{len(TESTS)} passed "
                  f"in {took:.1f} s")
        assert failed == {}
        assert results == dict.fromkeys(TESTS, "success"), out.stdout + out.stderr
        stack.clean()
        delete_everything(agent)
    assert zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", pool).split() == []


def test_client_every_command_on_zfs_shares(tmp_path: Path, zfspool: ZfsPool,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """tests/interop/test_client_samba.py's end-to-end run of every
    ``remotevss shadow`` command, against the agent behind smbd, with the shares
    zfs-fuse datasets: read-only and writable copies (clones, sealed at recover),
    persistent and auto-release contexts, delete; no ZFS object left."""
    from remotevss.samba.private import PrivateAgent, PrivateSamba
    from tests.interop.test_client_samba import Server, test_every_command_end_to_end

    pool, mnt = zfspool(256)
    shares = {}
    for i in range(4):
        zfs("create", f"{pool}/share{i}")
        (mnt / f"share{i}" / "f.txt").write_text(f"share{i}: version 1\n")
        shares[f"share{i}"] = mnt / f"share{i}"
    samba = PrivateSamba(tmp_path / "samba", shares, samba_fsrvp=False, sequence_timeout=60,
                         winbind=True)
    agent = PrivateAgent(tmp_path / "samba" / "agent", samba, sequence_timeout=60,
                         min_level="integrity")
    server = Server(samba, shares, mnt, agent)
    samba.start()
    try:
        agent.start()
        test_every_command_end_to_end(server, tmp_path / "client.sqlite3", capsys)
        assert server.leftovers() == []
    finally:
        server.stop()
    assert zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", pool).split() == []
