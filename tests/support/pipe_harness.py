"""Run a PipeListener in-process and play smbd against it (tests only).

Why a thread with its own event loop: tests drive the socket with plain
blocking calls, as smbd does, while the listener and the agent service run
undisturbed on their loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from remotevss.agent.authz import Policy
from remotevss.agent.config import AgentConfig
from remotevss.agent.service import AgentService
from remotevss.agent.transports.samba_pipe import PipeListener
from remotevss.dcerpc import pdu
from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import INTERFACE_UUID
from tests.support.npa_build import build_request

T = TypeVar("T")
FSRVP = pdu.SyntaxId(INTERFACE_UUID, 1, 0)


@dataclass
class Served:
    listener: PipeListener
    service: AgentService
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    @property
    def path(self) -> Path:
        return self.listener.path


@contextlib.contextmanager
def serve_listener(
    tmp_path: Path, policy: Policy | None = None, pipe_dir: Path | None = None, **kw: Any
) -> Iterator[Served]:
    config = AgentConfig(
        socket_path=str(tmp_path / "agent.sock"),
        state_dir=str(tmp_path / "state"),
        expose_dir=str(tmp_path / "exposed"),
        netbios_name="TESTFS",
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def up() -> Served:
        service = AgentService(config, policy=policy)
        await service.start()
        listener = PipeListener(service, pipe_dir or tmp_path / "ncalrpc" / "np", **kw)
        await listener.start()
        return Served(listener, service, loop)

    try:
        served = asyncio.run_coroutine_threadsafe(up(), loop).result(10)
        try:
            yield served
        finally:
            served.run(served.listener.close())
            served.run(served.service.close())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def send_msg(s: socket.socket, payload: bytes) -> None:
    s.sendall(len(payload).to_bytes(2, "little") + payload)


def recv_msg(s: socket.socket) -> bytes:
    return recv_exact(s, int.from_bytes(recv_exact(s, 2), "little"))


def open_pipe(path: Path, blob: bytes | None = None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    s.sendall(blob if blob is not None else build_request())
    return s


def bind(s: socket.socket) -> None:
    send_msg(s, pdu.encode_bind(1, [pdu.ContextElem(0, FSRVP, (pdu.NDR20,))]))
    hdr, _ = pdu.parse(recv_msg(s))
    assert hdr.ptype == pdu.PTYPE_BIND_ACK


def call(s: socket.socket, req: calls.Request, call_id: int = 2) -> calls.Response:
    send_msg(s, pdu.encode_request(call_id, 0, req.opnum, calls.encode_request(req)))
    msg = recv_msg(s)
    hdr, body = pdu.parse(msg)
    assert hdr.frag_length == len(msg)  # one PDU per message
    assert isinstance(body, pdu.ResponsePdu), body
    return calls.decode_response(req.opnum, body.stub)


def assert_closed_without_reply(s: socket.socket) -> None:
    with contextlib.suppress(ConnectionResetError):
        assert s.recv(64) == b""


