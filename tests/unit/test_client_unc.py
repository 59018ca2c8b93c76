r"""UNC normalisation for the client: every accepted form, every refusal, one host form per set."""

from __future__ import annotations

import socket

import pytest

from remotevss.client import unc as uncmod
from remotevss.client.errors import BadUnc, UsageError
from remotevss.client.unc import (
    ServerForm,
    classify_host,
    parse_unc,
    reverse_lookup,
    same_host_name,
    snapshot_share,
    unc_text,
)


@pytest.mark.parametrize(
    ("text", "host", "share", "kind", "wire"),
    [
        (r"\\fs\data", "fs", "data", "name", "\\\\fs\\data\\"),
        ("\\\\fs\\data\\", "fs", "data", "name", "\\\\fs\\data\\"),
        (r"\\FS\Data", "fs", "Data", "name", "\\\\fs\\Data\\"),
        (
            r"\\fs.corp.example\data",
            "fs.corp.example",
            "data",
            "fqdn",
            "\\\\fs.corp.example\\data\\",
        ),
        (
            r"\\FS.Corp.Example.\data",
            "fs.corp.example",
            "data",
            "fqdn",
            "\\\\fs.corp.example\\data\\",
        ),
        (r"\\10.1.2.3\data", "10.1.2.3", "data", "ipv4", "\\\\10.1.2.3\\data\\"),
        (
            r"\\127.0.0.1\fsrvp_share",
            "127.0.0.1",
            "fsrvp_share",
            "ipv4",
            "\\\\127.0.0.1\\fsrvp_share\\",
        ),
        (
            r"\\2001:db8::1\data",
            "2001:db8::1",
            "data",
            "ipv6",
            "\\\\2001-db8--1.ipv6-literal.net\\data\\",
        ),
        (
            r"\\[2001:DB8::1]\data",
            "2001:db8::1",
            "data",
            "ipv6",
            "\\\\2001-db8--1.ipv6-literal.net\\data\\",
        ),
        (
            r"\\2001-db8--1.IPV6-LITERAL.NET\data",
            "2001:db8::1",
            "data",
            "ipv6",
            "\\\\2001-db8--1.ipv6-literal.net\\data\\",
        ),
        (r"\\::1\data", "::1", "data", "ipv6", "\\\\--1.ipv6-literal.net\\data\\"),
        (r"\\::ffff:10.0.0.1\data", "10.0.0.1", "data", "ipv4", "\\\\10.0.0.1\\data\\"),
        ("//fs/data/", "fs", "data", "name", "\\\\fs\\data\\"),
        (r"\\fs\hidden$", "fs", "hidden$", "name", "\\\\fs\\hidden$\\"),
        (r"\\fs\my share", "fs", "my share", "name", "\\\\fs\\my share\\"),
        ("  \\\\fs\\data  ", "fs", "data", "name", "\\\\fs\\data\\"),
        (r"\\fs_1\data", "fs_1", "data", "name", "\\\\fs_1\\data\\"),
    ],
)
def test_accepted_forms(text: str, host: str, share: str, kind: str, wire: str) -> None:
    u = parse_unc(text)
    assert (u.host, u.share, u.kind, u.wire) == (host, share, kind, wire)
    assert u.display == wire.rstrip("\\")
    assert parse_unc(u.wire) == u  # the wire form parses back to itself
    assert parse_unc(u.display) == u


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("fs\\data", "expected"),
        ("\\fs\\data", "expected"),
        (r"\\fs", "no share"),
        ("\\\\fs\\", "no share"),
        (r"\\fs\data\dir", "inside a share"),
        ("\\\\fs\\data\\\\", "inside a share"),
        (r"\\\data", "empty host"),
        (r"\\fe80::1\data", "link-local"),
        (r"\\fe80::1%eth0\data", "zone"),
        (r"\\fe80--1s4.ipv6-literal.net\data", "zone"),
        (r"\\fe80--1.ipv6-literal.net\data", "link-local"),
        (r"\\[fe80::abcd]\data", "link-local"),
        (r"\\::\data", "cannot be"),
        (r"\\0.0.0.0\data", "cannot be"),
        (r"\\224.0.0.1\data", "cannot be"),
        (r"\\255.255.255.255\data", "cannot be"),
        (r"\\256.1.1.1\data", "dotted quad"),
        (r"\\10.1.2\data", "dotted quad"),
        (r"\\010.1.2.3\data", "dotted quad"),
        (r"\\fs!\data", "host name"),
        (r"\\-fs\data", "host name"),
        (r"\\fs..corp\data", "host name"),
        (r"\\[fs]\data", "brackets"),
        (r"\\zzz::1\data", "IPv6"),
        (r"\\x.ipv6-literal.net\data", "ipv6-literal"),
        (r"\\fs\da:ta", "contains"),
        (r"\\fs\da*ta", "contains"),
        (r"\\fs\da?ta", "contains"),
        (r"\\fs\da|ta", "contains"),
        (r"\\fs\<data>", "contains"),
        ('\\\\fs\\"data"', "contains"),
        (r"\\fs\data" + "\x01", "contains"),
        (r"\\fs\ data", "blanks"),
        (r"\\fs\..", "dot"),
        ("\\\\fs\\" + "s" * 81, "longer"),
        ("\\\\" + "a" * 300 + "\\data", "253"),
        ("\\\\fs\\" + "d" * 2000, "1024"),
        ("\\\\" + "a" * 64 + ".example\\data", "host name"),
    ],
)
def test_refused_forms(text: str, reason: str) -> None:
    with pytest.raises(BadUnc) as exc:
        parse_unc(text)
    assert reason in str(exc.value)
    assert isinstance(exc.value, UsageError) and isinstance(exc.value, ValueError)
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("share", ["data+1", "x[1]", "a,b;c=d", "[x]", "g%x", "a@b", "80" * 40])
def test_share_names_samba_serves_are_passed_on(share: str) -> None:
    """Windows refuses ``+=;,[]`` in share names, Samba serves them (and FSRVP servers
    snapshot them): the server is left to judge, as for rpcclient."""
    u = parse_unc(f"\\\\fs\\{share}")
    assert u.share == share and u.wire == f"\\\\fs\\{share}\\"
    assert parse_unc(f"//fs/{share}/") == u


