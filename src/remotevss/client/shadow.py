r"""The high-level client: MS-FSRVP's client sequence (MS-FSRVP 3.2) as an API.

Typical use -- a backup of two shares, released when the block ends::

    creds = Credentials("backup", password, "CORP")
    with ShadowCopySet("fs1", creds, context="backup") as s:
        s.add(r"\\fs1\data")
        s.add(r"\\fs1\home")
        s.commit()
        s.expose()
        for original, snapshot in s.mappings.items():
            copy_from(snapshot)          # \\fs1\data@{guid} ...
    # auto-release context: the shadow copies are deleted here

What each step sends (and why):

* first :meth:`ShadowCopySet.add`: connect to the UNC's host,
  IsPathSupported, then -- if OwnerMachineName is another machine -- close
  and reconnect to it (cluster redirection, MS-FSRVP 3.2.4.2.1), then
  GetSupportedVersion (we speak version 1), SetContext, StartShadowCopySet;
* every add: IsPathSupported (a clear NotSupported per share; the owner must
  be the same) and AddToShadowCopySet with ``\\host\share\``;
* :meth:`~ShadowCopySet.commit`: PrepareShadowCopySet (1,800,000 ms) once
  after the last add, CommitShadowCopySet (60,000 ms);
* :meth:`~ShadowCopySet.expose`: ExposeShadowCopySet (1,800,000 ms),
  GetShareMapping for each copy (the exposed name may be a bare
  ``share@{guid}`` or a UNC: both are accepted), then
  RecoveryCompleteShadowCopySet unless the set is writable (a writable set
  stays Exposed until :meth:`~ShadowCopySet.recovery_complete`);
* :meth:`~ShadowCopySet.delete`: GetSupportedVersion, then
  DeleteShareMapping for each copy (or just one).

Any failure before Exposed aborts the set (AbortShadowCopySet, on a fresh
connection if the old one broke); a failure after it deletes the exposed
copies; then the error is raised.  Server codes come back unchanged as typed
:class:`~remotevss.client.errors.FsrvpError` subclasses.

OwnerMachineName and NTLM coercion: the owner name comes from the server,
and connecting to it sends our credentials there.  Following it is the
spec's behaviour, so ``follow_owner=True`` is the default, with the name
resolved normally -- but no reconnect happens when the owner is a name of
the server we are already talking to (the name we dialled, its NetBIOS or
DNS name from the logon, or a name resolving to the address we are
connected to), so a stand-alone server (Samba answers its NetBIOS name)
never causes a second connection.  ``follow_owner=False`` pins the
connection to the host in the UNC.  A redirect is followed once; the owner
must then name itself.

Sets are recorded in a :class:`~remotevss.client.state.ClientState` when one
is given, so a later process can list, expose, recover or delete them.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from remotevss.client.connection import ConnectOptions, Credentials, FsrvpConnection
from remotevss.client.errors import (
    EXIT_FSRVP,
    AccessDeniedError,
    BadState,
    BadUnc,
    ClientError,
    FsrvpCallError,
    FsrvpConnectError,
    FsrvpError,
    NoSuchSet,
    NotSupported,
    OwnerRedirectError,
    UsageError,
    VersionMismatch,
    fsrvp_error,
)
from remotevss.client.rpc import (
    COMMIT_TIMEOUT_MS,
    EXPOSE_TIMEOUT_MS,
    PREPARE_TIMEOUT_MS,
)
from remotevss.client.state import ClientState, CopyRecord, CopyStatus, SetRecord, SetStatus
from remotevss.client.unc import ServerForm, Unc, classify_host, parse_unc, snapshot_share, unc_text
from remotevss.fsrvp import calls, contexts, filetime
from remotevss.fsrvp.constants import FSRVP_RPC_VERSION_1, Attr, HResult, Opnum
from remotevss.fsrvp.contexts import display_name as context_name

log = logging.getLogger(__name__)

#: Context names as DiskShadow-like commands take them (hyphenated; the
#: underscored spelling is accepted too: remotevss.fsrvp.contexts).
CONTEXTS: dict[str, int] = contexts.BY_NAME
CLIENT_VERSION = FSRVP_RPC_VERSION_1

_BEFORE_EXPOSE = (SetStatus.STARTED, SetStatus.ADDED, SetStatus.COMMITTED)
_EXPOSED = (SetStatus.EXPOSED, SetStatus.RECOVERED)
_NOTHING_ON_SERVER = (SetStatus.NEW, SetStatus.ABORTED, SetStatus.DELETED)
#: The note of a set the server recovered by itself (the table said exposed).
RECOVERED_BY_SERVER = "recovered by the server"


def context_value(context: str | int, writable: bool = False) -> int:
    """A SetContext value: a context name or number, plus ATTR_AUTO_RECOVERY if writable."""
    if isinstance(context, str):
        named = contexts.context_from_name(context)
        if named is None:
            raise UsageError(f"unknown context {context!r}; use one of {', '.join(contexts.NAMES)}")
        value = named
    else:
        value = int(context)
    if writable:
        value |= Attr.ATTR_AUTO_RECOVERY
    return value


def is_auto_release(context: int) -> bool:
    """Auto-release contexts (backup, file-share-backup) belong to one backup session."""
    return not context & Attr.ATTR_NO_AUTO_RELEASE


class Binding(Protocol):
    """What the sequence needs from a connection (FsrvpConnection; fakes in tests)."""

    host: str

    def checked(self, request: calls.Request, detail: str = "") -> calls.Response: ...

    def names(self) -> set[str]: ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...


Connector = Callable[[str, Credentials, ConnectOptions], Binding]


def _default_connector(host: str, creds: Credentials, options: ConnectOptions) -> Binding:
    return FsrvpConnection(host, creds, options)


def _local_error(opnum: int, code: int, detail: str) -> FsrvpError:
    """An FSRVP code the client itself returns (MS-FSRVP 3.2.4 local checks)."""
    err = fsrvp_error(opnum, code, detail)
    err.call += " (client check)"
    return err


@dataclass
class ShadowCopy:
    """One shadow copy of one share, as the client knows it."""

    copy_id: UUID
    set_id: UUID
    server: str
    share_unc: str  # as sent: \\host\share\
    exposed_name: str | None = None  # ShadowCopyShareName as returned
    exposed_unc: str | None = None  # \\host\share@{guid}
    creation_filetime: int | None = None
    status: CopyStatus = CopyStatus.OK

    @property
    def creation_time(self) -> datetime | None:
        return filetime.to_datetime(self.creation_filetime)

    @property
    def share_display(self) -> str:
        return self.share_unc.rstrip("\\")

    def record(self) -> CopyRecord:
        return CopyRecord(
            self.copy_id,
            self.set_id,
            self.server,
            self.share_unc,
            self.exposed_name,
            self.exposed_unc,
            self.creation_filetime,
            self.status,
        )

    @classmethod
    def from_record(cls, r: CopyRecord) -> ShadowCopy:
        return cls(
            r.copy_id,
            r.set_id,
            r.server,
            r.share_unc,
            r.exposed_name,
            r.exposed_unc,
            r.creation_time,
            r.status,
        )


@dataclass
class DeleteOutcome:
    copy: ShadowCopy
    deleted: bool  # False: the server no longer knew it ("already gone")
    detail: str = ""


@dataclass
class SequenceOptions:
    """Per-set knobs of the sequence (the connection's are ConnectOptions)."""

    follow_owner: bool = True
    resolve: bool = False  # forward DNS to tell an address and a name of one server apart
    prepare_timeout_ms: int = PREPARE_TIMEOUT_MS
    commit_timeout_ms: int = COMMIT_TIMEOUT_MS
    expose_timeout_ms: int = EXPOSE_TIMEOUT_MS


def _addresses(host: str) -> set[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {str(i[4][0]).split("%", 1)[0] for i in infos}


class ShadowCopySet:
    """One FSRVP shadow copy set on one server (see the module docstring).

    ``server`` may be omitted: the first share's host is used.  ``keep``
    decides what leaving a ``with`` block does to an exposed set: None (the
    default) deletes the copies of auto-release contexts (backup,
    file-share-backup) and keeps persistent ones; True keeps, False deletes.
    On an exception the set is always aborted or deleted.
    """

    def __init__(
        self,
        server: str | None = None,
        credentials: Credentials | None = None,
        *,
        context: str | int = "backup",
        writable: bool = False,
        options: ConnectOptions | None = None,
        follow_owner: bool = True,
        resolve: bool = False,
        state: ClientState | None = None,
        keep: bool | None = None,
        connector: Connector | None = None,
        client_set_id: UUID | None = None,
        timeouts: SequenceOptions | None = None,
    ) -> None:
        self.server: str | None = classify_host(server)[0] if server else None
        self.credentials = credentials or Credentials()
        self.options = options or ConnectOptions()
        self.context = context_value(context, writable)
        self.writable = bool(self.context & Attr.ATTR_AUTO_RECOVERY)
        self.settings = replace(
            timeouts or SequenceOptions(), follow_owner=follow_owner, resolve=resolve
        )
        self.state = state
        self.keep = keep
        self.client_set_id = client_set_id or uuid.uuid4()
        self.set_id: UUID | None = None
        self.owner: str | None = None  # the host we talk to (after redirection)
        self.status = SetStatus.NEW
        self.copies: list[ShadowCopy] = []
        self.created = time.time()
        self._connector: Connector = connector or _default_connector
        self._conn: Binding | None = None
        self._form: ServerForm | None = None
        self._prepared = False
        #: What abort() or expose() found the server had made of the set when that was
        #: more than the table said (a client killed between an answer and the table's
        #: update): COMMITTED or EXPOSED.  abort() then exposed and deleted the set,
        #: expose() carried on from Exposed.
        self.found_ahead: SetStatus | None = None

    # ------------------------------------------------------------- views
    @property
    def mappings(self) -> dict[str, str]:
        r"""Original share -> exposed snapshot share, both ``\\host\share`` (after expose)."""
        return {c.share_display: c.exposed_unc for c in self.copies if c.exposed_unc}

    @property
    def auto_release(self) -> bool:
        return is_auto_release(self.context)

    def __repr__(self) -> str:
        return (
            f"<ShadowCopySet {self.set_id} on {self.server} ({context_name(self.context)}, "
            f"{self.status}, {len(self.copies)} copies)>"
        )

    # ------------------------------------------------------------- connection
    def _connect(self, host: str) -> Binding:
        return self._connector(host, self.credentials, self.options)

    def _binding(self) -> Binding:
        """The open binding to the set's owner, reconnecting if it was closed."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect(self.owner or self._require_server())
        return self._conn

    def _require_server(self) -> str:
        if self.server is None:
            raise UsageError("no server: give one or add a share first")
        return self.server

    def close(self) -> None:
        """Close the connection (the set itself is left as it is)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------- owner
    def _same_server(self, conn: Binding, name: str) -> bool:
        if name in conn.names():
            return True
        peer = getattr(conn, "peer_address", None)
        return bool(peer) and peer in _addresses(name)

    def _follow_owner(self, conn: Binding, unc: Unc, owner: str | None) -> Binding:
        """Step 1.3 of the spec's sequence: reconnect to OwnerMachineName if it differs."""
        if not owner:
            return conn
        try:
            name, _ = classify_host(owner)
        except BadUnc as exc:
            raise OwnerRedirectError(
                conn.host, f"server named an invalid owner machine {owner!r}: {exc.reason}"
            ) from None
        if self._same_server(conn, name):
            return conn
        if not self.settings.follow_owner:
            log.warning(
                "%s says %s is owned by %s; staying on %s (follow_owner is off)",
                conn.host,
                unc.display,
                owner,
                conn.host,
            )
            return conn
        log.info("%s: %s is owned by %s; reconnecting there", conn.host, unc.display, owner)
        conn.close()
        try:
            target = self._connect(name)
        except FsrvpConnectError as exc:
            raise OwnerRedirectError(
                name,
                f"cannot reach owner machine {owner!r} named by {conn.host} for "
                f"{unc.display} ({exc}); use follow_owner=False / --no-follow-owner "
                "to stay on the first server",
            ) from exc
        try:
            again = target.checked(calls.IsPathSupportedRequest(unc.wire), unc.display)
            assert isinstance(again, calls.IsPathSupportedResponse)
            if again.owner_machine_name:
                try:
                    second, _ = classify_host(again.owner_machine_name)
                except BadUnc as exc:
                    raise OwnerRedirectError(
                        name, f"owner named an invalid machine: {exc}"
                    ) from None
                if not self._same_server(target, second):
                    raise OwnerRedirectError(
                        name,
                        f"owner {owner!r} redirects again to {again.owner_machine_name!r}; "
                        "not following a second redirect",
                    )
        except BaseException:
            target.close()
            raise
        return target

    # ------------------------------------------------------------- steps
    def _adopt(self, unc: str | Unc) -> Unc:
        u = parse_unc(unc) if isinstance(unc, str) else unc
        if self._form is None:
            if self.server is not None and self.server != u.host:
                first = Unc(self.server, u.share, classify_host(self.server)[1])
                self._form = ServerForm(first, resolve=self.settings.resolve)
            else:
                self._form = ServerForm(u, resolve=self.settings.resolve)
                self.server = u.host
        return self._form.adopt(u)

    def _is_path_supported(self, conn: Binding, u: Unc) -> calls.IsPathSupportedResponse:
        resp = conn.checked(calls.IsPathSupportedRequest(u.wire), u.display)
        assert isinstance(resp, calls.IsPathSupportedResponse)
        if not resp.supported_by_this_provider:
            raise _local_error(
                Opnum.IS_PATH_SUPPORTED,
                HResult.FSRVP_E_NOT_SUPPORTED,
                f"{u.display}: the server says it cannot shadow-copy this share",
            )
        return resp

    def _begin(self, u: Unc) -> None:
        """Connect, IsPathSupported, owner redirect, version, SetContext, Start."""
        conn = self._connect(u.connect_host)
        self._conn = conn
        resp = self._is_path_supported(conn, u)
        conn = self._follow_owner(conn, u, resp.owner_machine_name)
        self._conn = conn
        self.owner = conn.host
        self._check_version(conn)
        conn.checked(calls.SetContextRequest(self.context), context_name(self.context))
        started = conn.checked(calls.StartShadowCopySetRequest(self.client_set_id))
        assert isinstance(started, calls.StartShadowCopySetResponse)
        self.set_id = started.shadow_copy_set_id
        self.status = SetStatus.STARTED
        self._save()

    def _check_version(self, conn: Binding) -> None:
        ver = conn.checked(calls.GetSupportedVersionRequest())
        assert isinstance(ver, calls.GetSupportedVersionResponse)
        if ver.min_version > CLIENT_VERSION or ver.max_version < CLIENT_VERSION:
            raise VersionMismatch(
                f"{conn.host} speaks FSRVP versions {ver.min_version}..{ver.max_version}; "
                f"this client speaks {CLIENT_VERSION}"
            )

    def add(self, unc: str | Unc) -> ShadowCopy:
        """Add one share (the first add starts the set on the server)."""
        if self.status not in (SetStatus.NEW, SetStatus.STARTED, SetStatus.ADDED):
            raise UsageError(f"cannot add to a set that is {self.status}")
        u = self._adopt(unc)
        if any(parse_unc(c.share_unc).key == u.key for c in self.copies):
            raise _local_error(
                Opnum.ADD_TO_SHADOW_COPY_SET,
                HResult.FSRVP_E_OBJECT_ALREADY_EXISTS,
                f"{u.display} is already in this set",
            )
        try:
            if self.status == SetStatus.NEW:
                self._begin(u)
            else:
                conn = self._binding()
                resp = self._is_path_supported(conn, u)
                if resp.owner_machine_name and not self._owner_matches(resp.owner_machine_name):
                    raise OwnerRedirectError(
                        conn.host,
                        f"{u.display} is owned by {resp.owner_machine_name}, not by this "
                        f"set's server {self.owner}; put it in a separate set",
                    )
            assert self.set_id is not None
            conn = self._binding()
            added = conn.checked(
                calls.AddToShadowCopySetRequest(uuid.uuid4(), self.set_id, u.wire), u.display
            )
            assert isinstance(added, calls.AddToShadowCopySetResponse)
        except BaseException as exc:
            self._teardown(exc)
            raise
        copy = ShadowCopy(added.shadow_copy_id, self.set_id, self._require_server(), u.wire)
        self.copies.append(copy)
        self.status = SetStatus.ADDED
        if self.state is not None:
            self.state.put_copy(copy.record())
            self.state.set_status(self.set_id, copy.server, SetStatus.ADDED)
        return copy

    def _owner_matches(self, owner: str) -> bool:
        try:
            name, _ = classify_host(owner)
        except BadUnc:
            return False
        conn = self._binding()
        return name in conn.names() or name == (self.owner or "").lower()

    def prepare(self) -> None:
        """PrepareShadowCopySet, after the last add (commit() calls it if needed)."""
        self._need(SetStatus.ADDED, "prepare")
        assert self.set_id is not None
        try:
            self._binding().checked(
                calls.PrepareShadowCopySetRequest(self.set_id, self.settings.prepare_timeout_ms)
            )
        except BaseException as exc:
            self._teardown(exc)
            raise
        self._prepared = True

    def commit(self) -> None:
        """Prepare (once) and CommitShadowCopySet: the snapshots are taken now."""
        if not self._prepared:
            self.prepare()
        self._need(SetStatus.ADDED, "commit")
        assert self.set_id is not None
        try:
            self._binding().checked(
                calls.CommitShadowCopySetRequest(self.set_id, self.settings.commit_timeout_ms)
            )
        except BaseException as exc:
            self._teardown(exc)
            raise
        self.status = SetStatus.COMMITTED
        self._save_status()

    def expose(self, recover: bool | None = None) -> dict[str, str]:
        """ExposeShadowCopySet, GetShareMapping for each copy, and -- unless the set
        is writable (or ``recover`` says otherwise) -- RecoveryCompleteShadowCopySet."""
        self._need(SetStatus.COMMITTED, "expose")
        assert self.set_id is not None
        try:
            try:
                self._binding().checked(
                    calls.ExposeShadowCopySetRequest(self.set_id, self.settings.expose_timeout_ms)
                )
            except BadState:
                # Exposed already (a client killed between Expose's answer and the
                # table's update): the server still maps it.  Carry on from there
                # rather than tear down a set the user has.
                if not self.copies or self._server_stage(self._binding()) != SetStatus.EXPOSED:
                    raise
                log.info("set %s was exposed on the server already", self.set_id)
                self.found_ahead = SetStatus.EXPOSED
            self.status = SetStatus.EXPOSED
            self._save_status()
            self.refresh_mappings()
            if recover if recover is not None else not self.writable:
                self.recovery_complete()
        except BaseException as exc:
            self._teardown(exc)
            raise
        return self.mappings

    def refresh_mappings(self) -> None:
        """GetShareMapping for each copy; records the exposed names."""
        assert self.set_id is not None
        conn = self._binding()
        for c in self.copies:
            resp = conn.checked(
                calls.GetShareMappingRequest(c.copy_id, self.set_id, c.share_unc, 1),
                c.share_display,
            )
            assert isinstance(resp, calls.GetShareMappingResponse)
            self._apply_mapping(c, resp)

    def _apply_mapping(self, c: ShadowCopy, resp: calls.GetShareMappingResponse) -> None:
        m = resp.mapping
        if m is None or not m.shadow_copy_share_name:
            raise FsrvpCallError(
                "GetShareMapping", f"{c.share_display}: the server returned no exposed share name"
            )
        host, share = snapshot_share(m.shadow_copy_share_name, c.server)
        c.exposed_name = m.shadow_copy_share_name
        c.exposed_unc = unc_text(host, share)
        c.creation_filetime = m.creation_timestamp
        c.status = CopyStatus.OK
        if self.state is not None:
            self.state.update_copy(c.record())

    def recovery_complete(self) -> bool:
        """RecoveryCompleteShadowCopySet: Exposed -> Recovered (a writable copy is sealed).

        Returns False when the server had recovered the set already (a server
        may seal an exposed set itself, e.g. the remotevss agent when it
        restarts): RecoveryComplete answers BAD_STATE, which for a call naming
        a set also reads as "no such set", so GetShareMapping tells the two
        apart.  The set is then recorded as recovered, with a note.
        """
        self._need(SetStatus.EXPOSED, "recover")
        assert self.set_id is not None
        conn = self._binding()
        try:
            conn.checked(calls.RecoveryCompleteShadowCopySetRequest(self.set_id))
        except BadState as exc:
            if not self._still_held(conn):
                raise
            self.mark_recovered_by_server(f"RecoveryComplete: {exc.name}")
            return False
        self.status = SetStatus.RECOVERED
        self._save_status()
        return True

    def _still_held(self, conn: Binding) -> bool:
        """Whether the server still has this set (GetShareMapping: a mapping or BAD_STATE)."""
        assert self.set_id is not None
        if not self.copies:
            return False
        c = self.copies[0]
        try:
            conn.checked(calls.GetShareMappingRequest(c.copy_id, self.set_id, c.share_unc, 1))
        except BadState:
            return True
        except FsrvpError:
            return False
        return True

    def mark_recovered_by_server(self, evidence: str) -> None:
        """An exposed set the server no longer has Exposed (``evidence``: the call
        and its BAD_STATE code): Recovered is the only state after Exposed in
        MS-FSRVP's state machine, so record that, with a note."""
        self.status = SetStatus.RECOVERED
        if self.state is not None and self.set_id is not None and self.server is not None:
            self.state.set_status(
                self.set_id, self.server, SetStatus.RECOVERED, f"{RECOVERED_BY_SERVER} ({evidence})"
            )

    def create(self, uncs: Iterable[str | Unc], *, recover: bool | None = None) -> dict[str, str]:
        """add() each share, commit(), expose(): the whole creation in one call."""
        for u in uncs:
            self.add(u)
        self.commit()
        return self.expose(recover=recover)

    def abort(self, *, missing_ok: bool = True) -> bool:
        """AbortShadowCopySet; the set is forgotten locally.

        Returns False if the server no longer knew the set (a "no such set"
        code; raised instead unless ``missing_ok``).
        """
        if self.set_id is None or self.status in _NOTHING_ON_SERVER:
            self.status = SetStatus.ABORTED
            return False
        conn = self._binding()
        try:
            conn.checked(calls.AbortShadowCopySetRequest(self.set_id))
        except NoSuchSet:
            if not missing_ok:
                raise
            self._forget(SetStatus.ABORTED)
            return False
        ahead = self._server_stage(conn) if self.copies else None
        if ahead is not None:
            # Samba answers ZERO to Abort of a committed or exposed set and keeps it
            # with its snapshots (docs/decisions.md #7), and the table may be behind
            # the server (a client killed between an answer and its update).  Expose
            # (if needed) and delete it instead, so an abort leaves nothing behind.
            log.info("server kept %s set %s after Abort; deleting it", ahead, self.set_id)
            self.found_ahead = ahead if ahead != self.status else None
            if ahead == SetStatus.COMMITTED:
                conn.checked(
                    calls.ExposeShadowCopySetRequest(self.set_id, self.settings.expose_timeout_ms)
                )
            self.status = SetStatus.EXPOSED
            self.delete(missing_ok=True)
        self._forget(SetStatus.ABORTED)
        return True

    def _server_stage(self, conn: Binding) -> SetStatus | None:
        """What the server holds of this set, by GetShareMapping of its first copy:
        None (nothing), COMMITTED (BAD_STATE: not exposed; asked after an Abort the
        server accepted, or of a set recorded committed) or EXPOSED (a mapping:
        exposed, or recovered on a server that maps recovered sets)."""
        assert self.set_id is not None
        c = self.copies[0]
        try:
            conn.checked(calls.GetShareMappingRequest(c.copy_id, self.set_id, c.share_unc, 1))
        except NoSuchSet:
            return None
        except FsrvpError as exc:
            if exc.code in (HResult.FSRVP_E_BAD_STATE, HResult.VSS_E_INVALID_XML_DOCUMENT):
                return SetStatus.COMMITTED
            return None
        return SetStatus.EXPOSED

    def delete(
        self, copy_ids: Sequence[UUID] | None = None, *, missing_ok: bool = True
    ) -> list[DeleteOutcome]:
        """GetSupportedVersion, then DeleteShareMapping for each copy (or the given ones).

        A copy the server no longer knows (any "no such set" code) counts as
        deleted when ``missing_ok``; otherwise its NoSuchSet error is raised.
        """
        if self.set_id is None:
            return []
        targets = [c for c in self.copies if copy_ids is None or c.copy_id in copy_ids]
        if copy_ids is not None and len(targets) != len(set(copy_ids)):
            raise UsageError("a shadow copy id is not in this set")
        conn = self._binding()
        self._check_version(conn)
        outcomes: list[DeleteOutcome] = []
        for c in targets:
            try:
                conn.checked(
                    calls.DeleteShareMappingRequest(self.set_id, c.copy_id, c.share_unc),
                    c.share_display,
                )
                outcomes.append(DeleteOutcome(c, True))
            except NoSuchSet as exc:
                if not missing_ok:
                    raise
                detail = f"already gone on the server ({exc.name})"
                if self._snapshot_share_served(conn, c):
                    detail += (
                        f", but its snapshot share {c.exposed_unc} is still served: FSRVP can "
                        "no longer remove it; remove it on the server"
                    )
                outcomes.append(DeleteOutcome(c, False, detail))
            self.copies.remove(c)
            if self.state is not None:
                self.state.remove_copy(c.copy_id, c.server)
        if not self.copies:
            self._forget(SetStatus.DELETED)
        return outcomes

    @staticmethod
    def _snapshot_share_served(conn: Binding, c: ShadowCopy) -> bool:
        """Whether the recorded snapshot share of a copy the server no longer knows is
        still served there (a server that lost its set table, e.g. Samba's second
        rpcd_fsrvp worker): the user must hear that something remains."""
        probe = getattr(conn, "share_served", None)
        if probe is None or not c.exposed_name or not c.exposed_unc:
            return False
        host, share = snapshot_share(c.exposed_name, c.server)
        if host != c.server:
            return False
        return bool(probe(share))

    # ------------------------------------------------------------- failure
    def _need(self, status: SetStatus, what: str) -> None:
        if self.status != status:
            raise UsageError(f"cannot {what} a set that is {self.status} (needs {status})")

    def _teardown(self, cause: BaseException | None = None) -> None:
        """Abort (before Exposed) or delete (after); never raises, logs what it could not do."""
        if self.set_id is None or self.status in _NOTHING_ON_SERVER:
            self.close()  # nothing on the server yet (or any more)
            return
        why = f" after {type(cause).__name__}: {cause}" if cause is not None else ""
        try:
            if self.status in _BEFORE_EXPOSE:
                log.info("aborting set %s on %s%s", self.set_id, self.owner, why)
                self.abort()
            else:
                log.info("deleting set %s on %s%s", self.set_id, self.owner, why)
                self.delete(missing_ok=True)
        except (ClientError, OSError) as exc:
            log.warning(
                "could not clean up shadow copy set %s on %s: %s; the server drops an "
                "unfinished set when its message sequence timer expires",
                self.set_id,
                self.owner,
                exc,
            )
            if self.state is not None and self.server is not None:
                self.state.set_status(
                    self.set_id, self.server, self.status, f"cleanup failed: {exc}"
                )
        finally:
            if isinstance(cause, FsrvpCallError | FsrvpConnectError):
                self.close()

    def _forget(self, status: SetStatus) -> None:
        self.status = status
        if self.state is not None and self.set_id is not None and self.server is not None:
            self.state.remove_set(self.set_id, self.server)

    # ------------------------------------------------------------- state
    def record(self) -> SetRecord:
        assert self.set_id is not None
        return SetRecord(
            self.set_id,
            self._require_server(),
            self.options.port,
            self.owner or self._require_server(),
            self.client_set_id,
            self.context,
            self.writable,
            self.status,
            self.created,
            time.time(),
            copies=[c.record() for c in self.copies],
        )

    def _save(self) -> None:
        if self.state is not None and self.set_id is not None:
            self.state.put_set(self.record())

    def _save_status(self) -> None:
        if self.state is not None and self.set_id is not None and self.server is not None:
            self.state.set_status(self.set_id, self.server, self.status)

    @classmethod
    def resume(
        cls,
        record: SetRecord,
        credentials: Credentials | None = None,
        options: ConnectOptions | None = None,
        *,
        state: ClientState | None = None,
        connector: Connector | None = None,
        timeouts: SequenceOptions | None = None,
    ) -> ShadowCopySet:
        """A set made by an earlier process, rebuilt from the client table."""
        opts = options or ConnectOptions()
        if opts.port != record.port:
            opts = ConnectOptions(
                port=record.port,
                auth_level=opts.auth_level,
                call_timeout=opts.call_timeout,
                connect_timeout=opts.connect_timeout,
                require_smb3=opts.require_smb3,
            )
        s = cls(
            record.server,
            credentials,
            context=record.context,
            options=opts,
            state=state,
            keep=True,
            connector=connector,
            client_set_id=record.client_set_id,
            timeouts=timeouts,
        )
        s.set_id = record.set_id
        s.owner = record.owner
        s.status = record.status if record.status != SetStatus.STALE else SetStatus.EXPOSED
        s.created = record.created
        s.copies = [ShadowCopy.from_record(c) for c in record.copies]
        s._prepared = record.status != SetStatus.ADDED
        return s

    # ------------------------------------------------------------- context manager
    def __enter__(self) -> ShadowCopySet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        try:
            if exc is not None:
                self._teardown(exc)
            elif self.status in _BEFORE_EXPOSE:
                self._teardown(None)
            elif self.status in _EXPOSED and (
                self.keep is False or (self.keep is None and self.auto_release)
            ):
                self.delete(missing_ok=True)
        finally:
            self.close()


# ----------------------------------------------------------------- several servers


@dataclass
class CreateRequest:
    uncs: Sequence[str | Unc]
    context: str | int = "backup"
    writable: bool = False
    expose: bool = True
    recover: bool | None = None
    follow_owner: bool = True
    resolve: bool = False
    timeouts: SequenceOptions = field(default_factory=SequenceOptions)
    #: The creation id tagging every per-server set (default: a new one); the
    #: backup requestor chooses it to name the lock that marks its run alive.
    client_set_id: UUID | None = None


def group_by_server(uncs: Iterable[str | Unc], *, resolve: bool = False) -> list[list[Unc]]:
    """Shares grouped per server (same host name form rules as one set)."""
    groups: list[tuple[ServerForm, list[Unc]]] = []
    for item in uncs:
        u = parse_unc(item) if isinstance(item, str) else item
        for form, members in groups:
            if form.matches(u.host):
                adopted = form.adopt(u)
                if any(m.key == adopted.key for m in members):
                    raise _local_error(
                        Opnum.ADD_TO_SHADOW_COPY_SET,
                        HResult.FSRVP_E_OBJECT_ALREADY_EXISTS,
                        f"{u.display} is given twice",
                    )
                members.append(adopted)
                break
        else:
            groups.append((ServerForm(u, resolve=resolve), [u]))
    return [members for _, members in groups]


def create_shadow_copies(
    request: CreateRequest,
    credentials: Credentials | None = None,
    options: ConnectOptions | None = None,
    *,
    state: ClientState | None = None,
    connector: Connector | None = None,
    created: list[ShadowCopySet] | None = None,
) -> list[ShadowCopySet]:
    """One creation over one or more servers: one FSRVP set per server, all
    tagged with one client set id, the phases run in step (all adds, then all
    prepares, all commits, all exposes) so the snapshots are as close in time
    as FSRVP allows.  Any failure aborts or deletes every set, then raises.
    The sets are kept (``keep=True``) and their connections closed.
    ``created`` receives the sets as soon as they all exist: the caller owns
    them from then on, even if an interrupt arrives while closing."""
    groups = group_by_server(request.uncs, resolve=request.resolve)
    if not groups:
        raise UsageError("no shares to shadow-copy")
    client_set_id = request.client_set_id or uuid.uuid4()
    sets = [
        ShadowCopySet(
            g[0].host,
            credentials,
            context=request.context,
            writable=request.writable,
            options=options,
            follow_owner=request.follow_owner,
            resolve=request.resolve,
            state=state,
            keep=True,
            connector=connector,
            client_set_id=client_set_id,
            timeouts=replace(request.timeouts),
        )
        for g in groups
    ]
    try:
        for s, g in zip(sets, groups, strict=True):
            for u in g:
                s.add(u)
        for s in sets:
            s.prepare()
        for s in sets:
            s.commit()
        if request.expose:
            for s in sets:
                s.expose(recover=request.recover)
        if created is not None:
            created.extend(sets)
    except BaseException as exc:
        if isinstance(exc, NoSuchSet) and any(s.set_id is not None for s in sets):
            # A set this creation started is gone: not an id the user named (exit 5)
            # but the server's doing -- an FSRVP error (exit 1), said in plain words.
            exc.hint = DROPPED_MID_CREATION
            exc.exit_code = EXIT_FSRVP
        for s in sets:
            s._teardown(exc)
        raise
    finally:
        for s in sets:
            s.close()
    return sets


# ----------------------------------------------------------------- queries


@dataclass
class PathQuery:
    unc: str
    supported: bool
    owner: str | None
    shadow_copied: bool | None  # None: the server does not implement IsPathShadowCopied
    compatibility: int = 0
    note: str = ""


def query_path(
    unc: str | Unc,
    credentials: Credentials | None = None,
    options: ConnectOptions | None = None,
    *,
    connector: Connector | None = None,
) -> PathQuery:
    """IsPathSupported and IsPathShadowCopied for one share (the sequence's first step)."""
    u = parse_unc(unc) if isinstance(unc, str) else unc
    conn = (connector or _default_connector)(
        u.connect_host, credentials or Credentials(), options or ConnectOptions()
    )
    try:
        sup = conn.checked(calls.IsPathSupportedRequest(u.wire), u.display)
        assert isinstance(sup, calls.IsPathSupportedResponse)
        result = PathQuery(u.display, sup.supported_by_this_provider, sup.owner_machine_name, None)
        try:
            cop = conn.checked(calls.IsPathShadowCopiedRequest(u.wire), u.display)
            assert isinstance(cop, calls.IsPathShadowCopiedResponse)
            result.shadow_copied = cop.shadow_copy_present
            result.compatibility = cop.shadow_copy_compatibility
        except NotSupported:
            result.note = "the server does not implement IsPathShadowCopied"
        return result
    finally:
        conn.close()


@dataclass
class CheckResult:
    record: SetRecord
    alive: list[CopyRecord]
    stale: list[tuple[CopyRecord, str]]
    unknown: list[tuple[CopyRecord, str]]  # could not tell (e.g. state not queryable)
    #: the set was recorded exposed but the server has moved it on (now recovered)
    recovered_by_server: bool = False


def check_set(
    record: SetRecord,
    credentials: Credentials | None = None,
    options: ConnectOptions | None = None,
    *,
    state: ClientState | None = None,
    connector: Connector | None = None,
    conn: Binding | None = None,
) -> CheckResult:
    """Ask the server about each copy of a recorded set (GetShareMapping).

    A "no such set" answer (ID_MISMATCH, E_INVALIDARG, OBJECT_NOT_FOUND) marks
    the copy ``stale`` in ``state``; BAD_STATE (e.g. a Recovered set on a
    spec server, or a set not yet exposed) means the server still has it.
    BAD_STATE for a set recorded *exposed* means the server recovered it
    by itself (Recovered is the only state after Exposed; the remotevss
    agent seals exposed persistent sets when it restarts): the record
    becomes ``recovered`` with a note.
    """
    s = ShadowCopySet.resume(record, credentials, options, connector=connector)
    own = conn is None
    binding = conn if conn is not None else s._binding()
    result = CheckResult(record, [], [], [])
    bad_state = ""  # the BAD_STATE-like code's name, if one came
    try:
        for c in record.copies:
            try:
                resp = binding.checked(
                    calls.GetShareMappingRequest(c.copy_id, record.set_id, c.share_unc, 1),
                    c.share_unc.rstrip("\\"),
                )
            except NoSuchSet as exc:
                c.status = CopyStatus.STALE
                result.stale.append((c, f"{exc.name} from GetShareMapping"))
                continue
            except FsrvpError as exc:
                if isinstance(exc, BadState):
                    bad_state = bad_state or exc.name
                result.unknown.append((c, f"{exc.name} from GetShareMapping"))
                continue
            assert isinstance(resp, calls.GetShareMappingResponse)
            sc = ShadowCopy.from_record(c)
            s._apply_mapping(sc, resp)
            c.exposed_name, c.exposed_unc = sc.exposed_name, sc.exposed_unc
            c.creation_time, c.status = sc.creation_filetime, CopyStatus.OK
            result.alive.append(c)
    finally:
        if own:
            binding.close()
    if bad_state and record.status == SetStatus.EXPOSED and not result.alive:
        result.recovered_by_server = True
        record.status = SetStatus.RECOVERED
        record.note = f"{RECOVERED_BY_SERVER} (GetShareMapping: {bad_state})"
    behind = record.status in _BEFORE_EXPOSE and bool(result.alive)
    if behind:
        # The server maps a set the table has short of Exposed: a client was killed
        # between Expose's answer and the table's update.  Record what the server says.
        record.note = f"found exposed on the server; the client table had it {record.status}"
        record.status = SetStatus.EXPOSED
    if state is not None:
        for c in record.copies:
            state.update_copy(c)
        if result.recovered_by_server or behind:
            state.set_status(record.set_id, record.server, record.status, record.note)
        elif result.stale and not result.alive and not result.unknown:
            state.set_status(
                record.set_id, record.server, SetStatus.STALE, "no longer on the server"
            )
            record.status = SetStatus.STALE
    return result


def describe_error(exc: BaseException) -> str:
    """One line for people (the CLI prints this)."""
    if isinstance(exc, AccessDeniedError) and exc.auth_level == "none":
        return f"{exc}; {UNAUTHENTICATED_HINT}"
    if isinstance(exc, FsrvpError):
        hint = _HINTS.get(exc.code, "")
        if exc.call.startswith("IsPathSupported") and exc.code in (
            HResult.E_INVALIDARG,
            HResult.FSRVP_E_OBJECT_NOT_FOUND,
        ):
            hint = "no such share on the server"
        elif isinstance(exc, NoSuchSet):
            hint = exc.hint or "the server does not know this shadow copy set (or copy)"
        return f"{exc}{'; ' + hint if hint else ''}"
    return str(exc)


#: A NoSuchSet answer for a set the running creation started.
DROPPED_MID_CREATION = (
    "the server dropped the set during the creation: another FSRVP client started one "
    "on this server meanwhile (MS-FSRVP servers run one creation at a time), or the "
    "server's message sequence timer expired or it restarted; retry"
)

#: A refusal of an unauthenticated binding: most servers (our agent by default,
#: MS-FSRVP 3.1.4) require signing; the refusal looks like a missing right.
UNAUTHENTICATED_HINT = (
    "this binding is unauthenticated (--auth-level none) and the server requires "
    "packet integrity or privacy for FSRVP: use --auth-level integrity or privacy (the default)"
)

_HINTS: dict[int, str] = {
    HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS: "another shadow copy set is being created "
    "on this server; retry later or abort it",
    HResult.FSRVP_E_NOT_SUPPORTED: "the share's file system cannot be shadow-copied by this server",
    HResult.E_ACCESSDENIED: "FSRVP needs an administrator or backup operator (or root on Samba)",
    HResult.FSRVP_E_UNSUPPORTED_CONTEXT: "the server does not support this context",
}

__all__ = [
    "CONTEXTS",
    "RECOVERED_BY_SERVER",
    "CheckResult",
    "CreateRequest",
    "DeleteOutcome",
    "SequenceOptions",
    "PathQuery",
    "ShadowCopy",
    "ShadowCopySet",
    "check_set",
    "context_name",
    "context_value",
    "create_shadow_copies",
    "describe_error",
    "group_by_server",
    "is_auto_release",
    "query_path",
]
