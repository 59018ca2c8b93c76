"""The pure FSRVP state machine: every cell of the state x opnum table (MS-FSRVP 3.1.4),
the check order, the timer, the context rules."""

from __future__ import annotations

import uuid
from uuid import UUID

import pytest

from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, CTX_BACKUP, Attr, HResult
from remotevss.fsrvp.machine import (
    CONTEXT_RETRY_LIMIT,
    CreateSnapshot,
    DeleteSnapshot,
    ExposeShare,
    Machine,
    Mode,
    SealSnapshot,
    ShareInfo,
    Status,
    TimerPolicy,
    UnexposeShare,
    exposed_share_name,
    valid_context,
)

ZERO = HResult.ZERO
BS = HResult.FSRVP_E_BAD_STATE
IP = HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS
ADDR = "10.0.0.1"
SHARE = ShareInfo(True, "data", True, "btrfs:/srv/data")
SHARE2 = ShareInfo(True, "other", True, "btrfs:/srv/other")
UNC = r"\\fs1\data" + "\\"
UNC2 = r"\\fs1\other"
T0 = 1_000_000.0


def to_status(m: Machine, target: Status, context: int = CTX_BACKUP) -> UUID:
    """Drive a fresh machine to a set in ``target``, simulating successful effects."""
    assert m.set_context(context, ADDR, T0).ok
    sid = m.start_shadow_copy_set(uuid.uuid4(), T0).value
    assert isinstance(sid, UUID)
    if target is Status.STARTED:
        return sid
    assert m.add_to_shadow_copy_set(sid, UNC, SHARE, T0).ok
    if target is Status.ADDED:
        return sid
    out = m.begin_commit(sid, T0)
    assert out.ok
    if target is Status.CREATION_IN_PROGRESS:
        return sid
    for e in out.effects:
        assert isinstance(e, CreateSnapshot)
        m.snapshot_created(sid, e.copy_id, f"/snap/{e.copy_id}", e.writable)
    assert m.finish_commit(sid, None, T0).ok
    if target is Status.COMMITTED:
        return sid
    out = m.begin_expose(sid, T0)
    for e in out.effects:
        assert isinstance(e, ExposeShare)
        m.share_exposed(sid, e.copy_id, e.exposed_name)
    assert m.finish_expose(sid, None, T0).ok
    if target is Status.EXPOSED:
        return sid
    assert m.begin_recovery_complete(sid, T0).ok
    assert m.finish_recovery_complete(sid, None).ok
    return sid


def run_op(m: Machine, op: str, sid: UUID) -> int:
    """One opnum against set ``sid``, two-phase calls finished with success."""
    s = m.sets.get(sid)
    cid = s.copies[0].id if s and s.copies else uuid.uuid4()
    match op:
        case "add":
            return m.add_to_shadow_copy_set(sid, UNC2, SHARE2, T0).result
        case "prepare":
            return m.prepare_shadow_copy_set(sid, T0).result
        case "commit":
            out = m.begin_commit(sid, T0)
            if not out.ok:
                return out.result
            for e in out.effects:
                assert isinstance(e, CreateSnapshot)
                m.snapshot_created(sid, e.copy_id, "/snap/x", e.writable)
            return m.finish_commit(sid, None, T0).result
        case "expose":
            out = m.begin_expose(sid, T0)
            if not out.ok:
                return out.result
            for e in out.effects:
                assert isinstance(e, ExposeShare)
                m.share_exposed(sid, e.copy_id, e.exposed_name)
            return m.finish_expose(sid, None, T0).result
        case "recovery_complete":
            out = m.begin_recovery_complete(sid, T0)
            return m.finish_recovery_complete(sid, None).result if out.ok else out.result
        case "abort":
            return m.abort_shadow_copy_set(sid, T0).result
        case "get_share_mapping":
            return m.get_share_mapping(cid, sid, "data", 1, T0).result
        case "delete_share_mapping":
            out = m.begin_delete_share_mapping(sid, cid, "data", T0)
            if not out.ok:
                return out.result
            _, _, mapping = out.value  # type: ignore[misc]
            return m.finish_delete_share_mapping(sid, cid, mapping, None).result
        case "start":
            if not m.context_set:
                assert m.set_context(CTX_BACKUP, ADDR, T0).ok
            return m.start_shadow_copy_set(uuid.uuid4(), T0).result
    raise AssertionError(op)


