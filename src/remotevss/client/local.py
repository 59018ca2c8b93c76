"""A synchronous FSRVP client for the agent's local unix socket.

Why impacket: its DCE/RPC client engine is a peer we did not write, so every
use of this client also checks our server engine against an independent
implementation.  Only the transport (AF_UNIX instead of TCP) is ours.
"""

from __future__ import annotations

import socket
from typing import Any
from uuid import UUID

from impacket.dcerpc.v5 import rpcrt, transport
from impacket.uuid import uuidtup_to_bin

from remotevss.fsrvp import calls
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


class LocalClient:
    """One bound FSRVP connection to the local agent; each method is one call."""

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

    def call(self, request: Any) -> Any:
        """Send one typed request, return the typed response (return_value not checked)."""
        self._dce.call(request.opnum, calls.encode_request(request))
        return calls.decode_response(request.opnum, self._dce.recv())

    def raw(self, opnum: int, stub: bytes) -> bytes:
        self._dce.call(opnum, stub)
        return bytes(self._dce.recv())

    # Convenience wrappers in the spec's client sequence order.
    def get_supported_version(self) -> Any:
        return self.call(calls.GetSupportedVersionRequest())

    def is_path_supported(self, unc: str) -> Any:
        return self.call(calls.IsPathSupportedRequest(unc))

    def is_path_shadow_copied(self, unc: str) -> Any:
        return self.call(calls.IsPathShadowCopiedRequest(unc))

    def set_context(self, context: int) -> Any:
        return self.call(calls.SetContextRequest(context))

    def start(self, client_set_id: UUID) -> Any:
        return self.call(calls.StartShadowCopySetRequest(client_set_id))

    def add(self, set_id: UUID, unc: str, client_copy_id: UUID | None = None) -> Any:
        return self.call(
            calls.AddToShadowCopySetRequest(client_copy_id or UUID(int=1), set_id, unc)
        )

    def prepare(self, set_id: UUID, timeout_ms: int = 1_800_000) -> Any:
        return self.call(calls.PrepareShadowCopySetRequest(set_id, timeout_ms))

    def commit(self, set_id: UUID, timeout_ms: int = 60_000) -> Any:
        return self.call(calls.CommitShadowCopySetRequest(set_id, timeout_ms))

    def expose(self, set_id: UUID, timeout_ms: int = 1_800_000) -> Any:
        return self.call(calls.ExposeShadowCopySetRequest(set_id, timeout_ms))

    def get_share_mapping(self, copy_id: UUID, set_id: UUID, unc: str, level: int = 1) -> Any:
        return self.call(calls.GetShareMappingRequest(copy_id, set_id, unc, level))

    def recovery_complete(self, set_id: UUID) -> Any:
        return self.call(calls.RecoveryCompleteShadowCopySetRequest(set_id))

    def abort(self, set_id: UUID) -> Any:
        return self.call(calls.AbortShadowCopySetRequest(set_id))

    def delete_share_mapping(self, set_id: UUID, copy_id: UUID, unc: str) -> Any:
        return self.call(calls.DeleteShareMappingRequest(set_id, copy_id, unc))


__all__ = ["LocalClient", "UnixSocketTransport", "rpcrt"]
