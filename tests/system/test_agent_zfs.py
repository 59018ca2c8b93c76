"""The agent on ZFS shares (zfs-fuse pools): the FSRVP sequence over the local
socket, the subdirectory refusal as FSRVP_E_NOT_SUPPORTED, ``storage list``
from ZFS's accounting, and what ZFS itself shows of a set."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from remotevss import cli
from remotevss.agent.config import GcConfig
from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, CTX_BACKUP, HResult
from tests.support.zfs_fuse import datasets, zfs
from tests.system.agent_harness import AgentProcess
from tests.system.ops_harness import ZERO, running_agent, sequence, unc
from tests.system.test_agent import CRASH_POINTS, full_sequence, run_until_killed
from tests.system.test_agent import unc as agent_unc

pytestmark = pytest.mark.root
ZfsPool = Callable[..., tuple[str, Path]]


def test_sequence_on_zfs_datasets_and_subdirectory_refused(
        tmp_path: Path, zfspool: ZfsPool, capsys: pytest.CaptureFixture[str]) -> None:
    pool, mnt = zfspool(256)
    shares = datasets(pool, mnt, ("data", "other"), "{name} at the point in time\n")
    (mnt / "data" / "sub").mkdir()
    shares["sub"] = mnt / "data" / "sub"
    with running_agent(tmp_path, shares, backend="auto",
                       gc=GcConfig(interval=0, orphan_after=0, max_age=0)) as a:
        with a.client() as c:
            r = c.is_path_supported(unc("sub"))
            assert r.return_value == HResult.FSRVP_E_NOT_SUPPORTED
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            assert c.add(sid, unc("sub")).return_value == HResult.FSRVP_E_NOT_SUPPORTED
            cids = [c.add(sid, unc(s)).shadow_copy_id for s in ("data", "other")]
            assert c.prepare(sid).return_value == ZERO
            assert c.commit(sid).return_value == ZERO
            assert c.expose(sid).return_value == ZERO
            for cid, s in zip(cids, ("data", "other"), strict=True):
                m = c.get_share_mapping(cid, sid, unc(s))
                assert m.return_value == ZERO
                exposed = m.mapping.shadow_copy_share_name
                assert exposed in a.exposed()
            (mnt / "data" / "f.txt").write_text("changed later\n")
            snaps = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", pool).split()
            assert len(snaps) == 2 and {s.split("@")[0] for s in snaps} == {
                f"{pool}/data", f"{pool}/other"}
            # the agent labels what it takes: set, copy and context found from ZFS alone
            labels = {zfs("get", "-H", "-o", "value", "org.remotevss:copy", s).strip(): (
                zfs("get", "-H", "-o", "value", "org.remotevss:set", s).strip(),
                zfs("get", "-H", "-o", "value", "org.remotevss:context", s).strip())
                for s in snaps}
            assert labels == {str(cid): (str(sid), "backup") for cid in cids}, labels
            (snap_dir,) = os.listdir(mnt / "data" / ".snapshots")
            assert (mnt / "data" / ".snapshots" / snap_dir / "f.txt").read_text() == \
                "data at the point in time\n"
            # storage list: ZFS's accounting is exact ("snapshots" basis)
            deadline = time.monotonic() + 60
            while True:
                rc = cli.main(["storage", "list", "--json", "--admin-socket", a.admin_socket])
                vols = {v["root"]: v for v in json.loads(capsys.readouterr().out)}
                vol = vols[str(mnt / "data")]
                if vol["used"] > 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert rc == 0
            assert vol["backend"] == "zfs" and vol["basis"] == "snapshots", vol
            assert vol["copies"] == 1 and vol["used"] > 0
            assert c.recovery_complete(sid).return_value == ZERO
            for cid, s in zip(cids, ("data", "other"), strict=True):
                assert c.delete_share_mapping(sid, cid, unc(s)).return_value == ZERO
        assert zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", pool).split() == []
        assert os.listdir(mnt / "data" / ".snapshots") == []


def test_subdirectory_share_with_zfs_enclosing(tmp_path: Path, zfspool: ZfsPool) -> None:
    pool, mnt = zfspool()
    zfs("create", f"{pool}/data")
    (mnt / "data" / "sub").mkdir()
    (mnt / "data" / "sub" / "g.txt").write_text("inside\n")
    with running_agent(tmp_path, {"sub": mnt / "data" / "sub"}, backend="zfs-enclosing") as a:
        sid, cid, name = sequence(a, "sub", CTX_BACKUP, finish=False)
        (snap,) = os.listdir(mnt / "data" / ".snapshots")
        assert (mnt / "data" / ".snapshots" / snap / "sub" / "g.txt").read_text() == "inside\n"
        with a.client() as c:
            assert c.recovery_complete(sid).return_value == ZERO
            assert c.delete_share_mapping(sid, cid, unc("sub")).return_value == ZERO
    assert os.listdir(mnt / "data" / ".snapshots") == []


# ------------------------------------------------- SIGKILL after every effect


def _zfs_objects(pool: str) -> list[str]:
    """Every snapshot, and every clone below a .snapshots container, of the pool."""
    names = zfs("list", "-H", "-o", "name", "-t", "all", "-r", pool).split()
    return sorted(n for n in names if "@" in n or "/.snapshots/" in n)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_after_each_effect_leaks_no_zfs_object(tmp_path: Path, zfspool: ZfsPool,
                                                       point: str) -> None:
    """As tests/system/test_agent.py's matrix for btrfs, on ZFS datasets: after the
    restart only the persistent copy's snapshot and clone are left, in ZFS itself."""
    pool, mnt = zfspool()
    shares = {}
    for i in range(2):
        zfs("create", f"{pool}/share{i}")
        shares[f"share{i}"] = mnt / f"share{i}"
    work = tmp_path / "agent"
    work.mkdir()
    a = AgentProcess(work, shares)
    a.start()
    keep = full_sequence(a, ["share1"], CTX_APP_ROLLBACK)
    with a.client() as c:
        assert c.recovery_complete(keep["set"]).return_value == ZERO  # type: ignore[arg-type]
    kept_snaps, kept_exposed, kept_zfs = a.snapshots(), a.exposed(), _zfs_objects(pool)
    assert len(kept_snaps) == 1 and len(kept_zfs) == 2  # the snapshot and its clone
    a.stop()

    run_until_killed(a, point)

    a.start()
    try:
        assert a.snapshots() == kept_snaps, a.log.read_text()
        assert a.exposed() == kept_exposed
        assert _zfs_objects(pool) == kept_zfs
        with a.client() as c:
            kset, kcopy = keep["set"], keep["copies"]["share1"]  # type: ignore[index]
            assert c.delete_share_mapping(kset, kcopy, agent_unc("share1")).return_value == ZERO
        assert a.snapshots() == [] and a.exposed() == {} and _zfs_objects(pool) == []
    finally:
        a.stop()
