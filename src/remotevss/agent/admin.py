"""The admin channel: newline-delimited JSON on a unix socket next to the FSRVP one.

Why a socket and not a status file the agent rewrites: a file says what the
agent thought some seconds ago, even after it wedged or died, while a request
that gets an answer proves the event loop is alive *now*; and ``storage
resize`` and ``gc run`` are commands, which a file cannot carry.  Why not
FSRVP: its 13 opnums are the protocol, and a private opnum on the same
interface would be answered by nothing else and confuse every other client.

The socket is ``<socket>.admin`` ([agent] admin_socket), mode 0660 root:
``socket_group``, like the FSRVP socket: who may run a shadow copy sequence
may read the status.  Requests that change something (``resize``, ``gc``)
are root-only (SO_PEERCRED).

Protocol: one JSON object per line each way: ``{"op": "status"}`` ->
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from remotevss.agent.config import group_id

log = logging.getLogger("remotevss.agent.admin")

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any], int], Awaitable[Any]]


class AdminError(Exception):
    """A request the agent refuses; the message goes back to the client."""


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


async def serve_admin(path: str, group: str, handler: Handler) -> asyncio.Server:
    """Listen on ``path`` (replacing a stale socket), mode 0660 root:group."""
    sock_path = Path(path)
    sock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with contextlib.suppress(FileNotFoundError):
        if sock_path.is_socket():
            sock_path.unlink()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = _peer_uid(writer.get_extra_info("socket"))
            while line := await reader.readline():
                writer.write(await _answer(line, uid, handler))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    old = os.umask(0o117)
    try:
        server = await asyncio.start_unix_server(handle, path=str(sock_path), limit=MAX_REQUEST)
    finally:
        os.umask(old)
    if os.geteuid() == 0:
        os.chown(sock_path, 0, group_id(group))
    os.chmod(sock_path, 0o660)
    return server


async def _answer(line: bytes, uid: int, handler: Handler) -> bytes:
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise AdminError('a request is a JSON object with an "op"')
        reply: dict[str, Any] = {"ok": True, "result": await handler(request, uid)}
    except AdminError as exc:
        reply = {"ok": False, "error": str(exc)}
    except ValueError as exc:
        reply = {"ok": False, "error": f"bad request: {exc}"}
    except Exception as exc:  # a bug costs one request, not the agent
        log.exception("admin request failed")
        reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
    return json.dumps(reply, default=str).encode() + b"\n"


class AgentUnreachable(Exception):
    """No agent answers on the admin socket."""


class AdminPermissionDenied(Exception):
    """The admin socket is there but this user may not connect to it (not root, not in
    ``socket_group``): not "agent down", which monitoring must not be told."""


def _denied(path: str) -> AdminPermissionDenied:
    group = ""
    with contextlib.suppress(OSError, KeyError):
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
    who = f"root and the group {group!r} ([agent] socket_group)" if group else \
        "root and [agent] socket_group"
    return AdminPermissionDenied(f"permission denied on {path}: the admin socket is for {who}; "
                                 "run as root or as a member of that group")


def request(path: str, op: str, timeout: float = 30.0, **args: Any) -> Any:
    """One request to a running agent (blocking); raises AdminError, AgentUnreachable
    or AdminPermissionDenied."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except PermissionError as exc:
            raise _denied(path) from exc
        except OSError as exc:
            raise AgentUnreachable(f"no agent on {path}: {exc.strerror or exc}") from exc
        try:
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise AgentUnreachable(f"the agent on {path} closed the connection")
                buf += chunk
        except TimeoutError as exc:
            raise AgentUnreachable(f"the agent on {path} did not answer in {timeout:g} s") from exc
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise AdminError(str(reply.get("error")))
    return reply.get("result")
