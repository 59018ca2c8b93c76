"""Strays on real ZFS (zfs-fuse): snapshots the agent labelled that its journal
does not know, after the state directory was wiped.  Auto-release ones are
collected, persistent ones kept and listed until root deletes them, a user's
own snapshots and another agent's are never touched, and a SIGKILL in the
middle of a collection is finished at the next start."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from remotevss import cli
from remotevss.agent.naming import snapshot_name
from remotevss.agent.strays import agent_identity
from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, CTX_BACKUP, HResult
from remotevss.snapshots.base import SnapRequest
from remotevss.snapshots.zfs import ZfsBackend
from tests.support.zfs_fuse import datasets, zfs
from tests.system.agent_harness import AgentProcess
from tests.system.ops_harness import ZERO
from tests.system.test_agent import full_sequence
from tests.system.test_agent import unc as agent_unc

pytestmark = pytest.mark.root
ZfsPool = Callable[..., tuple[str, Path]]


def snapshots(pool: str) -> set[str]:
    return set(zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", pool).split())


def clones(pool: str) -> set[str]:
    return {n for n in zfs("list", "-H", "-o", "name", "-r", pool).split() if "/.snapshots/" in n}


def prop(name: str, key: str) -> str:
    return zfs("get", "-H", "-o", "value", key, name).strip()


def of_set(pool: str, set_id: object) -> set[str]:
    return {s for s in snapshots(pool) if prop(s, "org.remotevss:set") == str(set_id)}


def admin_json(capsys: pytest.CaptureFixture[str], a: AgentProcess, *argv: str) -> object:
    capsys.readouterr()
    rc = cli.main([*argv, "--json", "--admin-socket", f"{a.socket}.admin"])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def agent(tmp_path: Path, name: str, shares: dict[str, Path]) -> AgentProcess:
    work = tmp_path / name
    work.mkdir()
    return AgentProcess(work, shares)


def recovered_set(a: AgentProcess, names: list[str], context: int) -> str:
    """A whole sequence up to RecoveryComplete: kept by the agent's clean stop."""
    seq = full_sequence(a, names, context)
    with a.client() as c:
        assert c.recovery_complete(seq["set"]).return_value == ZERO  # type: ignore[arg-type]
    return str(seq["set"])


def events(a: AgentProcess, event: str) -> list[dict[str, object]]:
    out = []
    for line in a.log.read_text().splitlines():
        start = line.find('{"event": ')
        if start >= 0:
            fields = json.loads(line[start:])
            if fields["event"] == event:
                out.append(fields)
    return out


def labelled_snapshot(share: Path, a: AgentProcess, context: str) -> str:
    """A snapshot with agent ``a``'s labels that its journal never saw (made by the
    backend directly, as the agent would have); returns its copy id."""
    copy_id = uuid.uuid4()
    zb = ZfsBackend()
    zb.create_many([SnapRequest(zb.check(str(share)), snapshot_name(time.time(), copy_id),
                                False, set_id=str(uuid.uuid4()), copy_id=str(copy_id),
                                context=context, owner=agent_identity(str(a.workdir / "state")))])
    return str(copy_id)


