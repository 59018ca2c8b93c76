"""An agent with its operations layer, in-process, on its own event loop thread.

Why in-process for the operations tests: the clock must be injected (orphan
and age rules measured in days run in milliseconds), and the GC, storage and
status objects are inspected directly; the FSRVP calls still go through the
real unix socket with impacket's client, and the admin requests through the
real admin socket and the ``remotevss`` command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from remotevss.agent.config import AgentConfig, ShareConfig
from remotevss.agent.ops import Operations
from remotevss.agent.service import AgentService
from remotevss.agent.transports.samba_pipe import PipeListener
from remotevss.agent.transports.unix import serve_unix
from remotevss.client.local import LocalClient
from remotevss.fsrvp.constants import HResult

T = TypeVar("T")
ZERO = HResult.ZERO


@dataclass
class FakeClock:
    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Agent:
    service: AgentService
    ops: Operations
    loop: asyncio.AbstractEventLoop
    clock: FakeClock
    pipe: PipeListener | None = None
    servers: list[asyncio.Server] = field(default_factory=list)

    @property
    def config(self) -> AgentConfig:
        return self.service.config

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self) -> LocalClient:
        return LocalClient(self.config.socket_path)

    @property
    def admin_socket(self) -> str:
        return self.config.admin_socket_path

    def exposed(self) -> set[str]:
        d = Path(self.config.expose_dir)
        return {p.name for p in d.iterdir() if p.is_symlink()} if d.is_dir() else set()


def unc(share: str) -> str:
    return f"\\\\testfs\\{share}\\"


def sequence(
    a: Agent, share: str, context: int, *, finish: bool = True
) -> tuple[UUID, UUID, str]:
    """SetContext .. Expose (.. RecoveryComplete when ``finish``): (set, copy, share name)."""
    with a.client() as c:
        assert c.set_context(context).return_value == ZERO
        r = c.start(uuid.uuid4())
        assert r.return_value == ZERO, hex(r.return_value)
        sid = r.shadow_copy_set_id
        r2 = c.add(sid, unc(share))
        assert r2.return_value == ZERO, hex(r2.return_value)
        cid = r2.shadow_copy_id
        assert c.prepare(sid).return_value == ZERO
        rc = c.commit(sid).return_value
        assert rc == ZERO, hex(rc)
        assert c.expose(sid).return_value == ZERO
        m = c.get_share_mapping(cid, sid, unc(share))
        assert m.return_value == ZERO
        name = m.mapping.shadow_copy_share_name
        if finish:
            assert c.recovery_complete(sid).return_value == ZERO
    return sid, cid, name


@contextlib.contextmanager
def running_agent(
    tmp_path: Path,
    shares: dict[str, Path],
    *,
    pipe_dir: Path | None = None,
    reload_to: list[AgentConfig] | None = None,
    backend: str = "copy",
    **config_kw: Any,
) -> Iterator[Agent]:
    """Serve ``shares`` (copy backend) with an Operations layer; ``reload_to`` holds
    the config the next SIGHUP-equivalent ``ops.reload()`` switches to."""
    config = AgentConfig(
        socket_path=str(tmp_path / "agent.sock"),
        state_dir=str(tmp_path / "state"),
        expose_dir=str(tmp_path / "exposed"),
        netbios_name="TESTFS",
        backend=backend,
        shares=tuple(ShareConfig(n, str(p)) for n, p in shares.items()),
        **config_kw,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    clock = FakeClock()

    async def up() -> Agent:
        service = AgentService(config, clock=clock)
        reload = (lambda: reload_to[-1]) if reload_to is not None else None
        ops = Operations(service, reload=reload)
        await service.start()
        server = await serve_unix(service, config.socket_path)
        pipe = None
        if pipe_dir is not None:
            pipe = PipeListener(service, pipe_dir, check_interval=0.05)
            await pipe.start()
        await ops.start(pipe)
        return Agent(service, ops, loop, clock, pipe, [server])

    async def down(a: Agent) -> None:
        if a.pipe is not None:
            await a.pipe.close()
        for s in a.servers:
            s.close()
            await s.wait_closed()
        await a.ops.stop()
        await a.service.close()

    try:
        agent = asyncio.run_coroutine_threadsafe(up(), loop).result(30)
        try:
            yield agent
        finally:
            agent.run(down(agent))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
