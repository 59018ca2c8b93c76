r"""An FSRVP binding to any server: ``ncacn_np:\pipe\FssagentRpc`` over SMB3.

How (MS-FSRVP 2.1 and 3.1.4): impacket's
``SMBConnection`` logs on (NTLM with a password or an NT hash, or Kerberos
from a ccache), opens ``FssagentRpc`` on ``IPC$``, and impacket's
``DCERPC_v5`` binds the FSRVP interface 1.0 over NDR20 with its own
authentication at the chosen level: **privacy** by default (the spec's
server demands integrity or privacy, MS-FSRVP 3.1.4), ``integrity``, or
``none`` (the SMB session still authenticates the caller; Samba accepts it,
a Windows server answers E_ACCESSDENIED).  The level the server confirmed in
its bind_ack is kept in :attr:`FsrvpConnection.negotiated_auth_level`.

Failures become typed errors (:mod:`remotevss.client.errors`): unreachable
host, bad credentials, no FSRVP pipe ("no FSRVP agent on this server"),
access denied, bind refused, timeouts.  Timeouts: ``connect_timeout`` for
TCP, SMB negotiate/logon and the bind; ``call_timeout`` (the spec's 180 s)
for each call, after which the binding is closed (MS-FSRVP 3.2.5).

Kerberos: ``Credentials.use_kerberos`` True forces it, False forbids it, and
None (the default) uses it when a readable ccache is named by KRB5CCNAME and
no password or hash was given.  The service tickets are ``cifs/<host>`` and
``host/<host>``, so the host must be a name, not an address.  impacket logs
on to SMB with the ``cifs/`` ticket; the FSRVP binding itself is made by the
system's GSSAPI from the same ccache (:mod:`remotevss.client.gss_rpc`: Kerberos
in DCE style, as Windows and Samba's rpcclient bind), which Samba's FSRVP
server accepts and impacket's own Kerberos binding it does not.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from impacket import nmb, nt_errors
from impacket.dcerpc.v5 import rpcrt, transport
from impacket.smb3structs import SMB2_DIALECT_30, SMB2_DIALECT_302, SMB2_DIALECT_311
from impacket.smbconnection import SessionError, SMBConnection

from remotevss.client.errors import (
    AuthenticationFailed,
    BindRejected,
    CallTimeout,
    ClientError,
    ConnectAccessDenied,
    ConnectionLost,
    ConnectTimeout,
    FsrvpCallError,
    FsrvpConnectError,
    HostUnreachable,
    PipeNotFound,
    RpcFault,
    UsageError,
)
from remotevss.client.fsrvp_ndr import MSRPC_UUID_FSRVP
from remotevss.client.gss_rpc import GssKerberosBinding, KerberosBindError
from remotevss.client.rpc import FsrvpCalls
from remotevss.fsrvp import calls
from remotevss.fsrvp.calls import OPNUM_NAMES, StubError
from remotevss.fsrvp.constants import INTERFACE_UUID, PIPE_NAME

log = logging.getLogger(__name__)

AuthLevel = Literal["privacy", "integrity", "none"]
AUTH_LEVELS: dict[str, int] = {
    "privacy": rpcrt.RPC_C_AUTHN_LEVEL_PKT_PRIVACY,
    "integrity": rpcrt.RPC_C_AUTHN_LEVEL_PKT_INTEGRITY,
    "none": rpcrt.RPC_C_AUTHN_LEVEL_NONE,
}
AUTH_LEVEL_NAMES: dict[int, str] = {v: k for k, v in AUTH_LEVELS.items()}
AUTH_LEVEL_NAMES[rpcrt.RPC_C_AUTHN_LEVEL_CONNECT] = "connect"
AUTH_LEVEL_NAMES[rpcrt.RPC_C_AUTHN_LEVEL_CALL] = "call"
SMB3_DIALECTS = {SMB2_DIALECT_30: "3.0", SMB2_DIALECT_302: "3.0.2", SMB2_DIALECT_311: "3.1.1"}

_BAD_CREDENTIALS = {
    nt_errors.STATUS_LOGON_FAILURE: "bad user name or password (STATUS_LOGON_FAILURE)",
    nt_errors.STATUS_WRONG_PASSWORD: "bad password (STATUS_WRONG_PASSWORD)",
    nt_errors.STATUS_NO_SUCH_USER: "no such user (STATUS_NO_SUCH_USER)",
    nt_errors.STATUS_ACCOUNT_DISABLED: "account disabled (STATUS_ACCOUNT_DISABLED)",
    nt_errors.STATUS_ACCOUNT_LOCKED_OUT: "account locked out (STATUS_ACCOUNT_LOCKED_OUT)",
    nt_errors.STATUS_ACCOUNT_EXPIRED: "account expired (STATUS_ACCOUNT_EXPIRED)",
    nt_errors.STATUS_PASSWORD_EXPIRED: "password expired (STATUS_PASSWORD_EXPIRED)",
    nt_errors.STATUS_PASSWORD_MUST_CHANGE: "password must change (STATUS_PASSWORD_MUST_CHANGE)",
    nt_errors.STATUS_ACCOUNT_RESTRICTION: "account restriction (STATUS_ACCOUNT_RESTRICTION)",
    nt_errors.STATUS_INVALID_LOGON_HOURS: "outside logon hours (STATUS_INVALID_LOGON_HOURS)",
    nt_errors.STATUS_INVALID_WORKSTATION: "not allowed from this workstation",
}


def ccache_path(env: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """The file named by KRB5CCNAME if it is a readable FILE: ccache (impacket reads no other)."""
    name = (env if env is not None else os.environ).get("KRB5CCNAME", "")
    if not name:
        return None
    if name.startswith("FILE:"):
        name = name[5:]
    elif ":" in name.split("/", 1)[0]:
        return None  # KCM:, KEYRING:, MEMORY:, DIR: ... impacket cannot read them
    return name if os.path.isfile(name) and os.access(name, os.R_OK) else None


def _ccache_tickets(
    path: str | None, user: str, domain: str, target: str
) -> tuple[str, str, Any, Any]:
    """(user, realm, TGT, TGS) for the SMB logon from the ccache file ``path``, found
    as impacket's own cache lookup finds them; done here because that lookup opens
    KRB5CCNAME as a path, and ``FILE:/tmp/krb5cc_0`` (kinit's, pam's) is not one.
    No ccache: the user and realm as given, no tickets (the password gets them)."""
    if path is None:
        return user, domain, None, None
    from impacket.krb5.ccache import CCache

    cache = CCache.loadFile(path)
    if not domain:
        domain = cache.principal.realm["data"].decode("utf-8")
    principal = f"{target.upper()}@{domain.upper()}"
    tgt = tgs = None
    creds = cache.getCredential(principal)
    if creds is not None:
        tgs = creds.toTGS(principal)
    else:
        creds = cache.getCredential(f"krbtgt/{domain.upper()}@{domain.upper()}")
        if creds is not None:
            tgt = creds.toTGT()
    if not user:
        if creds is not None:
            user = creds["client"].prettyPrint().split(b"@")[0].decode("utf-8")
        elif len(cache.principal.components) > 0:
            user = cache.principal.components[0]["data"].decode("utf-8")
    return user, domain, tgt, tgs


@dataclass(frozen=True)
class Credentials:
    """Who we are.  ``nt_hash`` is 32 hex digits (pass-the-hash, NTLM only)."""

    username: str = ""
    password: str = field(default="", repr=False)
    domain: str = ""
    nt_hash: str = field(default="", repr=False)
    aes_key: str = field(default="", repr=False)
    use_kerberos: bool | None = None
    kdc_host: str | None = None

    def kerberos(self) -> bool:
        """Whether to use Kerberos (see the module docstring for ``None``)."""
        if self.use_kerberos is not None:
            return self.use_kerberos
        return ccache_path() is not None and not self.password and not self.nt_hash


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach the server."""

    port: int = 445
    auth_level: AuthLevel = "privacy"
    call_timeout: float = 180.0
    connect_timeout: float = 30.0
    #: FSRVP came with SMB 3.0; refuse older dialects unless told otherwise.
    require_smb3: bool = True

    def __post_init__(self) -> None:
        if self.auth_level not in AUTH_LEVELS:
            raise ValueError(f"auth_level must be one of {', '.join(AUTH_LEVELS)}")
        if not 0 < self.port < 65536:
            raise ValueError("port must be 1-65535")
        if self.call_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("timeouts must be positive")


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _status_name(code: int) -> str:
    entry = nt_errors.ERROR_MESSAGES.get(code)
    return entry[0] if entry else f"0x{code:08X}"


