"""Prometheus metrics: an optional HTTP endpoint on localhost ([metrics] port).

Why prometheus-client: the text exposition format and a threaded HTTP server
in one small, pure-Python, typed package; our own registry (not the global
one) so several services in one test process do not collide.  The endpoint
binds 127.0.0.1 unless [metrics] address says otherwise: metrics name shares
and volumes, which are nobody's business off the machine.

Counters move with calls (a call hook) and deletions; state gauges (copies and
exposed shares per volume, sets per state, storage use, pipe ownership) are
read at scrape time from a snapshot the event loop refreshes after every call
and GC pass, so the HTTP thread never walks the live machine.

prometheus-client is imported when metrics are on ([metrics] port): it costs
an agent without the endpoint ~3 MB resident for nothing (issue 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from uuid import UUID

from remotevss.agent.events import CallEvent
from remotevss.agent.release import Pick
from remotevss.fsrvp import calls
from remotevss.fsrvp.machine import Machine, Status

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.core import Metric

    from remotevss.agent.storage import VolumeUsage

SEQUENCE_BUCKETS = (1, 5, 15, 60, 180, 600, 1800, 3600, 4 * 3600, 24 * 3600)


class _State:
    """The scrape-time gauges (a collector by duck typing: ``collect``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.m.sync()
        volumes, states = self.m.snapshot
        copies = GaugeMetricFamily("remotevss_shadow_copies",
                                   "Shadow copies with a snapshot, per volume", labels=["volume"])
        shares = GaugeMetricFamily("remotevss_exposed_shares",
                                   "Exposed snapshot shares, per volume", labels=["volume"])
        usage = dict(self.m.usage())  # volumes of configured shares: 0 rather than absent
        known = {**{v: (0, 0) for v in usage}, **volumes}
        for vol, (n_copies, n_shares) in sorted(known.items()):
            copies.add_metric([vol], n_copies)
            shares.add_metric([vol], n_shares)
        sets = GaugeMetricFamily("remotevss_sets", "Shadow copy sets per state", labels=["state"])
        for st in Status:
            sets.add_metric([st.value], states.get(st.value, 0))
        yield from (copies, shares, sets)
        used = GaugeMetricFamily("remotevss_storage_used_bytes",
                                 "Shadow storage counted against the maximum",
                                 labels=["volume", "basis"])
        maximum = GaugeMetricFamily("remotevss_storage_maximum_bytes",
                                    "Shadow storage maximum (absent: unbounded)", labels=["volume"])
        fs_size = GaugeMetricFamily("remotevss_storage_filesystem_bytes",
                                    "Filesystem size", labels=["volume"])
        fs_alloc = GaugeMetricFamily("remotevss_storage_filesystem_used_bytes",
                                     "Filesystem bytes in use", labels=["volume"])
        for u in usage.values():
            used.add_metric([u.volume, u.basis], u.used)
            if u.maximum is not None:
                maximum.add_metric([u.volume], u.maximum)
            fs_size.add_metric([u.volume], u.size)
            fs_alloc.add_metric([u.volume], u.allocated)
        yield from (used, maximum, fs_size, fs_alloc)
        refusals = CounterMetricFamily("remotevss_storage_refusals",
                                       "Commits refused by a shadow storage maximum")
        refusals.add_metric([], self.m.refusals())
        yield refusals
        owned = self.m.pipe_owned()
        if owned is not None:
            g = GaugeMetricFamily("remotevss_samba_pipe_owned",
                                  "1 while the Samba pipe socket is the agent's")
            g.add_metric([], 1 if owned else 0)
            yield g


class Metrics:
    def __init__(
        self,
        *,
        usage: Callable[[], dict[str, VolumeUsage]] = dict,
        refusals: Callable[[], int] = lambda: 0,
        pipe_owned: Callable[[], bool | None] = lambda: None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.usage, self.refusals, self.pipe_owned = usage, refusals, pipe_owned
        self.calls = Counter("remotevss_fsrvp_calls", "FSRVP calls by opnum and result",
                             ["opnum", "result"], registry=self.registry)
        self.call_seconds = Histogram("remotevss_fsrvp_call_duration_seconds",
                                      "FSRVP call duration", ["opnum"], registry=self.registry)
        self.sequence_seconds = Histogram(
            "remotevss_sequence_duration_seconds",
            "StartShadowCopySet to RecoveryComplete (or abort, or drop)",
            ["outcome"], buckets=SEQUENCE_BUCKETS, registry=self.registry)
        self.deletions = Counter("remotevss_gc_deletions",
                                 "Shadow copies or sets deleted by the agent, by reason",
                                 ["reason"], registry=self.registry)
        # (copies and exposed shares per volume, sets per state): replaced whole, so a
        # scrape in the HTTP thread always sees one consistent picture
        self.snapshot: tuple[dict[str, tuple[int, int]], dict[str, int]] = ({}, {})
        self._started: dict[UUID, float] = {}
        self.registry.register(_State(self))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._machine: Machine | None = None
        self._clock: Callable[[], float] = time.time
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ hooks

    def on_call(self, event: CallEvent) -> None:
        self.calls.labels(event.opnum_name, event.result_name).inc()
        self.call_seconds.labels(event.opnum_name).observe(event.duration)
        if not event.ok:
            return
        sid = event.set_id()
        end = event.at + event.duration
        if isinstance(event.response, calls.StartShadowCopySetResponse) and sid:
            self._started[sid] = event.at
        elif isinstance(event.request, calls.RecoveryCompleteShadowCopySetRequest) and sid:
            self._sequence_end(sid, "recovered", end)
        elif isinstance(event.request, calls.AbortShadowCopySetRequest) and sid:
            self._sequence_end(sid, "aborted", end)

    def on_delete(self, pick: Pick) -> None:
        self.deletions.labels(pick.reason).inc()

    def _sequence_end(self, sid: UUID, outcome: str, end: float) -> None:
        began = self._started.pop(sid, None)
        if began is not None:
            self.sequence_seconds.labels(outcome).observe(max(0.0, end - began))

    def bind(self, loop: asyncio.AbstractEventLoop, machine: Machine,
             clock: Callable[[], float]) -> None:
        """Let scrapes ask the event loop for a fresh state snapshot (see ``sync``)."""
        self._loop, self._machine, self._clock = loop, machine, clock

    def sync(self, timeout: float = 1.0) -> None:
        """From the HTTP thread: refresh the snapshot on the event loop, which owns the
        machine; a wedged loop costs freshness (the last snapshot is served), not the scrape."""
        if self._loop is None or self._machine is None or self._loop.is_closed():
            return
        machine, clock = self._machine, self._clock

        async def fresh() -> None:
            self.refresh(machine, clock())

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(fresh(), self._loop).result(timeout)

    def refresh(self, machine: Machine, now: float) -> None:
        """Publish the machine's state for scrapes (call on the event loop)."""
        volumes: dict[str, tuple[int, int]] = {}
        states: dict[str, int] = {}
        for s in machine.sets.values():
            states[s.status.value] = states.get(s.status.value, 0) + 1
            for c in s.copies:
                if not c.snapshot_path:
                    continue
                n, e = volumes.get(c.volume_name, (0, 0))
                volumes[c.volume_name] = (n + 1, e + sum(m.is_exposed for m in c.mappings))
        for sid in [sid for sid in self._started if sid not in machine.sets]:
            self._sequence_end(sid, "dropped", now)
        self.snapshot = (volumes, states)

    # ------------------------------------------------------------ endpoint

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint; returns the bound port (``port`` 0: any free one)."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, address, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
