"""Samba transport: serve ``\\pipe\\FssagentRpc`` for smbd on ``<pipe dir>/fssagentrpc``.

Why a unix socket and no Samba plumbing: smbd hands every named pipe to
whoever listens on that path (``local_np.c``), after a one-shot identity
hand-off (NPA, :mod:`remotevss.samba.npa`), then relays SMB reads and writes
as length-prefixed messages.  So the agent only has to:

* accept root only (smbd connects as euid 0; anyone who can connect could
  forge an identity), and answer the hand-off quickly (smbd blocks on it);
* speak message mode: each incoming message is more bytes of the DCE/RPC
  stream (a PDU may span messages), each outgoing PDU is exactly one message;
* keep the socket: samba-dcerpcd silently replaces it when it starts Samba's
  own rpcd_fsrvp, so ownership is checked at start and every few seconds and
  a loss is logged as an ERROR (see ``docs/samba.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

from remotevss.agent.auth_gate import AuthGate
from remotevss.agent.authz import Caller
from remotevss.agent.service import AgentService
from remotevss.agent.transports.dispatch import serve_connection
from remotevss.dcerpc.connection import Security
from remotevss.samba import npa
from remotevss.samba.pipedir import PIPE_NAME, PipeDirError, ensure_pipe_dir

log = logging.getLogger("remotevss.agent.samba")

HANDSHAKE_TIMEOUT = 5.0
CHECK_INTERVAL = 10.0
MAX_MESSAGE = 0xFFFF
_HELPER_SIDS = (npa.SID_NPA_FLAGS_PREFIX, npa.SID_SAMBA_SMB3_PREFIX)


def caller_from_npa(info: npa.NpaInfo) -> Caller:
    """The SMB user behind the pipe, without Samba's helper SIDs."""
    account = info.account_name or info.unix_name or str(info.uid)
    return Caller(
        uid=info.uid,
        gids=frozenset({info.gid, *info.groups}),
        address=info.remote_client_addr,
        sids=frozenset(s for s in info.sids if not s.startswith(_HELPER_SIDS)),
        privileges=info.privilege_mask,
        name=f"{info.domain_name}\\{account}" if info.domain_name else account,
        transport="samba",
    )


async def read_request(reader: asyncio.StreamReader) -> npa.NpaInfo:
    """Read and decode one NPA request (4-byte big-endian length, then the body)."""
    prefix = await reader.readexactly(4)
    body = await reader.readexactly(npa.request_length(prefix))
    return npa.decode_request(prefix + body)


