"""smbd's NPA hand-off decoder against Samba's NDR oracle, a real smbd blob, and fuzzing.

Oracles: the installed 4.17.12 ``ndrdump --validate named_pipe_auth
named_pipe_auth_req struct`` parses our test builder's bytes, re-marshals
them and reports any byte that differs (referent ids included), so a level-7
blob it accepts silently is exactly what smbd would send; the decoded fields
are then compared with what ndrdump prints.  ``data/npa-smbd-4.17.12-root.bin``
was captured from a private smbd 4.17.12 (rpcclient as root over
127.0.0.1; session key zeroed).  Levels 5 and 8 have no oracle here (4.17.12
knows only level 7): they are checked against the IDL through the builder.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remotevss.samba import npa
from remotevss.samba.npa import NpaError, NpaInfo, decode_request, encode_reply
from tests.support.npa_build import NpaSpec, build_request

REAL_BLOB = (Path(__file__).parent / "data" / "npa-smbd-4.17.12-root.bin").read_bytes()
NDRDUMP = shutil.which("ndrdump")
needs_ndrdump = pytest.mark.skipif(
    NDRDUMP is None, reason="Samba's ndrdump is not installed (Debian package samba-testsuite)"
)


def ndrdump(blob: bytes, kind: str = "named_pipe_auth_req") -> str:
    assert NDRDUMP is not None
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(blob)
        f.flush()
        out = subprocess.run(
            [NDRDUMP, "--validate", "named_pipe_auth", kind, "struct", f.name],
            capture_output=True,
            text=True,
            check=False,
        )
    assert out.returncode == 0 and "dump OK" in out.stdout, out.stdout + out.stderr
    assert "WARNING" not in out.stdout, out.stdout
    return out.stdout


def dumped(text: str) -> dict[str, list[str]]:
    """ndrdump's ``name : value`` lines (pointer markers dropped), in order."""
    fields: dict[str, list[str]] = {}
    for m in re.finditer(r"^\s*(\w+)\s+: (.*)$", text, re.M):
        if m.group(2) != "*":
            fields.setdefault(m.group(1), []).append(m.group(2).rstrip())
    return fields


def dumped_number(value: str) -> int:
    return int(value.split()[0], 16)


def dumped_string(value: str) -> str:
    return "" if value == "NULL" else value[1:-1]


def assert_agrees(info: NpaInfo, text: str) -> None:
    f = dumped(text)

    def one(name: str, absent: str) -> str:  # NULL structs print no member lines
        return f.get(name, [absent])[0]

    assert dumped_number(one("transport", "")) == info.transport
    assert dumped_number(one("remote_client_port", "")) == info.remote_client_port
    assert dumped_number(one("local_server_port", "")) == info.local_server_port
    for name in ("remote_client_name", "remote_client_addr", "local_server_name",
                 "local_server_addr", "account_name", "domain_name", "full_name",
                 "unix_name", "sanitized_username", "user_principal_name", "dns_domain_name"):
        assert dumped_string(one(name, "NULL")) == getattr(info, name), name
    assert tuple(v for v in f.get("sids", []) if v.startswith("S-")) == info.sids
    assert dumped_number(one("privilege_mask", "")) == info.privilege_mask
    assert dumped_number(one("rights_mask", "")) == info.rights_mask
    assert dumped_number(one("uid", "")) == info.uid
    assert dumped_number(one("gid", "")) == info.gid
    assert tuple(dumped_number(v) for v in f.get("groups", []) if v.startswith("0x")) == info.groups
    assert dumped_number(one("acct_flags", "0x0")) == info.acct_flags
    assert dumped_number(one("authenticated", "0x0")) == info.user_flags
    assert UUID(one("unique_session_token", "")) == info.unique_session_token


# ------------------------------------------------------------ the real thing


