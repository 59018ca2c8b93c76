"""The client's persisted table, and the typed errors' code mapping."""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path

import pytest

from remotevss.client import errors
from remotevss.client.errors import NoSuchSet, fsrvp_error
from remotevss.client.state import ClientState, CopyRecord, SetRecord, default_state_path
from remotevss.fsrvp.constants import HResult, Opnum


def _set(server: str = "fs", n: int = 2) -> SetRecord:
    sid = uuid.uuid4()
    now = time.time()
    rec = SetRecord(sid, server, 445, server, uuid.uuid4(), 0, False, "recovered", now, now)
    rec.copies = [CopyRecord(uuid.uuid4(), sid, server, f"\\\\{server}\\s{i}\\") for i in range(n)]
    return rec


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_path(env) == tmp_path / ".local/state/remotevss/client.sqlite3"
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    assert default_state_path(env) == tmp_path / "xdg/remotevss/client.sqlite3"
    env["REMOTEVSS_CLIENT_STATE"] = str(tmp_path / "x.db")
    assert default_state_path(env) == tmp_path / "x.db"


def test_persisted_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "d" / "client.sqlite3"
    a = _set("fs1")
    b = _set("fs2", 1)
    with ClientState(path) as st:
        st.put_set(a)
        st.put_set(b)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    with ClientState(path) as st:
        sets = st.sets()
        assert [s.set_id for s in sets] == [a.set_id, b.set_id]
        assert [c.copy_id for c in sets[0].copies] == [c.copy_id for c in a.copies]
        assert st.find(a.set_id) == ([sets[0]], None)
        assert st.find(a.client_set_id) == ([sets[0]], None)
        found, copy = st.find(a.copies[1].copy_id)
        assert found == [sets[0]] and copy == sets[0].copies[1]
        assert st.find(uuid.uuid4()) == ([], None)


def test_copy_updates_and_cascade(tmp_path: Path) -> None:
    st = ClientState(tmp_path / "c.db")
    a = _set()
    st.put_set(a)
    c = a.copies[0]
    c.exposed_name, c.exposed_unc, c.creation_time = "s0@{x}", r"\\fs\s0@{x}", 1
    st.update_copy(c)
    st.set_status(a.set_id, "fs", "stale", "gone")
    got = st.sets()[0]
    assert got.status == "stale" and got.note == "gone"
    assert got.copies[0].exposed_unc == r"\\fs\s0@{x}"
    st.remove_copy(a.copies[0].copy_id, "fs")
    assert len(st.sets()[0].copies) == 1
    st.remove_copy(a.copies[1].copy_id, "fs")
    assert st.sets() == []  # the last copy takes the set with it
    extra = CopyRecord(uuid.uuid4(), a.set_id, "fs", r"\\fs\x\\")
    b = _set()
    st.put_set(b)
    st.put_copy(CopyRecord(extra.copy_id, b.set_id, "fs", extra.share_unc))
    assert [x.copy_id for x in st.sets()[0].copies][-1] == extra.copy_id
    st.remove_set(b.set_id, "fs")
    assert st.sets() == []


def test_pending(tmp_path: Path) -> None:
    st = ClientState(tmp_path / "p.db")
    assert st.add_pending(r"\\fs\a\\") is True
    assert st.add_pending(r"\\fs\a\\") is False
    st.add_pending(r"\\fs\b\\")
    assert st.pending() == [r"\\fs\a\\", r"\\fs\b\\"]
    st.clear_pending()
    assert st.pending() == []


@pytest.mark.parametrize(
    ("opnum", "code", "cls", "no_such_set"),
    [
        (
            Opnum.COMMIT_SHADOW_COPY_SET,
            HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH,
            errors.IdMismatch,
            True,
        ),
        (Opnum.COMMIT_SHADOW_COPY_SET, HResult.E_INVALIDARG, errors.InvalidArg, True),
        (Opnum.ADD_TO_SHADOW_COPY_SET, HResult.FSRVP_E_BAD_STATE, errors.BadState, True),
        (Opnum.GET_SHARE_MAPPING, HResult.FSRVP_E_BAD_STATE, errors.BadState, False),
        (Opnum.GET_SHARE_MAPPING, HResult.VSS_E_INVALID_XML_DOCUMENT, errors.BadState, False),
        (Opnum.DELETE_SHARE_MAPPING, HResult.FSRVP_E_OBJECT_NOT_FOUND, errors.ObjectNotFound, True),
        (Opnum.DELETE_SHARE_MAPPING, HResult.FSRVP_E_BAD_STATE, errors.BadState, False),
        (Opnum.IS_PATH_SUPPORTED, HResult.E_INVALIDARG, errors.InvalidArg, False),
        (
            Opnum.START_SHADOW_COPY_SET,
            HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS,
            errors.InProgress,
            False,
        ),
        (Opnum.SET_CONTEXT, HResult.E_ACCESSDENIED, errors.FsrvpAccessDenied, False),
        (Opnum.COMMIT_SHADOW_COPY_SET, HResult.FSSAGENT_E_TIMEOUT, errors.FsrvpTimeout, False),
        (Opnum.SET_CONTEXT, HResult.FSRVP_E_UNSUPPORTED_CONTEXT, errors.UnsupportedContext, False),
        (Opnum.SET_CONTEXT, 0x80001234, errors.FsrvpError, False),
    ],
)
def test_fsrvp_error_mapping(opnum: int, code: int, cls: type, no_such_set: bool) -> None:
    exc = fsrvp_error(opnum, code, "detail")
    assert isinstance(exc, cls)
    assert isinstance(exc, NoSuchSet) is no_such_set
    assert exc.code == code and exc.call
    assert f"0x{code:08X}" in str(exc) and "detail" in str(exc)
    if no_such_set:
        assert exc.exit_code == errors.EXIT_NOT_FOUND
    assert type(fsrvp_error(opnum, code)) is type(exc)  # the combined classes are cached


def test_access_denied_marker_covers_all_levels() -> None:
    assert issubclass(errors.ConnectAccessDenied, errors.AccessDeniedError)
    assert issubclass(errors.FsrvpAccessDenied, errors.AccessDeniedError)
    assert errors.AuthenticationFailed("h", "x").exit_code == errors.EXIT_AUTH
    assert errors.PipeNotFound("h", "x").exit_code == errors.EXIT_CONNECT
    assert errors.CallTimeout("c", "x").exit_code == errors.EXIT_TIMEOUT
