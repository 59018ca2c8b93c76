"""Typed intents, the journaled-effect runner and a set's snapshots taken together.

Real parts: a SQLite journal, the symlink exposer and the copy backend in a
temporary directory (writable snapshots: no bind mount, so no root needed).
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from remotevss.agent import intents
from remotevss.agent.effects import EffectRunner, take_together
from remotevss.agent.journal import Journal
from remotevss.agent.reconcile import Reconciler
from remotevss.fsrvp.machine import DeleteSnapshot, SealSnapshot, UnexposeShare
from remotevss.shares.exposer import (
    ExposeError,
    ShareRequest,
    SymlinkExposer,
    expose_all,
    removed_before,
    unexpose_all,
)
from remotevss.shares.table import LocalShare, ShareTable
from remotevss.snapshots.base import SnapRequest, SnapshotError
from remotevss.snapshots.select import BACKENDS

ALL = [
    intents.CreateSnapshotIntent("copy:/v", "/v/.snapshots/s", str(uuid.uuid4())),
    intents.ExposeIntent("data@{x}"),
    intents.UnexposeIntent("data@{x}"),
    intents.DeleteSnapshotIntent("btrfs:/v", "/v/.snapshots/s"),
    intents.SealSnapshotIntent("btrfs:/v", "/v/.snapshots/s"),
    intents.DeleteMappingIntent(str(uuid.uuid4()), str(uuid.uuid4()), "data", ""),
]


@pytest.mark.parametrize("intent", ALL, ids=lambda i: i.kind)
def test_every_kind_round_trips_through_its_row(intent: intents.Intent) -> None:
    assert intents.from_row(intent.kind, intent.row()) == intent
    assert intent.kind in intents.KINDS and intent.label().startswith(intent.kind)


def test_rows_written_by_earlier_agents_still_parse() -> None:
    # the journal's on-disk detail keys, as service.py wrote them before the types
    assert intents.from_row("delete_mapping", {"set": "S", "copy": "C", "share": "data",
                                               "name": "data@{C}"}) == (
        intents.DeleteMappingIntent("S", "C", "data", "data@{C}"))
    assert intents.from_row("create_snapshot", {"volume": "v", "path": "p", "copy": "c"}) == (
        intents.CreateSnapshotIntent("v", "p", "c"))
    with pytest.raises(intents.UnknownIntent, match="unknown intent kind"):
        intents.from_row("format_disk", {})
    with pytest.raises(intents.UnknownIntent, match="without"):
        intents.from_row("expose", {})


def test_teardown_effects_map_to_their_intents() -> None:
    cid = uuid.uuid4()
    assert intents.for_teardown(UnexposeShare("a@{x}")) == intents.UnexposeIntent("a@{x}")
    assert intents.for_teardown(DeleteSnapshot(cid, "copy:/v", "/p")) == (
        intents.DeleteSnapshotIntent("copy:/v", "/p"))
    assert intents.for_teardown(SealSnapshot(cid, "copy:/v", "/p")) == (
        intents.SealSnapshotIntent("copy:/v", "/p"))


def _volumes(tmp_path: Path, n: int) -> list[Path]:
    roots = []
    for i in range(n):
        root = tmp_path / f"vol{i}"
        root.mkdir()
        (root / "f.txt").write_text(f"volume {i}\n")
        roots.append(root)
    return roots


def test_take_together_snapshots_every_volume_and_reports_each_failure(tmp_path: Path) -> None:
    copy = BACKENDS["copy"]
    roots = _volumes(tmp_path, 3)
    reqs = [SnapRequest(copy.check(str(r)), f"snap{i}", True) for i, r in enumerate(roots)]
    reqs[1] = SnapRequest(reqs[1].volume, "../escape", True)  # refused by the backend
    results = take_together(reqs)
    assert isinstance(results[1], SnapshotError) and results[1].errno == errno.EINVAL
    for i in (0, 2):
        made = results[i]
        assert isinstance(made, str)
        assert Path(made, "f.txt").read_text() == f"volume {i}\n"
        copy.delete(made)
    left = roots[1] / ".snapshots"
    assert not left.exists() or not any(left.iterdir())  # the refused one left nothing


def test_take_together_starts_the_creates_at_once(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each create of a set runs in its own thread: four slow creates overlap."""
    copy = BACKENDS["copy"]
    roots = _volumes(tmp_path, 4)
    reqs = [SnapRequest(copy.check(str(r)), "s", True) for r in roots]
    running, peak, lock = [0], [0], threading.Lock()
    real_create = type(copy).create

    def slow_create(self: object, volume: object, name: str, writable: bool) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)  # the instant all four must share
        try:
            return real_create(self, volume, name, writable)  # type: ignore[arg-type]
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(type(copy), "create", slow_create)
    results = take_together(reqs)
    assert peak[0] == 4 and all(isinstance(r, str) for r in results)
    for r in results:
        copy.delete(str(r))


def test_expose_all_and_unexpose_all_without_batches(tmp_path: Path) -> None:
    ex = SymlinkExposer(tmp_path / "exposed")
    reqs = [ShareRequest(f"s{i}@{{x}}", f"s{i}", str(tmp_path), False) for i in range(3)]
    bad = ShareRequest("a/b", "a", str(tmp_path), False)  # not a share name
    done, exc = expose_all(ex, [reqs[0], bad, reqs[1]])
    assert done == [reqs[0].name] and isinstance(exc, ExposeError)
    assert set(ex.exposed()) == {reqs[0].name}
    assert expose_all(ex, reqs) == ([r.name for r in reqs], None)
    with pytest.raises(ExposeError) as info:
        unexpose_all(ex, [reqs[0].name, "a/b", reqs[2].name])
    assert removed_before(info.value) == [reqs[0].name, reqs[2].name]
    assert set(ex.exposed()) == {reqs[1].name}


