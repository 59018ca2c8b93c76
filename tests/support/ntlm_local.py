"""pyspnego's own NTLM acceptor over a user file: the unit tests' credential store.

A real NTLMSSP implementation (not a mock) standing in for Samba's ntlm_auth,
so the DCE/RPC security layer can be tested in process; the interop tests use
ntlm_auth and winbind against Samba's passdb.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import spnego
import spnego.exceptions

from remotevss.dcerpc.connection import AuthError

USER = "backup"
DOMAIN = "REMOTEVSS"
PASSWORD = "Passw0rd-unit"  # noqa: S105 - a test credential


@dataclass(frozen=True)
class LocalResult:
    domain: str
    account: str
    session_key: bytes
    flags: int


class LocalNtlmAcceptor:
    """One conversation; counts its use so tests can prove it is released."""

    closed = 0

    def __init__(self, user_file: Path) -> None:
        os.environ["NTLM_USER_FILE"] = str(user_file)
        self._ctx = spnego.server(protocol="ntlm")

    def negotiate(self, token: bytes) -> bytes:
        try:
            out = self._ctx.step(token)
        except spnego.exceptions.SpnegoError as exc:
            raise AuthError(f"NTLM negotiate refused: {exc}") from exc
        assert out is not None
        return out

    def authenticate(self, token: bytes) -> LocalResult:
        try:
            self._ctx.step(token)
        except spnego.exceptions.SpnegoError as exc:
            raise AuthError(f"NTLM logon failed: {exc}") from exc
        domain, _, account = (self._ctx.client_principal or "").partition("\\")
        key = self._ctx.session_key
        return LocalResult(domain, account, key, int(self._ctx._context_attr))

    def close(self) -> None:
        type(self).closed += 1


def write_user_file(path: Path) -> Path:
    path.write_text(f"{DOMAIN}:{USER}:{PASSWORD}\n")
    return path