OPS = [
    "add",
    "prepare",
    "commit",
    "expose",
    "recovery_complete",
    "abort",
    "get_share_mapping",
    "delete_share_mapping",
    "start",
]
S = Status
DEL = None  # the set is gone afterwards
SAME = "same"

# (result, status afterwards) per state x op, per [SPEC] (MS-FSRVP 3.1.4)
SPEC_TABLE: dict[Status, dict[str, tuple[int, Status | str | None]]] = {
    S.STARTED: {
        "add": (ZERO, S.ADDED),
        "prepare": (BS, SAME),
        "commit": (BS, SAME),
        "expose": (BS, SAME),
        "recovery_complete": (BS, SAME),
        "abort": (ZERO, DEL),
        "get_share_mapping": (BS, SAME),
        "delete_share_mapping": (BS, SAME),
        "start": (IP, SAME),
    },
    S.ADDED: {
        "add": (ZERO, S.ADDED),
        "prepare": (ZERO, S.ADDED),
        "commit": (ZERO, S.COMMITTED),
        "expose": (BS, SAME),
        "recovery_complete": (BS, SAME),
        "abort": (ZERO, DEL),
        "get_share_mapping": (BS, SAME),
        "delete_share_mapping": (BS, SAME),
        "start": (IP, SAME),
    },
    S.CREATION_IN_PROGRESS: {
        "add": (BS, SAME),
        "prepare": (BS, SAME),
        "commit": (ZERO, S.COMMITTED),
        "expose": (BS, SAME),
        "recovery_complete": (BS, SAME),
        "abort": (ZERO, DEL),
        "get_share_mapping": (BS, SAME),
        "delete_share_mapping": (BS, SAME),
        "start": (IP, SAME),
    },
    S.COMMITTED: {
        "add": (BS, SAME),
        "prepare": (BS, SAME),
        "commit": (BS, SAME),
        "expose": (ZERO, S.EXPOSED),
        "recovery_complete": (BS, SAME),
        "abort": (ZERO, DEL),
        "get_share_mapping": (BS, SAME),
        "delete_share_mapping": (BS, SAME),
        "start": (IP, SAME),
    },
    S.EXPOSED: {
        "add": (BS, SAME),
        "prepare": (BS, SAME),
        "commit": (BS, SAME),
        "expose": (BS, SAME),
        "recovery_complete": (ZERO, S.RECOVERED),
        "abort": (ZERO, DEL),
        "get_share_mapping": (ZERO, SAME),
        "delete_share_mapping": (ZERO, DEL),
        "start": (IP, SAME),
    },
    S.RECOVERED: {
        "add": (BS, SAME),
        "prepare": (BS, SAME),
        "commit": (BS, SAME),
        "expose": (BS, SAME),
        "recovery_complete": (BS, SAME),
        "abort": (ZERO, DEL),
        "get_share_mapping": (BS, SAME),
        "delete_share_mapping": (ZERO, DEL),
        "start": (ZERO, SAME),
    },
}

W2012 = HResult.VSS_E_INVALID_XML_DOCUMENT
SAMBA_TABLE = {st: dict(row) for st, row in SPEC_TABLE.items()}
SAMBA_TABLE[S.CREATION_IN_PROGRESS].update(commit=(BS, SAME), abort=(BS, SAME))
for _st in (S.COMMITTED, S.EXPOSED, S.RECOVERED):
    SAMBA_TABLE[_st]["abort"] = (ZERO, SAME)
