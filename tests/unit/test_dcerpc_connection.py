"""The sans-I/O DCE/RPC server engine: exact bytes, negotiation rules, errors, and impacket interop.

Expected PDUs are built by hand here (struct + hex, C706 ch. 12 layouts) rather
than with ``pdu``'s encoders, so a layout mistake cannot cancel itself out.
"""

from __future__ import annotations

import gc
import itertools
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from impacket.dcerpc.v5 import rpcrt, transport
from impacket.uuid import uuidtup_to_bin

from remotevss.dcerpc import pdu
from remotevss.dcerpc.connection import (
    AssocGroupAllocator,
    AuthError,
    Interface,
    NoSecurity,
    Request,
    ServerConnection,
)
from remotevss.dcerpc.pdu import AuthVerifier, Header

IF_A = Interface(UUID("a8e0653c-2744-4389-a61d-7373df8b2292"), (1, 0))
IF_B = Interface(UUID("12345678-1234-abcd-ef00-0123456789ab"), (2, 3))
UNKNOWN = UUID("99999999-8888-7777-6666-555555555555")
NDR20_UUID = UUID("8a885d04-1ceb-11c9-9fe8-08002b104860")
NDR64_UUID = UUID("71710533-beba-4937-8319-b5dbef9ccc36")
BTFN_UUID = UUID("6cb71c2c-9812-4540-0300-000000000000")  # offers bits 1 | 2
OBJ = UUID("00112233-4455-6677-8899-aabbccddeeff")


# ----------------------------------------------------------- hand-made PDUs


def syn(u: UUID, major: int, minor: int = 0) -> bytes:
    return u.bytes_le + struct.pack("<HH", major, minor)


NDR20 = syn(NDR20_UUID, 2)
NDR64 = syn(NDR64_UUID, 1)
BTFN = syn(BTFN_UUID, 1)


def header(
    ptype: int,
    flags: int,
    frag: int,
    call_id: int,
    *,
    auth_len: int = 0,
    drep: bytes = b"\x10\x00\x00\x00",
    vers: tuple[int, int] = (5, 0),
) -> bytes:
    return struct.pack("<BBBB4sHHL", vers[0], vers[1], ptype, flags, drep, frag, auth_len, call_id)


def bind_pdu(
    call_id: int,
    items: Sequence[tuple[int, bytes, Sequence[bytes]]],
    *,
    max_x: int = 4280,
    max_r: int = 4280,
    assoc: int = 0,
    ptype: int = 11,
    auth: bytes = b"",
) -> bytes:
    body = struct.pack("<HHLBBH", max_x, max_r, assoc, len(items), 0, 0)
    for ctx_id, abstract, transfers in items:
        body += struct.pack("<HBB", ctx_id, len(transfers), 0) + abstract + b"".join(transfers)
    auth_len = 0
    if auth:
        body += struct.pack("<BBBBL", 10, 6, 0, 0, 1) + auth  # NTLM, privacy
        auth_len = len(auth)
    return header(ptype, 3, 16 + len(body), call_id, auth_len=auth_len) + body


def request_pdu(
    call_id: int,
    ctx: int,
    opnum: int,
    stub: bytes,
    *,
    flags: int = 3,
    alloc: int | None = None,
    obj: UUID | None = None,
    drep: bytes = b"\x10\x00\x00\x00",
) -> bytes:
    fmt = "<LHH" if drep[0] & 0x10 else ">LHH"
    body = struct.pack(fmt, len(stub) if alloc is None else alloc, ctx, opnum)
    if obj is not None:
        flags |= 0x80
        body += obj.bytes_le
    body += stub
    if drep[0] & 0x10:
        return header(0, flags, 16 + len(body), call_id, drep=drep) + body
    return struct.pack(">BBBB4sHHL", 5, 0, 0, flags, drep, 16 + len(body), 0, call_id) + body


A10 = syn(IF_A.uuid, 1, 0)


def ids(*values: int) -> Iterator[int]:
    return iter(values)


def bound(**kw: Any) -> ServerConnection:
    """A connection bound to IF_A on context 0 (and IF_B on 1)."""
    kw.setdefault("assoc_groups", AssocGroupAllocator(itertools.count(0x100)))
    conn = ServerConnection([IF_A, IF_B], **kw)
    assert (
        conn.receive_data(bind_pdu(1, [(0, A10, [NDR20]), (1, syn(IF_B.uuid, 2, 0), [NDR20])]))
        == []
    )
    (ack,) = conn.pdus_to_send()
    assert ack[2] == 12
    return conn


def parse(data: bytes) -> tuple[Header, Any]:
    return pdu.parse(data)


def one_fault(conn: ServerConnection) -> pdu.FaultPdu:
    (out,) = conn.pdus_to_send()
    hdr, body = parse(out)
    assert hdr.ptype == pdu.PTYPE_FAULT and len(out) == 32
    assert isinstance(body, pdu.FaultPdu)
    return body


# ------------------------------------------------------------------- bind


def test_bind_ack_exact_bytes_with_secondary_address() -> None:
    conn = ServerConnection(
        [IF_A],
        assoc_groups=AssocGroupAllocator(ids(0x12345678)),
        secondary_address="\\PIPE\\FssagentRpc",
    )
    assert conn.receive_data(bind_pdu(1, [(0, A10, [NDR20])])) == []
    expected = bytes.fromhex(
        "05 00 0c 03 10000000 4800 0000 01000000"  # v5.0 bind_ack, first|last, LE, 72 bytes
        "b810 b810 78563412"  # max_xmit 4280, max_recv 4280, assoc group
        "1200" + b"\\PIPE\\FssagentRpc\0".hex() +  # port_any_t, NUL included, ends 4-aligned
        "01 00 0000"  # n_results, reserved, reserved2
        "0000 0000" "045d888aeb1cc9119fe808002b104860 02000000"  # acceptance, NDR20 v2
    )  # fmt: skip
    assert conn.pdus_to_send() == [expected]
    assert conn.bound and not conn.closed and conn.assoc_group_id == 0x12345678


