"""Run the agent: reconcile, serve, stop gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from remotevss.agent.config import AgentConfig
from remotevss.agent.service import AgentService
from remotevss.agent.transports.unix import serve_unix

log = logging.getLogger("remotevss.agent")


async def run_agent(config: AgentConfig) -> int:
    service = AgentService(config)
    report = await service.start()
    for line in report.lines():
        print(f"remotevss agent: start-up: {line}", file=sys.stderr)
    server = await serve_unix(service, config.socket_path, config.socket_group)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"remotevss agent: serving FSRVP on {config.socket_path} "
        f"({len(config.shares)} share(s), mode {config.mode.value})",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    log.info("stopping")
    server.close()
    await server.wait_closed()
    await service.close()
    return 0
