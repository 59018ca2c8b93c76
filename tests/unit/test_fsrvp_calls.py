"""FSRVP wire codec: digest byte vectors, round trips, strictness, fuzzing, impacket parity."""

from __future__ import annotations

import dataclasses
import struct
import sys
import time
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impacket.dcerpc.v5.dtypes import NULL

from bench.codec import bench_codec
from remotevss.client import fsrvp_ndr
from remotevss.fsrvp import calls
from remotevss.fsrvp.calls import (
    MAX_STRING_UNITS,
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
    StubError,
    UnknownOpnum,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_response,
)
from remotevss.fsrvp.constants import (
    INTERFACE_UUID,
    NDR64_UUID,
    Attr,
    HResult,
    Opnum,
    hresult_name,
)

SET_ID = UUID("11111111-2222-3333-4444-555555555555")
COPY_ID = UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
UNC = "\\\\FS1\\data\\"
EXPOSED = "\\\\FS1\\data@{aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee}"
FT = 133000000000000000
MAPPING = ShareMapping1(SET_ID, COPY_ID, UNC, EXPOSED, FT)
E_INVALIDARG = HResult.E_INVALIDARG

#: One sample request and response per opnum (index = opnum).
SAMPLES: list[tuple[Any, Any]] = [
    (GetSupportedVersionRequest(), GetSupportedVersionResponse(1, 1, 0)),
    (SetContextRequest(Attr.ATTR_AUTO_RECOVERY | 0x10), SetContextResponse(0)),
    (StartShadowCopySetRequest(COPY_ID), StartShadowCopySetResponse(SET_ID, 0)),
    (AddToShadowCopySetRequest(COPY_ID, SET_ID, UNC), AddToShadowCopySetResponse(COPY_ID, 0)),
    (CommitShadowCopySetRequest(SET_ID, 60000), CommitShadowCopySetResponse(0x80042500)),
    (ExposeShadowCopySetRequest(SET_ID, 1800000), ExposeShadowCopySetResponse(0)),
    (RecoveryCompleteShadowCopySetRequest(SET_ID), RecoveryCompleteShadowCopySetResponse(0)),
    (AbortShadowCopySetRequest(SET_ID), AbortShadowCopySetResponse(0x80042301)),
    (IsPathSupportedRequest(UNC), IsPathSupportedResponse(True, "FS1", 0)),
    (IsPathShadowCopiedRequest("\\\\h\\s😀"), IsPathShadowCopiedResponse(True, 3, 0)),
    (GetShareMappingRequest(COPY_ID, SET_ID, UNC, 1), GetShareMappingResponse(1, MAPPING, 0)),
    (DeleteShareMappingRequest(SET_ID, COPY_ID, "x"), DeleteShareMappingResponse(0)),
    (PrepareShadowCopySetRequest(SET_ID, 1800000), PrepareShadowCopySetResponse(0xFFFFFFFF)),
]
OPNUMS = list(range(13))


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("|", ""))


def wire_string(units: int, data: bytes, max_count: int | None = None, offset: int = 0) -> bytes:
    """A conformant varying string header + raw code units (no validation)."""
    return struct.pack("<III", units if max_count is None else max_count, offset, units) + data


# ------------------------------------------------------------------ constants


def test_opnums_and_names_are_the_spec_table() -> None:
    assert [int(o) for o in Opnum] == OPNUMS
    assert Opnum.PREPARE_SHADOW_COPY_SET == 12
    assert list(calls.OPNUM_NAMES) == OPNUMS
    for op in OPNUMS:
        assert calls.REQUEST_TYPES[op].opnum == op
        assert calls.RESPONSE_TYPES[op].opnum == op
        assert calls.REQUEST_TYPES[op].__name__ == calls.OPNUM_NAMES[op] + "Request"
        assert calls.RESPONSE_TYPES[op].__name__ == calls.OPNUM_NAMES[op] + "Response"
        assert Opnum(op).name.replace("_", "") == calls.OPNUM_NAMES[op].upper()


