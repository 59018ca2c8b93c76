"""10,000 mutated stubs and PDUs against a real agent: no crash, no hang, every input
answered by a response, a fault, or a closed connection; a correct client is served
right after."""

from __future__ import annotations

import random
import socket
import struct
import uuid
from pathlib import Path

import pytest
from impacket.dcerpc.v5.rpcrt import DCERPCException, rpc_status_codes

from remotevss.dcerpc import pdu
from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import CTX_BACKUP, INTERFACE_UUID, HResult
from tests.support.fsrvp_samples import sample_requests
from tests.system.agent_harness import AgentProcess
from tests.system.test_agent import btrfs, full_sequence, make_agent  # noqa: F401

pytestmark = pytest.mark.root

U = uuid.UUID("11111111-2222-3333-4444-555555555555")
V = uuid.UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
SEEDS = sample_requests(U, V)
# impacket reports a fault PDU by the status's name
ALLOWED_FAULTS = {rpc_status_codes[pdu.NCA_S_FAULT_NDR], rpc_status_codes[pdu.NCA_S_OP_RNG_ERROR]}


def valid_bind() -> bytes:
    """A C706 bind PDU for FSRVP 1.0 over NDR20, built by hand (not by our engine)."""
    ctx = struct.pack("<HBB", 0, 1, 0) + INTERFACE_UUID.bytes_le + struct.pack("<HH", 1, 0)
    ctx += uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860").bytes_le + struct.pack("<I", 2)
    body = struct.pack("<HHI", 4280, 4280, 0) + struct.pack("<B3x", 1) + ctx
    hdr = struct.pack("<BBBB4sHHI", 5, 0, 11, 3, b"\x10\0\0\0", 16 + len(body), 0, 1)
    return hdr + body


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        if kind == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif kind == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3 and len(b) >= 4:  # a count/length field gets a wild value
            i = rng.randrange(0, len(b) - 3) & ~3
            b[i : i + 4] = struct.pack(
                "<I", rng.choice([0, 1, 0x7FFF, 0x8000, 0xFFFFFFFF, rng.getrandbits(32)])
            )
        elif kind == 4:
            b = bytearray(rng.randbytes(rng.randint(0, 64)))
        elif kind == 5 and b:
            i = rng.randrange(len(b))
            b[i] = rng.choice([0x00, 0xFF, 0x5C, 0xD8, 0xDC])
    return bytes(b)


def test_mutated_stubs_and_pdus(tmp_path: Path, btrfs: Path) -> None:  # noqa: F811
    a: AgentProcess = make_agent(tmp_path, btrfs, sequence_timeout=0)
    a.start()
    rng = random.Random(20261122)
    answered = faults = reconnects = 0
    try:
        c = a.client()
        c._transport.get_socket().settimeout(10)
        for i in range(9_000):
            seed = rng.choice(SEEDS)
            opnum = seed.opnum if rng.random() < 0.97 else rng.choice([13, 14, 255, 0xFFFF])
            stub = mutate(rng, calls.encode_request(seed))
            try:
                resp = c.raw(opnum, stub)
                calls.decode_response(opnum, resp)  # whatever we answered must decode
                answered += 1
            except DCERPCException as exc:
                assert str(exc) in ALLOWED_FAULTS, (i, str(exc))
                faults += 1
            except (ConnectionError, OSError):
                reconnects += 1
                c = a.client()
            assert a.proc is not None and a.proc.poll() is None, f"agent died at input {i}"
        c.close()
        # 1,000 raw, mutated PDUs on fresh connections: the agent answers or hangs up.
        bind = valid_bind()
        for _ in range(1_000):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(a.socket))
                s.sendall(mutate(rng, bind))
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):  # until the agent hangs up: it must not hang
                    pass
        assert a.proc is not None and a.proc.poll() is None
        # a correct client is served right after
        with a.client() as good:
            good.abort(U)
            assert good.set_context(CTX_BACKUP).return_value in (
                HResult.ZERO,
                HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS,
            )
        a.stop()
        a.start()
        res = full_sequence(a, ["share0"])
        assert res["set"]
    finally:
        a.stop()
    assert answered > 1000 and faults > 1000, (answered, faults, reconnects)
