"""Our FSRVP stubs against Samba's NDR oracle: ``ndrdump FileServerVssAgent fss_<Method>``.

Every dump runs with ``--validate``: Samba parses our bytes, marshals the result
again with its own pidl-generated code and prints a WARNING if the two differ
in any byte (padding and referent ids included).  A clean run therefore proves
the bytes are exactly what a Samba client or server would send.  ndrdump cannot
encode from a textual struct, so this is the only direction we can check
(feeding "ndrdump-made" bytes back is the same thing: they are our bytes).

Samba 4.17 findings, asserted below:

* fss_GetSupportedVersion and fss_IsPathSupported carry no ``magic`` field any
  more (Samba's first IDL mistook the 52-byte verification trailer for one,
  fixed in eca0553d25e): an empty GetSupportedVersion stub parses, and ndrdump
  recognises a trailer after the stub as such ("SEC_VT: consumed 52 bytes"),
  counting only the alignment pad before it as unread.
* The GetShareMapping ``out`` dump needs the ``in`` stub as context (``-c``):
  the union is ``switch_is(Level)`` and Samba rejects a discriminant that
  differs from the request's Level ("Bad Switch").  Our error responses must
  therefore echo the Level (``error_response(..., request)``).
* Samba types CreationTimestamp as NTTIME (unsigned, shown as a date); the spec
  says LONGLONG.  Same bytes.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remotevss.fsrvp import calls
from remotevss.fsrvp.calls import (
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
    SetContextRequest,
    SetContextResponse,
    ShareMapping1,
    StartShadowCopySetRequest,
    StartShadowCopySetResponse,
    encode_request,
    encode_response,
    error_response,
)
from remotevss.fsrvp.constants import INTERFACE_UUID, NDR64_UUID, HResult

NDRDUMP = shutil.which("ndrdump")
pytestmark = pytest.mark.skipif(
    NDRDUMP is None, reason="Samba's ndrdump is not installed (Debian package samba-testsuite)"
)

SET_ID = UUID("11111111-2222-3333-4444-555555555555")
COPY_ID = UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
CLIENT_ID = UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
UNC = "\\\\FS1\\data\\"
EXPOSED = "data@{aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee}"
FT = 133000000000000000  # 2022-06-18 04:26:40 UTC


def ndrdump(
    tmp_path: Path, opnum: int, direction: str, stub: bytes, context: bytes | None = None
) -> str:
    """Run ndrdump --validate on ``stub``; return its output, failing on any error or warning."""
    assert NDRDUMP is not None
    function = "fss_" + calls.OPNUM_NAMES[opnum]
    path = tmp_path / f"{function}.{direction}"
    path.write_bytes(stub)
    argv = [NDRDUMP, "--validate"]
    if context is not None:
        ctx = tmp_path / f"{function}.in.ctx"
        ctx.write_bytes(context)
        argv += ["-c", str(ctx)]
    argv += ["FileServerVssAgent", function, direction, str(path)]
    proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, out
    assert "pull returned Success" in out, out
    assert "dump OK" in out, out
    assert "WARNING" not in out, out  # unread bytes, or Samba re-marshals different bytes
    assert f"{direction}: struct {function}" in out, out
    return out


def field(name: str, value: str) -> str:
    """ndrdump's ``name : value`` line (name padded to 25 columns)."""
    return f"{name:<25}: {value}"


def hexnum(value: int) -> str:
    return f"0x{value:08x} ({value})"