for _st in (S.STARTED, S.ADDED, S.CREATION_IN_PROGRESS, S.COMMITTED):
    SAMBA_TABLE[_st]["get_share_mapping"] = (W2012, SAME)
SAMBA_TABLE[S.EXPOSED]["start"] = (ZERO, SAME)
SAMBA_TABLE[S.RECOVERED]["get_share_mapping"] = (ZERO, SAME)


@pytest.mark.parametrize(
    "mode,table", [(Mode.SPEC, SPEC_TABLE), (Mode.SAMBA, SAMBA_TABLE)], ids=["spec", "samba"]
)
@pytest.mark.parametrize("status", list(Status), ids=[s.value for s in Status])
@pytest.mark.parametrize("op", OPS)
def test_state_opnum_table(mode: Mode, table: dict, status: Status, op: str) -> None:
    m = Machine(mode=mode)
    sid = to_status(m, status)
    expected_result, expected_status = table[status][op]
    assert run_op(m, op, sid) == expected_result
    after = m.sets.get(sid)
    if expected_status is DEL:
        assert after is None
    else:
        assert after is not None
        assert after.status is (status if expected_status == SAME else expected_status)


MISSING_SPEC = {op: HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH for op in OPS if op != "start"}
MISSING_SPEC["delete_share_mapping"] = HResult.FSRVP_E_OBJECT_NOT_FOUND
MISSING_SAMBA = {op: HResult.E_INVALIDARG for op in MISSING_SPEC}
MISSING_SAMBA["delete_share_mapping"] = HResult.FSRVP_E_OBJECT_NOT_FOUND


@pytest.mark.parametrize(
    "mode,table", [(Mode.SPEC, MISSING_SPEC), (Mode.SAMBA, MISSING_SAMBA)], ids=["spec", "samba"]
)
@pytest.mark.parametrize("op", sorted(MISSING_SPEC))
def test_unknown_set_codes(mode: Mode, table: dict, op: str) -> None:
    m = Machine(mode=mode)
    to_status(m, Status.ADDED)
    before = {k: v.status for k, v in m.sets.items()}
    assert run_op(m, op, uuid.uuid4()) == table[op]
    assert {k: v.status for k, v in m.sets.items()} == before


def test_duplicate_volume_is_already_exists_and_restarts_short_timer() -> None:
    m = Machine()
    sid = to_status(m, Status.ADDED)
    assert m.deadline == T0 + 1800
    out = m.add_to_shadow_copy_set(sid, UNC, SHARE, T0 + 5)
    assert out.result == HResult.FSRVP_E_OBJECT_ALREADY_EXISTS
    assert m.deadline == T0 + 5 + 180
    assert len(m.sets[sid].copies) == 1


def test_add_check_order_spec_share_before_set() -> None:
    m = Machine()
    missing = ShareInfo(exists=False)
    unsupported = ShareInfo(True, "data", False)
    bogus = uuid.uuid4()
    assert (
        m.add_to_shadow_copy_set(bogus, UNC, missing, T0).result == HResult.FSRVP_E_OBJECT_NOT_FOUND
    )
    assert (
        m.add_to_shadow_copy_set(bogus, UNC, unsupported, T0).result
        == HResult.FSRVP_E_NOT_SUPPORTED
    )
    samba = Machine(mode=Mode.SAMBA)
    assert samba.add_to_shadow_copy_set(bogus, UNC, missing, T0).result == HResult.E_INVALIDARG


def test_start_needs_context_and_nonnull_id() -> None:
    m = Machine()
    assert m.start_shadow_copy_set(uuid.uuid4(), T0).result == BS
    m.set_context(CTX_BACKUP, ADDR, T0)
    assert m.start_shadow_copy_set(UUID(int=0), T0).result == HResult.E_INVALIDARG
    client_id = uuid.uuid4()
    out = m.start_shadow_copy_set(client_id, T0)
    assert out.ok and out.value != client_id  # the server makes its own id


