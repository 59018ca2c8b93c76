"""Every error the FSRVP client raises, typed, each with the CLI's exit code.

Why one module: the API, the CLI and the script mode must agree on what a
failure means and how a caller tells them apart.  Four families:

* :class:`BadUnc` and :class:`UsageError` -- the caller's input was wrong;
  nothing was sent (exit 2).  :class:`StateError` (the client table is
  unusable, exit 7) and :class:`ExecFailed` (a script's program failed,
  exit 8) are local too.
* :class:`FsrvpConnectError` -- no usable FSRVP binding: host unreachable,
  credentials refused, no ``\\pipe\\FssagentRpc``, access denied at the SMB
  or bind level (exit 3 or 4), or a timeout (exit 6).
* :class:`FsrvpCallError` -- a call did not get an answer: the connection
  dropped, the RPC call timed out, or the server sent a DCE/RPC fault.
* :class:`FsrvpError` -- the server answered with a non-zero FSRVP return
  code.  It carries the code, its FSRVP name and the call, unchanged, as
  the spec's client does (MS-FSRVP 3.2).

Server codes are ambiguous about *unknown set ids* (MS-FSRVP, Samba and Windows differ): the
current spec says ID_MISMATCH, older texts and Samba E_INVALIDARG,
DeleteShareMapping OBJECT_NOT_FOUND, a Windows beta BAD_STATE.
:func:`fsrvp_error` therefore makes the error for a call that names a set
also an instance of :class:`NoSuchSet` when its code is one of those, so
``except NoSuchSet`` catches all of them.  BAD_STATE counts only for calls
where no other reading is plausible (not GetShareMapping or
DeleteShareMapping: there the spec's BAD_STATE means "wrong state", e.g. a
Recovered set on a spec server).
"""

from __future__ import annotations

from remotevss.fsrvp.constants import HResult, Opnum, hresult_name

# Exit codes of ``remotevss shadow`` (docs/client.md keeps the same table).
EXIT_OK = 0
EXIT_FSRVP = 1  # the server answered with an FSRVP error code
EXIT_USAGE = 2  # bad arguments, malformed UNC, script syntax
EXIT_CONNECT = 3  # unreachable, connection lost, no FSRVP agent, RPC fault
EXIT_AUTH = 4  # credentials refused or access denied
EXIT_NOT_FOUND = 5  # unknown id (locally or on the server)
EXIT_TIMEOUT = 6  # connect or call timeout
EXIT_LOCAL = 7  # the client table (--state) cannot be opened, read or written
EXIT_EXEC = 8  # script mode: a program run by `exec` failed or could not start
EXIT_INTERRUPTED = 130


