"""The typed FSRVP call layer, shared by every client transport.

Why a base class: the local unix-socket client (:mod:`remotevss.client.local`)
and the SMB client (:mod:`remotevss.client.connection`) drive the same 13
calls over an impacket ``DCERPC_v5`` binding; only how the binding is made and
how transport failures are reported differ.  :class:`FsrvpCalls` holds the
per-opnum methods (in the spec's client-sequence order) over one method,
:meth:`FsrvpCalls._exchange`, which subclasses may wrap.

Two levels:

* the per-opnum methods (``set_context``, ``start``, ...) and :meth:`call`
  return the typed response *without* checking its return value -- tests
  and benchmarks look at every code;
* :meth:`checked` raises the typed :class:`~remotevss.client.errors.FsrvpError`
  for a non-zero return, as the high-level API (:mod:`remotevss.client.shadow`)
  wants.
"""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID

from remotevss.client.errors import AccessDeniedError, fsrvp_error
from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import HResult

R = TypeVar("R")

#: MS-FSRVP's client timeouts (<11>-<13>), in milliseconds.
PREPARE_TIMEOUT_MS = 1_800_000
COMMIT_TIMEOUT_MS = 60_000
EXPOSE_TIMEOUT_MS = 1_800_000


def _typed(cls: type[R], resp: calls.Response) -> R:
    if not isinstance(resp, cls):  # pragma: no cover - decode_response picks the class by opnum
        raise TypeError(f"expected {cls.__name__}, got {type(resp).__name__}")
    return resp


def check(resp: R, opnum: int, detail: str = "") -> R:
    """``resp`` if its return value is ZERO, else raise the typed FsrvpError."""
    rv = int(getattr(resp, "return_value", 0))
    if rv != HResult.ZERO:
        raise fsrvp_error(opnum, rv, detail)
    return resp


class FsrvpCalls:
    """The 13 FSRVP calls over ``self._dce``, a bound impacket ``DCERPC_v5``."""

    _dce: Any

    def _exchange(self, opnum: int, stub: bytes) -> bytes:
        """One request/response; subclasses translate transport errors here."""
        self._dce.call(opnum, stub)
        return bytes(self._dce.recv())

    def call(self, request: calls.Request) -> calls.Response:
        """Send one typed request, return the typed response (return_value not checked)."""
        stub = self._exchange(request.opnum, calls.encode_request(request))
        return calls.decode_response(request.opnum, stub)

    def raw(self, opnum: int, stub: bytes) -> bytes:
        return self._exchange(opnum, stub)

    def checked(self, request: calls.Request, detail: str = "") -> calls.Response:
        """Like :meth:`call`, but a non-zero return raises the typed FsrvpError
        (an access refusal says at which auth level the binding was)."""
        try:
            return check(self.call(request), request.opnum, detail)
        except AccessDeniedError as exc:
            exc.auth_level = getattr(self, "negotiated_auth_level", None)
            raise

    # The calls in the spec's client sequence order (return values not checked).
    def get_supported_version(self) -> calls.GetSupportedVersionResponse:
        return _typed(
            calls.GetSupportedVersionResponse, self.call(calls.GetSupportedVersionRequest())
        )

    def is_path_supported(self, unc: str) -> calls.IsPathSupportedResponse:
        return _typed(calls.IsPathSupportedResponse, self.call(calls.IsPathSupportedRequest(unc)))

    def is_path_shadow_copied(self, unc: str) -> calls.IsPathShadowCopiedResponse:
        return _typed(
            calls.IsPathShadowCopiedResponse, self.call(calls.IsPathShadowCopiedRequest(unc))
        )

    def set_context(self, context: int) -> calls.SetContextResponse:
        return _typed(calls.SetContextResponse, self.call(calls.SetContextRequest(context)))

    def start(self, client_set_id: UUID) -> calls.StartShadowCopySetResponse:
        return _typed(
            calls.StartShadowCopySetResponse,
            self.call(calls.StartShadowCopySetRequest(client_set_id)),
        )

    def add(
        self, set_id: UUID, unc: str, client_copy_id: UUID | None = None
    ) -> calls.AddToShadowCopySetResponse:
        return _typed(
            calls.AddToShadowCopySetResponse,
            self.call(calls.AddToShadowCopySetRequest(client_copy_id or UUID(int=1), set_id, unc)),
        )

    def prepare(
        self, set_id: UUID, timeout_ms: int = PREPARE_TIMEOUT_MS
    ) -> calls.PrepareShadowCopySetResponse:
        return _typed(
            calls.PrepareShadowCopySetResponse,
            self.call(calls.PrepareShadowCopySetRequest(set_id, timeout_ms)),
        )

    def commit(
        self, set_id: UUID, timeout_ms: int = COMMIT_TIMEOUT_MS
    ) -> calls.CommitShadowCopySetResponse:
        return _typed(
            calls.CommitShadowCopySetResponse,
            self.call(calls.CommitShadowCopySetRequest(set_id, timeout_ms)),
        )

    def expose(
        self, set_id: UUID, timeout_ms: int = EXPOSE_TIMEOUT_MS
    ) -> calls.ExposeShadowCopySetResponse:
        return _typed(
            calls.ExposeShadowCopySetResponse,
            self.call(calls.ExposeShadowCopySetRequest(set_id, timeout_ms)),
        )

    def get_share_mapping(
        self, copy_id: UUID, set_id: UUID, unc: str, level: int = 1
    ) -> calls.GetShareMappingResponse:
        return _typed(
            calls.GetShareMappingResponse,
            self.call(calls.GetShareMappingRequest(copy_id, set_id, unc, level)),
        )

    def recovery_complete(self, set_id: UUID) -> calls.RecoveryCompleteShadowCopySetResponse:
        return _typed(
            calls.RecoveryCompleteShadowCopySetResponse,
            self.call(calls.RecoveryCompleteShadowCopySetRequest(set_id)),
        )

    def abort(self, set_id: UUID) -> calls.AbortShadowCopySetResponse:
        return _typed(
            calls.AbortShadowCopySetResponse, self.call(calls.AbortShadowCopySetRequest(set_id))
        )

    def delete_share_mapping(
        self, set_id: UUID, copy_id: UUID, unc: str
    ) -> calls.DeleteShareMappingResponse:
        return _typed(
            calls.DeleteShareMappingResponse,
            self.call(calls.DeleteShareMappingRequest(set_id, copy_id, unc)),
        )