def test_bind_ack_exact_bytes_windows_style_three_contexts() -> None:
    """NDR20 accepted, NDR64 rejected per context, bind-time features acked: one bind_ack."""
    conn = ServerConnection([IF_A], assoc_groups=AssocGroupAllocator(ids(0xAABBCCDD)))
    conn.receive_data(
        bind_pdu(
            2,
            [(0, A10, [NDR20]), (1, A10, [NDR64]), (2, A10, [BTFN])],
            max_x=5840,
            max_r=5840,
        )
    )
    expected = bytes.fromhex(
        "05 00 0c 03 10000000 6800 0000 02000000"  # 104 bytes, call 2
        "d016 d016 ddccbbaa"  # 5840 both ways, assoc group
        "0000 0000"  # empty secondary address (length 0, as Samba), 2 pad octets to 28
        "03 00 0000"
        "0000 0000" "045d888aeb1cc9119fe808002b104860 02000000"  # acceptance NDR20
        "0200 0200" + "00" * 20 +  # provider_rejection, transfer syntaxes not supported
        "0300 0200" + "00" * 20  # negotiate_ack, keep-connection-on-orphan (2 of 1|2)
    )  # fmt: skip
    assert conn.pdus_to_send() == [expected]
    assert len(expected) == 16 + 12 + 4 + 3 * 24


def test_ndr20_picked_from_a_list_that_also_offers_ndr64() -> None:
    conn = ServerConnection([IF_A])
    conn.receive_data(bind_pdu(1, [(0, A10, [NDR64, NDR20])]))
    _, ack = parse(conn.pdus_to_send()[0])
    assert ack.results == (pdu.ContextResult(0, 0, pdu.NDR20),)


def test_unknown_interface_and_versions_rejected_but_bind_acked() -> None:
    conn = ServerConnection([IF_A, IF_B])
    conn.receive_data(
        bind_pdu(
            1,
            [
                (0, syn(UNKNOWN, 1), [NDR20]),
                (1, syn(IF_A.uuid, 2, 0), [NDR20]),  # major mismatch
                (2, syn(IF_A.uuid, 1, 1), [NDR20]),  # minor above ours
                (3, syn(IF_B.uuid, 2, 2), [NDR20]),  # minor below ours: fine
            ],
        )
    )
    hdr, ack = parse(conn.pdus_to_send()[0])
    assert hdr.ptype == pdu.PTYPE_BIND_ACK and conn.bound and not conn.closed
    assert [(r.result, r.reason) for r in ack.results] == [(2, 1), (2, 1), (2, 1), (0, 0)]
    conn.receive_data(request_pdu(2, 0, 0, b""))
    assert one_fault(conn).status == pdu.NCA_S_UNK_IF
    (req,) = conn.receive_data(request_pdu(3, 3, 0, b"x"))
    assert req.interface is IF_B


def test_all_contexts_rejected_still_bind_ack() -> None:
    conn = ServerConnection([IF_A])
    conn.receive_data(bind_pdu(1, [(0, syn(UNKNOWN, 1), [NDR20]), (1, A10, [NDR64])]))
    hdr, ack = parse(conn.pdus_to_send()[0])
    assert hdr.ptype == pdu.PTYPE_BIND_ACK and not conn.closed
    assert [(r.result, r.reason) for r in ack.results] == [(2, 1), (2, 2)]


@pytest.mark.parametrize(
    ("client", "ours", "expect"),
    [
        ((4280, 4280), (5840, 5840), (4280, 4280)),
        ((5840, 2000), (5840, 5840), (2000, 5840)),  # (our xmit, our recv)
        ((100, 0), (5840, 5840), (1432, 1432)),  # below C706's minimum: raised, no nak
        ((65535, 65535), (4280, 5840), (4280, 5840)),
    ],
)
def test_frag_size_negotiation(
    client: tuple[int, int], ours: tuple[int, int], expect: tuple[int, int]
) -> None:
    conn = ServerConnection([IF_A], max_xmit_frag=ours[0], max_recv_frag=ours[1])
    conn.receive_data(bind_pdu(1, [(0, A10, [NDR20])], max_x=client[0], max_r=client[1]))
    _, ack = parse(conn.pdus_to_send()[0])
    assert (ack.max_xmit_frag, ack.max_recv_frag) == expect == (conn.xmit_frag, conn.recv_frag)


def test_constructor_rejects_frag_limits_below_c706_minimum() -> None:
    with pytest.raises(ValueError):
        ServerConnection([IF_A], max_recv_frag=1000)
    with pytest.raises(ValueError):
        ServerConnection([IF_A], max_xmit_frag=70000)


