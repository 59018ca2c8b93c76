"""Benchmark: the strict FSRVP codec (fsrvp/calls.py), µs per call.

Why: the codec's docstring quotes these numbers, impacket's in brackets
(tests/unit/test_fsrvp_calls.py checks this script runs for every call).

Usage: .venv/bin/python bench/codec.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from remotevss.fsrvp.calls import (  # noqa: E402
    OPNUM_NAMES,
    AbortShadowCopySetRequest,
    AbortShadowCopySetResponse,
    AddToShadowCopySetRequest,
    AddToShadowCopySetResponse,
    CommitShadowCopySetRequest,
    CommitShadowCopySetResponse,
    DeleteShareMappingRequest,
    DeleteShareMappingResponse,
    ExposeShadowCopySetRequest,
    ExposeShadowCopySetResponse,
    GetShareMappingRequest,
    GetShareMappingResponse,
    GetSupportedVersionRequest,
    GetSupportedVersionResponse,
    IsPathShadowCopiedRequest,
    IsPathShadowCopiedResponse,
    IsPathSupportedRequest,
    IsPathSupportedResponse,
    PrepareShadowCopySetRequest,
    PrepareShadowCopySetResponse,
    RecoveryCompleteShadowCopySetRequest,
    RecoveryCompleteShadowCopySetResponse,
    Request,
    Response,
    SetContextRequest,
    SetContextResponse,
    ShareMapping1,
    StartShadowCopySetRequest,
    StartShadowCopySetResponse,
    decode_request,
    encode_request,
    encode_response,
)
from remotevss.fsrvp.constants import HResult  # noqa: E402


def _typical_calls() -> list[tuple[Request, Response]]:
    set_id = UUID("11111111-2222-3333-4444-555555555555")
    copy_id = UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
    unc = "\\\\FS1\\data\\"
    ok = HResult.ZERO
    mapping = ShareMapping1(
        set_id, copy_id, unc, f"\\\\FS1\\data@{{{copy_id}}}", 133000000000000000
    )
    return [
        (GetSupportedVersionRequest(), GetSupportedVersionResponse(1, 1, ok)),
        (SetContextRequest(0), SetContextResponse(ok)),
        (StartShadowCopySetRequest(set_id), StartShadowCopySetResponse(set_id, ok)),
        (AddToShadowCopySetRequest(copy_id, set_id, unc), AddToShadowCopySetResponse(copy_id, ok)),
        (CommitShadowCopySetRequest(set_id, 60000), CommitShadowCopySetResponse(ok)),
        (ExposeShadowCopySetRequest(set_id, 1800000), ExposeShadowCopySetResponse(ok)),
        (RecoveryCompleteShadowCopySetRequest(set_id), RecoveryCompleteShadowCopySetResponse(ok)),
        (AbortShadowCopySetRequest(set_id), AbortShadowCopySetResponse(ok)),
        (IsPathSupportedRequest(unc), IsPathSupportedResponse(True, "FS1", ok)),
        (IsPathShadowCopiedRequest(unc), IsPathShadowCopiedResponse(True, 1, ok)),
        (
            GetShareMappingRequest(copy_id, set_id, unc, 1),
            GetShareMappingResponse(1, mapping, ok),
        ),
        (DeleteShareMappingRequest(set_id, copy_id, unc), DeleteShareMappingResponse(ok)),
        (PrepareShadowCopySetRequest(set_id, 1800000), PrepareShadowCopySetResponse(ok)),
    ]


def bench_codec(number: int = 20000) -> dict[str, float]:
    """µs per decode_request + encode_response, per call (the docstring's numbers)."""
    result = {}
    for req, resp in _typical_calls():
        env = {
            "d": decode_request,
            "e": encode_response,
            "op": req.opnum,
            "stub": encode_request(req),
            "resp": resp,
        }
        timer = timeit.Timer("d(op, stub); e(resp)", globals=env)
        best = min(timer.repeat(repeat=5, number=number))
        result[OPNUM_NAMES[req.opnum]] = best / number * 1e6
    return result


if __name__ == "__main__":
    for name, us in bench_codec().items():
        print(f"{name:32} {us:6.1f} µs")