def test_non_string_refused() -> None:
    with pytest.raises(BadUnc):
        parse_unc(b"\\\\fs\\data")  # type: ignore[arg-type]


def test_key_is_case_insensitive_for_share() -> None:
    assert parse_unc(r"\\fs\DATA").key == parse_unc(r"\\FS\data\\"[:-1]).key


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("fs", "fs", True),
        ("fs", "fs.corp.example", True),
        ("fs.corp.example", "fs", True),
        ("fs.corp.example", "fs.other.example", False),
        ("fs", "fs2", False),
        ("fs", "10.0.0.1", False),
        ("10.0.0.1", "10.0.0.1", True),
        ("10.0.0.1", "10.0.0.2", False),
    ],
)
def test_same_host_name(a: str, b: str, same: bool) -> None:
    assert same_host_name(a, b) is same


def test_server_form_never_mixes_forms() -> None:
    form = ServerForm(parse_unc(r"\\fs\a"))
    b = form.adopt(parse_unc(r"\\FS.corp.example\b"))
    assert b.host == "fs" and b.kind == "name" and b.wire == "\\\\fs\\b\\"
    form2 = ServerForm(parse_unc(r"\\fs.corp.example\a"))
    assert form2.adopt(parse_unc(r"\\fs\b")).host == "fs.corp.example"
    with pytest.raises(BadUnc, match="not this set's server"):
        form.adopt(parse_unc(r"\\other\c"))
    with pytest.raises(BadUnc, match="resolve"):
        form.adopt(parse_unc(r"\\10.0.0.1\c"))


def test_server_form_resolve_uses_forward_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"fs": {"10.0.0.1"}, "10.0.0.1": {"10.0.0.1"}, "10.0.0.2": {"10.0.0.2"}}
    monkeypatch.setattr(uncmod, "_addresses", lambda h: table.get(h, set()))
    form = ServerForm(parse_unc(r"\\fs\a"), resolve=True)
    assert form.adopt(parse_unc(r"\\10.0.0.1\b")).host == "fs"
    with pytest.raises(BadUnc):
        form.adopt(parse_unc(r"\\10.0.0.2\b"))


def test_reverse_lookup_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake(addr: str) -> tuple[str, list[str], list[str]]:
        calls.append(addr)
        if addr == "10.0.0.1":
            return "fs1.corp.example", [], [addr]
        raise socket.herror(1, "Unknown host")

    monkeypatch.setattr(socket, "gethostbyaddr", fake)
    u = parse_unc(r"\\10.0.0.1\data")
    assert calls == []  # parsing never resolves
    assert reverse_lookup(u).display == r"\\fs1\data"
    assert reverse_lookup(u, fqdn=True).display == r"\\fs1.corp.example\data"
    assert reverse_lookup(parse_unc(r"\\fs.corp.example\d")).host == "fs"
    assert reverse_lookup(parse_unc(r"\\fs\d"), fqdn=True).host == "fs"
    with pytest.raises(BadUnc, match="reverse lookup"):
        reverse_lookup(parse_unc(r"\\10.0.0.2\data"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("data@{0a1b}", ("dflt", "data@{0a1b}")),
        (r"\\FS1\data@{0a1b}", ("fs1", "data@{0a1b}")),
        ("\\\\fs1\\data@{0a1b}\\", ("fs1", "data@{0a1b}")),
    ],
)
def test_snapshot_share_accepts_both_forms(name: str, expected: tuple[str, str]) -> None:
    assert snapshot_share(name, "dflt") == expected


@pytest.mark.parametrize("name", ["", r"a\b", r"\\fs", r"\\fs\a\b", "a/b"])
def test_snapshot_share_refuses_malformed(name: str) -> None:
    with pytest.raises(BadUnc):
        snapshot_share(name, "dflt")


def test_unc_text_and_classify() -> None:
    assert unc_text("2001:db8::5", "s@{x}") == r"\\2001-db8--5.ipv6-literal.net\s@{x}"
    assert unc_text("fs", "s") == r"\\fs\s"
    assert classify_host("ANCHORFS") == ("anchorfs", "name")
