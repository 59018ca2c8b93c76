"""Connection-oriented DCE/RPC PDUs: constants and byte codecs (C706 ch. 12, MS-RPCE 2.2).

Rules of this module:

- It knows wire layouts and nothing else: no connection state, no policy
  (which contexts to accept, when to close), no I/O, no clock.
- Parsers take one whole PDU (framing is the connection's job) and return a
  record or raise :class:`PduError`.  They never read past the bytes they were
  given or past ``frag_length``, whatever the length fields inside claim, and
  they raise nothing else for bad input.
- Parsers read both integer byte orders, because C706 lets each sender pick its
  ``packed_drep`` and a PDU must be framed even when we then refuse it.
  Encoders always write what we speak: little-endian, ASCII, IEEE
  (drep ``10 00 00 00``).
- Records are NamedTuples: cheap to build on the hot path, comparable in tests.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple
from uuid import UUID

# --------------------------------------------------------------- constants

RPC_VERS = 5
RPC_VERS_MINOR = 0
#: C706 12.6.3.7: every implementation must accept fragments of this size.
MUST_RECV_FRAG_SIZE = 1432
MAX_FRAG_SIZE = 0xFFFF

COMMON_HEADER_LEN = 16
REQUEST_HEADER_LEN = 24  # + 16 with PFC_OBJECT_UUID
RESPONSE_HEADER_LEN = 24
FAULT_LEN = 32
SEC_TRAILER_LEN = 8

# PTYPE (C706 12.6.3.1; 16 is MS-RPCE rpc_auth_3, 20 is MS-RPCH rts).
PTYPE_REQUEST = 0
PTYPE_PING = 1
PTYPE_RESPONSE = 2
PTYPE_FAULT = 3
PTYPE_WORKING = 4
PTYPE_NOCALL = 5
PTYPE_REJECT = 6
PTYPE_ACK = 7
PTYPE_CL_CANCEL = 8
PTYPE_FACK = 9
PTYPE_CANCEL_ACK = 10
PTYPE_BIND = 11
PTYPE_BIND_ACK = 12
PTYPE_BIND_NAK = 13
PTYPE_ALTER_CONTEXT = 14
PTYPE_ALTER_CONTEXT_RESP = 15
PTYPE_AUTH3 = 16
PTYPE_SHUTDOWN = 17
PTYPE_CO_CANCEL = 18
PTYPE_ORPHANED = 19
PTYPE_RTS = 20

# pfc_flags
PFC_FIRST_FRAG = 0x01
PFC_LAST_FRAG = 0x02
PFC_PENDING_CANCEL = 0x04  # on request/response/fault
PFC_SUPPORT_HEADER_SIGN = 0x04  # on bind/bind_ack/alter_context(_resp), MS-RPCE 2.2.2.3
PFC_RESERVED_1 = 0x08
PFC_CONC_MPX = 0x10
PFC_DID_NOT_EXECUTE = 0x20
PFC_MAYBE = 0x40
PFC_OBJECT_UUID = 0x80
PFC_FIRST_LAST = PFC_FIRST_FRAG | PFC_LAST_FRAG

# packed_drep byte 0: integer representation (high nibble) | character set (low nibble).
DREP_INT_LITTLE_ENDIAN = 0x10
DREP_CHAR_EBCDIC = 0x01
DREP_LE = b"\x10\x00\x00\x00"  # little-endian, ASCII, IEEE float

# p_cont_def_result_t (MS-RPCE 2.2.2.4 adds negotiate_ack).
RESULT_ACCEPTANCE = 0
RESULT_USER_REJECTION = 1
RESULT_PROVIDER_REJECTION = 2
RESULT_NEGOTIATE_ACK = 3

# p_provider_reason_t, the reason of a rejected context.
REASON_NOT_SPECIFIED = 0
REASON_ABSTRACT_SYNTAX_NOT_SUPPORTED = 1
REASON_TRANSFER_SYNTAXES_NOT_SUPPORTED = 2
REASON_LOCAL_LIMIT_EXCEEDED = 3

# p_reject_reason_t, the reason of a bind_nak (8 and 9 are MS-RPCE).
BIND_NAK_REASON_NOT_SPECIFIED = 0
BIND_NAK_TEMPORARY_CONGESTION = 1
BIND_NAK_LOCAL_LIMIT_EXCEEDED = 2
BIND_NAK_CALLED_PADDR_UNKNOWN = 3
BIND_NAK_PROTOCOL_VERSION_NOT_SUPPORTED = 4
BIND_NAK_DEFAULT_CONTEXT_NOT_SUPPORTED = 5
BIND_NAK_USER_DATA_NOT_READABLE = 6
BIND_NAK_NO_PSAP_AVAILABLE = 7
BIND_NAK_AUTH_TYPE_NOT_RECOGNIZED = 8
BIND_NAK_INVALID_CHECKSUM = 9

# Bind time feature negotiation bits (MS-RPCE 3.3.1.5.3), in the negotiate_ack reason.
BIND_TIME_SECURITY_CONTEXT_MULTIPLEXING = 0x0001
BIND_TIME_KEEP_CONNECTION_ON_ORPHAN = 0x0002

# Fault statuses (C706 appendix E, MS-RPCE 2.2.2.13 / 3.3.2.5).
NCA_S_FAULT_ACCESS_DENIED = 0x00000005
NCA_S_FAULT_SEC_PKG_ERROR = 0x00000721  # a signature or seal that does not verify
NCA_S_FAULT_NDR = 0x000006F7  # RPC_X_BAD_STUB_DATA
NCA_S_FAULT_CANT_PERFORM = 0x000006D8
NCA_S_FAULT_SERVER_UNAVAILABLE = 0x000006BA
NCA_S_FAULT_INVALID_TAG = 0x1C000006
NCA_S_FAULT_CONTEXT_MISMATCH = 0x1C00001A
NCA_S_FAULT_REMOTE_NO_MEMORY = 0x1C00001B
NCA_S_INVALID_PRES_CONTEXT_ID = 0x1C00001C
NCA_S_UNSUPPORTED_AUTHN_LEVEL = 0x1C00001D
NCA_S_COMM_FAILURE = 0x1C010001
NCA_S_OP_RNG_ERROR = 0x1C010002
NCA_S_UNK_IF = 0x1C010003
NCA_S_PROTO_ERROR = 0x1C01000B
NCA_S_SERVER_TOO_BUSY = 0x1C010014
NCA_S_UNSUPPORTED_TYPE = 0x1C010017

# Security providers and levels (MS-RPCE 2.2.1.1.7-8).
RPC_C_AUTHN_NONE = 0x00
RPC_C_AUTHN_GSS_NEGOTIATE = 0x09
RPC_C_AUTHN_WINNT = 0x0A
RPC_C_AUTHN_GSS_SCHANNEL = 0x0E
RPC_C_AUTHN_GSS_KERBEROS = 0x10
RPC_C_AUTHN_NETLOGON = 0x44
RPC_C_AUTHN_LEVEL_NONE = 1
RPC_C_AUTHN_LEVEL_CONNECT = 2
RPC_C_AUTHN_LEVEL_CALL = 3
RPC_C_AUTHN_LEVEL_PKT = 4
RPC_C_AUTHN_LEVEL_PKT_INTEGRITY = 5
RPC_C_AUTHN_LEVEL_PKT_PRIVACY = 6


class PduError(ValueError):
    """Bytes that do not form the PDU their header announces."""


# ------------------------------------------------------------------ records


class SyntaxId(NamedTuple):
    """p_syntax_id_t: an interface or transfer syntax and its version."""

    uuid: UUID
    major: int
    minor: int


NDR20 = SyntaxId(UUID("8a885d04-1ceb-11c9-9fe8-08002b104860"), 2, 0)
NDR64 = SyntaxId(UUID("71710533-beba-4937-8319-b5dbef9ccc36"), 1, 0)
NULL_SYNTAX = SyntaxId(UUID(int=0), 0, 0)
_BTFN_PREFIX = UUID("6cb71c2c-9812-4540-0000-000000000000").bytes[:8]


def bind_time_feature_syntax(features: int) -> SyntaxId:
    """The pseudo transfer syntax 6cb71c2c-9812-4540-XXXX-000000000000 v1.0 for ``features``."""
    raw = _BTFN_PREFIX + struct.pack("<H", features) + bytes(6)
    return SyntaxId(UUID(bytes=raw), 1, 0)


def bind_time_features(syntax: SyntaxId) -> int | None:
    """Feature bits offered by a bind-time-negotiation syntax, or None if it is not one."""
    raw = syntax.uuid.bytes
    if raw[:8] != _BTFN_PREFIX or any(raw[10:]) or (syntax.major, syntax.minor) != (1, 0):
        return None
    return raw[8] | raw[9] << 8


class Header(NamedTuple):
    """The 16-byte common header of every connection-oriented PDU."""

    rpc_vers: int
    rpc_vers_minor: int
    ptype: int
    pfc_flags: int
    drep: bytes
    frag_length: int
    auth_length: int
    call_id: int

    @property
    def little_endian(self) -> bool:
        return bool(self.drep[0] & DREP_INT_LITTLE_ENDIAN)


class AuthVerifier(NamedTuple):
    """sec_trailer plus auth_value (MS-RPCE 2.2.2.11); ``credentials`` is the token."""

    auth_type: int
    auth_level: int
    auth_pad_length: int
    auth_context_id: int
    credentials: bytes


class ContextElem(NamedTuple):
    """p_cont_elem_t: one presentation context proposed in bind/alter_context."""

    context_id: int
    abstract_syntax: SyntaxId
    transfer_syntaxes: tuple[SyntaxId, ...]


class ContextResult(NamedTuple):
    """p_result_t: the answer to one ContextElem, in order."""

    result: int
    reason: int
    transfer_syntax: SyntaxId


class Bind(NamedTuple):
    """bind and alter_context bodies (same layout)."""

    max_xmit_frag: int
    max_recv_frag: int
    assoc_group_id: int
    contexts: tuple[ContextElem, ...]
    auth: AuthVerifier | None = None


class BindAck(NamedTuple):
    """bind_ack and alter_context_resp bodies (same layout)."""

    max_xmit_frag: int
    max_recv_frag: int
    assoc_group_id: int
    secondary_address: bytes  # without the terminating NUL
    results: tuple[ContextResult, ...]
    auth: AuthVerifier | None = None


class BindNak(NamedTuple):
    reason: int
    versions: tuple[tuple[int, int], ...]


class RequestPdu(NamedTuple):
    """One request fragment."""

    alloc_hint: int
    context_id: int
    opnum: int
    object_uuid: UUID | None
    stub: bytes
    auth: AuthVerifier | None = None


class ResponsePdu(NamedTuple):
    """One response fragment."""

    alloc_hint: int
    context_id: int
    cancel_count: int
    stub: bytes
    auth: AuthVerifier | None = None


class FaultPdu(NamedTuple):
    alloc_hint: int
    context_id: int
    cancel_count: int
    flags: int  # MS-RPCE: the C706 "reserved" octet
    status: int
    stub: bytes  # extended error information, if any
    auth: AuthVerifier | None = None


class ControlPdu(NamedTuple):
    """auth3, shutdown, co_cancel, orphaned: a header and at most an auth verifier."""

    auth: AuthVerifier | None = None


Body = Bind | BindAck | BindNak | RequestPdu | ResponsePdu | FaultPdu | ControlPdu

# ------------------------------------------------------------------ structs

_HDR = {True: struct.Struct("<BBBB4sHHL"), False: struct.Struct(">BBBB4sHHL")}
_SEC = {True: struct.Struct("<BBBBL"), False: struct.Struct(">BBBBL")}
#: sec_trailer as we send it: auth type, level, pad length, reserved, context id.
SEC_TRAILER = _SEC[True]
_VER = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_BIND = {True: struct.Struct("<HHLBxxx"), False: struct.Struct(">HHLBxxx")}
_CTX = {True: struct.Struct("<HBx"), False: struct.Struct(">HBx")}
_ACK = {True: struct.Struct("<HHLH"), False: struct.Struct(">HHLH")}
_RES = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_REQ = {True: struct.Struct("<LHH"), False: struct.Struct(">LHH")}
_RSP = {True: struct.Struct("<LHBx"), False: struct.Struct(">LHBx")}
_FLT = {True: struct.Struct("<LHBBL"), False: struct.Struct(">LHBBL")}

# What we send: header + body fixed parts, little-endian, drep as one u32.
_W_HDR = struct.Struct("<BBBBLHHL")
_W_RESP = struct.Struct("<BBBBLHHLLHBB")
_W_FAULT = struct.Struct("<BBBBLHHLLHBBLL")
_W_REQ = struct.Struct("<BBBBLHHLLHH")
_DREP_U32 = 0x10

# ------------------------------------------------------------------ parsing


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """Decode the common header at ``offset``; the integers use the PDU's own drep."""
    if len(data) - offset < COMMON_HEADER_LEN:
        raise PduError("short common header")
    le = bool(data[offset + 4] & DREP_INT_LITTLE_ENDIAN)
    return Header._make(_HDR[le].unpack_from(data, offset))


