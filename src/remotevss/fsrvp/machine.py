"""The FSRVP server state machine: pure, no I/O, time injected.

Rules of this module
--------------------
* It knows the abstract data model of MS-FSRVP §3.1.1 (ContextSet, the
  GlobalShadowCopySetTable, sets, shadow copies, mapped shares, the message
  sequence timer) and the per-method processing rules of §3.1.4, with their
  check order and error codes.
* It does no I/O and reads no clock.  Anything that needs the outside world is
  passed in (the caller resolves share names into :class:`ShareInfo` first)
  or handed out as an *effect* (create a snapshot, expose a share, ...).
* Methods whose outcome depends on an effect are split in two: ``begin_*``
  checks and returns the effects to run, ``finish_*`` takes their outcome.
  Everything else returns an :class:`Outcome` at once.  Teardown effects
  (``Outcome.teardown``: deleting snapshots and shares of a dropped set) are
  "fire and journal": the caller records and retries them; the machine has
  already forgotten them.

Theory of operation
-------------------
One client at a time holds the *context* (SetContext).  It starts one set,
adds shares, prepares, commits (snapshots are taken), exposes (snapshot
shares appear), reads the mappings and declares recovery complete, which
frees the server for the next set.  A global timer bounds the silence between
two calls; when it fires, unfinished sets are dropped.  ``tick(now)`` applies
an expired timer; every entry point calls it first, so the machine is right
even when the caller's timer callback is late.

Where the sources disagree (MS-FSRVP, Samba and Windows) the choices are in
``docs/decisions.md``; :class:`Mode` ``SAMBA`` reproduces Samba's codes and
rules where smbtorture expects them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from uuid import UUID

from remotevss.fsrvp import contexts
from remotevss.fsrvp.constants import (
    FSRVP_RPC_VERSION_1,
    Attr,
    HResult,
)
from remotevss.fsrvp.rules import DONE, READINGS, Call, Reading
from remotevss.fsrvp.rules import Mode as Mode
from remotevss.fsrvp.rules import Status as Status

NULL_GUID = UUID(int=0)
SHORT_TIMEOUT = 180.0
LONG_TIMEOUT = 1800.0
CONTEXT_RETRY_LIMIT = 5
VALID_BASE_CONTEXTS = contexts.BASE_CONTEXTS


# --------------------------------------------------------------------- model


@dataclass
class MappedShare:
    share_name: str  # the UNC exactly as the client sent it
    local_share: str  # the server's share name it resolved to
    exposed_name: str = ""  # local name of the snapshot share, "" until exposed
    is_exposed: bool = False


@dataclass
class ShadowCopy:
    id: UUID
    volume_name: str
    creation_time: float  # unix seconds, set at AddToShadowCopySet
    mappings: list[MappedShare]
    snapshot_path: str = ""  # set once the snapshot exists (commit)
    writable: bool = False  # snapshot created read-write (ATTR_AUTO_RECOVERY), not yet sealed


@dataclass
class ShadowCopySet:
    id: UUID
    status: Status
    context: int
    copies: list[ShadowCopy] = field(default_factory=list)

    def copy(self, copy_id: UUID) -> ShadowCopy | None:
        return next((c for c in self.copies if c.id == copy_id), None)

    @property
    def auto_release(self) -> bool:
        return not self.context & Attr.ATTR_NO_AUTO_RELEASE

    @property
    def writable(self) -> bool:
        return bool(self.context & Attr.ATTR_AUTO_RECOVERY)


@dataclass(frozen=True)
class ShareInfo:
    """What the caller found out about a UNC share name before calling in.

    ``exists`` False means no such share (OBJECT_NOT_FOUND); ``supported``
    False means the share's file store cannot be snapshotted (NOT_SUPPORTED).
    """

    exists: bool
    local_share: str = ""
    supported: bool = False
    volume_name: str = ""
    compatibility: int = 0  # SHADOW_COPY_COMPATIBILITY bits for IsPathShadowCopied
    reason: str = ""


# ------------------------------------------------------------------- effects


@dataclass(frozen=True)
class CreateSnapshot:
    set_id: UUID
    copy_id: UUID
    volume_name: str
    creation_time: float
    writable: bool


@dataclass(frozen=True)
class ExposeShare:
    set_id: UUID
    copy_id: UUID
    base_share: str
    exposed_name: str
    snapshot_path: str
    writable: bool


@dataclass(frozen=True)
class SealSnapshot:
    copy_id: UUID
    volume_name: str
    snapshot_path: str


@dataclass(frozen=True)
class UnexposeShare:
    exposed_name: str


@dataclass(frozen=True)
class DeleteSnapshot:
    copy_id: UUID
    volume_name: str
    snapshot_path: str


Effect = CreateSnapshot | ExposeShare | SealSnapshot | UnexposeShare | DeleteSnapshot


@dataclass
class Outcome:
    """Result of one call: the return code, out values and effects to run."""

    result: int
    effects: list[Effect] = field(default_factory=list)  # the call's own; outcome matters
    value: object = None
    dropped_sets: list[UUID] = field(default_factory=list)
    recovered_sets: list[UUID] = field(default_factory=list)  # kept, now Recovered: persist
    teardown: list[Effect] = field(default_factory=list)  # fire and journal; outcome doesn't

    @property
    def ok(self) -> bool:
        return self.result == HResult.ZERO


@dataclass(frozen=True)
class TimerPolicy:
    """Sequence timer durations; ``override`` None = spec values, 0 = timer off."""

    override: float | None = None

    def duration(self, spec_value: float) -> float | None:
        if self.override is None:
            return spec_value
        return None if self.override == 0 else self.override


def exposed_share_name(local_share: str, copy_id: UUID, share_unc: str, mode: Mode) -> str:
    """Local name of the snapshot share: ``share@{guid}``.

    Hidden shares keep their ``$``: per the spec (note <9>) only when the
    client's UNC ended in ``$\\``; in Samba mode whenever the share name ends in ``$``.
    """
    name = f"{local_share}@{{{copy_id}}}"
    hidden = share_unc.endswith("$\\") if mode is Mode.SPEC else local_share.endswith("$")
    return name + "$" if hidden else name


def copy_teardown(c: ShadowCopy) -> list[Effect]:
    """Everything on disk or in Samba that belongs to one copy: its exposed
    shares, then its snapshot."""
    effects: list[Effect] = [UnexposeShare(m.exposed_name) for m in c.mappings if m.is_exposed]
    if c.snapshot_path:
        effects.append(DeleteSnapshot(c.id, c.volume_name, c.snapshot_path))
    return effects


def teardown_effects(s: ShadowCopySet) -> list[Effect]:
    """Everything on disk or in Samba that belongs to a set, to be removed."""
    return [e for c in s.copies for e in copy_teardown(c)]


def take_copy(
    table: dict[UUID, ShadowCopySet], s: ShadowCopySet, c: ShadowCopy, out: Outcome
) -> None:
    """The one rule of removal: a copy goes with its exposed shares and its
    snapshot, and the set goes with its last copy.  DeleteShareMapping (the
    last mapping takes the copy), server-initiated release and start-up's
    roll-forward all remove through here.  ``table`` is the machine's sets, or
    the journal's at start-up."""
    out.teardown.extend(copy_teardown(c))
    s.copies.remove(c)
    if not s.copies:
        del table[s.id]
        out.dropped_sets.append(s.id)


