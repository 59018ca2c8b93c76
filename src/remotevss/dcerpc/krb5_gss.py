"""Kerberos for DCE/RPC through the system's GSSAPI (MIT krb5): accept, then protect PDUs.

Why GSSAPI and not our own crypto: the ticket is checked against the file
server's keytab by the same library sshd, NFS and (on a domain member) the
rest of the system trust; replay and sequence checks are the library's.
What is ours is only DCE/RPC's layout (MS-RPCE 2.2.2.11, MS-KILE 3.4.5.4),
as Windows and Samba apply it:

* DCE style (GSS_C_DCE_STYLE): three legs, raw AP-REQ, AP-REP, AP-REP;
* privacy: ``gss_wrap_iov`` with the PDU header and sec_trailer as SIGN_ONLY
  buffers when header signing was negotiated (empty otherwise), the stub and
  its padding as DATA, and the whole token (RRC-rotated) in the auth value;
* integrity: a MIC over the whole PDU up to the auth value with header
  signing, over the stub and its padding without.

``gssapi`` (Debian's python3-gssapi) is imported when Kerberos is configured,
so an agent without it still serves NTLM.
"""

from __future__ import annotations

from typing import Any

from remotevss.dcerpc.connection import AuthError
from remotevss.dcerpc.ntlm_seal import SignatureError

#: Kerberos 5 and the OID Microsoft clients of Windows 2000 used for it.
KRB5_OID = "1.2.840.113554.1.2.2"
MS_KRB5_OID = "1.2.840.48018.1.2.2"
_OIDS_DER = (bytes.fromhex("06092a864886f712010202"), bytes.fromhex("06092a864882f712010202"))
_AP_REQ_TOK_ID = b"\x01\x00"


def gssapi_module() -> Any:
    """The python-gssapi package, or a clear error naming the Debian package."""
    try:
        import gssapi  # noqa: PLC0415 - optional: only Kerberos needs it
        import gssapi.raw  # noqa: PLC0415, F401
    except ImportError as exc:  # pragma: no cover - bootstrap installs python3-gssapi
        raise RuntimeError(
            "Kerberos needs python-gssapi (apt install python3-gssapi)"
        ) from exc
    return gssapi


def raw_ap_req(token: bytes) -> bytes:
    """The AP-REQ inside a token: DCE style sends it raw, some clients (impacket)
    frame it as an RFC 2743 initial token, which MIT refuses under DCE style."""
    if not token.startswith(b"\x60"):
        return token
    i = 1
    if len(token) < 2:
        raise AuthError("truncated Kerberos token")
    first = token[i]
    i += 1 + (first & 0x7F if first & 0x80 else 0)
    oid = token[i : i + len(_OIDS_DER[0])]
    if oid not in _OIDS_DER:
        raise AuthError("Kerberos token for another mechanism")
    i += len(oid)
    if token[i : i + 2] != _AP_REQ_TOK_ID:
        raise AuthError("Kerberos initial token is not an AP-REQ")
    return token[i + 2 :]


class KerberosAcceptor:
    """One DCE-style Kerberos conversation against the keytab (``None``: the default)."""

    def __init__(self, keytab: str | None) -> None:
        gssapi = gssapi_module()
        self._gssapi = gssapi
        try:
            store = {"keytab": keytab} if keytab else None
            if store:
                creds = gssapi.raw.acquire_cred_from(store, None, usage="accept").creds
            else:
                creds = gssapi.Credentials(usage="accept")
        except gssapi.exceptions.GSSError as exc:
            raise AuthError(f"no Kerberos key for this server: {gss_text(exc)}") from exc
        self._ctx = gssapi.SecurityContext(creds=creds, usage="accept")
        self._first = True

    @property
    def complete(self) -> bool:
        return bool(self._ctx.complete)

    def step(self, token: bytes) -> bytes:
        """Feed one client token, return ours (b"" for none)."""
        if not token:
            raise AuthError("empty Kerberos token")
        if self._first:
            token = raw_ap_req(token)
            self._first = False
        try:
            out = self._ctx.step(token)
            # python-gssapi keeps a failed step's error (and returns the KRB-ERROR
            # token) until the context is next touched: touch it here.
            complete = self._ctx.complete
        except self._gssapi.exceptions.GSSError as exc:
            raise AuthError(f"Kerberos: {gss_text(exc)}") from exc
        if complete:
            flags = self._ctx.actual_flags
            needed = self._gssapi.RequirementFlag
            if needed.dce_style not in flags or needed.mutual_authentication not in flags:
                raise AuthError("Kerberos: the client did not ask for DCE style with mutual auth")
        return bytes(out or b"")

    def principal(self) -> str:
        return str(self._ctx.initiator_name)

    def protection(self, header_signing: bool, privacy: bool) -> Krb5Protection:
        """Per-PDU protection, once the context allows the bound level (MIT always
        grants both; another GSSAPI library might not)."""
        flags = self._ctx.actual_flags
        wanted = self._gssapi.RequirementFlag
        if wanted.integrity not in flags or (privacy and wanted.confidentiality not in flags):
            level = "privacy" if privacy else "integrity"
            raise AuthError(f"Kerberos: the client's context does not allow {level}")
        return Krb5Protection(self._ctx, header_signing)


