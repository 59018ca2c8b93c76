"""DCE/RPC authentication for the server engine: NTLMSSP (10) and SPNEGO (9) over NTLMSSP.

Why this shape: the engine (``connection.py``) stays ignorant of credentials;
one :class:`RpcSecurity` per connection sees every auth verifier, and the
credential check itself is delegated to an :class:`NtlmAcceptor` (Samba's
``ntlm_auth`` through winbind in the agent, pyspnego's acceptor in unit tests).
What comes back is the exported session key and the negotiated flags; from
there :mod:`ntlm_seal` signs, verifies, seals and unseals each PDU.

Rules (MS-RPCE 3.3.1.5.2, 3.2.1.4.1; Samba's dcesrv_auth.c where they are silent):

===============================  ==========================================================
bind without a verifier          accepted; calls run at level none and the application
                                 decides (the agent answers E_ACCESSDENIED by default)
auth type not 9/10               bind_nak 8 (authentication type not recognized)
auth level not 5/6               bind_nak 0: connect/call/packet levels are not offered
NTLM leg 3                       auth3 (no reply) or alter_context (empty reply)
SPNEGO                           NTLMSSP mech only; mechListMIC verified when sent and
                                 answered in alter_context_resp; RC4 reset afterwards
any verifier after completion    alter_context: fault access denied, connection closed
request before completion        fault access denied, connection closed
bad signature / wrong ctx id     fault sec_pkg_error, connection closed (a replayed or
                                 reordered PDU fails on its sequence number)
responses                        signed (integrity) or sealed (privacy); faults unsigned
===============================  ==========================================================
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from spnego._context import GSSMech
from spnego._spnego import NegState, NegTokenInit, NegTokenResp, pack_mech_type_list, unpack_token

from remotevss.dcerpc import pdu
from remotevss.dcerpc.connection import AuthError
from remotevss.dcerpc.ntlm_seal import (
    NEGOTIATE_SEAL,
    NEGOTIATE_SIGN,
    SIGNATURE_LEN,
    NtlmSeal,
    SignatureError,
)
from remotevss.dcerpc.pdu import AuthVerifier, Header

AUTH_TYPES = (pdu.RPC_C_AUTHN_GSS_NEGOTIATE, pdu.RPC_C_AUTHN_WINNT)
AUTH_LEVELS = (pdu.RPC_C_AUTHN_LEVEL_PKT_INTEGRITY, pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY)
AUTH_ALIGN = 16  # stub + auth padding is a multiple of 16 (MS-RPCE 2.2.2.11)
#: Bytes a protected fragment adds at most: padding, sec_trailer, signature.
OVERHEAD = AUTH_ALIGN - 1 + pdu.SEC_TRAILER_LEN + SIGNATURE_LEN
MAX_TOKEN = 64 * 1024
_NTLM_OID = GSSMech.ntlm.value


class NtlmOutcome(Protocol):
    """What a successful NTLM check yields (``agent.ntlm_auth.NtlmResult``)."""

    @property
    def domain(self) -> str: ...

    @property
    def account(self) -> str: ...

    @property
    def session_key(self) -> bytes: ...

    @property
    def flags(self) -> int: ...


class NtlmAcceptor(Protocol):
    """The credential side of one NTLMSSP conversation; raises AuthError to refuse."""

    def negotiate(self, token: bytes) -> bytes: ...

    def authenticate(self, token: bytes) -> NtlmOutcome: ...

    def close(self) -> None: ...


AcceptorFactory = Callable[[], NtlmAcceptor]


def _refuse(message: str, nak: int = pdu.BIND_NAK_REASON_NOT_SPECIFIED) -> AuthError:
    return AuthError(message, nak_reason=nak, status=pdu.NCA_S_FAULT_ACCESS_DENIED)


class RpcSecurity:
    """One connection's security context (the engine's ``Security`` hook)."""

    def __init__(self, acceptors: AcceptorFactory) -> None:
        self._acceptors = acceptors
        self._acceptor: NtlmAcceptor | None = None
        self._state = "unbound"  # unbound | anonymous | negotiating | established | failed
        self._type = 0
        self._level = pdu.RPC_C_AUTHN_LEVEL_NONE
        self._ctx_id = 0
        self._spnego_mechs: list[str] | None = None
        self._seal: NtlmSeal | None = None
        self.identity: tuple[str, str] | None = None  # (domain, account) once established
        self.failure = ""  # why the authentication failed, for the log

    # ------------------------------------------------------------- properties

    @property
    def auth_level(self) -> int:
        return self._level if self._state == "established" else pdu.RPC_C_AUTHN_LEVEL_NONE

    @property
    def pending(self) -> bool:
        """True until the connection is bound without auth or the auth completed:
        the next PDU may need the credential helper (the transport runs it off-loop)."""
        return self._state in ("unbound", "negotiating")

    @property
    def overhead(self) -> int:
        return OVERHEAD if self._state == "established" else 0

    def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None

    # --------------------------------------------------------- association

    def bind(self, verifier: AuthVerifier | None) -> AuthVerifier | None:
        if verifier is None:
            self._state = "anonymous"
            return None
        if verifier.auth_type not in AUTH_TYPES:
            raise _refuse(
                f"auth type {verifier.auth_type} not supported",
                pdu.BIND_NAK_AUTH_TYPE_NOT_RECOGNIZED,
            )
        if verifier.auth_level not in AUTH_LEVELS:
            raise _refuse(f"auth level {verifier.auth_level} not offered (integrity or privacy)")
        self._type = verifier.auth_type
        self._level = verifier.auth_level
        self._ctx_id = verifier.auth_context_id
        self._state = "negotiating"
        self._acceptor = self._acceptors()
        return self._reply(self._leg(verifier.credentials))

    def alter_context(self, verifier: AuthVerifier | None) -> AuthVerifier | None:
        if verifier is None:
            if self._state == "negotiating":
                raise self._fail("alter_context without a verifier during authentication")
            return None
        if self._state != "negotiating":
            raise self._fail("a new auth verifier on an established association")
        self._check_same(verifier)
        token = self._leg(verifier.credentials)
        return self._reply(token) if token else None

    def auth3(self, verifier: AuthVerifier | None) -> None:
        if self._state != "negotiating" or verifier is None:
            raise self._fail("auth3 outside an authentication")
        self._check_same(verifier)
        self._leg(verifier.credentials, reply_possible=False)
        if self._state != "established":
            raise self._fail("auth3 did not complete the authentication")

    def _reply(self, token: bytes) -> AuthVerifier:
        return AuthVerifier(self._type, self._level, 0, self._ctx_id, token)

    def _matches(self, v: AuthVerifier) -> bool:
        """The verifier names this association's auth type, level and context id."""
        return (v.auth_type, v.auth_level, v.auth_context_id) == (
            self._type, self._level, self._ctx_id,
        )  # fmt: skip

    def _check_same(self, v: AuthVerifier) -> None:
        if not self._matches(v):
            raise self._fail("auth type, level or context id changed during authentication")

    def _fail(self, message: str, status: int = pdu.NCA_S_FAULT_ACCESS_DENIED) -> AuthError:
        if self._state != "failed":
            self.failure = message
        self._state = "failed"
        self.close()
        return AuthError(message, status=status)

    # --------------------------------------------------------------- legs

    def _leg(self, token: bytes, *, reply_possible: bool = True) -> bytes:
        """One authentication leg: the token in, the token out (b"" for none)."""
        if len(token) > MAX_TOKEN:
            raise self._fail("auth token too large")
        try:
            if self._type == pdu.RPC_C_AUTHN_WINNT:
                return self._ntlm_leg(token)
            return self._spnego_leg(token, reply_possible)
        except AuthError as exc:
            raise self._fail(str(exc)) from exc
        except (ValueError, TypeError, IndexError, KeyError, struct.error) as exc:
            raise self._fail(f"malformed auth token: {exc}") from exc

    def _ntlm_leg(self, token: bytes) -> bytes:
        assert self._acceptor is not None
        kind = _ntlm_type(token)
        if kind == 1 and self._seal is None:
            return self._acceptor.negotiate(token)
        if kind == 3 and self._seal is None:
            self._finish(self._acceptor.authenticate(token))
            return b""
        raise AuthError(f"unexpected NTLMSSP message type {kind}")

    def _spnego_leg(self, token: bytes, reply_possible: bool) -> bytes:
        msg = unpack_token(token)
        if self._spnego_mechs is None:
            if not isinstance(msg, NegTokenInit):
                raise AuthError("SPNEGO must start with NegTokenInit")
            if _NTLM_OID not in msg.mech_types:
                raise AuthError("SPNEGO offers no mechanism we accept (NTLMSSP)")
            self._spnego_mechs = list(msg.mech_types)
            inner = b""
            # An optimistic token is only for the client's first choice.
            if msg.mech_types[0] == _NTLM_OID and msg.mech_token:
                inner = self._ntlm_leg(msg.mech_token)
            return NegTokenResp(
                neg_state=NegState.accept_incomplete,
                supported_mech=_NTLM_OID,
                response_token=inner or None,
            ).pack()
        if not isinstance(msg, NegTokenResp):
            raise AuthError("expected SPNEGO NegTokenResp")
        if msg.neg_state == NegState.reject:
            raise AuthError("client rejected the negotiation")
        inner = self._ntlm_leg(msg.response_token) if msg.response_token else b""
        if inner:
            return NegTokenResp(
                neg_state=NegState.accept_incomplete, response_token=inner
            ).pack()
        if self._state != "established":
            raise AuthError("SPNEGO leg without an NTLMSSP token")
        assert self._seal is not None
        mechs = pack_mech_type_list(self._spnego_mechs)
        if msg.mech_list_mic is None:
            done = NegTokenResp(neg_state=NegState.accept_complete).pack()
            return done if reply_possible else b""
        try:
            self._seal.verify(mechs, msg.mech_list_mic)
        except SignatureError as exc:
            raise AuthError("SPNEGO mechListMIC does not verify") from exc
        self._seal.reset_in()
        if not reply_possible:
            return b""
        mic = self._seal.sign(mechs)
        self._seal.reset_out()
        return NegTokenResp(neg_state=NegState.accept_complete, mech_list_mic=mic).pack()

    def _finish(self, outcome: NtlmOutcome) -> None:
        privacy = self._level == pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY
        needed = NEGOTIATE_SIGN | (NEGOTIATE_SEAL if privacy else 0)
        if outcome.flags & needed != needed:
            raise AuthError("the client did not negotiate NTLM signing/sealing for its level")
        try:
            self._seal = NtlmSeal(outcome.session_key, outcome.flags)
        except ValueError as exc:
            raise AuthError(str(exc)) from exc
        self.identity = (outcome.domain, outcome.account)
        self._state = "established"
        self.close()  # the helper is free for the next conversation

    # ------------------------------------------------------------ per PDU

    def request(
        self, raw: bytes, header: Header, stub: bytes, verifier: AuthVerifier | None
    ) -> bytes:
        if self._state == "anonymous":
            if verifier is not None:
                raise AuthError("request verifier on an unauthenticated association")
            return stub
        if self._state == "failed":
            raise AuthError(f"authentication failed: {self.failure}")
        if self._state != "established" or self._seal is None:
            raise self._fail("request before the authentication completed")
        if verifier is None:
            raise self._fail("unsigned request on an authenticated association")
        if not self._matches(verifier):
            raise self._fail(
                "request verifier does not match the association", pdu.NCA_S_FAULT_SEC_PKG_ERROR
            )
        trailer = header.frag_length - header.auth_length - pdu.SEC_TRAILER_LEN
        start = trailer - verifier.auth_pad_length - len(stub)
        signed_end = trailer + pdu.SEC_TRAILER_LEN
        try:
            if self._level == pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY:
                plain = self._seal.unseal(raw[start:trailer])
                self._seal.verify(
                    raw[:start] + plain + raw[trailer:signed_end], verifier.credentials
                )
                return plain[: len(stub)]
            self._seal.verify(raw[:signed_end], verifier.credentials)
        except SignatureError as exc:
            raise self._fail(f"request {exc}", pdu.NCA_S_FAULT_SEC_PKG_ERROR) from exc
        return stub

    def protect(self, fragment: bytes) -> bytes:
        """Sign or seal one plain response fragment (header + stub) in place of it."""
        if self._state != "established" or self._seal is None:
            return fragment
        head_len = pdu.RESPONSE_HEADER_LEN
        stub = fragment[head_len:]
        pad = -len(stub) % AUTH_ALIGN
        body = stub + bytes(pad)
        length = head_len + len(body) + pdu.SEC_TRAILER_LEN + SIGNATURE_LEN
        head = fragment[:8] + struct.pack("<HH", length, SIGNATURE_LEN) + fragment[12:head_len]
        trailer = pdu.SEC_TRAILER.pack(self._type, self._level, pad, 0, self._ctx_id)
        if self._level == pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY:
            sealed, sig = self._seal.seal(body, head + body + trailer)
            return head + sealed + trailer + sig
        return head + body + trailer + self._seal.sign(head + body + trailer)


def _ntlm_type(token: bytes) -> int:
    if len(token) < 12 or not token.startswith(b"NTLMSSP\0"):
        raise AuthError("not an NTLMSSP message")
    return int.from_bytes(token[8:12], "little")
