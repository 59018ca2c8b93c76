"""The authentication gate on the real pipe listener: a stalled client cannot keep others out.

With ``[rpc_auth] helpers = 1`` one connection authenticates at a time.  A
client that sends its NTLM NEGOTIATE and then nothing holds the one slot (and,
behind Samba, one ntlm_auth helper) until the leg timeout closes it; the next
client's bind waits on the event loop meanwhile and then completes.  The
credential store is pyspnego's NTLM acceptor (tests/support/ntlm_local.py), a
real NTLMSSP implementation standing in for ntlm_auth.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest
import spnego

from remotevss.agent.auth_gate import AuthGate
from remotevss.dcerpc import pdu
from remotevss.dcerpc.rpc_auth import RpcSecurity
from tests.support.ntlm_local import DOMAIN, PASSWORD, USER, LocalNtlmAcceptor, write_user_file
from tests.support.pipe_harness import (
    FSRVP,
    open_pipe,
    recv_exact,
    recv_msg,
    send_msg,
    serve_listener,
)

LEG_TIMEOUT = 0.6


def ntlm_bind(s: socket.socket) -> tuple[spnego.ContextProxy, bytes]:
    """Send an NTLM bind (NEGOTIATE), return the client and the server's CHALLENGE."""
    client = spnego.client(f"{DOMAIN}\\{USER}", PASSWORD, protocol="ntlm")
    verifier = pdu.AuthVerifier(pdu.RPC_C_AUTHN_WINNT, pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY, 0, 1,
                                client.step() or b"")  # fmt: skip
    send_msg(s, pdu.encode_bind(1, [pdu.ContextElem(0, FSRVP, (pdu.NDR20,))], auth=verifier))
    hdr, body = pdu.parse(recv_msg(s))
    assert hdr.ptype == pdu.PTYPE_BIND_ACK and isinstance(body, pdu.BindAck), body
    assert body.auth is not None
    return client, body.auth.credentials


def test_a_stalled_client_loses_its_slot_and_the_next_bind_completes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    users = write_user_file(tmp_path / "users")
    gate = AuthGate(1, timeout=LEG_TIMEOUT)
    security = lambda: RpcSecurity(lambda: LocalNtlmAcceptor(users))  # noqa: E731
    caplog.set_level(logging.WARNING, logger="remotevss.agent.conn")
    with serve_listener(tmp_path, security=security, gate=gate) as served:
        stalled = open_pipe(served.path)
        recv_exact(stalled, 36)  # the NPA reply
        ntlm_bind(stalled)  # ... and no AUTHENTICATE: it holds the only slot
        assert gate.held == 1
        second = open_pipe(served.path)
        recv_exact(second, 36)
        t0 = time.monotonic()
        client, challenge = ntlm_bind(second)  # waits for the slot
        waited = time.monotonic() - t0
        assert LEG_TIMEOUT * 0.5 < waited < LEG_TIMEOUT * 4, waited
        assert gate.waited == 1
        stalled.settimeout(2)
        assert stalled.recv(64) == b""  # closed by the agent
        token = client.step(challenge) or b""
        verifier = pdu.AuthVerifier(pdu.RPC_C_AUTHN_WINNT, pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY, 0,
                                    1, token)  # fmt: skip
        send_msg(second, pdu.encode_auth3(2, verifier))
        deadline = time.monotonic() + 2
        while gate.held and time.monotonic() < deadline:  # auth3 has no reply
            time.sleep(0.01)
        assert gate.held == 0, "the slot is given back once the authentication is done"
        second.close()
    assert "no authentication leg within" in caplog.text
