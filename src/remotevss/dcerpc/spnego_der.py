"""SPNEGO's two tokens in DER (RFC 4178 4.2, MS-SPNG 2.2): read NegTokenInit, write NegTokenResp.

Why our own: see :mod:`ntlm_crypto` (pyspnego's package costs the agent ~11 MB
resident).  The acceptor needs a small subset: the offered mechanisms (and
their DER as sent, which the mechListMIC covers), the optimistic token, the
client's NegTokenResp fields; and one reply shape.  Definite lengths only,
tag numbers below 31, unknown fields of the extensible sequences skipped.
tests/unit/test_ntlm_primitives.py checks both directions byte for byte
against pyspnego.
"""

from __future__ import annotations

from dataclasses import dataclass

SPNEGO_OID = "1.3.6.1.5.5.2"
NTLM_OID = "1.3.6.1.4.1.311.2.2.10"
# negState (RFC 4178 4.2.2)
ACCEPT_COMPLETE = 0
ACCEPT_INCOMPLETE = 1
REJECT = 2
REQUEST_MIC = 3

_SEQUENCE = 0x30
_OID = 0x06
_OCTETS = 0x04
_ENUMERATED = 0x0A
_APPLICATION_0 = 0x60  # GSS-API InitialContextToken (RFC 2743 3.1)
_CTX = 0xA0  # context-specific, constructed: [n] is _CTX | n


class DerError(ValueError):
    """A token that is not the DER SPNEGO expects."""


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the element at ``at``."""
    if at + 2 > len(data):
        raise DerError("truncated DER element")
    tag, first = data[at], data[at + 1]
    if tag & 0x1F == 0x1F:
        raise DerError("DER tag number above 30")
    at += 2
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 4 or at + count > len(data):
            raise DerError("bad DER length")
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    else:
        length = first
    if at + length > len(data):
        raise DerError("DER value beyond the token")
    return tag, at, at + length


def _one(data: bytes, tag: int) -> bytes:
    """The value of ``data``, which must be exactly one element of ``tag``."""
    got, start, end = _tlv(data, 0)
    if got != tag or end != len(data):
        raise DerError(f"expected one DER element of tag 0x{tag:02x}")
    return data[start:end]


def _elements(data: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(data):
        tag, start, end = _tlv(data, at)
        out.append((tag, data[start:end]))
        at = end
    return out


def _fields(seq: bytes) -> dict[int, bytes]:
    """A SEQUENCE of [n]-tagged fields: n -> the field's contents (one element)."""
    fields: dict[int, bytes] = {}
    for tag, value in _elements(_one(seq, _SEQUENCE)):
        if tag & 0xE0 != _CTX:
            raise DerError("SPNEGO field without a context tag")
        if tag & 0x1F in fields:
            raise DerError("SPNEGO field repeated")
        fields[tag & 0x1F] = value
    return fields


def decode_oid(value: bytes) -> str:
    if not value or value[-1] & 0x80:
        raise DerError("bad OBJECT IDENTIFIER")
    arcs, n, start = [], 0, True
    for byte in value:
        if start and byte == 0x80:
            raise DerError("OBJECT IDENTIFIER arc not minimal")
        n = n << 7 | byte & 0x7F
        start = not byte & 0x80
        if start:
            arcs.append(n)
            n = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _encode(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def encode_oid(oid: str) -> bytes:
    arcs = [int(a) for a in oid.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"bad OBJECT IDENTIFIER {oid!r}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | arc & 0x7F)
        out += bytes(reversed(chunk))
    return _encode(_OID, bytes(out))


def mech_type_list(oids: list[str]) -> bytes:
    """The DER MechTypeList (what a mechListMIC covers when built, not received)."""
    return _encode(_SEQUENCE, b"".join(encode_oid(o) for o in oids))


def _octets(value: bytes) -> bytes:
    return _one(value, _OCTETS)


@dataclass(frozen=True)
class NegTokenInit:
    mech_types: list[str]
    mech_types_der: bytes  # the MechTypeList as the client encoded it
    mech_token: bytes | None


@dataclass(frozen=True)
class NegTokenResp:
    neg_state: int | None
    supported_mech: str | None
    response_token: bytes | None
    mech_list_mic: bytes | None


def _neg_token_init(body: bytes) -> NegTokenInit:
    fields = _fields(body)
    if 0 not in fields:
        raise DerError("NegTokenInit without mechTypes")
    mech_types = []
    for tag, value in _elements(_one(fields[0], _SEQUENCE)):
        if tag != _OID:
            raise DerError("mechTypes holds something other than OIDs")
        mech_types.append(decode_oid(value))
    token = _octets(fields[2]) if 2 in fields else None
    return NegTokenInit(mech_types, fields[0], token)


def _neg_token_resp(body: bytes) -> NegTokenResp:
    fields = _fields(body)
    state = None
    if 0 in fields:
        value = _one(fields[0], _ENUMERATED)
        if len(value) != 1 or value[0] > REQUEST_MIC:
            raise DerError("bad negState")
        state = value[0]
    mech = decode_oid(_one(fields[1], _OID)) if 1 in fields else None
    token = _octets(fields[2]) if 2 in fields else None
    mic = _octets(fields[3]) if 3 in fields else None
    return NegTokenResp(state, mech, token, mic)


def unpack(token: bytes) -> NegTokenInit | NegTokenResp:
    """A client's SPNEGO token: NegTokenInit (in its InitialContextToken, or bare) or
    NegTokenResp; DerError for anything else."""
    tag, start, end = _tlv(token, 0)
    if end != len(token):
        raise DerError("bytes after the SPNEGO token")
    if tag == _APPLICATION_0:
        inner = token[start:end]
        _, ostart, oend = _tlv(inner, 0)
        if inner[:1] != bytes([_OID]) or decode_oid(inner[ostart:oend]) != SPNEGO_OID:
            raise DerError("initial token of another mechanism than SPNEGO")
        token = inner[oend:]
        tag, start, end = _tlv(token, 0)
        if end != len(token) or tag != _CTX | 0:
            raise DerError("SPNEGO initial token without NegTokenInit")
    if tag == _CTX | 0:
        return _neg_token_init(token[start:end])
    if tag == _CTX | 1:
        return _neg_token_resp(token[start:end])
    raise DerError("not a SPNEGO token")


def pack_resp(neg_state: int, supported_mech: str | None = None,
              response_token: bytes | None = None, mech_list_mic: bytes | None = None) -> bytes:
    """Our NegTokenResp ([1] SEQUENCE of the fields present)."""  # fmt: skip
    parts = [_encode(_CTX | 0, _encode(_ENUMERATED, bytes([neg_state])))]
    if supported_mech is not None:
        parts.append(_encode(_CTX | 1, encode_oid(supported_mech)))
    if response_token is not None:
        parts.append(_encode(_CTX | 2, _encode(_OCTETS, response_token)))
    if mech_list_mic is not None:
        parts.append(_encode(_CTX | 3, _encode(_OCTETS, mech_list_mic)))
    return _encode(_CTX | 1, _encode(_SEQUENCE, b"".join(parts)))