#: opnum -> (request, response, lines the request dump must show, lines the response dump must show)
CASES: dict[int, tuple[Any, Any, list[str], list[str]]] = {
    0: (
        GetSupportedVersionRequest(),
        GetSupportedVersionResponse(1, 1, HResult.ZERO),
        [],
        [
            field("MinVersion", hexnum(1)),
            field("MaxVersion", hexnum(1)),
            field("result", hexnum(0)),
        ],
    ),
    1: (
        SetContextRequest(0x00400019),
        SetContextResponse(HResult.FSRVP_E_UNSUPPORTED_CONTEXT),
        [field("Context", hexnum(0x00400019))],
        [field("result", hexnum(0x8004231B))],
    ),
    2: (
        StartShadowCopySetRequest(CLIENT_ID),
        StartShadowCopySetResponse(SET_ID, HResult.ZERO),
        [field("ClientShadowCopySetId", str(CLIENT_ID))],
        [field("pShadowCopySetId", str(SET_ID))],
    ),
    3: (
        AddToShadowCopySetRequest(CLIENT_ID, SET_ID, UNC),
        AddToShadowCopySetResponse(COPY_ID, HResult.ZERO),
        [
            field("ClientShadowCopyId", str(CLIENT_ID)),
            field("ShadowCopySetId", str(SET_ID)),
            field("ShareName", f"'{UNC}'"),
        ],
        [field("pShadowCopyId", str(COPY_ID))],
    ),
    4: (
        CommitShadowCopySetRequest(SET_ID, 60000),
        CommitShadowCopySetResponse(HResult.FSSAGENT_E_TIMEOUT),
        [field("ShadowCopySetId", str(SET_ID)), field("TimeOutInMilliseconds", hexnum(60000))],
        [field("result", hexnum(0x80042500))],
    ),
    5: (
        ExposeShadowCopySetRequest(SET_ID, 1800000),
        ExposeShadowCopySetResponse(HResult.ZERO),
        [field("ShadowCopySetId", str(SET_ID)), field("TimeOutInMilliseconds", hexnum(1800000))],
        [field("result", hexnum(0))],
    ),
    6: (
        RecoveryCompleteShadowCopySetRequest(SET_ID),
        RecoveryCompleteShadowCopySetResponse(HResult.FSRVP_E_BAD_STATE),
        [field("ShadowCopySetId", str(SET_ID))],
        [field("result", hexnum(0x80042301))],
    ),
    7: (
        AbortShadowCopySetRequest(SET_ID),
        AbortShadowCopySetResponse(HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH),
        [field("ShadowCopySetId", str(SET_ID))],
        [field("result", hexnum(0x80042501))],
    ),
    8: (
        IsPathSupportedRequest("\\\\FS1\\données 😀\\"),
        IsPathSupportedResponse(True, "FS1", HResult.ZERO),
        [field("ShareName", "'\\\\FS1\\données 😀\\'")],
        [field("SupportedByThisProvider", hexnum(1)), field("OwnerMachineName", "'FS1'")],
    ),
    9: (
        IsPathShadowCopiedRequest(UNC),
        IsPathShadowCopiedResponse(True, 3, HResult.ZERO),
        [field("ShareName", f"'{UNC}'")],
        [field("ShadowCopyPresent", hexnum(1)), field("ShadowCopyCompatibility", "3")],
    ),
    10: (
        GetShareMappingRequest(COPY_ID, SET_ID, UNC, 1),
        GetShareMappingResponse(1, ShareMapping1(SET_ID, COPY_ID, UNC, EXPOSED, FT), 0),
        [
            field("ShadowCopyId", str(COPY_ID)),
            field("ShadowCopySetId", str(SET_ID)),
            field("ShareName", f"'{UNC}'"),
            field("Level", hexnum(1)),
        ],
        [
            "union fssagent_share_mapping(case 1)",
            field("ShadowCopySetId", str(SET_ID)),
            field("ShadowCopyId", str(COPY_ID)),
            field("ShareNameUNC", f"'{UNC}'"),
            field("ShadowCopyShareName", f"'{EXPOSED}'"),
            field("tstamp", "Sat Jun 18 04:26:40 2022 UTC"),
        ],
    ),
    11: (
        DeleteShareMappingRequest(SET_ID, COPY_ID, UNC),
        DeleteShareMappingResponse(HResult.FSRVP_E_OBJECT_NOT_FOUND),
        # set id first here, copy id first in GetShareMapping
        [field("ShadowCopySetId", str(SET_ID)), field("ShadowCopyId", str(COPY_ID))],
        [field("result", hexnum(0x80042308))],
    ),
    12: (
        PrepareShadowCopySetRequest(SET_ID, 1800000),
        PrepareShadowCopySetResponse(HResult.FSRVP_E_WAIT_FAILED),
        [field("ShadowCopySetId", str(SET_ID)), field("TimeOutInMilliseconds", hexnum(1800000))],
        [field("result", hexnum(0xFFFFFFFF))],
    ),
}


