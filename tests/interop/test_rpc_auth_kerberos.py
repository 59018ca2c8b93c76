r"""Kerberos RPC authentication, with a real KDC and clients we did not write.

A private MIT KDC (tests/support/kdc.py) issues the tickets; the file server's
keys sit in a keytab that smbd (``kerberos method = dedicated keytab``) and the
agent share.  Two halves:

* in process: the server engine against MIT's own GSSAPI initiator (DCE style,
  raw auth type 16 and SPNEGO, integrity and privacy, with and without header
  signing): round trips, tampering, replay, reordering, a ticket for another
  service, fragments;
* through smbd against ``remotevss agent`` at its default policy (integrity):
  Samba's rpcclient binding ``[krb5,...]`` and ``[spnego,krb5,...]``,
  impacket's Kerberos (Windows' client layout, ccache from MIT's kinit/kvno),
  ``remotevss shadow -k``; an expired ticket, a ticket for another service and
  another user's ticket are refused and change nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from remotevss.dcerpc import pdu
from remotevss.dcerpc.connection import AuthError
from remotevss.dcerpc.krb5_gss import KRB5_OID, MS_KRB5_OID
from remotevss.fsrvp.constants import CTX_BACKUP, INTERFACE_UUID, HResult
from remotevss.samba.private import PASSWORD, PrivateAgent, PrivateSamba
from tests.support.kdc import PrivateKdc, missing_tools
from tests.support.ntlm_rpc_client import assert_replay_refused

_missing = missing_tools() + [t for t in ("smbd", "rpcclient") if shutil.which(t) is None]
try:
    import gssapi  # noqa: F401
except ImportError:  # pragma: no cover - bootstrap installs python3-gssapi
    _missing.append("python3-gssapi")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, btrfs on a loop device)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Kerberos/Samba tools: {_missing}"),
]

INTEGRITY, PRIVACY = pdu.RPC_C_AUTHN_LEVEL_PKT_INTEGRITY, pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY
NTLM_OID = "1.3.6.1.4.1.311.2.2.10"
REALM = "REMOTEVSS.TEST"
ALICE_PW = "Alice-Passw0rd-1"
#: The names the file server answers to: ``localhost`` for our client and impacket
#: (it resolves everywhere), ``fileserver`` for rpcclient, which will not use
#: Kerberos towards "localhost" (it is told the address with -I).
HOSTS = ("localhost", "fileserver")
SKEW = 5  # seconds of clock skew the acceptor allows (krb5.conf), so tickets expire fast


@dataclass
class Realm:
    kdc: PrivateKdc
    keytab: Path

    def ccache(self, user: str, password: str, *services: str, lifetime: str = "") -> Path:
        """A ccache with ``user``'s TGT and the given service tickets (as kinit + kvno)."""
        path = self.kdc.root / f"cc-{user}-{uuid.uuid4().hex[:8]}"
        self.kdc.kinit(user, password, path, lifetime)
        if services:
            self.kdc.kvno(path, *services)
        return path


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realm]:
    root = tmp_path_factory.mktemp("kdc")
    kdc = PrivateKdc(root, clockskew=SKEW)
    kdc.start()
    saved = {k: os.environ.get(k) for k in kdc.env}
    os.environ.update(kdc.env)  # this process's GSSAPI and impacket use the private realm
    try:
        kdc.add_user("root", PASSWORD)
        kdc.add_user("alice", ALICE_PW)
        keytab = root / "fileserver.keytab"
        for host in HOSTS:
            for service in ("host", "cifs"):
                kdc.add_service(f"{service}/{host}", keytab)
        kdc.kadmin("addprinc -randkey host/otherfs")  # a real service, not this server
        os.chmod(keytab, 0o600)
        yield Realm(kdc, keytab)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        kdc.stop()


# ------------------------------------------------------------------ in process


def _engine(realm: Realm, **kw: int) -> Any:
    from remotevss.dcerpc.krb5_gss import KerberosAcceptor
    from remotevss.dcerpc.rpc_auth import RpcSecurity
    from tests.unit.test_dcerpc_connection import IF_A
    from tests.unit.test_rpc_auth import EchoConnection

    def no_ntlm() -> Any:
        raise AssertionError("NTLM was not offered")

    security = RpcSecurity(no_ntlm, partial(KerberosAcceptor, str(realm.keytab)))
    return EchoConnection([IF_A], security=security, **kw)


