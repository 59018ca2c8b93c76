"""One DCE/RPC connection's loop, shared by every transport.

Why here and not in each transport: framing differs (a byte stream on the
local socket, messages behind smbd) but the rule is the same: feed bytes to
the sans-I/O engine, run each complete call through the service, send what
the engine queued, close when it says so.  No exception from a peer's bytes
may take the agent down.  A transport supplies a :class:`Link`: how bytes
arrive and how one PDU leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from remotevss.agent.auth_gate import AuthGate
from remotevss.agent.authz import Caller
from remotevss.agent.service import AgentService, CallFault
from remotevss.dcerpc import pdu
from remotevss.dcerpc.connection import (
    AssocGroupAllocator,
    Interface,
    Security,
    ServerConnection,
)
from remotevss.fsrvp.constants import INTERFACE_UUID, INTERFACE_VERSION

log = logging.getLogger("remotevss.agent.conn")

FSRVP_INTERFACE = Interface(INTERFACE_UUID, INTERFACE_VERSION)
ASSOC_GROUPS = AssocGroupAllocator()
READ_SIZE = 65536


class Link(Protocol):
    """A transport's side of one connection."""

    async def read(self) -> bytes:
        """The next bytes of the DCE/RPC stream; b"" at end of stream."""
        ...

    def write_pdu(self, data: bytes) -> None:
        """Queue one whole PDU (message-mode links send it as one message)."""
        ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...


class StreamLink:
    """A plain byte stream (the local socket): PDUs are framed by their headers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        return await self.reader.read(READ_SIZE)

    def write_pdu(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def serve_connection(
    service: AgentService,
    caller: Caller,
    link: Link,
    security: Callable[[], Security] | None = None,
    gate: AuthGate | None = None,
) -> None:
    """Serve one connection.  With ``security``, binds may authenticate (NTLM, SPNEGO);
    the caller then carries the RPC auth level and user the policy checks.  With
    ``gate``, the connection holds one of its slots while it authenticates."""
    conn = ServerConnection(
        [FSRVP_INTERFACE],
        assoc_groups=ASSOC_GROUPS,
        security=security() if security is not None else None,
    )
    sec = conn.security
    slot = False  # one of gate's slots, held from the first auth leg to its outcome
    try:
        while not conn.closed:
            if slot:
                assert gate is not None
                try:  # the client's next leg; a stalled one must not keep the slot
                    data = await asyncio.wait_for(link.read(), gate.timeout)
                except TimeoutError:
                    log.warning("connection from %s closed: no authentication leg within"
                                " %g s", caller.address, gate.timeout)  # fmt: skip
                    break
            else:
                data = await link.read()
            if not data:
                break
            if sec.pending:  # a bind or auth leg may wait for the credential helper
                if gate is not None and not slot:
                    try:
                        await gate.acquire()
                    except TimeoutError:
                        log.warning("connection from %s closed: no authentication slot"
                                    " within %g s", caller.address, 2 * gate.timeout)  # fmt: skip
                        break
                    slot = True
                requests = await asyncio.to_thread(conn.receive_data, data)
            else:
                requests = conn.receive_data(data)
            if slot and not sec.pending:
                assert gate is not None
                slot = False
                gate.release()
            if sec.auth_level != caller.auth_level:
                caller = _authenticated(service, caller, sec)
            for request in requests:
                try:
                    conn.respond(request, await service.call(caller, request.opnum, request.stub))
                except CallFault as fault:
                    conn.fault(request, fault.status)
                except Exception:  # a bug must cost one call, not the agent
                    log.exception("internal error in opnum %d", request.opnum)
                    conn.fault(request, pdu.NCA_S_FAULT_CANT_PERFORM)
            if conn.closed and conn.close_reason:  # logged before the peer can see the end
                log.info("connection from %s closed: %s", caller.address, conn.close_reason)
            for p in conn.pdus_to_send():
                link.write_pdu(p)
            await link.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        sec.close()
        if slot:
            assert gate is not None
            gate.release()
        await link.close()


def _authenticated(service: AgentService, caller: Caller, sec: Security) -> Caller:
    user = sec.user
    caller = replace(caller, auth_level=sec.auth_level, rpc_user=user)
    refusal = service.policy.refusal(caller)
    log.info(
        "RPC auth from %s: %s at level %d%s",
        caller.address, user or "-", sec.auth_level, f"; refused: {refusal}" if refusal else "",
    )  # fmt: skip
    return caller
