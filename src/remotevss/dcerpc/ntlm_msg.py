"""The NTLMSSP CHALLENGE and AUTHENTICATE fields a local SAM logon needs (MS-NLMP 2.2.1).

Why our own: see :mod:`ntlm_crypto` (pyspnego's package costs the agent ~11 MB
resident).  Only reading, and stricter than pyspnego: every field must lie
inside the message; tests/unit/test_ntlm_primitives.py checks that whatever
we read, pyspnego reads the same.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from remotevss.dcerpc.ntlm_crypto import UNICODE

SIGNATURE = b"NTLMSSP\0"
MIC_OFFSET = 72  # after the Version field; where Samba and Windows put it
MIC_LEN = 16
AV_FLAGS = 6  # MsvAvFlags (MS-NLMP 2.2.2.1)
AV_EOL = 0
AV_FLAG_MIC = 0x2
_FIELDS = (12, 20, 28, 36, 44, 52)  # Lm, Nt, Domain, User, Workstation, EncryptedRandomSessionKey


def _field(data: bytes, at: int) -> bytes:
    length, _, offset = struct.unpack_from("<HHI", data, at)
    if not length:
        return b""
    if offset + length > len(data):
        raise ValueError("NTLMSSP field outside the message")
    return data[offset : offset + length]


def _check(data: bytes, kind: int, minimum: int) -> None:
    if len(data) < minimum or not data.startswith(SIGNATURE):
        raise ValueError("not an NTLMSSP message")
    if int.from_bytes(data[8:12], "little") != kind:
        raise ValueError(f"not an NTLMSSP message of type {kind}")


@dataclass(frozen=True)
class Challenge:
    flags: int
    server_challenge: bytes

    @classmethod
    def unpack(cls, data: bytes) -> Challenge:
        _check(data, 2, 32)
        return cls(int.from_bytes(data[20:24], "little"), data[24:32])


@dataclass(frozen=True)
class Authenticate:
    raw: bytes
    flags: int
    user_name: str
    domain_name: str
    nt_challenge_response: bytes
    encrypted_random_session_key: bytes
    payload_offset: int  # the lowest field offset: the header ends there

    @classmethod
    def unpack(cls, data: bytes) -> Authenticate:
        _check(data, 3, 64)
        flags = int.from_bytes(data[60:64], "little")
        encoding = "utf-16-le" if flags & UNICODE else "windows-1252"
        offsets = [struct.unpack_from("<I", data, at + 4)[0] for at in _FIELDS]
        return cls(
            raw=bytes(data),
            flags=flags,
            user_name=_field(data, 36).decode(encoding),
            domain_name=_field(data, 28).decode(encoding),
            nt_challenge_response=_field(data, 20),
            encrypted_random_session_key=_field(data, 52),
            payload_offset=min([o for o in offsets if o] or [len(data)]),
        )

    @property
    def mic(self) -> bytes:
        """The MIC field; ValueError when the header has no room for one."""
        if self.payload_offset < MIC_OFFSET + MIC_LEN:
            raise ValueError("AUTHENTICATE message without room for a MIC")
        return self.raw[MIC_OFFSET : MIC_OFFSET + MIC_LEN]

    def without_mic(self) -> bytes:
        """The message with its MIC zeroed: what the MIC covers (MS-NLMP 3.1.5.1.2)."""
        self.mic  # noqa: B018 - the room check
        return self.raw[:MIC_OFFSET] + bytes(MIC_LEN) + self.raw[MIC_OFFSET + MIC_LEN :]


def av_flags(nt_response: bytes) -> int:
    """MsvAvFlags of an NTLMv2 response (NTProofStr, then the client challenge
    structure with its AV pairs from byte 28); 0 when absent."""
    blob = nt_response[16:]
    if len(blob) < 28:
        raise ValueError("NTLMv2 response too short")
    at, flags = 28, 0
    while at + 4 <= len(blob):
        av_id, length = struct.unpack_from("<HH", blob, at)
        at += 4
        if av_id == AV_EOL:
            break
        if at + length > len(blob):
            raise ValueError("AV pair outside the NTLMv2 response")
        if av_id == AV_FLAGS:
            if length != 4:
                raise ValueError("MsvAvFlags is not 4 bytes")
            flags = int.from_bytes(blob[at : at + 4], "little")
        at += length
    return flags
