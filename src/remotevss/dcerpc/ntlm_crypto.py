"""The NTLM primitives the agent runs per PDU: RC4, SIGNKEY/SEALKEY, the ESS MAC (MS-NLMP 3.4).

Why our own and not pyspnego's: importing any part of pyspnego loads its whole
package (GSSAPI, CredSSP, cryptography's X.509 and ciphers), about 11 MB of
the agent's resident memory for some 60 lines of arithmetic on the standard
library's MD5 and HMAC.  RC4 is not in the standard library; the one here is
the textbook cipher, fast enough for FSRVP's small PDUs (~0.3 µs per byte, 70 µs per key).
tests/unit/test_ntlm_primitives.py checks every function byte for byte against
pyspnego, which stays the test suite's NTLM client.

Only extended session security is implemented: :mod:`ntlm_seal` refuses the
rest (the NTLMv1-style CRC32 MAC is weak).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

# NegotiateFlags (MS-NLMP 2.2.2.5) the agent looks at.
UNICODE = 0x00000001
SIGN = 0x00000010
SEAL = 0x00000020
EXTENDED_SESSION_SECURITY = 0x00080000
KEY_128 = 0x20000000
KEY_EXCH = 0x40000000
KEY_56 = 0x80000000


class Rc4:
    """An RC4 key stream; like an encryptor, successive calls continue the stream."""

    __slots__ = ("_s", "_i", "_j")

    def __init__(self, key: bytes) -> None:
        if not 1 <= len(key) <= 256:
            raise ValueError("RC4 key must be 1 to 256 bytes")
        s = list(range(256))
        j = 0
        n = len(key)
        for i in range(256):
            j = (j + s[i] + key[i % n]) & 0xFF
            s[i], s[j] = s[j], s[i]
        self._s, self._i, self._j = s, 0, 0

    def update(self, data: bytes) -> bytes:
        s, i, j = self._s, self._i, self._j
        stream = bytearray(len(data))
        for n in range(len(data)):
            i = (i + 1) & 0xFF
            si = s[i]
            j = (j + si) & 0xFF
            sj = s[j]
            s[i] = sj
            s[j] = si
            stream[n] = s[(si + sj) & 0xFF]
        self._i, self._j = i, j
        size = len(data)
        mixed = int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")
        return mixed.to_bytes(size, "little")


def rc4k(key: bytes, data: bytes) -> bytes:
    """RC4K: one message under a fresh key (the key exchange of MS-NLMP 3.4.5.3)."""
    return Rc4(key).update(data)


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def signkey(flags: int, session_key: bytes, usage: str) -> bytes:
    """SIGNKEY (MS-NLMP 3.4.5.2); ``usage`` is "initiate" (client) or "accept" (server)."""
    if not flags & EXTENDED_SESSION_SECURITY:
        return b""
    direction = b"client-to-server" if usage == "initiate" else b"server-to-client"
    return _md5(session_key + b"session key to %s signing key magic constant\x00" % direction)


def sealkey(flags: int, session_key: bytes, usage: str) -> bytes:
    """SEALKEY (MS-NLMP 3.4.5.3) under extended session security: 128, 56 or 40 bits."""
    if not flags & EXTENDED_SESSION_SECURITY:
        raise ValueError("NTLM without extended session security is refused")
    if flags & KEY_128:
        key = session_key
    elif flags & KEY_56:
        key = session_key[:7]
    else:
        key = session_key[:5]
    direction = b"client-to-server" if usage == "initiate" else b"server-to-client"
    return _md5(key + b"session key to %s sealing key magic constant\x00" % direction)


def mac(flags: int, handle: Rc4, signing_key: bytes, seq_num: int, data: bytes) -> bytes:
    """The NTLMSSP_MESSAGE_SIGNATURE with extended session security (MS-NLMP 3.4.4.2):
    version 1, HMAC-MD5 of sequence number and message (8 bytes, RC4'd under key
    exchange), sequence number."""
    seq = struct.pack("<I", seq_num & 0xFFFFFFFF)
    checksum = hmac.digest(signing_key, seq + data, "md5")[:8]
    if flags & KEY_EXCH:
        checksum = handle.update(checksum)
    return b"\x01\x00\x00\x00" + checksum + seq