def test_hresults_are_unsigned_and_named() -> None:
    assert HResult.FSRVP_E_WAIT_FAILED == 0xFFFFFFFF
    assert HResult.VSS_E_INVALID_XML_DOCUMENT == 0x80042311
    assert HResult.FSRVP_E_BAD_ID == 0x80042302
    assert HResult.FSSAGENT_E_TIMEOUT == 0x80042500
    assert all(0 <= h <= 0xFFFFFFFF for h in HResult)
    assert len({int(h) for h in HResult}) == len(HResult) == 19
    assert hresult_name(0x8004230C) == "FSRVP_E_NOT_SUPPORTED"
    assert hresult_name(-1) == "FSRVP_E_WAIT_FAILED"  # a signed reading of 0xFFFFFFFF
    assert hresult_name(0x12345678) == "0x12345678"
    assert hresult_name(0xC0000022) == "0xC0000022"


# --------------------------------------------------- digest byte vectors (§2.2, §2.3)


def test_is_path_supported_request_vector() -> None:
    stub = h(
        "0c 00 00 00 00 00 00 00 0c 00 00 00 5c 00 5c 00"
        "46 00 53 00 31 00 5c 00 64 00 61 00 74 00 61 00"
        "5c 00 00 00"
    )
    assert encode_request(IsPathSupportedRequest(UNC)) == stub
    assert decode_request(8, stub) == IsPathSupportedRequest(UNC)


def test_is_path_supported_response_vector() -> None:
    stub = h(
        "01 00 00 00 | 00 00 02 00 | 04 00 00 00 00 00 00 00 04 00 00 00"
        "| 46 00 53 00 31 00 00 00 | 00 00 00 00"
    )
    assert len(stub) == 32
    resp = IsPathSupportedResponse(True, "FS1", HResult.ZERO)
    assert encode_response(resp) == stub
    assert decode_response(8, stub) == resp


def test_get_share_mapping_response_vector() -> None:
    stub = encode_response(GetShareMappingResponse(1, MAPPING, 0))
    assert len(stub) == 208
    head = h(
        "01 00 00 00 00 00 02 00 11 11 11 11 22 22 33 33"
        "44 44 55 55 55 55 55 55 aa aa aa aa bb bb cc cc"
        "dd dd ee ee ee ee ee ee 04 00 02 00 08 00 02 00"
        "00 80 20 9b cb 82 d8 01 0c 00 00 00 00 00 00 00"
        "0c 00 00 00 5c 00 5c 00 46 00"
    )
    assert stub[: len(head)] == head
    assert stub[0x44:0x5C] == (UNC + "\0").encode("utf-16-le")
    assert stub[0x5C:0x68] == struct.pack("<III", 0x32, 0, 0x32)  # string #2: 50 units
    assert stub[0x68:0xCC] == (EXPOSED + "\0").encode("utf-16-le")
    assert stub[-4:] == b"\0\0\0\0"
    assert decode_response(10, stub) == GetShareMappingResponse(1, MAPPING, 0)


def test_share_mapping_with_null_exposed_name_uses_one_less_pointer() -> None:
    m = ShareMapping1(SET_ID, COPY_ID, UNC, None, FT)
    stub = encode_response(GetShareMappingResponse(1, m, 0))
    assert stub[40:48] == h("04 00 02 00 00 00 00 00")
    assert len(stub) == 8 + 48 + 36 + 4
    assert decode_response(10, stub).mapping == m


def test_get_share_mapping_default_arm_is_hand_packed() -> None:
    # Level != 1 selects the empty [default] arm: discriminant + return value only.
    resp = GetShareMappingResponse(2, None, E_INVALIDARG)
    stub = encode_response(resp)
    assert stub == struct.pack("<II", 2, E_INVALIDARG)
    assert decode_response(10, stub) == resp
    # Level 1 failing: discriminant, NULL pointer, return value.
    fail = GetShareMappingResponse(1, None, HResult.VSS_E_INVALID_XML_DOCUMENT)
    assert encode_response(fail) == struct.pack("<III", 1, 0, 0x80042311)
    with pytest.raises(ValueError, match="level 1"):
        encode_response(GetShareMappingResponse(0, MAPPING, 0))


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("op", OPNUMS)
def test_sample_round_trip(op: int) -> None:
    req, resp = SAMPLES[op]
    assert req.opnum == resp.opnum == op
    stub = encode_request(req)
    assert decode_request(op, stub) == req
    assert encode_request(decode_request(op, stub)) == stub
    out = encode_response(resp)
    assert decode_response(op, out) == resp
    assert encode_response(decode_response(op, out)) == out
    assert struct.unpack("<I", out[-4:])[0] == resp.return_value  # return value last