def syntax_at(data: bytes, off: int, le: bool = True) -> SyntaxId:
    """The p_syntax_id_t (interface uuid, major, minor) at ``off``."""
    return _syntax_from(bytes(data[off : off + 20]), le)


@functools.lru_cache(maxsize=512)
def _syntax_from(raw: bytes, le: bool) -> SyntaxId:
    """Cached: binds repeat the same few syntaxes, and UUID() is the costly part."""
    uuid = UUID(bytes_le=raw[:16]) if le else UUID(bytes=raw[:16])
    major, minor = _VER[le].unpack_from(raw, 16)
    return SyntaxId(uuid, major, minor)


def _checked(data: bytes, hdr: Header | None) -> Header:
    if hdr is None:
        hdr = parse_header(data)
    if hdr.frag_length != len(data) or hdr.frag_length < COMMON_HEADER_LEN:
        raise PduError("frag_length does not match the PDU")
    return hdr


def split_auth(data: bytes, hdr: Header, body_start: int) -> tuple[int, AuthVerifier | None]:
    """End of the body (before auth padding) and the auth verifier, if any."""
    if hdr.auth_length == 0:
        return hdr.frag_length, None
    trailer = hdr.frag_length - hdr.auth_length - SEC_TRAILER_LEN
    if trailer < body_start:
        raise PduError("auth_length exceeds the fragment")
    le = hdr.little_endian
    auth_type, level, pad, _, ctx = _SEC[le].unpack_from(data, trailer)
    end = trailer - pad
    if end < body_start:
        raise PduError("auth_pad_length exceeds the body")
    return end, AuthVerifier(auth_type, level, pad, ctx, bytes(data[trailer + SEC_TRAILER_LEN :]))