def test_ndrdump_knows_all_13_functions() -> None:
    assert NDRDUMP is not None
    proc = subprocess.run(
        [NDRDUMP, "FileServerVssAgent"], capture_output=True, timeout=60, check=False
    )
    listing = proc.stdout.decode() + proc.stderr.decode()
    for opnum, name in calls.OPNUM_NAMES.items():
        assert f"0x{opnum:02x} ({opnum:2d}) fss_{name}" in listing, listing


@pytest.mark.parametrize("opnum", sorted(CASES), ids=lambda op: calls.OPNUM_NAMES[op])
def test_request_and_response_match_samba(tmp_path: Path, opnum: int) -> None:
    req, resp, req_lines, resp_lines = CASES[opnum]
    stub_in = encode_request(req)
    out = ndrdump(tmp_path, opnum, "in", stub_in)
    for line in req_lines:
        assert line in out, out
    out = ndrdump(tmp_path, opnum, "out", encode_response(resp), context=stub_in)
    for line in resp_lines:
        assert line in out, out
    assert field("result", hexnum(resp.return_value)) in out, out


@pytest.mark.parametrize("opnum", sorted(CASES), ids=lambda op: calls.OPNUM_NAMES[op])
def test_error_responses_match_samba(tmp_path: Path, opnum: int) -> None:
    req = CASES[opnum][0]
    resp = error_response(opnum, HResult.E_ACCESSDENIED, req)
    out = ndrdump(tmp_path, opnum, "out", encode_response(resp), context=encode_request(req))
    assert field("result", hexnum(0x80070005)) in out, out


def test_null_pointers_match_samba(tmp_path: Path) -> None:
    out = ndrdump(
        tmp_path, 8, "out", encode_response(IsPathSupportedResponse(False, None, 0x8004230C))
    )
    assert field("OwnerMachineName", "NULL") in out, out
    req = encode_request(GetShareMappingRequest(COPY_ID, SET_ID, UNC, 1))
    resp = GetShareMappingResponse(1, ShareMapping1(SET_ID, COPY_ID, UNC, None, FT), 0)
    out = ndrdump(tmp_path, 10, "out", encode_response(resp), context=req)
    assert field("ShadowCopyShareName", "NULL") in out, out
    out = ndrdump(
        tmp_path, 10, "out", encode_response(GetShareMappingResponse(1, None, 0x80042311)), req
    )
    assert field("ShareMapping1", "NULL") in out, out


def test_default_union_arm_matches_samba(tmp_path: Path) -> None:
    """Level != 1: the hand-packed empty [default] arm (impacket cannot build it)."""
    req = encode_request(GetShareMappingRequest(COPY_ID, SET_ID, UNC, 2))
    out = ndrdump(tmp_path, 10, "in", req)
    assert field("Level", hexnum(2)) in out
    out = ndrdump(
        tmp_path, 10, "out", encode_response(GetShareMappingResponse(2, None, 0x80070057)), req
    )
    assert "union fssagent_share_mapping(case 2)" in out, out