def test_assoc_groups_new_join_unknown_and_released() -> None:
    alloc = AssocGroupAllocator(itertools.count(7))
    first = ServerConnection([IF_A], assoc_groups=alloc)
    first.receive_data(bind_pdu(1, [(0, A10, [NDR20])]))
    assert parse(first.pdus_to_send()[0])[1].assoc_group_id == 7 and 7 in alloc

    second = ServerConnection([IF_A], assoc_groups=alloc)
    second.receive_data(bind_pdu(1, [(0, A10, [NDR20])], assoc=7))
    assert parse(second.pdus_to_send()[0])[1].assoc_group_id == 7 and len(alloc) == 1

    third = ServerConnection([IF_A], assoc_groups=alloc)
    third.receive_data(bind_pdu(9, [(0, A10, [NDR20])], assoc=0xDEAD))
    (nak,) = third.pdus_to_send()
    assert nak == bytes.fromhex("05 00 0d 03 10000000 1800 0000 09000000 0000 01 0500 000000")
    assert third.closed and not third.bound

    first.close()
    assert 7 in alloc  # second still holds it
    del second
    gc.collect()
    assert 7 not in alloc and len(alloc) == 0


def test_allocator_is_thread_safe_and_unique() -> None:
    alloc = AssocGroupAllocator()
    groups: list[Any] = []

    def worker() -> None:
        mine = [alloc.new() for _ in range(500)]
        groups.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({g.id for g in groups}) == 2000 and all(g.id for g in groups)


def test_second_bind_is_nakked_and_closes() -> None:
    conn = bound()
    conn.receive_data(bind_pdu(5, [(0, A10, [NDR20])]))
    (nak,) = conn.pdus_to_send()
    assert parse(nak)[1] == pdu.BindNak(pdu.BIND_NAK_REASON_NOT_SPECIFIED, ((5, 0),))
    assert conn.closed and conn.receive_data(request_pdu(6, 0, 0, b"")) == []


def test_bind_with_auth_verifier_nakked_auth_type_not_recognized() -> None:
    conn = ServerConnection([IF_A])
    conn.receive_data(bind_pdu(3, [(0, A10, [NDR20])], auth=b"NTLMSSP\0" + bytes(24)))
    (nak,) = conn.pdus_to_send()
    assert parse(nak)[1].reason == pdu.BIND_NAK_AUTH_TYPE_NOT_RECOGNIZED == 8
    assert conn.closed


def test_bind_without_contexts_or_truncated_is_nakked() -> None:
    for raw in (
        bind_pdu(1, []),
        bind_pdu(1, [(0, A10, [NDR20])])[:-4],  # frag_length honest, list cut short
        bind_pdu(1, [(0, A10, [])]),  # a context with no transfer syntax
    ):
        raw = raw[:8] + struct.pack("<H", len(raw)) + raw[10:]
        conn = ServerConnection([IF_A])
        conn.receive_data(raw)
        (nak,) = conn.pdus_to_send()
        assert nak[2] == pdu.PTYPE_BIND_NAK and conn.closed


def test_bind_bad_version_gets_protocol_version_nak() -> None:
    raw = bind_pdu(4, [(0, A10, [NDR20])])
    conn = ServerConnection([IF_A])
    conn.receive_data(b"\x04" + raw[1:])
    (nak,) = conn.pdus_to_send()
    assert parse(nak)[1] == pdu.BindNak(4, ((5, 0),)) and conn.closed


def test_big_endian_bind_nakked_user_data_not_readable() -> None:
    raw = bind_pdu(1, [(0, A10, [NDR20])])
    be = struct.pack(">BBBB4sHHL", 5, 0, 11, 3, b"\x00\x00\x00\x00", len(raw), 0, 1) + raw[16:]
    conn = ServerConnection([IF_A])
    conn.receive_data(be)
    (nak,) = conn.pdus_to_send()
    assert parse(nak)[1].reason == pdu.BIND_NAK_USER_DATA_NOT_READABLE and conn.closed


def test_security_hook_sees_and_answers_the_verifier() -> None:
    class Accepting(NoSecurity):  # protect, close, overhead, identity as NoSecurity's
        auth_level = pdu.RPC_C_AUTHN_LEVEL_PKT_INTEGRITY
        seen: list[AuthVerifier | None] = []
        pending = True

        def bind(self, v: AuthVerifier | None, header_signing: bool = False) -> AuthVerifier | None:
            self.seen.append(v)
            return AuthVerifier(10, 5, 0, 1, b"CHALLENGE")

        def alter_context(self, v: AuthVerifier | None) -> AuthVerifier | None:
            return None

        def auth3(self, v: AuthVerifier | None) -> None:
            self.seen.append(v)

        def request(self, raw: bytes, h: Header, stub: bytes, v: AuthVerifier | None) -> bytes:
            if v is None:
                raise AuthError("unsigned request")
            return stub.upper()

    sec = Accepting()
    conn = ServerConnection([IF_A], security=sec)
    conn.receive_data(bind_pdu(1, [(0, A10, [NDR20])], auth=b"NEGOTIATE"))
    hdr, ack = parse(conn.pdus_to_send()[0])
    assert hdr.ptype == pdu.PTYPE_BIND_ACK and ack.auth.credentials == b"CHALLENGE"
    assert sec.seen[0] == AuthVerifier(10, 6, 0, 1, b"NEGOTIATE")
    conn.receive_data(pdu.encode_auth3(1, AuthVerifier(10, 6, 0, 1, b"AUTH")))
    assert sec.seen[1] == AuthVerifier(10, 6, 0, 1, b"AUTH") and conn.pdus_to_send() == []
    verifier = AuthVerifier(10, 5, 0, 1, bytes(16))
    (req,) = conn.receive_data(pdu.encode_request(2, 0, 1, b"abc", auth=verifier))
    assert req.stub == b"ABC" and req.auth_level == 5
    conn.receive_data(request_pdu(3, 0, 1, b"abc"))
    assert one_fault(conn).status == pdu.NCA_S_FAULT_ACCESS_DENIED and conn.closed


# ------------------------------------------------------------- requests


