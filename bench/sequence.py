"""Benchmark: the full FSRVP sequence, our agent vs Samba's rpcd_fsrvp, same btrfs, one run.

Ours: server-side time (decode, authorize, state machine, journal, snapshot,
exposure, encode; from the complete request to the encoded response) summed
over the 11 calls of the spec's sequence, for 1 share and for 16 shares on
distinct subvolumes, median of --runs.  The client is impacket's DCE/RPC
client on the local unix socket; its wall time is reported too.

Anchor: Samba 4.17's own FSRVP server (rpcd_fsrvp + vfs_btrfs) behind a
private smbd on the same btrfs.  Its server-side cost of
``fss_create_expose`` + ``fss_delete`` is measured from outside:
rpcclient wall time of the sequence minus rpcclient wall time of a bare
``fss_get_sup_version`` (connection set-up).

Usage (root): .venv/bin/python bench/sequence.py [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import btrfsutil  # noqa: E402

from remotevss.agent.authz import Caller  # noqa: E402
from remotevss.agent.config import ShareConfig, load_config  # noqa: E402
from remotevss.agent.service import AgentService  # noqa: E402
from remotevss.agent.transports.unix import serve_unix  # noqa: E402
from remotevss.client.local import LocalClient  # noqa: E402
from remotevss.fsrvp.constants import CTX_BACKUP, HResult  # noqa: E402
from remotevss.loopfs import loop_filesystem  # noqa: E402
from tests.support.samba import PrivateSamba  # noqa: E402


class TimedAgent:
    """Our agent in-process on its own event-loop thread, with per-call server timing."""

    def __init__(self, tmp: Path, shares: dict[str, Path]) -> None:
        self.sock = tmp / "agent.sock"
        cfg = load_config(
            None,
            socket_path=str(self.sock),
            state_dir=str(tmp / "state"),
            expose_dir=str(tmp / "exposed"),
            shares=[ShareConfig(n, str(p)) for n, p in shares.items()],
        )
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.service = AgentService(cfg)
        self._run(self.service.start())
        self.server = self._run(serve_unix(self.service, str(self.sock)))
        self.times: list[float] = []
        inner = self.service.call

        async def timed(caller: Caller, opnum: int, stub: bytes) -> bytes:
            t0 = time.perf_counter()
            try:
                return await inner(caller, opnum, stub)
            finally:
                self.times.append(time.perf_counter() - t0)

        self.service.call = timed  # type: ignore[method-assign]

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            await self.server.wait_closed()
            await self.service.close()

        self._run(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)


def one_sequence(c: LocalClient, names: list[str]) -> None:
    def ok(r):  # type: ignore[no-untyped-def]
        assert r.return_value == HResult.ZERO, hex(r.return_value)
        return r

    uncs = [f"\\\\bench\\{n}\\" for n in names]
    for u in uncs:
        ok(c.is_path_supported(u))
    ok(c.get_supported_version())
    ok(c.set_context(CTX_BACKUP))
    sid = ok(c.start(uuid.uuid4())).shadow_copy_set_id
    cids = [ok(c.add(sid, u)).shadow_copy_id for u in uncs]
    ok(c.prepare(sid))
    ok(c.commit(sid))
    ok(c.expose(sid))
    for cid, u in zip(cids, uncs, strict=True):
        ok(c.get_share_mapping(cid, sid, u))
    ok(c.recovery_complete(sid))
    for cid, u in zip(cids, uncs, strict=True):
        ok(c.delete_share_mapping(sid, cid, u))


def bench_ours(agent: TimedAgent, names: list[str], runs: int) -> dict[str, float]:
    server, wall = [], []
    with LocalClient(str(agent.sock)) as c:
        one_sequence(c, names)  # warm-up
        for _ in range(runs):
            agent.times.clear()
            t0 = time.perf_counter()
            one_sequence(c, names)
            wall.append(time.perf_counter() - t0)
            server.append(sum(agent.times))
    return {
        "server_ms": statistics.median(server) * 1e3,
        "client_wall_ms": statistics.median(wall) * 1e3,
        "server_p90_ms": statistics.quantiles(server, n=10)[-1] * 1e3,
    }


def bench_samba(samba: PrivateSamba, names: list[str], runs: int) -> dict[str, float]:
    base, seq = [], []
    samba.rpcclient("fss_get_sup_version")
    for _ in range(runs):
        t0 = time.perf_counter()
        samba.rpcclient("fss_get_sup_version")
        base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = samba.rpcclient("fss_create_expose backup ro " + " ".join(names)).stdout
        ids = re.findall(r"^([0-9a-f-]{36})\(([0-9a-f-]{36})\): share (\S+)@", out, re.M)
        assert len(ids) == len(names), out
        deletes = "; ".join(f"fss_delete {share} {s} {c}" for s, c, share in ids)
        samba.rpcclient(deletes)
        seq.append(time.perf_counter() - t0)
        time.sleep(1.05)  # Samba names snapshots by the second: two in one second collide
    overhead = statistics.median(base)
    # the create and the delete each pay one connection set-up
    return {
        "server_ms": (statistics.median(seq) - 2 * overhead) * 1e3,
        "connect_ms": overhead * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--anchor-runs", type=int, default=15)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="rvss-bench-") as tmp,
        loop_filesystem("btrfs", 1024, tmp) as mnt,
    ):
        ours = {}
        for i in range(16):
            ours[f"share{i}"] = mnt / f"share{i}"
            btrfsutil.create_subvolume(str(ours[f"share{i}"]))
            (ours[f"share{i}"] / "file.txt").write_text("x" * 4096)
        anchor = {}
        for i in range(16):
            anchor[f"fsrvp_share{i}"] = mnt / f"anchor{i}"
            btrfsutil.create_subvolume(str(anchor[f"fsrvp_share{i}"]))
            (anchor[f"fsrvp_share{i}"] / "file.txt").write_text("x" * 4096)
        agent = TimedAgent(Path(tmp), ours)
        try:
            results["ours_1"] = bench_ours(agent, ["share0"], args.runs)
            results["ours_16"] = bench_ours(agent, sorted(ours), args.runs)
        finally:
            agent.close()
        samba = PrivateSamba(Path(tmp) / "samba", anchor)
        samba.start()
        try:
            results["samba_1"] = bench_samba(samba, ["fsrvp_share0"], args.anchor_runs)
            results["samba_16"] = bench_samba(samba, sorted(anchor), max(5, args.anchor_runs // 3))
        finally:
            samba.stop()
    head = ("case", "ours server ms", "ours wall ms", "samba server ms", "ratio")
    print(f"{head[0]:<10} {head[1]:>15} {head[2]:>13} {head[3]:>16} {head[4]:>7}")
    for n in ("1", "16"):
        o, s = results[f"ours_{n}"], results[f"samba_{n}"]
        print(
            f"{n + ' share':<10} {o['server_ms']:>15.2f} {o['client_wall_ms']:>13.2f} "
            f"{s['server_ms']:>16.2f} {o['server_ms'] / s['server_ms']:>7.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