def _connect_error(host: str, port: int, exc: BaseException, timeout: float) -> ClientError:
    """A failure of TCP connect / SMB negotiate, typed."""
    if isinstance(exc, nmb.NetBIOSTimeout | socket.timeout | TimeoutError):
        return ConnectTimeout(host, f"no SMB answer on port {port} within {timeout:g} s")
    inner: BaseException = exc
    if isinstance(exc, OSError) and len(exc.args) > 1 and isinstance(exc.args[1], BaseException):
        inner = exc.args[1]
    if isinstance(inner, socket.gaierror):
        return HostUnreachable(host, f"cannot resolve host name: {inner.strerror or inner}")
    if isinstance(inner, TimeoutError | socket.timeout):
        return ConnectTimeout(host, f"TCP connect to port {port} timed out after {timeout:g} s")
    if isinstance(inner, ConnectionRefusedError):
        return HostUnreachable(host, f"connection refused on port {port} (no SMB server there)")
    if isinstance(inner, OSError):
        return HostUnreachable(host, f"cannot connect to port {port}: {inner.strerror or inner}")
    if str(exc) == "No answer!":  # impacket: the peer closed the socket on our NEGOTIATE
        return HostUnreachable(
            host,
            f"no SMB answer on port {port}: the connection was closed "
            "(is something other than an SMB server listening there?)",
        )
    return HostUnreachable(host, f"SMB negotiation on port {port} failed: {exc}")