def test_single_request_and_exact_response() -> None:
    conn = bound()
    (req,) = conn.receive_data(request_pdu(2, 0, 9, b"hello"))
    assert req == Request(2, 0, 9, b"hello", IF_A, None, pdu.RPC_C_AUTHN_LEVEL_NONE)
    conn.respond(req, b"world!")
    assert conn.pdus_to_send() == [
        bytes.fromhex("05 00 02 03 10000000 1e00 0000 02000000 06000000 0000 00 00") + b"world!"
    ]


def test_request_with_object_uuid() -> None:
    conn = bound()
    (req,) = conn.receive_data(request_pdu(2, 0, 1, b"x", obj=OBJ))
    assert req.object_uuid == OBJ and req.stub == b"x"


def _vt(stub: bytes, **kw: Any) -> bytes:
    from tests.support.vtrailer import verification_trailer

    args: dict[str, Any] = {"iface": IF_A.uuid, "version": (1, 0), "call_id": 2,
                            "context_id": 0, "opnum": 0} | kw  # fmt: skip
    return verification_trailer(stub, **args)


def test_verification_trailer_passes_through() -> None:
    conn = bound()
    stub = _vt(b"\x01\x00\x00\x00\x07")
    (req,) = conn.receive_data(request_pdu(2, 0, 0, stub))
    assert req.stub == stub  # the NDR decoder ignores what follows its data


@pytest.mark.parametrize(
    "wrong",
    [
        {"call_id": 3},
        {"opnum": 1},
        {"context_id": 1},
        {"ptype": 2},
        {"iface": UNKNOWN},
        {"version": (2, 0)},
        {"header_signing": True},  # the bind did not offer it: a downgrade
    ],
    ids=lambda w: next(iter(w)),
)
def test_verification_trailer_that_disagrees_is_refused(wrong: dict[str, Any]) -> None:
    conn = bound()
    assert conn.receive_data(request_pdu(2, 0, 0, _vt(b"\x01\x00\x00\x00", **wrong))) == []
    f = one_fault(conn)
    assert f.status == pdu.NCA_S_FAULT_ACCESS_DENIED and not conn.closed
    (req,) = conn.receive_data(request_pdu(3, 0, 0, _vt(b"ok", call_id=3)))  # still serving
    assert req.stub.startswith(b"ok")


@pytest.mark.parametrize(
    "tail",
    [
        bytes.fromhex("8ae3137102f43671") + struct.pack("<HH", 0x4002, 40) + bytes(10),
        bytes.fromhex("8ae3137102f43671") + struct.pack("<HH", 0x8007, 0),  # must-process ?
        bytes.fromhex("8ae3137102f43671") + struct.pack("<HHL", 0x0001, 4, 0),  # no end
    ],
    ids=["truncated", "unknown-must-process", "no-end"],
)
def test_malformed_verification_trailer_is_refused(tail: bytes) -> None:
    conn = bound()
    assert conn.receive_data(request_pdu(2, 0, 0, b"\x01\x00\x00\x00" + tail)) == []
    assert one_fault(conn).status == pdu.NCA_S_FAULT_ACCESS_DENIED


def test_unknown_optional_trailer_command_is_skipped() -> None:
    conn = bound()
    tail = bytes.fromhex("8ae3137102f43671") + struct.pack("<HHL", 0x4007, 4, 0)
    (req,) = conn.receive_data(request_pdu(2, 0, 0, b"\x01\x00\x00\x00" + tail))
    assert req.stub.endswith(tail)


def test_three_fragment_request_reassembled() -> None:
    conn = bound()
    parts = [b"A" * 100, b"B" * 100, b"C" * 7]
    out = conn.receive_data(request_pdu(7, 1, 4, parts[0], flags=1, alloc=0))  # hint ignored
    out += conn.receive_data(request_pdu(7, 1, 4, parts[1], flags=0))
    assert out == [] and conn.pdus_to_send() == []
    (req,) = conn.receive_data(request_pdu(7, 1, 4, parts[2], flags=2))
    assert req.stub == b"".join(parts) and req.interface is IF_B and req.opnum == 4


def test_interleaved_call_id_is_protocol_error() -> None:
    conn = bound()
    conn.receive_data(request_pdu(7, 0, 4, b"a", flags=1))
    conn.receive_data(request_pdu(8, 0, 4, b"b", flags=2))
    f = one_fault(conn)
    assert f.status == pdu.NCA_S_PROTO_ERROR and conn.closed


@pytest.mark.parametrize(
    "second",
    [
        request_pdu(7, 0, 4, b"b", flags=1),  # a second first fragment
        request_pdu(7, 1, 4, b"b", flags=2),  # context changed
        request_pdu(7, 0, 5, b"b", flags=2),  # opnum changed
    ],
)
def test_inconsistent_fragments_are_protocol_errors(second: bytes) -> None:
    conn = bound()
    conn.receive_data(request_pdu(7, 0, 4, b"a", flags=1))
    conn.receive_data(second)
    assert one_fault(conn).status == pdu.NCA_S_PROTO_ERROR and conn.closed


def test_middle_fragment_without_first_is_protocol_error() -> None:
    conn = bound()
    conn.receive_data(request_pdu(7, 0, 4, b"a", flags=0))
    assert one_fault(conn).status == pdu.NCA_S_PROTO_ERROR and conn.closed


