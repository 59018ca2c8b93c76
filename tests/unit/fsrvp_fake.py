"""A fake FSRVP server for client unit tests: our pure state machine behind a Binding.

Why the machine: it implements the spec's rules and Samba's (``Mode.SAMBA``)
with their codes, so the client's sequence, abort and cleanup logic is tested
against both readings without sockets.  Effects are applied to a tiny "disk"
(snapshots and exposed shares) so a test can assert that nothing is left.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from remotevss.client.connection import ConnectOptions, Credentials
from remotevss.client.errors import CallTimeout, ConnectionLost, HostUnreachable
from remotevss.client.rpc import check
from remotevss.fsrvp import calls, server
from remotevss.fsrvp.constants import HResult
from remotevss.fsrvp.machine import (
    CreateSnapshot,
    DeleteSnapshot,
    ExposeShare,
    Machine,
    Mode,
    SealSnapshot,
    ShareInfo,
    TimerPolicy,
    UnexposeShare,
)


@dataclass
class FakeServer:
    names: set[str]
    shares: dict[str, str]  # share name (lower) -> volume
    mode: Mode = Mode.SPEC
    owner: str | None = None  # OwnerMachineName; default: first of names, upper case
    machine: Machine = field(init=False)
    snapshots: set[str] = field(default_factory=set)
    exposed: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)
    #: opnum -> code to answer instead of running the call (once)
    fail: dict[int, int] = field(default_factory=dict)
    #: opnum -> exception raised instead of answering (once), e.g. ConnectionLost
    drop: dict[int, type[Exception]] = field(default_factory=dict)
    clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    def __post_init__(self) -> None:
        self.machine = Machine(mode=self.mode, timers=TimerPolicy(0))

    @property
    def owner_name(self) -> str:
        return self.owner or sorted(self.names)[0].upper()

    def share_info(self, unc: str) -> tuple[ShareInfo, str | None]:
        parts = unc[2:].rstrip("\\").split("\\")
        if len(parts) != 2:
            return ShareInfo(False), None
        name = parts[1].lower()
        vol = self.shares.get(name)
        if vol is None:
            return ShareInfo(False), name
        return ShareInfo(True, name, True, vol), name

    def apply(self, effects: list[object]) -> None:
        for e in effects:
            if isinstance(e, CreateSnapshot):
                path = f"{e.volume_name}/@snap-{e.copy_id}"
                self.snapshots.add(path)
                self.machine.snapshot_created(e.set_id, e.copy_id, path, e.writable)
            elif isinstance(e, ExposeShare):
                self.exposed.add(e.exposed_name)
                self.machine.share_exposed(e.set_id, e.copy_id, e.exposed_name)
            elif isinstance(e, UnexposeShare):
                self.exposed.discard(e.exposed_name)
            elif isinstance(e, DeleteSnapshot):
                self.snapshots.discard(e.snapshot_path)
            elif isinstance(e, SealSnapshot):
                pass

    def handle(self, req: calls.Request, client: str) -> calls.Response:  # noqa: C901
        now = float(next(self.clock))
        m = self.machine
        name = calls.OPNUM_NAMES[req.opnum]
        self.log.append(name)
        if req.opnum in self.fail:
            code = self.fail.pop(req.opnum)
            return calls.error_response(req.opnum, code, req)
        unc = server.share_unc(req)
        info = self.share_info(unc)[0] if unc is not None else None
        local = (
            self.share_info(req.share_name)[1]
            if isinstance(req, calls.GetShareMappingRequest) else None
        )
        step = server.answer(m, req, now, client, server.Names(self.owner_name), info, local)
        if step is not None:  # the agent's own request -> machine -> response step
            response, out = step
            self.apply(out.teardown)
            return response
        if isinstance(req, calls.CommitShadowCopySetRequest):
            out = m.begin_commit(req.shadow_copy_set_id, now)
            if not out.ok:
                return calls.CommitShadowCopySetResponse(out.result)
            self.apply(out.effects)
            fin = m.finish_commit(req.shadow_copy_set_id, None, now)
            return calls.CommitShadowCopySetResponse(fin.result)
        if isinstance(req, calls.ExposeShadowCopySetRequest):
            out = m.begin_expose(req.shadow_copy_set_id, now)
            if not out.ok:
                return calls.ExposeShadowCopySetResponse(out.result)
            self.apply(out.effects)
            return calls.ExposeShadowCopySetResponse(
                m.finish_expose(req.shadow_copy_set_id, None, now).result
            )
        if isinstance(req, calls.RecoveryCompleteShadowCopySetRequest):
            out = m.begin_recovery_complete(req.shadow_copy_set_id, now)
            if not out.ok:
                return calls.RecoveryCompleteShadowCopySetResponse(out.result)
            return calls.RecoveryCompleteShadowCopySetResponse(
                m.finish_recovery_complete(req.shadow_copy_set_id, None).result
            )
        if isinstance(req, calls.DeleteShareMappingRequest):
            _, local = self.share_info(req.share_name)
            out = m.begin_delete_share_mapping(
                req.shadow_copy_set_id, req.shadow_copy_id, local, now
            )
            if not out.ok:
                return calls.DeleteShareMappingResponse(out.result)
            self.apply(out.effects)
            s, c, mp = out.value  # type: ignore[misc]
            fin = m.finish_delete_share_mapping(s.id, c.id, mp, None)
            self.apply(fin.teardown)
            return calls.DeleteShareMappingResponse(fin.result)
        raise AssertionError(req)

    @property
    def clean(self) -> bool:
        return not self.snapshots and not self.exposed and not self.machine.sets


@dataclass
class FakeBinding:
    host: str
    server: FakeServer
    client: str = "10.0.0.9"
    closed: bool = False
    peer_address: str | None = None

    def checked(self, request: calls.Request, detail: str = "") -> calls.Response:
        if self.closed:
            raise ConnectionLost(calls.OPNUM_NAMES[request.opnum], "closed")
        exc = self.server.drop.pop(request.opnum, None)
        if exc is not None:
            self.closed = True
            raise exc(calls.OPNUM_NAMES[request.opnum], "injected")  # type: ignore[call-arg]
        return check(self.server.handle(request, self.client), request.opnum, detail)

    def names(self) -> set[str]:
        return {self.host, *self.server.names}

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeNetwork:
    """host name -> server; the connector records every connection made."""

    servers: dict[str, FakeServer] = field(default_factory=dict)
    connections: list[str] = field(default_factory=list)
    down: set[str] = field(default_factory=set)

    def add(self, server: FakeServer) -> FakeServer:
        for n in server.names:
            self.servers[n.lower()] = server
        return server

    def connector(self) -> Callable[[str, Credentials, ConnectOptions], FakeBinding]:
        def connect(host: str, creds: Credentials, options: ConnectOptions) -> FakeBinding:
            self.connections.append(host)
            server = self.servers.get(host.lower())
            if server is None or host.lower() in self.down:
                raise HostUnreachable(host, "connection refused (fake)")
            return FakeBinding(host, server)

        return connect


__all__ = ["CallTimeout", "FakeBinding", "FakeNetwork", "FakeServer", "HResult"]