def parse_bind(data: bytes, hdr: Header | None = None) -> Bind:
    """bind or alter_context."""
    hdr = _checked(data, hdr)
    le = hdr.little_endian
    if hdr.frag_length < COMMON_HEADER_LEN + 12:
        raise PduError("truncated bind")
    end, auth = split_auth(data, hdr, COMMON_HEADER_LEN + 12)
    max_x, max_r, assoc, n = _BIND[le].unpack_from(data, COMMON_HEADER_LEN)
    off = COMMON_HEADER_LEN + 12
    ctx_s = _CTX[le]
    items = []
    for _ in range(n):
        if off + 24 > end:
            raise PduError("truncated presentation context list")
        ctx_id, n_ts = ctx_s.unpack_from(data, off)
        nxt = off + 24 + 20 * n_ts
        if nxt > end:
            raise PduError("truncated transfer syntax list")
        abstract = syntax_at(data, off + 4, le)
        ts = tuple(syntax_at(data, off + 24 + 20 * i, le) for i in range(n_ts))
        items.append(ContextElem(ctx_id, abstract, ts))
        off = nxt
    return Bind(max_x, max_r, assoc, tuple(items), auth)


def parse_bind_ack(data: bytes, hdr: Header | None = None) -> BindAck:
    """bind_ack or alter_context_resp."""
    hdr = _checked(data, hdr)
    le = hdr.little_endian
    if hdr.frag_length < COMMON_HEADER_LEN + 10:
        raise PduError("truncated bind_ack")
    end, auth = split_auth(data, hdr, COMMON_HEADER_LEN + 10)
    max_x, max_r, assoc, sec_len = _ACK[le].unpack_from(data, COMMON_HEADER_LEN)
    off = COMMON_HEADER_LEN + 10 + sec_len
    sec = bytes(data[COMMON_HEADER_LEN + 10 : off])
    off = (off + 3) & ~3
    if off + 4 > end:
        raise PduError("truncated bind_ack")
    n = data[off]
    off += 4
    if off + 24 * n > end:
        raise PduError("truncated result list")
    res_s = _RES[le]
    results = []
    for o in range(off, off + 24 * n, 24):
        result, reason = res_s.unpack_from(data, o)
        results.append(ContextResult(result, reason, syntax_at(data, o + 4, le)))
    return BindAck(max_x, max_r, assoc, sec.rstrip(b"\0"), tuple(results), auth)


