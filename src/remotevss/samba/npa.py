"""smbd's named-pipe hand-off: decode ``named_pipe_auth_req``, encode the reply.

Why hand-written: python3-samba has no binding for ``named_pipe_auth`` and its
``session_info`` cannot be sliced out (NDR alignment is relative to the start
of the whole blob).  Why strict: the blob is the caller's identity; only root
can connect (the transport checks SO_PEERCRED), but a bug in smbd or a stray
root process must end in a refused connection, never in a wrong identity or
an exception we did not expect.  Every count and length is checked against
the bytes that are left and against a fixed cap before anything is read or
allocated, the layout is fixed (no recursion), and anything malformed raises
:class:`NpaError`.

Layouts (``librpc/idl/named_pipe_auth.idl``, ``auth.idl``, ``security.idl``):

* level 5 (Samba 4.17.0-4.17.8, 4.18.0-4.18.3): info7's fields plus a
  trailing ``boolean8 need_idle_server``;
* level 7 (4.17.9+, 4.18.4+, 4.19): verified byte for byte against the
  installed 4.17.12 ``ndrdump`` and a live smbd.  4.19 widened
  ``auth_user_info.authenticated`` (u8) to ``user_flags`` (u32) without
  bumping the level; the two encode identically up to the three bytes that
  are padding in 4.17, so both parse here (``user_flags`` holds the low byte);
* level 8 (4.20+): ``user_flags`` is a u32 and ``security_token`` gained
  claim counts, claim arrays, device SIDs and ``evaluate_claims``.  Decoded
  from the 4.20 IDL, not verified against a 4.20 smbd (none here).  Tokens
  that carry claims are refused: claims use NDR relative pointers we cannot
  check without an oracle, and smbd only fills them from Kerberos PACs with
  claims (AD with dynamic access control).

Pad bytes are not checked (as in Samba and ``fsrvp.calls``); the two
``[ignore]`` pointers must be NULL; strings must be NUL-terminated UTF-8
(addresses ASCII IP literals, as Samba's own server requires).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from uuid import UUID

MAGIC = b"NPAM"
LEVELS = (5, 7, 8)
#: smbd accepts replies up to 0xFFFFFF; a real request is 1-3 KiB, a token of
#: a user in a thousand groups about 40 KiB.  A megabyte is plenty.
MAX_REQUEST_BYTES = 1 << 20
MAX_SIDS = 8192
MAX_GROUPS = 65536  # Linux NGROUPS_MAX
MAX_STRING_BYTES = 4096
MAX_BLOB_BYTES = 65536
MAX_SUB_AUTHS = 15

FILE_TYPE_MESSAGE_MODE = 2
DEVICE_STATE = 0x05FF  # what Samba's own servers answer: 0xff | 0x0400 | 0x0100
ALLOCATION_SIZE = 4096
REPLY_BYTES = 36

#: Samba's helper SIDs (``libcli/security/util_sid.c``): the NPA flags smbd
#: appends to every token, and the SMB3 encryption SID; never group SIDs.
SID_NPA_FLAGS_PREFIX = "S-1-22-2041152804-"
SID_SAMBA_SMB3_PREFIX = "S-1-22-1397571891-"
NPA_FLAG_NEED_IDLE = 1
NPA_FLAG_WINBIND_OFF = 2


class NpaError(ValueError):
    """The request is malformed, truncated, oversized or of an unknown level."""


@dataclass(frozen=True)
class NpaInfo:
    """What smbd says about the SMB session behind one pipe open."""

    level: int
    transport: int  # 1 = NCACN_NP
    remote_client_name: str  # smbd sends its own host name here, not the client's
    remote_client_addr: str  # the SMB client's IP address
    remote_client_port: int
    local_server_name: str
    local_server_addr: str
    local_server_port: int
    sids: tuple[str, ...]
    privilege_mask: int
    rights_mask: int
    uid: int
    gid: int
    groups: tuple[int, ...]
    account_name: str = ""
    domain_name: str = ""
    unix_name: str = ""
    user_principal_name: str = ""
    dns_domain_name: str = ""
    full_name: str = ""
    sanitized_username: str = ""
    acct_flags: int = 0
    user_flags: int = 0  # levels 5/7: the "authenticated" byte; level 8: netlogon user_flags
    device_sids: tuple[str, ...] = ()  # level 8 only
    unique_session_token: UUID = UUID(int=0)
    ticket_type: int = 0
    need_idle_server: bool | None = None  # level 5 only; later levels use the NPA-flags SID
    session_key: bytes = field(default=b"", repr=False)

    @property
    def npa_flags(self) -> int | None:
        """The flags of the NPA-flags SID smbd appends (None: no such SID)."""
        for sid in self.sids:
            if sid.startswith(SID_NPA_FLAGS_PREFIX):
                return int(sid[len(SID_NPA_FLAGS_PREFIX) :])
        return None


class _Reader:
    """A cursor over the whole request; alignment is relative to its first byte."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise NpaError(f"truncated: {what} needs {n} bytes at offset {self.pos}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def align(self, n: int) -> None:
        pad = -self.pos % n
        if pad > self.left:
            raise NpaError(f"truncated: padding at offset {self.pos}")
        self.pos += pad

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        self.align(2)
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        self.align(4)
        return int.from_bytes(self.take(4, what), "little")

    def hyper(self, what: str) -> int:
        self.align(8)
        return int.from_bytes(self.take(8, what), "little")

    def nttime(self, what: str) -> int:  # ``udlong``: 8 bytes, 4-aligned
        self.align(4)
        return int.from_bytes(self.take(8, what), "little")

    def ptr(self, what: str) -> bool:
        return self.u32(what) != 0

    def null_ptr(self, what: str) -> None:
        if self.u32(what):
            raise NpaError(f"{what}: an [ignore] pointer must be NULL")

    def count(self, what: str, cap: int, item_bytes: int) -> int:
        n = self.u32(what)
        if n > cap or n * item_bytes > self.left:
            raise NpaError(f"{what}: count {n} exceeds the cap or the bytes left")
        return n

    def conformance(self, what: str, expected: int) -> None:
        if self.u32(what) != expected:
            raise NpaError(f"{what}: array size does not match its count")

    def string(self, what: str, ascii_only: bool = False) -> str:
        """``[string,charset(UTF8|DOS)] uint8 *``: max_count, offset, actual_count, bytes."""
        size = self.u32(what)
        offset = self.u32(what)
        length = self.u32(what)
        if offset != 0 or not 1 <= length <= size or length > MAX_STRING_BYTES:
            raise NpaError(f"{what}: bad string header ({size}, {offset}, {length})")
        raw = self.take(length, what)
        if raw[-1] != 0 or 0 in raw[:-1]:
            raise NpaError(f"{what}: string not NUL-terminated exactly once")
        try:
            return raw[:-1].decode("ascii" if ascii_only else "utf-8")
        except UnicodeDecodeError as exc:
            raise NpaError(f"{what}: bad encoding") from exc

    def blob(self, what: str) -> bytes:
        """DATA_BLOB: u32 length + bytes."""
        n = self.u32(what)
        if n > MAX_BLOB_BYTES:
            raise NpaError(f"{what}: {n} bytes exceeds {MAX_BLOB_BYTES}")
        return self.take(n, what)

    def sid(self, what: str) -> str:
        self.align(4)
        revision = self.u8(what)
        n = self.u8(what)
        if revision != 1 or n > MAX_SUB_AUTHS:
            raise NpaError(f"{what}: bad SID header (revision {revision}, {n} sub-authorities)")
        authority = int.from_bytes(self.take(6, what), "big")
        subs = struct.unpack(f"<{n}I", self.take(4 * n, what))
        # Samba's dom_sid_string(): hex authority from 2**32 - 1 on.
        ia = f"0x{authority:x}" if authority >= 0xFFFFFFFF else str(authority)
        return f"S-1-{ia}" + "".join(f"-{s}" for s in subs)

    def sids(self, what: str) -> tuple[str, ...]:
        """``u32 n; [size_is(n)] dom_sid x[*]`` not last in its struct: inline size."""
        n = self.count(what, MAX_SIDS, 8)
        self.conformance(what, n)
        return tuple(self.sid(what) for _ in range(n))


