"""A Kerberos-authenticated DCE/RPC binding over an open SMB pipe, through GSSAPI.

Why not impacket's own Kerberos binding: it frames the AP-REQ as an initial
token and sends its third leg in an alter_context without auth padding, which
Samba's RPC server refuses (``nca_s_proto_error``); and it must fetch the
``host/`` ticket with its own TGS-REQ, which an MIT KDC refuses.  Here the
system's GSSAPI (MIT krb5) makes the tokens from the ticket cache, as
``kinit`` users expect, and the binding is Kerberos (auth type 16) in DCE
style with header signing, as Samba's rpcclient ``[krb5,...]`` binds: the
layout Windows, Samba and our agent all accept.

impacket still opens the pipe on its SMB session (``transport``); this class
only writes and reads whole PDUs through it and has impacket's ``call`` /
``recv`` / ``disconnect`` shape, so :class:`~remotevss.client.rpc.FsrvpCalls`
drives it unchanged.
"""

from __future__ import annotations

import struct
from typing import Any
from uuid import UUID

from impacket.dcerpc.v5.rpcrt import DCERPCException

from remotevss.dcerpc import pdu
from remotevss.dcerpc.krb5_gss import KRB5_OID, Krb5Protection, gss_text, gssapi_module

AUTH_ALIGN = 16
CONTEXT_ID = 0
AUTH_CONTEXT_ID = 1
MAX_FRAG = 4280  # what we offer; the server's answer bounds what we send


class KerberosBindError(Exception):
    """The Kerberos part of the bind failed (no ticket, KDC, refused by the server)."""


