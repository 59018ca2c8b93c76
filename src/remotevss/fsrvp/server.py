"""One FSRVP call from request to response around the machine: the pure server step.

Why: the agent (agent/service.py) and the unit tests' fake server
(tests/unit/fsrvp_fake.py) answer the same calls from the same machine.  Which
machine method a request calls, and how its outcome becomes the response
(the ``samba`` reading's ShareNameUNC, the owner name, the exposed share's
name format, the creation FILETIME), is written here once.

Rules of this module
--------------------
* No I/O, no clock (``now`` is passed in), no effects run.  Calls whose result
  depends on an effect (Commit, Expose, RecoveryComplete, DeleteShareMapping)
  are not answered here: :func:`answer` returns None and the caller runs the
  machine's ``begin_*`` / ``finish_*`` pair with its effects.
* Shares are resolved by the caller (file system, Samba) and passed in as
  :class:`ShareInfo`; None means the UNC did not parse (E_INVALIDARG, the
  machine untouched).
* The returned :class:`Outcome` may carry teardown (a SetContext retry or an
  Abort dropped a set, a timer expired): the caller journals and carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast
from uuid import UUID

from remotevss.fsrvp import calls, filetime
from remotevss.fsrvp.constants import HResult
from remotevss.fsrvp.machine import Machine, MappedShare, Mode, Outcome, ShadowCopy
from remotevss.fsrvp.machine import ShadowCopySet as ShadowCopySet
from remotevss.fsrvp.machine import ShareInfo as ShareInfo


@dataclass(frozen=True)
class Names:
    """How this server names itself and its snapshot shares."""

    netbios_name: str  # OwnerMachineName; the host of ShareNameUNC in the samba reading
    share_name_format: str = "bare"  # ShadowCopyShareName: "bare" share@{id}, or "unc"

    def exposed(self, name: str) -> str:
        return f"\\\\{self.netbios_name}\\{name}" if self.share_name_format == "unc" else name


def share_unc(req: calls.Request) -> str | None:
    """The UNC of a request whose share the caller must resolve first (ShareInfo)."""
    if isinstance(
        req,
        calls.AddToShadowCopySetRequest | calls.IsPathSupportedRequest
        | calls.IsPathShadowCopiedRequest,
    ):
        return req.share_name
    return None


def answer(
    m: Machine,
    req: calls.Request,
    now: float,
    client: str,
    names: Names,
    share: ShareInfo | None = None,
    local_share: str | None = None,
) -> tuple[calls.Response, Outcome] | None:
    """The response to every call that runs no effect, and the machine's outcome.

    ``share``: the resolved share of Add / IsPathSupported / IsPathShadowCopied
    (None: the UNC did not parse).  ``local_share``: the share part of
    GetShareMapping's UNC (None if it did not parse).  None for the calls
    with effects."""
    op = req.opnum
    match req:
        case calls.GetSupportedVersionRequest():
            out = m.get_supported_version(now)
            lo, hi = cast(tuple[int, int], out.value)
            return calls.GetSupportedVersionResponse(lo, hi, out.result), out
        case calls.SetContextRequest(context=ctx):
            out = m.set_context(ctx, client, now)
            return calls.SetContextResponse(out.result), out
        case calls.StartShadowCopySetRequest(client_shadow_copy_set_id=cid):
            out = m.start_shadow_copy_set(cid, now)
            if not out.ok:
                return calls.error_response(op, out.result), out
            return calls.StartShadowCopySetResponse(cast(UUID, out.value), out.result), out
        case calls.AddToShadowCopySetRequest(shadow_copy_set_id=sid, share_name=unc):
            if share is None:
                return _unparsed(op)
            out = m.add_to_shadow_copy_set(sid, unc, share, now)
            if not out.ok:
                return calls.error_response(op, out.result), out
            return calls.AddToShadowCopySetResponse(cast(UUID, out.value), out.result), out
        case calls.PrepareShadowCopySetRequest(shadow_copy_set_id=sid):
            out = m.prepare_shadow_copy_set(sid, now)
            return calls.PrepareShadowCopySetResponse(out.result), out
        case calls.AbortShadowCopySetRequest(shadow_copy_set_id=sid):
            out = m.abort_shadow_copy_set(sid, now)
            return calls.AbortShadowCopySetResponse(out.result), out
        case calls.IsPathSupportedRequest():
            if share is None:
                return _unparsed(op)
            out = m.is_path_supported(share, now)
            if not out.ok:
                return calls.error_response(op, out.result), out
            return calls.IsPathSupportedResponse(True, names.netbios_name, out.result), out
        case calls.IsPathShadowCopiedRequest():
            if share is None:
                return _unparsed(op)
            out = m.is_path_shadow_copied(share, now)
            if not out.ok:
                return calls.error_response(op, out.result), out
            present, compat = cast(tuple[bool, int], out.value)
            return calls.IsPathShadowCopiedResponse(present, compat, out.result), out
        case calls.GetShareMappingRequest(
            shadow_copy_id=cid, shadow_copy_set_id=sid, level=level
        ):
            out = m.get_share_mapping(cid, sid, local_share, level, now)
            if not out.ok:
                return calls.error_response(op, out.result, req), out
            s, c, mp = cast(tuple[ShadowCopySet, ShadowCopy, MappedShare], out.value)
            return calls.GetShareMappingResponse(1, mapping(m.mode, names, s, c, mp),
                                                 HResult.ZERO), out
    return None


def _unparsed(op: int) -> tuple[calls.Response, Outcome]:
    """A UNC that does not parse: E_INVALIDARG, the machine untouched."""
    return calls.error_response(op, HResult.E_INVALIDARG), Outcome(HResult.ZERO)


def mapping(
    mode: Mode, names: Names, s: ShadowCopySet, c: ShadowCopy, mp: MappedShare
) -> calls.ShareMapping1:
    """FSSAGENT_SHARE_MAPPING_1 of one mapping.  ShareNameUNC: the client's string as
    supplied, or in the samba reading ``\\\\NETBIOSNAME\\share`` (decisions row 10)."""
    unc = mp.share_name
    if mode is Mode.SAMBA:
        unc = f"\\\\{names.netbios_name}\\{mp.local_share}"
    exposed = names.exposed(mp.exposed_name) if mp.is_exposed else None
    return calls.ShareMapping1(s.id, c.id, unc, exposed, filetime.from_unix(c.creation_time))