def test_request_layouts() -> None:
    assert encode_request(GetSupportedVersionRequest()) == b""
    assert encode_request(SetContextRequest(0x19)) == h("19 00 00 00")
    # GetShareMapping: copy id first; DeleteShareMapping: set id first.
    gsm = encode_request(GetShareMappingRequest(COPY_ID, SET_ID, "ab", 1))
    assert gsm[:16] == COPY_ID.bytes_le and gsm[16:32] == SET_ID.bytes_le
    assert gsm[32:] == wire_string(3, "ab\0".encode("utf-16-le")) + b"\0\0" + h("01 00 00 00")
    dsm = encode_request(DeleteShareMappingRequest(SET_ID, COPY_ID, "ab"))
    assert dsm[:16] == SET_ID.bytes_le and dsm[16:32] == COPY_ID.bytes_le
    assert encode_request(CommitShadowCopySetRequest(SET_ID, 60000)) == SET_ID.bytes_le + h(
        "60 ea 00 00"
    )


def test_non_bmp_characters_take_two_code_units() -> None:
    stub = encode_request(IsPathSupportedRequest("😀"))
    assert stub == wire_string(3, "😀\0".encode("utf-16-le"))
    assert decode_request(8, stub).share_name == "😀"


guids = st.integers(0, 2**128 - 1).map(lambda i: UUID(int=i))
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
texts = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=40
) | st.sampled_from(["", UNC, "😀\U0010ffff", "é" * 300, "x" * (MAX_STRING_UNITS - 1)])
opt_texts = st.none() | texts
mappings = st.builds(ShareMapping1, guids, guids, texts, opt_texts, i64)
REQ_STRATEGIES = [
    st.builds(GetSupportedVersionRequest),
    st.builds(SetContextRequest, u32),
    st.builds(StartShadowCopySetRequest, guids),
    st.builds(AddToShadowCopySetRequest, guids, guids, texts),
    st.builds(CommitShadowCopySetRequest, guids, u32),
    st.builds(ExposeShadowCopySetRequest, guids, u32),
    st.builds(RecoveryCompleteShadowCopySetRequest, guids),
    st.builds(AbortShadowCopySetRequest, guids),
    st.builds(IsPathSupportedRequest, texts),
    st.builds(IsPathShadowCopiedRequest, texts),
    st.builds(GetShareMappingRequest, guids, guids, texts, u32),
    st.builds(DeleteShareMappingRequest, guids, guids, texts),
    st.builds(PrepareShadowCopySetRequest, guids, u32),
]
RESP_STRATEGIES = [
    st.builds(GetSupportedVersionResponse, u32, u32, u32),
    st.builds(SetContextResponse, u32),
    st.builds(StartShadowCopySetResponse, guids, u32),
    st.builds(AddToShadowCopySetResponse, guids, u32),
    st.builds(CommitShadowCopySetResponse, u32),
    st.builds(ExposeShadowCopySetResponse, u32),
    st.builds(RecoveryCompleteShadowCopySetResponse, u32),
    st.builds(AbortShadowCopySetResponse, u32),
    st.builds(IsPathSupportedResponse, st.booleans(), opt_texts, u32),
    st.builds(IsPathShadowCopiedResponse, st.booleans(), i32, u32),
    st.builds(GetShareMappingResponse, st.just(1), st.none() | mappings, u32)
    | st.builds(GetShareMappingResponse, u32.filter(lambda v: v != 1), st.none(), u32),
    st.builds(DeleteShareMappingResponse, u32),
    st.builds(PrepareShadowCopySetResponse, u32),
]
any_request = st.one_of(REQ_STRATEGIES)
any_response = st.one_of(RESP_STRATEGIES)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(any_request)
def test_request_round_trip_property(req: Any) -> None:
    stub = encode_request(req)
    assert decode_request(req.opnum, stub) == req
    assert decode_request(req.opnum, stub + b"\xff" * 7) == req  # trailing bytes ignored


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(any_response)
def test_response_round_trip_property(resp: Any) -> None:
    stub = encode_response(resp)
    assert decode_response(resp.opnum, stub) == resp
    assert len(stub) % 4 == 0


