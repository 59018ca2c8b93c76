"""One valid request per opnum: the seeds of every fuzzer and mutation test."""

from __future__ import annotations

import uuid

from remotevss.fsrvp import calls


def sample_requests(set_id: uuid.UUID, copy_id: uuid.UUID) -> list[calls.Request]:
    """The 13 calls in opnum order, naming share0 on host testfs."""
    unc = "\\\\testfs\\share0"
    return [
        calls.GetSupportedVersionRequest(),
        calls.SetContextRequest(0x10),
        calls.StartShadowCopySetRequest(set_id),
        calls.AddToShadowCopySetRequest(copy_id, set_id, unc + "\\"),
        calls.CommitShadowCopySetRequest(set_id, 60_000),
        calls.ExposeShadowCopySetRequest(set_id, 60_000),
        calls.RecoveryCompleteShadowCopySetRequest(set_id),
        calls.AbortShadowCopySetRequest(set_id),
        calls.IsPathSupportedRequest(unc),
        calls.IsPathShadowCopiedRequest(unc),
        calls.GetShareMappingRequest(copy_id, set_id, unc, 1),
        calls.DeleteShareMappingRequest(set_id, copy_id, unc),
        calls.PrepareShadowCopySetRequest(set_id, 1000),
    ]