class ClientError(Exception):
    """Base of every client error; ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_FSRVP


class UsageError(ClientError):
    """Wrong input detected before anything was sent."""

    exit_code = EXIT_USAGE


class BadUnc(UsageError, ValueError):
    """A share path that is not ``\\\\host\\share[\\]`` in a form we accept."""

    def __init__(self, unc: str, reason: str) -> None:
        shown = unc if unc.isprintable() else repr(unc)
        super().__init__(f"bad share path {shown}: {reason}")
        self.unc = unc
        self.reason = reason


class StateError(ClientError):
    """The client table cannot be used (a bad ``--state`` path, not a SQLite file,
    read-only); raised before anything is sent, so no server is left with a set
    the table could not record."""

    exit_code = EXIT_LOCAL


class ExecFailed(ClientError):
    """A script's ``exec`` program exited non-zero or could not start: not a
    script syntax error (exit 2), so a wrapper can tell the two apart."""

    exit_code = EXIT_EXEC

    def __init__(self, program: str, message: str, status: int | None = None) -> None:
        super().__init__(f"exec {program}: {message}")
        self.program = program
        #: the program's exit status (negative: killed by that signal); None: it did not start
        self.status = status


class UnknownId(ClientError):
    """An id that the local client state does not know."""

    exit_code = EXIT_NOT_FOUND


class AccessDeniedError(ClientError):
    """Marker: access was refused, at the SMB, bind or FSRVP level."""

    exit_code = EXIT_AUTH
    #: The DCE/RPC auth level of the binding that was refused ("none", "integrity",
    #: "privacy"), when known: a server requiring integrity refuses "none" with the
    #: same E_ACCESSDENIED as a caller without rights (MS-FSRVP 3.1.4).
    auth_level: str | None = None


# ----------------------------------------------------------------- connecting


class FsrvpConnectError(ClientError):
    """No FSRVP binding could be set up."""

    exit_code = EXIT_CONNECT

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


class HostUnreachable(FsrvpConnectError):
    """Name does not resolve, connection refused, no route, or the SMB negotiate failed."""


class AuthenticationFailed(FsrvpConnectError):
    """The server refused the credentials (STATUS_LOGON_FAILURE and kin)."""

    exit_code = EXIT_AUTH


class ConnectAccessDenied(FsrvpConnectError, AccessDeniedError):
    """Logged on, but IPC$, the pipe or the bind was refused (STATUS_ACCESS_DENIED)."""

    exit_code = EXIT_AUTH


class PipeNotFound(FsrvpConnectError):
    """``\\pipe\\FssagentRpc`` does not exist (STATUS_OBJECT_NAME_NOT_FOUND)."""


class BindRejected(FsrvpConnectError):
    """The pipe exists but refused the FSRVP bind (wrong interface, auth level ...)."""


class ConnectTimeout(FsrvpConnectError):
    """Connecting, negotiating or binding took longer than the connect timeout."""

    exit_code = EXIT_TIMEOUT


class OwnerRedirectError(FsrvpConnectError):
    """IsPathSupported named an owner we must not or cannot follow."""


# ----------------------------------------------------------------- calls


class FsrvpCallError(ClientError):
    """A call got no FSRVP answer."""

    exit_code = EXIT_CONNECT

    def __init__(self, call: str, message: str) -> None:
        super().__init__(f"{call}: {message}")
        self.call = call


class CallTimeout(FsrvpCallError):
    """No response within the RPC call timeout; the binding is closed (MS-FSRVP 3.2.5)."""

    exit_code = EXIT_TIMEOUT


class ConnectionLost(FsrvpCallError):
    """The SMB connection broke during the call."""


class RpcFault(FsrvpCallError):
    """The server answered with a DCE/RPC fault PDU instead of an FSRVP return code."""

    def __init__(self, call: str, fault: str) -> None:
        super().__init__(call, f"DCE/RPC fault {fault}")
        self.fault = fault


# ----------------------------------------------------------------- server codes


class FsrvpError(ClientError):
    """The server answered ``call`` with the non-zero FSRVP return ``code``."""

    exit_code = EXIT_FSRVP
    #: What the code means where it came (set by the code that knows, e.g. a creation);
    #: replaces the generic hint in the one-line description.
    hint = ""

    def __init__(self, code: int, name: str, call: str, detail: str = "") -> None:
        self.code = code & 0xFFFFFFFF
        self.name = name
        self.call = call
        self.detail = detail
        text = f"{call} failed: {name} (0x{self.code:08X})"
        super().__init__(f"{text}: {detail}" if detail else text)


class BadState(FsrvpError):
    """FSRVP_E_BAD_STATE (or Windows 2012's 0x80042311 from GetShareMapping)."""


class InProgress(FsrvpError):
    """FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS: another set is being created on the server."""


class NotSupported(FsrvpError):
    """FSRVP_E_NOT_SUPPORTED: the share's file store cannot be shadow-copied."""


class ObjectNotFound(FsrvpError):
    """FSRVP_E_OBJECT_NOT_FOUND."""


class ObjectAlreadyExists(FsrvpError):
    """FSRVP_E_OBJECT_ALREADY_EXISTS: e.g. two shares on one volume in one set."""


class UnsupportedContext(FsrvpError):
    """FSRVP_E_UNSUPPORTED_CONTEXT."""


class IdMismatch(FsrvpError):
    """FSRVP_E_SHADOWCOPYSET_ID_MISMATCH."""


class InvalidArg(FsrvpError):
    """E_INVALIDARG."""


class FsrvpAccessDenied(FsrvpError, AccessDeniedError):
    """E_ACCESSDENIED: the caller is not an administrator / backup operator."""

    exit_code = EXIT_AUTH


class FsrvpTimeout(FsrvpError):
    """FSSAGENT_E_TIMEOUT (Commit) or FSRVP_E_WAIT_TIMEOUT (Prepare, Expose)."""

    exit_code = EXIT_TIMEOUT


class VersionMismatch(ClientError):
    """GetSupportedVersion offers no version this client speaks (MinVersion > 1)."""


class NoSuchSet(FsrvpError):
    """Marker: the code is one a server uses for an unknown set (or shadow copy) id."""

    exit_code = EXIT_NOT_FOUND


_BY_CODE: dict[int, type[FsrvpError]] = {
    HResult.FSRVP_E_BAD_STATE: BadState,
    HResult.VSS_E_INVALID_XML_DOCUMENT: BadState,
    HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS: InProgress,
    HResult.FSRVP_E_NOT_SUPPORTED: NotSupported,
    HResult.FSRVP_E_OBJECT_NOT_FOUND: ObjectNotFound,
    HResult.FSRVP_E_OBJECT_ALREADY_EXISTS: ObjectAlreadyExists,
    HResult.FSRVP_E_UNSUPPORTED_CONTEXT: UnsupportedContext,
    HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH: IdMismatch,
    HResult.E_INVALIDARG: InvalidArg,
    HResult.E_ACCESSDENIED: FsrvpAccessDenied,
    HResult.FSSAGENT_E_TIMEOUT: FsrvpTimeout,
    HResult.FSRVP_E_WAIT_TIMEOUT: FsrvpTimeout,
}

#: Calls whose request names a shadow copy set.
_SET_CALLS = frozenset(
    {
        Opnum.ADD_TO_SHADOW_COPY_SET,
        Opnum.COMMIT_SHADOW_COPY_SET,
        Opnum.EXPOSE_SHADOW_COPY_SET,
        Opnum.RECOVERY_COMPLETE_SHADOW_COPY_SET,
        Opnum.ABORT_SHADOW_COPY_SET,
        Opnum.GET_SHARE_MAPPING,
        Opnum.DELETE_SHARE_MAPPING,
        Opnum.PREPARE_SHADOW_COPY_SET,
    }
)
_NO_SUCH_SET_CODES = frozenset(
    {
        HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH,
        HResult.E_INVALIDARG,
        HResult.FSRVP_E_OBJECT_NOT_FOUND,
    }
)
_BAD_STATE_MEANS_STATE = frozenset({Opnum.GET_SHARE_MAPPING, Opnum.DELETE_SHARE_MAPPING})
_COMBINED: dict[type[FsrvpError], type[FsrvpError]] = {}


def _no_such_set_class(base: type[FsrvpError]) -> type[FsrvpError]:
    cls = _COMBINED.get(base)
    if cls is None:
        cls = type(f"NoSuchSet{base.__name__}", (base, NoSuchSet), {"exit_code": EXIT_NOT_FOUND})
        cls.__module__ = __name__
        _COMBINED[base] = cls
    return cls


def fsrvp_error(opnum: int, code: int, detail: str = "") -> FsrvpError:
    """The typed exception for ``code`` returned by ``opnum`` (see the module docstring)."""
    # Here, not at the top: fsrvp.calls loads impacket, which the command line
    # must not pay for before it connects (by now a call was made, so it is loaded).
    from remotevss.fsrvp.calls import OPNUM_NAMES

    code &= 0xFFFFFFFF
    cls = _BY_CODE.get(code, FsrvpError)
    if opnum in _SET_CALLS and (
        code in _NO_SUCH_SET_CODES
        or (code == HResult.FSRVP_E_BAD_STATE and opnum not in _BAD_STATE_MEANS_STATE)
    ):
        cls = _no_such_set_class(cls)
    return cls(code, hresult_name(code), OPNUM_NAMES.get(opnum, f"opnum {opnum}"), detail)
