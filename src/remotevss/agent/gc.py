"""Orphan collection: shadow copies nobody will ever delete, deleted by the agent.

Why: FSRVP leaves deletion to the client (DeleteShareMapping).  A backup
application that crashes, or a host that is reinstalled, leaves its shadow
copies and their shares behind for ever, and every one pins the data it
captured.  The Windows agent ages shadow copies out; so do we:

* **orphan**: an *auto-release* set (the context lacks ATTR_NO_AUTO_RELEASE)
  that reached Committed, Exposed or Recovered, and on which no FSRVP call was
  made for ``[gc] orphan_after`` seconds: its client is gone.  (Reading the
  exposed share over SMB is not an FSRVP call: the agent cannot see it; the
  default of 12 hours covers a long backup read.)  A persistent set is only
  *Committed* and idle counts too: nobody can expose it any more.
* **max_age**: any shadow copy older (since AddToShadowCopySet) than
  ``[gc] max_age`` (default 24 hours), or its context's entry in
  ``[gc.max_age_by_context]`` (0: never by age).
* **storage**: the oldest Recovered copies of a volume over its shadow
  storage maximum, with policy ``delete_oldest`` (agent/storage.py).
* **stray**: a ZFS snapshot labelled by this agent that the journal does not
  know (agent/strays.py), if its context is auto-release; persistent strays
  are kept, reported once (``stray_kept``) and listed, for root to delete.

Sets still in a sequence (Started, Added, CreationInProgress) are never
touched: the message sequence timer owns them.  Deletion goes through the
service's teardown path (:meth:`AgentService.release`): the rules only
choose (agent/release.py), :meth:`Machine.release` takes the set off the
machine, the journal records intents, snapshots and shares are removed, and
a crash in the middle is finished at start-up like any teardown.  Every
deletion is one ``gc_delete`` event line naming the reason.  Strays, which
the machine does not know, skip the machine: their ``DeleteSnapshot`` effects
join the pass's teardown, journaled and carried out the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from remotevss.agent.config import GcConfig
from remotevss.agent.events import CallEvent, emit
from remotevss.agent.release import Pick, context_name, logged, release_picks
from remotevss.agent.strays import Stray, StrayFinder, collectable, teardown, unknown
from remotevss.fsrvp.constants import HResult
from remotevss.fsrvp.machine import Machine, Outcome, Status

if TYPE_CHECKING:
    from remotevss.agent.service import AgentService
    from remotevss.agent.storage import StorageManager

log = logging.getLogger("remotevss.agent.gc")

FINISHED = (Status.COMMITTED, Status.EXPOSED, Status.RECOVERED)


# --------------------------------------------------------------- activity


class Activity:
    """When each set last saw an FSRVP call (the orphan rule's clock).

    Kept in memory, updated by a call hook, and written (without fsync: it is
    advisory) to ``<state_dir>/gc-activity.json`` at every pass and at stop, so
    a restart does not make every set look fresh or ancient.  Sets with no
    record count from ``since`` (the agent's start).
    """

    def __init__(self, path: Path, since: float) -> None:
        self.path = path
        self.since = since
        self.last: dict[UUID, float] = {}
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            for k, v in json.loads(path.read_text()).items():
                self.last[UUID(k)] = float(v)

    def on_call(self, event: CallEvent) -> None:
        sid = event.set_id()
        if sid is not None:
            self.last[sid] = event.at + event.duration

    def of(self, set_id: UUID) -> float:
        return self.last.get(set_id, self.since)

    def save(self, live: Iterable[UUID]) -> None:
        keep = set(live)
        self.last = {k: v for k, v in self.last.items() if k in keep}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({str(k): v for k, v in self.last.items()}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)


# --------------------------------------------------------------- decisions


def plan_gc(machine: Machine, now: float, policy: GcConfig, activity: Activity) -> list[Pick]:
    """The orphan and age rules over the machine's table (pure)."""
    picks: list[Pick] = []
    for s in machine.sets.values():
        if s.status not in FINISHED:
            continue
        idle = now - activity.of(s.id)
        if (
            policy.orphan_after > 0
            and idle >= policy.orphan_after
            and (s.auto_release or s.status is Status.COMMITTED)
        ):
            kind = "auto-release" if s.auto_release else "persistent, never exposed,"
            picks.append(Pick(s.id, None, "orphan",
                              f"{kind} {s.status.value} set idle {idle:.0f} s "
                              f">= orphan_after {policy.orphan_after:.0f} s"))
            continue
        limit = policy.max_age_for(context_name(s.context))
        if limit <= 0:
            continue
        for c in s.copies:
            age = now - c.creation_time
            if age >= limit:
                picks.append(Pick(s.id, c.id, "max_age",
                                  f"copy {age:.0f} s old >= max_age {limit:.0f} s "
                                  f"({context_name(s.context)})"))
    return picks


# --------------------------------------------------------------- the collector


@dataclass
class GcStats:
    passes: int = 0
    last_pass: float | None = None
    last_error: str = ""
    deleted: dict[str, int] = field(default_factory=dict)  # reason -> count


class Collector:
    """Runs the rules at start-up and every ``[gc] interval`` seconds."""

    def __init__(
        self,
        service: AgentService,
        activity: Activity,
        storage: StorageManager | None = None,
        strays: StrayFinder | None = None,
    ) -> None:
        self.service = service
        self.activity = activity
        self.storage = storage
        self.strays = strays
        self.kept_strays: list[Stray] = []  # persistent strays of the last pass
        self._reported: set[str] = set()  # zfs names already logged as kept
        self.stats = GcStats()
        self.on_delete: list[Callable[[Pick], None]] = [self._count]
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def policy(self) -> GcConfig:
        return self.service.config.gc

    def _count(self, p: Pick) -> None:
        self.stats.deleted[p.reason] = self.stats.deleted.get(p.reason, 0) + 1

    async def run_pass(self) -> list[Pick]:
        """One pass: age and orphan rules, shadow storage maximums, then strays."""
        done: list[Pick] = []
        try:
            policy = self.policy
            measured = None
            if self.storage is not None:
                measured = await self.storage.measure_all(self.service)
            found: list[Stray] | None = None

            def decide(machine: Machine, applied: list[Pick]) -> Outcome:
                now = self.service.clock()
                picks = plan_gc(machine, now, policy, self.activity)
                if self.storage is not None and measured is not None:
                    taken = {(p.set_id, p.copy_id) for p in picks}
                    picks += [p for p in self.storage.plan_over_limit(machine, measured)
                              if (p.set_id, p.copy_id) not in taken
                              and (p.set_id, None) not in taken]
                out = release_picks(machine, picks, applied)
                if found is not None:
                    lost = self._unknown(found, machine)
                    out.teardown += collectable(lost, applied)
                    self._keep([x for x in lost if x.persistent])
                done.extend(applied)
                return out

            async with self.service.call_lock:  # see _list_strays
                found = await self._list_strays()
                await self.service.release(logged(decide, self.on_delete), locked=True)
            if done and self.storage is not None:
                await self.storage.measure_all(self.service)  # what status shows: after
            self.activity.save(self.service.machine.sets)
            self.stats.last_error = ""
        except Exception as exc:  # the loop must survive; status reports it
            log.exception("gc pass failed")
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
        self.stats.passes += 1
        self.stats.last_pass = self.service.clock()
        return done

    async def _list_strays(self) -> list[Stray] | None:
        """ZFS's labelled snapshots, listed while the caller holds the call lock: no
        call removes a copy from the journal, or marks its clone doomed, between the
        listing and the journal read that follows it (seen here: a DeleteShareMapping
        whose busy clone was doomed in that window was reported as a kept stray)."""
        return await asyncio.to_thread(self.strays.labelled) if self.strays else None

    def _unknown(self, found: list[Stray], machine: Machine) -> list[Stray]:
        """Under the service's lock: the labelled snapshots the journal does not name."""
        return unknown(found, machine.sets.values(), self.service.journal.pending_intents())

    def _keep(self, kept: list[Stray]) -> None:
        self.kept_strays = kept
        if self.storage is not None:
            self.storage.strays = kept
        for x in kept:
            if x.zfs_name not in self._reported:
                self._reported.add(x.zfs_name)
                emit({"event": "stray_kept", "detail": "persistent shadow copy labelled by "
                      "this agent in ZFS, unknown to its journal: kept (remotevss sets "
                      "delete SET_ID removes it)", **x.as_dict()}, logging.WARNING)

    async def delete_strays(self, set_id: UUID, copy_id: UUID | None) -> list[Pick]:
        """Root's ``sets delete`` of a set the machine does not hold: its strays
        (persistent ones too) go through the journaled teardown path."""
        done: list[Pick] = []
        taken: list[Stray] = []

        def decide(machine: Machine, _now: float) -> Outcome:
            wanted = [x for x in found if _same(x.set_id, set_id)
                      and (copy_id is None or _same(x.copy_id, copy_id))]
            taken.extend(self._unknown(wanted, machine))
            out = Outcome(HResult.ZERO)
            out.teardown = teardown(taken, "admin", "stray deleted by an administrator", done)
            return out

        async with self.service.call_lock:
            found = await self._list_strays() or []
            await self.service.release(decide, locked=True)
        self._keep([x for x in self.kept_strays if x not in taken])
        return done

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """Run a pass now (SIGHUP, admin request) and re-read the interval."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            interval = self.policy.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval if interval > 0 else None)
            self._wake.clear()
            if not self._stopping:
                await self.run_pass()

    async def stop(self) -> None:
        """Let a running pass finish, then end the loop.  (A flag, not cancel():
        Python 3.11's wait_for drops a cancellation that races the wake-up.)"""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self.activity.save(self.service.machine.sets)


def _same(label: str, wanted: UUID) -> bool:
    try:
        return UUID(label) == wanted
    except ValueError:
        return False