def wait_for(probe: Callable[[], list[dict[str, object]]]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 30
    while not (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_wiped_state_dir_strays_collected_or_kept_foreign_untouched(
        tmp_path: Path, zfspool: ZfsPool, capsys: pytest.CaptureFixture[str]) -> None:
    pool, mnt = zfspool(256)
    shares = datasets(pool, mnt, ("share0", "share1"))
    zfs("snapshot", f"{pool}/share0@mine")  # the administrator's own: never touched
    a = agent(tmp_path, "a", shares)
    b = agent(tmp_path, "b", shares)  # a second agent (own state dir) on the same pool
    a.start()
    gone_set = recovered_set(a, ["share0"], CTX_BACKUP)  # auto-release
    kept_set = recovered_set(a, ["share1"], CTX_APP_ROLLBACK)  # persistent: held
    a.stop()
    b.start()
    other_set = recovered_set(b, ["share0"], CTX_BACKUP)
    b.stop()
    (gone,) = of_set(pool, gone_set)
    (kept,) = of_set(pool, kept_set)
    (other,) = of_set(pool, other_set)
    assert prop(kept, "userrefs") == "1" and prop(gone, "userrefs") == "0"
    assert prop(gone, "org.remotevss:agent") == str((a.workdir / "state").resolve())
    assert prop(other, "org.remotevss:agent") == str((b.workdir / "state").resolve())
    before_clones = clones(pool)

    shutil.rmtree(a.workdir / "state")  # agent a's journal is gone
    a.start()
    try:
        # auto-release: deleted with its clone, one gc_delete event naming the reason
        assert snapshots(pool) == {f"{pool}/share0@mine", kept, other}, a.log.read_text()
        assert clones(pool) == {c for c in before_clones if gone.split("@")[1] not in c}
        (ev,) = [e for e in events(a, "gc_delete") if e["reason"] == "stray"]
        assert ev["set"] == gone_set and ev["status"] == "stray"
        assert ev["copies"][0]["zfs"] == gone  # type: ignore[index]
        assert "deleted auto-release stray: " + gone in a.log.read_text()
        # persistent: kept with its hold, reported once, listed everywhere
        assert prop(kept, "userrefs") == "1"
        (kev,) = wait_for(lambda: events(a, "stray_kept"))  # the start-up GC pass
        assert kev["zfs_name"] == kept and kev["set_id"] == kept_set
        sets = admin_json(capsys, a, "sets", "list")
        assert [(s["id"], s["status"]) for s in sets] == [(kept_set, "stray")]  # type: ignore
        assert sets[0]["copies"][0]["zfs"] == kept  # type: ignore[index]
        status = admin_json(capsys, a, "status")
        assert [x["zfs_name"] for x in status["strays"]] == [kept]  # type: ignore[index]
        vols = {v["root"]: v for v in admin_json(capsys, a, "storage", "list")}  # type: ignore
        assert vols[str(shares["share1"])]["strays"] == 1
        assert vols[str(shares["share0"])]["strays"] == 0
        # a later pass keeps it too, and reports it no more
        assert admin_json(capsys, a, "gc") == []
        assert kept in snapshots(pool) and len(events(a, "stray_kept")) == 1
        # an auto-release stray that turns up while the agent runs: the next pass takes it
        late = labelled_snapshot(shares["share0"], a, "backup")
        (p,) = admin_json(capsys, a, "gc")  # type: ignore[misc]
        assert (p["reason"], p["copy"]) == ("stray", late), p
        assert snapshots(pool) == {f"{pool}/share0@mine", kept, other}
        # an unknown set id is still refused, changing nothing
        assert cli.main(["sets", "delete", "00000000-0000-0000-0000-00000000abcd",
                         "--admin-socket", f"{a.socket}.admin"]) == 2
        assert kept in snapshots(pool)
        # root deletes it by its set id, through the same teardown path
        capsys.readouterr()
        assert cli.main(["sets", "delete", kept_set, "--admin-socket",
                         f"{a.socket}.admin"]) == 0
        assert "(stray)" in capsys.readouterr().out
        assert snapshots(pool) == {f"{pool}/share0@mine", other}
        assert not [c for c in clones(pool) if kept.split("@")[1] in c]
        assert admin_json(capsys, a, "sets", "list") == []
    finally:
        a.stop()
    # agent b still knows its own set: its journal was not touched
    b.start()
    try:
        (entry,) = admin_json(capsys, b, "sets", "list")  # type: ignore[misc]
        assert entry["id"] == other_set and entry["status"] == "Recovered"
        with b.client() as c:
            r = c.delete_share_mapping(uuid.UUID(other_set), uuid.UUID(entry["copies"][0]["id"]),
                                       agent_unc("share0"))
            assert r.return_value == ZERO
        assert snapshots(pool) == {f"{pool}/share0@mine"}
    finally:
        b.stop()


def test_sigkill_in_the_middle_of_a_stray_collection_is_finished_at_next_start(
        tmp_path: Path, zfspool: ZfsPool) -> None:
    pool, mnt = zfspool(256)
    shares = datasets(pool, mnt, ("share0", "share1"))
    a = agent(tmp_path, "a", shares)
    a.start()
    sid = recovered_set(a, ["share0", "share1"], CTX_BACKUP)
    a.stop()
    assert len(of_set(pool, sid)) == 2
    shutil.rmtree(a.workdir / "state")
    with pytest.raises(RuntimeError):  # dies at start-up, right after the first deletion
        a.start(crash_after="delete_snapshot")
    assert a.proc is not None and a.proc.wait(10) == -9
    a.proc = None
    assert len(of_set(pool, sid)) == 1  # one deleted, the other's intent pending
    a.start()
    try:
        assert of_set(pool, sid) == set() and clones(pool) == set(), a.log.read_text()
        assert "replayed intent: delete_snapshot" in a.log.read_text()
    finally:
        a.stop()


def test_a_snapshot_being_taken_is_never_a_stray(tmp_path: Path, zfspool: ZfsPool,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A Commit that outlives the client's timeout leaves its snapshot in ZFS with only
    a creation intent in the journal: a GC pass then must not take it."""
    pool, mnt = zfspool()
    zfs("create", f"{pool}/share0")
    a = agent(tmp_path, "a", {"share0": mnt / "share0"})
    a.start()
    try:
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            assert c.add(sid, agent_unc("share0")).return_value == ZERO
            assert c.prepare(sid).return_value == ZERO
            rc = c.commit(sid, timeout_ms=1).return_value
            if rc == ZERO:  # pragma: no cover - a machine faster than zfs-fuse
                pytest.skip("the snapshot was taken within 1 ms")
            assert rc == HResult.FSSAGENT_E_TIMEOUT
            deadline = time.monotonic() + 30
            while not of_set(pool, sid) and time.monotonic() < deadline:
                time.sleep(0.05)
            (snap,) = of_set(pool, sid)
            assert admin_json(capsys, a, "gc") == []
            assert of_set(pool, sid) == {snap}
            assert c.commit(sid).return_value == ZERO  # the retried Commit collects the job
            assert c.expose(sid).return_value == ZERO
        assert admin_json(capsys, a, "gc") == [] and of_set(pool, sid) == {snap}
    finally:
        a.stop()  # an auto-release Exposed set is released by the agent's stop
    assert of_set(pool, sid) == set()
