"""Samba's registry records and message datagrams, byte for byte (no Samba needed).

The expected bytes are what ``net conf`` 4.17 wrote in a real registry.tdb
(``tdbdump``); tests/system/test_regdb.py checks the round trip with Samba's
own tools.
"""

from __future__ import annotations

import os
import struct

import pytest

from remotevss.samba import dgm
from remotevss.samba.regdb import (
    REG_DWORD,
    REG_MULTI_SZ,
    REG_SZ,
    RegdbError,
    RegdbFormatError,
    RegdbUnsupported,
    format_value,
    key_path,
    pack_subkeys,
    pack_values,
    reg_sz,
    share_params,
    share_values,
    unpack_subkeys,
    unpack_values,
)

# what `net conf addshare probe /tmp/wtreg/data writeable=y guest_ok=n "a comment"` stored
NET_CONF_VALUES = (
    b"\x03\x00\x00\x00"
    b"path\x00\x01\x00\x00\x00\x20\x00\x00\x00" + "/tmp/wtreg/data\0".encode("utf-16-le")
    + b"comment\x00\x01\x00\x00\x00\x14\x00\x00\x00" + "a comment\0".encode("utf-16-le")
    + b"guest ok\x00\x01\x00\x00\x00\x06\x00\x00\x00" + "no\0".encode("utf-16-le")
)  # fmt: skip


def test_key_paths_are_normalized_as_samba_does() -> None:
    assert key_path("HKLM\\SOFTWARE\\Samba\\smbconf") == b"HKLM\\SOFTWARE\\SAMBA\\SMBCONF\0"
    assert key_path("\\HKLM\\x\\\\") == b"HKLM\\X\0"  # outer backslashes stripped
    assert key_path("SAMBA_REGVAL", "HKLM\\Software\\Samba\\smbconf\\Probe\\") == (
        b"SAMBA_REGVAL\\HKLM\\SOFTWARE\\SAMBA\\SMBCONF\\PROBE\0"
    )
    with pytest.raises(RegdbUnsupported):
        key_path("HKLM\\Software\\Samba\\smbconf\\daten-ä")


def test_subkey_lists_round_trip_and_match_samba() -> None:
    assert pack_subkeys(["probe"]) == b"\x01\x00\x00\x00probe\x00"
    assert pack_subkeys([]) == b"\x00\x00\x00\x00"
    names = ["global", "data@{x}", "Plain"]
    assert unpack_subkeys(pack_subkeys(names), "t") == names


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # no counter
        b"\x01\x00",  # short counter
        b"\x02\x00\x00\x00one\x00",  # one name short
        b"\x01\x00\x00\x00one",  # not NUL-terminated
        b"\x01\x00\x00\x00one\x00extra",  # bytes after the list
        b"\x01\x00\x00\x00" + b"x" * 256 + b"\x00",  # longer than an fstring
        b"\x01\x00\x00\x00\xff\xfe\x00",  # not UTF-8
    ],
)
def test_bad_subkey_lists_are_refused(raw: bytes) -> None:
    with pytest.raises(RegdbFormatError):
        unpack_subkeys(raw, "t")


def test_values_match_what_net_conf_wrote() -> None:
    params = [("path", "/tmp/wtreg/data"), ("comment", "a comment"), ("guest ok", "no")]
    assert pack_values(share_values(params)) == NET_CONF_VALUES
    values = unpack_values(NET_CONF_VALUES, "t")
    assert share_params(values, "t") == params


@pytest.mark.parametrize("cut", [1, 5, 12, 20, len(NET_CONF_VALUES) - 1])
def test_truncated_value_lists_are_refused(cut: int) -> None:
    with pytest.raises(RegdbFormatError):
        unpack_values(NET_CONF_VALUES[:cut], "t")


def test_value_list_with_a_length_past_the_record_is_refused() -> None:
    raw = b"\x01\x00\x00\x00x\x00" + struct.pack("<II", REG_SZ, 0xFFFFFFF0) + b"a\x00"
    with pytest.raises(RegdbFormatError, match="runs past"):
        unpack_values(raw, "t")
    with pytest.raises(RegdbFormatError, match="after the value list"):
        unpack_values(NET_CONF_VALUES + b"\x00", "t")


def test_share_values_as_libsmbconf_stores_them() -> None:
    """A repeated name replaces the earlier value (case-insensitively) and moves to the
    end; include lines become one REG_MULTI_SZ ``includes`` value, last."""
    values = share_values(
        [("path", "/a"), ("include", "/etc/x.conf"), ("Comment", "c"), ("PATH", "/b"),
         ("include", "/etc/y.conf")]
    )  # fmt: skip
    assert [(n, t) for n, t, _ in values] == [
        ("Comment", REG_SZ), ("PATH", REG_SZ), ("includes", REG_MULTI_SZ)
    ]  # fmt: skip
    assert values[1][2] == reg_sz("/b")
    assert values[2][2] == "/etc/x.conf\0/etc/y.conf\0\0".encode("utf-16-le")
    assert share_params(values, "t") == [
        ("Comment", "c"), ("PATH", "/b"), ("include", "/etc/x.conf"), ("include", "/etc/y.conf")
    ]  # fmt: skip


@pytest.mark.parametrize(
    "params",
    [
        [("lock directory", "/x")],  # not allowed in the registry
        [("Lock  Directory", "/x")],  # compared as Samba's strwicmp does
        [("includes", "x")],
        [("path", "a\0b")],  # NUL cannot be stored
        [("bad\\name", "x")],
        [("", "x")],
        [("path", "\udcff")],  # a lone surrogate is no string
    ],
)
def test_values_smbconf_would_refuse_are_refused(params: list[tuple[str, str]]) -> None:
    with pytest.raises(RegdbError):
        share_values(params)


def test_values_are_printed_as_smbconf_prints_them() -> None:
    assert format_value(REG_SZ, reg_sz("ü x"), "t") == "ü x"
    assert format_value(REG_DWORD, struct.pack("<I", 0xFFFFFFFF), "t") == "-1"
    assert format_value(REG_MULTI_SZ, "a\0b\0\0".encode("utf-16-le"), "t") == '"a" "b" '
    assert format_value(3, b"\x01\x02", "t") == "binary (2 bytes)"
    assert format_value(11, b"", "t") == "<unprintable>"
    with pytest.raises(RegdbFormatError):
        format_value(REG_SZ, b"abc", "t")  # odd length


def test_message_datagram_layout() -> None:
    """cookie 0, destination and source server_id (pid u64, task u32, vnn u32,
    unique u64), the type, then the payload (messages_dgm.c, messages_util.c)."""
    raw = dgm.datagram(dgm.MSG_SMB_FORCE_TDIS, b"data@{x}\0", 4242, os.getpid())
    assert len(raw) == 8 + dgm.HEADER_LENGTH + 9 and dgm.HEADER_LENGTH == 52
    cookie, dpid, dtask, dvnn, duniq, spid, _, svnn, _, mtype = struct.unpack_from(
        "<QQIIQQIIQI", raw
    )
    assert (cookie, dpid, dtask, dvnn, duniq) == (0, 4242, 0, 0xFFFFFFFF, 0)
    assert (spid, svnn, mtype) == (os.getpid(), 0xFFFFFFFF, 0x302)
    assert raw[60:] == b"data@{x}\0"
    with pytest.raises(ValueError, match="fragments"):
        dgm.datagram(dgm.MSG_SMB_FORCE_TDIS, b"x" * 1000, 1, 2)
