"""The one journaled-effect runner: write the intent, run the effect, clear the intent.

Why: every external effect of the agent (snapshots taken, sealed, deleted;
shares exposed and removed) must be journaled before it happens, so that a
crash at any instant is undone or finished at start-up (agent/journal.py,
agent/intents.py).  The calls differ in what they record around the effect;
the order does not, so it is written here once:

1. :meth:`EffectRunner.begin`: the intents of a step, one transaction.
2. the effect itself (the service runs it in a worker thread).
3. :meth:`EffectRunner.settle`: one transaction that clears the step's
   intents, records the sets' new state and writes the intents of the
   teardown the outcome asks for.
4. :meth:`EffectRunner.carry_out` (worker thread): that teardown, then one
   transaction clearing what succeeded, without an fsync of its own (a
   failure stays pending for the next start-up; replaying a removal that did
   happen is harmless: all removals are idempotent).

Rules of this module
--------------------
* It knows intents, the journal, the exposer and the snapshot backends; not
  the FSRVP rules (the machine decides what to remove) nor the wire.
* Blocking methods say so; the service calls them through ``asyncio.to_thread``.
* Test crash points (``REMOTEVSS_CRASH_AFTER``) are named after the effect
  just done: the crash matrix SIGKILLs the agent at each.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID

from remotevss.agent.intents import Intent, UnexposeIntent, for_teardown
from remotevss.agent.journal import Journal
from remotevss.fsrvp.machine import (
    DeleteSnapshot,
    Effect,
    SealSnapshot,
    ShadowCopySet,
    UnexposeShare,
)
from remotevss.shares.exposer import ExposeError, Exposer, removed_before, unexpose_all
from remotevss.snapshots.base import Backend, SnapRequest, SnapshotError, supports_batches
from remotevss.snapshots.select import BACKENDS

log = logging.getLogger("remotevss.agent")

Pending = list[tuple[int, Effect]]  # (intent id, teardown effect)


def backend_of(volume_name: str) -> Backend:
    """The backend that made a snapshot of ``volume_name`` (``backend:root``)."""
    return BACKENDS[volume_name.split(":", 1)[0]]


MAX_PARALLEL = 64  # snapshot threads of one set


def take_together(requests: Sequence[SnapRequest]) -> list[str | SnapshotError]:
    """Take every snapshot of one set at (as nearly as possible) the same instant
    (blocking): per backend, one ``create_many`` where the backend takes batches,
    else every ``create`` started at once in its own thread.  Returns, in order,
    each snapshot's path or the error that stopped it: the caller keeps what was
    made for its all-or-nothing (a failed commit hands it back for deletion)."""
    results: list[str | SnapshotError] = [SnapshotError("not attempted")] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.volume.backend, []).append(i)

    def batch(backend: Backend, idx: list[int]) -> None:
        try:
            paths = backend.create_many([requests[i] for i in idx])  # type: ignore[attr-defined]
        except SnapshotError as exc:
            for i in idx:
                results[i] = exc
            return
        for i, path in zip(idx, paths, strict=True):
            results[i] = path

    def one(i: int) -> None:
        r = requests[i]
        try:
            results[i] = BACKENDS[r.volume.backend].create(r.volume, r.snap_name, r.writable)
        except SnapshotError as exc:
            results[i] = exc

    jobs: list[tuple[Callable[..., None], tuple[object, ...]]] = []
    for name, idx in groups.items():
        backend = BACKENDS[name]
        if supports_batches(backend):  # one request too: create_many carries the labels
            jobs.append((batch, (backend, idx)))
        else:
            jobs += [(one, (i,)) for i in idx]
    if len(jobs) == 1:
        fn, args = jobs[0]
        fn(*args)
        return results
    with ThreadPoolExecutor(min(len(jobs), MAX_PARALLEL), "snapshot") as pool:
        for f in [pool.submit(fn, *args) for fn, args in jobs]:
            f.result()
    return results


class EffectRunner:
    def __init__(self, journal: Journal, exposer: Exposer, crash_after: str | None = None) -> None:
        self.journal = journal
        self.exposer = exposer
        self.crash_after = crash_after

    def crash_point(self, name: str) -> None:
        """Test only: SIGKILL right after the named effect (tests/hardening)."""
        if self.crash_after == name:
            log.error("test crash point %s reached: SIGKILL", name)
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------- the removals (Effects)

    def unexpose(self, name: str) -> None:
        self.exposer.unexpose(name)

    def delete_snapshot(self, volume: str, path: str) -> None:
        backend_of(volume).delete(path)

    def seal_snapshot(self, volume: str, path: str) -> None:
        backend_of(volume).seal(path)

    def apply(self, e: Effect) -> None:
        """Run one teardown effect (blocking)."""
        match e:
            case UnexposeShare(exposed_name=name):
                self.unexpose(name)
            case DeleteSnapshot(volume_name=vol, snapshot_path=path):
                self.delete_snapshot(vol, path)
            case SealSnapshot(volume_name=vol, snapshot_path=path):
                self.seal_snapshot(vol, path)
            case _:
                raise AssertionError(f"not a teardown effect: {e}")

    # ---------------------------------------------------------- the journal

    def begin(self, intents: Sequence[Intent], *, durable: bool = True) -> list[int]:
        """Journal the intents of one step, one transaction.  ``durable=False`` only
        where start-up finds the effect in the real world without the intent (and
        RELIABILITY.md's power-loss table says what a power cut can then leave)."""
        with self.journal.transaction(durable=durable) as txn:
            return [txn.add_intent(i.kind, i.row()) for i in intents]

    def settle(
        self,
        done: Iterable[int] = (),
        *,
        save: Iterable[ShadowCopySet] = (),
        delete: Iterable[UUID] = (),
        teardown: Sequence[Effect] = (),
        durable: bool = True,
    ) -> Pending:
        """One transaction: ``done`` intents cleared, sets deleted and saved, and an
        intent for each teardown effect; returns the teardown to carry out.
        ``durable=False`` only where a durable intent already fixes the outcome
        (a roll-forward intent: losing this transaction to a power cut replays it)."""
        with self.journal.transaction(durable=durable) as txn:
            for iid in done:
                txn.clear_intent(iid)
            for sid in delete:
                txn.delete_set(sid)
            for s in save:
                txn.save_set(s)
            return [(txn.add_intent(for_teardown(e).kind, for_teardown(e).row()), e)
                    for e in teardown]

    def carry_out(self, pending: Pending) -> None:
        """Run journaled teardown (blocking); clear what succeeded in one transaction.

        Every share goes first, in one batch (:func:`unexpose_all`: one registry
        transaction and one round of smbd messages behind Samba), then the
        snapshots and seals in order; so no share ever points at a deleted
        snapshot.  A failure is logged and stays pending for the next start-up."""
        shares = [(iid, e) for iid, e in pending if isinstance(e, UnexposeShare)]
        others = [(iid, e) for iid, e in pending if not isinstance(e, UnexposeShare)]
        cleared: list[int] = []
        if shares:
            names = [e.exposed_name for _, e in shares]
            try:
                done = set(unexpose_all(self.exposer, names))
            except ExposeError as exc:
                log.error("UnexposeShare failed, will retry at start-up: %s", exc)
                done = set(removed_before(exc))
            cleared += [iid for iid, e in shares if e.exposed_name in done]
            if done:
                self.crash_point(UnexposeIntent.kind)
        for intent_id, effect in others:
            try:
                self.apply(effect)
            except (SnapshotError, ExposeError, OSError) as exc:
                log.error("%s failed, will retry at start-up: %s", type(effect).__name__, exc)
                continue
            self.crash_point(for_teardown(effect).kind)
            cleared.append(intent_id)
        if cleared:
            # No fsync: a power cut that loses this clearing replays the removals
            # at start-up, and they are idempotent (the next sync makes it durable).
            with self.journal.transaction(durable=False) as txn:
                for iid in cleared:
                    txn.clear_intent(iid)

    def quick(self, effects: Sequence[Effect]) -> bool:
        """True if every effect is short work in this process: a share removal by a
        ``quick_unexpose`` exposer, a snapshot deletion by a ``quick_delete`` backend."""
        for e in effects:
            match e:
                case UnexposeShare(exposed_name=name):
                    quick = getattr(self.exposer, "quick_unexpose", None)
                    if quick is None or not quick(name):
                        return False
                case DeleteSnapshot(volume_name=vol):
                    if not getattr(backend_of(vol), "quick_delete", False):
                        return False
                case _:
                    return False
        return True

    def apply_covered(self, effects: Sequence[Effect]) -> list[Effect]:
        """Run teardown an intent already journaled covers (a DeleteShareMapping's
        snapshot: its roll-forward finishes it); return the effects that failed,
        for the caller to journal as retries in its settling transaction."""
        failed: list[Effect] = []
        for e in effects:
            try:
                self.apply(e)
            except (SnapshotError, ExposeError, OSError) as exc:
                log.error("deleting %s failed, will retry: %s", e, exc)
                failed.append(e)
        return failed
