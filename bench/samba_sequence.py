"""Benchmark: rpcclient ``fss_create_expose`` + ``fss_delete`` through smbd, ours vs Samba's.

Two private Samba instances side by side on one loop btrfs, runs alternating:

* anchor: Samba 4.17's own rpcd_fsrvp + vfs_btrfs (snapshots in the share);
* ours: smbd without rpcd_fsrvp (docs/samba.md, recipe B) and ``remotevss
  agent`` on its pipe, in its default configuration (spec mode, Samba's
  shares, registry snapshot shares).

Each run is one ``rpcclient -c 'fss_create_expose backup ro S...'`` (the
client's whole creation sequence: IsPathSupported, GetSupportedVersion,
SetContext, Start, Add, Prepare, Commit, Expose, GetShareMapping) and one
``rpcclient -c 'fss_delete ...'`` per run, wall time, for 1 share and for 16
shares (each a subvolume of its own).  "net" subtracts two rpcclient
connection set-ups (median wall time of a bare ``fss_get_sup_version``,
measured in the same runs) and so approximates the servers' own cost; for
our agent, "agent" is the sum of its own per-call times (``duration_ms`` of
its call events, from the complete request to the encoded response).

``--auth none,seal`` runs the same alternation once per binding level
(rpcclient's ``[sign]``/``[seal]``: NTLM through SPNEGO, checked by Samba's
gensec in the anchor and by ``ntlm_auth`` through winbindd for us), so the
cost of privacy over none for the whole sequence is measured in one process
run, side by side; ``--shares 1`` skips the 16-share case.

Usage (root): .venv/bin/python bench/samba_sequence.py [--runs 20] [--auth none,seal]
[--shares 1,16]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import btrfsutil  # noqa: E402

from remotevss.loopfs import loop_filesystem  # noqa: E402
from remotevss.samba.private import PrivateAgent, PrivateSamba  # noqa: E402

_EXPOSED = re.compile(r"^([0-9a-f-]{36})\(([0-9a-f-]{36})\): share (\S+)@", re.M)
_DURATION = re.compile(r'"duration_ms": ([0-9.]+)')


def agent_ms(log: Path, start: int) -> float:
    """Sum of the agent's per-call times logged after byte offset ``start``."""
    with open(log, "rb") as f:
        f.seek(start)
        return sum(float(x) for x in _DURATION.findall(f.read().decode(errors="replace")))


def _timed(samba: PrivateSamba, command: str, auth: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = samba.rpcclient(command, auth=auth)
    return time.perf_counter() - t0, out.stdout


def one_run(samba: PrivateSamba, names: list[str], auth: str = "") -> tuple[float, float, float]:
    """(connect + GetSupportedVersion, create+expose, delete) wall seconds."""
    base, _ = _timed(samba, "fss_get_sup_version", auth)
    create, out = _timed(samba, "fss_create_expose backup ro " + " ".join(names), auth)
    ids = _EXPOSED.findall(out)
    assert len(ids) == len(names), out
    delete, _ = _timed(
        samba, "; ".join(f"fss_delete {share} {s} {c}" for s, c, share in ids), auth
    )
    return base, create, delete


def summary(runs: list[tuple[float, float, float]]) -> dict[str, float]:
    base = statistics.median(r[0] for r in runs)
    wall = [r[1] + r[2] for r in runs]
    return {
        "create_ms": statistics.median(r[1] for r in runs) * 1e3,
        "delete_ms": statistics.median(r[2] for r in runs) * 1e3,
        "wall_ms": statistics.median(wall) * 1e3,
        "connect_ms": base * 1e3,
        "net_ms": (statistics.median(wall) - 2 * base) * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--auth", default="none", help="binding levels: none, sign, seal")
    ap.add_argument("--shares", default="1,16", help="set sizes")
    args = ap.parse_args()
    levels = [x.strip() for x in args.auth.split(",")]
    sizes = [int(x) for x in args.shares.split(",")]
    if not set(levels) <= {"none", "sign", "seal"}:
        ap.error("--auth takes none, sign, seal")
    results: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="rvss-bench-") as tmp,
        loop_filesystem("btrfs", 1024, tmp) as mnt,
    ):
        shares: dict[str, dict[str, Path]] = {"samba": {}, "ours": {}}
        for kind, table in shares.items():
            for i in range(16):
                path = mnt / f"{kind}{i}"
                btrfsutil.create_subvolume(str(path))
                (path / "file.txt").write_text("x" * 4096)
                table[f"share{i}"] = path
        anchor = PrivateSamba(Path(tmp) / "anchor", shares["samba"], samba_fsrvp=True)
        ours = PrivateSamba(  # winbindd: our NTLM binds go through ntlm_auth
            Path(tmp) / "ours", shares["ours"], samba_fsrvp=False, winbind=levels != ["none"]
        )
        agent = PrivateAgent(Path(tmp) / "agent", ours, verbose=1)  # call events: timings
        try:
            anchor.start()
            ours.start()
            agent.start()
            fss = anchor.pipe_dir / "fssagentrpc"
            while not fss.exists():
                time.sleep(0.05)
            for n, level in ((n, lv) for n in sizes for lv in levels):
                auth = "" if level == "none" else level
                names = [f"share{i}" for i in range(n)]
                done: dict[str, list[tuple[float, float, float]]] = {"samba": [], "ours": []}
                own: list[float] = []
                for server in (anchor, ours):  # warm-up (helpers, caches)
                    one_run(server, names, auth)
                time.sleep(1.05)
                for _ in range(args.runs):
                    done["samba"].append(one_run(anchor, names, auth))
                    mark = agent.log.stat().st_size
                    done["ours"].append(one_run(ours, names, auth))
                    own.append(agent_ms(agent.log, mark))
                    # Samba names snapshots by the second: let each run have its own
                    time.sleep(1.05)
                key = f"{n}_{level}"
                results[f"samba_{key}"] = summary(done["samba"])
                results[f"ours_{key}"] = summary(done["ours"])
                results[f"ours_{key}"]["agent_ms"] = statistics.median(own)
        finally:
            agent.stop()
            ours.stop()
            anchor.stop()
    print(f"rpcclient fss_create_expose + fss_delete through smbd, median of {args.runs} runs (ms)")
    head = ("case", "server", "create", "delete", "wall", "connect", "net")
    print(f"{head[0]:<15} {head[1]:<7} " + " ".join(f"{h:>8}" for h in head[2:]))
    for n, level in ((n, lv) for n in sizes for lv in levels):
        key = f"{n}_{level}"
        for kind in ("samba", "ours"):
            r = results[f"{kind}_{key}"]
            cols = ("create_ms", "delete_ms", "wall_ms", "connect_ms", "net_ms")
            case = f"{n} share {level}"
            print(f"{case:<15} {kind:<7} " + " ".join(f"{r[c]:>8.1f}" for c in cols))
        o, s = results[f"ours_{key}"], results[f"samba_{key}"]
        print(
            f"{'':<15} ratio ours/samba: wall {o['wall_ms'] / s['wall_ms']:.2f}, "
            f"net {o['net_ms'] / s['net_ms']:.2f}; agent's own time {o['agent_ms']:.1f} ms"
        )
    for n, level in ((n, lv) for n in sizes for lv in levels if lv != "none"):
        if "none" not in levels:
            break
        for kind in ("samba", "ours"):
            cost = (results[f"{kind}_{n}_{level}"]["create_ms"]
                    - results[f"{kind}_{n}_none"]["create_ms"])  # fmt: skip
            print(f"{level} over none, {n}-share creation sequence, {kind}: {cost:+.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