def test_real_smbd_blob() -> None:
    info = decode_request(REAL_BLOB)
    assert info.level == 7 and info.transport == 1
    assert (info.remote_client_addr, info.local_server_addr) == ("127.0.0.1", "127.0.0.1")
    assert info.account_name == "root" and info.unix_name == "root"
    assert info.domain_name == "ANCHORFS"
    assert (info.uid, info.gid, info.groups) == (0, 0, (0,))
    assert "S-1-22-1-0" in info.sids and info.sids[-1] == "S-1-22-2041152804-0"
    assert info.npa_flags == 0
    assert info.session_key == bytes(16)
    assert "session_key" not in repr(info)


@needs_ndrdump
def test_real_smbd_blob_agrees_with_ndrdump() -> None:
    assert_agrees(decode_request(REAL_BLOB), ndrdump(REAL_BLOB))


# ------------------------------------------------------- built blobs, level 7

_text = st.text(
    st.characters(categories=("L", "N", "Zs", "Pd", "Po"), exclude_characters="'\\"), max_size=24
)
_opt_text = st.none() | _text
_sid = st.builds(
    lambda ia, subs: f"S-1-{ia if ia < 0xFFFFFFFF else hex(ia)}" + "".join(f"-{s}" for s in subs),
    st.integers(0, (1 << 48) - 1),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
)
_ip = st.sampled_from(["127.0.0.1", "192.0.2.7", "::1", "2001:db8::17", "fe80::1"])


@st.composite
def specs(draw: st.DrawFn, level: int = 7) -> NpaSpec:
    return NpaSpec(
        level=level,
        transport=draw(st.integers(0, 255)),
        remote_client_name=draw(_opt_text),
        remote_client_addr=draw(_ip),
        remote_client_port=draw(st.integers(0, 0xFFFF)),
        local_server_name=draw(_opt_text),
        local_server_addr=draw(_ip),
        local_server_port=draw(st.integers(0, 0xFFFF)),
        need_idle_server=draw(st.booleans()),
        gss_creds=draw(st.binary(max_size=8)),
        sids=draw(st.lists(_sid, max_size=12)),
        privilege_mask=draw(st.integers(0, (1 << 64) - 1)),
        rights_mask=draw(st.integers(0, 0xFFFFFFFF)),
        uid=draw(st.integers(0, 0xFFFFFFFF)),
        gid=draw(st.integers(0, 0xFFFFFFFF)),
        groups=draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=10)),
        user_info=draw(st.booleans()),
        account_name=draw(_opt_text),
        user_principal_name=draw(_opt_text),
        domain_name=draw(_opt_text),
        dns_domain_name=draw(_opt_text),
        full_name=draw(_opt_text),
        acct_flags=draw(st.integers(0, 0xFFFFFFFF)),
        user_flags=draw(st.integers(0, 0xFF)),
        unix_info=draw(st.booleans()),
        unix_name=draw(_opt_text),
        sanitized_username=draw(_opt_text),
        session_key=draw(st.binary(max_size=32)),
        unique_session_token=UUID(int=draw(st.integers(0, (1 << 128) - 1))),
        ticket_type=draw(st.integers(0, 2)),
    )


def expected(s: NpaSpec) -> dict[str, object]:
    user = s.user_info
    uinfo = s.unix_info
    return {
        "remote_client_name": s.remote_client_name or "",
        "local_server_name": s.local_server_name or "",
        "remote_client_port": s.remote_client_port,
        "sids": tuple(s.sids),
        "privilege_mask": s.privilege_mask,
        "uid": s.uid,
        "gid": s.gid,
        "groups": tuple(s.groups),
        "account_name": (s.account_name or "") if user else "",
        "domain_name": (s.domain_name or "") if user else "",
        "full_name": (s.full_name or "") if user else "",
        "unix_name": (s.unix_name or "") if uinfo else "",
        "sanitized_username": (s.sanitized_username or "") if uinfo else "",
        "session_key": s.session_key,
        "unique_session_token": s.unique_session_token,
        "ticket_type": s.ticket_type,
    }


