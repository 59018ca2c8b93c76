"""Start-up reconciliation: make the disk and the exposures agree with the journal.

Why: the agent may have been killed at any instant (tests SIGKILL it after
every effect).  Before it serves, what the journal says and what exists must
be one: half-made snapshots and shares removed, interrupted removals
finished, sets that cannot be resumed dropped, kept sets checked.

Rules of this module
--------------------
* Runs once, before serving, in a worker thread (blocking I/O).
* Pending intents are replayed through their own :meth:`recover`
  (agent/intents.py); removals go through the machine's rules
  (:func:`remotevss.fsrvp.machine.unmap`), never edited by hand here.
* A failure is reported (``ReconcileReport.errors``) and, where it is a
  removal, left journaled for the next start-up; it never stops the agent.
* Last, ZFS is asked which snapshots this agent labelled (agent/strays.py):
  those the journal does not know are strays, deleted (auto-release) through
  journaled teardown like any other, or kept and reported (persistent).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from uuid import UUID

from remotevss.agent.effects import EffectRunner, backend_of
from remotevss.agent.events import emit
from remotevss.agent.intents import DeleteMappingIntent, UnknownIntent, from_row
from remotevss.agent.journal import Journal
from remotevss.agent.release import Pick, describe
from remotevss.agent.strays import StrayFinder, collectable, unknown
from remotevss.fsrvp.constants import HResult
from remotevss.fsrvp.machine import (
    MappedShare,
    Outcome,
    ShadowCopySet,
    Status,
    teardown_effects,
    unmap,
)
from remotevss.shares.exposer import ExposeError, Exposer
from remotevss.shares.table import ShareLookup
from remotevss.snapshots.base import NotSupported, SnapshotError
from remotevss.snapshots.select import BACKENDS

log = logging.getLogger("remotevss.agent")


@dataclass
class ReconcileReport:
    """What start-up did to make the disk agree with the journal."""

    kept_sets: list[str] = field(default_factory=list)
    dropped_sets: list[str] = field(default_factory=list)
    intents_replayed: list[str] = field(default_factory=list)
    removed_shares: list[str] = field(default_factory=list)
    missing_snapshots: list[str] = field(default_factory=list)
    collected_strays: list[str] = field(default_factory=list)
    kept_strays: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out: list[str] = []
        for label, items in (
            ("kept set", self.kept_sets),
            ("dropped unfinished set", self.dropped_sets),
            ("replayed intent", self.intents_replayed),
            ("removed leaked share", self.removed_shares),
            ("snapshot missing on disk", self.missing_snapshots),
            ("deleted auto-release stray", self.collected_strays),
            ("kept persistent stray (remotevss sets list)", self.kept_strays),
            ("error", self.errors),
        ):
            out.extend(f"{label}: {x}" for x in items)
        return out


class Reconciler:
    def __init__(
        self, journal: Journal, exposer: Exposer, runner: EffectRunner, shares: ShareLookup,
        strays: StrayFinder | None = None,
    ) -> None:
        self.journal = journal
        self.exposer = exposer
        self.runner = runner
        self.shares = shares
        self.strays = strays

    def run(self) -> tuple[ReconcileReport, list[ShadowCopySet]]:
        """1. Replay pending intents: half-made snapshots and shares are removed,
           interrupted deletions and seals are finished.
        2. Sets that never reached Exposed are dropped with their snapshots;
           Exposed and Recovered sets are kept (persistent copies survive),
           their snapshots checked on disk and their protection re-applied.
        3. Shares exposed by us that no kept set knows are removed.
        4. Strays (ZFS snapshots labelled by this agent, unknown to the journal)
           are deleted if auto-release, else kept and reported.
        Returns the report and the kept sets (for the machine)."""
        rep = ReconcileReport()
        unmapped: list[tuple[int, DeleteMappingIntent]] = []
        replayed: list[int] = []
        for row in self.journal.pending_intents():
            try:
                intent = from_row(row.kind, row.detail)
                intent.recover(self.runner)
            except (UnknownIntent, SnapshotError, ExposeError, OSError) as exc:
                rep.errors.append(f"intent {row.kind} {row.detail}: {exc}")
                continue
            if isinstance(intent, DeleteMappingIntent):
                unmapped.append((row.id, intent))  # cleared once the journal's sets reflect it
                continue
            replayed.append(row.id)
            rep.intents_replayed.append(intent.label())
        if replayed:
            with self.journal.transaction() as txn:
                for iid in replayed:
                    txn.clear_intent(iid)
        kept: list[ShadowCopySet] = []
        for s in self._finish_unmapping(self.journal.load_sets(), unmapped, rep):
            if s.status in (Status.EXPOSED, Status.RECOVERED):
                self._check_kept(s, rep)
                kept.append(s)
                rep.kept_sets.append(f"{s.id} ({s.status.value}, {len(s.copies)} copies)")
                continue
            for effect in teardown_effects(s):
                try:
                    self.runner.apply(effect)
                except (SnapshotError, ExposeError, OSError) as exc:
                    rep.errors.append(f"dropping {s.id}: {exc}")
            with self.journal.transaction() as txn:
                txn.delete_set(s.id)
            rep.dropped_sets.append(f"{s.id} ({s.status.value})")
        with self.journal.transaction() as txn:
            txn.save_sets(kept)
        known = {m.exposed_name for s in kept for c in s.copies for m in c.mappings if m.is_exposed}
        for name in set(self.exposer.exposed()) - known:
            try:
                self.exposer.unexpose(name)
                rep.removed_shares.append(name)
            except ExposeError as exc:
                rep.errors.append(str(exc))
        if self.strays is not None:
            self._collect_strays(self.strays, kept, rep)
        for line in rep.lines():
            log.info("start-up: %s", line)
        return rep, kept

    def _finish_unmapping(
        self,
        sets: list[ShadowCopySet],
        unmapped: list[tuple[int, DeleteMappingIntent]],
        rep: ReconcileReport,
    ) -> list[ShadowCopySet]:
        """Roll interrupted DeleteShareMapping calls forward, by the machine's rule:
        the mapping goes, the last mapping takes the snapshot, the last copy the set."""
        table: dict[UUID, ShadowCopySet] = {s.id: s for s in sets}
        for iid, intent in unmapped:
            s = next((x for x in table.values() if str(x.id) == intent.set_id), None)
            c = next((c for c in s.copies if str(c.id) == intent.copy_id), None) if s else None
            if s is None or c is None:
                with self.journal.transaction() as txn:
                    txn.clear_intent(iid)
                continue
            out = Outcome(HResult.ZERO)
            share = intent.share

            def gone(mp: MappedShare, share: str = share) -> bool:
                return mp.local_share == share

            unmap(table, s, c, gone, out)
            failed = self.runner.apply_covered(out.teardown)
            rep.intents_replayed.append(intent.label())
            pending = self.runner.settle(
                [iid],
                save=[s] if s.id in table else [],
                delete=out.dropped_sets,
                teardown=failed,
            )
            rep.errors.extend(f"will retry: {e}" for _, e in pending)
        return list(table.values())

    def _check_kept(self, s: ShadowCopySet, rep: ReconcileReport) -> None:
        for c in list(s.copies):
            backend = backend_of(c.volume_name)
            if not c.snapshot_path or not backend.exists(c.snapshot_path):
                rep.missing_snapshots.append(f"{c.id} {c.snapshot_path}")
                for mp in c.mappings:
                    if mp.is_exposed:
                        self.exposer.unexpose(mp.exposed_name)
                s.copies.remove(c)
                continue
            backend.restore_protection(c.snapshot_path, read_only=not c.writable)
            for mp in c.mappings:
                if mp.is_exposed and mp.exposed_name not in self.exposer.exposed():
                    share = self.shares.lookup(mp.local_share)
                    if share is not None:
                        try:
                            volume = BACKENDS[backend.name].check(share.path)
                            sub = volume.share_subpath
                        except (NotSupported, SnapshotError):
                            sub = ""
                        path = os.path.join(c.snapshot_path, sub) if sub else c.snapshot_path
                        self.exposer.expose(mp.exposed_name, mp.local_share, path, c.writable)

    def _collect_strays(self, finder: StrayFinder, kept: list[ShadowCopySet],
                        rep: ReconcileReport) -> None:
        """Auto-release strays go through journaled teardown (a crash in the middle
        is finished by the next start-up's intent replay); persistent ones stay."""
        try:
            lost = unknown(finder.labelled(), kept, self.journal.pending_intents())
        except (SnapshotError, OSError) as exc:
            rep.errors.append(f"listing strays: {exc}")
            return
        done: list[Pick] = []
        effects = collectable(lost, done)
        for p in done:
            emit(describe(None, p), logging.WARNING)
        if effects:
            self.runner.carry_out(self.runner.settle(teardown=effects))
        rep.collected_strays += [x.zfs_name for x in lost if not x.persistent]
        rep.kept_strays += [f"{x.zfs_name} (set {x.set_id}, context {x.context or '?'}"
                            f"{', held' if x.held else ''})" for x in lost if x.persistent]
