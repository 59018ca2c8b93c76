"""An authenticated DCE/RPC client for in-process tests: pyspnego's NTLM/SPNEGO initiator.

Independent of the server's crypto (pyspnego computes every signature and
seal on the client side), so a round trip proves the server's layout.  It
also exposes each PDU before it is sent, so tests can tamper with, replay or
reorder them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import spnego
from spnego.iov import BufferType

from remotevss.dcerpc import pdu
from remotevss.dcerpc.connection import Interface, ServerConnection

PROTOCOLS = {"ntlm": pdu.RPC_C_AUTHN_WINNT, "negotiate": pdu.RPC_C_AUTHN_GSS_NEGOTIATE}
REQ = (
    spnego.ContextReq.integrity
    | spnego.ContextReq.confidentiality
    | spnego.ContextReq.dce_style
    | spnego.ContextReq.replay_detect
    | spnego.ContextReq.sequence_detect
)


class RpcAuthClient:
    def __init__(
        self,
        conn: ServerConnection,
        iface: Interface,
        user: str,
        password: str,
        *,
        protocol: str = "ntlm",
        level: int = pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY,
        ctx_id: int = 79231,
    ) -> None:
        self._wire(conn, iface, PROTOCOLS[protocol], level, ctx_id, header_signing=False)
        self.sp = spnego.client(user, password, protocol=protocol, context_req=REQ)

    def _wire(self, conn: ServerConnection, iface: Interface, auth_type: int, level: int,
              ctx_id: int, *, header_signing: bool) -> None:  # fmt: skip
        """The state every initiator shares (the Kerberos client calls it too)."""
        self.conn = conn
        self.iface = iface
        self.auth_type = auth_type
        self.level = level
        self.ctx_id = ctx_id
        self.header_signing = header_signing  # offer PFC_SUPPORT_HEADER_SIGN at bind
        self.call_id = 1
        self.sent: list[bytes] = []
        #: Called with each request PDU before it is sent; returns what is sent.
        self.mangle: Callable[[bytes], bytes] = lambda b: b

    @property
    def sig_len(self) -> int:
        """The auth value's length (NTLM's signature: always 16)."""
        return 16

    def _verifier(self, token: bytes) -> pdu.AuthVerifier:
        return pdu.AuthVerifier(self.auth_type, self.level, 0, self.ctx_id, token)

    def _exchange(self, data: bytes) -> list[bytes]:
        self.sent.append(data)
        assert self.conn.receive_data(data) == []
        return self.conn.pdus_to_send()

    def _contexts(self) -> list[pdu.ContextElem]:
        syntax = pdu.SyntaxId(self.iface.uuid, *self.iface.version)
        return [pdu.ContextElem(0, syntax, (pdu.NDR20,))]

    # The initiator's side; the Kerberos client (krb5_rpc_client) overrides these.
    def _step(self, token: bytes | None = None) -> bytes | None:
        return self.sp.step(token)

    @property
    def _complete(self) -> bool:
        return bool(self.sp.complete)

    def bind(self) -> None:
        token = self._step()
        assert token is not None
        flags = pdu.PFC_FIRST_LAST | (pdu.PFC_SUPPORT_HEADER_SIGN if self.header_signing else 0)
        (ack,) = self._exchange(
            pdu.encode_bind(
                self.call_id, self._contexts(), auth=self._verifier(token), flags=flags
            )
        )
        self.call_id += 1
        hdr, body = pdu.parse(ack)
        assert hdr.ptype == pdu.PTYPE_BIND_ACK, body
        assert isinstance(body, pdu.BindAck) and body.auth is not None
        # header signing only if the server echoed the offer (MS-RPCE 3.3.1.5.2.2)
        self.header_signing = self.header_signing and bool(
            hdr.pfc_flags & pdu.PFC_SUPPORT_HEADER_SIGN
        )
        token = self._step(body.auth.credentials)
        assert token is not None
        if self.auth_type != pdu.RPC_C_AUTHN_GSS_NEGOTIATE:  # NTLM, Kerberos: no reply
            assert self._exchange(pdu.encode_auth3(self.call_id, self._verifier(token))) == []
        else:  # SPNEGO: the server's mechListMIC comes back in alter_context_resp
            (resp,) = self._exchange(
                pdu.encode_bind(
                    self.call_id, self._contexts(), auth=self._verifier(token),
                    ptype=pdu.PTYPE_ALTER_CONTEXT,
                )
            )  # fmt: skip
            hdr, body = pdu.parse(resp)
            assert hdr.ptype == pdu.PTYPE_ALTER_CONTEXT_RESP, body
            assert isinstance(body, pdu.BindAck) and body.auth is not None
            assert self._step(body.auth.credentials) is None
        self.call_id += 1
        assert self._complete

    def _seal(self, head: bytes, body: bytes, trailer: bytes) -> tuple[bytes, bytes]:
        res = self.sp.wrap_iov(
            [(BufferType.sign_only, head), body, (BufferType.sign_only, trailer),
             BufferType.header],
            encrypt=True,
        )  # fmt: skip
        sealed, sig = res.buffers[1].data, res.buffers[3].data
        assert sealed is not None and sig is not None
        return sealed, sig

    def _sign(self, head: bytes, body: bytes, trailer: bytes) -> bytes:
        return bytes(self.sp.sign(head + body + trailer))

    def _unseal(self, head: bytes, body: bytes, trailer: bytes, sig: bytes) -> bytes:
        res = self.sp.unwrap_iov(
            [(BufferType.sign_only, head), body, (BufferType.sign_only, trailer),
             (BufferType.header, sig)]
        )  # fmt: skip
        plain = res.buffers[1].data
        assert plain is not None
        return plain

    def _verify(self, head: bytes, body: bytes, trailer: bytes, sig: bytes) -> None:
        self.sp.verify(head + body + trailer, sig)

    def request_pdu(self, opnum: int, stub: bytes) -> bytes:
        """One signed or sealed single-fragment request (not sent)."""
        pad = -len(stub) % 16
        body_plain = stub + bytes(pad)
        sig_len = self.sig_len
        length = pdu.REQUEST_HEADER_LEN + len(body_plain) + pdu.SEC_TRAILER_LEN + sig_len
        head = struct.pack(
            "<BBBBLHHLLHH", 5, 0, pdu.PTYPE_REQUEST, pdu.PFC_FIRST_LAST, 0x10,
            length, sig_len, self.call_id, len(stub), 0, opnum,
        )  # fmt: skip
        self.call_id += 1
        trailer = pdu.SEC_TRAILER.pack(self.auth_type, self.level, pad, 0, self.ctx_id)
        if self.level == pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY:
            body, sig = self._seal(head, body_plain, trailer)
        else:
            body = body_plain
            sig = self._sign(head, body, trailer)
        assert len(sig) == sig_len
        return head + body + trailer + sig

    def call(self, opnum: int, stub: bytes) -> bytes:
        """Send a request, return the verified (and unsealed) response stub."""
        out = self._exchange(self.mangle(self.request_pdu(opnum, stub)))
        chunks = []
        for frag in out:
            hdr, body = pdu.parse(frag)
            if hdr.ptype == pdu.PTYPE_FAULT:
                assert isinstance(body, pdu.FaultPdu)
                raise RpcFault(body.status)
            assert hdr.ptype == pdu.PTYPE_RESPONSE and hdr.auth_length == self.sig_len
            chunks.append(self.open_response(frag, hdr))
        return b"".join(chunks)

    def open_response(self, frag: bytes, hdr: pdu.Header) -> bytes:
        trailer_at = hdr.frag_length - hdr.auth_length - pdu.SEC_TRAILER_LEN
        auth_type, level, pad, _, ctx = struct.unpack_from("<BBBBL", frag, trailer_at)
        assert (auth_type, level, ctx) == (self.auth_type, self.level, self.ctx_id)
        head = frag[: pdu.RESPONSE_HEADER_LEN]
        body = frag[pdu.RESPONSE_HEADER_LEN : trailer_at]
        trailer = frag[trailer_at : trailer_at + pdu.SEC_TRAILER_LEN]
        sig = frag[trailer_at + pdu.SEC_TRAILER_LEN :]
        if self.level == pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY:
            plain = self._unseal(head, body, trailer, sig)
        else:
            self._verify(head, body, trailer, sig)
            plain = body
        return plain[: len(plain) - pad]


class RpcFault(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"fault {status:#x}")
        self.status = status


def assert_replay_refused(c: RpcAuthClient) -> None:
    """A bound client's call, then the same request PDU again: refused, connection closed."""
    c.call(1, b"first")
    c.mangle = lambda b: c.sent[-1]  # the previous request again
    try:
        c.call(1, b"second")
    except RpcFault:
        pass
    else:
        raise AssertionError("the replayed request was answered")
    assert c.conn.closed