@given(specs())
@settings(max_examples=150)
def test_level7_decodes_what_was_built(spec: NpaSpec) -> None:
    info = decode_request(build_request(spec))
    for name, value in expected(spec).items():
        assert getattr(info, name) == value, name


@needs_ndrdump
@given(specs())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_level7_agrees_with_ndrdump(spec: NpaSpec) -> None:
    blob = build_request(spec)
    assert_agrees(decode_request(blob), ndrdump(blob))


def test_samba_419_wide_user_flags_at_level_7() -> None:
    narrow = decode_request(build_request(NpaSpec(user_flags=0x20)))
    wide = decode_request(build_request(NpaSpec(user_flags=0x1020, wide_user_flags=True)))
    assert wide.user_flags == 0x20  # the low byte: the rest is padding to a 4.17 reader
    assert narrow == wide


# ------------------------------------------------------------ levels 5 and 8


@pytest.mark.parametrize("flag", [False, True])
def test_level5_need_idle_server(flag: bool) -> None:
    info = decode_request(build_request(NpaSpec(level=5, need_idle_server=flag)))
    assert info.level == 5 and info.need_idle_server is flag
    assert info.account_name == "root" and "S-1-5-32-544" in info.sids


def test_level5_need_idle_server_must_be_boolean() -> None:
    blob = bytearray(build_request(NpaSpec(level=5)))
    assert blob[48] == 0
    blob[48] = 2
    with pytest.raises(NpaError, match="boolean"):
        decode_request(bytes(blob))


def test_level8_device_sids_and_wide_user_flags() -> None:
    spec = NpaSpec(level=8, device_sids=["S-1-5-21-7-8-9-1104"], user_flags=0x1000020)
    info = decode_request(build_request(spec))
    assert info.level == 8 and info.device_sids == ("S-1-5-21-7-8-9-1104",)
    assert info.user_flags == 0x1000020
    assert info.sids == tuple(spec.sids) and info.unix_name == "root"


@pytest.mark.parametrize("claims", [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
def test_level8_claims_are_refused(claims: tuple[int, int, int]) -> None:
    with pytest.raises(NpaError, match="claims"):
        decode_request(build_request(NpaSpec(level=8, num_claims=claims)))


@given(specs(level=5) | specs(level=8))
@settings(max_examples=80)
def test_levels_5_and_8_decode_what_was_built(spec: NpaSpec) -> None:
    info = decode_request(build_request(spec))
    for name, value in expected(spec).items():
        assert getattr(info, name) == value, name


# ----------------------------------------------------------------- malformed


def test_every_truncation_is_refused() -> None:
    blob = build_request()
    for n in range(len(blob)):
        cut = blob[:n]
        if n >= 4:  # keep the prefix consistent so the body is what is short
            cut = (n - 4).to_bytes(4, "big") + cut[4:]
        with pytest.raises(NpaError):
            decode_request(cut)


def _patched(blob: bytes, offset: int, value: bytes) -> bytes:
    return blob[:offset] + value + blob[offset + len(value) :]


GOOD = build_request()


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (GOOD + b"\0", "length prefix"),
        ((len(GOOD) - 3).to_bytes(4, "big") + GOOD[4:] + b"\0", "after the request"),
        (_patched(GOOD, 4, b"NPAX"), "magic"),
        (_patched(GOOD, 12, b"\x05\0\0\0"), "discriminant"),
        (_patched(_patched(GOOD, 8, b"\x06\0\0\0"), 12, b"\x06\0\0\0"), "unknown level 6"),
        (_patched(_patched(GOOD, 8, b"\0\0\0\0"), 12, b"\0\0\0\0"), "unknown level 0"),
        (build_request(NpaSpec(session_info=False)), "no session_info"),
        (build_request(NpaSpec(uid=1 << 32)), "32 bits"),
        (build_request(NpaSpec(groups=[0, 1 << 40])), "32 bits"),
        (build_request(NpaSpec(remote_client_addr=None)), "not an IP"),
        (build_request(NpaSpec(local_server_addr="fileserver")), "not an IP"),
        (build_request(NpaSpec(remote_client_addr="127.0.0.1\u00e9")), "encoding"),
        (b"\0\0\0\x08NPAM\x07\0\0\0", "out of range"),
        ((1 << 20).to_bytes(4, "big") + bytes(1 << 20), "exceeds"),
    ],
)
def test_malformed_requests(blob: bytes, message: str) -> None:
    with pytest.raises(NpaError, match=message):
        decode_request(blob)