@pytest.mark.parametrize(
    "ctx,ok",
    [
        (0x0, True),
        (0x10, True),
        (0x19, True),
        (0x9, True),
        (0x00400000, True),
        (0x00400019, True),
        (0x2, True),
        (0x1B, True),
        (0x00400002, False),
        (0x1, False),
        (0x8, False),
        (0x04000010, False),
        (0xFFFFFFFF, False),
    ],
)
def test_context_validation(ctx: int, ok: bool) -> None:
    assert valid_context(ctx) is ok
    m = Machine()
    expected = ZERO if ok else HResult.FSRVP_E_UNSUPPORTED_CONTEXT
    assert m.set_context(ctx, ADDR, T0).result == expected
    assert m.context_set is ok
    samba = Machine(mode=Mode.SAMBA)
    assert samba.set_context(0x1, ADDR, T0).result == HResult.E_INVALIDARG


def test_set_context_other_client_is_in_progress() -> None:
    m = Machine()
    sid = to_status(m, Status.ADDED)
    assert m.set_context(CTX_BACKUP, "10.9.9.9", T0).result == IP
    assert sid in m.sets


def test_set_context_same_client_drops_unfinished_and_limits_retries() -> None:
    m = Machine()
    sid = to_status(m, Status.COMMITTED)
    out = m.set_context(CTX_BACKUP, ADDR, T0)
    assert out.ok and sid not in m.sets
    assert DeleteSnapshot in {type(e) for e in out.teardown}
    results = [m.set_context(CTX_BACKUP, ADDR, T0).result for _ in range(5)]
    assert results == [ZERO] * 4 + [IP]  # retries 2..5 pass, the 6th exceeds the limit
    assert not m.context_set and m.retry_count == 6
    # with the context free again, the next SetContext starts counting afresh
    assert m.set_context(CTX_BACKUP, ADDR, T0).ok and m.retry_count == 0


def test_set_context_after_a_delivered_sequence_is_not_a_retry() -> None:
    """rpcclient's fss_create_expose never calls RecoveryComplete: the context stays
    set after each successful sequence, and the next SetContext is a new sequence."""
    m = Machine()
    for _ in range(CONTEXT_RETRY_LIMIT + 3):
        sid = to_status(m, Status.EXPOSED)
        assert m.context_set and m.retry_count == 0
        c = m.sets[sid].copies[0]
        out = m.begin_delete_share_mapping(sid, c.id, c.mappings[0].local_share, T0)
        assert out.ok
        m.finish_delete_share_mapping(sid, c.id, c.mappings[0], None)
        assert sid not in m.sets and m.context_set
    # an exposed set the client never deleted is still dropped (spec), yet not a retry
    sid = to_status(m, Status.EXPOSED)
    out = m.set_context(CTX_BACKUP, ADDR, T0)
    assert out.ok and sid not in m.sets and m.retry_count == 0
    # SetContext again and again without delivering anything: those are retries
    results = [m.set_context(CTX_BACKUP, ADDR, T0).result for _ in range(CONTEXT_RETRY_LIMIT + 1)]
    assert results == [ZERO] * CONTEXT_RETRY_LIMIT + [IP]


def test_samba_mode_has_no_address_logic() -> None:
    m = Machine(mode=Mode.SAMBA)
    to_status(m, Status.ADDED)
    assert m.set_context(CTX_BACKUP, "10.9.9.9", T0).ok


