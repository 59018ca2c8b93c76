"""A synchronous FSRVP client for the agent's local unix socket.

Why impacket: its DCE/RPC client engine is a peer we did not write, so every
use of this client also checks our server engine against an independent
implementation.  Only the transport (AF_UNIX instead of TCP) is ours; the
typed calls are :class:`~remotevss.client.rpc.FsrvpCalls`, shared with the SMB
client.
"""

from __future__ import annotations

import socket

from impacket.dcerpc.v5 import rpcrt, transport
from impacket.uuid import uuidtup_to_bin

from remotevss.client.rpc import FsrvpCalls
from remotevss.fsrvp.constants import INTERFACE_UUID, INTERFACE_VERSION


class UnixSocketTransport(transport.TCPTransport):  # type: ignore[misc]
    """impacket's stream transport, connected to a unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", 0)
        self._path = path

    def connect(self) -> int:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.get_connect_timeout())
        try:
            s.connect(self._path)
        except OSError as exc:
            s.close()
            raise ConnectionError(f"cannot connect to the agent at {self._path}: {exc}") from exc
        s.settimeout(None)
        self._TCPTransport__socket = s
        return 1


class LocalClient(FsrvpCalls):
    """One bound FSRVP connection to the local agent; each method is one call
    (see :class:`~remotevss.client.rpc.FsrvpCalls`; impacket's exceptions pass through)."""

    def __init__(self, socket_path: str, *, max_fragment: int | None = None) -> None:
        self._transport = UnixSocketTransport(socket_path)
        if max_fragment:
            self._transport.set_max_fragment_size(max_fragment)
        self._dce = self._transport.get_dce_rpc()
        self._dce.connect()
        if max_fragment:
            self._dce.set_max_fragment_size(max_fragment)
        self._dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "{}.{}".format(*INTERFACE_VERSION))))

    def close(self) -> None:
        self._dce.disconnect()

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["FsrvpCalls", "LocalClient", "UnixSocketTransport", "rpcrt"]
