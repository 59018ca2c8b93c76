"""systemd's notify protocol (sd_notify(3)) without a dependency: one datagram per state.

Why our own 15 lines: the protocol is "send ``KEY=VALUE`` lines as one
datagram to the AF_UNIX socket named by $NOTIFY_SOCKET" (``@`` = abstract
namespace); libsystemd bindings would add a compiled dependency for that.
Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("remotevss.agent.systemd")


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=serving"``); False if not under systemd."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "/@":
        return False
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), target)
    except OSError as exc:
        log.warning("sd_notify %r to %s failed: %s", state.split("\n", 1)[0], addr, exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), None if no watchdog
    is asked of this process (sd_watchdog_enabled(3): $WATCHDOG_PID must be us if set)."""
    e = os.environ if env is None else env
    pid = e.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(e.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Watchdog:
    """Pings from the event loop itself: a wedged loop stops pinging and systemd
    restarts the agent (WatchdogSec= in the unit)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