def _find_u32(blob: bytes, value: int, start: int = 0) -> int:
    off = blob.index(value.to_bytes(4, "little"), start)
    assert off % 4 == 0
    return off


def test_string_header_checks() -> None:
    blob = build_request(NpaSpec(remote_client_name="ABCDEFG"))  # max=actual=8
    off = blob.index(b"ABCDEFG") - 12
    assert blob[off : off + 12] == bytes.fromhex("080000000000000008000000")
    for header in ("080000000100000008000000", "070000000000000008000000",
                   "080000000000000000000000", "09000000000000000900000000"):
        with pytest.raises(NpaError):
            decode_request(_patched(blob, off, bytes.fromhex(header)))
    with pytest.raises(NpaError, match="NUL"):
        decode_request(_patched(blob, off + 12 + 7, b"X"))
    with pytest.raises(NpaError, match="NUL"):
        decode_request(_patched(blob, off + 12 + 3, b"\0"))


def test_token_counts_and_sid_checks() -> None:
    sids = ["S-1-5-32-544", "S-1-5-32-551"]
    blob = build_request(NpaSpec(sids=sids))
    off = blob.index(bytes.fromhex("02000000020000000102000000000005"))
    for bad, message in [
        ("ffffffffffffffff", "count"),
        ("0200000003000000", "array size"),
        ("0300000003000000", "count|truncated|SID"),
    ]:
        with pytest.raises(NpaError, match=message):
            decode_request(_patched(blob, off, bytes.fromhex(bad)))
    with pytest.raises(NpaError, match="revision"):
        decode_request(_patched(blob, off + 8, b"\x02"))
    with pytest.raises(NpaError, match="sub-authorities"):
        decode_request(_patched(blob, off + 9, b"\x10"))


def test_unix_token_group_checks() -> None:
    blob = build_request(NpaSpec(uid=1234567, groups=[7, 8, 9]))
    uid_off = blob.index((1234567).to_bytes(8, "little"))
    size_off = uid_off - 8 if blob[uid_off - 4 : uid_off] == bytes(4) else uid_off - 4
    assert blob[size_off : size_off + 4] == b"\x03\0\0\0"
    with pytest.raises(NpaError, match="ngroups"):
        decode_request(_patched(blob, size_off, b"\x02\0\0\0"))
    ngroups_off = uid_off + 16
    with pytest.raises(NpaError, match="count"):
        decode_request(_patched(blob, ngroups_off, b"\xff\xff\0\0"))


def test_ignore_pointers_must_be_null() -> None:
    blob = build_request(NpaSpec(session_key=b"\xaa" * 16))
    key = blob.index(b"\xaa" * 16)
    for off in (key - 8, key + 16):  # torture before the key's length, credentials after
        assert blob[off : off + 4] == bytes(4)
        with pytest.raises(NpaError, match="ignore"):
            decode_request(_patched(blob, off, b"\x00\x00\x02\x00"))


def test_required_tokens() -> None:
    blob = build_request(NpaSpec(session_key=b"\xaa" * 16))
    key = blob.index(b"\xaa" * 16)
    tok = key - 8 - 16  # security_token, unix_token, info, unix_info, torture
    for off in (tok, tok + 4):
        with pytest.raises(NpaError, match="token"):
            decode_request(_patched(blob, off, bytes(4)))