def test_runner_teardown_and_start_up_replay(tmp_path: Path) -> None:
    """carry_out removes shares first and clears every intent in one transaction;
    what a crash left pending is finished by the reconciler."""
    journal = Journal(tmp_path / "j.sqlite")
    ex = SymlinkExposer(tmp_path / "exposed")
    runner = EffectRunner(journal, ex)
    copy = BACKENDS["copy"]
    (root,) = _volumes(tmp_path, 1)
    vol = copy.check(str(root))
    snap = copy.create(vol, "snap", True)
    ex.expose("vol0@{x}", "vol0", snap, False)
    before, durable = journal.transactions, journal.durable_transactions
    pending = runner.settle(teardown=[UnexposeShare("vol0@{x}"),
                                      DeleteSnapshot(uuid.uuid4(), vol.name, snap)])
    assert [r.kind for r in journal.pending_intents()] == ["unexpose", "delete_snapshot"]
    runner.carry_out(pending)
    assert journal.transactions == before + 2  # settle, and one clearing transaction
    assert journal.durable_transactions == durable + 1  # settle; the clearing waits
    assert journal.unsynced == 1
    assert journal.pending_intents() == [] and ex.exposed() == {} and not os.path.exists(snap)
    # a crash between intent and effect: start-up finishes (or undoes) it
    snap = copy.create(vol, "snap2", True)
    ex.expose("vol0@{y}", "vol0", snap, False)
    runner.begin([intents.DeleteSnapshotIntent(vol.name, snap), intents.ExposeIntent("vol0@{y}")])
    report, kept = Reconciler(journal, ex, runner, ShareTable([LocalShare("vol0", str(root))])).run()
    assert kept == [] and report.errors == []
    assert report.intents_replayed == [f"delete_snapshot {snap}", "expose vol0@{y}"]
    assert journal.pending_intents() == [] and ex.exposed() == {} and not os.path.exists(snap)
    journal.close()


def test_journal_sync_puts_lazy_commits_on_disk(tmp_path: Path) -> None:
    """Commits without fsync are counted until a sync or a durable commit takes
    them to disk; close syncs; ``fake_disk`` holds what is on disk each time."""
    disk = tmp_path / "disk"
    journal = Journal(tmp_path / "j.sqlite", fake_disk=disk)

    def on_disk_intents() -> int:
        look = tmp_path / f"look{time.monotonic_ns()}"
        look.mkdir()
        for name in ("j.sqlite", "j.sqlite-wal"):
            if (disk / name).exists():
                (look / name).write_bytes((disk / name).read_bytes())
        j = Journal(look / "j.sqlite")
        try:
            return len(j.pending_intents())
        finally:
            j.close()

    with journal.transaction(durable=False) as txn:
        txn.add_intent("expose", {"name": "a"})
    with journal.transaction(durable=False) as txn:
        txn.add_intent("expose", {"name": "b"})
    assert (journal.unsynced, journal.syncs, on_disk_intents()) == (2, 0, 0)
    journal.sync()
    assert (journal.unsynced, journal.syncs, on_disk_intents()) == (0, 1, 2)
    journal.sync()  # nothing to do: no fsync
    assert journal.syncs == 1
    with journal.transaction(durable=False) as txn:
        txn.add_intent("expose", {"name": "c"})
    with journal.transaction() as txn:  # a durable commit takes the earlier one along
        txn.add_intent("expose", {"name": "d"})
    assert (journal.unsynced, journal.syncs, on_disk_intents()) == (0, 1, 4)
    with journal.transaction(durable=False) as txn:
        txn.add_intent("expose", {"name": "e"})
    journal.close()
    assert journal.syncs == 2


def test_only_short_in_process_teardown_runs_on_the_event_loop(tmp_path: Path) -> None:
    """EffectRunner.quick: a symlink's removal and a btrfs subvolume deletion (one
    ioctl) may block the loop; a copy's or a zfs snapshot's removal, a share removal
    through a child process, or anything else may not."""

    class AsciiExposer(SymlinkExposer):
        """As RegistryExposer: names its in-process code refuses go to a child."""

        def quick_unexpose(self, name: str) -> bool:
            return name.isascii()

    journal = Journal(tmp_path / "j.sqlite")
    quick = EffectRunner(journal, SymlinkExposer(tmp_path / "a")).quick
    picky = EffectRunner(journal, AsciiExposer(tmp_path / "b")).quick
    unexpose = UnexposeShare("data@{x}")
    accented = UnexposeShare("donn\u00e9es@{x}")
    cid = uuid.uuid4()
    assert quick([]) and quick([unexpose]) and quick([accented])
    assert quick([unexpose, DeleteSnapshot(cid, "btrfs:/v", "/v/.snapshots/s")])
    assert picky([unexpose]) and not picky([accented]) and not picky([unexpose, accented])
    for vol in ("copy:/v", "reflink:/v", "zfs:pool/v", "zfs-enclosing:pool/v"):
        assert not quick([DeleteSnapshot(cid, vol, "/v/.snapshots/s")]), vol
    assert not quick([SealSnapshot(cid, "btrfs:/v", "/v/.snapshots/s")])
    journal.close()