class MessageLink:
    """Message-mode framing: ``u16 LE length + payload`` both ways."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        try:
            header = await self.reader.readexactly(2)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return b""  # clean end: smbd closed the pipe
        n = int.from_bytes(header, "little")
        if n == 0:  # never sent by smbd; Samba treats it as EIO
            raise ConnectionError("empty pipe message")
        return await self.reader.readexactly(n)

    def write_pdu(self, data: bytes) -> None:
        if not 0 < len(data) <= MAX_MESSAGE:
            raise ValueError(f"a PDU of {len(data)} bytes does not fit one pipe message")
        self.writer.write(len(data).to_bytes(2, "little") + data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def _peer(sock: socket.socket) -> tuple[int, int]:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


class PipeListener:
    """The listener at ``<pipe_dir>/fssagentrpc`` and the watch over it.

    ``owned`` is False once the path no longer holds the socket we bound
    (removed, or replaced, typically by samba-dcerpcd); ``problem`` says why,
    ``last_check`` is when it was last looked at (``time.time()``)."""

    def __init__(
        self,
        service: AgentService,
        pipe_dir: str | Path,
        *,
        check_interval: float = CHECK_INTERVAL,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        security: Callable[[], Security] | None = None,
        gate: AuthGate | None = None,
    ) -> None:
        self.service = service
        self.security = security
        self.gate = gate  # at most gate.size connections authenticate at once
        self.path = Path(pipe_dir) / PIPE_NAME
        self.check_interval = check_interval
        self.handshake_timeout = handshake_timeout
        self.owned = False
        self.problem = "not started"
        self.last_check: float | None = None
        self.handshakes = 0
        self.refused = 0
        self._identity: tuple[int, int] | None = None
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._limit = asyncio.Semaphore(service.config.max_connections)

    async def start(self) -> None:
        ensure_pipe_dir(self.path.parent)
        self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        st = os.lstat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._server = await asyncio.start_unix_server(self._handle, sock=sock, backlog=256)
        self.check()
        self._watch = asyncio.create_task(self._watch_loop())
        log.info("serving \\pipe\\FssagentRpc for smbd on %s", self.path)

    def _clear_stale(self) -> None:
        """Samba unlinks whatever is there; we only replace sockets, and say if one was live."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise PipeDirError(f"{self.path} exists and is not a socket; not touching it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            live = probe.connect_ex(str(self.path)) == 0
        if live:
            log.warning(
                "replacing a live socket at %s: another FSRVP server (Samba's rpcd_fsrvp?) "
                "was serving it; keep it off as docs/samba.md describes",
                self.path,
            )
        self.path.unlink()

    def check(self) -> bool:
        """Is the path still the socket we bound?  Logs an ERROR when that changes."""
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                problem = ""
            elif stat.S_ISSOCK(st.st_mode):
                problem = "replaced by another socket"
            else:
                problem = "replaced by a non-socket"
        except FileNotFoundError:
            problem = "removed"
        except OSError as exc:  # e.g. the directory itself was replaced
            problem = f"cannot be checked: {exc.strerror}"
        self.last_check = time.time()
        was_owned = self.owned
        self.owned = not problem
        self.problem = problem
        if was_owned and not self.owned:
            log.error(
                "%s is no longer our socket (%s): smbd now sends \\pipe\\FssagentRpc elsewhere, "
                "most likely to Samba's own rpcd_fsrvp started by samba-dcerpcd. Keep rpcd_fsrvp "
                "off the socket (docs/samba.md, recipe B or C), then restart the agent.",
                self.path,
                problem,
            )
        elif self.owned and not was_owned and self._identity is not None:
            log.info("%s is our socket", self.path)
        return self.owned

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            self.check()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self.check():  # leave a path that is not ours alone
            self.path.unlink(missing_ok=True)
        self.owned = False
        self.problem = "stopped"

    def status(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "owned": self.owned,
            "problem": self.problem,
            "last_check": self.last_check,
            "handshakes": self.handshakes,
            "refused": self.refused,
        }

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = MessageLink(reader, writer)
        try:
            pid, uid = _peer(writer.get_extra_info("socket"))
            if uid != 0:
                self.refused += 1
                log.warning("refused pid %d uid %d on %s: only smbd (root) may connect",
                            pid, uid, self.path)
                return await link.close()
            if self._limit.locked():
                log.warning("connection limit reached; refusing a pipe open from smbd pid %d", pid)
                return await link.close()
            async with self._limit:
                try:
                    info = await asyncio.wait_for(read_request(reader), self.handshake_timeout)
                except (npa.NpaError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    self.refused += 1
                    log.warning("refused a bad NPA hand-off from pid %d: %s",
                                pid, str(exc) or type(exc).__name__)
                    return await link.close()
                writer.write(npa.encode_reply(info.level))
                self.handshakes += 1
                caller = caller_from_npa(info)
                log.debug("pipe opened by %s from %s (smbd pid %d, NPA level %d)",
                          caller.name, caller.address, pid, info.level)
                await serve_connection(self.service, caller, link, self.security, self.gate)
        except (ConnectionError, OSError) as exc:
            log.debug("pipe connection ended: %s", exc)
            await link.close()
        except Exception:  # one connection's bug must not stop the listener
            log.exception("internal error on a pipe connection")
            await link.close()
