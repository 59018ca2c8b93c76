"""The agent: FSRVP machine + effects + journal + authorization, for any transport.

Why this shape: the pure machine decides, this module carries out.  Each
call is decoded, authorized, handed to the machine under one lock (the
machine is single-threaded, as the protocol is: one set in progress at a
time), and its effects run in worker threads with the intent journaled
before and the result journaled after.  The response goes out only when the
new state is on disk.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from uuid import UUID

from remotevss.agent.authz import Caller, Policy
from remotevss.agent.config import AgentConfig
from remotevss.agent.effects import EffectRunner, take_together
from remotevss.agent.events import CallEvent
from remotevss.agent.intents import (
    CreateSnapshotIntent,
    DeleteMappingIntent,
    ExposeIntent,
)
from remotevss.agent.journal import Journal
from remotevss.agent.naming import gmt_snapshot_name, snapshot_name
from remotevss.agent.reconcile import Reconciler, ReconcileReport
from remotevss.agent.strays import StrayFinder, agent_identity
from remotevss.dcerpc import pdu
from remotevss.fsrvp import calls, contexts, server
from remotevss.fsrvp.constants import DISABLE_DEFRAG, HResult, Opnum, hresult_name
from remotevss.fsrvp.machine import (
    CreateSnapshot,
    DeleteSnapshot,
    ExposeShare,
    Machine,
    MappedShare,
    Outcome,
    SealSnapshot,
    ShadowCopy,
    ShadowCopySet,
    ShareInfo,
    Status,
    TimerPolicy,
    UnexposeShare,
)
from remotevss.shares.exposer import (
    ExposeError,
    Exposer,
    ShareRequest,
    SymlinkExposer,
    expose_all,
)
from remotevss.shares.table import (
    BadShareName,
    LocalShare,
    ShareLookup,
    ShareTable,
    parse_unc,
)
from remotevss.snapshots.base import NotSupported, SnapRequest, SnapshotError, Volume
from remotevss.snapshots.select import choose_backend

log = logging.getLogger("remotevss.agent")
T = TypeVar("T")

__all__ = ["AgentService", "CallFault", "ReconcileReport"]

#: Seconds within which a commit made without fsync reaches the disk.
SYNC_DELAY = 1.0


def _entries(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


@dataclass
class _CommitJob:
    task: asyncio.Future[tuple[int | None, list[int]]]
    made: list[tuple[str, str]] = field(default_factory=list)  # (volume name, snapshot path)


def _snapshot_error(exc: SnapshotError) -> int:
    """What a failed snapshot tells the client."""
    if isinstance(exc, NotSupported):
        return HResult.FSRVP_E_NOT_SUPPORTED
    if exc.errno == errno.ENOMEM:
        return HResult.E_OUTOFMEMORY
    if exc.errno in (errno.EACCES, errno.EPERM):
        return HResult.E_ACCESSDENIED
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HResult.VSS_E_INSUFFICIENT_STORAGE  # the filesystem itself is full
    if exc.errno == errno.EROFS:
        return HResult.E_WRITE_PROTECT
    return HResult.E_FAIL


def _volume_gone_error(volume_name: str) -> int:
    """Commit cannot resolve a volume that Add accepted: remounted read-only (the
    reflink probe must write), or really no longer supported."""
    try:
        if os.statvfs(volume_name.split(":", 1)[-1]).f_flag & os.ST_RDONLY:
            return HResult.E_WRITE_PROTECT
    except OSError:
        pass
    return HResult.FSRVP_E_NOT_SUPPORTED


class CallFault(Exception):
    """The call gets a DCE/RPC fault PDU instead of a response."""

    def __init__(self, status: int) -> None:
        super().__init__(f"fault 0x{status:08x}")
        self.status = status


class AgentService:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.time,
        exposer: Exposer | None = None,
        policy: Policy | None = None,
        crash_after: str | None = None,
        shares: ShareLookup | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.machine = Machine(mode=config.mode, timers=TimerPolicy(config.sequence_timeout))
        # REMOTEVSS_FAKE_POWER_CUT (tests only): a directory that keeps what of the
        # journal is on disk, to fake a power cut (tests/hardening/test_power_cut.py).
        self.journal = Journal(config.journal_path, os.environ.get("REMOTEVSS_FAKE_POWER_CUT"))
        self.exposer: Exposer = exposer or SymlinkExposer(config.expose_dir)
        self.policy = policy or Policy()
        self.shares: ShareLookup = (
            shares
            if shares is not None
            else ShareTable(LocalShare(s.name, s.path, s.backend) for s in config.shares)
        )
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._sync: asyncio.TimerHandle | None = None  # the journal's lazy fsync
        self._commits: dict[UUID, _CommitJob] = {}
        # Test-only crash points: os._exit right after the named effect (see tests/system).
        self.effects = EffectRunner(
            self.journal, self.exposer, crash_after or os.environ.get("REMOTEVSS_CRASH_AFTER")
        )
        # Operations (agent/ops.py): event log, metrics, GC activity; shadow storage limit.
        self.call_hooks: list[Callable[[CallEvent], None]] = []
        self.commit_guard: (
            Callable[[UUID, list[CreateSnapshot]], Awaitable[int | None]] | None
        ) = None
        self.owner = agent_identity(config.state_dir)  # ZFS's label of our snapshots

    @property
    def call_lock(self) -> asyncio.Lock:
        """Held by every call with effects; the GC lists ZFS under it (agent/strays.py)."""
        return self._lock

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> ReconcileReport:
        async with self._lock:
            strays = StrayFinder(self.shares, self.config.backend, self.owner)
            report, kept = await asyncio.to_thread(
                Reconciler(self.journal, self.exposer, self.effects, self.shares, strays).run
            )
            self.machine.load(kept, self.clock())
            self._arm_timer()  # kept sets still in progress must not block for ever
            return report

    async def close(self) -> None:
        async with self._lock:
            if self._timer:
                self._timer.cancel()
            if self._sync:
                self._sync.cancel()
            for job in list(self._commits.values()):
                await asyncio.shield(job.task)
            self.journal.close()  # Journal.sync first: nothing left only in memory

    def _sync_soon(self) -> None:
        """Commits made without fsync reach the disk within SYNC_DELAY (one fsync
        for all of them), unless a durable commit takes them along first."""
        if self._sync is not None or not self.journal.unsynced:
            return

        def due() -> None:
            self._sync = None
            asyncio.ensure_future(self._sync_now())

        self._sync = asyncio.get_running_loop().call_later(SYNC_DELAY, due)

    async def _sync_now(self) -> None:
        """Journal.sync in a worker thread; a failed fsync is logged and retried by
        the next sync or durable commit (the commits stay counted as not synced)."""
        try:
            await asyncio.to_thread(self.journal.sync)
        except OSError as exc:
            log.error("journal fsync failed, will retry: %s", exc)
            self._sync_soon()

    async def release(
        self,
        decide: Callable[[Machine, float], Outcome],
        *,
        locked: bool = False,
        wait_commits: bool = False,
    ) -> Outcome:
        """Server-initiated deletions (GC, storage limits, shutdown): ``decide(machine,
        now)`` takes sets or copies off the machine and returns their teardown, which
        is journaled and carried out like a dropped set's.  ``locked``: the caller
        holds the call lock already (a commit guard).  ``wait_commits``: let running
        commit jobs end (and their orphan handling run) first."""
        if wait_commits:
            for job in list(self._commits.values()):
                await asyncio.shield(job.task)
            await asyncio.sleep(0)
        if locked:
            out = decide(self.machine, self.clock())
            await self._teardown(out)
            self._sync_soon()
            return out
        async with self._lock:
            out = decide(self.machine, self.clock())
            await self._teardown(out)
            self._arm_timer()
            self._sync_soon()
            return out

    def io_counters(self) -> dict[str, int]:
        """Journal transactions (all, fsync'd), lazy journal fsyncs (Journal.sync)
        and, behind Samba, registry and ACL
        transactions and smbd message rounds, since start: what a set costs
        (bench/set_scaling.py reads them from ``remotevss status``)."""
        out = {
            "journal_transactions": self.journal.transactions,
            "journal_durable": self.journal.durable_transactions,
            "journal_syncs": self.journal.syncs,
        }
        exposer_counters = getattr(self.exposer, "io_counters", None)
        if callable(exposer_counters):
            out.update(exposer_counters())
        return out

    # ----------------------------------------------------------- call entry

    async def call(self, caller: Caller, opnum: int, stub: bytes) -> bytes:
        """Decode, authorize, run and encode one FSRVP call.  Raises CallFault."""
        try:
            request = calls.decode_request(opnum, stub)
        except calls.UnknownOpnum as exc:
            self._emit(caller, opnum, None, None, stub, b"", time.perf_counter(),
                       pdu.NCA_S_OP_RNG_ERROR)
            raise CallFault(pdu.NCA_S_OP_RNG_ERROR) from exc
        except calls.StubError as exc:
            log.info("bad stub for opnum %d from %s: %s", opnum, caller.address, exc)
            self._emit(caller, opnum, None, None, stub, b"", time.perf_counter(),
                       pdu.NCA_S_FAULT_NDR)
            raise CallFault(pdu.NCA_S_FAULT_NDR) from exc
        started = time.perf_counter()
        if not self.policy.permits(caller):
            log.info(
                "%s denied to %s from %s: %s", Opnum(opnum).name, caller.name or caller.uid,
                caller.address, self.policy.refusal(caller) or "not an allowed principal",
            )  # fmt: skip
            response = calls.error_response(opnum, HResult.E_ACCESSDENIED)
        else:
            async with self._lock:
                response = await self._dispatch(caller, request)
                self._arm_timer()
                self._sync_soon()
        log.debug(
            "%s %s -> %s (%.2f ms)",
            caller.name or caller.uid,
            Opnum(opnum).name,
            hresult_name(response.return_value),
            (time.perf_counter() - started) * 1000,
        )
        reply = calls.encode_response(response)
        self._emit(caller, opnum, request, response, stub, reply, started)
        return reply

    def _emit(
        self,
        caller: Caller,
        opnum: int,
        request: calls.Request | None,
        response: calls.Response | None,
        stub: bytes,
        reply: bytes,
        started: float,
        fault: int | None = None,
    ) -> None:
        """Hand one finished call to the hooks (event log, metrics, GC); never raises."""
        if not self.call_hooks:
            return
        elapsed = time.perf_counter() - started
        event = CallEvent(caller, opnum, request, response, stub, reply,
                          self.clock() - elapsed, elapsed, fault)
        for hook in self.call_hooks:
            try:
                hook(event)
            except Exception:  # an observer's bug must not cost the call
                log.exception("call hook %r failed", hook)

    async def _dispatch(self, caller: Caller, req: calls.Request) -> calls.Response:
        """The calls with effects run here; every other call is fsrvp/server.py's
        pure step, with its share resolved first and its teardown carried out."""
        now = self.clock()
        m = self.machine
        match req:
            case calls.CommitShadowCopySetRequest(shadow_copy_set_id=sid, timeout_ms=ms):
                return calls.CommitShadowCopySetResponse(await self._commit(sid, ms, now))
            case calls.ExposeShadowCopySetRequest(shadow_copy_set_id=sid):
                return calls.ExposeShadowCopySetResponse(await self._expose(sid, now))
            case calls.RecoveryCompleteShadowCopySetRequest(shadow_copy_set_id=sid):
                return calls.RecoveryCompleteShadowCopySetResponse(
                    await self._recovery_complete(sid, now)
                )
            case calls.DeleteShareMappingRequest(
                shadow_copy_set_id=sid, shadow_copy_id=cid, share_name=unc
            ):
                return calls.DeleteShareMappingResponse(
                    await self._delete_share_mapping(sid, cid, unc, now)
                )
        named = server.share_unc(req)
        info = await self._share_info(named) if named is not None else None
        local = (
            _share_part(req.share_name) if isinstance(req, calls.GetShareMappingRequest) else None
        )
        names = server.Names(self.config.netbios_name, self.config.share_name_format)
        step = server.answer(m, req, now, caller.address, names, info, local)
        if step is None:  # pragma: no cover - the calls with effects are matched above
            raise CallFault(pdu.NCA_S_OP_RNG_ERROR)
        response, out = step
        await self._teardown(out)
        if out.ok and isinstance(req, calls.StartShadowCopySetRequest):
            self._persist(out, cast(UUID, out.value), durable=False)
            warm_up = getattr(self.exposer, "warm_up", None)
            if callable(warm_up):  # e.g. start the Samba worker for Expose
                warm_up()
        elif out.ok and isinstance(req, calls.AddToShadowCopySetRequest):
            self._persist(out, req.shadow_copy_set_id, durable=False)
        return response

    # ------------------------------------------------------------- helpers

    def _resolve(self, unc: str) -> tuple[LocalShare | None, Volume | None, str]:
        """UNC -> local share -> volume.  Runs in a worker thread (stat, mountinfo)."""
        return self._resolve_share(parse_unc(unc))

    def _resolve_share(self, name: str) -> tuple[LocalShare | None, Volume | None, str]:
        """Local share name -> share -> volume; the host part never matters."""
        share = self.shares.lookup(name)
        if share is None:
            return None, None, "no such share"
        if share.unsupported:
            return share, None, share.unsupported
        forced = None if share.backend == "auto" else share.backend
        if forced is None and self.config.backend != "auto":
            forced = self.config.backend
        try:
            backend = choose_backend(share.path, forced)
            return share, backend.check(share.path), ""
        except (NotSupported, SnapshotError, OSError) as exc:
            return share, None, str(exc)

    async def _share_info(self, unc: str) -> ShareInfo | None:
        """None when the UNC does not even parse (the caller answers E_INVALIDARG)."""
        if (fresh := getattr(self.shares, "fresh", None)) is not None:
            await fresh()  # a changed smb.conf re-read off the loop (samba/shares.py)
        try:
            share, volume, reason = self._resolve(
                unc
            )  # a few stats: cheaper inline than a thread hop
        except BadShareName:
            return None
        if share is None:
            return ShareInfo(exists=False, reason=reason)
        if volume is None:
            log.warning("share %s not supported: %s", share.name, reason)  # client: NOT_SUPPORTED
            return ShareInfo(True, share.name, False, reason=reason)
        compat = DISABLE_DEFRAG if volume.backend in ("btrfs", "reflink") else 0
        return ShareInfo(True, share.name, True, volume.name, compat)

    def _persist(self, out: Outcome, *set_ids: UUID, durable: bool = True) -> None:
        """Write the sets this call changed.  ``durable=False`` (Started/Added sets,
        which start-up drops anyway and which own nothing on disk) skips the fsync."""
        with self.journal.transaction(durable=durable) as txn:
            for sid in set_ids or tuple(self.machine.sets):
                s = self.machine.sets.get(sid)
                if s is not None:
                    txn.save_set(s)

    def _crash_point(self, name: str) -> None:
        self.effects.crash_point(name)

    # -------------------------------------------------- teardown (fire & journal)

    async def _teardown(self, out: Outcome) -> None:
        """Dropped sets leave the journal together with intents to remove their
        snapshots and shares; then the removals run.  A failure leaves the
        intent in place for the next start-up."""
        if not out.dropped_sets and not out.teardown and not out.recovered_sets:
            return
        # a persistent writable set sealed by expiry or shutdown: its shares first
        await self._seal_shares({e.copy_id for e in out.teardown if isinstance(e, SealSnapshot)})
        pending = self.effects.settle(
            delete=out.dropped_sets,
            save=self.machine.sets.values(),  # sealed/recovered by expiry
            teardown=out.teardown,
        )
        for sid in out.dropped_sets:
            log.info("set %s dropped; removing its snapshots and shares", sid)
        await asyncio.to_thread(self.effects.carry_out, pending)

    # -------------------------------------------------------------- commit

    async def _commit(self, set_id: UUID, timeout_ms: int, now: float) -> int:
        """Take the set's snapshots.  They are taken by a job that outlives a client's
        timeout: the call then answers FSSAGENT_E_TIMEOUT, the set stays
        CreationInProgress, and the job's result is picked up by a retried Commit
        (or by the job itself, if the set was dropped meanwhile)."""
        m = self.machine
        job = self._commits.get(set_id)
        if job is None:
            out = m.begin_commit(set_id, now)
            await self._teardown(out)
            if not out.ok:
                return out.result
            creates = [e for e in out.effects if isinstance(e, CreateSnapshot)]
            if self.commit_guard is not None:  # shadow storage limit (agent/storage.py)
                refusal = await self.commit_guard(set_id, creates)
                if refusal is not None:
                    fin = m.finish_commit(set_id, refusal, self.clock())
                    await self._record(set_id, [], fin, durable=False)  # back to Added
                    return fin.result
            job = _CommitJob(asyncio.ensure_future(self._create_snapshots(set_id, creates)))
            self._commits[set_id] = job
            job.task.add_done_callback(
                lambda _t: asyncio.ensure_future(self._orphaned_commit(set_id))
            )
        else:
            st = m.sets.get(set_id)
            if st is None:  # dropped while its snapshots are being taken: an unknown set
                out = m.begin_commit(set_id, now)
                await self._teardown(out)
                return out.result
            if st.status is not Status.CREATION_IN_PROGRESS:
                return HResult.FSRVP_E_BAD_STATE
        try:
            await asyncio.wait_for(asyncio.shield(job.task), timeout_ms / 1000)
        except TimeoutError:
            log.warning("commit of set %s exceeds the client's %d ms", set_id, timeout_ms)
            return m.finish_commit(set_id, None, self.clock(), timed_out=True).result
        return await self._finish_commit(set_id, job)

    async def _finish_commit(self, set_id: UUID, job: _CommitJob) -> int:
        """One transaction records the outcome and clears the creation intents."""
        del self._commits[set_id]
        error, intent_ids = job.task.result()
        fin = self.machine.finish_commit(set_id, error, self.clock())
        # No fsync: a set that has not reached Exposed is dropped at start-up whatever
        # the journal says of it, and its snapshots are undone by their creation
        # intents, which are on disk; losing this transaction to a power cut changes
        # nothing (an agent crash loses nothing: WAL).  Expose's record is durable.
        await self._record(set_id, intent_ids, fin, durable=False)
        return fin.result

    async def _record(
        self, set_id: UUID, intent_ids: list[int], fin: Outcome, *, durable: bool = True
    ) -> None:
        """One transaction: the call's effects are done (intents cleared), the set's
        new state, and intents for the teardown the outcome asks for; then that teardown."""
        s = self.machine.sets.get(set_id)
        pending = self.effects.settle(
            intent_ids, save=[s] if s is not None else [], teardown=fin.teardown, durable=durable
        )
        if pending:
            await asyncio.to_thread(self.effects.carry_out, pending)

    async def _orphaned_commit(self, set_id: UUID) -> None:
        """A commit job ended with no caller waiting for it: finish it here."""
        async with self._lock:
            job = self._commits.get(set_id)
            if job is None:
                return
            st = self.machine.sets.get(set_id)
            if st is not None and st.status is Status.CREATION_IN_PROGRESS:
                return  # a retried Commit will collect it
            del self._commits[set_id]
            _error, intent_ids = job.task.result()
            # the set was dropped while snapshots were being taken: remove what was made
            live = {c.snapshot_path for s in self.machine.sets.values() for c in s.copies}
            stray = [(vol, path) for vol, path in job.made if path not in live]
            pending = self.effects.settle(
                intent_ids,
                teardown=[DeleteSnapshot(UUID(int=0), vol, path) for vol, path in stray],
            )
            await asyncio.to_thread(self.effects.carry_out, pending)

    async def _create_snapshots(
        self, set_id: UUID, creates: list[CreateSnapshot]
    ) -> tuple[int | None, list[int]]:
        """Take every snapshot of a commit, as close together in time as possible:
        all intents are journaled first (one transaction), then the snapshots are
        started together (effects.take_together)."""
        plan: list[tuple[Volume, str, CreateSnapshot]] = []
        taken: dict[str, list[str]] = {}  # snapshot dir -> names ("gmt" naming)
        for e in creates:
            volume = self._volume_of(e)
            if volume is None:
                log.error("share for copy %s no longer snapshot-capable", e.copy_id)
                return _volume_gone_error(e.volume_name), []
            if self.config.snapshot_names == "gmt":
                names = taken.setdefault(volume.snapshot_dir, _entries(volume.snapshot_dir))
                name = gmt_snapshot_name(self.clock(), names)
                names.append(name)
            else:
                name = snapshot_name(self.clock(), e.copy_id)
            plan.append((volume, name, e))
        intent_ids = self.effects.begin(
            [
                CreateSnapshotIntent(v.name, os.path.join(v.snapshot_dir, name), str(e.copy_id))
                for v, name, e in plan
            ]
        )
        self._crash_point("create_intent")
        job = self._commits.get(set_id)
        s = self.machine.sets.get(set_id)
        context = (contexts.context_name(s.context, underscored=True) or "") if s else ""
        persistent = s is not None and not s.auto_release
        results = await asyncio.to_thread(take_together, [  # labels: ZFS keeps them (and holds)
            SnapRequest(v, name, e.writable, set_id=str(e.set_id), copy_id=str(e.copy_id),
                        context=context, persistent=persistent, owner=self.owner)
            for v, name, e in plan])
        error: int | None = None
        for (volume, _name, e), made in zip(plan, results, strict=True):
            if isinstance(made, SnapshotError):
                log.error("snapshot of %s failed: %s", volume.root, made)
                error = error if error is not None else _snapshot_error(made)
                continue
            self._crash_point("create_snapshot")
            if job is not None:
                job.made.append((volume.name, made))
            self.machine.snapshot_created(set_id, e.copy_id, made, e.writable)
            log.info("snapshot %s of %s created (%s)", made, volume.root, volume.backend)
        return error, intent_ids

    def _volume_of(self, e: CreateSnapshot) -> Volume | None:
        s = self.machine.sets.get(e.set_id)
        c = s.copy(e.copy_id) if s else None
        if c is None:
            return None
        _, volume, _ = self._resolve_share(c.mappings[0].local_share)
        return volume if volume is not None and volume.name == e.volume_name else None

    # -------------------------------------------------------------- expose

    async def _expose(self, set_id: UUID, now: float) -> int:
        """Publish every snapshot share of the set; all or nothing, two journal
        transactions and (behind Samba) one registry transaction, whatever the size."""
        m = self.machine
        out = m.begin_expose(set_id, now)
        await self._teardown(out)
        if not out.ok:
            return out.result
        error: int | None = None
        plan: list[tuple[ExposeShare, str]] = []
        for e in out.effects:
            assert isinstance(e, ExposeShare)
            path, reason = self._exposed_path(e)
            if path is None:
                log.error(
                    "cannot expose %s: base share %s: %s", e.exposed_name, e.base_share, reason
                )
                error = HResult.E_FAIL
                break
            plan.append((e, path))
        intent_ids: list[int] = []
        if error is None:
            # No fsync: if a power cut loses these intents, start-up still removes the
            # shares, as shares of ours that no kept set knows (the set has not
            # reached Exposed on disk: its record below is the durable commit).
            intent_ids = self.effects.begin(
                [ExposeIntent(e.exposed_name) for e, _ in plan], durable=False
            )
            self._crash_point("expose_intent")
            # the whole set at once: one registry transaction and one smbd message round
            done, exc = await asyncio.to_thread(
                expose_all,
                self.exposer,
                [ShareRequest(e.exposed_name, e.base_share, path, e.writable) for e, path in plan],
            )
            if exc is not None:
                log.error("expose of set %s failed: %s", set_id, exc)
                error = HResult.E_FAIL
            if done:
                self._crash_point("expose_share")
            published = set(done)
            for e, _ in plan:
                if e.exposed_name in published:
                    m.share_exposed(e.set_id, e.copy_id, e.exposed_name)
        fin = m.finish_expose(set_id, error, self.clock())
        await self._record(set_id, intent_ids, fin)
        return fin.result

    def _exposed_path(self, e: ExposeShare) -> tuple[str | None, str]:
        """Where the share's files are inside its snapshot: the snapshot path plus
        the share's place in its volume.  Commit checked the volume with its
        backend; this needs only that relative path (no second check)."""
        share = self.shares.lookup(e.base_share)
        s = self.machine.sets.get(e.set_id)
        c = s.copy(e.copy_id) if s is not None else None
        if share is None or c is None:
            return None, "no such share"
        if share.unsupported:
            return None, share.unsupported
        root = c.volume_name.split(":", 1)[-1]
        sub = os.path.relpath(os.path.realpath(share.path), root)
        if sub == os.pardir or sub.startswith(os.pardir + os.sep):
            return None, f"{share.path} is no longer inside volume {root}"
        return (e.snapshot_path if sub == os.curdir else os.path.join(e.snapshot_path, sub)), ""

    # ---------------------------------------------------- recovery complete

    async def _recovery_complete(self, set_id: UUID, now: float) -> int:
        m = self.machine
        out = m.begin_recovery_complete(set_id, now)
        await self._teardown(out)
        if not out.ok:
            return out.result
        seals = [e for e in out.effects if isinstance(e, SealSnapshot)]
        error = await self._seal_shares({e.copy_id for e in seals})
        for e in seals if error is None else []:
            try:
                await asyncio.to_thread(self.effects.seal_snapshot, e.volume_name, e.snapshot_path)
            except (SnapshotError, OSError) as exc:
                log.error("sealing %s failed: %s", e.snapshot_path, exc)
                error = HResult.E_FAIL
                break
        fin = m.finish_recovery_complete(set_id, error)
        if fin.ok:
            self._persist(fin, set_id)
        return fin.result

    async def _seal_shares(self, copy_ids: set[UUID]) -> int | None:
        """The exposed shares of these (writable) copies become read-only and lose
        their trees (an exposer that can: Samba's) before the snapshots are sealed:
        a handle opened while they were writable would write on underneath a
        filesystem seal.  E_FAIL if that fails (RecoveryComplete: the set stays
        Exposed and a retry seals again)."""
        seal_many = getattr(self.exposer, "seal_many", None)
        names = [
            m.exposed_name
            for s in self.machine.sets.values()
            for c in s.copies
            if c.id in copy_ids
            for m in c.mappings
            if m.is_exposed
        ]
        if not names or not callable(seal_many):
            return None
        try:
            await asyncio.to_thread(seal_many, names)
        except ExposeError as exc:
            log.error("sealing shares %s failed: %s", ", ".join(names), exc)
            return HResult.E_FAIL
        return None

    # -------------------------------------------------- delete share mapping

    async def _delete_share_mapping(self, set_id: UUID, copy_id: UUID, unc: str, now: float) -> int:
        """Journaled as one roll-forward intent: once the share may be gone, a crash
        finishes the deletion at start-up instead of resurrecting the mapping."""
        m = self.machine
        out = m.begin_delete_share_mapping(set_id, copy_id, _share_part(unc), now)
        await self._teardown(out)
        if not out.ok:
            return out.result
        _, _, mapping = cast(tuple[ShadowCopySet, ShadowCopy, MappedShare], out.value)
        # Durable lazily (SYNC_DELAY, or below when the set goes): a SIGKILL loses
        # nothing (WAL); what a power cut in that window can undo is in
        # RELIABILITY.md ("Power loss").
        [iid] = self.effects.begin(
            [
                DeleteMappingIntent(
                    str(set_id),
                    str(copy_id),
                    mapping.local_share,
                    mapping.exposed_name if mapping.is_exposed else "",
                )
            ],
            durable=False,
        )
        for e in out.effects:
            assert isinstance(e, UnexposeShare)
            try:
                await self._run_io(self.effects.quick([e]), self.exposer.unexpose, e.exposed_name)
            except ExposeError as exc:
                log.error("unexpose of %s failed: %s", e.exposed_name, exc)
                self.effects.settle([iid])
                m.finish_delete_share_mapping(set_id, copy_id, mapping, HResult.E_FAIL)
                return HResult.E_FAIL
        self._crash_point("unexpose_share")
        fin = m.finish_delete_share_mapping(set_id, copy_id, mapping, None)
        # the snapshot, with the last mapping: covered by the intent's roll-forward
        retry = await self._run_io(
            self.effects.quick(fin.teardown), self.effects.apply_covered, fin.teardown
        )
        self._crash_point("delete_snapshot")
        s = m.sets.get(set_id)
        # A failed deletion stays journaled for the next start-up.
        self.effects.settle(
            [iid], save=[s] if s is not None else [], delete=fin.dropped_sets, teardown=retry,
            durable=False,
        )
        if fin.dropped_sets:  # the set's last copy: on disk before the answer
            await asyncio.to_thread(self.journal.sync)
        return fin.result

    @staticmethod
    async def _run_io(quick: bool, fn: Callable[..., T], *args: Any) -> T:
        """Blocking work of a call: on the event loop if ``quick``, else in a thread.

        Why: a DeleteShareMapping's share removal ends with messages that make
        every smbd process reload its configuration; on a small machine those take
        the CPUs, and a thread's result then waits for the loop's thread to be
        scheduled again.  Measured through smbd on 2 cores (bench/set_scaling.py):
        7.1-7.2 ms per DeleteShareMapping with two thread hops, 5.3 without.
        Only work that is short and in this process qualifies (one tdb
        transaction, one btrfs ioctl: about 1 ms); a child process's round trip,
        a zfs destroy or a copy's removal stays in a thread."""
        if quick:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    # ----------------------------------------------------------------- timer

    def _arm_timer(self) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None
        deadline = self.machine.deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - self.clock())
        self._timer = loop.call_later(delay, lambda: asyncio.ensure_future(self._expire()))

    async def _expire(self) -> None:
        async with self._lock:
            out = self.machine.tick(self.clock())
            if out.dropped_sets or out.teardown:
                log.warning(
                    "message sequence timer expired: dropping %d set(s)", len(out.dropped_sets)
                )
            await self._teardown(out)
            self._arm_timer()
            self._sync_soon()


def _share_part(unc: str) -> str | None:
    try:
        return parse_unc(unc)
    except BadShareName:
        return None