@pytest.mark.parametrize("op", OPNUMS)
def test_error_response_marshals_zeroed_out_parameters(op: int) -> None:
    resp = error_response(op, E_INVALIDARG)
    assert type(resp) is calls.RESPONSE_TYPES[op]
    stub = encode_response(resp)
    assert stub[-4:] == struct.pack("<I", E_INVALIDARG)
    assert set(stub[:-4]) <= {0, 1}  # zeros; only GetShareMapping's discriminant is 1
    assert decode_response(op, stub) == resp
    expected_len = {0: 12, 2: 20, 3: 20, 8: 12, 9: 12, 10: 12}.get(op, 4)
    assert len(stub) == expected_len


def test_error_response_echoes_the_get_share_mapping_level() -> None:
    req = GetShareMappingRequest(COPY_ID, SET_ID, UNC, 7)
    resp = error_response(10, E_INVALIDARG, req)
    assert resp == GetShareMappingResponse(7, None, E_INVALIDARG)
    assert encode_response(resp) == struct.pack("<II", 7, E_INVALIDARG)


# ------------------------------------------------------------------ strictness


@pytest.mark.parametrize(
    ("stub", "why"),
    [
        (wire_string(2, "a\0".encode("utf-16-le"), offset=1), "offset"),
        (wire_string(3, "ab\0".encode("utf-16-le"), max_count=2), "actual count 3 > max"),
        (wire_string(0, b""), "actual count 0"),
        (wire_string(2, "ab".encode("utf-16-le")), "no terminating NUL"),
        (wire_string(3, "a\0\0".encode("utf-16-le")), "embedded NUL"),
        (wire_string(3, "\0a\0".encode("utf-16-le")), "embedded NUL"),
        (wire_string(2, b"\x00\xd8\x00\x00"), "UTF-16"),  # lone high surrogate
        (wire_string(3, b"a\x00\x00\xdc\x00\x00"), "UTF-16"),  # lone low surrogate
        (wire_string(2, b"\x00\xdc\x00\xd8"), "UTF-16"),  # reversed pair
        (wire_string(1, b"\x00"), "truncated"),  # odd byte count
        (wire_string(5, "ab\0".encode("utf-16-le")), "truncated"),
        (struct.pack("<II", 1, 0), "truncated"),
        (b"", "truncated"),
        (
            wire_string(MAX_STRING_UNITS + 1, ("x" * MAX_STRING_UNITS + "\0").encode("utf-16-le")),
            "max count",
        ),
        (wire_string(1, b"\0\0", max_count=0xFFFFFFFF), "max count"),
        (wire_string(0xFFFFFFFF, b"\0\0"), "max count"),
    ],
)
def test_bad_strings_raise_stub_error(stub: bytes, why: str) -> None:
    for op in (8, 9):
        with pytest.raises(StubError, match=why):
            decode_request(op, stub)


def test_string_length_cap_is_inclusive() -> None:
    longest = "x" * (MAX_STRING_UNITS - 1)
    stub = encode_request(IsPathSupportedRequest(longest))
    assert decode_request(8, stub).share_name == longest
    with pytest.raises(ValueError, match="longer than"):
        encode_request(IsPathSupportedRequest(longest + "x"))
    with pytest.raises(ValueError, match="longer than"):  # a surrogate pair is 2 units
        encode_request(IsPathSupportedRequest("x" * (MAX_STRING_UNITS - 2) + "😀"))


