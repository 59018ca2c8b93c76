"""The fuzz targets shared by the soak fuzzer (bench/soak/fuzz.py, atheris) and the
CI corpus replay (tests/hardening/test_fuzz_corpus.py).

Each target takes arbitrary bytes and checks the rules its decoder promises:

* ``npa``: ``remotevss.samba.npa.decode_request`` raises only ``NpaError``; what it
  accepts has a level we can answer (``encode_reply`` works).
* ``dcerpc``: ``ServerConnection.receive_data`` never raises (its module rule: "an
  exception escaping receive_data is our bug"); the bytes are fed in chunks, every
  complete request is answered (response or fault, alternately), every PDU we
  queue parses and is one of ours, and the input buffer stays below one fragment.
* ``stub``: ``calls.decode_request`` / ``decode_response`` for opnums 0..12 raise
  only ``StubError``; what decodes re-encodes, and decodes again to the same value.

"Crash" = any other exception.  "Hang" = one input over ``TIME_BOUND`` seconds
(the soak also runs libFuzzer's ``-timeout``).
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Callable

from remotevss.dcerpc import pdu
from remotevss.dcerpc.connection import AssocGroupAllocator, Interface, ServerConnection
from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import INTERFACE_UUID
from remotevss.samba import npa

TIME_BOUND = 0.5  # seconds per input; typical inputs take 10-200 us
FSRVP_IF = Interface(INTERFACE_UUID, (1, 0))
FSRVP_SYNTAX = pdu.SyntaxId(INTERFACE_UUID, 1, 0)
_ALLOC = AssocGroupAllocator()
OUR_PTYPES = {
    pdu.PTYPE_BIND_ACK,
    pdu.PTYPE_BIND_NAK,
    pdu.PTYPE_ALTER_CONTEXT_RESP,
    pdu.PTYPE_RESPONSE,
    pdu.PTYPE_FAULT,
}


class Hang(AssertionError):
    """One input took longer than TIME_BOUND."""


def target_npa(data: bytes) -> None:
    try:
        info = npa.decode_request(data)
    except npa.NpaError:
        return
    npa.encode_reply(info.level)


def target_dcerpc(data: bytes) -> None:
    """Byte 0: bit 0 = prepend a valid bind (so requests reach the request path);
    bits 1-7 and byte 1: chunk size (1..32768) the rest is fed in."""
    if len(data) < 2:
        return
    flags, chunk = data[0], ((data[0] >> 1) | (data[1] << 7)) % 32768 + 1
    body = data[2:]
    conn = ServerConnection([FSRVP_IF], assoc_groups=_ALLOC)
    if flags & 1:
        conn.receive_data(pdu.encode_bind(1, [pdu.ContextElem(0, FSRVP_SYNTAX, (pdu.NDR20,))]))
        conn.pdus_to_send()
    n = 0
    for off in range(0, len(body), chunk):
        for req in conn.receive_data(body[off : off + chunk]):
            n += 1
            if n % 2:
                conn.respond(req, b"\0" * (req.opnum % 64))
            else:
                conn.fault(req, pdu.NCA_S_FAULT_NDR)
        assert conn.buffered <= conn.recv_frag, (conn.buffered, conn.recv_frag)
        for out in conn.pdus_to_send():
            hdr, _ = pdu.parse(out)
            assert hdr.ptype in OUR_PTYPES, hdr.ptype
            assert hdr.frag_length == len(out) <= conn.xmit_frag or hdr.ptype in (
                pdu.PTYPE_BIND_NAK,
                pdu.PTYPE_BIND_ACK,
            )
        if conn.closed:
            break


def target_stub(data: bytes) -> None:
    """Byte 0: opnum (mod 13, 255 = an unknown opnum); byte 1 bit 0: response."""
    if len(data) < 2:
        return
    opnum = 0xFFFF if data[0] == 255 else data[0] % 13
    stub = data[2:]
    if data[1] & 1:
        try:
            resp = calls.decode_response(opnum, stub)
        except calls.StubError:
            return
        again = calls.decode_response(opnum, calls.encode_response(resp))
        assert again == resp, (resp, again)
    else:
        try:
            req = calls.decode_request(opnum, stub)
        except calls.StubError:
            return
        assert req.opnum == opnum
        again_req = calls.decode_request(opnum, calls.encode_request(req))
        assert again_req == req, (req, again_req)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "npa": target_npa,
    "dcerpc": target_dcerpc,
    "stub": target_stub,
}


def run_one(name: str, data: bytes) -> float:
    """Run one input; return its time; raise Hang past TIME_BOUND."""
    t0 = time.perf_counter()
    TARGETS[name](data)
    dt = time.perf_counter() - t0
    if dt > TIME_BOUND:
        raise Hang(f"{name}: one input took {dt:.3f} s (bound {TIME_BOUND} s)")
    return dt


# ------------------------------------------------------------------ seeds


def seeds() -> dict[str, list[bytes]]:
    """Valid inputs for each target, the starting corpus of the soak."""
    from tests.support.fsrvp_samples import sample_requests
    from tests.support.npa_build import NpaSpec, build_request

    npa_seeds = [
        build_request(NpaSpec(level=7)),
        build_request(NpaSpec(level=5)),
        build_request(NpaSpec(level=8, device_sids=["S-1-5-21-9-9-9-1105"])),
        build_request(NpaSpec(level=7, session_info=False)),
        build_request(NpaSpec(level=7, remote_client_addr="::1", local_server_addr="::1")),
    ]
    u, v = uuid.UUID(int=0x1111), uuid.UUID(int=0x2222)
    reqs = sample_requests(u, v)
    resps: list[calls.Response] = [
        calls.GetSupportedVersionResponse(1, 1, 0),
        calls.SetContextResponse(0),
        calls.StartShadowCopySetResponse(u, 0),
        calls.AddToShadowCopySetResponse(v, 0),
        calls.CommitShadowCopySetResponse(0),
        calls.ExposeShadowCopySetResponse(0),
        calls.RecoveryCompleteShadowCopySetResponse(0),
        calls.AbortShadowCopySetResponse(0),
        calls.IsPathSupportedResponse(True, "TESTFS", 0),
        calls.IsPathShadowCopiedResponse(True, 1, 0),
        calls.GetShareMappingResponse(
            1,
            calls.ShareMapping1(u, v, "\\\\testfs\\share0", "share0@{x}", 133_000_000_000_000_000),
            0,
        ),
        calls.DeleteShareMappingResponse(0),
        calls.PrepareShadowCopySetResponse(0),
    ]
    stub_seeds = [bytes([r.opnum, 0]) + calls.encode_request(r) for r in reqs]
    stub_seeds += [
        bytes([op, 1]) + calls.encode_response(r) for op, r in enumerate(resps)
    ]
    bind = pdu.encode_bind(1, [pdu.ContextElem(0, FSRVP_SYNTAX, (pdu.NDR20,))])
    conv = [
        bind + b"".join(pdu.encode_request(i + 2, 0, r.opnum, calls.encode_request(r))
                        for i, r in enumerate(reqs)),
        b"".join(pdu.fragment_request(3, 0, 3, calls.encode_request(reqs[3]) * 40, 1432)),
        pdu.encode_alter_context(2, [pdu.ContextElem(1, FSRVP_SYNTAX, (pdu.NDR64,))]),
        pdu.encode_co_cancel(4) + pdu.encode_orphaned(5) + pdu.encode_shutdown(),
    ]
    dce_seeds = [struct.pack("<BB", 0, 0x40) + conv[0], struct.pack("<BB", 1, 0x40) + conv[1],
                 struct.pack("<BB", 0x21, 0) + conv[0], struct.pack("<BB", 1, 0) + conv[2],
                 struct.pack("<BB", 1, 1) + conv[3]]
    return {"npa": npa_seeds, "dcerpc": dce_seeds, "stub": stub_seeds}