def parse_bind_nak(data: bytes, hdr: Header | None = None) -> BindNak:
    hdr = _checked(data, hdr)
    if hdr.frag_length < COMMON_HEADER_LEN + 2:
        raise PduError("truncated bind_nak")
    (reason,) = _U16[hdr.little_endian].unpack_from(data, COMMON_HEADER_LEN)
    versions: tuple[tuple[int, int], ...] = ()
    if hdr.frag_length > COMMON_HEADER_LEN + 2:
        n = data[COMMON_HEADER_LEN + 2]
        off = COMMON_HEADER_LEN + 3
        if off + 2 * n > hdr.frag_length:
            raise PduError("truncated bind_nak versions")
        versions = tuple((data[o], data[o + 1]) for o in range(off, off + 2 * n, 2))
    return BindNak(reason, versions)


def parse_request(data: bytes, hdr: Header | None = None) -> RequestPdu:
    hdr = _checked(data, hdr)
    le = hdr.little_endian
    start = REQUEST_HEADER_LEN + (16 if hdr.pfc_flags & PFC_OBJECT_UUID else 0)
    if hdr.frag_length < start:
        raise PduError("truncated request header")
    end, auth = split_auth(data, hdr, start)
    alloc_hint, ctx_id, opnum = _REQ[le].unpack_from(data, COMMON_HEADER_LEN)
    obj = None
    if start > REQUEST_HEADER_LEN:
        raw = bytes(data[REQUEST_HEADER_LEN:start])
        obj = UUID(bytes_le=raw) if le else UUID(bytes=raw)
    return RequestPdu(alloc_hint, ctx_id, opnum, obj, bytes(data[start:end]), auth)