_TRANSPORT_ERRORS = (SessionError, nmb.NetBIOSTimeout, nmb.NetBIOSError, TimeoutError, OSError)


def _bind_transport_error(host: str, exc: BaseException) -> ClientError:
    """An SMB or socket failure during the bind, typed."""
    if isinstance(exc, SessionError):
        return HostUnreachable(host, f"bind failed: {_status_name(exc.getErrorCode())}")
    if isinstance(exc, nmb.NetBIOSTimeout | TimeoutError):
        return ConnectTimeout(host, "the FSRVP bind timed out")
    return HostUnreachable(host, f"connection dropped during the bind: {exc}")


class FsrvpConnection(FsrvpCalls):
    """One authenticated FSRVP binding over SMB; each method is one call.

    Connects in the constructor; use as a context manager or call
    :meth:`close`.  Calls raise :class:`~remotevss.client.errors.FsrvpCallError`
    subclasses for transport failures; the per-opnum methods return the typed
    response unchecked, :meth:`checked` raises on a non-zero return value.
    """

    def __init__(
        self,
        host: str,
        credentials: Credentials | None = None,
        options: ConnectOptions | None = None,
    ) -> None:
        self.host = host
        self.credentials = credentials or Credentials()
        self.options = options or ConnectOptions()
        self.kerberos = self.credentials.kerberos()
        self.negotiated_auth_level: str | None = None
        self.dialect: str = ""
        self.server_name = ""
        self.server_dns_host_name = ""
        self.server_domain = ""
        self.server_dns_domain_name = ""
        self.peer_address: str | None = None
        self._smb: Any = None
        self._transport: Any = None
        self._dce: Any = None
        self._closed = False
        try:
            self._connect()
        except BaseException:
            self._abandon()
            raise

    # ------------------------------------------------------------- set-up
    def _connect(self) -> None:
        host, opts = self.host, self.options
        try:
            self._smb = SMBConnection(
                host, host, sess_port=opts.port, timeout=int(max(1, opts.connect_timeout))
            )
        except SessionError as exc:
            status = _status_name(exc.getErrorCode())
            raise HostUnreachable(host, f"SMB negotiation failed: {status}") from None
        except Exception as exc:  # noqa: BLE001 - impacket raises bare Exception / socket.error
            raise _connect_error(host, opts.port, exc, opts.connect_timeout) from exc
        dialect = self._smb.getDialect()
        self.dialect = SMB3_DIALECTS.get(dialect, str(dialect))
        if opts.require_smb3 and dialect not in SMB3_DIALECTS:
            raise HostUnreachable(
                host, f"server offers SMB dialect {self.dialect}, not SMB 3 (FSRVP needs SMB 3)"
            )
        self._logon()
        self.server_name = self._smb.getServerName() or ""
        self.server_dns_host_name = self._smb.getServerDNSHostName() or ""
        self.server_domain = self._smb.getServerDomain() or ""
        self.server_dns_domain_name = self._smb.getServerDNSDomainName() or ""
        try:
            peer = self._smb.getSMBServer().get_socket().getpeername()
            self.peer_address = str(peer[0]).split("%", 1)[0]
        except (OSError, AttributeError):
            self.peer_address = None
        self._open_pipe()
        self._bind()
        self._smb.setTimeout(int(max(1, self.options.call_timeout)))

    def _logon(self) -> None:
        host, creds = self.host, self.credentials
        try:
            if self.kerberos:
                user, domain, tgt, tgs = _ccache_tickets(
                    ccache_path(), creds.username, creds.domain, f"cifs/{host}"
                )
                if not domain:
                    raise UsageError(
                        "Kerberos needs the realm: -W REALM or -U USER@REALM "
                        "(or a ticket in KRB5CCNAME)"
                    )
                self._smb.kerberosLogin(
                    user,
                    creds.password,
                    domain,
                    "",
                    creds.nt_hash,
                    creds.aes_key,
                    kdcHost=creds.kdc_host,
                    TGT=tgt,
                    TGS=tgs,
                    useCache=False,
                )
            else:
                self._smb.login(creds.username, creds.password, creds.domain, "", creds.nt_hash)
        except SessionError as exc:
            code = exc.getErrorCode()
            if code in _BAD_CREDENTIALS:
                raise AuthenticationFailed(
                    host, f"logon refused: {_BAD_CREDENTIALS[code]}"
                ) from None
            if code == nt_errors.STATUS_ACCESS_DENIED:
                raise ConnectAccessDenied(host, "logon refused: STATUS_ACCESS_DENIED") from None
            raise AuthenticationFailed(host, f"logon failed: {_status_name(code)}") from None
        except (nmb.NetBIOSTimeout, TimeoutError) as exc:
            raise ConnectTimeout(host, "SMB logon timed out") from exc
        except nmb.NetBIOSError as exc:
            raise HostUnreachable(host, f"connection dropped during logon: {exc}") from exc
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - impacket's Kerberos and NTLM raise many types
            kind = "Kerberos" if self.kerberos else "NTLM"
            raise AuthenticationFailed(host, f"{kind} logon failed: {exc}") from exc
        try:
            guest = self._smb.isGuestSession()
        except Exception:  # noqa: BLE001 - SMB1 servers may not say
            guest = False
        if guest:
            raise AuthenticationFailed(
                host, "the server logged us on as guest: the credentials were not accepted"
            )

    def _open_pipe(self) -> None:
        host = self.host
        self._transport = transport.SMBTransport(
            host, self.options.port, "\\" + PIPE_NAME, smb_connection=self._smb
        )
        self._dce = self._transport.get_dce_rpc()
        try:
            self._dce.connect()
        except SessionError as exc:
            code = exc.getErrorCode()
            if code in (
                nt_errors.STATUS_OBJECT_NAME_NOT_FOUND,
                nt_errors.STATUS_OBJECT_PATH_NOT_FOUND,
                nt_errors.STATUS_PIPE_NOT_AVAILABLE,
            ):
                raise PipeNotFound(
                    host,
                    f"no FSRVP agent on this server (\\pipe\\{PIPE_NAME}: {_status_name(code)})",
                ) from None
            if code == nt_errors.STATUS_ACCESS_DENIED:
                raise ConnectAccessDenied(
                    host, f"access to IPC$ or \\pipe\\{PIPE_NAME} denied"
                ) from None
            if code == nt_errors.STATUS_CONNECTION_REFUSED:
                raise PipeNotFound(
                    host,
                    f"the FSRVP service behind \\pipe\\{PIPE_NAME} is not running "
                    "(STATUS_CONNECTION_REFUSED)",
                ) from None
            raise HostUnreachable(
                host, f"cannot open \\pipe\\{PIPE_NAME}: {_status_name(code)}"
            ) from None
        except (nmb.NetBIOSTimeout, TimeoutError) as exc:
            raise ConnectTimeout(host, f"opening \\pipe\\{PIPE_NAME} timed out") from exc
        except (nmb.NetBIOSError, OSError) as exc:
            raise HostUnreachable(host, f"connection dropped opening the pipe: {exc}") from exc

    def _bind(self) -> None:
        host = self.host
        wanted = AUTH_LEVELS[self.options.auth_level]
        if self.kerberos and wanted != rpcrt.RPC_C_AUTHN_LEVEL_NONE:
            return self._bind_kerberos(wanted)
        if wanted != rpcrt.RPC_C_AUTHN_LEVEL_NONE:
            self._dce.set_auth_type(rpcrt.RPC_C_AUTHN_WINNT)
        self._dce.set_auth_level(wanted)
        try:
            ack = self._dce.bind(MSRPC_UUID_FSRVP)
        except rpcrt.DCERPCException as exc:
            text = str(exc)
            words = text.lower().replace("_", " ")
            if "access denied" in words or "authentication" in words:
                denied = ConnectAccessDenied(host, f"FSRVP bind refused: {text}")
                denied.auth_level = self.options.auth_level
                raise denied from None
            if "abstract syntax" in words:
                raise BindRejected(
                    host, f"\\pipe\\{PIPE_NAME} does not serve FSRVP 1.0 ({text})"
                ) from None
            raise BindRejected(host, f"FSRVP bind refused: {text}") from None
        except _TRANSPORT_ERRORS as exc:
            raise _bind_transport_error(host, exc) from exc
        except Exception as exc:  # noqa: BLE001 - impacket's NTLM code raises anything
            raise BindRejected(host, f"FSRVP bind failed: {exc}") from exc
        got = rpcrt.RPC_C_AUTHN_LEVEL_NONE
        if ack and ack["auth_len"]:
            got = rpcrt.SEC_TRAILER(ack["sec_trailer"])["auth_level"]
        self._bound(wanted, got)

    def _bind_kerberos(self, wanted: int) -> None:
        host = self.host
        creds = self.credentials
        binding = GssKerberosBinding(
            self._transport, host, wanted, user=creds.username, password=creds.password,
            realm=creds.domain,
        )  # fmt: skip
        try:
            binding.bind(INTERFACE_UUID, (1, 0))
        except KerberosBindError as exc:
            raise AuthenticationFailed(host, f"Kerberos bind: {exc}") from None
        except rpcrt.DCERPCException as exc:
            raise BindRejected(host, f"FSRVP bind refused: {exc}") from None
        except _TRANSPORT_ERRORS as exc:
            raise _bind_transport_error(host, exc) from exc
        self._dce = binding
        self._bound(wanted, binding.ack_auth_level)

    def _bound(self, wanted: int, got: int) -> None:
        host = self.host
        self.negotiated_auth_level = AUTH_LEVEL_NAMES.get(got, str(got))
        if got != wanted:
            raise BindRejected(
                host,
                f"asked for auth level {self.options.auth_level}, "
                f"server answered {self.negotiated_auth_level}",
            )
        log.debug(
            "bound FSRVP on %s:%d: SMB %s, %s, auth level %s",
            host,
            self.options.port,
            self.dialect,
            "Kerberos" if self.kerberos else "NTLM",
            self.negotiated_auth_level,
        )

    # ------------------------------------------------------------- calls
    def _exchange(self, opnum: int, stub: bytes) -> bytes:
        name = OPNUM_NAMES.get(opnum, f"opnum {opnum}")
        if self._closed or self._dce is None:
            raise ConnectionLost(name, "the binding is closed")
        try:
            return super()._exchange(opnum, stub)
        except rpcrt.DCERPCException as exc:
            raise RpcFault(name, str(exc)) from None
        except (nmb.NetBIOSTimeout, TimeoutError) as exc:
            self._abandon()
            raise CallTimeout(
                name, f"no answer within {self.options.call_timeout:g} s; connection closed"
            ) from exc
        except SessionError as exc:
            self._abandon()
            raise ConnectionLost(
                name, f"SMB error {_status_name(exc.getErrorCode())}; connection closed"
            ) from None
        except (nmb.NetBIOSError, OSError) as exc:
            self._abandon()
            raise ConnectionLost(name, f"connection lost: {exc}") from exc
        except BaseException:
            # Ctrl-C (or any exit) between the request and its answer: the answer
            # would be read by the next call as its own, so the pipe is dropped and
            # whatever comes next (the clean-up of the set) binds afresh.
            self._abandon()
            raise

    def call(self, request: calls.Request) -> calls.Response:
        try:
            return super().call(request)
        except StubError as exc:
            raise FsrvpCallError(
                OPNUM_NAMES.get(request.opnum, "?"), f"malformed response from the server: {exc}"
            ) from None

    # ------------------------------------------------------------- teardown
    def close(self) -> None:
        """Close the pipe and log off (briefly: a few seconds at most)."""
        if self._closed:
            return
        self._closed = True
        if self._smb is None:
            return
        try:
            self._smb.setTimeout(int(max(1, min(5.0, self.options.connect_timeout))))
            if self._dce is not None:
                self._dce.disconnect()
            self._smb.close()
        except Exception as exc:  # noqa: BLE001 - best effort on a broken connection
            log.debug("close: %s", exc)
            self._abandon()

    def _abandon(self) -> None:
        """Drop the TCP connection without talking to the server (it may hang)."""
        self._closed = True
        if self._smb is None:
            return
        try:
            self._smb.getSMBServer().close_session()
        except Exception as exc:  # noqa: BLE001
            log.debug("abandon: %s", exc)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> FsrvpConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def share_served(self, name: str) -> bool | None:
        """Whether this server serves a share ``name`` (a tree connect on our SMB
        session): False if it answers STATUS_BAD_NETWORK_NAME, None if it cannot be
        told.  For a snapshot share whose set the server no longer knows."""
        if self._closed or self._smb is None:
            return None
        try:
            tid = self._smb.connectTree(name)
        except SessionError as exc:
            return False if exc.getErrorCode() == nt_errors.STATUS_BAD_NETWORK_NAME else None
        except Exception:  # noqa: BLE001 - impacket raises many types; unknown is the answer
            return None
        try:
            self._smb.disconnectTree(tid)
        except Exception as exc:  # noqa: BLE001 - best effort
            log.debug("disconnectTree %s: %s", name, exc)
        return True

    def names(self) -> set[str]:
        """Every name this server goes by, lower case: the host we dialled, its
        NetBIOS and DNS names from the logon, and their first labels."""
        found = {
            self.host,
            self.server_name,
            self.server_dns_host_name,
        }
        if self.server_dns_host_name and self.server_dns_domain_name:
            found.add(f"{self.server_dns_host_name}.{self.server_dns_domain_name}")
        out: set[str] = set()
        for name in found:
            if not name:
                continue
            name = name.lower().rstrip(".")
            out.add(name)
            if not _is_address(name):
                out.add(name.split(".", 1)[0])
        return out


def connect(
    host: str, credentials: Credentials | None = None, options: ConnectOptions | None = None
) -> FsrvpConnection:
    """Open an FSRVP binding to ``host`` (raises FsrvpConnectError subclasses)."""
    return FsrvpConnection(host, credentials, options)


__all__ = [
    "AUTH_LEVELS",
    "AuthLevel",
    "ConnectOptions",
    "Credentials",
    "FsrvpConnectError",
    "FsrvpConnection",
    "ccache_path",
    "connect",
]
