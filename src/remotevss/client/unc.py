r"""Share paths: parse and normalise ``\\host\share`` the way VSS does before FSRVP.

Why: the server matches shares by the UNC the client sends, Windows sends one
*PathFormat* per set (MS-FSRVP <15>: the host name form), and DiskShadow adds
a trailing backslash.  VSS's GetRootAndLogicalPrefixPaths turns whatever the
user typed into that one form; this module is our equivalent:

* accepted host forms: a host name (``fs``), an FQDN (``fs.corp.example``),
  an IPv4 dotted quad, an IPv6 literal (bare ``::1`` or ``[::1]``) and
  Windows' ``ipv6-literal.net`` spelling (``2001-db8--1.ipv6-literal.net``,
  ``-`` for ``:``, ``s`` before a zone id);
* ``\\host\share`` and ``\\host\share\`` (and ``//host/share``) are the same
  share; host names are compared and written in lower case; share names keep
  their case but compare case-insensitively (SMB does);
* the wire form is ``\\host\share\`` (DiskShadow's), IPv6 hosts in their
  ``ipv6-literal.net`` spelling (``:`` is not valid in a UNC host);
* link-local IPv6 (``fe80::/10``, zone ids) is refused: such an address names
  a different machine on every link, so it cannot identify a server;
* a path below the share (``\\fs\share\dir``) is refused: FSRVP copies whole
  shares;
* no DNS unless asked: :func:`reverse_lookup` turns an IP into a host name
  only when the caller wants it, and :class:`ServerForm` keeps one set from
  mixing ``fs`` and ``fs.corp.example`` (or, with ``resolve=True``, an
  address and a name) for the same server.

Every failure is a :class:`~remotevss.client.errors.BadUnc` naming the reason.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, replace
from typing import Literal

from remotevss.client.errors import BadUnc

HostKind = Literal["name", "fqdn", "ipv4", "ipv6"]

MAX_UNC_CHARS = 1024
MAX_SHARE_CHARS = 80  # Windows' and Samba's limit for a share name
_IPV6_LITERAL_NET = ".ipv6-literal.net"
# What no SMB share name can hold: the characters MS-FSCC forbids in any path
# component (separators, wildcards, the stream colon) and the controls.  Windows
# also refuses ``+=;,[]`` in share names, but Samba serves shares named ``data+1``
# or ``x[1]`` and FSRVP servers snapshot them: the server judges those names.
_BAD_SHARE_CHARS = re.compile(r'[\x00-\x1f"*/:<>?\\|]')
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_DOTTED_NUMERIC = re.compile(r"^[0-9.]+$")


@dataclass(frozen=True, slots=True)
class Unc:
    """One share, normalised.  ``host`` is lower case; for IP kinds it is the
    canonical address text (IPv6 compressed, no brackets)."""

    host: str
    share: str
    kind: HostKind

    @property
    def wire_host(self) -> str:
        """The host as written in a UNC (IPv6 in the ipv6-literal.net spelling)."""
        if self.kind == "ipv6":
            return self.host.replace(":", "-") + _IPV6_LITERAL_NET
        return self.host

    @property
    def wire(self) -> str:
        r"""What goes into FSRVP requests: ``\\host\share\``."""
        return f"\\\\{self.wire_host}\\{self.share}\\"

    @property
    def display(self) -> str:
        r"""``\\host\share`` for people."""
        return f"\\\\{self.wire_host}\\{self.share}"

    @property
    def connect_host(self) -> str:
        """What to give the socket layer: the name, or the bare address."""
        return self.host

    @property
    def key(self) -> tuple[str, str]:
        """Identity within one server form: (host, share) case-folded."""
        return self.host, self.share.casefold()

    def with_host(self, host: str) -> Unc:
        return replace(self, host=host, kind=classify_host(host)[1])

    def __str__(self) -> str:
        return self.display


def _check_ip(unc: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            raise BadUnc(unc, "IPv6 zone ids (link-local addresses) cannot identify a server")
        if addr.ipv4_mapped is not None:
            _check_ip(unc, addr.ipv4_mapped)
            return
        if addr.is_link_local:
            raise BadUnc(unc, f"{addr} is a link-local IPv6 address; use a routable one or a name")
    if addr.is_unspecified or addr.is_multicast:
        raise BadUnc(unc, f"{addr} cannot be a file server's address")
    if isinstance(addr, ipaddress.IPv4Address) and addr == ipaddress.IPv4Address("255.255.255.255"):
        raise BadUnc(unc, f"{addr} cannot be a file server's address")


def classify_host(host: str, unc: str | None = None) -> tuple[str, HostKind]:
    """(normalised host, kind) for a UNC host part; BadUnc if it is none of the forms."""
    where = unc if unc is not None else host
    text = host.strip()
    if not text:
        raise BadUnc(where, "empty host name")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if ":" not in text:
            raise BadUnc(where, "brackets are only for IPv6 literals")
    lowered = text.lower()
    if lowered.endswith(_IPV6_LITERAL_NET):
        literal = lowered[: -len(_IPV6_LITERAL_NET)]
        if not literal:
            raise BadUnc(where, "empty ipv6-literal.net address")
        literal = literal.replace("-", ":").replace("s", "%")
        try:
            v6 = ipaddress.IPv6Address(literal)
        except ValueError:
            raise BadUnc(where, f"{text!r} is not a valid ipv6-literal.net name") from None
        _check_ip(where, v6)
        return v6.compressed, "ipv6"
    if ":" in lowered or "%" in lowered:
        try:
            v6 = ipaddress.IPv6Address(lowered)
        except ValueError:
            raise BadUnc(where, f"{text!r} is not a valid IPv6 address") from None
        _check_ip(where, v6)
        if v6.ipv4_mapped is not None:
            return str(v6.ipv4_mapped), "ipv4"
        return v6.compressed, "ipv6"
    if _DOTTED_NUMERIC.match(lowered):
        try:
            v4 = ipaddress.IPv4Address(lowered)
        except ValueError:
            raise BadUnc(
                where, f"{text!r} looks like an IPv4 address but is not a valid dotted quad"
            ) from None
        _check_ip(where, v4)
        return str(v4), "ipv4"
    if lowered.endswith("."):
        lowered = lowered[:-1]  # an absolute FQDN
    if len(lowered) > 253:
        raise BadUnc(where, "host name longer than 253 characters")
    labels = lowered.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise BadUnc(where, f"{text!r} is not a valid host name")
    return lowered, ("fqdn" if len(labels) > 1 else "name")


def parse_unc(text: str) -> Unc:
    r"""``\\host\share[\]`` (or ``//host/share[/]``) -> :class:`Unc`; BadUnc otherwise."""
    if not isinstance(text, str):
        raise BadUnc(repr(text), "not a string")
    raw = text.strip()
    if len(raw) > MAX_UNC_CHARS:
        raise BadUnc(raw[:80] + "...", f"longer than {MAX_UNC_CHARS} characters")
    if not (raw.startswith("\\\\") or raw.startswith("//")):
        raise BadUnc(text, r"expected \\host\share")
    body = raw[2:].replace("/", "\\")
    parts = body.split("\\")
    if len(parts) == 3 and parts[2] == "":
        parts = parts[:2]  # the trailing backslash
    if len(parts) < 2 or not parts[1]:
        raise BadUnc(text, r"expected \\host\share (no share name)")
    if len(parts) > 2:
        raise BadUnc(text, "a path inside a share; FSRVP shadow-copies whole shares")
    host_part, share = parts
    host, kind = classify_host(host_part, text)
    if len(share) > MAX_SHARE_CHARS:
        raise BadUnc(text, f"share name longer than {MAX_SHARE_CHARS} characters")
    bad = _BAD_SHARE_CHARS.search(share)
    if bad:
        raise BadUnc(text, f"share name contains {bad.group()!r}")
    if share.strip() != share or share in (".", ".."):
        raise BadUnc(text, "share name has leading or trailing blanks or is a dot name")
    return Unc(host, share, kind)


def first_label(host: str) -> str:
    return host.split(".", 1)[0]


def same_host_name(a: str, b: str) -> bool:
    """Whether two normalised host names are syntactically the same server:
    equal, or a short name equal to the other's first label (``fs`` and
    ``fs.corp.example``).  Two FQDNs in different domains are different; an
    address and a name are never equal here (that needs DNS)."""
    if a == b:
        return True
    a_ip = _is_ip(a)
    b_ip = _is_ip(b)
    if a_ip or b_ip:
        return False
    if "." in a and "." in b:
        return False
    return first_label(a) == first_label(b)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _addresses(host: str) -> set[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {str(info[4][0]).split("%", 1)[0] for info in infos}


class ServerForm:
    """The one host form a set uses for its server (the spec's PathFormat).

    The first share fixes the form; later shares on the same server are
    rewritten to it, so a set never mixes ``fs`` and ``fs.corp.example``.
    A share on what is (syntactically) a different host is refused; with
    ``resolve=True`` an address and a name that resolve to a common address
    count as the same server.
    """

    def __init__(self, first: Unc, *, resolve: bool = False) -> None:
        self.host = first.host
        self.kind: HostKind = first.kind
        self.resolve = resolve
        self._addrs: set[str] | None = None

    def matches(self, host: str) -> bool:
        if same_host_name(self.host, host):
            return True
        if not self.resolve:
            return False
        if self._addrs is None:
            self._addrs = _addresses(self.host)
        return bool(self._addrs & _addresses(host))

    def adopt(self, unc: Unc) -> Unc:
        """``unc`` rewritten to this set's host form; BadUnc if another server."""
        if unc.host == self.host:
            return unc
        if not self.matches(unc.host):
            hint = "" if self.resolve else " (write the same host form, or resolve names)"
            raise BadUnc(
                unc.display,
                f"host {unc.wire_host} is not this set's server {self.host}{hint}",
            )
        return replace(unc, host=self.host, kind=self.kind)


def reverse_lookup(unc: Unc, *, fqdn: bool = False) -> Unc:
    """An IP-addressed share rewritten to its host name (short unless ``fqdn``).

    Only when the caller asks: this is the one place the client does reverse
    DNS.  Names are returned unchanged (shortened if ``fqdn`` is False).
    BadUnc if the address has no usable name.
    """
    if unc.kind in ("name", "fqdn"):
        if fqdn or unc.kind == "name":
            return unc
        return unc.with_host(first_label(unc.host))
    try:
        name = socket.gethostbyaddr(unc.host)[0]
    except OSError as exc:
        raise BadUnc(unc.display, f"reverse lookup of {unc.host} failed: {exc}") from None
    host, kind = classify_host(name, unc.display)
    if kind not in ("name", "fqdn"):
        raise BadUnc(unc.display, f"reverse lookup of {unc.host} gave no name")
    if not fqdn:
        host = first_label(host)
    return unc.with_host(host)


def snapshot_share(exposed_name: str, default_host: str) -> tuple[str, str]:
    r"""(host, share) of a ShadowCopyShareName in either form the servers use:
    bare ``share@{guid}`` (Samba, our agent's default) or a UNC
    ``\\host\share@{guid}`` (the spec's wording)."""
    name = exposed_name.strip()
    if name.startswith("\\\\") or name.startswith("//"):
        parts = name[2:].replace("/", "\\").rstrip("\\").split("\\")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise BadUnc(exposed_name, "server returned a malformed snapshot share name")
        host, _ = classify_host(parts[0], exposed_name)
        return host, parts[1]
    if not name or "\\" in name or "/" in name:
        raise BadUnc(exposed_name, "server returned a malformed snapshot share name")
    return default_host, name


def unc_text(host: str, share: str) -> str:
    r"""``\\host\share`` with an IPv6 host in its ipv6-literal.net spelling."""
    _, kind = classify_host(host)
    wire = host.replace(":", "-") + _IPV6_LITERAL_NET if kind == "ipv6" else host
    return f"\\\\{wire}\\{share}"
