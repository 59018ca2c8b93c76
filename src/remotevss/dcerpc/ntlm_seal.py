"""NTLMSSP message integrity and confidentiality for DCE/RPC PDUs (MS-NLMP 3.4, MS-RPCE 2.2.2.11).

Why a module of our own: the credential check belongs to Samba (``ntlm_auth``
through winbind), which hands back only the exported session key and the
negotiated flags; everything after that is deterministic crypto we must run
per PDU.  The primitives (key derivation, RC4, the MAC) are in :mod:`ntlm_crypto`;
this module only applies them in DCE/RPC's layout: the signature covers the
whole PDU up to the auth value, privacy seals the stub and its padding.

Only extended session security is accepted: every client since Windows 2000
and Samba negotiates it, and the NTLMv1-style MAC (CRC32 under RC4) is weak.
"""

from __future__ import annotations

import hmac

from remotevss.dcerpc.ntlm_crypto import EXTENDED_SESSION_SECURITY as ESS
from remotevss.dcerpc.ntlm_crypto import SEAL as NEGOTIATE_SEAL
from remotevss.dcerpc.ntlm_crypto import SIGN as NEGOTIATE_SIGN
from remotevss.dcerpc.ntlm_crypto import Rc4, mac, sealkey, signkey

SIGNATURE_LEN = 16
__all__ = ["ESS", "NEGOTIATE_SEAL", "NEGOTIATE_SIGN", "SIGNATURE_LEN", "NtlmSeal", "SignatureError"]


class SignatureError(Exception):
    """A PDU's signature or token did not verify (tampered, replayed or out of order);
    NTLM and Kerberos alike."""


class NtlmSeal:
    """The acceptor's per-direction NTLM state: keys, RC4 handles, sequence numbers.

    Sequence numbers count signed messages in each direction, SPNEGO's mechListMIC
    included; a replayed or reordered PDU therefore fails verification.
    """

    def __init__(self, session_key: bytes, flags: int) -> None:
        if len(session_key) != 16:
            raise ValueError("NTLM session key must be 16 bytes")
        if not flags & ESS:
            raise ValueError("NTLM without extended session security is refused")
        self.flags = flags
        self._key = session_key
        self._sign_out = signkey(flags, session_key, "accept")
        self._sign_in = signkey(flags, session_key, "initiate")
        self._handle_out = Rc4(sealkey(flags, session_key, "accept"))
        self._handle_in = Rc4(sealkey(flags, session_key, "initiate"))
        self.seq_out = 0
        self.seq_in = 0

    # SPNEGO resets the RC4 state after the mechListMIC exchange (MS-SPNG 3.2.5.1),
    # keeping the sequence numbers, as Windows, Samba and pyspnego do.
    def reset_in(self) -> None:
        self._handle_in = Rc4(sealkey(self.flags, self._key, "initiate"))

    def reset_out(self) -> None:
        self._handle_out = Rc4(sealkey(self.flags, self._key, "accept"))

    def sign(self, data: bytes) -> bytes:
        """Our signature over ``data`` (the next outgoing sequence number)."""
        sig = mac(self.flags, self._handle_out, self._sign_out, self.seq_out, data)
        self.seq_out += 1
        return sig

    def verify(self, data: bytes, signature: bytes) -> None:
        """Check the peer's signature over ``data`` at the next incoming sequence number."""
        expected = mac(self.flags, self._handle_in, self._sign_in, self.seq_in, data)
        self.seq_in += 1
        if len(signature) != SIGNATURE_LEN or not hmac.compare_digest(expected, signature):
            raise SignatureError("NTLM signature mismatch")

    def seal(self, plain: bytes, to_sign: bytes) -> tuple[bytes, bytes]:
        """Encrypt ``plain`` and sign ``to_sign`` (the PDU with ``plain`` in clear)."""
        sealed = self._handle_out.update(plain)  # the stream then runs on into the MAC
        sig = mac(self.flags, self._handle_out, self._sign_out, self.seq_out, to_sign)
        self.seq_out += 1
        return sealed, sig

    def unseal(self, sealed: bytes) -> bytes:
        """Decrypt the next incoming sealed body; :meth:`verify` must follow at once."""
        return self._handle_in.update(sealed)