class Krb5Protection:
    """Per-PDU integrity and privacy on an established context."""

    def __init__(self, ctx: Any, header_signing: bool) -> None:
        import gssapi.raw as graw  # noqa: PLC0415 - optional dependency

        self._raw = graw
        self._ctx = ctx
        self.header_signing = header_signing
        iov = graw.IOV(
            (graw.IOVBufferType.header, True, None),
            (graw.IOVBufferType.data, False, bytes(16)),
            std_layout=False,
        )
        graw.wrap_iov_length(ctx, iov, confidential=True)
        self.seal_len = len(iov[0].value or b"")
        mic = graw.IOV(
            (graw.IOVBufferType.data, False, b""),
            (graw.IOVBufferType.mic_token, True, None),
            std_layout=False,
        )
        graw.get_mic_iov_length(ctx, mic)
        self.mic_len = len(mic[1].value or b"")

    def _iov(self, token: Any, before: bytes, data: bytes, after: bytes) -> Any:
        t = self._raw.IOVBufferType
        hs = self.header_signing
        return self._raw.IOV(
            (t.header, token is None, token),
            (t.sign_only, False, before if hs else b""),
            (t.data, False, data),
            (t.sign_only, False, after if hs else b""),
            std_layout=False,
        )

    # The PduProtection shape (rpc_auth): the PDU in pieces, the token beside.
    def token_len(self, privacy: bool) -> int:
        return self.seal_len if privacy else self.mic_len

    def open(self, pdu: bytes, start: int, trailer: int, end: int, token: bytes,
             privacy: bool) -> bytes:
        """Verify (and unseal) one request: ``pdu[start:trailer]`` is stub and padding,
        ``pdu[trailer:end]`` the sec_trailer; returns the plain stub and padding."""
        if privacy:
            return self.unseal(pdu[:start], pdu[start:trailer], pdu[trailer:end], token)
        self.verify(pdu[:end], pdu[start:trailer], token)
        return pdu[start:trailer]

    def close(self, head: bytes, body: bytes, trailer: bytes, privacy: bool) -> tuple[bytes, bytes]:
        """Sign or seal one response: (body as sent, token)."""
        if privacy:
            return self.seal(head, body, trailer)
        return body, self.sign(head + body + trailer, body)

    def unseal(self, before: bytes, sealed: bytes, after: bytes, token: bytes) -> bytes:
        iov = self._iov(token, before, sealed, after)
        try:
            res = self._raw.unwrap_iov(self._ctx, iov)
        except self._raw.GSSError as exc:
            raise SignatureError(f"Kerberos unwrap: {gss_text(exc)}") from exc
        if not res.encrypted:
            raise SignatureError("Kerberos token not sealed at privacy")
        return bytes(iov[2].value)

    def verify(self, signed: bytes, data: bytes, token: bytes) -> None:
        """``signed``: the PDU up to the auth value; ``data``: stub and padding."""
        try:
            self._raw.verify_mic(self._ctx, signed if self.header_signing else data, token)
        except self._raw.GSSError as exc:
            raise SignatureError(f"Kerberos MIC: {gss_text(exc)}") from exc

    def seal(self, before: bytes, plain: bytes, after: bytes) -> tuple[bytes, bytes]:
        iov = self._iov(None, before, plain, after)
        self._raw.wrap_iov(self._ctx, iov, confidential=True)
        token = bytes(iov[0].value)
        if len(token) != self.seal_len:  # the header announced seal_len already
            raise SignatureError("Kerberos wrap token size changed")
        return bytes(iov[2].value), token

    def sign(self, signed: bytes, data: bytes) -> bytes:
        token = bytes(self._raw.get_mic(self._ctx, signed if self.header_signing else data))
        if len(token) != self.mic_len:
            raise SignatureError("Kerberos MIC size changed")
        return token

    # SPNEGO's mechListMIC (MS-SPNG 3.2.5.1) uses the same context.
    def mic(self, data: bytes) -> bytes:
        try:
            return bytes(self._raw.get_mic(self._ctx, data))
        except self._raw.GSSError as exc:
            raise SignatureError(f"mechListMIC: {gss_text(exc)}") from exc

    def verify_mic(self, data: bytes, token: bytes) -> None:
        try:
            self._raw.verify_mic(self._ctx, data, token)
        except self._raw.GSSError as exc:
            raise SignatureError(f"mechListMIC: {gss_text(exc)}") from exc


def gss_text(exc: Exception) -> str:
    """The mechanism's own words ("Ticket expired"), not GSSAPI's generic major text."""
    gen = getattr(exc, "gen_message", None)
    text = " ".join(str(gen() if callable(gen) else exc).split())
    _, minor, detail = text.rpartition("Minor (")
    if minor and "): " in detail:
        return detail.split("): ", 1)[1]
    return text
