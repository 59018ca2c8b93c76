"""Server side of one connection-oriented DCE/RPC connection, sans I/O (C706 ch. 12, MS-RPCE 3.3).

Rules of this module:

- No I/O and no clock.  Bytes come in through :meth:`ServerConnection.receive_data`,
  PDUs to send come out of :meth:`ServerConnection.pdus_to_send`; the transport
  decides when and how to move them (one PDU per message on message-mode pipes).
- It knows DCE/RPC, not the application: which interfaces exist, not what their
  opnums mean, not NDR (stubs pass through untouched, verification trailer
  included, once checked against the call), not who the caller is (that comes
  from the transport; the engine only vouches for ``Request.auth_level``).
- A peer's bytes never raise.  Every malformed input ends as a queued fault or
  bind_nak and/or ``closed``; an exception escaping ``receive_data`` is our bug.
- Memory is bounded by configuration: the input buffer keeps less than one
  fragment (a header announcing more than the receive limit is refused before its
  body arrives), reassembly keeps at most ``max_request_stub`` bytes, and the
  context table at most ``MAX_CONTEXTS`` entries.
- Engines share nothing but the :class:`AssocGroupAllocator` they are given.

Theory of operation: ``receive_data`` frames PDUs out of the byte stream, checks
each header as soon as its bytes are there, and hands whole PDUs to one handler
per PTYPE.  Association set-up (bind, alter_context) and errors are answered by
queuing PDUs; request fragments are reassembled and each complete call is
returned as a :class:`Request` for the application, which answers it with
:meth:`respond` or :meth:`fault` in any order.

Decisions where C706/MS-RPCE leave a choice (tests pin each one):

===================================  =====================================================
situation                            what the engine does
===================================  =====================================================
client max frag < 1432               raised to 1432 (C706 must_recv_frag_size), no nak
frag sizes                           ours = max(1432, min(our limit, client's)) each way
bind with assoc_group 0              new group from the shared allocator
bind with a known assoc_group        joined
bind with an unknown assoc_group     bind_nak reason_not_specified (Samba), then close
NDR64 / unknown transfer syntax      that context rejected (reason 2); others still served
unknown interface or version         that context rejected (reason 1)
bind-time feature negotiation        negotiate_ack, acking keep-connection-on-orphan only
no context acceptable                bind_ack with all rejections (Samba), still bound
second bind                          bind_nak reason_not_specified (Samba), then close
any bind_nak                         close: no association exists, the client re-connects
bind with an auth verifier           ``security`` hook decides; default: bind_nak
                                     authentication_type_not_recognized, then close
non-LE / EBCDIC / non-IEEE drep      bind: bind_nak user_data_not_readable, close;
                                     request: fault nca_s_fault_ndr, connection stays;
                                     alter_context: protocol error
request alloc_hint                   ignored (never used to size anything)
request stub > max_request_stub      fault nca_s_fault_remote_no_memory, then close
response fragments                   stub bytes per fragment a multiple of 16 (room for
                                     sign/seal padding later); alloc_hint = stub left
request on a context not accepted    fault nca_s_unk_if (did-not-execute), stays open
verification trailer disagrees       fault access_denied (did-not-execute), stays open
                                     (Samba's rule; vtrailer.py)
protocol error                       fault nca_s_proto_error (bind_nak if the PDU is a
                                     bind: reason 4 for a bad version, else 0), close
co_cancel / orphaned                 drop the call being reassembled and its remaining
                                     fragments; orphaned also discards the reply of a
                                     call already handed out; never close
PFC_MAYBE request                    handed out; its reply (or fault) is discarded
shutdown (a server's PDU)            ignored
requests before a fatal error        in the same ``receive_data`` chunk: still returned
===================================  =====================================================
"""

from __future__ import annotations

import secrets
import threading
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from remotevss.dcerpc import pdu, vtrailer
from remotevss.dcerpc.pdu import AuthVerifier, Header, PduError

