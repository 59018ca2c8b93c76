"""Server-initiated release: what the agent picked to delete, and why.

Why a module of its own: the orphan and age rules (agent/gc.py), the shadow
storage maximum (agent/storage.py) and shutdown (agent/ops.py) all decide to
delete shadow copies nobody asked to delete.  They only *choose*; the machine
applies the choice (:meth:`Machine.release`, :meth:`Machine.shutdown`: the
one place where sets and copies leave the table) and the service journals and
carries out the teardown (:meth:`AgentService.release`).  Each applied choice
becomes one event line here.

Rules of this module
--------------------
* No I/O but the event lines; it never edits a set or copy itself.
* It imports nothing above the machine and agent/events.py, so gc and
  storage both build on it without importing each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from uuid import UUID

from remotevss.agent.events import emit, trace_effect
from remotevss.fsrvp import contexts
from remotevss.fsrvp.constants import HResult
from remotevss.fsrvp.machine import Machine, Outcome, ShadowCopySet


def context_name(context: int) -> str:
    """The base context's name in [gc.max_age_by_context] (recovery bits ignored)."""
    return contexts.context_name(context, underscored=True) or f"0x{context:08x}"


@dataclass(frozen=True)
class Pick:
    """One deletion the agent decided on: a whole set (``copy_id`` None) or one copy."""

    set_id: UUID
    copy_id: UUID | None
    reason: str  # orphan | max_age | storage | shutdown | stray | admin
    detail: str
    deleted: bool = True  # False: kept (a persistent Exposed set sealed at shutdown)
    #: event fields of a copy the machine does not know (a stray: agent/strays.py)
    extra: Mapping[str, object] | None = None


def release_picks(machine: Machine, picks: Iterable[Pick], done: list[Pick]) -> Outcome:
    """Hand the picked sets/copies to :meth:`Machine.release`; their teardown is the
    outcome.  Picks whose set or copy is gone by now are skipped; those applied
    are appended to ``done``."""
    out = Outcome(HResult.ZERO)
    for p in picks:
        if machine.release(p.set_id, p.copy_id, out):
            done.append(p)
    return out


def shutdown_outcome(machine: Machine, done: list[Pick]) -> Outcome:
    """SIGTERM: :meth:`Machine.shutdown`, each set it touched reported as a pick."""
    before = {sid: s.status for sid, s in machine.sets.items()}
    out = machine.shutdown()
    for sid in out.recovered_sets:
        done.append(Pick(sid, None, "shutdown", "persistent Exposed set kept as Recovered",
                         deleted=False))
    for sid in out.dropped_sets:
        status = before[sid]
        done.append(Pick(sid, None, "shutdown", f"{status.value} set cannot outlive the agent"))
    return out


def describe(s: ShadowCopySet | None, p: Pick) -> dict[str, object]:
    """The event fields of one deletion, read before it happens."""
    copies = [] if s is None else [c for c in s.copies if p.copy_id in (None, c.id)]
    fields: dict[str, object] = {
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
    return fields | dict(p.extra or {})


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
    # the copies' own fields change too (a seal clears ``writable``): the event reads them before
    return ShadowCopySet(s.id, s.status, s.context, list(s.copies))