@pytest.mark.parametrize("op", OPNUMS)
def test_every_truncation_raises_stub_error(op: int) -> None:
    req, resp = SAMPLES[op]
    for decode, stub in (
        (decode_request, encode_request(req)),
        (decode_response, encode_response(resp)),
    ):
        for n in range(len(stub)):
            with pytest.raises(StubError):
                decode(op, stub[:n])


def test_response_decoder_rejects_null_share_name_unc() -> None:
    stub = bytearray(encode_response(GetShareMappingResponse(1, MAPPING, 0)))
    stub[40:44] = b"\0\0\0\0"
    with pytest.raises(StubError, match="NULL ShareNameUNC"):
        decode_response(10, bytes(stub))


@pytest.mark.parametrize("op", [13, 14, 255, -1, 2**32, None, "3"])
def test_unknown_opnum(op: Any) -> None:
    for func in (decode_request, decode_response):
        with pytest.raises(UnknownOpnum):
            func(op, b"")
    with pytest.raises(UnknownOpnum):
        error_response(op, 0)
    assert issubclass(UnknownOpnum, StubError) and issubclass(StubError, ValueError)


@pytest.mark.parametrize(
    "req",
    [
        IsPathSupportedRequest("a\0b"),
        IsPathSupportedRequest("bad \ud800 surrogate"),
        SetContextRequest(-1),
        SetContextRequest(2**32),
        CommitShadowCopySetRequest(SET_ID, 2**32),
    ],
)
def test_unmarshallable_values_raise_value_error(req: Any) -> None:
    with pytest.raises(ValueError):
        encode_request(req)


def test_unmarshallable_responses_raise_value_error() -> None:
    for resp in (
        IsPathShadowCopiedResponse(True, 2**31, 0),
        GetSupportedVersionResponse(1, 1, -1),
        GetShareMappingResponse(1, ShareMapping1(SET_ID, COPY_ID, UNC, None, 2**63), 0),
        GetShareMappingResponse(1, ShareMapping1(SET_ID, COPY_ID, "a\0", None, 0), 0),
        IsPathSupportedResponse(True, "\udc00", 0),
    ):
        with pytest.raises(ValueError):
            encode_response(resp)  # type: ignore[arg-type]


# ----------------------------------------------------- verification trailer (§1.5)

TRAILER_MAGIC = h("8a e3 13 71 02 f4 36 71")


def verification_trailer(stub_len: int) -> bytes:
    """Pad to 4, magic, PCONTEXT|END command: abstract syntax (FSRVP 1.0), transfer (NDR64 1)."""
    body = (
        TRAILER_MAGIC
        + struct.pack("<HH", 0x4002, 0x28)
        + INTERFACE_UUID.bytes_le
        + struct.pack("<HH", 1, 0)
        + NDR64_UUID.bytes_le
        + struct.pack("<I", 1)
    )
    assert len(body) == 52
    return b"\0" * (-stub_len % 4) + body


TRAILER_CASES = [req for req, _ in SAMPLES] + [
    IsPathSupportedRequest("odd"),  # stub length 20: no pad
    IsPathShadowCopiedRequest("ab"),  # stub length 18: 2 pad bytes before the magic
    DeleteShareMappingRequest(SET_ID, COPY_ID, "a"),
]


@pytest.mark.parametrize("req", TRAILER_CASES, ids=lambda r: type(r).__name__)
def test_verification_trailer_is_ignored(req: Any) -> None:
    stub = encode_request(req)
    assert decode_request(req.opnum, stub + verification_trailer(len(stub))) == req


def test_get_supported_version_with_trailer_only() -> None:
    # Samba's first IDL mistook exactly this for a 52-byte "magic" field.
    stub = verification_trailer(0)
    assert len(stub) == 52
    assert decode_request(0, stub) == GetSupportedVersionRequest()


# --------------------------------------------------------------------- fuzzing

HANG_SECONDS = 2.0


def _check_decode(op: int, stub: bytes, decode: Any, encode: Any, types: dict[int, type]) -> None:
    started = time.perf_counter()
    try:
        obj = decode(op, stub)
    except StubError:
        pass
    else:
        assert type(obj) is types[op]
        # whatever the decoder accepts, the encoder can marshal and decodes the same
        assert decode(op, encode(obj)) == obj
    # A hang guard, not a speed test: a decode is ~40 µs, a stall here would be a loop
    # bound by an attacker-supplied count. Generous so a loaded CI machine never trips it.
    assert time.perf_counter() - started < HANG_SECONDS


