"""SIGKILL at every step, for every snapshot backend; and SIGKILL of smbd.

The agent has test crash points (``REMOTEVSS_CRASH_AFTER``, ``EffectRunner.crash_point`` in
agent/effects.py): it SIGKILLs itself right after the named effect.  For each
backend (btrfs is covered by tests/system/test_agent.py; here reflink on XFS and
copy on ext4, with symlink exposure, and btrfs behind Samba with registry
exposure) and each point, a persistent shadow copy made before the crash must
survive intact and read-only, and after the restart nothing may be left of the
interrupted set: ``check_consistent`` (journal = snapshots on disk = exposed
shares = read-only bind mounts, no pending intent, no ``.partial`` tree).

smbd is killed with SIGKILL (parent, children and samba-dcerpcd) while an
Expose is in flight (the agent is frozen with SIGSTOP so the call is inside the
agent when smbd dies) and right after an Expose; after smbd's restart the
registry shares are exactly the journal's and the client can finish or drop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, CTX_BACKUP
from tests.hardening.harness import (
    ZERO,
    Stack,
    check_consistent,
    delete_all,
    read_journal,
    sequence,
    unc,
)
from tests.system.agent_harness import AgentProcess

pytestmark = pytest.mark.root

POINTS = [
    "create_intent",
    "create_snapshot",
    "expose_intent",
    "expose_share",
    "unexpose_share",
    "delete_snapshot",
]
# Teardown effects (Abort of an Exposed set) have their own points in EffectRunner.carry_out.
ABORT_POINTS = ["unexpose", "delete_snapshot"]


@dataclass
class TreeEnv:
    agent: AgentProcess
    backend: str
    keep_set: uuid.UUID
    keep_copy: uuid.UUID
    kept_snaps: list[Path]
    kept_exposed: dict[str, str]

    def roots(self) -> list[Path]:
        return list(self.agent.shares.values())

    def check_after_restart(self) -> None:
        a = self.agent
        assert a.snapshots() == self.kept_snaps, a.log.read_text()[-4000:]
        assert a.exposed() == self.kept_exposed
        j = check_consistent(a.workdir / "state", self.roots(), set(a.exposed()))
        assert j.sets == {str(self.keep_set): "Recovered"}
        # the persistent copy is intact and still read-only
        (snap,) = self.kept_snaps
        assert (snap / "f.txt").read_text() == "share1 v1\n"
        with pytest.raises(OSError) as exc:
            (snap / "f.txt").write_text("x")
        assert exc.value.errno == errno.EROFS


@pytest.fixture(scope="module", params=[("xfs", "reflink"), ("ext4", "copy")],
                ids=["reflink", "copy"])  # fmt: skip
def tree_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[TreeEnv]:  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount)")
    from remotevss.loopfs import loop_filesystem

    fstype, backend = request.param
    work = tmp_path_factory.mktemp(f"crash-{backend}")
    with loop_filesystem(fstype, 320, work) as mnt:
        shares = {}
        for n in ("share0", "share1"):
            (mnt / n).mkdir()
            (mnt / n / "f.txt").write_text(f"{n} v1\n")
            shares[n] = mnt / n
        (work / "agent").mkdir()
        a = AgentProcess(work / "agent", shares)
        a.start()
        try:
            with a.client() as c:
                sid, copies = sequence(c, ["share1"], CTX_APP_ROLLBACK)
            assert backend in a.log.read_text()
            env = TreeEnv(a, backend, sid, copies["share1"], a.snapshots(), a.exposed())
            assert len(env.kept_snaps) == 1 and len(env.kept_exposed) == 1
            (mnt / "share1" / "f.txt").write_text("share1 v2\n")  # the live file moves on
        finally:
            a.stop()
        yield env
        a.start()
        try:
            with a.client() as c:
                delete_all(c, env.keep_set, {"share1": env.keep_copy})
            assert a.snapshots() == [] and a.exposed() == {}
            check_consistent(a.workdir / "state", env.roots(), set())
        finally:
            a.stop()


def _run_until_killed(a: AgentProcess, point: str, abort: bool) -> None:
    a.start(crash_after=point)
    try:
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            cid = c.add(sid, unc("share0")).shadow_copy_id
            c.commit(sid)
            c.expose(sid)
            if abort:
                c.abort(sid)
            else:
                c.get_share_mapping(cid, sid, unc("share0"))
                c.recovery_complete(sid)
                c.delete_share_mapping(sid, cid, unc("share0"))
    except Exception:  # noqa: BLE001 - the agent dies mid-call by design
        pass
    rc = a.wait_dead()
    assert rc == -signal.SIGKILL, f"agent did not die at {point}: {rc}\n{a.log.read_text()[-3000:]}"


@pytest.mark.parametrize(
    "point,abort",
    [(p, False) for p in POINTS] + [(p, True) for p in ABORT_POINTS],
    ids=POINTS + [f"abort-{p}" for p in ABORT_POINTS],
)
def test_tree_backend_sigkill_after_each_effect(tree_env: TreeEnv, point: str, abort: bool) -> None:
    a = tree_env.agent
    _run_until_killed(a, point, abort)
    a.start()
    try:
        tree_env.check_after_restart()
        with a.client() as c:  # the server is free again
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            assert c.abort(sid).return_value == ZERO
    finally:
        a.stop()


def test_restart_with_exposed_set_does_not_block_forever(tree_env: TreeEnv) -> None:
    """An auto-release set that was Exposed when the agent died is kept (its client may
    still be reading it), but not forever: the message sequence timer runs after the
    restart too, so an abandoned set is torn down and Start works again."""
    a = tree_env.agent
    a.sequence_timeout = 1.5
    a.start()
    try:
        with a.client() as c:
            sid, copies = sequence(c, ["share0"], CTX_BACKUP, recover=False)
        assert a.proc is not None
        a.proc.kill()
        a.wait_dead()
        a.start()
        assert len(a.snapshots()) == 2 and len(a.exposed()) == 2  # kept across the restart
        time.sleep(2.0)
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            r = c.start(uuid.uuid4())
            assert r.return_value == ZERO, hex(r.return_value)
            assert c.abort(r.shadow_copy_set_id).return_value == ZERO
        tree_env.check_after_restart()
    finally:
        a.stop()
        a.sequence_timeout = None


# ------------------------------------------------------------------ behind Samba


def _samba_persistent(st: Stack) -> tuple[uuid.UUID, dict[str, uuid.UUID], set[str]]:
    with st.client() as c:
        sid, copies = sequence(c, ["data1"], CTX_APP_ROLLBACK)
    return sid, copies, st.registry_snapshot_shares()


@pytest.mark.parametrize("point", ["expose_intent", "expose_share", "unexpose_share",
                                   "delete_snapshot"])  # fmt: skip
def test_agent_sigkill_behind_samba_registry(clean_stack: Stack, point: str) -> None:
    st = clean_stack
    keep_sid, keep_copies, kept_shares = _samba_persistent(st)
    st.agent.stop()
    st.agent.start(crash_after=point)
    try:
        with st.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            cid = c.add(sid, unc("data0")).shadow_copy_id
            assert c.commit(sid).return_value == ZERO
            c.expose(sid)
            c.get_share_mapping(cid, sid, unc("data0"))
            c.recovery_complete(sid)
            c.delete_share_mapping(sid, cid, unc("data0"))
    except Exception:  # noqa: BLE001 - the agent dies mid-call by design
        pass
    assert st.agent.wait_dead() == -signal.SIGKILL
    st.agent.start()
    j = st.check()
    assert j.sets == {str(keep_sid): "Recovered"}
    assert st.registry_snapshot_shares() == kept_shares
    out = st.samba.smbclient(next(iter(kept_shares)), "get f.txt -")
    assert "data1 v1" in out.stdout, out.stdout + out.stderr
    with st.client() as c:
        delete_all(c, keep_sid, keep_copies)


def _smbd_killed_with_expose_in_flight(st: Stack) -> tuple[uuid.UUID, uuid.UUID]:
    """Start a set, send Expose, and SIGKILL all of Samba while the agent is frozen
    (SIGSTOP) with the request in its socket; then let the agent go on."""
    c = st.client()
    assert c.set_context(CTX_BACKUP).return_value == ZERO
    sid = c.start(uuid.uuid4()).shadow_copy_set_id
    cid = c.add(sid, unc("data0")).shadow_copy_id
    assert c.commit(sid).return_value == ZERO
    os.kill(st.agent.pid, signal.SIGSTOP)
    try:
        req = calls.ExposeShadowCopySetRequest(sid, 60_000)
        c._dce.call(req.opnum, calls.encode_request(req))  # sent; the answer never comes
        time.sleep(0.3)  # smbd has written it to the pipe socket
        st.kill_samba()
    finally:
        os.kill(st.agent.pid, signal.SIGCONT)
    with contextlib.suppress(Exception):
        c.close()
    deadline = time.monotonic() + 10  # the agent finishes the Expose on its own
    while read_journal(st.agent.workdir / "state").sets.get(str(sid)) != "Exposed":
        assert time.monotonic() < deadline, st.agent.log.read_text()[-3000:]
        time.sleep(0.05)
    st.samba.start()
    return sid, cid


def test_smbd_sigkill_during_expose_then_client_finishes(clean_stack: Stack) -> None:
    st = clean_stack
    keep_sid, keep_copies, kept = _samba_persistent(st)
    sid, cid = _smbd_killed_with_expose_in_flight(st)
    j = st.check()  # registry = journal after smbd's restart
    assert j.sets == {str(keep_sid): "Recovered", str(sid): "Exposed"}
    new = st.registry_snapshot_shares() - kept
    (name,) = new
    assert name == f"data0@{{{cid}}}"
    out = st.samba.smbclient(name, "get f.txt -")  # the exposure serves after the restart
    assert "data0 v1" in out.stdout, out.stdout + out.stderr
    with st.client() as c:  # the client reconnects and finishes its sequence
        assert c.get_share_mapping(cid, sid, unc("data0")).return_value == ZERO
        assert c.recovery_complete(sid).return_value == ZERO
        delete_all(c, sid, {"data0": cid})
        delete_all(c, keep_sid, keep_copies)


@pytest.mark.parametrize("context", [CTX_BACKUP, CTX_APP_ROLLBACK], ids=["backup", "persistent"])
def test_smbd_sigkill_after_expose_then_client_retries(clean_stack: Stack, context: int) -> None:
    """smbd dies after Expose answered; the client comes back from the same address and
    starts over (SetContext): the spec drops its unfinished set; a persistent set that
    reached Exposed is kept and sealed (decisions.md 6a)."""
    st = clean_stack
    c = st.client()
    sid, copies = sequence(c, ["data0"], context, recover=False)
    st.kill_samba()
    c.close()
    st.samba.start()
    exposed = st.registry_snapshot_shares()
    assert exposed == {f"data0@{{{copies['data0']}}}"}
    st.check()
    with st.client() as c2:
        assert c2.set_context(CTX_BACKUP).return_value == ZERO  # same address: a retry
        j = st.check()
        if context == CTX_BACKUP:
            assert j.sets == {} and st.registry_snapshot_shares() == set()
        else:
            assert j.sets == {str(sid): "Recovered"}
            assert st.registry_snapshot_shares() == exposed
            delete_all(c2, sid, copies)
        r = c2.start(uuid.uuid4())  # the server is free; Abort clears the context
        assert r.return_value == ZERO, hex(r.return_value)
        assert c2.abort(r.shadow_copy_set_id).return_value == ZERO
