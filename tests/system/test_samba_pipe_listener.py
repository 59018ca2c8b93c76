"""The Samba pipe listener without Samba: this test plays smbd on the unix socket.

Why separate from the live interop tests: every refusal path (non-root
peer, garbage or slow hand-off, message framing corner cases, socket
hijack) is driven here byte by byte and fast; tests/interop shows the same
listener behind a real smbd.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remotevss.agent.authz import Policy, policy_for
from remotevss.agent.config import ConfigError, SambaConfig, load_config
from remotevss.agent.transports.samba_pipe import caller_from_npa
from remotevss.dcerpc import pdu
from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import HResult
from remotevss.samba import npa
from remotevss.samba.pipedir import (
    PipeDirError,
    default_pipe_dir,
    ensure_pipe_dir,
    takeover_risk,
)
from tests.support.npa_build import NpaSpec, build_request
from tests.support.pipe_harness import (
    FSRVP,
    Served,
    assert_closed_without_reply,
    bind,
    call,
    open_pipe,
    recv_exact,
    recv_msg,
    send_msg,
    serve_listener,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smbd connects as root; so must we")

REAL_BLOB = (Path(__file__).parents[1] / "unit" / "data" / "npa-smbd-4.17.12-root.bin").read_bytes()
USER_SIDS = ["S-1-5-21-1-2-3-1001", "S-1-5-21-1-2-3-513", "S-1-1-0", "S-1-5-11",
             "S-1-22-1-1001", "S-1-22-2-1001", "S-1-22-2041152804-0"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve_listener(tmp_path, check_interval=0.05, handshake_timeout=0.5) as served:
        yield served


# ---------------------------------------------------------------- hand-off


@pytest.mark.parametrize("level", [5, 7, 8])
def test_handshake_then_get_supported_version(served: Served, level: int) -> None:
    with open_pipe(served.path, build_request(NpaSpec(level=level))) as s:
        assert recv_exact(s, 36) == npa.encode_reply(level)
        bind(s)
        r = call(s, calls.GetSupportedVersionRequest())
        assert isinstance(r, calls.GetSupportedVersionResponse)
        assert (r.min_version, r.max_version, r.return_value) == (1, 1, HResult.ZERO)
    assert served.listener.handshakes == 1


def test_real_smbd_blob_is_accepted(served: Served) -> None:
    with open_pipe(served.path, REAL_BLOB) as s:
        assert recv_exact(s, 36) == npa.encode_reply(7)


def test_pdus_split_across_and_packed_into_messages(served: Served) -> None:
    with open_pipe(served.path) as s:
        recv_exact(s, 36)
        b = pdu.encode_bind(1, [pdu.ContextElem(0, FSRVP, (pdu.NDR20,))])
        for piece in (b[:5], b[5:30], b[30:]):  # one PDU in three SMB writes
            send_msg(s, piece)
        assert pdu.parse(recv_msg(s))[0].ptype == pdu.PTYPE_BIND_ACK
        stub = calls.encode_request(calls.GetSupportedVersionRequest())
        two = pdu.encode_request(2, 0, 0, stub) + pdu.encode_request(3, 0, 0, stub)
        send_msg(s, two)  # two PDUs in one write: two answers, one message each
        for call_id in (2, 3):
            msg = recv_msg(s)
            hdr, _ = pdu.parse(msg)
            assert (hdr.call_id, hdr.frag_length) == (call_id, len(msg))


def test_empty_message_closes_the_connection(served: Served) -> None:
    with open_pipe(served.path) as s:
        recv_exact(s, 36)
        s.sendall(b"\0\0")
        assert_closed_without_reply(s)


@pytest.mark.parametrize(
    "blob",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # a "length" of 1.2 GB: refused before reading
        b"\0\0\0\x10" + b"NPAM" + b"\x07\0\0\0" * 3,
        len(build_request()).to_bytes(4, "big") + build_request()[4:],  # one byte short
        (lambda b: b[:8] + b"\x09\0\0\0\x09\0\0\0" + b[16:])(build_request()),
    ],
    ids=["http", "short", "stalled", "level9"],
)
def test_bad_handshakes_are_refused_and_listener_keeps_serving(
    served: Served, blob: bytes
) -> None:
    start = time.monotonic()
    with open_pipe(served.path, blob) as s:
        assert_closed_without_reply(s)
    assert time.monotonic() - start < 3
    assert served.listener.refused == 1
    with open_pipe(served.path) as s:
        assert recv_exact(s, 36) == npa.encode_reply(7)


def test_silent_peer_times_out(served: Served) -> None:
    start = time.monotonic()
    with open_pipe(served.path, b"") as s:
        assert_closed_without_reply(s)
    assert 0.4 < time.monotonic() - start < 3


def test_non_root_peer_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    open_dir = Path(tempfile.mkdtemp(prefix="rvss-np-"))  # tmp_path is not traversable
    os.chmod(open_dir, 0o755)
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
        "try:\n"
        "    s.sendall(sys.stdin.buffer.read())\n"
        "    print(len(s.recv(64)))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print(0)\n"
    )
    try:
        with serve_listener(tmp_path, pipe_dir=open_dir / "np") as served:
            os.chmod(served.path.parent, 0o755)
            os.chmod(served.path, 0o666)
            with caplog.at_level(logging.WARNING, "remotevss.agent.samba"):
                out = subprocess.run(
                    [sys.executable, "-c", script, str(served.path)],
                    input=build_request(),
                    capture_output=True,
                    user=65534,
                    group=65534,
                    extra_groups=[],
                    cwd="/",
                    check=False,
                    timeout=30,
                )
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == b"0"
            assert served.listener.refused == 1 and served.listener.handshakes == 0
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
    assert "uid 65534" in caplog.text


# ------------------------------------------------------------ who is calling


def test_caller_from_real_blob() -> None:
    c = caller_from_npa(npa.decode_request(REAL_BLOB))
    assert (c.uid, c.address, c.name, c.transport) == (0, "127.0.0.1", "ANCHORFS\\root", "samba")
    assert "S-1-22-2041152804-0" not in c.sids and "S-1-22-1-0" in c.sids
    assert c.gids == frozenset({0})


def test_caller_drops_the_smb3_sid() -> None:
    sids = [*USER_SIDS, "S-1-22-1397571891-785-1-2"]
    c = caller_from_npa(npa.decode_request(build_request(NpaSpec(sids=sids, uid=1001))))
    assert not any(s.startswith("S-1-22-1397571891-") for s in c.sids)


OPNUM_REQUESTS: list[calls.Request] = [
    calls.GetSupportedVersionRequest(),
    calls.SetContextRequest(0),
    calls.StartShadowCopySetRequest(uuid.uuid4()),
    calls.AddToShadowCopySetRequest(uuid.uuid4(), uuid.uuid4(), r"\\x\share0"),
    calls.CommitShadowCopySetRequest(uuid.uuid4(), 1000),
    calls.ExposeShadowCopySetRequest(uuid.uuid4(), 1000),
    calls.RecoveryCompleteShadowCopySetRequest(uuid.uuid4()),
    calls.AbortShadowCopySetRequest(uuid.uuid4()),
    calls.IsPathSupportedRequest(r"\\x\share0"),
    calls.IsPathShadowCopiedRequest(r"\\x\share0"),
    calls.GetShareMappingRequest(uuid.uuid4(), uuid.uuid4(), r"\\x\share0", 1),
    calls.DeleteShareMappingRequest(uuid.uuid4(), uuid.uuid4(), r"\\x\share0"),
    calls.PrepareShadowCopySetRequest(uuid.uuid4(), 1000),
]


def _user(**kw: Any) -> bytes:
    spec: dict[str, Any] = dict(sids=USER_SIDS, privilege_mask=0, uid=1001, gid=1001,
                                groups=[1001, 34], account_name="alice", unix_name="alice")
    spec.update(kw)
    return build_request(NpaSpec(**spec))


def test_plain_user_is_denied_every_opnum_and_nothing_changes(served: Served) -> None:
    with open_pipe(served.path, _user()) as s:
        recv_exact(s, 36)
        bind(s)
        codes = [call(s, r, i + 2).return_value for i, r in enumerate(OPNUM_REQUESTS)]
    assert codes == [HResult.E_ACCESSDENIED] * len(OPNUM_REQUESTS)
    with open_pipe(served.path) as s:  # root: the context is still free
        recv_exact(s, 36)
        bind(s)
        assert call(s, calls.SetContextRequest(0)).return_value == HResult.ZERO


@pytest.mark.parametrize(
    "who",
    [
        {"sids": [*USER_SIDS, "S-1-5-32-551"]},  # Backup Operators
        {"sids": [*USER_SIDS, "S-1-5-32-544"]},  # Administrators
        {"privilege_mask": 0x200},  # SeBackupPrivilege
        {"uid": 0},
    ],
)
def test_samba_rule_admits(served: Served, who: dict[str, Any]) -> None:
    with open_pipe(served.path, _user(**who)) as s:
        recv_exact(s, 36)
        bind(s)
        assert call(s, calls.GetSupportedVersionRequest()).return_value == HResult.ZERO


def test_configured_sids_and_groups(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        '[agent]\nsocket_group = "root"\n'
        '[samba]\nallowed_sids = ["S-1-5-21-1-2-3-4242"]\nallowed_groups = ["34", "root"]\n'
        '[rpc_auth]\nmin_level = "none"\n'  # these callers bind without RPC auth
    )
    config = load_config(conf)
    assert config.samba.allowed_sids == ("S-1-5-21-1-2-3-4242",)
    policy = policy_for(config)
    assert policy.samba_gids == frozenset({34, 0}) and policy.allowed_gids == frozenset({0})
    assert "S-1-5-32-544" in policy.allowed_sids and "S-1-5-21-1-2-3-4242" in policy.allowed_sids
    user = npa.decode_request(_user(groups=[1001]))
    assert not policy.permits(caller_from_npa(user))
    assert policy.permits(caller_from_npa(npa.decode_request(_user(groups=[1001, 34]))))
    sid_user = _user(sids=[*USER_SIDS, "S-1-5-21-1-2-3-4242"], groups=[1001])
    assert policy.permits(caller_from_npa(npa.decode_request(sid_user)))
    # Under the default RPC policy the same callers, unauthenticated at the RPC level, are not.
    default = policy_for(load_config(None))
    assert not default.permits(caller_from_npa(npa.decode_request(_user(groups=[0]))))
    assert default.refusal(caller_from_npa(npa.decode_request(_user()))) is not None
    # The local socket's group does not admit an SMB user who shares its gid, nor back.
    local_only = Policy(allowed_gids=frozenset({34}))
    assert not local_only.permits(caller_from_npa(npa.decode_request(_user(groups=[34]))))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('allowed_sids = "S-1-5-32-544"', "list of strings"),
        ('allowed_sids = ["S-1-5-x"]', "not a SID"),
        ('allowed_groups = ["no-such-group-rvss"]', "unknown unix group"),
        ("allowed_groups = [1]", "list of strings"),
    ],
)
def test_bad_access_keys(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(f"[samba]\n{text}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(conf)


# ---------------------------------------------------------------- ownership


def _bind_foreign(path: Path) -> socket.socket:
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen()
    return other


def test_start_state(served: Served) -> None:
    st = os.lstat(served.path.parent)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
    assert served.listener.owned and served.listener.problem == ""
    assert served.listener.last_check is not None
    status = served.listener.status()
    assert status["owned"] is True and status["path"] == str(served.path)


def test_hijack_is_detected_and_logged(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    before = served.listener.last_check
    with caplog.at_level(logging.ERROR, "remotevss.agent.samba"):
        served.path.unlink()
        with _bind_foreign(served.path):
            deadline = time.monotonic() + 5
            while served.listener.owned and time.monotonic() < deadline:
                time.sleep(0.02)  # the periodic check, not an explicit one
            assert not served.listener.owned
            assert served.listener.problem == "replaced by another socket"
            assert served.listener.last_check is not None and before is not None
            assert served.listener.last_check > before
            served.run(served.listener.close())
            assert served.path.exists()  # a socket that is not ours is left alone
    assert "no longer our socket" in caplog.text and "docs/samba.md" in caplog.text


def test_removed_socket_is_detected(served: Served) -> None:
    served.path.unlink()
    assert not served.listener.check()
    assert served.listener.problem == "removed"


def test_close_removes_our_socket(served: Served) -> None:
    served.run(served.listener.close())
    assert not served.path.exists()
    assert served.listener.status()["problem"] == "stopped"


def test_stale_and_live_sockets_are_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    np_dir = tmp_path / "ncalrpc" / "np"
    ensure_pipe_dir(np_dir)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(np_dir / "fssagentrpc"))
    stale.close()  # the file stays: connecting gives ECONNREFUSED
    with serve_listener(tmp_path), open_pipe(np_dir / "fssagentrpc") as s:
        assert recv_exact(s, 36) == npa.encode_reply(7)
    (np_dir / "fssagentrpc").unlink(missing_ok=True)
    with (
        _bind_foreign(np_dir / "fssagentrpc"),
        caplog.at_level(logging.WARNING),
        serve_listener(tmp_path) as served,
    ):
        assert served.listener.owned
    assert "replacing a live socket" in caplog.text


def test_non_socket_at_the_path_is_not_touched(tmp_path: Path) -> None:
    np_dir = tmp_path / "ncalrpc" / "np"
    ensure_pipe_dir(np_dir)
    (np_dir / "fssagentrpc").write_text("precious")
    with pytest.raises(PipeDirError, match="not a socket"), serve_listener(tmp_path):
        pass
    assert (np_dir / "fssagentrpc").read_text() == "precious"


def test_pipe_dir_rules(tmp_path: Path) -> None:
    d = tmp_path / "run" / "np"
    ensure_pipe_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.parent).st_mode) == 0o755
    os.chmod(d, 0o755)
    ensure_pipe_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chown(d, 65534, -1)
    with pytest.raises(PipeDirError, match="owned by uid 65534"):
        ensure_pipe_dir(d)
    link = tmp_path / "run" / "np2"
    link.symlink_to(d)
    with pytest.raises(PipeDirError, match="not a directory"):
        ensure_pipe_dir(link)


def test_pipe_dir_parents_are_0755_under_an_admins_umask_077(tmp_path: Path) -> None:
    """The missing parents get 0755 as Samba's own ncalrpc directory has, not
    0700 from a restrictive umask; the np directory itself stays 0700."""
    d = tmp_path / "a" / "b" / "np"
    old = os.umask(0o077)
    try:
        ensure_pipe_dir(d)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for parent in (d.parent, d.parent.parent):
        assert stat.S_IMODE(os.stat(parent).st_mode) == 0o755, parent


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["ncalrpc dir = {t}/ncalrpc"], "{t}/ncalrpc/np"),
        (["ncalrpc dir = {t}/ncalrpc", "external_rpc_pipe:socket_dir = {t}/ext"], "{t}/ext/np"),
        (["registry shares = yes", "include = registry", "ncalrpc dir = {t}/r"], "{t}/r/np"),
    ],
)
def test_default_pipe_dir_follows_smbd(tmp_path: Path, lines: list[str], expected: str) -> None:
    conf = tmp_path / "smb.conf"
    conf.write_text("[global]\n" + "\n".join(lines).format(t=tmp_path) + "\n")
    assert default_pipe_dir(str(conf)) == Path(expected.format(t=tmp_path))


def test_unreadable_samba_config(tmp_path: Path) -> None:
    with pytest.raises(PipeDirError):
        default_pipe_dir(str(tmp_path / "missing.conf"))


def test_samba_config_section_defaults() -> None:
    assert SambaConfig().allowed_sids == () and SambaConfig().allowed_groups == ()


@pytest.mark.parametrize(
    ("on_demand", "mode", "risky"),
    [("yes", 0o755, True), ("no", 0o755, False), ("yes", 0o644, False)],
)
def test_takeover_risk(tmp_path: Path, on_demand: str, mode: int, risky: bool) -> None:
    conf = tmp_path / "smb.conf"
    conf.write_text(f"[global]\nrpc start on demand helpers = {on_demand}\n")
    helper = tmp_path / "rpcd_fsrvp"
    helper.write_text("#!/bin/sh\n")
    helper.chmod(mode)
    assert bool(takeover_risk(str(conf), helper)) is risky