def test_timer_durations_follow_the_spec() -> None:
    m = Machine()
    m.set_context(CTX_BACKUP, ADDR, T0)
    assert m.deadline == T0 + 180
    sid = m.start_shadow_copy_set(uuid.uuid4(), T0 + 1).value
    assert m.deadline == T0 + 1 + 180
    m.add_to_shadow_copy_set(sid, UNC, SHARE, T0 + 2)  # type: ignore[arg-type]
    assert m.deadline == T0 + 2 + 1800
    m.prepare_shadow_copy_set(sid, T0 + 3)  # type: ignore[arg-type]
    assert m.deadline == T0 + 3 + 1800
    out = m.begin_commit(sid, T0 + 4)  # type: ignore[arg-type]
    assert m.deadline is None  # stopped while snapshots are taken
    for e in out.effects:
        m.snapshot_created(sid, e.copy_id, "/s", False)  # type: ignore[arg-type, union-attr]
    m.finish_commit(sid, None, T0 + 5)  # type: ignore[arg-type]
    assert m.deadline == T0 + 5 + 180
    m.begin_expose(sid, T0 + 6)  # type: ignore[arg-type]
    m.finish_expose(sid, None, T0 + 7)  # type: ignore[arg-type]
    assert m.deadline == T0 + 7 + 180
    cid = m.sets[sid].copies[0].id  # type: ignore[index]
    assert m.get_share_mapping(cid, sid, "data", 1, T0 + 8).ok  # type: ignore[arg-type]
    assert m.deadline == T0 + 8 + 1800
    m.begin_recovery_complete(sid, T0 + 9)  # type: ignore[arg-type]
    m.finish_recovery_complete(sid, None)  # type: ignore[arg-type]
    assert m.deadline is None and not m.context_set


@pytest.mark.parametrize("status", [Status.STARTED, Status.ADDED, Status.COMMITTED])
def test_expiry_drops_unfinished_sets_with_their_snapshots(status: Status) -> None:
    m = Machine()
    sid = to_status(m, status)
    paths = [c.snapshot_path for c in m.sets[sid].copies if c.snapshot_path]
    assert m.tick(m.deadline - 0.001).dropped_sets == []  # type: ignore[operator]
    out = m.tick(m.deadline)  # type: ignore[arg-type]
    assert out.dropped_sets == [sid] and sid not in m.sets
    assert [e.snapshot_path for e in out.teardown if isinstance(e, DeleteSnapshot)] == paths
    assert not m.context_set and m.client_address is None
    # the next call after expiry sees the context cleared
    assert m.start_shadow_copy_set(uuid.uuid4(), T0 + 10_000).result == BS


def test_expiry_tears_down_exposed_auto_release_set_and_keeps_persistent() -> None:
    m = Machine()
    sid = to_status(m, Status.EXPOSED)
    out = m.tick(m.deadline)  # type: ignore[arg-type]
    assert sid not in m.sets
    assert {type(e) for e in out.teardown} == {UnexposeShare, DeleteSnapshot}

    p = Machine()
    psid = to_status(p, Status.EXPOSED, CTX_APP_ROLLBACK | Attr.ATTR_AUTO_RECOVERY)
    out = p.tick(p.deadline)  # type: ignore[arg-type]
    assert p.sets[psid].status is Status.RECOVERED  # kept, sealed
    assert [type(e) for e in out.teardown] == [SealSnapshot]


def test_samba_expiry_keeps_exposed_sets() -> None:
    m = Machine(mode=Mode.SAMBA)
    sid = to_status(m, Status.EXPOSED)
    out = m.tick(m.deadline)  # type: ignore[arg-type]
    assert m.sets[sid].status is Status.EXPOSED and out.teardown == []
    assert not m.context_set


def test_timer_override_and_off() -> None:
    m = Machine(timers=TimerPolicy(override=1))
    m.set_context(CTX_BACKUP, ADDR, T0)
    assert m.deadline == T0 + 1
    off = Machine(timers=TimerPolicy(override=0))
    off.set_context(CTX_BACKUP, ADDR, T0)
    assert off.deadline is None


def test_commit_failure_rolls_back_and_returns_to_added() -> None:
    m = Machine()
    sid = m.sets and None
    sid = to_status(m, Status.ADDED)
    m.add_to_shadow_copy_set(sid, UNC2, SHARE2, T0)
    out = m.begin_commit(sid, T0)
    first = out.effects[0]
    assert isinstance(first, CreateSnapshot)
    m.snapshot_created(sid, first.copy_id, "/snap/one", False)
    fin = m.finish_commit(sid, HResult.E_FAIL, T0)
    assert fin.result == HResult.E_FAIL
    assert m.sets[sid].status is Status.ADDED
    assert [e.snapshot_path for e in fin.teardown] == ["/snap/one"]  # type: ignore[union-attr]
    assert all(not c.snapshot_path for c in m.sets[sid].copies)


