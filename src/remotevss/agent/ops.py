"""Operations around the FSRVP service: what an administrator runs it with for years.

One object wires, around an :class:`AgentService`: the event log and trace
(agent/events.py), orphan collection (agent/gc.py), the shadow storage limit
(agent/storage.py), metrics (agent/metrics.py), the admin socket and status
(agent/admin.py), systemd's notify protocol and watchdog (agent/sdnotify.py),
SIGHUP reload and the graceful SIGTERM.  ``docs/operations.md`` is the
administrator's view of all of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from remotevss import __version__
from remotevss.agent import admin
from remotevss.agent.authz import Caller, Policy, policy_for
from remotevss.agent.config import AgentConfig, ConfigError
from remotevss.agent.events import CallEvent, configure_logging, emit, log_call
from remotevss.agent.gc import Activity, Collector
from remotevss.agent.metrics import Metrics
from remotevss.agent.release import Pick, context_name, logged, release_picks, shutdown_outcome
from remotevss.agent.reload import POLICY_KEYS, ReloadPlan
from remotevss.agent.reload import plan as reload_plan
from remotevss.agent.sdnotify import Watchdog, notify, watchdog_interval
from remotevss.agent.service import AgentService
from remotevss.agent.sizes import parse_limit
from remotevss.agent.storage import (
    StorageManager,
    resolve_volume_root,
    share_volumes,
    split_volume,
)
from remotevss.agent.strays import StrayFinder
from remotevss.agent.transports.samba_pipe import PipeListener
from remotevss.agent.transports.unix import socket_identity, unlink_if_ours
from remotevss.fsrvp.machine import Status, TimerPolicy

if TYPE_CHECKING:
    from remotevss.agent.rpc_security import RpcAuthenticator

log = logging.getLogger("remotevss.agent")

#: An intent older than this is a failed effect waiting for the next start-up.
STUCK_INTENT_AGE = 60.0


@dataclass(frozen=True)
class _Closed(Policy):
    """While stopping: every call is E_ACCESSDENIED, with no state change."""

    def permits(self, caller: Caller) -> bool:
        return False


class Operations:
    def __init__(
        self,
        service: AgentService,
        *,
        reload: Callable[[], AgentConfig] | None = None,
        verbose: int = 0,
    ) -> None:
        """Install the hooks; call before ``service.start()`` so nothing is missed."""
        self.service = service
        self.reload_config = reload
        self.verbose = verbose
        self.pipe: PipeListener | None = None
        self.started = time.time()
        self.reloads = 0
        self.stopping = False
        config = service.config
        self.storage = StorageManager(config)
        self.activity = Activity(Path(config.state_dir) / "gc-activity.json", service.clock())
        finder = StrayFinder(service.shares, config.backend, service.owner)
        self.collector = Collector(service, self.activity, self.storage, finder)
        self.storage.on_delete = self.collector.on_delete  # one list: counts and metrics
        self.metrics: Metrics | None = None
        if config.metrics.port:
            self.metrics = Metrics(
                usage=lambda: self.storage.last,
                refusals=lambda: self.storage.refusals,
                pipe_owned=lambda: None if self.pipe is None else self.pipe.owned,
            )
            self.collector.on_delete.append(self.metrics.on_delete)
        service.call_hooks += [log_call, self.activity.on_call, self._after_call]
        if self.metrics is not None:
            service.call_hooks.insert(0, self.metrics.on_call)
        service.commit_guard = lambda sid, creates: self.storage.guard(service, sid, creates)
        self._admin: asyncio.Server | None = None
        self._admin_bound: tuple[int, int] | None = None  # its socket file, removed at stop
        self._watchdog: Watchdog | None = None
        self.metrics_port: int | None = None
        #: Set by agent/main.py behind Samba: what a reload re-applies the policy and
        #: the ntlm_auth pool with (smb.conf's realm; the pipe's authenticator).
        self.samba_realm = ""
        self.rpc_auth: RpcAuthenticator | None = None
        self.last_reload: ReloadPlan | None = None

    def _after_call(self, _event: CallEvent) -> None:
        if self.metrics is not None:
            self.metrics.refresh(self.service.machine, self.service.clock())

    # ------------------------------------------------------------ lifecycle

    async def start(self, pipe: PipeListener | None = None) -> None:
        """After the service has reconciled and the listeners are up: admin socket,
        metrics, the start-up GC pass and its timer, the watchdog, then READY=1."""
        self.pipe = pipe
        config = self.service.config
        self._admin = await admin.serve_admin(config.admin_socket_path, config.socket_group,
                                              self.handle)
        self._admin_bound = socket_identity(config.admin_socket_path)
        if self.metrics is not None:
            self.metrics.bind(asyncio.get_running_loop(), self.service.machine, self.service.clock)
            self.metrics_port = self.metrics.serve(config.metrics.port, config.metrics.address)
            log.info("metrics on http://%s:%d/metrics", config.metrics.address, self.metrics_port)
        await self.collector.run_pass()
        self.collector.start()
        if self.metrics is not None:
            self.metrics.refresh(self.service.machine, self.service.clock())
        if (interval := watchdog_interval()) is not None:
            self._watchdog = Watchdog(interval)
            self._watchdog.start()
        notify(f"READY=1\nSTATUS=serving FSRVP on {config.socket_path}\nMAINPID={os.getpid()}")

    async def stop(self) -> None:
        """SIGTERM: refuse new calls, finish running commits, release what cannot
        outlive the agent (Machine.shutdown), close the admin side."""
        self.stopping = True
        notify("STOPPING=1\nSTATUS=releasing unfinished shadow copy sets")
        self.service.policy = _Closed()
        await self.collector.stop()
        out = await self.service.release(
            logged(shutdown_outcome, self.collector.on_delete),
            wait_commits=True,
        )
        if out.dropped_sets:
            log.warning("stopping: released %d unfinished set(s)", len(out.dropped_sets))
        self.activity.save(self.service.machine.sets)
        if self._admin is not None:
            self._admin.close()
            await self._admin.wait_closed()
            unlink_if_ours(self.service.config.admin_socket_path, self._admin_bound)
        if self.metrics is not None:
            self.metrics.close()
        if self._watchdog is not None:
            await self._watchdog.stop()

    def reload(self) -> list[str]:
        """SIGHUP: re-read the configuration file and apply what can change while
        running (docs/operations.md); everything else needs a restart."""
        if self.reload_config is None:
            return []
        notify("RELOADING=1")
        try:
            new = self.reload_config()
        except ConfigError as exc:
            log.error("reload: configuration error, keeping the old one: %s", exc)
            notify("READY=1\nSTATUS=reload failed; old configuration kept")
            return []
        p = reload_plan(self.service.config, new)  # every key has a rule (agent/reload.py)
        cfg = p.config
        self.service.config = cfg
        self.service.machine.timers = TimerPolicy(cfg.sequence_timeout)
        self.storage.config = cfg
        if set(p.changed) & POLICY_KEYS and not self.stopping:  # stopping: all refused
            self.service.policy = policy_for(cfg, self.samba_realm)
        if self.rpc_auth is not None:
            self.rpc_auth.apply(cfg)
        configure_logging(cfg.log, self.verbose)
        self.reloads += 1
        self.last_reload = p
        emit({"event": "reload", "changed": p.changed, "needs_restart": p.needs_restart,
              "blocks_restart": p.blocks_restart})
        if p.changed:
            log.info("reload: applied %s", ", ".join(p.changed))
        if p.needs_restart:
            log.warning("reload: %s changed but only take effect at restart",
                        ", ".join(p.needs_restart))  # fmt: skip
        for problem in p.blocks_restart:
            log.error("reload: %s: the agent will not start with this configuration file "
                      "(the running agent goes on with the old value)", problem)
        self.collector.wake()
        notify("READY=1\nSTATUS=configuration reloaded")
        return p.changed

    # ------------------------------------------------------------ admin requests

    async def handle(self, request: dict[str, Any], uid: int) -> Any:
        op = request["op"]
        if op == "status":
            return await self.status()
        if op == "storage":
            usage = await self.storage.measure_all(self.service)
            return [u.as_dict() for u in usage.values()]
        if op in ("resize", "gc", "release") and uid != 0:
            raise admin.AdminError(f"{op}: root only")
        if op == "resize":
            return await self._resize(str(request.get("volume", "")), request.get("max"))
        if op == "gc":
            done = await self.collector.run_pass()
            return [{"set": str(p.set_id), "copy": str(p.copy_id) if p.copy_id else None,
                     "reason": p.reason, "detail": p.detail} for p in done]
        if op == "release":
            return await self._release(request.get("set"), request.get("copy"))
        raise admin.AdminError(f"unknown op {op!r} (status, storage, resize, gc, release)")

    async def _release(self, set_text: Any, copy_text: Any) -> list[dict[str, Any]]:
        """An admin's deletion of one set (or one copy of it): what DeleteShareMapping
        of every mapping would do, for a set whose client is gone."""
        try:
            set_id = UUID(str(set_text))
            copy_id = UUID(str(copy_text)) if copy_text else None
        except ValueError as exc:
            raise admin.AdminError(f"release: not a GUID: {exc}") from exc
        s = self.service.machine.sets.get(set_id)
        if s is None:  # a stray's set (agent/strays.py)?
            strays = await self.collector.delete_strays(set_id, copy_id)
            if not strays:
                raise admin.AdminError(f"no shadow copy set {set_id}")
            for p in strays:
                emit({"event": "admin_release", "set": str(p.set_id),
                      "copy": str(p.copy_id) if p.copy_id else None, "stray": True,
                      "copies": (p.extra or {}).get("copies", [])})
            return [{"set": str(p.set_id), "copy": str(p.copy_id) if p.copy_id else None,
                     "stray": True} for p in strays]
        if copy_id is not None and all(c.id != copy_id for c in s.copies):
            raise admin.AdminError(f"set {set_id} has no shadow copy {copy_id}")
        pick = Pick(set_id, copy_id, "admin", "deleted by an administrator")
        done: list[Pick] = []
        await self.service.release(lambda m, now: release_picks(m, [pick], done),
                                   wait_commits=True)
        for p in done:
            emit({"event": "admin_release", "set": str(p.set_id),
                  "copy": str(p.copy_id) if p.copy_id else None})
        return [{"set": str(p.set_id), "copy": str(p.copy_id) if p.copy_id else None}
                for p in done]

    async def _resize(self, volume: str, size: Any) -> dict[str, Any]:
        if not volume or not isinstance(size, str | int):
            raise admin.AdminError("resize needs a volume and a max")
        held = {split_volume(c.volume_name)[1] for s in self.service.machine.sets.values()
                for c in s.copies}
        backend = self.service.config.backend

        def resolve() -> str:  # the shares the agent serves: Samba's behind Samba
            return resolve_volume_root(volume, share_volumes(self.service.shares, backend), held)

        try:
            parse_limit(size)
            root = await asyncio.to_thread(resolve)
            limit = self.storage.set_limit(root, str(size))
        except ValueError as exc:
            raise admin.AdminError(str(exc)) from exc
        emit({"event": "storage_resize", "volume": root, "max": str(limit)})
        self.collector.wake()  # a smaller maximum applies now, not at the next interval
        return {"volume": root, "max": str(limit)}

    async def status(self) -> dict[str, Any]:
        svc, m = self.service, self.service.machine
        now = svc.clock()
        cfg = svc.config
        sets = []
        for s in m.sets.values():
            in_flight = s.status is not Status.RECOVERED
            sets.append({
                "id": str(s.id), "status": s.status.value, "context": f"0x{s.context:08X}",
                "context_name": context_name(s.context), "auto_release": s.auto_release,
                "in_flight": in_flight, "last_activity": self.activity.of(s.id),
                "copies": [{
                    "id": str(c.id), "volume": c.volume_name, "snapshot": c.snapshot_path,
                    "created": c.creation_time, "writable": c.writable,
                    "shares": [{"share": mp.local_share, "unc": mp.share_name,
                                "exposed": mp.is_exposed, "exposed_name": mp.exposed_name}
                               for mp in c.mappings],
                } for c in s.copies],
            })
        exposed = await asyncio.to_thread(svc.exposer.exposed)
        stuck = await asyncio.to_thread(_stuck_intents, cfg.journal_path, time.time())
        pipe = self.pipe.status() if self.pipe is not None else None
        problems: list[str] = []
        if self.pipe is not None and not self.pipe.owned:
            problems.append(f"Samba pipe socket {self.pipe.path} is not ours: {self.pipe.problem}")
        if stuck:
            problems.append(f"{len(stuck)} journaled effect(s) failed and wait for the next "
                            f"start-up: {', '.join(stuck[:5])}")
        if self.collector.stats.last_error:
            problems.append(f"last GC pass failed: {self.collector.stats.last_error}")
        volumes = [u.as_dict() for u in self.storage.last.values()]
        problems += [f"volume {u.root} is over its shadow storage maximum "
                     f"({u.used} > {u.maximum} bytes, basis {u.basis})"
                     for u in self.storage.last.values() if u.over]
        if self.stopping:
            problems.append("stopping")
        gc = self.collector.stats
        return {
            "healthy": not problems,
            "problems": problems,
            "agent": {
                "pid": os.getpid(), "version": __version__, "started": self.started,
                "uptime_s": round(time.time() - self.started, 1), "mode": cfg.mode.value,
                "socket": cfg.socket_path, "admin_socket": cfg.admin_socket_path,
                "sequence_timeout": cfg.sequence_timeout, "reloads": self.reloads,
                "metrics_port": self.metrics_port,
            },
            "samba_pipe": pipe,
            "context": {"set": m.context_set, "client": m.client_address,
                        "context": f"0x{m.current_context:08X}" if m.context_set else None},
            "timer_deadline": m.deadline,
            "io": self.service.io_counters(),
            "timer_remaining_s": None if m.deadline is None else round(m.deadline - now, 1),
            "sets": sets,
            "strays": [x.as_dict() for x in self.collector.kept_strays],
            "exposed_shares": exposed,
            "volumes": volumes,
            "storage_measured_at": self.storage.last_at,
            "gc": {"passes": gc.passes, "last_pass": gc.last_pass, "last_error": gc.last_error,
                   "deleted": gc.deleted, "interval": cfg.gc.interval,
                   "orphan_after": cfg.gc.orphan_after, "max_age": cfg.gc.max_age},
        }


def _stuck_intents(journal: Path, now: float) -> list[str]:
    """Intents older than STUCK_INTENT_AGE, read on a connection of our own (read-only)."""
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return []
    try:
        rows = db.execute("SELECT kind, detail FROM intents WHERE created < ? ORDER BY id",
                          (now - STUCK_INTENT_AGE,)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()
    return [f"{kind} {detail}" for kind, detail in rows]


__all__ = ["Operations", "Pick"]
