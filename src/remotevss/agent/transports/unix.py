"""Local transport: DCE/RPC over a unix stream socket, callers known by SO_PEERCRED.

Why: the agent must be drivable on the file server itself (demo, tests,
local tools) without Samba.  The kernel tells us who is on the other end, so
no DCE/RPC authentication is needed here; the socket is 0660 root:<group>.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import socket
import struct
from pathlib import Path

from remotevss.agent.authz import Caller
from remotevss.agent.config import group_id
from remotevss.agent.service import AgentService
from remotevss.agent.transports.dispatch import StreamLink, serve_connection

log = logging.getLogger("remotevss.agent.unix")


def peer_caller(sock: socket.socket) -> Caller:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    gids = {gid}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                gids.update(int(g) for g in line.split()[1:])
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return Caller(uid=uid, gids=frozenset(gids), address=f"unix:{uid}", name=name, transport="unix")


async def serve_unix(service: AgentService, path: str, group: str = "root") -> asyncio.Server:
    """Listen on ``path`` (replacing a stale socket), mode 0660, owner root:group."""
    sock_path = Path(path)
    sock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with contextlib.suppress(FileNotFoundError):
        if sock_path.is_socket():
            sock_path.unlink()
    limit = asyncio.Semaphore(service.config.max_connections)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if limit.locked():
            log.warning("connection limit reached; refusing a local client")
            writer.close()
            return
        async with limit:
            caller = peer_caller(writer.get_extra_info("socket"))
            await serve_connection(service, caller, StreamLink(reader, writer))

    old = os.umask(0o117)
    try:
        server = await asyncio.start_unix_server(handle, path=str(sock_path))
    finally:
        os.umask(old)
    gid = group_id(group)
    os.chown(sock_path, 0 if os.geteuid() == 0 else -1, gid if os.geteuid() == 0 else -1)
    os.chmod(sock_path, 0o660)
    return server


def socket_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the socket file we just bound, to recognise it at exit."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def unlink_if_ours(path: str, identity: tuple[int, int] | None) -> None:
    """Remove the socket file at exit, unless another process has bound its own
    there since (a second agent started on the same path must keep its socket)."""
    if identity is not None and socket_identity(path) == identity:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