def _mutate(data: st.DataObject, stub: bytes) -> bytes:
    buf = bytearray(stub)
    for _ in range(data.draw(st.integers(1, 4))):
        what = data.draw(st.sampled_from(["flip", "word", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if what == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif what == "word":
            value = data.draw(st.sampled_from([0, 1, 2, 3, 0x7FFF, 0x8000, 0x8001, 0xFFFFFFFF]))
            buf[pos & ~3 : (pos & ~3) + 4] = struct.pack("<I", value)
        elif what == "cut":
            del buf[pos:]
        elif what == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif what == "delete" and buf:
            del buf[pos : pos + data.draw(st.integers(1, 4))]
    return bytes(buf)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 12), st.binary(max_size=160))
def test_fuzz_random_bytes(op: int, stub: bytes) -> None:
    _check_decode(op, stub, decode_request, encode_request, calls.REQUEST_TYPES)
    _check_decode(op, stub, decode_response, encode_response, calls.RESPONSE_TYPES)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_valid_stubs(data: st.DataObject) -> None:
    op = data.draw(st.integers(0, 12))
    req = data.draw(REQ_STRATEGIES[op])
    _check_decode(
        op, _mutate(data, encode_request(req)), decode_request, encode_request, calls.REQUEST_TYPES
    )
    resp = data.draw(RESP_STRATEGIES[op])
    stub = _mutate(data, encode_response(resp))
    _check_decode(op, stub, decode_response, encode_response, calls.RESPONSE_TYPES)


def test_decode_accepts_bytes_like() -> None:
    stub = encode_request(SAMPLES[3][0])
    assert decode_request(3, bytearray(stub)) == SAMPLES[3][0]
    assert decode_request(3, memoryview(stub)) == SAMPLES[3][0]
    assert decode_response(10, bytearray(encode_response(SAMPLES[10][1]))) == SAMPLES[10][1]


# ------------------------------------------------------ impacket declarations agree


IMPACKET_PAD = {0xAA, 0xAB, 0xBB, 0xBC, 0xBD, 0xBF, 0xCE}


def _to_impacket(value: Any) -> Any:
    if isinstance(value, UUID):
        return value.bytes_le
    if isinstance(value, str):
        return value + "\0"
    if value is None:
        return NULL
    return int(value)


def _from_impacket(value: Any) -> Any:
    if isinstance(value, str):
        assert value.endswith("\0")
        return value[:-1]
    return value


def _values(obj: Any) -> list[Any]:
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]


def _impacket_request(req: Any) -> Any:
    ndr = fsrvp_ndr.NDR_CALLS[req.opnum][0]()
    values = _values(req)
    for (name, _), value in zip(ndr.structure, values, strict=True):
        ndr[name] = _to_impacket(value)
    return ndr


def _impacket_response(resp: Any) -> Any:
    ndr = fsrvp_ndr.NDR_CALLS[resp.opnum][1]()
    if isinstance(resp, GetShareMappingResponse):
        ndr["ShareMapping"]["tag"] = resp.level
        if resp.mapping is None:
            ndr["ShareMapping"]["ShareMapping1"] = NULL
        else:
            m = ndr["ShareMapping"]["ShareMapping1"]
            for name, value in zip(
                (
                    "ShadowCopySetId",
                    "ShadowCopyId",
                    "ShareNameUNC",
                    "ShadowCopyShareName",
                    "CreationTimestamp",
                ),
                _values(resp.mapping),
                strict=True,
            ):
                m[name] = _to_impacket(value)
        ndr["ErrorCode"] = resp.return_value
        return ndr
    values = _values(resp)
    for (name, _), value in zip(ndr.structure, values, strict=True):
        ndr[name] = _to_impacket(value)
    return ndr


