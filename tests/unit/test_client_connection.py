"""FsrvpConnection's choices without a server: NTLM vs Kerberos, auth levels, error typing.

The real thing is exercised against Samba in tests/interop/test_client_samba.py;
Kerberos cannot be (no KDC here), so its wiring is checked with impacket's
SMBConnection and transport replaced by recording fakes.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from impacket import nmb, nt_errors
from impacket.dcerpc.v5 import rpcrt
from impacket.smbconnection import SessionError

from remotevss.client import connection as conmod
from remotevss.client import errors
from remotevss.client.connection import (
    ConnectOptions,
    Credentials,
    FsrvpConnection,
    _connect_error,
    ccache_path,
)


class FakeDce:
    def __init__(self, t: FakeTransport) -> None:
        self.t = t
        self.auth_type: int | None = None
        self.auth_level: int | None = None

    def connect(self) -> None:
        if self.t.open_error is not None:
            raise SessionError(self.t.open_error)

    def set_auth_type(self, v: int) -> None:
        self.auth_type = v

    def set_auth_level(self, v: int) -> None:
        self.auth_level = v

    def bind(self, uuid: bytes) -> Any:
        if self.t.bind_error is not None:
            raise self.t.bind_error
        level = self.t.answer_level if self.t.answer_level is not None else self.auth_level
        if level == rpcrt.RPC_C_AUTHN_LEVEL_NONE:
            return {"auth_len": 0}
        trailer = rpcrt.SEC_TRAILER()
        trailer["auth_type"] = self.auth_type
        trailer["auth_level"] = level
        return {"auth_len": 16, "sec_trailer": trailer.getData()}

    def call(self, opnum: int, stub: bytes) -> None:
        self.t.calls.append(opnum)
        if self.t.call_error is not None:
            raise self.t.call_error

    def recv(self) -> bytes:
        return b"\x01\0\0\0\x01\0\0\0\0\0\0\0"

    def disconnect(self) -> None:
        self.t.disconnected = True


class FakeTransport:
    last: FakeTransport | None = None
    open_error: int | None = None
    bind_error: Exception | None = None
    answer_level: int | None = None
    call_error: Exception | None = None

    def __init__(self, host: str, port: int, pipe: str, smb_connection: Any = None) -> None:
        self.pipe = pipe
        self.kerberos: tuple[bool, str | None] | None = None
        self.calls: list[int] = []
        self.disconnected = False
        self.dce = FakeDce(self)
        FakeTransport.last = self

    def set_kerberos(self, flag: bool, kdc: str | None) -> None:
        self.kerberos = (flag, kdc)

    def get_dce_rpc(self) -> FakeDce:
        return self.dce


class FakeSmb:
    last: FakeSmb | None = None
    ctor_error: Exception | None = None
    login_error: Exception | None = None
    guest = False
    dialect = 0x311

    def __init__(self, name: str, host: str, sess_port: int, timeout: int) -> None:
        if FakeSmb.ctor_error is not None:
            raise FakeSmb.ctor_error
        self.args = (name, host, sess_port, timeout)
        self.logins: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.timeouts: list[int] = []
        FakeSmb.last = self

    def getDialect(self) -> int:  # noqa: N802 - impacket's names
        return FakeSmb.dialect

    def login(self, *a: Any, **kw: Any) -> None:
        self.logins.append(("ntlm", a, kw))
        if FakeSmb.login_error is not None:
            raise FakeSmb.login_error

    def kerberosLogin(self, *a: Any, **kw: Any) -> None:  # noqa: N802
        self.logins.append(("kerberos", a, kw))
        if FakeSmb.login_error is not None:
            raise FakeSmb.login_error

    def isGuestSession(self) -> bool:  # noqa: N802
        return FakeSmb.guest

    def getServerName(self) -> str:  # noqa: N802
        return "FS1"

    def getServerDNSHostName(self) -> str:  # noqa: N802
        return "fs1"

    def getServerDomain(self) -> str:  # noqa: N802
        return "CORP"

    def getServerDNSDomainName(self) -> str:  # noqa: N802
        return "corp.example"

    def getSMBServer(self) -> Any:  # noqa: N802
        raise AttributeError

    def setTimeout(self, t: int) -> None:  # noqa: N802
        self.timeouts.append(t)

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (FakeSmb, FakeTransport):
        for attr in ("ctor_error", "login_error", "open_error", "bind_error", "answer_level",
                     "call_error"):  # fmt: skip
            if hasattr(cls, attr):
                setattr(cls, attr, None)
    FakeSmb.guest = False
    FakeSmb.dialect = 0x311
    monkeypatch.setattr(conmod, "SMBConnection", FakeSmb)
    monkeypatch.setattr(conmod.transport, "SMBTransport", FakeTransport)
    monkeypatch.delenv("KRB5CCNAME", raising=False)


def test_ntlm_privacy_by_default() -> None:
    with FsrvpConnection("fs1", Credentials("u", "p", "CORP"), ConnectOptions(port=1445)) as c:
        assert c.negotiated_auth_level == "privacy" and not c.kerberos
        assert c.names() == {"fs1", "fs1.corp.example"}
    smb, t = FakeSmb.last, FakeTransport.last
    assert smb is not None and t is not None
    assert smb.args == ("fs1", "fs1", 1445, 30)
    assert smb.logins == [("ntlm", ("u", "p", "CORP", "", ""), {})]
    assert smb.timeouts[0] == 180  # the call timeout, after the bind
    assert t.pipe == "\\FssagentRpc" and t.kerberos is None
    assert t.dce.auth_type == rpcrt.RPC_C_AUTHN_WINNT
    assert t.dce.auth_level == rpcrt.RPC_C_AUTHN_LEVEL_PKT_PRIVACY


def test_kerberos_from_ccache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def counted(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    # a ccache v4 holding only its principal u@CORP.EXAMPLE (no tickets)
    cc = tmp_path / "krb5cc"
    cc.write_bytes(b"\x05\x04\x00\x00" + struct.pack(">II", 1, 1)
                   + counted(b"CORP.EXAMPLE") + counted(b"u"))  # fmt: skip
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{cc}")  # kinit's spelling
    assert ccache_path() == str(cc)
    bindings: list[FakeGssBinding] = []

    class FakeGssBinding:
        """Named fake for client/gss_rpc.GssKerberosBinding (GSSAPI needs a real KDC:
        tests/interop/test_rpc_auth_kerberos.py runs the real one)."""

        def __init__(self, transport: Any, host: str, level: int, **creds: str) -> None:
            self.transport, self.host, self.level = transport, host, level
            self.ack_auth_level = level
            self.bound: tuple[Any, ...] = ()
            bindings.append(self)

        def bind(self, iface: Any, version: tuple[int, int]) -> None:
            self.bound = (iface, version)

    monkeypatch.setattr(conmod, "GssKerberosBinding", FakeGssBinding)
    creds = Credentials(kdc_host="dc1", use_kerberos=True)
    c = FsrvpConnection("fs1.corp.example", creds, ConnectOptions(auth_level="integrity"))
    smb, t = FakeSmb.last, FakeTransport.last
    assert smb is not None and t is not None
    assert c.kerberos and smb.logins[0][0] == "kerberos"
    # user and realm from the ccache named FILE:..., read by us (impacket's own
    # lookup would open "FILE:/..." as a path)
    assert smb.logins[0][1][:3] == ("u", "", "CORP.EXAMPLE")
    assert smb.logins[0][2] == {"kdcHost": "dc1", "TGT": None, "TGS": None, "useCache": False}
    # the FSRVP binding is GSSAPI's, on impacket's open pipe, not impacket's bind
    (b,) = bindings
    assert b.transport is t and b.host == "fs1.corp.example"
    assert b.level == rpcrt.RPC_C_AUTHN_LEVEL_PKT_INTEGRITY and b.bound[1] == (1, 0)
    assert t.dce.auth_type is None and c._dce is b
    assert c.negotiated_auth_level == "integrity"
    # a password means NTLM unless Kerberos is asked for
    assert not Credentials("u", "p").kerberos()
    assert Credentials("u", "p", use_kerberos=True).kerberos()
    monkeypatch.setenv("KRB5CCNAME", "KCM:0")
    assert ccache_path() is None


def test_auth_level_none_sends_no_auth() -> None:
    c = FsrvpConnection("fs1", Credentials("u", "p"), ConnectOptions(auth_level="none"))
    t = FakeTransport.last
    assert t is not None and t.dce.auth_type is None
    assert t.dce.auth_level == rpcrt.RPC_C_AUTHN_LEVEL_NONE
    assert c.negotiated_auth_level == "none"


def test_downgraded_bind_is_refused() -> None:
    FakeTransport.answer_level = rpcrt.RPC_C_AUTHN_LEVEL_CONNECT
    with pytest.raises(
        errors.BindRejected, match="asked for auth level privacy, server answered connect"
    ):
        FsrvpConnection("fs1", Credentials("u", "p"))


@pytest.mark.parametrize(
    ("setup", "cls", "text"),
    [
        (lambda: setattr(FakeSmb, "login_error", SessionError(nt_errors.STATUS_LOGON_FAILURE)),
         errors.AuthenticationFailed, "STATUS_LOGON_FAILURE"),
        (lambda: setattr(FakeSmb, "login_error", SessionError(nt_errors.STATUS_ACCOUNT_LOCKED_OUT)),
         errors.AuthenticationFailed, "locked out"),
        (lambda: setattr(FakeSmb, "login_error", SessionError(nt_errors.STATUS_ACCESS_DENIED)),
         errors.ConnectAccessDenied, "STATUS_ACCESS_DENIED"),
        (lambda: setattr(FakeSmb, "guest", True), errors.AuthenticationFailed, "guest"),
        (lambda: setattr(FakeSmb, "dialect", 0x210), errors.HostUnreachable, "not SMB 3"),
        (lambda: setattr(FakeTransport, "open_error", nt_errors.STATUS_OBJECT_NAME_NOT_FOUND),
         errors.PipeNotFound, "no FSRVP agent on this server"),
        (lambda: setattr(FakeTransport, "open_error", nt_errors.STATUS_ACCESS_DENIED),
         errors.ConnectAccessDenied, "denied"),
        (lambda: setattr(FakeTransport, "bind_error", rpcrt.DCERPCException(
            "Bind context 1 rejected: provider_rejection; abstract_syntax_not_supported "
            "(this usually means the interface isn't listening on the given endpoint)")),
         errors.BindRejected, "does not serve FSRVP 1.0"),
        (lambda: setattr(FakeTransport, "bind_error", rpcrt.DCERPCException("rpc_s_access_denied")),
         errors.ConnectAccessDenied, "bind refused"),
        (lambda: setattr(FakeTransport, "bind_error", nmb.NetBIOSTimeout()),
         errors.ConnectTimeout, "timed out"),
    ],
)  # fmt: skip
def test_connect_errors_are_typed(setup: Any, cls: type, text: str) -> None:
    setup()
    with pytest.raises(cls) as exc:
        FsrvpConnection("fs1", Credentials("u", "p"))
    assert text in str(exc.value)
    assert str(exc.value).startswith("fs1: ")


@pytest.mark.parametrize(
    ("exc", "cls", "text"),
    [
        (OSError("Connection error (h:445)", socket.gaierror(-2, "Name or service not known")),
         errors.HostUnreachable, "cannot resolve"),
        (OSError("Connection error (h:445)", ConnectionRefusedError(111, "refused")),
         errors.HostUnreachable, "connection refused on port 445"),
        (OSError("Connection error (h:445)", TimeoutError("timed out")),
         errors.ConnectTimeout, "TCP connect to port 445 timed out"),
        (OSError("Connection error (h:445)", OSError(113, "No route to host")),
         errors.HostUnreachable, "No route to host"),
        (nmb.NetBIOSTimeout(), errors.ConnectTimeout, "no SMB answer"),
        (Exception("No answer!"), errors.HostUnreachable, "the connection was closed"),
    ],
)  # fmt: skip
def test_connect_error_mapping(exc: BaseException, cls: type, text: str) -> None:
    err = _connect_error("h", 445, exc, 30)
    assert isinstance(err, cls) and text in str(err)


@pytest.mark.parametrize(
    ("raised", "cls", "closed"),
    [
        (rpcrt.DCERPCException("nca_s_op_rng_error"), errors.RpcFault, False),
        (nmb.NetBIOSTimeout(), errors.CallTimeout, True),
        (SessionError(nt_errors.STATUS_PIPE_BROKEN), errors.ConnectionLost, True),
        (nmb.NetBIOSError("Error while reading from remote"), errors.ConnectionLost, True),
        (BrokenPipeError(32, "Broken pipe"), errors.ConnectionLost, True),
    ],
)
def test_call_errors_are_typed(raised: Exception, cls: type, closed: bool) -> None:
    c = FsrvpConnection("fs1", Credentials("u", "p"), ConnectOptions(call_timeout=7))
    FakeTransport.call_error = raised
    with pytest.raises(cls) as exc:
        c.get_supported_version()
    assert str(exc.value).startswith("GetSupportedVersion: ")
    assert c.closed is closed
    if cls is errors.CallTimeout:
        assert "no answer within 7 s" in str(exc.value)


def test_options_validated() -> None:
    with pytest.raises(ValueError):
        ConnectOptions(auth_level="connect")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ConnectOptions(port=0)
    with pytest.raises(ValueError):
        ConnectOptions(call_timeout=0)