MAX_CONTEXTS = 256
#: What we ack in bind-time feature negotiation: we never close on orphaned.
SUPPORTED_BIND_TIME_FEATURES = pdu.BIND_TIME_KEEP_CONNECTION_ON_ORPHAN
#: Statuses that mean the call never ran (sets PFC_DID_NOT_EXECUTE on the fault).  Not
#: remote_no_memory: the agent also sends it for a handler that failed half-way.
NOT_EXECUTED_STATUSES = frozenset(
    {
        pdu.NCA_S_OP_RNG_ERROR,
        pdu.NCA_S_UNK_IF,
        pdu.NCA_S_PROTO_ERROR,
        pdu.NCA_S_FAULT_NDR,
        pdu.NCA_S_UNSUPPORTED_TYPE,
        pdu.NCA_S_INVALID_PRES_CONTEXT_ID,
    }
)
# PTYPEs a server may receive; anything else is a protocol error as soon as byte 2 arrives.
_RECEIVABLE = frozenset(
    {
        pdu.PTYPE_REQUEST,
        pdu.PTYPE_BIND,
        pdu.PTYPE_ALTER_CONTEXT,
        pdu.PTYPE_AUTH3,
        pdu.PTYPE_SHUTDOWN,
        pdu.PTYPE_CO_CANCEL,
        pdu.PTYPE_ORPHANED,
    }
)
_FIRST, _LAST, _MAYBE = pdu.PFC_FIRST_FRAG, pdu.PFC_LAST_FRAG, pdu.PFC_MAYBE


@dataclass(frozen=True)
class Interface:
    """An abstract syntax we serve; a bind matches on major and minor <= ours."""

    uuid: uuid.UUID
    version: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Request:
    """One complete (reassembled) call for the application."""

    call_id: int
    context_id: int
    opnum: int
    stub: bytes
    interface: Interface
    object_uuid: uuid.UUID | None
    auth_level: int


# ------------------------------------------------------------- assoc groups


class AssocGroup:
    """One association group: alive while a connection that made or joined it is."""

    __slots__ = ("id", "__weakref__")

    def __init__(self, group_id: int) -> None:
        self.id = group_id


def _random_ids() -> Iterator[int]:
    while True:  # unguessable, so a client cannot join a group it was not told about
        yield secrets.randbits(32)


class AssocGroupAllocator:
    """Association group ids shared by the connections of one endpoint.

    Thread-safe (a lock guards allocation and lookup).  Groups are held weakly: a
    group disappears when the last connection referring to it is closed or
    garbage-collected, so transports need no release call.  ``ids`` makes
    allocation deterministic in tests.
    """

    def __init__(self, ids: Iterator[int] | None = None) -> None:
        self._groups: weakref.WeakValueDictionary[int, AssocGroup] = weakref.WeakValueDictionary()
        self._ids = ids if ids is not None else _random_ids()
        self._lock = threading.Lock()

    def new(self) -> AssocGroup | None:
        """A fresh group, or None if no free id was found (the bind is then refused)."""
        with self._lock:
            for _ in range(64):
                try:
                    candidate = next(self._ids) & 0xFFFFFFFF
                except StopIteration:
                    return None
                if candidate and candidate not in self._groups:
                    group = AssocGroup(candidate)
                    self._groups[candidate] = group
                    return group
        return None

    def join(self, group_id: int) -> AssocGroup | None:
        with self._lock:
            return self._groups.get(group_id)

    def __contains__(self, group_id: object) -> bool:
        with self._lock:
            return group_id in self._groups

    def __len__(self) -> int:
        with self._lock:
            return len(self._groups)


# ----------------------------------------------------------------- security


class AuthError(Exception):
    """A security provider refused a verifier (or its absence)."""

    def __init__(
        self,
        message: str,
        *,
        nak_reason: int = pdu.BIND_NAK_AUTH_TYPE_NOT_RECOGNIZED,
        status: int = pdu.NCA_S_FAULT_ACCESS_DENIED,
    ) -> None:
        super().__init__(message)
        self.nak_reason = nak_reason
        self.status = status


