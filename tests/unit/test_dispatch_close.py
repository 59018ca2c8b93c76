"""The agent logs why it closes a connection before the peer can see the end.

Why it matters: a client (or a test) that gets a bind_nak and then reads the
agent's log must find the reason there; logging after the last PDU left made
that a race the Kerberos interop suite lost once in CI.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from remotevss.agent.authz import Caller
from remotevss.agent.transports.dispatch import serve_connection
from remotevss.dcerpc import pdu


class RecordingLink:
    """A link whose peer sends one bind and notes what the log held at each PDU sent."""

    def __init__(self, incoming: bytes, records: list[logging.LogRecord]) -> None:
        self.incoming = [incoming]
        self.records = records
        self.seen_at_write: list[list[str]] = []

    async def read(self) -> bytes:
        return self.incoming.pop() if self.incoming else b""

    def write_pdu(self, data: bytes) -> None:
        self.seen_at_write.append([r.getMessage() for r in self.records])

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        return None


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(
    "bind",
    [
        pdu.encode_bind(7, []),  # no contexts: bind_nak
        pdu.encode_bind(7, [], minor=9),  # unknown minor version: bind_nak or fault
    ],
    ids=["no-contexts", "minor-9"],
)
def test_close_reason_is_logged_before_the_last_pdu_leaves(bind: bytes) -> None:
    handler = ListHandler()
    logger = logging.getLogger("remotevss.agent.conn")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        link = RecordingLink(bind, handler.records)
        caller = Caller(uid=0, address="10.0.0.9", transport="unix")
        asyncio.run(serve_connection(cast(Any, None), caller, link))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    closing = [m for m in (r.getMessage() for r in handler.records) if "closed:" in m]
    assert len(closing) == 1, closing  # one line, not one per PDU or a second at the end
    assert link.seen_at_write, "the agent answered nothing"
    assert closing[0] in link.seen_at_write[-1]
    assert "10.0.0.9" in closing[0]