class GssKerberosBinding:
    """One bound interface on ``transport`` (an impacket SMBTransport, connected)."""

    def __init__(
        self, transport: Any, host: str, level: int, *, user: str = "", password: str = "",
        realm: str = "",
    ) -> None:
        """Tickets come from the default ccache (KRB5CCNAME); with ``password``, a TGT
        for ``user@realm`` is got from the KDC first, in memory, as kinit would."""
        self._t = transport
        self._host = host
        self.level = level
        self._user, self._password, self._realm = user, password, realm
        self._call_id = 1
        self._xmit = MAX_FRAG
        self._prot: Krb5Protection | None = None
        self._last = b""
        self.header_signing = False
        self.ack_auth_level = pdu.RPC_C_AUTHN_LEVEL_NONE

    # ------------------------------------------------------------- bind
    def bind(self, iface: UUID, version: tuple[int, int]) -> None:
        gssapi = gssapi_module()
        flags = (
            gssapi.RequirementFlag.dce_style
            | gssapi.RequirementFlag.mutual_authentication
            | gssapi.RequirementFlag.integrity
            | gssapi.RequirementFlag.replay_detection
            | gssapi.RequirementFlag.out_of_sequence_detection
        )
        if self.level == pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY:
            flags |= gssapi.RequirementFlag.confidentiality
        try:
            name = gssapi.Name(f"host@{self._host}", gssapi.NameType.hostbased_service)
            ctx = gssapi.SecurityContext(
                name=name, usage="initiate", flags=flags, creds=self._password_creds(gssapi),
                mech=gssapi.OID.from_int_seq(KRB5_OID),
            )  # fmt: skip
            token = ctx.step()
        except gssapi.exceptions.GSSError as exc:
            why = gss_text(exc)
            raise KerberosBindError(f"cannot get a ticket for host/{self._host}: {why}") from exc
        syntax = pdu.SyntaxId(iface, *version)
        contexts = [pdu.ContextElem(CONTEXT_ID, syntax, (pdu.NDR20,))]
        self._send(
            pdu.encode_bind(
                self._next_call_id(), contexts, max_xmit_frag=MAX_FRAG, max_recv_frag=MAX_FRAG,
                auth=self._verifier(token),
                flags=pdu.PFC_FIRST_LAST | pdu.PFC_SUPPORT_HEADER_SIGN,
            )
        )  # fmt: skip
        hdr, body = pdu.parse(self._recv_pdu())
        if isinstance(body, pdu.BindNak):
            raise DCERPCException(f"Bind context rejected: bind_nak reason {body.reason}")
        if not isinstance(body, pdu.BindAck) or hdr.ptype != pdu.PTYPE_BIND_ACK:
            raise DCERPCException(f"unexpected answer to the bind (PTYPE {hdr.ptype})")
        if not body.results or body.results[0].result != 0:
            raise DCERPCException("Bind context rejected: abstract syntax not supported")
        if body.auth is None:
            raise KerberosBindError("the server answered the Kerberos bind without a verifier")
        self._xmit = max(pdu.MUST_RECV_FRAG_SIZE, min(MAX_FRAG, body.max_recv_frag))
        self.ack_auth_level = body.auth.auth_level
        try:
            third = ctx.step(body.auth.credentials)
            complete = ctx.complete
        except gssapi.exceptions.GSSError as exc:
            raise KerberosBindError(f"the server's Kerberos answer: {gss_text(exc)}") from exc
        if third:  # DCE style: our AP-REP in auth3, which gets no answer
            self._send(pdu.encode_auth3(self._next_call_id(), self._verifier(bytes(third))))
        if not complete:
            raise KerberosBindError("Kerberos did not complete in three legs")
        self.header_signing = bool(hdr.pfc_flags & pdu.PFC_SUPPORT_HEADER_SIGN)
        self._prot = Krb5Protection(ctx, self.header_signing)

    def _password_creds(self, gssapi: Any) -> Any:
        if not self._password:
            return None  # the default ccache
        principal = f"{self._user}@{self._realm.upper()}" if self._realm else self._user
        name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
        return gssapi.raw.acquire_cred_with_password(
            name, self._password.encode(), usage="initiate"
        ).creds

    def _verifier(self, token: bytes) -> pdu.AuthVerifier:
        return pdu.AuthVerifier(
            pdu.RPC_C_AUTHN_GSS_KERBEROS, self.level, 0, AUTH_CONTEXT_ID, bytes(token)
        )

    def _next_call_id(self) -> int:
        cid = self._call_id
        self._call_id += 1
        return cid

    # ------------------------------------------------------------- calls
    def call(self, opnum: int, stub: bytes) -> None:
        """Send one request (fragmented as the server allows), keep the answer for recv."""
        assert self._prot is not None, "not bound"
        privacy = self.level == pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY
        token_len = self._prot.token_len(privacy)
        room = self._xmit - pdu.REQUEST_HEADER_LEN - pdu.SEC_TRAILER_LEN - token_len
        room -= room % AUTH_ALIGN
        call_id = self._next_call_id()
        chunks = [stub[i : i + room] for i in range(0, len(stub), room)] or [b""]
        for n, chunk in enumerate(chunks):
            flags = (pdu.PFC_FIRST_FRAG if n == 0 else 0) | (
                pdu.PFC_LAST_FRAG if n == len(chunks) - 1 else 0
            )
            pad = -len(chunk) % AUTH_ALIGN
            body = chunk + bytes(pad)
            length = pdu.REQUEST_HEADER_LEN + len(body) + pdu.SEC_TRAILER_LEN + token_len
            head = struct.pack(
                "<BBBBLHHLLHH", pdu.RPC_VERS, pdu.RPC_VERS_MINOR, pdu.PTYPE_REQUEST, flags,
                0x10, length, token_len, call_id, len(stub) - n * room, CONTEXT_ID, opnum,
            )  # fmt: skip
            trailer = pdu.SEC_TRAILER.pack(
                pdu.RPC_C_AUTHN_GSS_KERBEROS, self.level, pad, 0, AUTH_CONTEXT_ID
            )
            sent, token = self._prot.close(head, body, trailer, privacy)
            self._send(head + sent + trailer + token)
        self._last = self._response(call_id, privacy)

    def _response(self, call_id: int, privacy: bool) -> bytes:
        assert self._prot is not None
        parts = []
        while True:
            raw = self._recv_pdu()
            hdr, body = pdu.parse(raw)
            if hdr.call_id != call_id:
                raise DCERPCException(f"answer for call {hdr.call_id}, not {call_id}")
            if isinstance(body, pdu.FaultPdu):
                raise DCERPCException(error_code=body.status)
            if not isinstance(body, pdu.ResponsePdu) or body.auth is None:
                raise DCERPCException("unsigned or unexpected answer on a Kerberos binding")
            trailer = hdr.frag_length - hdr.auth_length - pdu.SEC_TRAILER_LEN
            start = trailer - body.auth.auth_pad_length - len(body.stub)
            end = trailer + pdu.SEC_TRAILER_LEN
            try:
                plain = self._prot.open(raw, start, trailer, end, body.auth.credentials, privacy)
            except Exception as exc:  # noqa: BLE001 - a bad server signature, any cause
                raise DCERPCException(f"the server's answer does not verify: {exc}") from exc
            parts.append(plain[: len(body.stub)])
            if hdr.pfc_flags & pdu.PFC_LAST_FRAG:
                return b"".join(parts)

    def recv(self) -> bytes:
        return self._last

    def disconnect(self) -> None:
        self._t.disconnect()

    # ------------------------------------------------------------- wire
    def _send(self, data: bytes) -> None:
        self._t.send(data, forceWriteAndx=1)

    def _recv_pdu(self) -> bytes:
        data = bytes(self._t.recv())
        if len(data) < pdu.COMMON_HEADER_LEN:
            raise DCERPCException("short answer from the server")
        (frag_length,) = struct.unpack_from("<H", data, 8)
        while len(data) < frag_length:
            more = bytes(self._t.recv(forceRecv=1, count=frag_length - len(data)))
            if not more:
                raise DCERPCException("the server closed the pipe mid-answer")
            data += more
        return data[:frag_length]
