"""The high-level client sequence against our state machine (spec and Samba readings).

No sockets: :mod:`tests.unit.fsrvp_fake` puts ``fsrvp.machine`` behind the
client's Binding protocol and applies its effects to a pretend disk, so each
test can check the exact calls sent and that nothing is left behind.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from remotevss.client import errors
from remotevss.client.connection import ConnectOptions, Credentials
from remotevss.client.shadow import (
    CreateRequest,
    ShadowCopySet,
    check_set,
    context_name,
    context_value,
    create_shadow_copies,
    describe_error,
    group_by_server,
    query_path,
)
from remotevss.client.state import ClientState
from remotevss.fsrvp.constants import Attr, HResult, Opnum
from remotevss.fsrvp.contexts import attribute_names
from remotevss.fsrvp.machine import Mode
from tests.unit.fsrvp_fake import FakeNetwork, FakeServer

SEQUENCE = [
    "IsPathSupported",
    "GetSupportedVersion",
    "SetContext",
    "StartShadowCopySet",
    "AddToShadowCopySet",
]


def net_with(mode: Mode = Mode.SPEC, **kw: object) -> tuple[FakeNetwork, FakeServer]:
    net = FakeNetwork()
    srv = net.add(
        FakeServer({"fs1", "fs1.corp.example"}, {"data": "/vol1", "home": "/vol2"}, mode, **kw)
    )  # type: ignore[arg-type]
    return net, srv


def new_set(net: FakeNetwork, **kw: object) -> ShadowCopySet:
    return ShadowCopySet(None, Credentials("u", "p"), connector=net.connector(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [Mode.SPEC, Mode.SAMBA])
def test_full_sequence_and_release_on_exit(mode: Mode) -> None:
    net, srv = net_with(mode)
    with new_set(net) as s:
        s.add(r"\\fs1\data")
        s.add(r"\\FS1.corp.example\home")  # rewritten to the set's host form
        s.commit()
        mappings = s.expose()
        assert s.status == "recovered"
        assert mappings == {
            r"\\fs1\data": rf"\\fs1\data@{{{s.copies[0].copy_id}}}",
            r"\\fs1\home": rf"\\fs1\home@{{{s.copies[1].copy_id}}}",
        }
        assert [c.share_unc for c in s.copies] == ["\\\\fs1\\data\\", "\\\\fs1\\home\\"]
        assert len(srv.snapshots) == 2 and len(srv.exposed) == 2
    assert srv.log[:5] == SEQUENCE
    assert srv.log[5:12] == [
        "IsPathSupported",
        "AddToShadowCopySet",
        "PrepareShadowCopySet",
        "CommitShadowCopySet",
        "ExposeShadowCopySet",
        "GetShareMapping",
        "GetShareMapping",
    ]
    assert srv.log[12] == "RecoveryCompleteShadowCopySet"
    # backup is an auto-release context: leaving the block deleted both copies
    assert srv.log[13:] == ["GetSupportedVersion", "DeleteShareMapping", "DeleteShareMapping"]
    assert srv.clean and s.status == "deleted"
    assert net.connections == ["fs1"]  # the owner was a name of the same server


def test_persistent_context_is_kept_and_writable_not_recovered() -> None:
    net, srv = net_with()
    with new_set(net, context="app-rollback", writable=True) as s:
        s.create([r"\\fs1\data"])
        assert s.status == "exposed"  # writable: no RecoveryComplete
        s.recovery_complete()
    assert s.status == "recovered" and len(srv.exposed) == 1
    assert srv.machine.sets[s.set_id].context == Attr.ATTR_AUTO_RECOVERY | 0x9  # type: ignore[index]
    s2 = ShadowCopySet.resume(s.record(), connector=net.connector())
    s2.delete()
    assert srv.clean


def test_keep_flag_overrides_release() -> None:
    net, srv = net_with()
    with new_set(net, keep=True) as s:
        s.create([r"\\fs1\data"])
    assert len(srv.exposed) == 1 and s.status == "recovered"
    s.delete()
    with new_set(net, context="nas-rollback", keep=False) as s:
        s.create([r"\\fs1\data"])
    assert srv.clean


@pytest.mark.parametrize("mode", [Mode.SPEC, Mode.SAMBA])
@pytest.mark.parametrize(
    "failing",
    [
        Opnum.ADD_TO_SHADOW_COPY_SET,
        Opnum.PREPARE_SHADOW_COPY_SET,
        Opnum.COMMIT_SHADOW_COPY_SET,
        Opnum.EXPOSE_SHADOW_COPY_SET,
        Opnum.GET_SHARE_MAPPING,
        Opnum.RECOVERY_COMPLETE_SHADOW_COPY_SET,
    ],
)
def test_any_failure_leaves_nothing(mode: Mode, failing: int, tmp_path: Path) -> None:
    net, srv = net_with(mode)
    state = ClientState(tmp_path / "s.db")
    s = new_set(net, state=state)
    s.add(r"\\fs1\data")
    srv.fail[failing] = HResult.E_FAIL
    with pytest.raises(errors.FsrvpError) as exc, s:
        s.add(r"\\fs1\home")
        s.commit()
        s.expose()
    assert exc.value.code == HResult.E_FAIL
    assert srv.clean, (srv.snapshots, srv.exposed, srv.machine.sets)
    assert state.sets() == []
    assert s.status in ("aborted", "deleted")


@pytest.mark.parametrize("mode", [Mode.SPEC, Mode.SAMBA])
@pytest.mark.parametrize(
    "failing", [Opnum.COMMIT_SHADOW_COPY_SET, Opnum.EXPOSE_SHADOW_COPY_SET, Opnum.GET_SHARE_MAPPING]
)
def test_connection_lost_mid_sequence_reconnects_to_clean_up(mode: Mode, failing: int) -> None:
    net, srv = net_with(mode)
    s = new_set(net)
    s.add(r"\\fs1\data")
    srv.drop[failing] = errors.ConnectionLost
    with pytest.raises(errors.ConnectionLost):
        s.commit()
        s.expose()
    assert srv.clean
    assert net.connections == ["fs1", "fs1"]  # a fresh binding for the abort


def test_cleanup_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    net, srv = net_with()
    s = new_set(net)
    s.add(r"\\fs1\data")
    srv.drop[Opnum.COMMIT_SHADOW_COPY_SET] = errors.CallTimeout
    net.down.add("fs1")
    with pytest.raises(errors.CallTimeout):
        s.commit()
    assert "could not clean up" in caplog.text
    assert srv.machine.sets  # the server's timer will drop it


def test_samba_abort_of_committed_set_falls_back_to_expose_and_delete() -> None:
    net, srv = net_with(Mode.SAMBA)
    s = new_set(net)
    s.add(r"\\fs1\data")
    s.commit()
    assert s.abort() is True
    assert srv.log[-5:] == [
        "AbortShadowCopySet",
        "GetShareMapping",
        "ExposeShadowCopySet",
        "GetSupportedVersion",
        "DeleteShareMapping",
    ]
    assert srv.clean


def test_spec_abort_of_committed_set_needs_no_fallback() -> None:
    net, srv = net_with(Mode.SPEC)
    s = new_set(net)
    s.add(r"\\fs1\data")
    s.commit()
    s.abort()
    assert srv.log[-2:] == ["AbortShadowCopySet", "GetShareMapping"]
    assert srv.clean


def test_abort_of_unknown_set_is_already_gone() -> None:
    net, srv = net_with(Mode.SAMBA)
    s = new_set(net)
    s.add(r"\\fs1\data")
    rec = s.record()
    s.abort()
    again = ShadowCopySet.resume(rec, connector=net.connector())
    assert again.abort() is False
    again = ShadowCopySet.resume(rec, connector=net.connector())
    with pytest.raises(errors.NoSuchSet):
        again.abort(missing_ok=False)


def test_local_checks() -> None:
    net, srv = net_with()
    s = new_set(net)
    s.add(r"\\fs1\data")
    with pytest.raises(errors.ObjectAlreadyExists) as exc:
        s.add(r"\\FS1\DATA\\"[:-1])
    assert "client check" in exc.value.call
    with pytest.raises(errors.BadUnc, match="not this set's server"):
        s.add(r"\\other\data")
    with pytest.raises(errors.UsageError, match="needs committed"):
        s.expose()
    s.abort()
    with pytest.raises(errors.UsageError, match="aborted"):
        s.add(r"\\fs1\home")
    with pytest.raises(errors.UsageError):
        context_value("nope")


def test_unsupported_first_share_leaves_set_new() -> None:
    net, srv = net_with()
    s = new_set(net)
    with pytest.raises(errors.ObjectNotFound):
        s.add(r"\\fs1\nosuch")
    assert s.status == "new" and s.set_id is None
    s.add(r"\\fs1\data")
    assert s.status == "added"
    s.abort()
    assert srv.clean


def test_server_named_explicitly_must_match_shares() -> None:
    net, srv = net_with()
    s = ShadowCopySet("fs1.corp.example", connector=net.connector())
    s.add(r"\\fs1\data")
    assert s.copies[0].share_unc == "\\\\fs1.corp.example\\data\\"
    s.abort()


def test_context_helpers() -> None:
    assert context_value("backup") == 0
    assert context_value("BACKUP", writable=True) == Attr.ATTR_AUTO_RECOVERY
    assert context_value(0x19) == 0x19
    assert context_name(0x19 | Attr.ATTR_AUTO_RECOVERY) == "nas-rollback"
    assert context_name(0x1234) == "0x00001234"
    assert attribute_names(0x19) == ["Persistent", "No_Auto_Release", "No_Writers", "Read-only"]
    assert attribute_names(Attr.ATTR_AUTO_RECOVERY) == ["Auto_Release", "Writable"]


# ----------------------------------------------------------------- owner redirection


def cluster() -> tuple[FakeNetwork, FakeServer, FakeServer]:
    net = FakeNetwork()
    front = net.add(FakeServer({"fscluster"}, {"data": "/vol"}, owner="NODE2"))
    node2 = net.add(FakeServer({"node2"}, {"data": "/vol"}))
    return net, front, node2


def test_owner_redirect_followed_once() -> None:
    net, front, node2 = cluster()
    with new_set(net) as s:
        s.create([r"\\fscluster\data"])
        assert s.owner == "node2"
        assert s.copies[0].share_unc == "\\\\fscluster\\data\\"  # UNCs keep the name given
    assert net.connections == ["fscluster", "node2"]
    assert front.log == ["IsPathSupported"]
    assert node2.log[:3] == ["IsPathSupported", "GetSupportedVersion", "SetContext"]
    assert node2.clean


def test_owner_redirect_off() -> None:
    net, front, node2 = cluster()
    s = new_set(net, follow_owner=False)
    s.add(r"\\fscluster\data")
    assert net.connections == ["fscluster"] and s.owner == "fscluster"
    s.abort()


def test_owner_unreachable_is_a_clear_error() -> None:
    net, front, node2 = cluster()
    net.down.add("node2")
    s = new_set(net)
    with pytest.raises(errors.OwnerRedirectError, match="--no-follow-owner"):
        s.add(r"\\fscluster\data")


def test_no_second_redirect() -> None:
    net, front, node2 = cluster()
    node2.owner = "NODE3"
    net.add(FakeServer({"node3"}, {"data": "/v"}))
    with pytest.raises(errors.OwnerRedirectError, match="second redirect"):
        new_set(net).add(r"\\fscluster\data")


def test_invalid_owner_name_refused() -> None:
    net = FakeNetwork()
    net.add(FakeServer({"fs"}, {"data": "/v"}, owner="\\\\evil\\share"))
    with pytest.raises(errors.OwnerRedirectError, match="invalid owner"):
        new_set(net).add(r"\\fs\data")


def test_owner_resolving_to_our_peer_is_the_same_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from remotevss.client import shadow

    net = FakeNetwork()
    net.add(FakeServer({"10.0.0.5"}, {"data": "/v"}, owner="filer"))
    real = net.connector()

    def connector(host: str, c: Credentials, o: ConnectOptions):  # type: ignore[no-untyped-def]
        b = real(host, c, o)
        b.peer_address = "10.0.0.5"
        return b

    monkeypatch.setattr(shadow, "_addresses", lambda h: {"10.0.0.5"} if h == "filer" else set())
    s = ShadowCopySet(None, connector=connector)
    s.add(r"\\10.0.0.5\data")
    assert net.connections == ["10.0.0.5"]
    s.abort()


# ----------------------------------------------------------------- several servers, queries


def test_multi_server_creation_in_step(tmp_path: Path) -> None:
    net = FakeNetwork()
    a = net.add(FakeServer({"fa"}, {"x": "/1", "y": "/2"}))
    b = net.add(FakeServer({"fb"}, {"x": "/1"}))
    state = ClientState(tmp_path / "m.db")
    sets = create_shadow_copies(
        CreateRequest([r"\\fa\x", r"\\fb\x", r"\\fa\y"]), state=state, connector=net.connector()
    )
    assert [len(s.copies) for s in sets] == [2, 1]
    assert sets[0].client_set_id == sets[1].client_set_id
    assert [r.status for r in state.sets()] == ["recovered", "recovered"]
    assert a.log.index("CommitShadowCopySet") > a.log.index("PrepareShadowCopySet")
    found, _ = state.find(sets[0].client_set_id)
    assert len(found) == 2
    for s in sets:
        s.delete()
    assert a.clean and b.clean and state.sets() == []


def test_multi_server_failure_aborts_all() -> None:
    net = FakeNetwork()
    a = net.add(FakeServer({"fa"}, {"x": "/1"}))
    b = net.add(FakeServer({"fb"}, {"x": "/1"}, mode=Mode.SAMBA))
    b.fail[Opnum.EXPOSE_SHADOW_COPY_SET] = HResult.E_FAIL
    with pytest.raises(errors.FsrvpError):
        create_shadow_copies(CreateRequest([r"\\fa\x", r"\\fb\x"]), connector=net.connector())
    assert a.clean and b.clean


def test_group_by_server() -> None:
    groups = group_by_server([r"\\fs\a", r"\\FS.x.y\b", r"\\other\a"])
    assert [[u.display for u in g] for g in groups] == [[r"\\fs\a", r"\\fs\b"], [r"\\other\a"]]
    with pytest.raises(errors.ObjectAlreadyExists):
        group_by_server([r"\\fs\a", r"\\fs.x\A"])


def test_query_path() -> None:
    net, srv = net_with()
    q = query_path(r"\\fs1\data", connector=net.connector())
    assert q.supported and q.owner == "FS1" and q.shadow_copied is False
    with pytest.raises(errors.ObjectNotFound) as exc:
        query_path(r"\\fs1\nosuch", connector=net.connector())
    assert "no such share" in describe_error(exc.value)
    samba_net, _ = net_with(Mode.SAMBA)
    srv2 = samba_net.servers["fs1"]
    srv2.fail[Opnum.IS_PATH_SHADOW_COPIED] = HResult.FSRVP_E_NOT_SUPPORTED
    q = query_path(r"\\fs1\data", connector=samba_net.connector())
    assert q.shadow_copied is None and "does not implement" in q.note


@pytest.mark.parametrize("mode", [Mode.SPEC, Mode.SAMBA])
def test_check_set_marks_stale(mode: Mode, tmp_path: Path) -> None:
    net, srv = net_with(mode)
    state = ClientState(tmp_path / "c.db")
    s = new_set(net, state=state, keep=True, context="nas-rollback", writable=True)
    with s:
        s.create([r"\\fs1\data"])
    rec = state.sets()[0]
    res = check_set(rec, state=state, connector=net.connector())
    assert [c.copy_id for c in res.alive] == [s.copies[0].copy_id] and not res.stale
    # the server forgets the set (e.g. an administrator deleted it)
    srv.machine.sets.clear()
    res = check_set(state.sets()[0], state=state, connector=net.connector())
    assert len(res.stale) == 1 and not res.alive
    assert state.sets()[0].status == "stale"


def test_check_set_bad_state_is_not_stale(tmp_path: Path) -> None:
    net, srv = net_with(Mode.SPEC)  # spec: GetShareMapping on a Recovered set is BAD_STATE
    state = ClientState(tmp_path / "c.db")
    with new_set(net, state=state, keep=True) as s:
        s.create([r"\\fs1\data"])
    res = check_set(state.sets()[0], state=state, connector=net.connector())
    assert not res.stale and len(res.unknown) == 1
    assert "BAD_STATE" in res.unknown[0][1]


def test_delete_one_copy_then_missing() -> None:
    net, srv = net_with()
    with new_set(net, keep=True, context="nas-rollback") as s:
        s.create([r"\\fs1\data", r"\\fs1\home"])
    first = s.copies[0]
    out = s.delete([first.copy_id])
    assert [o.deleted for o in out] == [True] and len(s.copies) == 1
    with pytest.raises(errors.UsageError):
        s.delete([uuid.uuid4()])
    srv.machine.sets.clear()
    out = s.delete()
    assert [o.deleted for o in out] == [False] and "already gone" in out[0].detail
    assert s.status == "deleted"


def test_refusal_of_an_unauthenticated_binding_names_the_auth_level() -> None:
    """E_ACCESSDENIED from a call, or a bind refused for access, at --auth-level none:
    the server's auth level policy, not the caller's rights (still exit 4)."""
    from remotevss.client.errors import EXIT_AUTH, ConnectAccessDenied, fsrvp_error
    from remotevss.fsrvp.constants import HResult, Opnum

    call = fsrvp_error(Opnum.IS_PATH_SUPPORTED, HResult.E_ACCESSDENIED)
    bind = ConnectAccessDenied("fs1", "FSRVP bind refused: rpc_s_access_denied")
    for exc in (call, bind):
        assert exc.exit_code == EXIT_AUTH
        exc.auth_level = "none"
        text = describe_error(exc)
        assert "packet integrity or privacy" in text and "--auth-level" in text, text
        assert "administrator" not in text
    call.auth_level = "privacy"  # a signed caller refused: then it is about rights
    assert "administrator or backup operator" in describe_error(call)