def test_commit_timeout_keeps_creation_in_progress_and_retry_creates_only_missing() -> None:
    m = Machine()
    sid = to_status(m, Status.ADDED)
    m.add_to_shadow_copy_set(sid, UNC2, SHARE2, T0)
    out = m.begin_commit(sid, T0)
    first = out.effects[0]
    assert isinstance(first, CreateSnapshot)
    m.snapshot_created(sid, first.copy_id, "/snap/one", False)
    assert m.finish_commit(sid, None, T0, timed_out=True).result == HResult.FSSAGENT_E_TIMEOUT
    assert m.sets[sid].status is Status.CREATION_IN_PROGRESS
    retry = m.begin_commit(sid, T0)
    assert [e.copy_id for e in retry.effects] == [m.sets[sid].copies[1].id]  # type: ignore[union-attr]


def test_writable_snapshots_are_sealed_at_recovery_complete() -> None:
    m = Machine()
    sid = to_status(m, Status.EXPOSED, CTX_BACKUP | Attr.ATTR_AUTO_RECOVERY)
    c = m.sets[sid].copies[0]
    assert c.writable
    out = m.begin_recovery_complete(sid, T0)
    assert out.effects == [SealSnapshot(c.id, c.volume_name, c.snapshot_path)]
    assert m.finish_recovery_complete(sid, None).ok
    assert not c.writable
    # read-only context: nothing to seal
    r = Machine()
    rsid = to_status(r, Status.EXPOSED)
    assert r.begin_recovery_complete(rsid, T0).effects == []


def test_seal_failure_keeps_exposed() -> None:
    m = Machine()
    sid = to_status(m, Status.EXPOSED, CTX_BACKUP | Attr.ATTR_AUTO_RECOVERY)
    m.begin_recovery_complete(sid, T0)
    assert m.finish_recovery_complete(sid, HResult.E_FAIL).result == HResult.E_FAIL
    assert m.sets[sid].status is Status.EXPOSED and m.context_set


def test_get_share_mapping_level_and_lookups() -> None:
    m = Machine()
    sid = to_status(m, Status.EXPOSED)
    cid = m.sets[sid].copies[0].id
    assert m.get_share_mapping(cid, sid, "data", 2, T0).result == HResult.E_INVALIDARG
    assert m.get_share_mapping(cid, uuid.uuid4(), "data", 2, T0).result == HResult.E_INVALIDARG
    assert m.get_share_mapping(uuid.uuid4(), sid, "data", 1, T0).result == HResult.E_INVALIDARG
    assert m.get_share_mapping(cid, sid, "nope", 1, T0).result == HResult.E_INVALIDARG
    assert m.get_share_mapping(cid, sid, None, 1, T0).result == HResult.E_INVALIDARG
    out = m.get_share_mapping(cid, sid, "DATA", 1, T0)  # case-insensitive
    s, c, mp = out.value  # type: ignore[misc]
    assert mp.share_name == UNC and mp.is_exposed and mp.exposed_name == f"data@{{{cid}}}"