def _client(conn: Any, ccache: Path, *, service: str = "host/localhost", **kw: Any) -> Any:
    from tests.support.krb5_rpc_client import Krb5RpcClient
    from tests.unit.test_dcerpc_connection import IF_A

    return Krb5RpcClient(conn, IF_A, ccache, f"{service}@{REALM}", **kw)


@pytest.fixture(scope="module")
def root_cc(realm: Realm) -> Path:
    return realm.ccache("root", PASSWORD)


@pytest.mark.parametrize("header_signing", [True, False])
@pytest.mark.parametrize("level", [INTEGRITY, PRIVACY])
@pytest.mark.parametrize("protocol", ["kerberos", "negotiate", "mit-spnego"])
def test_round_trip(realm: Realm, root_cc: Path, protocol: str, level: int,
                    header_signing: bool) -> None:  # fmt: skip
    conn = _engine(realm)
    c = _client(conn, root_cc, protocol=protocol, level=level, header_signing=header_signing)
    c.bind()
    sec = conn.security
    assert sec.user == f"root@{REALM}" and sec.identity == (REALM, "root")
    assert sec.auth_type == pdu.RPC_C_AUTHN_GSS_KERBEROS and sec.auth_level == level
    for n in (1, 17, 300):
        stub = bytes(range(256)) * 2
        assert c.call(3, stub[:n]) == b"\x03" + stub[:n][::-1]  # the echo, verified, unsealed
    sealed = c.request_pdu(3, b"secret stub bytes")
    assert (b"secret stub bytes" in sealed) is (level == INTEGRITY)


@pytest.mark.parametrize("first", [KRB5_OID, MS_KRB5_OID])
def test_spnego_mech_list_mic_both_ways(realm: Realm, root_cc: Path, first: str) -> None:
    """Windows lists Microsoft's Kerberos OID first; the MIC covers the list as sent."""
    other = MS_KRB5_OID if first == KRB5_OID else KRB5_OID
    conn = _engine(realm)
    c = _client(conn, root_cc, protocol="negotiate", mech_types=(first, other, NTLM_OID),
                mech_list_mic=True)  # fmt: skip
    c.bind()
    assert c.server_mic_checked and conn.security.user == f"root@{REALM}"
    assert c.call(2, b"after the MICs") == b"\x02" + b"after the MICs"[::-1]


def test_spnego_with_a_bad_mech_list_mic_is_refused(realm: Realm, root_cc: Path) -> None:
    conn = _engine(realm)
    c = _client(conn, root_cc, protocol="negotiate", mech_list_mic=True,
                mech_types=(KRB5_OID, NTLM_OID))  # fmt: skip
    c.mic_list = (KRB5_OID,)  # MIC over a list other than the one offered (a downgrade)
    with pytest.raises(AssertionError):
        c.bind()
    assert conn.closed and "mechListMIC" in (conn.close_reason or ""), conn.close_reason


def test_tampered_request_is_refused_and_closes(realm: Realm, root_cc: Path) -> None:
    from tests.support.ntlm_rpc_client import RpcFault

    for level in (INTEGRITY, PRIVACY):
        conn = _engine(realm)
        c = _client(conn, root_cc, level=level)
        c.bind()
        c.mangle = lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:]  # a stub byte
        with pytest.raises(RpcFault) as exc:
            c.call(3, b"payload of sixteen")
        assert exc.value.status == pdu.NCA_S_FAULT_SEC_PKG_ERROR
        assert conn.closed and not getattr(conn, "seen", [])  # no call ran


def test_tampered_header_is_refused_with_header_signing(realm: Realm, root_cc: Path) -> None:
    from tests.support.ntlm_rpc_client import RpcFault

    conn = _engine(realm)
    c = _client(conn, root_cc, level=PRIVACY, header_signing=True)
    c.bind()
    c.mangle = lambda b: b[:22] + bytes([b[22] ^ 1]) + b[23:]  # the opnum, in the header
    with pytest.raises(RpcFault):
        c.call(3, b"payload")
    assert conn.closed and not getattr(conn, "seen", [])


