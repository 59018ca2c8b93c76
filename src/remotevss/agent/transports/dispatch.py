"""One DCE/RPC connection's loop, shared by every transport.

Why here and not in each transport: framing differs (a byte stream on the
local socket, messages behind smbd) but the rule is the same: feed bytes to
the sans-I/O engine, run each complete call through the service, send what
the engine queued, close when it says so.  No exception from a peer's bytes
may take the agent down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from remotevss.agent.authz import Caller
from remotevss.agent.service import AgentService, CallFault
from remotevss.dcerpc import pdu
from remotevss.dcerpc.connection import AssocGroupAllocator, Interface, ServerConnection
from remotevss.fsrvp.constants import INTERFACE_UUID, INTERFACE_VERSION

log = logging.getLogger("remotevss.agent.conn")

FSRVP_INTERFACE = Interface(INTERFACE_UUID, INTERFACE_VERSION)
ASSOC_GROUPS = AssocGroupAllocator()
READ_SIZE = 65536


async def serve_connection(
    service: AgentService,
    caller: Caller,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    conn = ServerConnection([FSRVP_INTERFACE], assoc_groups=ASSOC_GROUPS)
    try:
        while not conn.closed:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            for request in conn.receive_data(data):
                try:
                    conn.respond(request, await service.call(caller, request.opnum, request.stub))
                except CallFault as fault:
                    conn.fault(request, fault.status)
                except Exception:  # a bug must cost one call, not the agent
                    log.exception("internal error in opnum %d", request.opnum)
                    conn.fault(request, pdu.NCA_S_FAULT_CANT_PERFORM)
            for p in conn.pdus_to_send():
                writer.write(p)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
