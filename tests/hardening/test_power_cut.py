"""A power cut: what RELIABILITY.md's "Power loss" table says it can leave, and no more.

A power cut cannot be caused for real in a test, so this is a **named fake**:
the agent runs with ``REMOTEVSS_FAKE_POWER_CUT=<dir>`` and its journal copies
its files into ``<dir>`` each time they are on disk (after every fsync'd
commit and every ``Journal.sync``).  The "power cut" is a SIGKILL followed by
putting that copy back: every journal write not yet fsync'd is gone.
Everything else is real (btrfs on a loop device, the exposed shares).

Checked: a DeleteShareMapping answered within the lazy window (not the set's
last copy) is not yet on disk, and start-up finds it from the real world;
one that dropped the set's last copy is on disk when answered, any other
within ``SYNC_DELAY``; an Expose is on disk when answered; and after every
power cut the agent comes up consistent (journal = snapshots = exposed
shares, no pending intent).
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from remotevss.agent.service import SYNC_DELAY
from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, HResult
from tests.hardening.harness import ZERO, check_consistent, unc
from tests.system.agent_harness import AgentProcess
from tests.system.test_agent import make_agent as agent_on_subvolumes

pytestmark = pytest.mark.root

JOURNAL = "journal.sqlite3"


@pytest.fixture
def btrfs(tmp_path: Path) -> Iterator[Path]:
    from remotevss.loopfs import loop_filesystem

    with loop_filesystem("btrfs", 512, tmp_path) as mnt:
        yield mnt


def make_agent(tmp_path: Path, mnt: Path, n: int) -> AgentProcess:
    """test_agent's agent on ``n`` subvolumes, its journal copied aside when on disk."""
    disk = tmp_path / "on-disk"
    return agent_on_subvolumes(tmp_path, mnt, n,
                               extra_env={"REMOTEVSS_FAKE_POWER_CUT": str(disk)})


def power_cut(a: AgentProcess, tmp_path: Path) -> None:
    """SIGKILL, then the journal as it was on disk (the fake: see the module doc)."""
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    a.wait_dead()
    state, disk = a.workdir / "state", tmp_path / "on-disk"
    for suffix in ("", "-wal", "-shm"):
        (state / (JOURNAL + suffix)).unlink(missing_ok=True)
        saved = disk / (JOURNAL + suffix)
        if saved.exists():
            shutil.copyfile(saved, state / (JOURNAL + suffix))


def exposed_set(a: AgentProcess, shares: list[str]) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    """A persistent set of ``shares``, exposed and recovered (durable when answered)."""
    with a.client() as c:
        assert c.set_context(CTX_APP_ROLLBACK).return_value == ZERO
        sid = c.start(uuid.uuid4()).shadow_copy_set_id
        copies = {n: c.add(sid, unc(n)).shadow_copy_id for n in shares}
        assert c.commit(sid).return_value == ZERO
        assert c.expose(sid).return_value == ZERO
        assert c.recovery_complete(sid).return_value == ZERO
    return sid, copies


def consistent(a: AgentProcess) -> None:
    check_consistent(a.workdir / "state", list(a.shares.values()), set(a.exposed()))


def on_disk_mappings(tmp_path: Path) -> set[str]:
    """The local shares of the mappings the journal on disk holds now."""
    copy = tmp_path / f"look-{time.monotonic_ns()}"
    copy.mkdir()
    for suffix in ("", "-wal"):
        saved = tmp_path / "on-disk" / (JOURNAL + suffix)
        if saved.exists():
            shutil.copyfile(saved, copy / (JOURNAL + suffix))
    db = sqlite3.connect(copy / JOURNAL)
    try:
        return {r[0] for r in db.execute("SELECT local_share FROM mappings")}
    finally:
        db.close()


def test_delete_share_mapping_in_the_lazy_window(tmp_path: Path, btrfs: Path) -> None:
    """Not yet on disk when answered (the set keeps another copy); a power cut then
    loses the journal's record of it, and start-up finds the deletion in the real
    world: the snapshot is gone, so the copy goes (had btrfs not yet committed
    the snapshot's deletion either, the mapping would be back, exposed again:
    RELIABILITY.md)."""
    a = make_agent(tmp_path, btrfs, 2)
    a.start()
    sid, copies = exposed_set(a, ["share0", "share1"])
    with a.client() as c:
        assert c.delete_share_mapping(sid, copies["share0"], unc("share0")).return_value == ZERO
    assert on_disk_mappings(tmp_path) == {"share0", "share1"}  # not yet durable
    assert len(a.exposed()) == 1 and len(a.snapshots()) == 1
    power_cut(a, tmp_path)
    a.start()
    try:
        consistent(a)
        assert "snapshot missing on disk" in a.log.read_text()
        assert len(a.exposed()) == 1 and len(a.snapshots()) == 1
        with a.client() as c:
            r = c.delete_share_mapping(sid, copies["share0"], unc("share0"))
            assert r.return_value == HResult.FSRVP_E_OBJECT_NOT_FOUND
            assert c.delete_share_mapping(sid, copies["share1"], unc("share1")).return_value == ZERO
        assert a.snapshots() == [] and a.exposed() == {}
        consistent(a)
    finally:
        a.stop()


def test_delete_share_mapping_is_on_disk_within_the_window(tmp_path: Path, btrfs: Path) -> None:
    a = make_agent(tmp_path, btrfs, 2)
    a.start()
    sid, copies = exposed_set(a, ["share0", "share1"])
    with a.client() as c:
        assert c.delete_share_mapping(sid, copies["share0"], unc("share0")).return_value == ZERO
    time.sleep(SYNC_DELAY + 0.5)
    assert on_disk_mappings(tmp_path) == {"share1"}
    power_cut(a, tmp_path)
    a.start()
    try:
        consistent(a)
        assert "snapshot missing on disk" not in a.log.read_text()
        assert len(a.exposed()) == 1 and len(a.snapshots()) == 1
    finally:
        a.stop()


def test_last_delete_share_mapping_of_a_set_is_on_disk_when_answered(
        tmp_path: Path, btrfs: Path) -> None:
    a = make_agent(tmp_path, btrfs, 2)
    a.start()
    sid, copies = exposed_set(a, ["share0", "share1"])
    with a.client() as c:
        for n in ("share0", "share1"):
            assert c.delete_share_mapping(sid, copies[n], unc(n)).return_value == ZERO
    assert on_disk_mappings(tmp_path) == set()  # at once, no waiting
    power_cut(a, tmp_path)
    a.start()
    try:
        consistent(a)
        assert a.snapshots() == [] and a.exposed() == {}
    finally:
        a.stop()


def test_power_cut_right_after_expose_keeps_the_set(tmp_path: Path, btrfs: Path) -> None:
    """Expose's intents are not fsync'd, its record is: a set answered Exposed
    is on disk with every share, and a power cut leaves nothing pending."""
    a = make_agent(tmp_path, btrfs, 3)
    a.start()
    exposed_set(a, ["share0", "share1", "share2"])
    assert on_disk_mappings(tmp_path) == {"share0", "share1", "share2"}
    power_cut(a, tmp_path)
    a.start()
    try:
        consistent(a)
        assert len(a.exposed()) == 3 and len(a.snapshots()) == 3
    finally:
        a.stop()