def test_request_stub_cap_faults_and_closes() -> None:
    conn = bound(max_request_stub=150)
    conn.receive_data(request_pdu(7, 0, 4, b"a" * 100, flags=1, alloc=1 << 30))
    assert conn.pdus_to_send() == []
    conn.receive_data(request_pdu(7, 0, 4, b"a" * 100, flags=0))
    f = one_fault(conn)
    assert f.status == pdu.NCA_S_FAULT_REMOTE_NO_MEMORY and conn.closed
    single = bound(max_request_stub=10)
    single.receive_data(request_pdu(2, 0, 0, b"x" * 11))
    assert one_fault(single).status == pdu.NCA_S_FAULT_REMOTE_NO_MEMORY


def test_response_fragmented_to_negotiated_size() -> None:
    conn = ServerConnection([IF_A])
    conn.receive_data(bind_pdu(1, [(0, A10, [NDR20])], max_r=1432))
    conn.pdus_to_send()
    (req,) = conn.receive_data(request_pdu(2, 0, 0, b""))
    stub = bytes(range(256)) * 20  # 5120 bytes
    conn.respond(req, stub)
    frags = conn.pdus_to_send()
    assert [len(f) for f in frags] == [1432, 1432, 1432, 24 + 5120 - 3 * 1408]
    assert [f[3] for f in frags] == [1, 0, 0, 2]
    hints = [struct.unpack_from("<L", f, 16)[0] for f in frags]
    assert hints == [5120, 5120 - 1408, 5120 - 2816, 5120 - 4224]
    assert all(f[:3] == b"\x05\x00\x02" and f[12:16] == b"\x02\x00\x00\x00" for f in frags)
    assert b"".join(f[24:] for f in frags) == stub


def test_empty_response_is_one_fragment() -> None:
    conn = bound()
    (req,) = conn.receive_data(request_pdu(2, 0, 0, b""))
    conn.respond(req, b"")
    (only,) = conn.pdus_to_send()
    assert len(only) == 24 and only[3] == 3


def test_application_fault_bytes() -> None:
    conn = bound()
    (req,) = conn.receive_data(request_pdu(3, 1, 77, b""))
    conn.fault(req, pdu.NCA_S_OP_RNG_ERROR)
    assert conn.pdus_to_send() == [
        bytes.fromhex(
            "05 00 03 23 10000000 2000 0000 03000000 00000000 0100 00 00 0200011c 00000000"
        )
    ]
    (req,) = conn.receive_data(request_pdu(4, 0, 1, b""))
    conn.fault(req, pdu.NCA_S_FAULT_ACCESS_DENIED)
    assert conn.pdus_to_send()[0][3] == 3  # may have executed: no did-not-execute flag
    (req,) = conn.receive_data(request_pdu(5, 0, 1, b""))
    conn.fault(req, pdu.NCA_S_FAULT_REMOTE_NO_MEMORY)
    assert conn.pdus_to_send()[0][3] == 3
    (req,) = conn.receive_data(request_pdu(6, 0, 1, b""))
    conn.fault(req, pdu.NCA_S_FAULT_REMOTE_NO_MEMORY, did_not_execute=True)
    assert conn.pdus_to_send()[0][3] == 0x23
    assert not conn.closed


def test_unknown_context_id_faults_and_connection_stays_usable() -> None:
    conn = bound()
    conn.receive_data(request_pdu(2, 5, 0, b"x"))
    f = one_fault(conn)
    assert (f.status, f.context_id) == (pdu.NCA_S_UNK_IF, 5) and not conn.closed
    (req,) = conn.receive_data(request_pdu(3, 0, 0, b"y"))
    assert req.stub == b"y"


def test_big_endian_request_faults_bad_stub_and_stays_open() -> None:
    conn = bound()
    conn.receive_data(request_pdu(2, 0, 1, b"abcd", drep=b"\x00\x00\x00\x00"))
    f = one_fault(conn)
    assert f.status == pdu.NCA_S_FAULT_NDR and not conn.closed
    ebcdic = request_pdu(3, 0, 1, b"abcd", drep=b"\x11\x00\x00\x00")
    conn.receive_data(ebcdic)
    assert one_fault(conn).status == pdu.NCA_S_FAULT_NDR
    assert len(conn.receive_data(request_pdu(4, 0, 1, b"ok"))) == 1


def test_request_before_bind() -> None:
    conn = ServerConnection([IF_A])
    assert conn.receive_data(request_pdu(1, 0, 0, b"x")) == []
    f = one_fault(conn)
    assert f.status == pdu.NCA_S_PROTO_ERROR and conn.closed


def test_auth_length_beyond_fragment_is_protocol_error() -> None:
    conn = bound()
    raw = bytearray(request_pdu(2, 0, 0, b"abcd"))
    raw[10:12] = struct.pack("<H", 200)
    conn.receive_data(bytes(raw))
    assert one_fault(conn).status == pdu.NCA_S_PROTO_ERROR and conn.closed


def test_request_with_verifier_on_unauthenticated_connection() -> None:
    conn = bound()
    conn.receive_data(
        pdu.encode_request(2, 0, 0, b"abc", auth=AuthVerifier(10, 5, 0, 0, b"s" * 16))
    )
    assert one_fault(conn).status == pdu.NCA_S_FAULT_ACCESS_DENIED and conn.closed


# -------------------------------------------------------- alter_context