class Security(Protocol):
    """The hook NTLM/Kerberos will fill: it sees every auth verifier, one instance per connection.

    Each method raises :class:`AuthError` to refuse.  ``bind``/``alter_context``
    return the verifier for the bind_ack/alter_context_resp (None for none).
    ``request`` checks one request fragment and returns its stub (unsealed);
    ``protect`` signs or seals one response fragment, which ``overhead`` bytes
    of padding, sec_trailer and signature may grow.  ``pending`` tells the
    transport that the next PDU may need a credential check (slow, off-loop).
    """

    @property
    def auth_level(self) -> int: ...

    @property
    def overhead(self) -> int: ...

    @property
    def pending(self) -> bool: ...

    @property
    def identity(self) -> tuple[str, str] | None:
        """(domain, account) authenticated at the RPC level, if any (Kerberos: realm, user)."""
        ...

    @property
    def user(self) -> str:
        """Who authenticated at the RPC level: ``DOMAIN\\account`` or ``user@REALM``."""
        ...

    def protect(self, fragment: bytes) -> bytes: ...

    def close(self) -> None: ...

    def bind(
        self, verifier: AuthVerifier | None, header_signing: bool = False
    ) -> AuthVerifier | None:
        """``header_signing``: the bind offered PFC_SUPPORT_HEADER_SIGN (echoed in the
        ack): Kerberos then protects the PDU header and sec_trailer too."""
        ...

    def alter_context(self, verifier: AuthVerifier | None) -> AuthVerifier | None: ...

    def auth3(self, verifier: AuthVerifier | None) -> None: ...

    def request(
        self, raw: bytes, header: Header, stub: bytes, verifier: AuthVerifier | None
    ) -> bytes: ...


class NoSecurity:
    """RPC_C_AUTHN_LEVEL_NONE: refuses every verifier (the transport vouches for the caller)."""

    auth_level = pdu.RPC_C_AUTHN_LEVEL_NONE
    overhead = 0
    pending = False
    identity = None
    user = ""

    def protect(self, fragment: bytes) -> bytes:
        return fragment

    def close(self) -> None:
        pass

    def bind(
        self, verifier: AuthVerifier | None, header_signing: bool = False
    ) -> AuthVerifier | None:
        if verifier is not None:
            raise AuthError(f"auth type {verifier.auth_type} not supported")
        return None

    def alter_context(self, verifier: AuthVerifier | None) -> AuthVerifier | None:
        return self.bind(verifier)

    def auth3(self, verifier: AuthVerifier | None) -> None:
        raise AuthError("auth3 without a security context")

    def request(
        self, raw: bytes, header: Header, stub: bytes, verifier: AuthVerifier | None
    ) -> bytes:
        if verifier is not None:
            raise AuthError("request verifier without a security context")
        return stub


# --------------------------------------------------------------- connection


class _Partial:
    """A request being reassembled."""

    __slots__ = (
        "call_id", "context_id", "opnum", "object_uuid", "flags", "chunks", "size", "ok", "drep",
    )  # fmt: skip

    def __init__(
        self, call_id: int, r: pdu.RequestPdu, flags: int, drep_ok: bool, drep: bytes
    ) -> None:
        self.drep = drep
        self.call_id = call_id
        self.context_id = r.context_id
        self.opnum = r.opnum
        self.object_uuid = r.object_uuid
        self.flags = flags
        self.chunks = [r.stub]
        self.size = len(r.stub)
        self.ok = drep_ok