def _parse_with_impacket_request(req: Any, stub: bytes) -> Any:
    ndr = fsrvp_ndr.NDR_CALLS[req.opnum][0](stub)
    return type(req)(*(_from_impacket(ndr[name]) for name, _ in ndr.structure))


def _parse_with_impacket_response(resp: Any, stub: bytes) -> Any:
    ndr = fsrvp_ndr.NDR_CALLS[resp.opnum][1](stub)
    if isinstance(resp, GetShareMappingResponse):
        union = ndr["ShareMapping"]
        mapping = None
        if union.fields["ShareMapping1"].fields["ReferentID"]:
            m = union["ShareMapping1"]
            name = m["ShadowCopyShareName"]
            mapping = ShareMapping1(
                UUID(bytes_le=m["ShadowCopySetId"]),
                UUID(bytes_le=m["ShadowCopyId"]),
                _from_impacket(m["ShareNameUNC"]),
                None if name == b"" else _from_impacket(name),
                m["CreationTimestamp"],
            )
        return GetShareMappingResponse(union["tag"], mapping, ndr["ErrorCode"])
    values = [_from_impacket(ndr[name]) for name, _ in ndr.structure]
    for i, expected in enumerate(_values(resp)):
        if isinstance(expected, UUID):
            values[i] = UUID(bytes_le=values[i])
        elif isinstance(expected, bool):
            values[i] = bool(values[i])
        elif expected is None:
            values[i] = None if values[i] == b"" else values[i]
    return type(resp)(*values)


def _request_from_impacket(req: Any) -> Any:
    ndr = fsrvp_ndr.NDR_CALLS[req.opnum][0](_impacket_request(req).getData())
    values = [_from_impacket(ndr[name]) for name, _ in ndr.structure]
    return type(req)(*(UUID(bytes_le=v) if isinstance(v, bytes) else v for v in values))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_request)
def test_impacket_request_classes_agree(req: Any) -> None:
    ours = encode_request(req)
    theirs = _impacket_request(req).getData()
    assert decode_request(req.opnum, theirs) == req
    assert _request_from_impacket(req) == req
    parsed = fsrvp_ndr.NDR_CALLS[req.opnum][0](ours)
    assert [_from_impacket(parsed[n]) for n, _ in parsed.structure] == [
        _from_impacket(_to_impacket(v)) for v in _values(req)
    ]
    # identical except that impacket fills alignment gaps with marker bytes, we with zeros
    assert len(ours) == len(theirs)
    assert all(a == b or (a == 0 and b in IMPACKET_PAD) for a, b in zip(ours, theirs, strict=True))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_response.filter(lambda r: not (isinstance(r, GetShareMappingResponse) and r.level != 1)))
def test_impacket_response_classes_agree(resp: Any) -> None:
    ours = encode_response(resp)
    assert _parse_with_impacket_response(resp, ours) == resp
    theirs = _impacket_response(resp).getData()  # random referent ids, 0xab padding
    assert decode_response(resp.opnum, theirs) == resp


def test_impacket_dce_request_finds_the_response_classes() -> None:
    module = sys.modules[fsrvp_ndr.FssIsPathSupported.__module__]
    for op, (req_cls, resp_cls) in fsrvp_ndr.NDR_CALLS.items():
        assert req_cls.opnum == op
        assert getattr(module, req_cls.__name__ + "Response") is resp_cls
        assert resp_cls.structure[-1][0] == "ErrorCode"
    assert list(fsrvp_ndr.NDR_CALLS) == OPNUMS
    err = fsrvp_ndr.DCERPCSessionError(error_code=0x8004230C)
    assert "FSRVP_E_NOT_SUPPORTED" in str(err)


def test_impacket_cannot_build_the_default_arm() -> None:
    # Documents quirk 1: why encode_response hand-packs Level != 1.
    ndr = fsrvp_ndr.FssGetShareMappingResponse()
    with pytest.raises(Exception, match="Unknown tag"):
        ndr["ShareMapping"]["tag"] = 2


def test_bench_codec_reports_every_call() -> None:
    result = bench_codec(number=50)
    assert list(result) == list(calls.OPNUM_NAMES.values())
    assert all(0 < us < 1000 for us in result.values())