def test_alter_context_adds_contexts() -> None:
    conn = ServerConnection([IF_A, IF_B], assoc_groups=AssocGroupAllocator(ids(0x42)))
    conn.receive_data(bind_pdu(1, [(0, A10, [NDR20])]))
    conn.pdus_to_send()
    conn.receive_data(request_pdu(2, 3, 0, b""))
    assert one_fault(conn).status == pdu.NCA_S_UNK_IF
    conn.receive_data(
        bind_pdu(3, [(3, syn(IF_B.uuid, 2, 1), [NDR20]), (4, A10, [NDR64])], ptype=14)
    )
    (resp,) = conn.pdus_to_send()
    assert resp == bytes.fromhex(
        "05 00 0f 03 10000000 5000 0000 03000000"
        "b810 b810 42000000 0000 0000"  # negotiated sizes, same group, empty address
        "02 00 0000"
        "0000 0000" "045d888aeb1cc9119fe808002b104860 02000000"
        "0200 0200" + "00" * 20
    )  # fmt: skip
    (req,) = conn.receive_data(request_pdu(4, 3, 0, b"z"))
    assert req.interface is IF_B and req.context_id == 3


def test_alter_context_may_repeat_but_not_redefine_a_context() -> None:
    conn = bound()
    conn.receive_data(bind_pdu(2, [(0, A10, [NDR20])], ptype=14))
    assert parse(conn.pdus_to_send()[0])[1].results[0].result == 0
    conn.receive_data(bind_pdu(3, [(0, syn(IF_B.uuid, 2), [NDR20])], ptype=14))
    assert one_fault(conn).status == pdu.NCA_S_PROTO_ERROR and conn.closed


def test_alter_context_rejects_bind_time_features() -> None:
    conn = bound()
    conn.receive_data(bind_pdu(2, [(5, A10, [BTFN])], ptype=14))
    _, resp = parse(conn.pdus_to_send()[0])
    assert [(r.result, r.reason) for r in resp.results] == [(2, 2)]


def test_alter_context_before_bind() -> None:
    conn = ServerConnection([IF_A])
    conn.receive_data(bind_pdu(2, [(0, A10, [NDR20])], ptype=14))
    assert one_fault(conn).status == pdu.NCA_S_PROTO_ERROR and conn.closed


def test_context_table_is_bounded() -> None:
    conn = bound()
    for batch in range(4):  # 80 items keep each alter_context under 4280 bytes
        items = [(2 + batch * 80 + i, A10, [NDR20]) for i in range(80)]
        conn.receive_data(bind_pdu(10 + batch, items, ptype=14))
    results = [parse(p)[1].results for p in conn.pdus_to_send()]
    accepted = sum(r.result == 0 for rs in results for r in rs)
    assert accepted == 256 - 2 and results[-1][-1].reason == pdu.REASON_LOCAL_LIMIT_EXCEEDED


# ----------------------------------------------------- cancel / orphan / maybe


def test_co_cancel_drops_the_call_being_reassembled() -> None:
    conn = bound()
    conn.receive_data(request_pdu(7, 0, 4, b"a", flags=1))
    conn.receive_data(pdu.encode_co_cancel(7))
    conn.receive_data(request_pdu(7, 0, 4, b"b", flags=0))  # late fragments are swallowed
    assert conn.receive_data(request_pdu(7, 0, 4, b"c", flags=2)) == []
    assert conn.pdus_to_send() == [] and not conn.closed
    (req,) = conn.receive_data(request_pdu(8, 0, 4, b"next"))
    assert req.stub == b"next"


def test_orphaned_discards_the_reply_of_a_handed_out_call() -> None:
    conn = bound()
    (req,) = conn.receive_data(request_pdu(7, 0, 4, b"a"))
    conn.receive_data(pdu.encode_orphaned(7))
    conn.respond(req, b"late")
    assert conn.pdus_to_send() == [] and not conn.closed
    conn.receive_data(pdu.encode_orphaned(99))  # unknown call: ignored
    (req,) = conn.receive_data(request_pdu(8, 0, 4, b"b"))
    conn.respond(req, b"ok")
    assert len(conn.pdus_to_send()) == 1


def test_maybe_call_gets_no_reply() -> None:
    conn = bound()
    (req,) = conn.receive_data(request_pdu(7, 0, 4, b"a", flags=3 | pdu.PFC_MAYBE))
    conn.respond(req, b"nobody listens")
    conn.receive_data(request_pdu(8, 9, 4, b"a", flags=3 | pdu.PFC_MAYBE))  # even a fault
    assert conn.pdus_to_send() == []


def test_shutdown_is_ignored_and_auth3_without_security_closes() -> None:
    conn = bound()
    conn.receive_data(pdu.encode_shutdown(0))
    assert conn.pdus_to_send() == [] and not conn.closed
    conn.receive_data(pdu.encode_auth3(1, AuthVerifier(10, 6, 0, 0, b"x")))
    assert one_fault(conn).status == pdu.NCA_S_FAULT_ACCESS_DENIED and conn.closed


# --------------------------------------------------------------- framing


def test_byte_at_a_time_and_pipelined_input() -> None:
    stream = (
        bind_pdu(1, [(0, A10, [NDR20])])
        + request_pdu(2, 0, 1, b"one")
        + request_pdu(3, 0, 2, b"t", flags=1)
        + request_pdu(3, 0, 2, b"wo", flags=2)
    )
    trickle = ServerConnection([IF_A])
    got: list[Request] = []
    for i in range(len(stream)):
        got += trickle.receive_data(stream[i : i + 1])
        assert trickle.buffered < trickle.recv_frag
    whole = ServerConnection([IF_A])
    assert [(r.call_id, r.stub) for r in whole.receive_data(stream)] == [(2, b"one"), (3, b"two")]
    assert [(r.call_id, r.stub) for r in got] == [(2, b"one"), (3, b"two")]
    assert len(trickle.pdus_to_send()) == 1 and trickle.buffered == 0


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x04\x00\x00\x03", "rpc_vers 4"),
        (b"\x05\x02\x00\x03", "rpc_vers_minor 2"),
        (b"\x05\x00\x63\x03", "unknown PTYPE 99"),
        (b"\x05\x00\x02\x03", "a response sent to a server"),
        (b"\x05\x00\x0c\x03", "a bind_ack sent to a server"),
        (b"\x05\x00\x00\x03\x10\x00\x00\x00\x0f\x00", "frag_length below 16"),
    ],
)
def test_bad_headers_rejected_from_their_first_bytes(raw: bytes, why: str) -> None:
    conn = bound()
    conn.receive_data(raw)
    assert one_fault(conn).status == pdu.NCA_S_PROTO_ERROR and conn.closed, why
    assert conn.buffered == 0