class ServerConnection:
    """One client connection's DCE/RPC state; see the module docstring for the rules."""

    def __init__(
        self,
        interfaces: Sequence[Interface],
        *,
        assoc_groups: AssocGroupAllocator | None = None,
        max_recv_frag: int = 5840,
        max_xmit_frag: int = 5840,
        max_request_stub: int = 1 << 20,
        secondary_address: str = "",
        security: Security | None = None,
    ) -> None:
        for name, value in (("max_recv_frag", max_recv_frag), ("max_xmit_frag", max_xmit_frag)):
            if not pdu.MUST_RECV_FRAG_SIZE <= value <= pdu.MAX_FRAG_SIZE:
                raise ValueError(f"{name} must be within 1432..65535, not {value}")
        if max_request_stub < 0:
            raise ValueError("max_request_stub must not be negative")
        self._interfaces: dict[uuid.UUID, list[Interface]] = {}
        for iface in interfaces:
            self._interfaces.setdefault(iface.uuid, []).append(iface)
        self._allocator = assoc_groups if assoc_groups is not None else AssocGroupAllocator()
        self._max_recv = max_recv_frag
        self._max_xmit = max_xmit_frag
        self._max_stub = max_request_stub
        self._secondary = secondary_address.encode("ascii")
        self._security: Security = security if security is not None else NoSecurity()

        self._buf = bytearray()
        self._out: list[bytes] = []
        self._closed = False
        self._close_reason: str | None = None
        self._bound = False
        self._minor = pdu.RPC_VERS_MINOR
        self._recv = max_recv_frag  # frag_length limit; negotiated at bind
        self._xmit = max_xmit_frag
        self._group: AssocGroup | None = None
        self._contexts: dict[int, Interface] = {}
        self._syntaxes: dict[int, pdu.SyntaxId] = {}  # the abstract syntax each context bound
        self._header_signing = False  # the bind offered PFC_SUPPORT_HEADER_SIGN
        self._partial: _Partial | None = None
        self._dropped: int | None = None  # call whose remaining fragments we swallow
        self._outstanding: set[int] = set()  # handed out, not yet answered
        self._discard: set[int] = set()  # handed out, answer must not be sent

    # ------------------------------------------------------------ public

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def bound(self) -> bool:
        return self._bound

    @property
    def assoc_group_id(self) -> int | None:
        return self._group.id if self._group is not None else None

    @property
    def xmit_frag(self) -> int:
        """Largest fragment we send (negotiated at bind)."""
        return self._xmit

    @property
    def recv_frag(self) -> int:
        """Largest fragment we accept (negotiated at bind)."""
        return self._recv

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete PDU waiting for more input."""
        return len(self._buf)

    @property
    def security(self) -> Security:
        return self._security

    def close(self, reason: str = "closed by the application") -> None:
        """Stop processing input and release the association group (queued PDUs stay)."""
        if not self._closed:
            self._closed = True
            self._close_reason = reason
        self._buf = bytearray()
        self._partial = None
        self._group = None

    def receive_data(self, data: bytes) -> list[Request]:
        """Feed bytes from the peer; return the calls that became complete."""
        if self._closed or not data:
            return []
        if self._buf:
            self._buf += data
            view: bytes | bytearray = self._buf
        else:
            view = data
        requests: list[Request] = []
        off = 0
        end = len(view)
        while off < end and not self._closed:
            avail = end - off
            error = self._check_prefix(view, off, avail)
            if error is not None:
                self._frame_error(view, off, avail, *error)
                break
            if avail < pdu.COMMON_HEADER_LEN:
                break
            hdr = pdu.parse_header(view, off)
            if avail < hdr.frag_length:
                break
            raw = bytes(view[off : off + hdr.frag_length])
            off += hdr.frag_length
            request = self._dispatch(raw, hdr)
            if request is not None:
                requests.append(request)
        if self._closed:
            self._buf = bytearray()
        elif off:
            self._buf = bytearray(view[off:])
        elif view is data:
            self._buf = bytearray(data)
        return requests

    def pdus_to_send(self) -> list[bytes]:
        """Drain the queued PDUs, one bytes object per PDU."""
        out, self._out = self._out, []
        return out

    def respond(self, request: Request, stub: bytes) -> None:
        """Queue the response to ``request``, fragmented to the negotiated size."""
        if self._closed or self._silenced(request.call_id):
            return
        sec = self._security
        frags = pdu.fragment_response(
            request.call_id, request.context_id, stub, self._xmit,
            minor=self._minor, reserve=sec.overhead,
        )  # fmt: skip
        self._out.extend(map(sec.protect, frags) if sec.overhead else frags)

    def fault(self, request: Request, status: int, *, did_not_execute: bool | None = None) -> None:
        """Queue a fault for ``request``; did-not-execute defaults from the status."""
        if self._closed or self._silenced(request.call_id):
            return
        if did_not_execute is None:
            did_not_execute = status in NOT_EXECUTED_STATUSES
        self._queue_fault(request.call_id, request.context_id, status, did_not_execute)

    # ----------------------------------------------------------- framing

    def _check_prefix(
        self, view: bytes | bytearray, off: int, avail: int
    ) -> tuple[str, int] | None:
        """Reject a header from its first bytes: garbage must not wait for a frag_length."""
        if view[off] != pdu.RPC_VERS or (avail > 1 and view[off + 1] > 1):
            return "unsupported RPC version", pdu.BIND_NAK_PROTOCOL_VERSION_NOT_SUPPORTED
        if avail > 2 and view[off + 2] not in _RECEIVABLE:
            return f"unexpected PTYPE {view[off + 2]}", pdu.BIND_NAK_REASON_NOT_SPECIFIED
        if avail >= 10:
            if view[off + 4] & pdu.DREP_INT_LITTLE_ENDIAN:
                length = view[off + 8] | view[off + 9] << 8
            else:
                length = view[off + 8] << 8 | view[off + 9]
            if length < pdu.COMMON_HEADER_LEN:
                return (
                    f"frag_length {length} below the header size",
                    pdu.BIND_NAK_REASON_NOT_SPECIFIED,
                )
            if length > self._recv:
                return (
                    f"frag_length {length} above the limit {self._recv}",
                    pdu.BIND_NAK_REASON_NOT_SPECIFIED,
                )
        return None

    def _frame_error(
        self, view: bytes | bytearray, off: int, avail: int, message: str, nak_reason: int
    ) -> None:
        call_id = 0
        if avail >= pdu.COMMON_HEADER_LEN:
            call_id = pdu.parse_header(view, off).call_id
        if avail > 2 and view[off + 2] == pdu.PTYPE_BIND:
            self._nak(call_id, nak_reason, message)
        else:
            self._protocol_error(call_id, message)

    def _dispatch(self, raw: bytes, hdr: Header) -> Request | None:
        ptype = hdr.ptype
        if ptype == pdu.PTYPE_REQUEST:
            return self._on_request(raw, hdr)
        if ptype == pdu.PTYPE_BIND:
            self._on_bind(raw, hdr)
        elif ptype == pdu.PTYPE_ALTER_CONTEXT:
            self._on_alter_context(raw, hdr)
        elif ptype == pdu.PTYPE_AUTH3:
            self._on_auth3(raw, hdr)
        elif ptype in (pdu.PTYPE_CO_CANCEL, pdu.PTYPE_ORPHANED):
            self._on_cancel(hdr)
        # PTYPE_SHUTDOWN: a server's PDU; nothing to do if a client sends it.
        return None

    # ----------------------------------------------------- association

    def _on_bind(self, raw: bytes, hdr: Header) -> None:
        cid = hdr.call_id
        if self._bound:
            return self._nak(cid, pdu.BIND_NAK_REASON_NOT_SPECIFIED, "second bind")
        if hdr.drep[:2] != pdu.DREP_LE[:2]:
            return self._nak(cid, pdu.BIND_NAK_USER_DATA_NOT_READABLE, f"drep {hdr.drep.hex()}")
        try:
            bind = pdu.parse_bind(raw, hdr)
        except PduError as exc:
            return self._nak(cid, pdu.BIND_NAK_REASON_NOT_SPECIFIED, f"bad bind: {exc}")
        if not bind.contexts:
            return self._nak(cid, pdu.BIND_NAK_REASON_NOT_SPECIFIED, "bind without contexts")
        try:
            reply_auth = self._security.bind(
                bind.auth, bool(hdr.pfc_flags & pdu.PFC_SUPPORT_HEADER_SIGN)
            )
        except AuthError as exc:
            return self._nak(cid, exc.nak_reason, f"bind refused: {exc}")
        if bind.assoc_group_id:
            group = self._allocator.join(bind.assoc_group_id)
            if group is None:
                return self._nak(
                    cid,
                    pdu.BIND_NAK_REASON_NOT_SPECIFIED,
                    f"unknown association group {bind.assoc_group_id:#x}",
                )
        else:
            group = self._allocator.new()
            if group is None:
                return self._nak(cid, pdu.BIND_NAK_LOCAL_LIMIT_EXCEEDED, "no free group id")
        results = self._negotiate(bind.contexts, at_bind=True)
        if results is None:
            return self._nak(cid, pdu.BIND_NAK_REASON_NOT_SPECIFIED, "inconsistent contexts")
        floor = pdu.MUST_RECV_FRAG_SIZE
        self._xmit = max(floor, min(self._max_xmit, bind.max_recv_frag))
        self._recv = max(floor, min(self._max_recv, bind.max_xmit_frag))
        self._minor = hdr.rpc_vers_minor
        self._group = group
        self._bound = True
        self._header_signing = bool(hdr.pfc_flags & pdu.PFC_SUPPORT_HEADER_SIGN)
        self._out.append(
            pdu.encode_bind_ack(
                cid,
                max_xmit_frag=self._xmit,
                max_recv_frag=self._recv,
                assoc_group_id=group.id,
                secondary_address=self._secondary,
                results=results,
                auth=reply_auth,
                minor=self._minor,
                flags=_ack_flags(hdr.pfc_flags, reply_auth),
            )
        )

    def _on_alter_context(self, raw: bytes, hdr: Header) -> None:
        cid = hdr.call_id
        if not self._bound:
            return self._protocol_error(cid, "alter_context before bind")
        if hdr.drep[:2] != pdu.DREP_LE[:2]:
            return self._protocol_error(cid, f"alter_context drep {hdr.drep.hex()}")
        try:
            alter = pdu.parse_bind(raw, hdr)
        except PduError as exc:
            return self._protocol_error(cid, f"bad alter_context: {exc}")
        if not alter.contexts:
            return self._protocol_error(cid, "alter_context without contexts")
        try:
            reply_auth = self._security.alter_context(alter.auth)
        except AuthError as exc:
            return self._fatal_fault(cid, 0, exc.status, f"alter_context refused: {exc}")
        results = self._negotiate(alter.contexts, at_bind=False)
        if results is None:
            return self._protocol_error(cid, "alter_context changes an accepted context")
        assert self._group is not None  # bound implies a group
        self._out.append(
            pdu.encode_alter_context_resp(
                cid,
                max_xmit_frag=self._xmit,
                max_recv_frag=self._recv,
                assoc_group_id=self._group.id,
                secondary_address=b"",
                results=results,
                auth=reply_auth,
                minor=self._minor,
            )
        )

    def _negotiate(
        self, items: Sequence[pdu.ContextElem], *, at_bind: bool
    ) -> list[pdu.ContextResult] | None:
        """One result per item; None if an item is malformed or redefines a context."""
        results: list[pdu.ContextResult] = []
        added: dict[int, Interface] = {}
        for item in items:
            if not item.transfer_syntaxes:
                return None
            features = pdu.bind_time_features(item.transfer_syntaxes[0])
            if at_bind and features is not None:
                results.append(
                    pdu.ContextResult(
                        pdu.RESULT_NEGOTIATE_ACK,
                        features & SUPPORTED_BIND_TIME_FEATURES,
                        pdu.NULL_SYNTAX,
                    )
                )
                continue
            iface = self._lookup(item.abstract_syntax)
            if iface is None:
                results.append(_reject(pdu.REASON_ABSTRACT_SYNTAX_NOT_SUPPORTED))
                continue
            if pdu.NDR20 not in item.transfer_syntaxes:
                results.append(_reject(pdu.REASON_TRANSFER_SYNTAXES_NOT_SUPPORTED))
                continue
            existing = self._contexts.get(item.context_id) or added.get(item.context_id)
            if existing is None:
                if len(self._contexts) + len(added) >= MAX_CONTEXTS:
                    results.append(_reject(pdu.REASON_LOCAL_LIMIT_EXCEEDED))
                    continue
                added[item.context_id] = iface
                self._syntaxes[item.context_id] = item.abstract_syntax
            elif existing != iface:
                return None
            results.append(pdu.ContextResult(pdu.RESULT_ACCEPTANCE, 0, pdu.NDR20))
        self._contexts.update(added)
        return results

    def _lookup(self, syntax: pdu.SyntaxId) -> Interface | None:
        for iface in self._interfaces.get(syntax.uuid, ()):
            major, minor = iface.version
            if syntax.major == major and syntax.minor <= minor:
                return iface
        return None

    def _on_auth3(self, raw: bytes, hdr: Header) -> None:
        if not self._bound:
            return self._protocol_error(hdr.call_id, "auth3 before bind")
        try:
            auth = pdu.parse_control(raw, hdr).auth
        except PduError as exc:
            return self._protocol_error(hdr.call_id, f"bad auth3: {exc}")
        negotiating = self._security.pending
        try:
            self._security.auth3(auth)
        except AuthError as exc:
            if not negotiating:  # no authentication under way: a protocol violation
                self._fatal_fault(hdr.call_id, 0, exc.status, f"auth3 refused: {exc}")
            # else auth3 has no reply (MS-RPCE 3.3.1.5.2.1): as in Samba, the failure
            # surfaces as an access-denied fault on the next request.

    # --------------------------------------------------------- requests

    def _on_request(self, raw: bytes, hdr: Header) -> Request | None:
        cid = hdr.call_id
        if not self._bound:
            self._protocol_error(cid, "request before bind")
            return None
        try:
            frag = pdu.parse_request(raw, hdr)
        except PduError as exc:
            self._protocol_error(cid, f"bad request: {exc}")
            return None
        try:
            stub = self._security.request(raw, hdr, frag.stub, frag.auth)
        except AuthError as exc:
            self._fatal_fault(cid, frag.context_id, exc.status, f"request refused: {exc}")
            return None
        flags = hdr.pfc_flags
        if self._dropped is not None:
            if self._dropped == cid and not flags & _FIRST:
                if flags & _LAST:
                    self._dropped = None
                return None
            self._dropped = None
        drep_ok = hdr.drep[:2] == pdu.DREP_LE[:2]
        p = self._partial
        if p is None:
            if not flags & _FIRST:
                self._protocol_error(cid, "request fragment without a first fragment")
                return None
            if len(stub) > self._max_stub:
                self._too_big(cid, frag.context_id)
                return None
            if flags & _LAST:
                return self._complete(
                    cid, frag.context_id, frag.opnum, frag.object_uuid, stub, flags, drep_ok,
                    hdr.drep,
                )  # fmt: skip
            self._partial = _Partial(cid, frag._replace(stub=stub), flags, drep_ok, hdr.drep)
            return None
        if cid != p.call_id or flags & _FIRST:
            self._protocol_error(cid, f"call {cid} interleaved with call {p.call_id}")
            return None
        if frag.context_id != p.context_id or frag.opnum != p.opnum:
            self._protocol_error(cid, "context or opnum changed between fragments")
            return None
        p.size += len(stub)
        if p.size > self._max_stub:
            self._too_big(cid, p.context_id)
            return None
        p.chunks.append(stub)
        p.ok = p.ok and drep_ok
        if not flags & _LAST:
            return None
        self._partial = None
        return self._complete(
            cid, p.context_id, p.opnum, p.object_uuid, b"".join(p.chunks), p.flags, p.ok, p.drep
        )

    def _complete(
        self,
        call_id: int,
        context_id: int,
        opnum: int,
        object_uuid: uuid.UUID | None,
        stub: bytes,
        first_flags: int,
        drep_ok: bool,
        drep: bytes,
    ) -> Request | None:
        iface = self._contexts.get(context_id)
        if iface is None or not drep_ok:
            if not first_flags & _MAYBE:
                status = pdu.NCA_S_UNK_IF if iface is None else pdu.NCA_S_FAULT_NDR
                self._queue_fault(call_id, context_id, status, True)
            return None
        facts = vtrailer.CallFacts(
            call_id, context_id, opnum, drep, self._syntaxes[context_id], pdu.NDR20,
            self._header_signing,
        )  # fmt: skip
        if vtrailer.check(stub, facts) is not None:  # as Samba: access denied, stay open
            if not first_flags & _MAYBE:
                self._queue_fault(call_id, context_id, pdu.NCA_S_FAULT_ACCESS_DENIED, True)
            return None
        if first_flags & _MAYBE:
            self._discard.add(call_id)
        self._outstanding.add(call_id)
        return Request(
            call_id, context_id, opnum, stub, iface, object_uuid, self._security.auth_level
        )

    def _on_cancel(self, hdr: Header) -> None:
        cid = hdr.call_id
        p = self._partial
        if p is not None and p.call_id == cid:
            self._partial = None
            self._dropped = cid
        elif hdr.ptype == pdu.PTYPE_ORPHANED and cid in self._outstanding:
            self._discard.add(cid)

    def _silenced(self, call_id: int) -> bool:
        """Forget an answered call; True if its answer must not be sent."""
        self._outstanding.discard(call_id)
        if call_id in self._discard:
            self._discard.discard(call_id)
            return True
        return False

    def _too_big(self, call_id: int, context_id: int) -> None:
        self._fatal_fault(
            call_id,
            context_id,
            pdu.NCA_S_FAULT_REMOTE_NO_MEMORY,
            f"request stub above {self._max_stub} bytes",
        )

    # ----------------------------------------------------------- errors

    def _queue_fault(self, call_id: int, context_id: int, status: int, not_executed: bool) -> None:
        flags = pdu.PFC_FIRST_LAST | (pdu.PFC_DID_NOT_EXECUTE if not_executed else 0)
        self._out.append(
            pdu.encode_fault(call_id, context_id, status, flags=flags, minor=self._minor)
        )

    def _fatal_fault(self, call_id: int, context_id: int, status: int, reason: str) -> None:
        self._queue_fault(call_id, context_id, status, True)
        self.close(reason)

    def _protocol_error(self, call_id: int, reason: str) -> None:
        self._fatal_fault(call_id, 0, pdu.NCA_S_PROTO_ERROR, reason)

    def _nak(self, call_id: int, reason: int, message: str) -> None:
        self._out.append(pdu.encode_bind_nak(call_id, reason))
        self.close(message)


def _ack_flags(bind_flags: int, auth: AuthVerifier | None) -> int:
    """Echo PFC_SUPPORT_HEADER_SIGN when an authenticated bind offers it (MS-RPCE 3.3.1.5.2.2):
    NTLM signs the whole PDU, header included, in any case."""
    echo = pdu.PFC_SUPPORT_HEADER_SIGN if auth is not None else 0
    return pdu.PFC_FIRST_LAST | (bind_flags & echo)


def _reject(reason: int) -> pdu.ContextResult:
    return pdu.ContextResult(pdu.RESULT_PROVIDER_REJECTION, reason, pdu.NULL_SYNTAX)


__all__ = [
    "MAX_CONTEXTS",
    "NOT_EXECUTED_STATUSES",
    "SUPPORTED_BIND_TIME_FEATURES",
    "AssocGroup",
    "AssocGroupAllocator",
    "AuthError",
    "Interface",
    "NoSecurity",
    "Request",
    "Security",
    "ServerConnection",
]