def parse_response(data: bytes, hdr: Header | None = None) -> ResponsePdu:
    hdr = _checked(data, hdr)
    if hdr.frag_length < RESPONSE_HEADER_LEN:
        raise PduError("truncated response header")
    end, auth = split_auth(data, hdr, RESPONSE_HEADER_LEN)
    alloc_hint, ctx_id, cancel = _RSP[hdr.little_endian].unpack_from(data, COMMON_HEADER_LEN)
    return ResponsePdu(alloc_hint, ctx_id, cancel, bytes(data[RESPONSE_HEADER_LEN:end]), auth)


def parse_fault(data: bytes, hdr: Header | None = None) -> FaultPdu:
    hdr = _checked(data, hdr)
    if hdr.frag_length < FAULT_LEN:
        raise PduError("truncated fault")
    end, auth = split_auth(data, hdr, FAULT_LEN)
    alloc_hint, ctx_id, cancel, flags, status = _FLT[hdr.little_endian].unpack_from(
        data, COMMON_HEADER_LEN
    )
    return FaultPdu(alloc_hint, ctx_id, cancel, flags, status, bytes(data[FAULT_LEN:end]), auth)


def parse_control(data: bytes, hdr: Header | None = None) -> ControlPdu:
    """auth3 (4 pad octets, then the verifier), shutdown, co_cancel, orphaned."""
    hdr = _checked(data, hdr)
    body = COMMON_HEADER_LEN + (4 if hdr.ptype == PTYPE_AUTH3 else 0)
    if hdr.ptype == PTYPE_AUTH3 and hdr.auth_length == 0:
        raise PduError("auth3 without a verifier")
    _, auth = split_auth(data, hdr, COMMON_HEADER_LEN if hdr.auth_length == 0 else body)
    return ControlPdu(auth)


