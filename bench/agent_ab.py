"""Benchmark: two versions of the agent and Samba's rpcd_fsrvp, rounds alternating in one run.

Why: on a shared machine the load swings more between two runs of
bench/set_scaling.py than a change moves the figures; running the old agent
(another checkout's ``src``, through PYTHONPATH) and this tree's side by
side, each behind a private smbd of its own, with Samba's own server as the
anchor, compares them under the same load.  Same measurements as
set_scaling.py's curve (rpcclient ``fss_create_expose`` + ``fss_delete``,
net = wall minus two bare connections, the agent's own time from its call
events, the btrfs creation-time spread of the set).

Usage (root): .venv/bin/python bench/agent_ab.py --old-src /path/to/old/src
[--sizes 1,16] [--runs 15] [--auth seal|none]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import btrfsutil  # noqa: E402
from set_scaling import agent_ms, create, delete, snapshot_times, timed  # noqa: E402

from remotevss.loopfs import loop_filesystem  # noqa: E402
from remotevss.samba.private import PrivateAgent, PrivateSamba  # noqa: E402

Row = tuple[float, float, float, float, float]  # connect, create, delete, spread, own (s, ms)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-src", type=Path, required=True, help="the other tree's src directory")
    ap.add_argument("--sizes", default="1,16")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--auth", default="seal", choices=("none", "sign", "seal"))
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    auth = "" if args.auth == "none" else args.auth
    here = str(Path(__file__).resolve().parents[1] / "src")
    srcs = {"samba": None, "new": here, "old": str(args.old_src.resolve())}
    with (
        tempfile.TemporaryDirectory(prefix="rvss-ab-") as tmp,
        loop_filesystem("btrfs", 2048, tmp) as mnt,
    ):
        servers: dict[str, PrivateSamba] = {}
        agents: dict[str, PrivateAgent] = {}
        for kind, src in srcs.items():
            paths = {}
            for i in range(max(sizes)):
                p = mnt / f"{kind}{i}"
                btrfsutil.create_subvolume(str(p))
                (p / "file.txt").write_text("x" * 4096)
                paths[f"share{i}"] = p
            s = PrivateSamba(Path(tmp) / kind, paths, samba_fsrvp=src is None,
                             winbind=src is not None and bool(auth), include_registry=False)
            if src is not None:
                s.env["PYTHONPATH"] = src
                agents[kind] = PrivateAgent(Path(tmp) / f"agent-{kind}", s, verbose=1)
            servers[kind] = s
        try:
            for s in servers.values():
                s.start()
            for a in agents.values():
                a.start()
            while not (servers["samba"].pipe_dir / "fssagentrpc").exists():
                time.sleep(0.05)
            for n in sizes:
                report(n, measure(servers, agents, mnt, n, args.runs, auth))
        finally:
            for a in agents.values():
                a.stop()
            for s in servers.values():
                s.stop()
    return 0


def measure(servers: dict[str, PrivateSamba], agents: dict[str, PrivateAgent], mnt: Path,
            n: int, runs: int, auth: str) -> dict[str, list[Row]]:
    names = [f"share{i}" for i in range(n)]
    for s in servers.values():  # warm-up
        _, ids = create(s, names, auth)
        delete(s, ids, auth)
    time.sleep(1.05)
    rows: dict[str, list[Row]] = {k: [] for k in servers}
    for r in range(runs):
        for kind in list(servers) if r % 2 == 0 else list(reversed(servers)):
            s = servers[kind]
            base, _ = timed(s, "fss_get_sup_version", auth)
            since = time.time() - 0.01
            mark = agents[kind].log.stat().st_size if kind in agents else 0
            c, ids = create(s, names, auth)
            t = snapshot_times(mnt, kind, since)
            d = delete(s, ids, auth)
            own = agent_ms(agents[kind].log, mark) if kind in agents else float("nan")
            rows[kind].append((base, c, d, (max(t) - min(t)) if t else float("nan"), own))
        time.sleep(1.05)  # Samba names snapshots by the second
    return rows


def report(n: int, rows: dict[str, list[Row]]) -> None:
    def med(kind: str, i: int) -> float:
        return statistics.median(x[i] for x in rows[kind])

    nets = {k: statistics.median((x[1] + x[2] - 2 * x[0]) * 1e3 for x in v)
            for k, v in rows.items()}
    print(f"{n} shares, median of {len(rows['samba'])} rounds (ms):")
    for kind in rows:
        print(f"  {kind:<6} net {nets[kind]:8.1f}  create {med(kind, 1) * 1e3:8.1f}"
              f"  delete {med(kind, 2) * 1e3:8.1f}  spread {med(kind, 3) * 1e3:6.1f}"
              f"  own {med(kind, 4):8.1f}")
    print(f"  net ours/Samba: new {nets['new'] / nets['samba']:.2f}, "
          f"old {nets['old'] / nets['samba']:.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