def test_mutated_requests_never_run(realm: Realm, root_cc: Path) -> None:
    """300 requests changed anywhere (header, stub, sec_trailer, token) or cut short, at
    both levels with header signing: each is refused, nothing raises, no call runs."""
    import random

    rng = random.Random(20261122)
    stub = b"fsrvp stub bytes" * 3
    for case in range(300):
        conn = _engine(realm)
        c = _client(conn, root_cc, level=(INTEGRITY, PRIVACY)[case % 2])
        c.bind()
        pristine = c.request_pdu(7, stub)
        raw = bytearray(pristine)
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] ^= rng.randint(1, 255)
        data = bytes(raw[: rng.randrange(len(raw))] if case % 7 == 0 else raw)
        if data == pristine:
            continue
        conn.receive_data(data)
        assert getattr(conn, "seen", []) == [], (case, data.hex())
        for p in conn.pdus_to_send():
            assert pdu.parse(p)[0].ptype in (pdu.PTYPE_FAULT, pdu.PTYPE_BIND_NAK)


def test_replayed_and_reordered_requests_are_refused(realm: Realm, root_cc: Path) -> None:

    conn = _engine(realm)
    c = _client(conn, root_cc)
    c.bind()
    assert_replay_refused(c)

    conn = _engine(realm)
    c = _client(conn, root_cc, level=INTEGRITY)
    c.bind()
    first, second = c.request_pdu(1, b"one"), c.request_pdu(2, b"two")
    conn.receive_data(second)
    (fault,) = conn.pdus_to_send()
    assert pdu.parse(fault)[0].ptype == pdu.PTYPE_FAULT and conn.closed
    assert first  # built first, never delivered


def test_ticket_for_another_service_is_refused(realm: Realm, root_cc: Path) -> None:
    conn = _engine(realm)
    c = _client(conn, root_cc, service="host/otherfs")  # the KDC knows it; our keytab not
    conn.receive_data(pdu.encode_bind(1, c._contexts(), auth=c._verifier(c._step())))
    (nak,) = conn.pdus_to_send()
    hdr, body = pdu.parse(nak)
    assert hdr.ptype == pdu.PTYPE_BIND_NAK and isinstance(body, pdu.BindNak)
    assert body.reason == pdu.BIND_NAK_REASON_NOT_SPECIFIED
    assert conn.closed and "Kerberos" in (conn.close_reason or ""), conn.close_reason
    assert conn.security.auth_level == pdu.RPC_C_AUTHN_LEVEL_NONE


def test_replayed_bind_is_refused(realm: Realm, root_cc: Path) -> None:
    """The acceptor's replay cache: the same AP-REQ on a second connection fails."""
    conn = _engine(realm)
    c = _client(conn, root_cc)
    c.bind()
    again = _engine(realm)
    again.receive_data(c.sent[0])  # the first connection's bind, byte for byte
    (nak,) = again.pdus_to_send()
    assert pdu.parse(nak)[0].ptype == pdu.PTYPE_BIND_NAK
    assert "replay" in (again.close_reason or "").lower(), again.close_reason


def test_framed_ap_req_is_unwrapped_for_both_kerberos_oids() -> None:
    from remotevss.dcerpc.krb5_gss import raw_ap_req

    ap_req = b"\x6e\x03\x02\x01\x05"
    for oid in ("2a864886f712010202", "2a864882f712010202"):
        inner = bytes.fromhex("0609" + oid) + b"\x01\x00" + ap_req
        assert raw_ap_req(b"\x60" + bytes([len(inner)]) + inner) == ap_req
    assert raw_ap_req(ap_req) == ap_req  # DCE style's raw AP-REQ as it is
    for bad in (b"\x60", b"\x60\x05\x06\x03\x2a\x03\x04", b"\x60\x0d" + bytes.fromhex(
            "06092a864886f712010202") + b"\x02\x00"):  # fmt: skip
        with pytest.raises(AuthError):
            raw_ap_req(bad)


def test_response_fragments_fit_the_negotiated_size(realm: Realm, root_cc: Path) -> None:
    conn = _engine(realm, max_xmit_frag=1432)
    c = _client(conn, root_cc, level=PRIVACY)
    c.bind()
    conn.receive_data(c.request_pdu(5, bytes(3000)))
    frags = conn.pdus_to_send()
    assert len(frags) >= 3 and all(len(f) <= 1432 for f in frags)
    assert {int.from_bytes(f[10:12], "little") for f in frags} == {c.sig_len}
    plain = b"".join(c.open_response(f, pdu.parse(f)[0]) for f in frags)
    assert plain == b"\x05" + bytes(3000)