def test_oversize_frag_rejected_without_buffering() -> None:
    conn = bound()  # negotiated 4280
    conn.receive_data(header(0, 3, 4281, 2))
    assert one_fault(conn).status == pdu.NCA_S_PROTO_ERROR and conn.closed
    fresh = ServerConnection([IF_A])  # before bind: our configured limit
    fresh.receive_data(header(11, 3, 5841, 1))
    (nak,) = fresh.pdus_to_send()
    assert nak[2] == pdu.PTYPE_BIND_NAK and fresh.closed


def test_garbage_closes_without_exception() -> None:
    conn = ServerConnection([IF_A])
    assert conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == []
    assert conn.closed and len(conn.pdus_to_send()) == 1
    assert conn.receive_data(b"anything") == [] and conn.pdus_to_send() == []


def test_requests_after_close_are_not_answered() -> None:
    conn = bound()
    (req,) = conn.receive_data(request_pdu(2, 0, 0, b"") + b"\xff" * 20)
    assert conn.closed
    conn.pdus_to_send()
    conn.respond(req, b"x")
    conn.fault(req, 1)
    assert conn.pdus_to_send() == []


# --------------------------------------------------------------- codecs


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=9000), st.integers(1432, 9000))
def test_fragment_response_reassembles(stub: bytes, max_frag: int) -> None:
    frags = pdu.fragment_response(5, 1, stub, max_frag)
    flags = [pdu.parse_header(f).pfc_flags & 3 for f in frags]
    assert all(len(f) <= max_frag for f in frags)
    assert flags == ([3] if len(frags) == 1 else [1] + [0] * (len(frags) - 2) + [2])
    assert b"".join(pdu.parse_response(f).stub for f in frags) == stub


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=6000), st.integers(100, 1500), st.lists(st.integers(1, 700)))
def test_engine_reassembles_any_fragmentation_and_chunking(
    stub: bytes, frag: int, cuts: list[int]
) -> None:
    conn = bound()
    stream = b"".join(pdu.fragment_request(9, 0, 3, stub, frag))
    got: list[Request] = []
    pos = 0
    for n in itertools.chain(cuts, [len(stream)]):
        got += conn.receive_data(stream[pos : pos + n])
        pos += n
    assert [r.stub for r in got] == [stub] and not conn.closed and conn.buffered == 0


def test_codec_round_trips() -> None:
    ctxs = [pdu.ContextElem(0, pdu.SyntaxId(IF_A.uuid, 1, 0), (pdu.NDR20, pdu.NDR64))]
    verifier = AuthVerifier(9, 6, 0, 3, b"token")
    results = (pdu.ContextResult(0, 0, pdu.NDR20), pdu.ContextResult(3, 2, pdu.NULL_SYNTAX))
    cases: list[tuple[bytes, Any]] = [
        (pdu.encode_bind(1, ctxs, assoc_group_id=5), pdu.Bind(5840, 5840, 5, tuple(ctxs))),
        (
            pdu.encode_alter_context(1, ctxs, auth=verifier),
            pdu.Bind(5840, 5840, 0, tuple(ctxs), verifier),
        ),
        (
            pdu.encode_bind_ack(
                1,
                max_xmit_frag=1,
                max_recv_frag=2,
                assoc_group_id=3,
                secondary_address=b"135",
                results=results,
            ),
            pdu.BindAck(1, 2, 3, b"135", results),
        ),  # fmt: skip
        (
            pdu.encode_alter_context_resp(
                1,
                max_xmit_frag=1,
                max_recv_frag=2,
                assoc_group_id=3,
                secondary_address=b"",
                results=(),
            ),
            pdu.BindAck(1, 2, 3, b"", ()),
        ),  # fmt: skip
        (pdu.encode_bind_nak(1, 4), pdu.BindNak(4, ((5, 0),))),
        (
            pdu.encode_request(1, 2, 3, b"stub!", object_uuid=OBJ, auth=verifier),
            pdu.RequestPdu(5, 2, 3, OBJ, b"stub!", verifier._replace(auth_pad_length=3)),
        ),
        (pdu.encode_response(1, 2, b"resp"), pdu.ResponsePdu(4, 2, 0, b"resp")),
        (pdu.encode_fault(1, 2, 0x1C010003), pdu.FaultPdu(0, 2, 0, 0, 0x1C010003, b"")),
        (pdu.encode_auth3(1, verifier), pdu.ControlPdu(verifier)),
        (pdu.encode_shutdown(), pdu.ControlPdu()),
        (pdu.encode_co_cancel(1), pdu.ControlPdu()),
        (pdu.encode_orphaned(1, auth=verifier), pdu.ControlPdu(verifier)),
    ]
    for raw, expected in cases:
        hdr, body = pdu.parse(raw)
        assert body == expected, hdr
        assert hdr.frag_length == len(raw) and hdr.drep == pdu.DREP_LE


def test_bind_time_feature_syntax() -> None:
    s = pdu.bind_time_feature_syntax(3)
    assert s.uuid == BTFN_UUID and pdu.bind_time_features(s) == 3
    assert pdu.bind_time_features(pdu.NDR20) is None