_PARSERS: dict[int, Callable[[bytes, Header | None], Body]] = {
    PTYPE_BIND: parse_bind,
    PTYPE_ALTER_CONTEXT: parse_bind,
    PTYPE_BIND_ACK: parse_bind_ack,
    PTYPE_ALTER_CONTEXT_RESP: parse_bind_ack,
    PTYPE_BIND_NAK: parse_bind_nak,
    PTYPE_REQUEST: parse_request,
    PTYPE_RESPONSE: parse_response,
    PTYPE_FAULT: parse_fault,
    PTYPE_AUTH3: parse_control,
    PTYPE_SHUTDOWN: parse_control,
    PTYPE_CO_CANCEL: parse_control,
    PTYPE_ORPHANED: parse_control,
}


def parse(data: bytes) -> tuple[Header, Body]:
    """Decode any connection-oriented PDU we know (tests, tools, a future client)."""
    hdr = _checked(data, None)
    parser = _PARSERS.get(hdr.ptype)
    if parser is None:
        raise PduError(f"unknown PTYPE {hdr.ptype}")
    try:
        return hdr, parser(data, hdr)
    except (struct.error, IndexError) as exc:  # belt and braces: bounds are checked above
        raise PduError(str(exc)) from exc


# ----------------------------------------------------------------- encoding


@functools.lru_cache(maxsize=512)
def _syntax_bytes(s: SyntaxId) -> bytes:
    return s.uuid.bytes_le + struct.pack("<HH", s.major, s.minor)


def _finish(
    ptype: int, flags: int, call_id: int, body: bytes, auth: AuthVerifier | None, minor: int
) -> bytes:
    """Header + body + (padding, sec_trailer, token); the pad aligns the trailer to 4."""
    tail = b""
    auth_len = 0
    if auth is not None:
        pad = -(COMMON_HEADER_LEN + len(body)) % 4
        tail = (
            bytes(pad)
            + SEC_TRAILER.pack(auth.auth_type, auth.auth_level, pad, 0, auth.auth_context_id)
            + auth.credentials
        )
        auth_len = len(auth.credentials)
    length = COMMON_HEADER_LEN + len(body) + len(tail)
    if length > MAX_FRAG_SIZE:
        raise ValueError("PDU larger than 65535 bytes")
    head = _W_HDR.pack(RPC_VERS, minor, ptype, flags, _DREP_U32, length, auth_len, call_id)
    return head + body + tail


def encode_bind(
    call_id: int,
    contexts: Sequence[ContextElem],
    *,
    max_xmit_frag: int = 5840,
    max_recv_frag: int = 5840,
    assoc_group_id: int = 0,
    auth: AuthVerifier | None = None,
    ptype: int = PTYPE_BIND,
    flags: int = PFC_FIRST_LAST,
    minor: int = RPC_VERS_MINOR,
) -> bytes:
    parts = [struct.pack("<HHLBxxx", max_xmit_frag, max_recv_frag, assoc_group_id, len(contexts))]
    for c in contexts:
        parts.append(struct.pack("<HBx", c.context_id, len(c.transfer_syntaxes)))
        parts.append(_syntax_bytes(c.abstract_syntax))
        parts.extend(_syntax_bytes(t) for t in c.transfer_syntaxes)
    return _finish(ptype, flags, call_id, b"".join(parts), auth, minor)


