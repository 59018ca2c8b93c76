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

Sets still in a sequence (Started, Added, CreationInProgress) are never
touched: the message sequence timer owns them.  Deletion goes through the
service's teardown path (:meth:`AgentService.release`): the set leaves the
machine, the journal records intents, snapshots and shares are removed, and
a crash in the middle is finished at start-up like any teardown.  Every
deletion is one ``gc_delete`` event line naming the reason.
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
from remotevss.agent.events import CallEvent, emit, trace_effect
from remotevss.fsrvp.constants import (
    CTX_APP_ROLLBACK,
    CTX_BACKUP,
    CTX_FILE_SHARE_BACKUP,
    CTX_NAS_ROLLBACK,
    Attr,
    HResult,
)
from remotevss.fsrvp.machine import (
    DeleteSnapshot,
    Machine,
    Outcome,
    SealSnapshot,
    ShadowCopySet,
    Status,
    UnexposeShare,
    teardown_effects,
)

if TYPE_CHECKING:
    from remotevss.agent.service import AgentService
    from remotevss.agent.storage import StorageManager

log = logging.getLogger("remotevss.agent.gc")

_BASES = {
    CTX_BACKUP: "backup",
    CTX_FILE_SHARE_BACKUP: "file_share_backup",
    CTX_NAS_ROLLBACK: "nas_rollback",
    CTX_APP_ROLLBACK: "app_rollback",
}
FINISHED = (Status.COMMITTED, Status.EXPOSED, Status.RECOVERED)


def context_name(context: int) -> str:
    """The base context's name in [gc.max_age_by_context] (recovery bits ignored)."""
    base = context & ~(Attr.ATTR_AUTO_RECOVERY | Attr.ATTR_NO_AUTO_RECOVERY)
    return _BASES.get(base, f"0x{context:08x}")


@dataclass(frozen=True)
class Pick:
    """One deletion the agent decided on: a whole set (``copy_id`` None) or one copy."""

    set_id: UUID
    copy_id: UUID | None
    reason: str  # orphan | max_age | storage | shutdown
    detail: str
    deleted: bool = True  # False: kept (a persistent Exposed set sealed at shutdown)


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


def release_picks(machine: Machine, picks: Iterable[Pick], done: list[Pick]) -> Outcome:
    """Take the picked sets/copies off the machine; their teardown is the outcome.

    The mirror of DeleteShareMapping's last mapping: a copy goes with its shares
    and snapshot, a set with its last copy.  Picks whose set or copy is gone by
    now are skipped; those applied are appended to ``done``."""
    out = Outcome(HResult.ZERO)
    for p in picks:
        s = machine.sets.get(p.set_id)
        if s is None:
            continue
        victims = [c for c in s.copies if p.copy_id in (None, c.id)]
        if not victims and p.copy_id is not None:
            continue
        for c in victims:
            out.teardown.extend(UnexposeShare(m.exposed_name) for m in c.mappings if m.is_exposed)
            if c.snapshot_path:
                out.teardown.append(DeleteSnapshot(c.id, c.volume_name, c.snapshot_path))
            s.copies.remove(c)
        if not s.copies:
            del machine.sets[s.id]
            out.dropped_sets.append(s.id)
        done.append(p)
    return out


def shutdown_outcome(machine: Machine, done: list[Pick]) -> Outcome:
    """SIGTERM: nobody can finish a sequence across a restart, so every set that is
    not Recovered is dropped with its snapshots and shares, except an Exposed
    *persistent* set, which the client already has: it is sealed and kept as
    Recovered (the machine's own rule at timer expiry, decisions.md 6a).
    Recovered sets (persistent or not) are kept; the context is cleared."""
    out = Outcome(HResult.ZERO)
    for s in list(machine.sets.values()):
        if s.status is Status.RECOVERED:
            continue
        if s.status is Status.EXPOSED and not s.auto_release:
            for c in s.copies:
                if c.writable and c.snapshot_path:
                    out.teardown.append(SealSnapshot(c.id, c.volume_name, c.snapshot_path))
                    c.writable = False
            s.status = Status.RECOVERED
            done.append(Pick(s.id, None, "shutdown", "persistent Exposed set kept as Recovered",
                             deleted=False))
            continue
        del machine.sets[s.id]
        out.teardown.extend(teardown_effects(s))
        out.dropped_sets.append(s.id)
        done.append(Pick(s.id, None, "shutdown", f"{s.status.value} set cannot outlive the agent"))
    machine.context_set = False
    machine.current_context = 0
    machine.client_address = None
    machine.deadline = None
    return out


def describe(s: ShadowCopySet | None, p: Pick) -> dict[str, object]:
    """The event fields of one deletion, read before it happens."""
    copies = [] if s is None else [c for c in s.copies if p.copy_id in (None, c.id)]
    return {
        "event": "gc_delete" if p.reason != "shutdown" else "shutdown_release",
        "reason": p.reason,
        "detail": p.detail,
        "set": str(p.set_id),
        "copy": str(p.copy_id) if p.copy_id else None,
        "status": s.status.value if s else None,
        "context": context_name(s.context) if s else None,
        "copies": [
            {
                "id": str(c.id),
                "volume": c.volume_name,
                "snapshot": c.snapshot_path,
                "shares": [m.exposed_name for m in c.mappings if m.is_exposed],
            }
            for c in copies
        ],
    }


def logged(decide: Callable[[Machine, list[Pick]], Outcome],
           on_delete: Iterable[Callable[[Pick], None]] = ()) -> Callable[[Machine, float], Outcome]:
    """Wrap a decision so each applied pick becomes one event line (and a metric)."""
    hooks = list(on_delete)

    def run(machine: Machine, _now: float) -> Outcome:
        before = {sid: _clone(s) for sid, s in machine.sets.items()}
        done: list[Pick] = []
        out = decide(machine, done)
        for p in done:
            emit(describe(before.get(p.set_id), p),
                 logging.INFO if p.reason == "shutdown" else logging.WARNING)
            for hook in hooks if p.deleted else ():
                hook(p)
        for e in out.teardown:
            trace_effect(type(e).__name__, **{k: v for k, v in vars(e).items()})
        return out

    return run


def _clone(s: ShadowCopySet) -> ShadowCopySet:
    return ShadowCopySet(s.id, s.status, s.context, list(s.copies))


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
    ) -> None:
        self.service = service
        self.activity = activity
        self.storage = storage
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
        """One pass: age and orphan rules, then shadow storage maximums."""
        done: list[Pick] = []
        try:
            policy = self.policy
            measured = None
            if self.storage is not None:
                measured = await self.storage.measure_all(self.service)

            def decide(machine: Machine, applied: list[Pick]) -> Outcome:
                now = self.service.clock()
                picks = plan_gc(machine, now, policy, self.activity)
                if self.storage is not None and measured is not None:
                    taken = {(p.set_id, p.copy_id) for p in picks}
                    picks += [p for p in self.storage.plan_over_limit(machine, measured)
                              if (p.set_id, p.copy_id) not in taken
                              and (p.set_id, None) not in taken]
                out = release_picks(machine, picks, applied)
                done.extend(applied)
                return out

            await self.service.release(logged(decide, self.on_delete))
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