def request_length(prefix: bytes) -> int:
    """Bytes that follow the 4-byte big-endian length prefix (checked against the caps)."""
    if len(prefix) != 4:
        raise NpaError("the length prefix is 4 bytes")
    n = int.from_bytes(prefix, "big")
    if not 12 <= n <= MAX_REQUEST_BYTES - 4:
        raise NpaError(f"request length {n} out of range")
    return n


def decode_request(blob: bytes) -> NpaInfo:
    """Decode one whole request (length prefix included); raise NpaError if malformed."""
    if len(blob) > MAX_REQUEST_BYTES:
        raise NpaError(f"request of {len(blob)} bytes exceeds {MAX_REQUEST_BYTES}")
    if request_length(blob[:4]) != len(blob) - 4:
        raise NpaError("length prefix does not match the request size")
    if blob[4:8] != MAGIC:
        raise NpaError("not a named_pipe_auth request (no NPAM magic)")
    r = _Reader(blob, 8)
    level = r.u32("level")
    if r.u32("union discriminant") != level:
        raise NpaError("union discriminant differs from the level")
    if level not in LEVELS:
        raise NpaError(f"unknown level {level}")
    info = _decode_info(r, level)
    if r.left:
        raise NpaError(f"{r.left} bytes after the request")
    return info