def test_delete_share_mapping_codes() -> None:
    m = Machine()
    sid = to_status(m, Status.EXPOSED)
    cid = m.sets[sid].copies[0].id
    assert m.begin_delete_share_mapping(UUID(int=0), cid, "data", T0).result == HResult.E_INVALIDARG
    assert (
        m.begin_delete_share_mapping(sid, uuid.uuid4(), "data", T0).result
        == HResult.FSRVP_E_OBJECT_NOT_FOUND
    )
    assert (
        m.begin_delete_share_mapping(sid, cid, "x", T0).result == HResult.FSRVP_E_OBJECT_NOT_FOUND
    )
    out = m.begin_delete_share_mapping(sid, cid, "data", T0)
    assert out.effects == [UnexposeShare(f"data@{{{cid}}}")]
    _, _, mp = out.value  # type: ignore[misc]
    fin = m.finish_delete_share_mapping(sid, cid, mp, None)
    assert [type(e) for e in fin.teardown] == [DeleteSnapshot] and fin.dropped_sets == [sid]
    samba = Machine(mode=Mode.SAMBA)
    ssid = to_status(samba, Status.EXPOSED)
    assert (
        samba.begin_delete_share_mapping(ssid, uuid.uuid4(), "data", T0).result
        == HResult.E_INVALIDARG
    )


def test_unexpose_failure_keeps_mapping() -> None:
    m = Machine()
    sid = to_status(m, Status.EXPOSED)
    cid = m.sets[sid].copies[0].id
    out = m.begin_delete_share_mapping(sid, cid, "data", T0)
    _, _, mp = out.value  # type: ignore[misc]
    assert m.finish_delete_share_mapping(sid, cid, mp, HResult.E_FAIL).result == HResult.E_FAIL
    assert m.sets[sid].copies[0].mappings == [mp]


def test_abort_null_id_and_context_cleared() -> None:
    m = Machine()
    sid = to_status(m, Status.ADDED)
    assert m.abort_shadow_copy_set(UUID(int=0), T0).result == HResult.E_INVALIDARG
    assert m.abort_shadow_copy_set(sid, T0).ok
    assert not m.context_set and m.deadline is None
    samba = Machine(mode=Mode.SAMBA)
    ssid = to_status(samba, Status.ADDED)
    assert samba.abort_shadow_copy_set(ssid, T0).ok and samba.context_set


def test_is_path_supported_and_shadow_copied() -> None:
    m = Machine()
    assert m.is_path_supported(SHARE, T0).ok
    assert m.is_path_supported(ShareInfo(False), T0).result == HResult.FSRVP_E_OBJECT_NOT_FOUND
    assert (
        m.is_path_supported(ShareInfo(True, "x", False), T0).result == HResult.FSRVP_E_NOT_SUPPORTED
    )
    compat = ShareInfo(True, "data", True, "btrfs:/srv/data", 1)
    assert m.is_path_shadow_copied(compat, T0).value == (False, 0)
    sid = to_status(m, Status.ADDED)
    assert m.is_path_shadow_copied(compat, T0).value == (False, 0)  # not yet committed
    run_op(m, "commit", sid)
    assert m.is_path_shadow_copied(compat, T0).value == (True, 1)
    assert m.is_path_shadow_copied(SHARE2, T0).value == (False, 0)


@pytest.mark.parametrize(
    "mode,unc,local,hidden",
    [
        (Mode.SPEC, r"\\fs\h$" + "\\", "h$", True),
        (Mode.SPEC, r"\\fs\h$", "h$", False),
        (Mode.SAMBA, r"\\fs\h$", "h$", True),
        (Mode.SPEC, r"\\fs\data" + "\\", "data", False),
    ],
)
def test_hidden_share_suffix(mode: Mode, unc: str, local: str, hidden: bool) -> None:
    cid = uuid.uuid4()
    name = exposed_share_name(local, cid, unc, mode)
    assert name.startswith(f"{local}@{{{cid}}}")
    assert name.endswith("}$") is hidden


def test_ids_are_fresh_and_never_null() -> None:
    ids = iter([UUID(int=0), UUID(int=5), UUID(int=5), UUID(int=6)])
    m = Machine(new_id=lambda: next(ids))
    m.set_context(CTX_BACKUP, ADDR, T0)
    sid = m.start_shadow_copy_set(uuid.uuid4(), T0).value
    assert sid == UUID(int=5)
    assert m.add_to_shadow_copy_set(sid, UNC, SHARE, T0).value == UUID(int=6)  # type: ignore[arg-type]
