"""Build ``named_pipe_auth_req`` blobs the way smbd's NDR marshaller does (tests only).

Why a second, independent writer: the decoder under test must not check its
own bytes.  This one follows the IDL (``named_pipe_auth.idl``, ``auth.idl``,
``security.idl``) in the straightforward push order; ndrdump ``--validate``
vouches for its level-7 output, a live smbd for the decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from uuid import UUID


@dataclass
class NpaSpec:
    level: int = 7
    transport: int = 1
    remote_client_name: str | None = "FILESRV"
    remote_client_addr: str | None = "192.0.2.10"
    remote_client_port: int = 50123
    local_server_name: str | None = "FILESRV"
    local_server_addr: str | None = "192.0.2.1"
    local_server_port: int = 445
    need_idle_server: bool = False  # level 5
    session_info: bool = True
    gss_creds: bytes = b""
    sids: list[str] = field(
        default_factory=lambda: [
            "S-1-5-21-1-2-3-1000",
            "S-1-5-21-1-2-3-513",
            "S-1-1-0",
            "S-1-5-2",
            "S-1-5-11",
            "S-1-5-32-544",
            "S-1-22-1-0",
            "S-1-22-2-0",
            "S-1-22-2041152804-0",
        ]
    )
    privilege_mask: int = 0x200
    rights_mask: int = 0x10
    device_sids: list[str] = field(default_factory=list)  # level 8
    num_claims: tuple[int, int, int] = (0, 0, 0)  # level 8 (counts only; arrays stay empty)
    evaluate_claims: int = 1
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=lambda: [0, 4])
    user_info: bool = True
    account_name: str | None = "root"
    user_principal_name: str | None = None
    domain_name: str | None = "FILESRV"
    dns_domain_name: str | None = None
    full_name: str | None = "root"
    logon_script: str | None = ""
    profile_path: str | None = ""
    home_directory: str | None = ""
    home_drive: str | None = ""
    logon_server: str | None = "FILESRV"
    acct_flags: int = 0x10
    user_flags: int = 1
    wide_user_flags: bool = False  # Samba 4.19 at level 7: u32 user_flags, not u8 authenticated
    unix_info: bool = True
    unix_name: str | None = "root"
    sanitized_username: str | None = "root"
    session_key: bytes = bytes(range(16))
    unique_session_token: UUID = UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    ticket_type: int = 0


class _W:
    def __init__(self) -> None:
        self.b = bytearray(4)  # the big-endian length, filled in at the end
        self.next_ref = 0x20000  # Samba numbers referents 0x20000, 0x20004, ...

    def align(self, n: int) -> None:
        self.b += bytes(-len(self.b) % n)

    def u8(self, v: int) -> None:
        self.b.append(v)

    def u16(self, v: int) -> None:
        self.align(2)
        self.b += struct.pack("<H", v)

    def u32(self, v: int) -> None:
        self.align(4)
        self.b += struct.pack("<I", v)

    def hyper(self, v: int) -> None:
        self.align(8)
        self.b += struct.pack("<Q", v)

    def ptr(self, present: object) -> None:
        if present is None or present is False:
            self.u32(0)
            return
        self.u32(self.next_ref)
        self.next_ref += 4

    def string(self, s: str) -> None:
        raw = s.encode() + b"\0"
        self.u32(len(raw))
        self.u32(0)
        self.u32(len(raw))
        self.b += raw

    def blob(self, data: bytes) -> None:
        self.u32(len(data))
        self.b += data

    def sid(self, text: str) -> None:
        parts = text.split("-")
        rev, ia, subs = int(parts[1]), parts[2], [int(x) for x in parts[3:]]
        authority = int(ia, 16) if ia.startswith("0x") else int(ia)
        self.align(4)
        self.u8(rev)
        self.u8(len(subs))
        self.b += authority.to_bytes(6, "big")
        for s in subs:
            self.b += struct.pack("<I", s)


def build_request(spec: NpaSpec | None = None) -> bytes:
    s = spec or NpaSpec()
    w = _W()
    w.b += b"NPAM"
    w.u32(s.level)
    w.u32(s.level)
    w.u8(s.transport)
    w.ptr(s.remote_client_name)
    w.ptr(s.remote_client_addr)
    w.u16(s.remote_client_port)
    w.ptr(s.local_server_name)
    w.ptr(s.local_server_addr)
    w.u16(s.local_server_port)
    w.ptr(s.session_info)
    if s.level == 5:
        w.u8(int(s.need_idle_server))
    for text in (
        s.remote_client_name,
        s.remote_client_addr,
        s.local_server_name,
        s.local_server_addr,
    ):
        if text is not None:
            w.string(text)
    if s.session_info:
        _session_info(w, s)
    n = len(w.b) - 4
    w.b[:4] = n.to_bytes(4, "big")
    return bytes(w.b)


def _session_info(w: _W, s: NpaSpec) -> None:
    w.ptr(True)  # auth_session_info_transport.session_info
    w.blob(s.gss_creds)
    w.ptr(True)  # security_token
    w.ptr(True)  # unix_token
    w.ptr(s.user_info)
    w.ptr(s.unix_info)
    w.u32(0)  # torture
    w.blob(s.session_key)
    w.u32(0)  # credentials
    w.align(4)
    w.b += s.unique_session_token.bytes_le
    w.u16(s.ticket_type)
    # security_token
    w.align(8)
    w.u32(len(s.sids))
    w.u32(len(s.sids))
    for sid in s.sids:
        w.sid(sid)
    w.hyper(s.privilege_mask)
    w.u32(s.rights_mask)
    if s.level == 8:
        for n in s.num_claims:
            w.u32(n)
        w.u32(len(s.device_sids))
        for _ in range(3):
            w.u32(0)  # empty claim arrays: conformance only
        w.u32(len(s.device_sids))
        for sid in s.device_sids:
            w.sid(sid)
        w.u16(s.evaluate_claims)
    # security_unix_token
    w.u32(len(s.groups))
    w.hyper(s.uid)
    w.hyper(s.gid)
    w.u32(len(s.groups))
    for g in s.groups:
        w.hyper(g)
    if s.user_info:
        strings = [
            s.account_name,
            s.user_principal_name,
            s.domain_name,
            s.dns_domain_name,
            s.full_name,
            s.logon_script,
            s.profile_path,
            s.home_directory,
            s.home_drive,
            s.logon_server,
        ]
        w.ptr(strings[0])
        w.ptr(strings[1])
        w.u8(0)  # user_principal_constructed
        for text in strings[2:]:
            w.ptr(text)
        for _ in range(6):
            w.align(4)
            w.b += struct.pack("<Q", 0x01D0000000000000)
        w.u16(3)
        w.u16(0)
        w.u32(s.acct_flags)
        if s.level == 8 or s.wide_user_flags:
            w.u32(s.user_flags)
        else:
            w.u8(s.user_flags)
        for text in strings:
            if text is not None:
                w.string(text)
    if s.unix_info:
        w.ptr(s.unix_name)
        w.ptr(s.sanitized_username)
        for text in (s.unix_name, s.sanitized_username):
            if text is not None:
                w.string(text)