def _decode_info(r: _Reader, level: int) -> NpaInfo:
    transport = r.u8("transport")
    p_rname = r.ptr("remote_client_name")
    p_raddr = r.ptr("remote_client_addr")
    rport = r.u16("remote_client_port")
    p_lname = r.ptr("local_server_name")
    p_laddr = r.ptr("local_server_addr")
    lport = r.u16("local_server_port")
    p_session = r.ptr("session_info")
    need_idle: bool | None = None
    if level == 5:
        flag = r.u8("need_idle_server")
        if flag > 1:
            raise NpaError("need_idle_server is not a boolean")
        need_idle = bool(flag)
    rname = r.string("remote_client_name") if p_rname else ""
    raddr = r.string("remote_client_addr", ascii_only=True) if p_raddr else ""
    lname = r.string("local_server_name") if p_lname else ""
    laddr = r.string("local_server_addr", ascii_only=True) if p_laddr else ""
    for what, addr in (("remote_client_addr", raddr), ("local_server_addr", laddr)):
        try:  # Samba's own server refuses what tsocket cannot parse
            ipaddress.ip_address(addr)
        except ValueError as exc:
            raise NpaError(f"{what}: not an IP address: {addr[:64]!r}") from exc
    if not p_session:
        raise NpaError("no session_info")
    # auth_session_info_transport
    if not r.ptr("session_info.session_info"):
        raise NpaError("no session_info.session_info")
    r.blob("exported_gssapi_credentials")  # empty from smbd; checked, not kept
    # auth_session_info scalars
    p_token = r.ptr("security_token")
    p_unix = r.ptr("unix_token")
    p_user = r.ptr("info")
    p_uinfo = r.ptr("unix_info")
    r.null_ptr("torture")
    session_key = r.blob("session_key")
    r.null_ptr("credentials")
    r.align(4)
    session_token = UUID(bytes_le=r.take(16, "unique_session_token"))
    ticket_type = r.u16("ticket_type")
    if not p_token or not p_unix:
        raise NpaError("session_info without a security or unix token")
    sids, privileges, rights, device_sids = _security_token(r, level)
    uid, gid, groups = _unix_token(r)
    user = _user_info(r, level) if p_user else {}
    uinfo = _unix_info(r) if p_uinfo else {}
    return NpaInfo(
        level=level,
        transport=transport,
        remote_client_name=rname,
        remote_client_addr=raddr,
        remote_client_port=rport,
        local_server_name=lname,
        local_server_addr=laddr,
        local_server_port=lport,
        sids=sids,
        privilege_mask=privileges,
        rights_mask=rights,
        uid=uid,
        gid=gid,
        groups=groups,
        device_sids=device_sids,
        unique_session_token=session_token,
        ticket_type=ticket_type,
        need_idle_server=need_idle,
        session_key=session_key,
        account_name=str(user.get("account_name", "")),
        user_principal_name=str(user.get("user_principal_name", "")),
        domain_name=str(user.get("domain_name", "")),
        dns_domain_name=str(user.get("dns_domain_name", "")),
        full_name=str(user.get("full_name", "")),
        acct_flags=int(user.get("acct_flags", 0)),
        user_flags=int(user.get("user_flags", 0)),
        unix_name=uinfo.get("unix_name", ""),
        sanitized_username=uinfo.get("sanitized_username", ""),
    )