encode_alter_context = functools.partial(encode_bind, ptype=PTYPE_ALTER_CONTEXT)


def encode_bind_ack(
    call_id: int,
    *,
    max_xmit_frag: int,
    max_recv_frag: int,
    assoc_group_id: int,
    secondary_address: bytes,
    results: Sequence[ContextResult],
    auth: AuthVerifier | None = None,
    ptype: int = PTYPE_BIND_ACK,
    flags: int = PFC_FIRST_LAST,
    minor: int = RPC_VERS_MINOR,
) -> bytes:
    """``secondary_address`` without NUL; empty encodes as length 0, as Samba does."""
    sec = secondary_address + b"\0" if secondary_address else b""
    head = struct.pack("<HHLH", max_xmit_frag, max_recv_frag, assoc_group_id, len(sec)) + sec
    head += bytes(-(COMMON_HEADER_LEN + len(head)) % 4)
    parts = [head, struct.pack("<Bxxx", len(results))]
    for r in results:
        parts.append(struct.pack("<HH", r.result, r.reason) + _syntax_bytes(r.transfer_syntax))
    return _finish(ptype, flags, call_id, b"".join(parts), auth, minor)


encode_alter_context_resp = functools.partial(encode_bind_ack, ptype=PTYPE_ALTER_CONTEXT_RESP)


def encode_bind_nak(
    call_id: int,
    reason: int,
    *,
    versions: Sequence[tuple[int, int]] = ((RPC_VERS, RPC_VERS_MINOR),),
    minor: int = RPC_VERS_MINOR,
) -> bytes:
    """C706 layout (reason, n, versions), zero-padded to a multiple of 4 like every PDU we send."""
    body = struct.pack("<HB", reason, len(versions))
    body += b"".join(bytes(v) for v in versions)
    body += bytes(-(COMMON_HEADER_LEN + len(body)) % 4)
    return _finish(PTYPE_BIND_NAK, PFC_FIRST_LAST, call_id, body, None, minor)


def encode_request(
    call_id: int,
    context_id: int,
    opnum: int,
    stub: bytes,
    *,
    alloc_hint: int | None = None,
    object_uuid: UUID | None = None,
    flags: int = PFC_FIRST_LAST,
    auth: AuthVerifier | None = None,
    minor: int = RPC_VERS_MINOR,
) -> bytes:
    """One request fragment."""
    hint = len(stub) if alloc_hint is None else alloc_hint
    obj = b""
    if object_uuid is not None:
        flags |= PFC_OBJECT_UUID
        obj = object_uuid.bytes_le
    body = struct.pack("<LHH", hint, context_id, opnum) + obj + stub
    return _finish(PTYPE_REQUEST, flags, call_id, body, auth, minor)


def fragment_request(
    call_id: int,
    context_id: int,
    opnum: int,
    stub: bytes,
    max_frag: int,
    *,
    object_uuid: UUID | None = None,
    minor: int = RPC_VERS_MINOR,
) -> list[bytes]:
    """A call split into request fragments of at most ``max_frag`` bytes (tests, clients)."""
    room = max_frag - REQUEST_HEADER_LEN - (16 if object_uuid else 0)
    if room <= 0:
        raise ValueError("max_frag too small")
    total = len(stub)
    out = []
    off = 0
    while True:
        chunk = stub[off : off + room]
        flags = (PFC_FIRST_FRAG if off == 0 else 0) | (PFC_LAST_FRAG if off + room >= total else 0)
        out.append(
            encode_request(
                call_id, context_id, opnum, chunk, alloc_hint=total - off, flags=flags,
                object_uuid=object_uuid, minor=minor,
            )
        )  # fmt: skip
        off += room
        if off >= total:
            return out