def test_huge_counts_fail_fast() -> None:
    # A count of 2**32-1 SIDs or groups must be refused before anything is built.
    blob = build_request(NpaSpec(sids=["S-1-1-0"]))
    off = blob.index(bytes.fromhex("010000000100000001010000000000010000000000"))
    tracemalloc.start()
    try:
        with pytest.raises(NpaError):
            decode_request(_patched(blob, off, b"\xff\xff\xff\xff\xff\xff\xff\xff"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # nothing sized by the count was allocated


def test_request_length_prefix() -> None:
    assert npa.request_length(len(GOOD[4:]).to_bytes(4, "big")) == len(GOOD) - 4
    for bad in (b"\0\0\0\x0b", b"\x00\x10\x00\x00", b"\xff\xff\xff\xff", b"\0\0\x01"):
        with pytest.raises(NpaError):
            npa.request_length(bad)


# --------------------------------------------------------------------- fuzz

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.integers(1, 64)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("u32"), st.integers(0, 10_000), st.integers(0, 0xFFFFFFFF)),
)


def _mutate(blob: bytes, muts: list[tuple[str, int, Any]], fix_length: bool) -> bytes:
    b = bytearray(blob)
    for kind, where, arg in muts:
        pos = 4 + where % max(1, len(b) - 4)
        if kind == "flip":
            b[pos % len(b)] ^= arg
        elif kind == "cut":
            del b[pos : pos + arg]
        elif kind == "insert":
            b[pos:pos] = arg
        else:
            b[pos - pos % 4 : pos - pos % 4 + 4] = arg.to_bytes(4, "little")
    if fix_length and len(b) >= 4:
        b[:4] = (len(b) - 4).to_bytes(4, "big")
    return bytes(b)


@given(
    st.sampled_from([REAL_BLOB, GOOD, build_request(NpaSpec(level=5)),
                     build_request(NpaSpec(level=8, device_sids=["S-1-5-9"]))]),
    st.lists(_mutation, min_size=1, max_size=4),
    st.booleans(),
)
@settings(max_examples=3000, deadline=None)
def test_mutations_decode_or_raise_npa_error(
    blob: bytes, muts: list[tuple[str, int, Any]], fix_length: bool
) -> None:
    data = _mutate(blob, muts, fix_length)
    start = time.perf_counter()
    with contextlib.suppress(NpaError):
        assert isinstance(decode_request(data), NpaInfo)
    # a hang guard, not a speed test (a decode takes microseconds)
    assert time.perf_counter() - start < 2.0


@given(st.binary(max_size=512))
@settings(max_examples=1000)
def test_random_bytes_decode_or_raise_npa_error(data: bytes) -> None:
    for candidate in (data, len(data).to_bytes(4, "big") + b"NPAM" + data):
        with contextlib.suppress(NpaError):
            decode_request(candidate)


# -------------------------------------------------------------------- reply

REPLY_7 = bytes.fromhex(
    "00000020 4e50414d 07000000 07000000 0200 ff05 00000000 0010000000000000 00000000"
)


def test_reply_exact_bytes() -> None:
    assert encode_reply() == REPLY_7 and len(REPLY_7) == npa.REPLY_BYTES
    for level in (5, 8):
        r = encode_reply(level)
        assert r[8:16] == bytes([level, 0, 0, 0, level, 0, 0, 0]) and r[16:] == REPLY_7[16:]
    assert encode_reply(7, 0xC0000022)[-4:] == bytes.fromhex("220000c0")
    with pytest.raises(ValueError):
        encode_reply(6)


@needs_ndrdump
def test_reply_agrees_with_ndrdump() -> None:
    f = dumped(ndrdump(REPLY_7, "named_pipe_auth_rep"))
    assert f["file_type"] == ["0x0002 (2)"] and f["device_state"] == ["0x05ff (1535)"]
    assert f["allocation_size"] == ["0x0000000000001000 (4096)"]
    assert f["status"] == ["NT_STATUS_OK"]