# ------------------------------------------------------ impacket interop


def echo(conn: ServerConnection, requests: list[Request]) -> None:
    """Opnum 0..9 echo ``opnum byte + reversed stub``; others fault op_rng_error."""
    for r in requests:
        if r.opnum < 10:
            conn.respond(r, bytes([r.opnum]) + r.stub[::-1])
        else:
            conn.fault(r, pdu.NCA_S_OP_RNG_ERROR)


class InProcessTransport(transport.DCERPCTransport):  # type: ignore[misc]
    """impacket transport that hands bytes to a ServerConnection, in uneven chunks."""

    def __init__(self, conn: ServerConnection, chunk: int = 777) -> None:
        super().__init__("in-process", 0)
        self.conn = conn
        self.chunk = chunk
        self.rx = bytearray()
        self.sends = 0  # impacket calls send() once per PDU
        self.pdus_back = 0

    def connect(self) -> int:
        return 1

    def disconnect(self) -> int:
        return 1

    def send(self, data: bytes, forceWriteAndx: int = 0, forceRecv: int = 0) -> None:
        data = bytes(data)
        self.sends += 1
        for i in range(0, len(data), self.chunk):
            echo(self.conn, self.conn.receive_data(data[i : i + self.chunk]))
        for p in self.conn.pdus_to_send():
            self.pdus_back += 1
            self.rx += p

    def recv(self, forceRecv: int = 0, count: int = 0) -> bytes:
        if not count:  # one whole PDU, as a message-mode pipe would deliver it
            count = struct.unpack_from("<H", self.rx, 8)[0]
        out = bytes(self.rx[:count])
        del self.rx[:count]
        return out


def impacket_bind(conn: ServerConnection, iface: Interface, **kw: Any) -> Any:
    dce = InProcessTransport(conn).get_dce_rpc()
    dce.connect()
    dce.bind(uuidtup_to_bin((str(iface.uuid), f"{iface.version[0]}.{iface.version[1]}")), **kw)
    return dce


def test_impacket_fragmented_both_ways_and_alter_ctx() -> None:
    conn = ServerConnection([IF_A, IF_B], max_xmit_frag=1432)
    dce = impacket_bind(conn, IF_A)
    dce.set_max_fragment_size(1000)  # request fragments of 1000 stub bytes
    stub = bytes(range(256)) * 30  # 7680 bytes: 8 request and 6 response fragments
    t = dce.get_rpc_transport()
    t.sends = t.pdus_back = 0
    dce.call(7, stub)
    assert dce.recv() == b"\x07" + stub[::-1]
    assert (t.sends, t.pdus_back) == (8, 6)
    assert conn.xmit_frag == 1432 and conn.recv_frag == 4280

    other = dce.alter_ctx(uuidtup_to_bin((str(IF_B.uuid), "2.0")))
    other.call(3, b"abc")
    assert other.recv() == b"\x03cba"
    dce.call(1, b"still context 0")
    assert dce.recv() == b"\x010 txetnoc llits"

    dce.call(42, b"")
    with pytest.raises(rpcrt.DCERPCException, match="nca_s_op_rng_error"):
        dce.recv()
    assert not conn.closed


def test_impacket_sees_rejections_and_naks() -> None:
    with pytest.raises(rpcrt.DCERPCException, match="abstract_syntax_not_supported"):
        impacket_bind(ServerConnection([IF_A]), Interface(UNKNOWN, (1, 0)))
    with pytest.raises(rpcrt.DCERPCException, match="proposed_transfer_syntaxes_not_supported"):
        impacket_bind(ServerConnection([IF_A]), IF_A, transfer_syntax=(str(NDR64_UUID), "1.0"))
    conn = ServerConnection([IF_A])
    dce = InProcessTransport(conn).get_dce_rpc()
    dce.set_credentials("user", "password", "DOMAIN")
    dce.set_auth_level(pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY)
    with pytest.raises(rpcrt.DCERPCException):
        dce.bind(uuidtup_to_bin((str(IF_A.uuid), "1.0")))
    assert conn.closed


class SocketPairTransport(transport.TCPTransport):  # type: ignore[misc]
    """impacket's own stream transport on one end of a socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("socketpair", 0)
        self._sock = sock

    def connect(self) -> int:
        self._TCPTransport__socket = self._sock
        return 1


def serve(sock: socket.socket, conn: ServerConnection) -> None:
    with sock:
        while not conn.closed:
            data = sock.recv(65536)
            if not data:
                break
            echo(conn, conn.receive_data(data))
            for p in conn.pdus_to_send():
                sock.sendall(p)


def test_impacket_over_a_socketpair_with_a_server_thread() -> None:
    client, server = socket.socketpair()
    client.settimeout(10)
    conn = ServerConnection([IF_A], max_xmit_frag=2048)
    thread = threading.Thread(target=serve, args=(server, conn), daemon=True)
    thread.start()
    t = SocketPairTransport(client)
    t.set_max_fragment_size(333)  # impacket also cuts its writes into 333-byte pieces
    dce = t.get_dce_rpc()
    dce.connect()
    dce.bind(uuidtup_to_bin((str(IF_A.uuid), "1.0")))
    dce.set_max_fragment_size(1500)
    for size in (0, 100, 5000, 20000):
        stub = bytes(i % 251 for i in range(size))
        dce.call(size % 10, stub)
        assert dce.recv() == bytes([size % 10]) + stub[::-1]
    client.close()
    thread.join(10)
    assert not thread.is_alive()