def encode_response(
    call_id: int,
    context_id: int,
    stub: bytes,
    *,
    alloc_hint: int | None = None,
    flags: int = PFC_FIRST_LAST,
    cancel_count: int = 0,
    minor: int = RPC_VERS_MINOR,
) -> bytes:
    """One response fragment."""
    hint = len(stub) if alloc_hint is None else alloc_hint
    head = _W_RESP.pack(
        RPC_VERS, minor, PTYPE_RESPONSE, flags, _DREP_U32, RESPONSE_HEADER_LEN + len(stub), 0,
        call_id, hint, context_id, cancel_count, 0,
    )  # fmt: skip
    return head + stub


def fragment_response(
    call_id: int,
    context_id: int,
    stub: bytes,
    max_frag: int,
    *,
    minor: int = RPC_VERS_MINOR,
    reserve: int = 0,
) -> list[bytes]:
    """Response fragments of at most ``max_frag`` bytes.

    Stub bytes per fragment are a multiple of 16 so that sign/seal padding will
    not change the split; ``reserve`` leaves room for that padding, the
    sec_trailer and the signature.  alloc_hint is the stub left from this
    fragment on (the first carries the total), as Windows and Samba send it.
    """
    total = len(stub)
    room = (max_frag - RESPONSE_HEADER_LEN - reserve) & ~15
    if total <= room:
        return [
            _W_RESP.pack(
                RPC_VERS, minor, PTYPE_RESPONSE, PFC_FIRST_LAST, _DREP_U32,
                RESPONSE_HEADER_LEN + total, 0, call_id, total, context_id, 0, 0,
            ) + stub
        ]  # fmt: skip
    if room <= 0:
        raise ValueError("max_frag too small")
    view = memoryview(stub)
    out = []
    for off in range(0, total, room):
        n = min(room, total - off)
        flags = (PFC_FIRST_FRAG if off == 0 else 0) | (PFC_LAST_FRAG if off + n == total else 0)
        head = _W_RESP.pack(
            RPC_VERS, minor, PTYPE_RESPONSE, flags, _DREP_U32, RESPONSE_HEADER_LEN + n, 0,
            call_id, total - off, context_id, 0, 0,
        )  # fmt: skip
        out.append(head + view[off : off + n])
    return out


def encode_fault(
    call_id: int,
    context_id: int,
    status: int,
    *,
    flags: int = PFC_FIRST_LAST,
    alloc_hint: int = 0,
    cancel_count: int = 0,
    minor: int = RPC_VERS_MINOR,
) -> bytes:
    return _W_FAULT.pack(
        RPC_VERS, minor, PTYPE_FAULT, flags, _DREP_U32, FAULT_LEN, 0, call_id,
        alloc_hint, context_id, cancel_count, 0, status, 0,
    )  # fmt: skip


def encode_auth3(call_id: int, auth: AuthVerifier, *, minor: int = RPC_VERS_MINOR) -> bytes:
    return _finish(PTYPE_AUTH3, PFC_FIRST_LAST, call_id, b"\0" * 4, auth, minor)


def encode_shutdown(call_id: int = 0, *, minor: int = RPC_VERS_MINOR) -> bytes:
    return _finish(PTYPE_SHUTDOWN, PFC_FIRST_LAST, call_id, b"", None, minor)


def encode_co_cancel(
    call_id: int, *, auth: AuthVerifier | None = None, minor: int = RPC_VERS_MINOR
) -> bytes:
    return _finish(PTYPE_CO_CANCEL, PFC_FIRST_LAST, call_id, b"", auth, minor)


def encode_orphaned(
    call_id: int, *, auth: AuthVerifier | None = None, minor: int = RPC_VERS_MINOR
) -> bytes:
    return _finish(PTYPE_ORPHANED, PFC_FIRST_LAST, call_id, b"", auth, minor)
