"""A Kerberos DCE/RPC client for in-process tests: MIT's GSSAPI initiator, DCE style.

Like :mod:`tests.support.ntlm_rpc_client` (whose bind, call and tamper hooks it
reuses), every token and seal is made by the client-side library from a real
ticket out of a real KDC, so a round trip proves the server's layout.
``protocol="kerberos"`` binds with auth type 16 (third leg in auth3),
``"negotiate"`` wraps the same tokens in SPNEGO (third leg in alter_context),
``"mit-spnego"`` lets MIT's own SPNEGO mechanism make and read the SPNEGO
tokens (mechListMIC included) instead of this module.
"""

from __future__ import annotations

from pathlib import Path

import gssapi
import gssapi.raw as graw
from spnego._spnego import NegTokenInit, NegTokenResp, pack_mech_type_list, unpack_token

from remotevss.dcerpc import pdu
from remotevss.dcerpc.connection import Interface, ServerConnection
from remotevss.dcerpc.krb5_gss import KRB5_OID
from tests.support.ntlm_rpc_client import RpcAuthClient

FLAGS = (
    gssapi.RequirementFlag.dce_style
    | gssapi.RequirementFlag.mutual_authentication
    | gssapi.RequirementFlag.confidentiality
    | gssapi.RequirementFlag.integrity
    | gssapi.RequirementFlag.replay_detection
    | gssapi.RequirementFlag.out_of_sequence_detection
)
KRB5 = gssapi.OID.from_int_seq(KRB5_OID)
SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
T = graw.IOVBufferType


class Krb5RpcClient(RpcAuthClient):
    def __init__(
        self,
        conn: ServerConnection,
        iface: Interface,
        ccache: Path,
        service: str,
        *,
        protocol: str = "kerberos",
        level: int = pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY,
        header_signing: bool = True,
        mech_types: tuple[str, ...] = (KRB5_OID,),
        mech_list_mic: bool = False,
    ) -> None:
        auth_type = (
            pdu.RPC_C_AUTHN_GSS_KERBEROS if protocol == "kerberos" else pdu.RPC_C_AUTHN_GSS_NEGOTIATE
        )
        self._wire(conn, iface, auth_type, level, 79231, header_signing=header_signing)
        self.mech_types = mech_types
        self.mech_list_mic = mech_list_mic  # send one with the last leg, check the answer
        self.server_mic_checked = False
        self.mic_list: tuple[str, ...] | None = None  # MIC over another list (a test's lie)
        creds = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{ccache}"})
        name = gssapi.Name(service, gssapi.NameType.kerberos_principal)
        self.mit_spnego = protocol == "mit-spnego"
        flags = FLAGS
        if level != pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY:  # as Samba's client asks for signing
            flags &= ~gssapi.RequirementFlag.confidentiality
        self.gss = gssapi.SecurityContext(
            name=name, creds=creds, usage="initiate", flags=flags,
            mech=SPNEGO if self.mit_spnego else KRB5,
        )  # fmt: skip

    # ------------------------------------------------------------- legs
    def _step(self, token: bytes | None = None) -> bytes | None:
        if self.auth_type == pdu.RPC_C_AUTHN_GSS_KERBEROS or self.mit_spnego:
            return self.gss.step(token) or None
        if token is None:  # SPNEGO NegTokenInit with the AP-REQ as optimistic token
            return NegTokenInit(mech_types=list(self.mech_types), mech_token=self.gss.step()).pack()
        resp = unpack_token(token)
        assert isinstance(resp, NegTokenResp)
        mechs = pack_mech_type_list(list(self.mic_list or self.mech_types))
        if resp.response_token is None:  # the final accept_complete
            if resp.mech_list_mic is not None:
                graw.verify_mic(self.gss, mechs, resp.mech_list_mic)
                self.server_mic_checked = True
            return None
        out = self.gss.step(resp.response_token)
        mic = graw.get_mic(self.gss, mechs) if self.mech_list_mic and self.gss.complete else None
        return NegTokenResp(response_token=out, mech_list_mic=mic).pack()

    @property
    def _complete(self) -> bool:
        return bool(self.gss.complete)

    @property
    def sig_len(self) -> int:
        if self.level == pdu.RPC_C_AUTHN_LEVEL_PKT_PRIVACY:
            iov = graw.IOV((T.header, True, None), (T.data, False, bytes(16)), std_layout=False)
            graw.wrap_iov_length(self.gss, iov, confidential=True)
            return len(iov[0].value or b"")
        return 28  # RFC 4121 MIC with an AES key: 16-byte header + 12-byte HMAC

    # ------------------------------------------------------------- per PDU
    def _iov(self, token: bytes | None, head: bytes, body: bytes, trailer: bytes) -> graw.IOV:
        hs = self.header_signing
        return graw.IOV(
            (T.header, token is None, token),
            (T.sign_only, False, head if hs else b""),
            (T.data, False, body),
            (T.sign_only, False, trailer if hs else b""),
            std_layout=False,
        )

    def _seal(self, head: bytes, body: bytes, trailer: bytes) -> tuple[bytes, bytes]:
        iov = self._iov(None, head, body, trailer)
        graw.wrap_iov(self.gss, iov, confidential=True)
        return bytes(iov[2].value), bytes(iov[0].value)

    def _sign(self, head: bytes, body: bytes, trailer: bytes) -> bytes:
        data = head + body + trailer if self.header_signing else body
        return bytes(graw.get_mic(self.gss, data))

    def _unseal(self, head: bytes, body: bytes, trailer: bytes, sig: bytes) -> bytes:
        iov = self._iov(sig, head, body, trailer)
        graw.unwrap_iov(self.gss, iov)
        return bytes(iov[2].value)

    def _verify(self, head: bytes, body: bytes, trailer: bytes, sig: bytes) -> None:
        data = head + body + trailer if self.header_signing else body
        graw.verify_mic(self.gss, data, sig)
