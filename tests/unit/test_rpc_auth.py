"""DCE/RPC NTLM and SPNEGO authentication in the server engine, against pyspnego's initiator.

The client side (tests/support/ntlm_rpc_client.py) computes every signature
and seal with pyspnego, so these round trips check our layout against an
independent implementation; interop with Samba's clients is in
tests/interop/test_rpc_auth_samba.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from remotevss.agent.authz import Caller, Policy
from remotevss.dcerpc import pdu
from remotevss.dcerpc.connection import Interface, Request, ServerConnection
from remotevss.dcerpc.rpc_auth import RpcSecurity
from tests.support.ntlm_local import DOMAIN, PASSWORD, USER, LocalNtlmAcceptor, write_user_file
from tests.support.ntlm_rpc_client import RpcAuthClient, RpcFault, assert_replay_refused
from tests.unit.test_dcerpc_connection import IF_A, echo

INTEGRITY = pdu.RPC_C_AUTHN_LEVEL_PKT_INTEGRITY
PRIVACY = pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY
CASES = [(p, lvl) for p in ("ntlm", "negotiate") for lvl in (INTEGRITY, PRIVACY)]


class EchoConnection(ServerConnection):
    """Answers every complete call at once with the echo of test_dcerpc_connection."""

    seen: list[Request]

    def receive_data(self, data: bytes) -> list[Request]:
        requests = super().receive_data(data)
        self.seen = getattr(self, "seen", []) + requests
        echo(self, requests)
        return []


@pytest.fixture(scope="module")
def user_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_user_file(tmp_path_factory.mktemp("ntlm") / "users")


def connection(user_file: Path, **kw: int) -> EchoConnection:
    return EchoConnection([IF_A], security=RpcSecurity(lambda: LocalNtlmAcceptor(user_file)), **kw)


def client(conn: ServerConnection, protocol: str = "ntlm", level: int = PRIVACY,
           password: str = PASSWORD) -> RpcAuthClient:  # fmt: skip
    return RpcAuthClient(conn, IF_A, f"{DOMAIN}\\{USER}", password, protocol=protocol, level=level)


@pytest.mark.parametrize(("protocol", "level"), CASES)
def test_round_trip_signed_or_sealed(user_file: Path, protocol: str, level: int) -> None:
    conn = connection(user_file, max_xmit_frag=1432)
    c = client(conn, protocol, level)
    c.bind()
    assert conn.security.identity == (DOMAIN, USER)
    assert conn.security.auth_level == level
    for size in (0, 1, 15, 16, 17, 1000, 4000):  # 4000: four signed response fragments
        stub = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        assert c.call(3, stub) == b"\x03" + stub[::-1]
    assert all(r.auth_level == level for r in conn.seen)
    assert not conn.closed


@pytest.mark.parametrize("level", [INTEGRITY, PRIVACY])
def test_privacy_hides_the_stub_and_integrity_does_not(user_file: Path, level: int) -> None:
    conn = connection(user_file)
    c = client(conn, level=level)
    c.bind()
    secret = b"confidential-share-name" * 4
    c.call(3, secret)
    on_wire = c.sent[-1]
    assert (secret in on_wire) == (level == INTEGRITY)


@pytest.mark.parametrize(("protocol", "level"), CASES)
def test_tampered_request_is_refused_and_closes(user_file: Path, protocol: str,
                                                level: int) -> None:  # fmt: skip
    conn = connection(user_file)
    c = client(conn, protocol, level)
    c.bind()
    c.mangle = lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:]  # a stub byte
    with pytest.raises(RpcFault) as exc:
        c.call(3, b"payload of sixteen")
    assert exc.value.status == pdu.NCA_S_FAULT_SEC_PKG_ERROR
    assert conn.closed and "signature" in (conn.close_reason or "")


def test_replayed_request_is_refused(user_file: Path) -> None:
    c = client(connection(user_file))
    c.bind()
    assert_replay_refused(c)


def test_reordered_requests_are_refused(user_file: Path) -> None:
    conn = connection(user_file)
    c = client(conn, level=INTEGRITY)
    c.bind()
    first, second = c.request_pdu(1, b"one"), c.request_pdu(2, b"two")
    conn.receive_data(second)
    (fault,) = conn.pdus_to_send()
    assert pdu.parse(fault)[0].ptype == pdu.PTYPE_FAULT and conn.closed
    assert first  # built with seq 0, never delivered


def test_unsigned_request_after_authentication_is_refused(user_file: Path) -> None:
    conn = connection(user_file)
    c = client(conn)
    c.bind()
    conn.receive_data(pdu.encode_request(9, 0, 1, b"plain"))
    (fault,) = conn.pdus_to_send()
    hdr, body = pdu.parse(fault)
    assert hdr.ptype == pdu.PTYPE_FAULT and isinstance(body, pdu.FaultPdu)
    assert body.status == pdu.NCA_S_FAULT_ACCESS_DENIED and conn.closed


def test_wrong_password_fails_at_auth3_and_no_call_runs(user_file: Path) -> None:
    before = LocalNtlmAcceptor.closed
    conn = connection(user_file)
    c = client(conn, password="wrong")
    c.bind()  # auth3 has no reply: the failure shows on the next request
    assert conn.security.identity is None and conn.security.auth_level == 1
    assert LocalNtlmAcceptor.closed == before + 1  # the helper was given back
    with pytest.raises(RpcFault) as exc:
        c.call(1, b"x")
    assert exc.value.status == pdu.NCA_S_FAULT_ACCESS_DENIED
    assert conn.closed and "logon failed" in (conn.close_reason or "")
    assert getattr(conn, "seen", []) == []


def test_request_before_auth3_is_refused(user_file: Path) -> None:
    conn = connection(user_file)
    c = client(conn)
    token = c.sp.step()
    assert token is not None
    conn.receive_data(pdu.encode_bind(1, c._contexts(), auth=c._verifier(token)))
    conn.pdus_to_send()
    conn.receive_data(pdu.encode_request(2, 0, 1, b"too early"))
    (fault,) = conn.pdus_to_send()
    assert pdu.parse(fault)[0].ptype == pdu.PTYPE_FAULT and conn.closed


@pytest.mark.parametrize(
    ("auth_type", "level", "reason"),
    [
        (pdu.RPC_C_AUTHN_GSS_KERBEROS, PRIVACY, pdu.BIND_NAK_AUTH_TYPE_NOT_RECOGNIZED),
        (pdu.RPC_C_AUTHN_GSS_SCHANNEL, PRIVACY, pdu.BIND_NAK_AUTH_TYPE_NOT_RECOGNIZED),
        (pdu.RPC_C_AUTHN_WINNT, pdu.RPC_C_AUTHN_LEVEL_CONNECT, pdu.BIND_NAK_REASON_NOT_SPECIFIED),
        (pdu.RPC_C_AUTHN_WINNT, pdu.RPC_C_AUTHN_LEVEL_NONE, pdu.BIND_NAK_REASON_NOT_SPECIFIED),
    ],
)
def test_unsupported_types_and_levels_get_bind_nak(user_file: Path, auth_type: int,
                                                   level: int, reason: int) -> None:  # fmt: skip
    conn = connection(user_file)
    ctx = [pdu.ContextElem(0, pdu.SyntaxId(IF_A.uuid, 1, 0), (pdu.NDR20,))]
    auth = pdu.AuthVerifier(auth_type, level, 0, 1, b"NTLMSSP\0\1\0\0\0" + bytes(20))
    conn.receive_data(pdu.encode_bind(1, ctx, auth=auth))
    (nak,) = conn.pdus_to_send()
    hdr, body = pdu.parse(nak)
    assert hdr.ptype == pdu.PTYPE_BIND_NAK and isinstance(body, pdu.BindNak)
    assert body.reason == reason and conn.closed


def test_new_verifier_on_an_established_association_is_refused(user_file: Path) -> None:
    conn = connection(user_file)
    c = client(conn)
    c.bind()
    ctx = [pdu.ContextElem(1, pdu.SyntaxId(IF_A.uuid, 1, 0), (pdu.NDR20,))]
    conn.receive_data(pdu.encode_alter_context(9, ctx, auth=c._verifier(b"NTLMSSP\0\1\0\0\0")))
    (fault,) = conn.pdus_to_send()
    assert pdu.parse(fault)[0].ptype == pdu.PTYPE_FAULT and conn.closed


def test_plain_alter_context_after_authentication_keeps_signing(user_file: Path) -> None:
    conn = connection(user_file)
    c = client(conn, level=INTEGRITY)
    c.bind()
    ctx = [pdu.ContextElem(1, pdu.SyntaxId(IF_A.uuid, 1, 0), (pdu.NDR20,))]
    conn.receive_data(pdu.encode_alter_context(c.call_id, ctx))
    c.call_id += 1
    (resp,) = conn.pdus_to_send()
    assert pdu.parse(resp)[0].ptype == pdu.PTYPE_ALTER_CONTEXT_RESP
    assert c.call(2, b"still signed") == b"\x02" + b"still signed"[::-1]


def test_anonymous_bind_runs_at_level_none_and_refuses_verifiers(user_file: Path) -> None:
    conn = connection(user_file)
    ctx = [pdu.ContextElem(0, pdu.SyntaxId(IF_A.uuid, 1, 0), (pdu.NDR20,))]
    conn.receive_data(pdu.encode_bind(1, ctx))
    conn.pdus_to_send()
    conn.receive_data(pdu.encode_request(2, 0, 4, b"abc"))
    assert conn.seen[0].auth_level == pdu.RPC_C_AUTHN_LEVEL_NONE
    assert not conn.security.pending and conn.security.overhead == 0
    bogus = pdu.AuthVerifier(pdu.RPC_C_AUTHN_WINNT, INTEGRITY, 0, 1, bytes(16))
    conn.receive_data(pdu.encode_request(3, 0, 4, b"abc", auth=bogus))
    assert conn.closed


def test_spnego_without_ntlm_is_refused(user_file: Path) -> None:
    from spnego._spnego import NegTokenInit

    conn = connection(user_file)
    token = NegTokenInit(mech_types=["1.2.840.113554.1.2.2"], mech_token=b"krb").pack()
    ctx = [pdu.ContextElem(0, pdu.SyntaxId(IF_A.uuid, 1, 0), (pdu.NDR20,))]
    verifier = pdu.AuthVerifier(pdu.RPC_C_AUTHN_GSS_NEGOTIATE, PRIVACY, 0, 1, token)
    conn.receive_data(pdu.encode_bind(1, ctx, auth=verifier))
    (nak,) = conn.pdus_to_send()
    hdr, body = pdu.parse(nak)
    assert hdr.ptype == pdu.PTYPE_BIND_NAK and conn.closed
    assert isinstance(body, pdu.BindNak) and body.reason == pdu.BIND_NAK_REASON_NOT_SPECIFIED
    assert "no mechanism we accept (NTLMSSP)" in (conn.close_reason or "")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    auth_type=st.sampled_from([9, 10]),
    level=st.sampled_from([5, 6]),
    token=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=200).map(lambda b: b"NTLMSSP\0" + b),
        st.binary(max_size=200).map(lambda b: b"\x60" + bytes([len(b) & 0x7F]) + b),
    ),
    third=st.binary(max_size=200),
)
def test_garbage_tokens_never_raise(user_file: Path, auth_type: int, level: int, token: bytes,
                                    third: bytes) -> None:  # fmt: skip
    conn = connection(user_file)
    ctx = [pdu.ContextElem(0, pdu.SyntaxId(IF_A.uuid, 1, 0), (pdu.NDR20,))]
    conn.receive_data(pdu.encode_bind(1, ctx, auth=pdu.AuthVerifier(auth_type, level, 0, 1, token)))
    conn.receive_data(pdu.encode_auth3(2, pdu.AuthVerifier(auth_type, level, 0, 1, third)))
    conn.receive_data(pdu.encode_request(3, 0, 1, b"x" * 16))
    assert conn.security.auth_level == pdu.RPC_C_AUTHN_LEVEL_NONE
    assert getattr(conn, "seen", []) == []  # nothing ran unauthenticated


@pytest.mark.parametrize("offered", [0, pdu.PFC_SUPPORT_HEADER_SIGN])
def test_header_signing_is_echoed_when_offered(user_file: Path, offered: int) -> None:
    conn = connection(user_file)
    c = client(conn)
    token = c.sp.step()
    assert token is not None
    bind = bytearray(pdu.encode_bind(1, c._contexts(), auth=c._verifier(token)))
    bind[3] |= offered
    conn.receive_data(bytes(bind))
    (ack,) = conn.pdus_to_send()
    assert pdu.parse(ack)[0].pfc_flags & pdu.PFC_SUPPORT_HEADER_SIGN == offered


def test_response_fragments_fit_the_negotiated_size(user_file: Path) -> None:
    conn = connection(user_file, max_xmit_frag=1432)
    c = client(conn, level=PRIVACY)
    c.bind()
    stub = bytes(3000)
    raw = c.request_pdu(5, stub)
    conn.receive_data(raw)
    frags = conn.pdus_to_send()
    assert len(frags) == 3 and all(len(f) <= 1432 for f in frags)
    assert all(struct.unpack_from("<H", f, 10)[0] == 16 for f in frags)  # auth_length


# ------------------------------------------------------------------ policy

SMB_ROOT = Caller(uid=0, name="ANCHORFS\\root", transport="samba")


@pytest.mark.parametrize(
    ("caller", "policy", "allowed"),
    [
        (SMB_ROOT, Policy(min_auth_level=INTEGRITY), False),
        (Caller(uid=0, name="u", transport="unix"), Policy(min_auth_level=PRIVACY), True),
        (SMB_ROOT, Policy(min_auth_level=1), True),
        (Caller(uid=0, name="ANCHORFS\\root", transport="samba", auth_level=INTEGRITY,
                rpc_user="anchorfs\\ROOT"), Policy(min_auth_level=INTEGRITY), True),
        (Caller(uid=0, name="ANCHORFS\\root", transport="samba", auth_level=INTEGRITY),
         Policy(min_auth_level=PRIVACY), False),
        (Caller(uid=0, name="ANCHORFS\\root", transport="samba", auth_level=PRIVACY,
                rpc_user="ANCHORFS\\other"), Policy(min_auth_level=INTEGRITY), False),
        (Caller(uid=0, name="ANCHORFS\\root", transport="samba", auth_level=PRIVACY,
                rpc_user="ANCHORFS\\other"),
         Policy(min_auth_level=INTEGRITY, allow_identity_mismatch=True), True),
        (Caller(uid=1000, name="ANCHORFS\\joe", transport="samba", auth_level=PRIVACY,
                rpc_user="ANCHORFS\\joe"), Policy(min_auth_level=INTEGRITY), False),
        # Kerberos: user@REALM is the SMB user of that account name in this server's realm
        (Caller(uid=0, name="REMOTEVSS\\root", transport="samba", auth_level=PRIVACY,
                rpc_user="root@REMOTEVSS.TEST"),
         Policy(min_auth_level=INTEGRITY, kerberos_realm="REMOTEVSS.TEST"), True),
        (Caller(uid=0, name="REMOTEVSS\\root", transport="samba", auth_level=PRIVACY,
                rpc_user="ROOT@remotevss.test"),
         Policy(min_auth_level=INTEGRITY, kerberos_realm="REMOTEVSS.TEST"), True),
        (Caller(uid=0, name="REMOTEVSS\\root", transport="samba", auth_level=PRIVACY,
                rpc_user="root@OTHER.TEST"),
         Policy(min_auth_level=INTEGRITY, kerberos_realm="REMOTEVSS.TEST"), False),
        (Caller(uid=0, name="REMOTEVSS\\root", transport="samba", auth_level=PRIVACY,
                rpc_user="alice@REMOTEVSS.TEST"),
         Policy(min_auth_level=INTEGRITY, kerberos_realm="REMOTEVSS.TEST"), False),
        (Caller(uid=0, name="REMOTEVSS\\root", transport="samba", auth_level=PRIVACY,
                rpc_user="root@REMOTEVSS.TEST"), Policy(min_auth_level=INTEGRITY), False),
    ],
)  # fmt: skip
def test_policy_levels_and_identity(caller: Caller, policy: Policy, allowed: bool) -> None:
    assert policy.permits(caller) is allowed


def test_interface_is_unchanged() -> None:
    assert isinstance(IF_A, Interface)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    level=st.sampled_from([INTEGRITY, PRIVACY]),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 200)),
)
def test_mutated_authenticated_requests_never_run(user_file: Path, level: int,
                                                  flips: list[tuple[int, int]],
                                                  cut: int | None) -> None:  # fmt: skip
    """Any change to a signed or sealed request (header, stub, trailer or signature) is
    refused; the engine never raises and never hands out a call with other contents."""
    conn = connection(user_file)
    c = client(conn, level=level)
    c.bind()
    stub = b"fsrvp stub bytes" * 3
    pristine = c.request_pdu(7, stub)
    raw = bytearray(pristine)
    for pos, x in flips:
        raw[pos % len(raw)] ^= x
    data = bytes(raw[:cut] if cut is not None else raw)
    assume(data != pristine)
    conn.receive_data(data)
    assert getattr(conn, "seen", []) == []
    out = conn.pdus_to_send()
    assert all(pdu.parse(p)[0].ptype in (pdu.PTYPE_FAULT, pdu.PTYPE_BIND_NAK) for p in out)


def test_spnego_offering_kerberos_first_is_steered_to_ntlm(user_file: Path) -> None:
    """A client offering [Kerberos, NTLMSSP] with an optimistic Kerberos token: the
    server names NTLMSSP as the mechanism, the client starts NTLM in the next leg, the
    mechListMIC covers the list as offered, and calls are then sealed."""
    import spnego
    from spnego._spnego import (
        NegState,
        NegTokenInit,
        NegTokenResp,
        pack_mech_type_list,
        unpack_token,
    )

    krb5, ntlm_oid = "1.2.840.113554.1.2.2", "1.3.6.1.4.1.311.2.2.10"
    conn = connection(user_file)
    c = client(conn)  # for its PDU helpers; the SPNEGO tokens are built here
    c.auth_type = pdu.RPC_C_AUTHN_GSS_NEGOTIATE
    ntlm = spnego.client(f"{DOMAIN}\\{USER}", PASSWORD, protocol="ntlm")
    init = NegTokenInit(mech_types=[krb5, ntlm_oid], mech_token=b"\x60\x03\x06\x01\x00").pack()
    conn.receive_data(pdu.encode_bind(1, c._contexts(), auth=c._verifier(init)))
    (ack,) = conn.pdus_to_send()
    body = pdu.parse(ack)[1]
    assert isinstance(body, pdu.BindAck) and body.auth is not None
    first = unpack_token(body.auth.credentials)
    assert first.supported_mech == ntlm_oid and first.response_token is None

    def alter(token: bytes, call_id: int) -> bytes:
        conn.receive_data(pdu.encode_alter_context(call_id, c._contexts(), auth=c._verifier(token)))
        (resp,) = conn.pdus_to_send()
        b = pdu.parse(resp)[1]
        assert isinstance(b, pdu.BindAck) and b.auth is not None, b
        return b.auth.credentials

    negotiate = ntlm.step()
    assert negotiate is not None
    challenge = unpack_token(alter(NegTokenResp(response_token=negotiate).pack(), 2))
    authenticate = ntlm.step(challenge.response_token)
    assert authenticate is not None
    mechs = pack_mech_type_list([krb5, ntlm_oid])
    mic = ntlm.sign(mechs)
    done = unpack_token(alter(NegTokenResp(response_token=authenticate, mech_list_mic=mic).pack(), 3))
    assert done.neg_state == NegState.accept_complete and done.mech_list_mic
    ntlm.verify(mechs, done.mech_list_mic)  # the server's MIC over the same list
    assert conn.security.identity == (DOMAIN, USER)
    assert conn.security.auth_level == PRIVACY and not conn.closed
    # after the MICs both sides reset their RC4 state (as pyspnego's SPNEGO layer does)
    ntlm._reset_ntlm_crypto_state(outgoing=True)
    ntlm._reset_ntlm_crypto_state(outgoing=False)
    c.sp = ntlm
    c.call_id = 4
    assert c.call(5, b"sealed after steering") == b"\x05" + b"sealed after steering"[::-1]
