"""Benchmark: the FSRVP create+expose+delete sequence on the zfs backend vs btrfs, one run.

Both through our agent in-process over its local unix socket (impacket's
client, bench/sequence.py's TimedAgent and sequence): 1 share and 16 shares,
each share a dataset of one zfs-fuse pool on a file, or a subvolume of one
btrfs on a loop device.  Reported: server-side ms per sequence (median), the
zfs/btrfs ratio, and the *spread* of one 16-share set: the time from the
first to the last snapshot of the set, as the agent takes them now (one
``create`` per share) and, for zfs, through ``create_many`` (one
``zfs snapshot`` per pool where the running ZFS takes several names; zfs-fuse
does not, so there it is one call per dataset, timed).

zfs-fuse is ZFS in user space over FUSE: each ``zfs`` command is a process
plus a round trip to the daemon, so its absolute numbers say little about
kernel OpenZFS; the ratio says what ZFS's command-line interface costs.

Usage (root, zfs-fuse installed): .venv/bin/python bench/zfs_vs_btrfs.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import btrfsutil  # noqa: E402

from bench.sequence import TimedAgent, bench_ours, one_sequence  # noqa: E402
from remotevss.client.local import LocalClient  # noqa: E402
from remotevss.loopfs import loop_filesystem  # noqa: E402
from remotevss.snapshots.base import SnapRequest  # noqa: E402
from remotevss.snapshots.select import BACKENDS  # noqa: E402
from tests.support.zfs_fuse import ZfsFuse  # noqa: E402

NAME = "@GMT-2030.01.01-00.00.00.000000-bench{:03d}"


def agent_spread(agent: TimedAgent, backend: str, names: list[str], runs: int) -> float:
    """Median first-to-last snapshot time (ms) of one set, through the agent.

    The agent takes a set with ``create_many`` where the backend has it: the
    backend's own ``last_spread`` where it keeps one (zfs), else the snapshots'
    btrfs creation times (otime, the kernel's coarse clock), read as they are made."""
    b: Any = BACKENDS[backend]
    otimes: list[float] = []
    wrapped = "create_many" if hasattr(b, "create_many") else "create"
    real: Callable[..., Any] = getattr(b, wrapped)

    def timed(*args: Any, **kw: Any) -> Any:
        out = real(*args, **kw)
        if backend == "btrfs":
            otimes.extend(btrfsutil.subvolume_info(p).otime
                          for p in (out if isinstance(out, list) else [out]))
        return out

    setattr(b, wrapped, timed)
    spreads = []
    try:
        with LocalClient(str(agent.sock)) as c:
            for _ in range(runs):
                otimes.clear()
                one_sequence(c, names)
                if wrapped == "create_many" and hasattr(b, "last_spread"):
                    spreads.append(b.last_spread.seconds)
                elif otimes:
                    spreads.append(max(otimes) - min(otimes))
                else:
                    raise RuntimeError(f"{backend}: no snapshot went through {wrapped}")
    finally:
        delattr(b, wrapped)
    return statistics.median(spreads) * 1e3


def batch_spread(shares: list[Path], runs: int) -> dict[str, float]:
    """create_many of the 16 datasets straight on the backend (the batch path)."""
    zb: Any = BACKENDS["zfs"]
    vols = [zb.check(str(s)) for s in shares]
    spreads, totals = [], []
    for i in range(runs):
        reqs = [SnapRequest(v, NAME.format(i), False) for v in vols]
        t0 = time.perf_counter()
        paths = zb.create_many(reqs)
        totals.append(time.perf_counter() - t0)
        spreads.append(zb.last_spread.seconds)
        calls = zb.last_spread.calls
        for p in paths:
            zb.delete(p)
    return {"spread_ms": statistics.median(spreads) * 1e3,
            "create_many_ms": statistics.median(totals) * 1e3, "zfs_snapshot_calls": calls}


def run_backend(tmp: Path, kind: str, shares: dict[str, Path], runs: int) -> dict[str, Any]:
    agent = TimedAgent(tmp / f"agent-{kind}", shares)
    try:
        backend = agent.service._resolve_share("share0")[1]
        assert backend is not None and backend.backend == kind, backend
        out: dict[str, Any] = {
            "1": bench_ours(agent, ["share0"], runs),
            "16": bench_ours(agent, sorted(shares), max(3, runs // 2)),
            "agent_spread_16_ms": agent_spread(agent, kind, sorted(shares), max(3, runs // 2)),
        }
    finally:
        agent.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rvss-bench-zfs-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "agent-btrfs").mkdir()
        (tmp / "agent-zfs").mkdir()
        with loop_filesystem("btrfs", 1024, tmpdir) as mnt:
            shares = {}
            for i in range(16):
                shares[f"share{i}"] = mnt / f"share{i}"
                btrfsutil.create_subvolume(str(shares[f"share{i}"]))
                (shares[f"share{i}"] / "file.txt").write_text("x" * 4096)
            results["btrfs"] = run_backend(tmp, "btrfs", shares, args.runs)
        daemon = ZfsFuse(tmp / "zfs-fuse.log")
        daemon.start()
        try:
            pool = f"rvbench{int(time.time()) % 100000}"
            pmnt = daemon.pool(pool, tmp, 512)
            shares = {}
            for i in range(16):
                subprocess.run(["zfs", "create", f"{pool}/share{i}"], check=True)
                shares[f"share{i}"] = pmnt / f"share{i}"
                (shares[f"share{i}"] / "file.txt").write_text("x" * 4096)
            results["zfs"] = run_backend(tmp, "zfs", shares, args.runs)
            results["zfs"]["batch"] = batch_spread([shares[f"share{i}"] for i in range(16)],
                                                   max(3, args.runs // 2))
        finally:
            daemon.stop()
    b, z = results["btrfs"], results["zfs"]
    print(f"{'case':<34} {'btrfs ms':>10} {'zfs ms':>10} {'zfs/btrfs':>10}")
    for n in ("1", "16"):
        bs, zs = b[n]["server_ms"], z[n]["server_ms"]
        label = f"sequence, {n} share(s), server"
        print(f"{label:<34} {bs:>10.1f} {zs:>10.1f} {zs / bs:>10.2f}")
    bs, zs = b["agent_spread_16_ms"], z["agent_spread_16_ms"]
    label = "spread of a 16-share set (agent)"
    ratio = f"{zs / bs:>10.2f}" if bs else f"{'-':>10}"  # btrfs otime ticks ~4 ms: often 0
    print(f"{label:<34} {bs:>10.1f} {zs:>10.1f} {ratio}")
    zb = z["batch"]
    print(f"zfs create_many of 16: {zb['create_many_ms']:.1f} ms, spread {zb['spread_ms']:.1f} ms "
          f"in {zb['zfs_snapshot_calls']} zfs snapshot call(s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