def _security_token(r: _Reader, level: int) -> tuple[tuple[str, ...], int, int, tuple[str, ...]]:
    r.align(8)  # the struct holds a hyper
    sids = r.sids("security_token.sids")
    privileges = r.hyper("privilege_mask")
    rights = r.u32("rights_mask")
    device_sids: tuple[str, ...] = ()
    if level == 8:
        claims = [r.u32(f"num_{k}_claims") for k in ("local", "user", "device")]
        n_device = r.count("num_device_sids", MAX_SIDS, 8)
        if any(claims):
            raise NpaError("tokens with claims are not supported")
        for k in ("local", "user", "device"):
            r.conformance(f"{k}_claims", 0)
        r.conformance("device_sids", n_device)
        device_sids = tuple(r.sid("device_sids") for _ in range(n_device))
        r.u16("evaluate_claims")
    return sids, privileges, rights, device_sids


def _unix_token(r: _Reader) -> tuple[int, int, tuple[int, ...]]:
    size = r.u32("unix_token.groups size")  # a last conformant array: size hoisted
    r.align(8)
    uid = r.hyper("uid")
    gid = r.hyper("gid")
    n = r.count("ngroups", MAX_GROUPS, 8)
    if size != n:
        raise NpaError("unix_token.groups: array size does not match ngroups")
    if n:  # each hyper aligns itself: an empty array has no padding
        r.align(8)
    groups = struct.unpack(f"<{n}Q", r.take(8 * n, "groups"))
    if max(uid, gid, *groups) > 0xFFFFFFFF:  # Samba's uid_t/gid_t pull refuses them too
        raise NpaError("unix_token: a uid or gid does not fit 32 bits")
    return uid, gid, groups


_USER_STRINGS = (
    "account_name",
    "user_principal_name",
    "domain_name",
    "dns_domain_name",
    "full_name",
    "logon_script",
    "profile_path",
    "home_directory",
    "home_drive",
    "logon_server",
)


def _user_info(r: _Reader, level: int) -> dict[str, str | int]:
    present = [r.ptr(_USER_STRINGS[0]), r.ptr(_USER_STRINGS[1])]
    r.u8("user_principal_constructed")
    present += [r.ptr(name) for name in _USER_STRINGS[2:]]
    for what in ("last_logon", "last_logoff", "acct_expiry", "pwd_last_set", "pwd_can", "pwd_must"):
        r.nttime(what)
    r.u16("logon_count")
    r.u16("bad_password_count")
    out: dict[str, str | int] = {"acct_flags": r.u32("acct_flags")}
    out["user_flags"] = r.u32("user_flags") if level == 8 else r.u8("authenticated")
    for name, p in zip(_USER_STRINGS, present, strict=True):
        if p:
            out[name] = r.string(name)
    return out


def _unix_info(r: _Reader) -> dict[str, str]:
    p_name = r.ptr("unix_name")
    p_sane = r.ptr("sanitized_username")
    out: dict[str, str] = {}
    if p_name:
        out["unix_name"] = r.string("unix_name")
    if p_sane:
        out["sanitized_username"] = r.string("sanitized_username")
    return out


def encode_reply(
    level: int = 7,
    status: int = 0,
    *,
    file_type: int = FILE_TYPE_MESSAGE_MODE,
    device_state: int = DEVICE_STATE,
    allocation_size: int = ALLOCATION_SIZE,
) -> bytes:
    """``named_pipe_auth_rep`` (36 bytes; the same layout at levels 5, 7 and 8)."""
    if level not in LEVELS:
        raise ValueError(f"no reply layout for level {level}")
    body = MAGIC + struct.pack(
        "<IIHH4xQI", level, level, file_type, device_state, allocation_size, status
    )
    return len(body).to_bytes(4, "big") + body