def test_without_a_keytab_kerberos_is_not_offered(realm: Realm, root_cc: Path) -> None:
    from remotevss.dcerpc.rpc_auth import RpcSecurity

    sec = RpcSecurity(lambda: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(AuthError) as exc:
        sec.bind(pdu.AuthVerifier(pdu.RPC_C_AUTHN_GSS_KERBEROS, PRIVACY, 0, 1, b"\x6e"))
    assert exc.value.nak_reason == pdu.BIND_NAK_AUTH_TYPE_NOT_RECOGNIZED


def test_garbage_kerberos_tokens_are_refused(realm: Realm) -> None:
    from remotevss.dcerpc.krb5_gss import KerberosAcceptor
    from remotevss.dcerpc.rpc_auth import RpcSecurity

    for token in (b"", b"\x60", b"\x60\x82\xff\xff", b"\x6e\x03\x02\x01", os.urandom(200),
                  b"\x60\x0b\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02"):  # fmt: skip
        sec = RpcSecurity(lambda: None, partial(KerberosAcceptor, str(realm.keytab)))  # type: ignore[arg-type, return-value]
        with pytest.raises(AuthError):
            sec.bind(pdu.AuthVerifier(pdu.RPC_C_AUTHN_GSS_KERBEROS, PRIVACY, 0, 1, token))
        assert sec.auth_level == pdu.RPC_C_AUTHN_LEVEL_NONE and sec.user == ""


def test_kerberos_on_without_a_keytab_stops_the_start(tmp_path: Path) -> None:
    from remotevss.agent.config import AgentConfig, ConfigError, RpcAuthConfig
    from remotevss.agent.rpc_security import SambaAuthNames, kerberos_factory

    missing = str(tmp_path / "none.keytab")
    on = AgentConfig(rpc_auth=RpcAuthConfig(kerberos="on", keytab=missing))
    with pytest.raises(ConfigError, match="not readable"):
        kerberos_factory(on, SambaAuthNames())
    auto = AgentConfig(rpc_auth=RpcAuthConfig(kerberos="auto", keytab=missing))
    assert kerberos_factory(auto, SambaAuthNames()) is None
    empty = tmp_path / "empty.keytab"
    empty.write_bytes(b"\x05\x02")  # a keytab file with no keys
    with pytest.raises(ConfigError):
        kerberos_factory(AgentConfig(rpc_auth=RpcAuthConfig(kerberos="on", keytab=str(empty))),
                         SambaAuthNames())  # fmt: skip


# ------------------------------------------- our client's binding (in process)


class EngineTransport:
    """impacket's transport shape (send/recv/disconnect) in front of the engine."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.out: list[bytes] = []
        self.mangle = lambda b: b  # applied to each answer the client reads

    def send(self, data: bytes, forceWriteAndx: int = 0) -> None:  # noqa: N803 - impacket's
        self.conn.receive_data(data)
        self.out += self.conn.pdus_to_send()

    def recv(self, forceRecv: int = 0, count: int = 0) -> bytes:  # noqa: N803 - impacket's
        return self.mangle(self.out.pop(0))

    def disconnect(self) -> None:
        pass


@pytest.mark.parametrize("level", [INTEGRITY, PRIVACY])
def test_client_binding_round_trips_fragments(realm: Realm, root_cc: Path, level: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """remotevss.client.gss_rpc against the engine: header signing negotiated, requests
    and answers larger than a fragment split and joined, every one verified."""
    from remotevss.client.gss_rpc import GssKerberosBinding
    from tests.unit.test_dcerpc_connection import IF_A

    monkeypatch.setenv("KRB5CCNAME", f"FILE:{root_cc}")
    conn = _engine(realm, max_xmit_frag=1432, max_recv_frag=1432)
    b = GssKerberosBinding(EngineTransport(conn), "localhost", level)
    b.bind(IF_A.uuid, IF_A.version)
    assert b.header_signing and b.ack_auth_level == level
    assert conn.security.user == f"root@{REALM}"
    for size in (0, 5, 1000, 5000):
        stub = bytes(i % 251 for i in range(size))
        b.call(4, stub)
        assert b.recv() == b"\x04" + stub[::-1]
    assert len([r for r in conn.seen if r.opnum == 4]) == 4


def test_client_binding_refuses_a_forged_answer(realm: Realm, root_cc: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from impacket.dcerpc.v5.rpcrt import DCERPCException

    from remotevss.client.gss_rpc import GssKerberosBinding
    from tests.unit.test_dcerpc_connection import IF_A

    monkeypatch.setenv("KRB5CCNAME", f"FILE:{root_cc}")
    t = EngineTransport(_engine(realm))
    b = GssKerberosBinding(t, "localhost", PRIVACY)
    b.bind(IF_A.uuid, IF_A.version)
    t.mangle = lambda a: a[:30] + bytes([a[30] ^ 1]) + a[31:]
    with pytest.raises(DCERPCException, match="does not verify"):
        b.call(1, b"sealed both ways")


def test_client_binding_without_a_ticket_says_so(realm: Realm, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from remotevss.client.gss_rpc import GssKerberosBinding, KerberosBindError
    from tests.unit.test_dcerpc_connection import IF_A

    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'empty-cc'}")
    conn = _engine(realm)
    with pytest.raises(KerberosBindError, match="cannot get a ticket for host/localhost"):
        GssKerberosBinding(EngineTransport(conn), "localhost", PRIVACY).bind(
            IF_A.uuid, IF_A.version
        )
    assert conn.pdus_to_send() == []  # nothing was sent


def test_client_binding_with_a_password_and_no_ccache(realm: Realm, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """-k with a password: GSSAPI gets the TGT from the KDC in memory, as kinit would;
    a wrong password is a clear Kerberos error before anything is sent."""
    from remotevss.client.gss_rpc import GssKerberosBinding, KerberosBindError
    from tests.unit.test_dcerpc_connection import IF_A

    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-such-cc'}")
    conn = _engine(realm)
    b = GssKerberosBinding(EngineTransport(conn), "localhost", PRIVACY, user="root",
                           password=PASSWORD, realm=REALM.lower())  # fmt: skip
    b.bind(IF_A.uuid, IF_A.version)
    assert conn.security.user == f"root@{REALM}"
    conn = _engine(realm)
    with pytest.raises(KerberosBindError, match="Decrypt integrity check failed"):  # MIT's words
        GssKerberosBinding(EngineTransport(conn), "localhost", PRIVACY, user="root",
                           password="wrong", realm=REALM).bind(IF_A.uuid, IF_A.version)  # fmt: skip
    assert conn.pdus_to_send() == []


# --------------------------------------------------------------- through smbd

SHARES = ("data0", "data1")


@dataclass
class Stack:
    realm: Realm
    samba: PrivateSamba
    agent: PrivateAgent

    def log_since(self, offset: int) -> str:
        return self.agent.log.read_bytes()[offset:].decode(errors="replace")

    def clean(self) -> None:
        from tests.support.samba_agent import journal_mappings, leftovers

        assert journal_mappings(self.agent) == [] and leftovers(self.samba) == []

    def rpcclient(self, flags: str, command: str, ccache: Path) -> tuple[int, str]:
        r = subprocess.run(
            ["rpcclient", "-s", str(self.samba.conf), "-p", str(self.samba.port),
             "-I", "127.0.0.1", "--use-kerberos=required", "-U", "root",
             f"ncacn_np:fileserver[{flags}]", "-c", command],
            capture_output=True, text=True, check=False, timeout=120,
            env={**os.environ, **self.realm.kdc.env, "KRB5CCNAME": f"FILE:{ccache}"},
        )  # fmt: skip
        return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def stack(realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from remotevss.loopfs import loop_filesystem
    from tests.support.samba_agent import agent_behind_samba, subvolume_shares

    work = tmp_path_factory.mktemp("krbstack")
    samba_options = {
        "netbios_name": "FILESERVER",
        "env": realm.kdc.env,
        "extra_global": {
            "realm": REALM,
            "kerberos method": "dedicated keytab",
            "dedicated keytab file": f"FILE:{realm.keytab}",
        },
    }
    with loop_filesystem("btrfs", 512, work) as mnt:
        shares = subvolume_shares(mnt, SHARES)
        with agent_behind_samba(work, shares, samba_options=samba_options,
                                min_level="integrity", rpc_auth={"kerberos": "on"},
                                trace=True) as (s, a):  # fmt: skip
            yield Stack(realm, s, a)


def _maps_gssapi(pid: int) -> bool:
    return "libgssapi_krb5" in Path(f"/proc/{pid}/maps").read_text()


def test_gssapi_is_loaded_with_the_first_kerberos_bind(stack: Stack, root_cc: Path) -> None:
    """The start-up keytab check runs in a child: an agent that has served no
    Kerberos bind has no GSSAPI mapped (~8 MB); the first Kerberos bind loads it.
    First in this module: the stack is fresh."""
    assert stack.agent.proc is not None
    pid = stack.agent.proc.pid
    log = stack.log_since(0)
    assert "Kerberos RPC authentication on" in log, log[-2000:]
    assert not _maps_gssapi(pid)
    rc, out = stack.rpcclient("krb5,seal", "fss_get_sup_version", root_cc)
    assert rc == 0, out
    assert _maps_gssapi(pid)


@pytest.mark.parametrize("flags", ["krb5,seal", "krb5,sign", "spnego,krb5,seal",
                                   "spnego,krb5,sign"])  # fmt: skip
def test_rpcclient_kerberos_runs_the_sequence(stack: Stack, root_cc: Path, flags: str) -> None:
    offset = stack.agent.log.stat().st_size
    rc, out = stack.rpcclient(flags, "fss_create_expose backup ro data0 data1", root_cc)
    assert rc == 0, out
    exposed = re.findall(r"^([0-9a-f-]{36})\(([0-9a-f-]{36})\): share (\S+)@", out, re.M)
    assert {share for _, _, share in exposed} == set(SHARES), out
    for set_id, copy_id, share in exposed:
        rc, out = stack.rpcclient(flags, f"fss_delete {share} {set_id} {copy_id}", root_cc)
        assert rc == 0, out
    level = PRIVACY if "seal" in flags else INTEGRITY
    log = stack.log_since(offset)
    assert f"RPC auth from 127.0.0.1: root@{REALM} at level {level}" in log, log[-2000:]
    assert "refused" not in log
    assert "8ae3137102f43671" in log.lower()  # Samba's verification trailer passed the check
    stack.clean()


class KrbFsrvp:
    """impacket: an SMB session by NTLM (or Kerberos), the FSRVP bind by Kerberos from a
    ccache (SPNEGO, DCE style: what Windows sends), addressed to ``name``."""

    def __init__(self, port: int, ccache: Path, level: int, *, name: str = "localhost",
                 smb_kerberos: bool = False, rpc_user: str = "") -> None:  # fmt: skip
        from impacket.dcerpc.v5 import rpcrt, transport
        from impacket.smbconnection import SMBConnection
        from impacket.uuid import uuidtup_to_bin

        os.environ["KRB5CCNAME"] = str(ccache)
        try:
            self.smb = SMBConnection("localhost", "127.0.0.1", sess_port=port, timeout=60)
            if smb_kerberos:
                self.smb.kerberosLogin("root", "", REALM)
            else:
                self.smb.login("root", PASSWORD)
            t = transport.SMBTransport(name, port, filename=r"\FssagentRpc", smb_connection=self.smb)
            t.set_kerberos(True)
            self.dce = t.get_dce_rpc()
            if rpc_user:  # the ticket's client, when not the SMB session's user
                self.dce.set_credentials(rpc_user, "", REALM)
            self.dce.set_auth_type(rpcrt.RPC_C_AUTHN_GSS_NEGOTIATE)
            self.dce.set_auth_level(level)
            self.dce.connect()
            self.dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "1.0")))
        finally:
            os.environ.pop("KRB5CCNAME", None)

    def calls(self) -> Any:
        from remotevss.client.rpc import FsrvpCalls

        c = FsrvpCalls()
        c._dce = self.dce
        return c

    def close(self) -> None:
        self.dce.disconnect()
        self.smb.close()


@pytest.mark.parametrize("level", [INTEGRITY, PRIVACY])
def test_impacket_kerberos_runs_the_whole_sequence(stack: Stack, realm: Realm,
                                                   level: int) -> None:  # fmt: skip
    from tests.hardening.harness import delete_all, sequence

    cc = realm.ccache("root", PASSWORD, "cifs/localhost", "host/localhost")
    c = KrbFsrvp(stack.samba.port, cc, level, smb_kerberos=True)
    try:
        calls = c.calls()
        assert calls.get_supported_version().return_value == 0
        sid, copies = sequence(calls, list(SHARES), CTX_BACKUP, host="localhost")
        assert len(copies) == 2
        delete_all(calls, sid, copies, host="localhost")
    finally:
        c.close()
    stack.clean()


def test_remotevss_shadow_with_kerberos(stack: Stack, realm: Realm, tmp_path: Path) -> None:
    """Our own client (-k), at its default level (privacy) and at integrity."""
    cc = realm.ccache("root", PASSWORD, "cifs/localhost", "host/localhost")
    env = {**os.environ, **realm.kdc.env, "KRB5CCNAME": str(cc),
           "REMOTEVSS_CLIENT_STATE": str(tmp_path / "state")}  # fmt: skip
    env.pop("REMOTEVSS_PASSWORD", None)
    offset = stack.agent.log.stat().st_size
    base = [sys.executable, "-m", "remotevss.cli", "shadow", "-k", "-p", str(stack.samba.port),
            "--no-follow-owner"]  # the owner name FILESERVER is for rpcclient only
    for level in ("privacy", "integrity"):
        r = subprocess.run([*base, "--auth-level", level, "--json", "create",
                            r"\\localhost\data0"], capture_output=True, text=True, env=env,
                           timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr + stack.log_since(offset)[-3000:]
        set_id = re.search(r'"set_id": "([0-9a-f-]{36})"', r.stdout)
        assert set_id, r.stdout
        r = subprocess.run([*base, "--auth-level", level, "delete", set_id.group(1)],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr + stack.log_since(offset)[-3000:]
    log = stack.log_since(offset)
    for level in (PRIVACY, INTEGRITY):
        assert f"RPC auth from 127.0.0.1: root@{REALM} at level {level}" in log, log[-2000:]
    stack.clean()


@pytest.fixture(scope="module")
def anchor(realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSamba]:
    """Samba's own FSRVP server (rpcd_fsrvp) taking Kerberos the same way."""
    from remotevss.loopfs import loop_filesystem
    from tests.support.samba_agent import subvolume_shares

    work = tmp_path_factory.mktemp("krbanchor")
    with loop_filesystem("btrfs", 512, work) as mnt:
        samba = PrivateSamba(
            work / "samba", subvolume_shares(mnt, ["data0"]), samba_fsrvp=True,
            netbios_name="FILESERVER", env=realm.kdc.env,
            extra_global={"realm": REALM, "kerberos method": "dedicated keytab",
                          "dedicated keytab file": f"FILE:{realm.keytab}"},
        )  # fmt: skip
        samba.start()
        try:
            deadline = time.monotonic() + 20
            while not (samba.pipe_dir / "fssagentrpc").exists():
                assert time.monotonic() < deadline, "rpcd_fsrvp did not come up"
                time.sleep(0.05)
            yield samba
        finally:
            samba.stop()


def test_remotevss_shadow_kerberos_against_samba(anchor: PrivateSamba, realm: Realm,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """Our client drives Samba's FSRVP server with Kerberos at privacy: a shadow copy
    made, its share read back through smbd, deleted."""
    cc = realm.ccache("root", PASSWORD, "cifs/localhost")  # the SMB session's ticket
    env = {**os.environ, **realm.kdc.env, "KRB5CCNAME": str(cc),
           "REMOTEVSS_CLIENT_STATE": str(tmp_path / "state")}  # fmt: skip
    env.pop("REMOTEVSS_PASSWORD", None)
    base = [sys.executable, "-m", "remotevss.cli", "shadow", "-k", "-p", str(anchor.port),
            "--no-follow-owner"]  # fmt: skip
    r = subprocess.run([*base, "--json", "create", r"\\localhost\data0"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (made,) = json.loads(r.stdout)["sets"]
    share = made["copies"][0]["snapshot_share"].rsplit("\\", 1)[1]
    got = anchor.smbclient(share, "get file.txt /dev/stdout")
    assert "data0 content" in got.stdout, got.stdout + got.stderr
    r = subprocess.run([*base, "delete", made["set_id"]], capture_output=True, text=True,
                       env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_remotevss_shadow_kerberos_ccache_spellings(anchor: PrivateSamba, realm: Realm,
                                                    tmp_path: Path) -> None:  # fmt: skip
    """KRB5CCNAME=FILE:/path (what kinit and pam set, and what the docs name) failed:
    "Kerberos logon failed: [Errno 2] No such file or directory: 'FILE:/...'" (the SMB
    logon opened the name as a path).  -k with a password but no realm said "Empty
    Domain not allowed in Kerberos" after a CRITICAL log line about a missing ccache."""
    cc = realm.ccache("root", PASSWORD, "cifs/localhost")
    base = [sys.executable, "-m", "remotevss.cli", "shadow", "-k", "-p", str(anchor.port),
            "--no-follow-owner"]  # fmt: skip
    for name in (str(cc), f"FILE:{cc}"):
        env = {**os.environ, **realm.kdc.env, "KRB5CCNAME": name,
               "REMOTEVSS_CLIENT_STATE": str(tmp_path / "state")}  # fmt: skip
        env.pop("REMOTEVSS_PASSWORD", None)
        r = subprocess.run([*base, "query", r"\\localhost\data0"],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        assert r.returncode == 0, (name, r.stderr)
        assert r"\\localhost\data0: supported" in r.stdout, r.stdout
    env = {**os.environ, **realm.kdc.env, "REMOTEVSS_CLIENT_STATE": str(tmp_path / "state")}
    env.pop("KRB5CCNAME", None)
    r = subprocess.run([*base, "-U", f"root%{PASSWORD}", "query", r"\\localhost\data0"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "CRITICAL" not in r.stderr, r.stderr
    assert "Kerberos needs the realm" in r.stderr and "-W" in r.stderr, r.stderr


def _refused_bind(stack: Stack, cc: Path, **kw: Any) -> str:
    from impacket.dcerpc.v5.rpcrt import DCERPCException

    offset = stack.agent.log.stat().st_size
    with pytest.raises(DCERPCException, match="reason_not_specified"):  # bind_nak 0
        KrbFsrvp(stack.samba.port, cc, PRIVACY, **kw).close()
    log = stack.log_since(offset)
    assert "bind refused" in log, log[-2000:]
    assert "RPC auth from" not in log  # no call ran authenticated
    return log


def test_expired_ticket_is_refused(stack: Stack, realm: Realm) -> None:
    cc = realm.ccache("root", PASSWORD, "host/localhost", lifetime="2s")
    time.sleep(2 + SKEW + 1.5)  # past the end time and the clock skew the acceptor allows
    log = _refused_bind(stack, cc)
    assert "bind refused: Kerberos: Ticket expired" in log, log[-2000:]
    stack.clean()


def test_ticket_for_another_service_is_refused_through_smbd(stack: Stack, realm: Realm) -> None:
    cc = realm.ccache("root", PASSWORD, "host/otherfs")
    log = _refused_bind(stack, cc, name="otherfs")
    assert "host/otherfs@REMOTEVSS.TEST not found in keytab" in log, log[-2000:]
    stack.clean()


def test_another_users_ticket_gets_access_denied(stack: Stack, realm: Realm) -> None:
    """The SMB session is root's (NTLM), the RPC ticket alice's: E_ACCESSDENIED."""
    cc = realm.ccache("alice", ALICE_PW, "host/localhost")
    offset = stack.agent.log.stat().st_size
    c = KrbFsrvp(stack.samba.port, cc, PRIVACY, rpc_user="alice")
    try:
        calls = c.calls()
        assert calls.set_context(CTX_BACKUP).return_value == HResult.E_ACCESSDENIED
        assert calls.start(uuid.uuid4()).return_value == HResult.E_ACCESSDENIED
    finally:
        c.close()
    assert f"RPC user alice@{REALM} is not the SMB user FILESERVER\\root" in stack.log_since(
        offset
    )
    stack.clean()


def test_hostname_resolves_for_the_record() -> None:
    """rpcclient is pointed at 127.0.0.1 with -I; the name only picks the SPN."""
    assert socket.gethostbyname("localhost").startswith("127.")