def test_samba_rejects_a_discriminant_that_differs_from_level(tmp_path: Path) -> None:
    """Why error_response must echo the request's Level."""
    assert NDRDUMP is not None
    path = tmp_path / "out"
    path.write_bytes(encode_response(GetShareMappingResponse(1, None, 0x80070057)))
    proc = subprocess.run(
        [NDRDUMP, "FileServerVssAgent", "fss_GetShareMapping", "out", str(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )  # no -c: Samba assumes Level 0
    assert proc.returncode != 0
    assert b"Bad Switch" in proc.stdout + proc.stderr


def test_samba_417_has_no_magic_field(tmp_path: Path) -> None:
    """An empty GetSupportedVersion stub is complete, and what follows the last
    parameter is the verification trailer, which ndrdump itself finds and parses
    ("SEC_VT") - so the digest's 52-byte sample layout is a valid trailer."""
    assert NDRDUMP is not None
    ndrdump(tmp_path, 0, "in", b"")
    trailer = (
        bytes.fromhex("8ae3137102f43671")
        + struct.pack("<HH", 0x4002, 0x28)  # PCONTEXT | END, 40 bytes
        + INTERFACE_UUID.bytes_le
        + struct.pack("<HH", 1, 0)
        + NDR64_UUID.bytes_le
        + struct.pack("<I", 1)
    )
    for opnum, stub, unread in (
        (0, b"", None),
        (8, encode_request(IsPathSupportedRequest(UNC)), None),  # 36 bytes: no pad
        (9, encode_request(IsPathShadowCopiedRequest("ab")), 2),  # 18 bytes: 2 pad bytes
    ):
        path = tmp_path / "trailer"
        path.write_bytes(stub + b"\0" * (-len(stub) % 4) + trailer)
        function = "fss_" + calls.OPNUM_NAMES[opnum]
        proc = subprocess.run(
            [NDRDUMP, "FileServerVssAgent", function, "in", str(path)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        out = proc.stdout.decode("utf-8", "replace")
        assert proc.returncode == 0, out
        assert "SEC_VT: consumed 52 bytes" in out, out
        assert field("uuid", str(INTERFACE_UUID)) in out, out
        assert "dump OK" in out, out
        if unread is None:
            assert "unread" not in out, out  # no magic field expected before the trailer
        else:
            assert f"WARNING! {unread} unread bytes" in out, out  # ndrdump counts the pad
        assert calls.decode_request(opnum, path.read_bytes()) == calls.decode_request(opnum, stub)


# A few random values per call through the oracle (each run is a subprocess).
texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=20)
guids = st.integers(0, 2**128 - 1).map(lambda i: UUID(int=i))
u32 = st.integers(0, 0xFFFFFFFF)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    op=st.sampled_from([3, 8, 10, 11]),
    a=guids,
    b=guids,
    text=texts,
    level=st.sampled_from([0, 1, 2]),
    rv=u32,
    exposed=st.none() | texts,
    stamp=st.integers(0, 2**63 - 1),
)
def test_random_values_match_samba(
    tmp_path: Path,
    op: int,
    a: UUID,
    b: UUID,
    text: str,
    level: int,
    rv: int,
    exposed: str | None,
    stamp: int,
) -> None:
    req: Any
    resp: Any
    if op == 3:
        req, resp = AddToShadowCopySetRequest(a, b, text), AddToShadowCopySetResponse(b, rv)
    elif op == 8:
        req, resp = IsPathSupportedRequest(text), IsPathSupportedResponse(bool(rv & 1), exposed, rv)
    elif op == 10:
        req = GetShareMappingRequest(a, b, text, level)
        mapping = ShareMapping1(b, a, text, exposed, stamp) if level == 1 and rv & 1 else None
        resp = GetShareMappingResponse(level, mapping, rv)
    else:
        req, resp = DeleteShareMappingRequest(a, b, text), DeleteShareMappingResponse(rv)
    stub_in = encode_request(req)
    out = ndrdump(tmp_path, op, "in", stub_in)
    if op != 8:
        assert field("ShadowCopySetId", str(b if op in (3, 10) else a)) in out, out
    ndrdump(tmp_path, op, "out", encode_response(resp), context=stub_in)