def unmap(
    table: dict[UUID, ShadowCopySet], s: ShadowCopySet, c: ShadowCopy,
    gone: Callable[[MappedShare], bool], out: Outcome,
) -> None:
    """DeleteShareMapping's rule: the mappings ``gone`` picks leave the copy; the
    last mapping takes the copy (:func:`take_copy`).  The caller has removed
    the exposed shares of those mappings already."""
    c.mappings = [m for m in c.mappings if not gone(m)]
    if not c.mappings:
        take_copy(table, s, c, out)


class Machine:
    """The server's whole FSRVP state.  Not thread-safe: one caller at a time."""

    def __init__(
        self,
        *,
        mode: Mode = Mode.SPEC,
        timers: TimerPolicy | None = None,
        new_id: Callable[[], UUID] = uuid.uuid4,
    ) -> None:
        self.mode = mode
        self.rules: Reading = READINGS[mode]  # the state x call table (fsrvp/rules.py)
        self.timers = timers or TimerPolicy()
        self._new_id = new_id
        self.sets: dict[UUID, ShadowCopySet] = {}
        self.context_set = False
        self.current_context = 0
        self.client_address: str | None = None
        self.retry_count = 0
        # A set reached Exposed under the current context: the client's sequence got
        # what it asked for, so its next SetContext starts a new sequence, not a retry.
        self.context_delivered = False
        self.deadline: float | None = None

    # ------------------------------------------------------------- plumbing

    def load(self, sets: Iterable[ShadowCopySet], now: float | None = None) -> None:
        """Reload persisted sets at start-up (§3.1.3): ContextSet is FALSE.

        A reloaded set that still counts as in progress (spec mode: Exposed, not
        yet Recovered) gets a fresh message sequence timer (with ``now``): its
        client may come back, but if it never does the set must not block Start
        for ever (expiry drops it, or seals a persistent one)."""
        self.sets = {s.id: s for s in sets}
        self.context_set = False
        self.context_delivered = False
        self.current_context = 0
        self.client_address = None
        self.deadline = None
        if now is not None and any(self._blocks(s) for s in self.sets.values()):
            self._start_timer(now, SHORT_TIMEOUT)

    def _start_timer(self, now: float, seconds: float) -> None:
        d = self.timers.duration(seconds)
        self.deadline = None if d is None else now + d

    def _stop_timer(self) -> None:
        self.deadline = None

    def _clear_context(self) -> None:
        self.context_set = False
        self.current_context = 0
        self.client_address = None

    def _blocks(self, s: ShadowCopySet) -> bool:
        """Does this set count as "in progress" (blocks Start, dies on expiry)?"""
        return s.status in self.rules.blocking

    def _drop(self, s: ShadowCopySet, out: Outcome) -> None:
        del self.sets[s.id]
        out.teardown.extend(teardown_effects(s))
        out.dropped_sets.append(s.id)

    def _drop_unfinished(self, out: Outcome) -> None:
        """Drop every set that is still in progress (expiry, SetContext retry).

        A persistent (no-auto-release) set that reached Exposed is kept:
        the client has its snapshot already; we seal it and call it Recovered
        instead of destroying data the client asked to keep (decisions.md).
        """
        for s in list(self.sets.values()):
            if not self._blocks(s):
                continue
            if s.status is Status.EXPOSED and not s.auto_release:
                self._recover(s, out)
            else:
                self._drop(s, out)

    def _recover(self, s: ShadowCopySet, out: Outcome) -> None:
        for c in s.copies:
            if c.writable and c.snapshot_path:
                out.teardown.append(SealSnapshot(c.id, c.volume_name, c.snapshot_path))
                c.writable = False
        s.status = Status.RECOVERED
        out.recovered_sets.append(s.id)

    def release(self, set_id: UUID, copy_id: UUID | None, out: Outcome) -> bool:
        """Server-initiated deletion (orphan and age rules, shadow storage, an
        administrator): the whole set (``copy_id`` None) or one copy leaves the
        table, with its shares and snapshots handed out as teardown in ``out``.
        False if that set or copy is not there (any more)."""
        s = self.sets.get(set_id)
        if s is None:
            return False
        victims = [c for c in s.copies if copy_id in (None, c.id)]
        if not victims and copy_id is not None:
            return False
        if not victims:  # a set without copies
            self._drop(s, out)
        for c in victims:
            take_copy(self.sets, s, c, out)
        return True

    def shutdown(self) -> Outcome:
        """The agent stops: nobody can finish a sequence across a restart, so every
        set that is not Recovered is dropped with its snapshots and shares, except an
        Exposed *persistent* set, which the client already has: it is sealed and
        kept as Recovered (the rule of timer expiry, decisions.md 6a).  Recovered
        sets are kept; the context and the timer are cleared."""
        out = Outcome(HResult.ZERO)
        for s in list(self.sets.values()):
            if s.status is Status.RECOVERED:
                continue
            if s.status is Status.EXPOSED and not s.auto_release:
                self._recover(s, out)
            else:
                self._drop(s, out)
        self._clear_context()
        self._stop_timer()
        return out

    def tick(self, now: float) -> Outcome:
        """Apply an expired message sequence timer (§3.1.5)."""
        out = Outcome(HResult.ZERO)
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            self._drop_unfinished(out)
            self._clear_context()
        return out

    def _set_in(
        self, set_id: UUID, now: float, call: Call
    ) -> tuple[Outcome, ShadowCopySet | None]:
        """tick, look the set up, check its state: the common head of most calls."""
        out = self.tick(now)
        s = self.sets.get(set_id)
        if s is None:
            out.result = self.rules.unknown_set
        elif s.status not in self.rules.allowed[call]:
            out.result = self.rules.code_for_state(call)
        return out, (s if out.ok else None)

    # -------------------------------------------------------------- opnums

    def get_supported_version(self, now: float) -> Outcome:
        out = self.tick(now)
        out.value = (FSRVP_RPC_VERSION_1, FSRVP_RPC_VERSION_1)
        return out

    def set_context(self, context: int, client_address: str, now: float) -> Outcome:
        out = self.tick(now)
        if not valid_context(context, self.mode):
            out.result = self.rules.bad_context
            return out
        if self.mode is Mode.SPEC:
            if self.context_set:
                if client_address != self.client_address:
                    out.result = HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS
                    return out
                self._drop_unfinished(out)
                self._clear_context()
                # A client that never calls RecoveryComplete (rpcclient, smbtorture) keeps
                # the context after a finished sequence: not a retry (decisions.md row 13).
                self.retry_count = 0 if self.context_delivered else self.retry_count + 1
                if self.retry_count > CONTEXT_RETRY_LIMIT:
                    out.result = HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS
                    return out
            else:
                self.retry_count = 0
        self.client_address = client_address
        self.current_context = context
        self.context_set = True
        self.context_delivered = False
        self._start_timer(now, SHORT_TIMEOUT)
        return out

    def start_shadow_copy_set(self, client_set_id: UUID, now: float) -> Outcome:
        out = self.tick(now)
        if client_set_id == NULL_GUID and self.mode is Mode.SPEC:
            out.result = HResult.E_INVALIDARG
        elif not self.context_set:
            out.result = HResult.FSRVP_E_BAD_STATE
        elif any(self._blocks(s) for s in self.sets.values()):
            out.result = HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS
        else:
            self._stop_timer()
            s = ShadowCopySet(self._fresh_id(), Status.STARTED, self.current_context)
            self.sets[s.id] = s
            out.value = s.id
            self._start_timer(now, SHORT_TIMEOUT)
        return out

    def _fresh_id(self) -> UUID:
        while True:
            new = self._new_id()
            if new != NULL_GUID and new not in self.sets and not self._copy_id_used(new):
                return new

    def _copy_id_used(self, cid: UUID) -> bool:
        return any(s.copy(cid) is not None for s in self.sets.values())

    def add_to_shadow_copy_set(
        self, set_id: UUID, share_name: str, share: ShareInfo, now: float
    ) -> Outcome:
        out = self.tick(now)
        s = self.sets.get(set_id)
        if self.mode is Mode.SAMBA:
            # Samba: set lookup, share lookup, path check, then state.
            if s is None or not share.exists:
                out.result = HResult.E_INVALIDARG
            elif not share.supported:
                out.result = HResult.FSRVP_E_NOT_SUPPORTED
        elif not share.exists:
            out.result = HResult.FSRVP_E_OBJECT_NOT_FOUND
        elif not share.supported:
            out.result = HResult.FSRVP_E_NOT_SUPPORTED
        elif s is None:
            out.result = HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH
        if out.result != HResult.ZERO or s is None:
            return out
        if s.status not in self.rules.allowed[Call.ADD]:
            out.result = self.rules.code_for_state(Call.ADD)
            return out
        self._stop_timer()
        if any(c.volume_name == share.volume_name for c in s.copies):
            out.result = HResult.FSRVP_E_OBJECT_ALREADY_EXISTS
            self._start_timer(now, SHORT_TIMEOUT)
            return out
        c = ShadowCopy(
            self._fresh_id(), share.volume_name, now, [MappedShare(share_name, share.local_share)]
        )
        s.copies.append(c)
        s.status = Status.ADDED
        out.value = c.id
        self._start_timer(now, LONG_TIMEOUT)
        return out

    def prepare_shadow_copy_set(self, set_id: UUID, now: float) -> Outcome:
        """Prepare has nothing to flush on a Linux file server: it succeeds at once."""
        out, s = self._set_in(set_id, now, Call.PREPARE)
        if s is not None:
            self._start_timer(now, LONG_TIMEOUT)
        return out

    def begin_commit(self, set_id: UUID, now: float) -> Outcome:
        """Checks, then Status = CreationInProgress and one CreateSnapshot per copy still
        without a snapshot (a retried commit only creates what is missing)."""
        out, s = self._set_in(set_id, now, Call.COMMIT)
        if s is None:
            return out
        self._stop_timer()
        s.status = Status.CREATION_IN_PROGRESS
        out.effects = [
            CreateSnapshot(s.id, c.id, c.volume_name, c.creation_time, s.writable)
            for c in s.copies
            if not c.snapshot_path
        ]
        return out

    def snapshot_created(self, set_id: UUID, copy_id: UUID, path: str, writable: bool) -> None:
        """Record one snapshot of a commit as soon as it exists on disk."""
        s = self.sets.get(set_id)
        c = s.copy(copy_id) if s else None
        if c is not None:
            c.snapshot_path = path
            c.writable = writable

    def finish_commit(
        self, set_id: UUID, error: int | None, now: float, *, timed_out: bool = False
    ) -> Outcome:
        """``error`` None: every snapshot exists.  Otherwise the commit failed:
        snapshots already taken are handed back for deletion and the set
        returns to Added so that a retry or an abort starts clean.  A timeout
        leaves the set CreationInProgress (a later Commit may finish it)."""
        out = Outcome(HResult.ZERO)
        s = self.sets.get(set_id)
        if s is None:  # dropped meanwhile (cannot happen while one caller holds the machine)
            out.result = HResult.E_FAIL
            return out
        self._start_timer(now, SHORT_TIMEOUT)
        if timed_out:
            out.result = HResult.FSSAGENT_E_TIMEOUT
            return out
        if error is not None:
            for c in s.copies:
                if c.snapshot_path:
                    out.teardown.append(DeleteSnapshot(c.id, c.volume_name, c.snapshot_path))
                    c.snapshot_path = ""
            s.status = Status.ADDED
            out.result = error
            return out
        s.status = Status.COMMITTED
        return out

    def begin_expose(self, set_id: UUID, now: float) -> Outcome:
        out, s = self._set_in(set_id, now, Call.EXPOSE)
        if s is None:
            return out
        self._stop_timer()
        for c in s.copies:
            for m in c.mappings:
                name = exposed_share_name(m.local_share, c.id, m.share_name, self.mode)
                out.effects.append(
                    ExposeShare(s.id, c.id, m.local_share, name, c.snapshot_path, s.writable)
                )
        return out

    def share_exposed(self, set_id: UUID, copy_id: UUID, exposed_name: str) -> None:
        s = self.sets.get(set_id)
        c = s.copy(copy_id) if s else None
        if c is None:
            return
        for m in c.mappings:
            if exposed_share_name(m.local_share, c.id, m.share_name, self.mode) == exposed_name:
                m.exposed_name = exposed_name
                m.is_exposed = True

    def finish_expose(self, set_id: UUID, error: int | None, now: float) -> Outcome:
        """On failure every share exposed by this call is handed back for removal."""
        out = Outcome(HResult.ZERO)
        s = self.sets.get(set_id)
        if s is None:
            out.result = HResult.E_FAIL
            return out
        self._start_timer(now, SHORT_TIMEOUT)
        if error is not None:
            for c in s.copies:
                for m in c.mappings:
                    if m.is_exposed:
                        out.teardown.append(UnexposeShare(m.exposed_name))
                        m.is_exposed = False
                        m.exposed_name = ""
            out.result = error
            return out
        s.status = Status.EXPOSED
        self.context_delivered = True
        return out

    def begin_recovery_complete(self, set_id: UUID, now: float) -> Outcome:
        out, s = self._set_in(set_id, now, Call.RECOVERY_COMPLETE)
        if s is None:
            return out
        self._stop_timer()
        out.effects = [
            SealSnapshot(c.id, c.volume_name, c.snapshot_path) for c in s.copies if c.writable
        ]
        return out

    def finish_recovery_complete(self, set_id: UUID, error: int | None) -> Outcome:
        out = Outcome(HResult.ZERO)
        s = self.sets.get(set_id)
        if s is None:
            out.result = HResult.E_FAIL
        elif error is not None:
            out.result = error
        else:
            for c in s.copies:
                c.writable = False
            s.status = Status.RECOVERED
            self._clear_context()
        return out

    def abort_shadow_copy_set(self, set_id: UUID, now: float) -> Outcome:
        out = self.tick(now)
        s = self.sets.get(set_id)
        if set_id == NULL_GUID and self.mode is Mode.SPEC:
            out.result = HResult.E_INVALIDARG
        elif s is None:
            out.result = self.rules.unknown_set
        elif s.status in self.rules.abort_noop:
            pass  # Samba: a silent no-op
        elif s.status not in self.rules.allowed[Call.ABORT]:
            out.result = self.rules.code_for_state(Call.ABORT)
        else:
            self._drop(s, out)
            if self.mode is Mode.SPEC:
                self._clear_context()
                self._stop_timer()
        return out

    def is_path_supported(self, share: ShareInfo, now: float) -> Outcome:
        out = self.tick(now)
        if not share.exists:
            out.result = self.rules.missing_share
        elif not share.supported:
            out.result = HResult.FSRVP_E_NOT_SUPPORTED
        else:
            out.value = True
        return out

    def is_path_shadow_copied(self, share: ShareInfo, now: float) -> Outcome:
        out = self.tick(now)
        if not share.exists:
            out.result = self.rules.missing_share
            return out
        present = share.supported and any(
            c.volume_name == share.volume_name
            for s in self.sets.values()
            if s.status in DONE
            for c in s.copies
        )
        out.value = (present, share.compatibility if present else 0)
        return out

    def get_share_mapping(
        self, copy_id: UUID, set_id: UUID, local_share: str | None, level: int, now: float
    ) -> Outcome:
        """Returns (ShadowCopySet, ShadowCopy, MappedShare) as ``value`` on success.

        ``local_share`` is the share part of the client's UNC (None if it did not
        parse); mappings match on it case-insensitively, whatever host form was used.
        """
        out = self.tick(now)
        if self.mode is Mode.SPEC and level != 1:
            out.result = HResult.E_INVALIDARG
            return out
        s = self.sets.get(set_id)
        if s is None:
            out.result = self.rules.unknown_set
            return out
        if s.status not in self.rules.allowed[Call.GET_SHARE_MAPPING]:
            out.result = self.rules.code_for_state(Call.GET_SHARE_MAPPING)
            return out
        self._stop_timer()
        c = s.copy(copy_id)
        m = _mapping(c, local_share) if c else None
        if c is None or m is None or (self.mode is Mode.SAMBA and level != 1):
            out.result = HResult.E_INVALIDARG
            self._start_timer(now, SHORT_TIMEOUT)
            return out
        out.value = (s, c, m)
        self._start_timer(now, LONG_TIMEOUT)
        return out

    def begin_delete_share_mapping(
        self, set_id: UUID, copy_id: UUID, local_share: str | None, now: float
    ) -> Outcome:
        """Checks; the effect is removing the exposed share (if it is exposed)."""
        out = self.tick(now)
        if self.mode is Mode.SPEC and NULL_GUID in (set_id, copy_id):
            out.result = HResult.E_INVALIDARG
            return out
        s = self.sets.get(set_id)
        if s is None:
            out.result = HResult.FSRVP_E_OBJECT_NOT_FOUND
            return out
        if s.status not in self.rules.allowed[Call.DELETE_SHARE_MAPPING]:
            out.result = self.rules.code_for_state(Call.DELETE_SHARE_MAPPING)
            return out
        c = s.copy(copy_id)
        missing = self.rules.unknown_copy_on_delete
        if c is None:
            out.result = missing
            return out
        m = _mapping(c, local_share)
        if m is None:
            out.result = missing
            return out
        out.value = (s, c, m)
        if m.is_exposed:
            out.effects.append(UnexposeShare(m.exposed_name))
        return out

    def finish_delete_share_mapping(
        self, set_id: UUID, copy_id: UUID, mapping: MappedShare, error: int | None
    ) -> Outcome:
        """Remove the mapping; the last mapping takes the snapshot, the last copy the set."""
        out = Outcome(HResult.ZERO)
        s = self.sets.get(set_id)
        c = s.copy(copy_id) if s else None
        if s is None or c is None:
            out.result = HResult.E_FAIL
            return out
        if error is not None:
            out.result = error
            return out
        unmap(self.sets, s, c, lambda m: m is mapping, out)
        return out


def valid_context(context: int, mode: Mode = Mode.SPEC) -> bool:
    """Context = one base value, optionally with AUTO_RECOVERY or NO_AUTO_RECOVERY."""
    rw, ro = int(Attr.ATTR_AUTO_RECOVERY), int(Attr.ATTR_NO_AUTO_RECOVERY)
    if mode is Mode.SAMBA:
        return (context & ~rw) in VALID_BASE_CONTEXTS
    if context & rw and context & ro:
        return False
    return (context & ~(rw | ro)) in VALID_BASE_CONTEXTS


def _mapping(c: ShadowCopy, local_share: str | None) -> MappedShare | None:
    if local_share is None:
        return None
    key = local_share.casefold()
    return next((m for m in c.mappings if m.local_share.casefold() == key), None)
