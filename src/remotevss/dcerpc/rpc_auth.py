"""DCE/RPC authentication for the server engine: NTLMSSP (10), Kerberos (16), SPNEGO (9).

Why this shape: the engine (``connection.py``) stays ignorant of credentials;
one :class:`RpcSecurity` per connection sees every auth verifier, and the
credential check itself is delegated: NTLM to an :class:`NtlmAcceptor`
(Samba's ``ntlm_auth`` through winbind in the agent, pyspnego's acceptor in
unit tests), which hands back the exported session key and flags for
:mod:`ntlm_seal`; Kerberos to a :class:`KerberosContext` (GSSAPI against the
keytab, :mod:`krb5_gss`), which then protects the PDUs itself.  SPNEGO's
tokens are read and written by :mod:`spnego_der`.  SPNEGO
carries either: Kerberos when the client prefers it and a keytab is
configured, else NTLMSSP.

Rules (MS-RPCE 3.3.1.5.2, 3.2.1.4.1; Samba's dcesrv_auth.c where they are silent):

===============================  ==========================================================
bind without a verifier          accepted; calls run at level none and the application
                                 decides (the agent answers E_ACCESSDENIED by default)
auth type not 9/10/16           bind_nak 8 (authentication type not recognized);
                                 16 only with Kerberos configured
auth level not 5/6               bind_nak 0: connect/call/packet levels are not offered
NTLM leg 3                       auth3 (no reply) or alter_context (empty reply)
Kerberos legs                    DCE style: AP-REQ in bind, AP-REP back, the client's
                                 AP-REP in auth3 or alter_context
SPNEGO                           Kerberos if offered first (and configured), else
                                 NTLMSSP; mechListMIC verified when sent and answered
                                 in alter_context_resp (NTLM: RC4 reset afterwards)
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

from remotevss.dcerpc import pdu, spnego_der
from remotevss.dcerpc.connection import AuthError
from remotevss.dcerpc.krb5_gss import KRB5_OID, MS_KRB5_OID
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
#: Bytes a protected fragment adds besides the token: padding and sec_trailer.
FRAME_OVERHEAD = AUTH_ALIGN - 1 + pdu.SEC_TRAILER_LEN
#: ... and with NTLM's 16-byte signature.
OVERHEAD = FRAME_OVERHEAD + SIGNATURE_LEN
MAX_TOKEN = 64 * 1024
_NTLM_OID = spnego_der.NTLM_OID
_KRB5_OIDS = (KRB5_OID, MS_KRB5_OID)


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


class PduProtection(Protocol):
    """Per-PDU integrity/privacy once a mechanism is established (NTLM or Kerberos)."""

    def token_len(self, privacy: bool) -> int: ...

    def open(
        self, pdu: bytes, start: int, trailer: int, end: int, token: bytes, privacy: bool
    ) -> bytes: ...

    def close(
        self, head: bytes, body: bytes, trailer: bytes, privacy: bool
    ) -> tuple[bytes, bytes]: ...

    def mic(self, data: bytes) -> bytes: ...

    def verify_mic(self, data: bytes, token: bytes) -> None: ...


class KerberosContext(Protocol):
    """One DCE-style Kerberos conversation (``krb5_gss.KerberosAcceptor``)."""

    @property
    def complete(self) -> bool: ...

    def step(self, token: bytes) -> bytes: ...

    def principal(self) -> str: ...

    def protection(self, header_signing: bool, privacy: bool) -> PduProtection: ...


KerberosFactory = Callable[[], KerberosContext]


class NtlmPdu:
    """:class:`NtlmSeal` in the :class:`PduProtection` shape: NTLM always signs the
    whole PDU; privacy seals stub and padding, then signs the PDU in clear."""

    def __init__(self, seal: NtlmSeal) -> None:
        self.seal = seal

    def token_len(self, privacy: bool) -> int:
        return SIGNATURE_LEN

    def open(
        self, pdu: bytes, start: int, trailer: int, end: int, token: bytes, privacy: bool
    ) -> bytes:
        if privacy:
            plain = self.seal.unseal(pdu[start:trailer])
            self.seal.verify(pdu[:start] + plain + pdu[trailer:end], token)
            return plain
        self.seal.verify(pdu[:end], token)
        return pdu[start:trailer]

    def close(
        self, head: bytes, body: bytes, trailer: bytes, privacy: bool
    ) -> tuple[bytes, bytes]:
        if privacy:
            return self.seal.seal(body, head + body + trailer)
        return body, self.seal.sign(head + body + trailer)

    # SPNEGO's mechListMIC; the RC4 state restarts after it (MS-SPNG 3.2.5.1).
    def mic(self, data: bytes) -> bytes:
        sig = self.seal.sign(data)
        self.seal.reset_out()
        return sig

    def verify_mic(self, data: bytes, token: bytes) -> None:
        self.seal.verify(data, token)
        self.seal.reset_in()


def _refuse(message: str, nak: int = pdu.BIND_NAK_REASON_NOT_SPECIFIED) -> AuthError:
    return AuthError(message, nak_reason=nak, status=pdu.NCA_S_FAULT_ACCESS_DENIED)


class RpcSecurity:
    """One connection's security context (the engine's ``Security`` hook).

    ``kerberos`` makes one Kerberos conversation; None means no keytab is
    configured: auth type 16 is refused and SPNEGO is steered to NTLMSSP.
    """

    def __init__(
        self, acceptors: AcceptorFactory, kerberos: KerberosFactory | None = None
    ) -> None:
        self._acceptors = acceptors
        self._kerberos = kerberos
        self._acceptor: NtlmAcceptor | None = None
        self._krb: KerberosContext | None = None
        self._state = "unbound"  # unbound | anonymous | negotiating | established | failed
        self._type = 0
        self._level = pdu.RPC_C_AUTHN_LEVEL_NONE
        self._ctx_id = 0
        self._header_signing = False
        self._mech = ""  # "ntlm" | "krb5" once chosen
        self._spnego_mechs: bytes | None = None  # the client's MechTypeList, DER as sent
        self._prot: PduProtection | None = None
        self.identity: tuple[str, str] | None = None  # (domain, account) once established
        self.user = ""  # DOMAIN\\account (NTLM) or user@REALM (Kerberos) once established
        self.failure = ""  # why the authentication failed, for the log

    # ------------------------------------------------------------- properties

    @property
    def auth_level(self) -> int:
        return self._level if self._state == "established" else pdu.RPC_C_AUTHN_LEVEL_NONE

    @property
    def auth_type(self) -> int:
        """The mechanism that authenticated (10 NTLM, 16 Kerberos; 0 none)."""
        if self._state != "established":
            return 0
        return pdu.RPC_C_AUTHN_GSS_KERBEROS if self._mech == "krb5" else pdu.RPC_C_AUTHN_WINNT

    @property
    def pending(self) -> bool:
        """True until the connection is bound without auth or the auth completed:
        the next PDU may need the credential helper (the transport runs it off-loop)."""
        return self._state in ("unbound", "negotiating")

    @property
    def overhead(self) -> int:
        if self._state != "established" or self._prot is None:
            return 0
        return FRAME_OVERHEAD + self._prot.token_len(self._privacy)

    @property
    def _privacy(self) -> bool:
        return self._level == pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY

    def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None

    # --------------------------------------------------------- association

    def bind(
        self, verifier: AuthVerifier | None, header_signing: bool = False
    ) -> AuthVerifier | None:
        if verifier is None:
            self._state = "anonymous"
            return None
        types = AUTH_TYPES + ((pdu.RPC_C_AUTHN_GSS_KERBEROS,) if self._kerberos else ())
        if verifier.auth_type not in types:
            raise _refuse(
                f"auth type {verifier.auth_type} not supported",
                pdu.BIND_NAK_AUTH_TYPE_NOT_RECOGNIZED,
            )
        if verifier.auth_level not in AUTH_LEVELS:
            raise _refuse(f"auth level {verifier.auth_level} not offered (integrity or privacy)")
        self._type = verifier.auth_type
        self._level = verifier.auth_level
        self._ctx_id = verifier.auth_context_id
        self._header_signing = header_signing
        self._state = "negotiating"
        if self._type == pdu.RPC_C_AUTHN_WINNT:
            self._mech = "ntlm"
        elif self._type == pdu.RPC_C_AUTHN_GSS_KERBEROS:
            self._mech = "krb5"
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
        self._krb = None
        # a bind whose credentials fail: nak "not specified" (the type was fine)
        return AuthError(message, status=status, nak_reason=pdu.BIND_NAK_REASON_NOT_SPECIFIED)

    # --------------------------------------------------------------- legs

    def _leg(self, token: bytes, *, reply_possible: bool = True) -> bytes:
        """One authentication leg: the token in, the token out (b"" for none)."""
        if len(token) > MAX_TOKEN:
            raise self._fail("auth token too large")
        try:
            if self._type == pdu.RPC_C_AUTHN_GSS_NEGOTIATE:
                return self._spnego_leg(token, reply_possible)
            return self._mech_leg(token)
        except AuthError as exc:
            raise self._fail(str(exc)) from exc
        except (ValueError, TypeError, IndexError, KeyError, struct.error) as exc:
            raise self._fail(f"malformed auth token: {exc}") from exc

    def _mech_leg(self, token: bytes) -> bytes:
        if self._mech == "krb5":
            return self._krb5_leg(token)
        return self._ntlm_leg(token)

    def _ntlm_leg(self, token: bytes) -> bytes:
        if self._acceptor is None:
            self._acceptor = self._acceptors()
        kind = _ntlm_type(token)
        if kind == 1 and self._prot is None:
            return self._acceptor.negotiate(token)
        if kind == 3 and self._prot is None:
            self._finish_ntlm(self._acceptor.authenticate(token))
            return b""
        raise AuthError(f"unexpected NTLMSSP message type {kind}")

    def _krb5_leg(self, token: bytes) -> bytes:
        if self._prot is not None:
            raise AuthError("Kerberos token after the authentication completed")
        if self._krb is None:
            assert self._kerberos is not None
            self._krb = self._kerberos()
        out = self._krb.step(token)
        if self._krb.complete:
            principal = self._krb.principal()
            user, _, realm = principal.rpartition("@")
            if not user or not realm:
                raise AuthError(f"Kerberos principal without a realm: {principal!r}")
            self._prot = self._krb.protection(self._header_signing, self._privacy)
            self.identity = (realm, user)
            self.user = principal
            self._state = "established"
        return out

    def _choose(self, offered: list[str]) -> str:
        """SPNEGO: Kerberos when the client prefers it and we have a keytab; else
        NTLMSSP when offered; else Kerberos offered later in the list."""
        if self._kerberos is not None and offered[0] in _KRB5_OIDS:
            return offered[0]
        if _NTLM_OID in offered:
            return _NTLM_OID
        for oid in offered:
            if self._kerberos is not None and oid in _KRB5_OIDS:
                return oid
        accepted = "Kerberos or NTLMSSP" if self._kerberos is not None else "NTLMSSP"
        raise AuthError(f"SPNEGO offers no mechanism we accept ({accepted})")

    def _spnego_leg(self, token: bytes, reply_possible: bool) -> bytes:
        msg = spnego_der.unpack(token)
        if self._spnego_mechs is None:
            if not isinstance(msg, spnego_der.NegTokenInit):
                raise AuthError("SPNEGO must start with NegTokenInit")
            if not msg.mech_types:
                raise AuthError("SPNEGO offers no mechanism")
            chosen = self._choose(msg.mech_types)
            self._mech = "ntlm" if chosen == _NTLM_OID else "krb5"
            self._spnego_mechs = msg.mech_types_der
            inner = b""
            # An optimistic token is only for the client's first choice.
            if msg.mech_types[0] == chosen and msg.mech_token:
                inner = self._mech_leg(msg.mech_token)
            return spnego_der.pack_resp(
                spnego_der.ACCEPT_INCOMPLETE, supported_mech=chosen, response_token=inner or None
            )
        if not isinstance(msg, spnego_der.NegTokenResp):
            raise AuthError("expected SPNEGO NegTokenResp")
        if msg.neg_state == spnego_der.REJECT:
            raise AuthError("client rejected the negotiation")
        inner = self._mech_leg(msg.response_token) if msg.response_token else b""
        if inner:
            return spnego_der.pack_resp(spnego_der.ACCEPT_INCOMPLETE, response_token=inner)
        if self._state != "established" or self._prot is None:
            raise AuthError(f"SPNEGO leg without a {self._mech} token")
        mechs = self._spnego_mechs
        if msg.mech_list_mic is None:
            done = spnego_der.pack_resp(spnego_der.ACCEPT_COMPLETE)
            return done if reply_possible else b""
        try:
            self._prot.verify_mic(mechs, msg.mech_list_mic)
        except SignatureError as exc:
            raise AuthError("SPNEGO mechListMIC does not verify") from exc
        if not reply_possible:
            return b""
        try:
            mic = self._prot.mic(mechs)
        except SignatureError as exc:
            raise AuthError(f"cannot answer the SPNEGO mechListMIC: {exc}") from exc
        return spnego_der.pack_resp(spnego_der.ACCEPT_COMPLETE, mech_list_mic=mic)

    def _finish_ntlm(self, outcome: NtlmOutcome) -> None:
        needed = NEGOTIATE_SIGN | (NEGOTIATE_SEAL if self._privacy else 0)
        if outcome.flags & needed != needed:
            raise AuthError("the client did not negotiate NTLM signing/sealing for its level")
        try:
            self._prot = NtlmPdu(NtlmSeal(outcome.session_key, outcome.flags))
        except ValueError as exc:
            raise AuthError(str(exc)) from exc
        self.identity = (outcome.domain, outcome.account)
        self.user = f"{outcome.domain}\\{outcome.account}"
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
        if self._state != "established" or self._prot is None:
            raise self._fail("request before the authentication completed")
        if verifier is None:
            raise self._fail("unsigned request on an authenticated association")
        if not self._matches(verifier):
            raise self._fail(
                "request verifier does not match the association", pdu.NCA_S_FAULT_SEC_PKG_ERROR
            )
        trailer = header.frag_length - header.auth_length - pdu.SEC_TRAILER_LEN
        start = trailer - verifier.auth_pad_length - len(stub)
        end = trailer + pdu.SEC_TRAILER_LEN
        try:
            plain = self._prot.open(raw, start, trailer, end, verifier.credentials, self._privacy)
        except SignatureError as exc:
            raise self._fail(f"request {exc}", pdu.NCA_S_FAULT_SEC_PKG_ERROR) from exc
        return plain[: len(stub)]

    def protect(self, fragment: bytes) -> bytes:
        """Sign or seal one plain response fragment (header + stub) in place of it."""
        if self._state != "established" or self._prot is None:
            return fragment
        head_len = pdu.RESPONSE_HEADER_LEN
        stub = fragment[head_len:]
        pad = -len(stub) % AUTH_ALIGN
        body = stub + bytes(pad)
        token_len = self._prot.token_len(self._privacy)
        length = head_len + len(body) + pdu.SEC_TRAILER_LEN + token_len
        head = fragment[:8] + struct.pack("<HH", length, token_len) + fragment[12:head_len]
        trailer = pdu.SEC_TRAILER.pack(self._type, self._level, pad, 0, self._ctx_id)
        sent, token = self._prot.close(head, body, trailer, self._privacy)
        return head + sent + trailer + token


def _ntlm_type(token: bytes) -> int:
    if len(token) < 12 or not token.startswith(b"NTLMSSP\0"):
        raise AuthError("not an NTLMSSP message")
    return int.from_bytes(token[8:12], "little")
