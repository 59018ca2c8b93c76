"""The verification trailer (MS-RPCE 2.2.2.13): checked the way Windows and Samba check it.

Why: clients (Windows, Samba since 2016) append a trailer to request stubs that
repeats what the call is meant to be: the header fields (call id, context,
opnum, data representation), the presentation context (interface and transfer
syntax) and whether the client offered header signing.  On an authenticated
association it is covered by the signature, so a mismatch means a confused or
tampered call (e.g. a man in the middle rewriting the unsigned parts of a PDU
where the header is not signed, or a header-signing downgrade).  Such calls
are refused with access denied; a stub without a trailer is fine.

Where the trailer is: it starts, 4-aligned, with an 8-byte magic after the
NDR data; like Samba we take the last 4-aligned occurrence of the magic.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from remotevss.dcerpc import pdu

MAGIC = bytes.fromhex("8ae3137102f43671")
CMD_BITMASK_1, CMD_PCONTEXT, CMD_HEADER2 = 0x0001, 0x0002, 0x0003
CMD_END, CMD_MUST_PROCESS = 0x4000, 0x8000
CLIENT_SUPPORTS_HEADER_SIGNING = 0x1
_CMD = struct.Struct("<HH")
_MAX_COMMANDS = 64


@dataclass(frozen=True)
class CallFacts:
    """What the trailer must agree with."""

    call_id: int
    context_id: int
    opnum: int
    drep: bytes
    abstract: pdu.SyntaxId
    transfer: pdu.SyntaxId
    header_signing: bool  # the client offered PFC_SUPPORT_HEADER_SIGN at bind


def find(stub: bytes) -> int | None:
    """Offset of the trailer in ``stub`` (the last 4-aligned magic), or None."""
    at = stub.rfind(MAGIC)
    while at >= 0 and at % 4:
        at = stub.rfind(MAGIC, 0, at + len(MAGIC) - 1)
    return at if at >= 0 else None


def check(stub: bytes, facts: CallFacts) -> str | None:
    """None if ``stub`` has no trailer or a consistent one; else why not."""
    at = find(stub)
    if at is None:
        return None
    off = at + len(MAGIC)
    for _ in range(_MAX_COMMANDS):
        if off + _CMD.size > len(stub):
            return "truncated verification trailer"
        command, length = _CMD.unpack_from(stub, off)
        off += _CMD.size
        body = stub[off : off + length]
        if len(body) != length:
            return "truncated verification trailer command"
        off += length
        kind = command & 0x3FFF
        if kind == CMD_BITMASK_1:
            if length != 4:
                return "bad bitmask1 length"
            (bits,) = struct.unpack("<L", body)
            if bits & CLIENT_SUPPORTS_HEADER_SIGNING and not facts.header_signing:
                return "trailer claims header signing the bind did not offer"
        elif kind == CMD_PCONTEXT:
            if length != 40:
                return "bad pcontext length"
            named = (pdu.syntax_at(body, 0), pdu.syntax_at(body, 20))
            if named != (facts.abstract, facts.transfer):
                return "trailer names another presentation context"
        elif kind == CMD_HEADER2:
            if length != 16:
                return "bad header2 length"
            ptype, drep, call_id, ctx, opnum = struct.unpack("<B3x4sLHH", body)
            if (ptype, drep, call_id, ctx, opnum) != (
                pdu.PTYPE_REQUEST, facts.drep, facts.call_id, facts.context_id, facts.opnum,
            ):  # fmt: skip
                return "trailer header2 does not match the request"
        elif command & CMD_MUST_PROCESS:
            return f"unknown must-process trailer command {kind:#x}"
        if command & CMD_END:
            return None if off == len(stub) else "bytes after the trailer's last command"
    return "verification trailer without an end"

