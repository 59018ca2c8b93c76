"""Benchmark: shadow copy sets of 1, 4, 16 and 64 shares through smbd, ours vs Samba's.

Why: a set's cost should not grow with its share count much faster than
Samba's own server's does (issue 13).  Two private Samba instances on one
loop btrfs, runs alternating (as bench/samba_sequence.py): Samba 4.17's
rpcd_fsrvp + vfs_btrfs (the anchor), and smbd without rpcd_fsrvp with a real
``remotevss agent`` on its pipe (default configuration: registry snapshot
shares).  Every share is a subvolume of its own.

Reported, side by side in one run:

* **curve**: per set size, median wall time of ``rpcclient -c
  'fss_create_expose backup ro S...'`` plus ``fss_delete`` for each share;
  "net" = wall minus two bare rpcclient connections (a ``fss_get_sup_version``
  in the same runs), and for ours the agent's own time (its call events'
  ``duration_ms``).  The growth rate is (size 64 - size 1) / 63 per share.
* **per call**: what one call costs through smbd's pipe alone (16 extra bare
  ``fss_get_sup_version`` in one connection) against one DeleteShareMapping
  (the deletion of the largest set minus the smallest, per share): the part of
  a set's time that the protocol's one-call-per-share deletion fixes.
* **spread**: the btrfs creation times (``otime``, ns) of the first and the
  last snapshot of one set: how far apart in time the set's images are.
* **counts**: fsync/fdatasync system calls of the agent's process tree
  (``strace -f -c``, in a separate run so tracing does not slow the timed
  ones) and the agent's own transaction counters (``remotevss status``:
  journal, registry, share-ACL transactions, smbd message rounds), for the
  creation+expose command and for the deletion command separately.
* **memory**: RSS summed over the agent's process tree (the agent, its light
  registry child with ``--include-registry``, ``ntlm_auth`` helpers), and of
  Samba's ``rpcd_fsrvp``: idle after a 16-share set (2 s and, for a worker
  child's idle exit, 33 s after it), and the
  peak while 8 clients run 1-share sequences at once.

Usage (root): .venv/bin/python bench/set_scaling.py [--runs 5] [--sizes 1,4,16,64]
[--auth seal|none] [--include-registry] [--json out.json]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import btrfsutil  # noqa: E402

from remotevss.agent import admin  # noqa: E402
from remotevss.loopfs import loop_filesystem  # noqa: E402
from remotevss.samba.private import PrivateAgent, PrivateSamba  # noqa: E402
from remotevss.samba.worker import IDLE_EXIT  # noqa: E402

_EXPOSED = re.compile(r"^([0-9a-f-]{36})\(([0-9a-f-]{36})\): share (\S+)@", re.M)
_DURATION = re.compile(r'"duration_ms": ([0-9.]+)')
CLIENTS = 8
BARE = 16  # extra bare calls (GetSupportedVersion) timed in one connection: the pipe's cost


def agent_ms(log: Path, start: int) -> float:
    with open(log, "rb") as f:
        f.seek(start)
        return sum(float(x) for x in _DURATION.findall(f.read().decode(errors="replace")))


def timed(samba: PrivateSamba, command: str, auth: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = samba.rpcclient(command, auth=auth)
    return time.perf_counter() - t0, out.stdout


# BTRFS_IOC_GET_SUBVOL_INFO: libbtrfsutil's Python binding rounds otime to the second
_GET_SUBVOL_INFO = (2 << 30) | (504 << 16) | (0x94 << 8) | 60
_OTIME_OFFSET = 392  # struct btrfs_ioctl_get_subvol_info_args: otime.sec (u64), .nsec (u32)


def otime(path: str) -> float:
    """A subvolume's creation time with nanoseconds (the kernel's root item otime)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(504)
        fcntl.ioctl(fd, _GET_SUBVOL_INFO, buf)
    finally:
        os.close(fd)
    sec, nsec = struct.unpack_from("<QI", buf, _OTIME_OFFSET)
    return sec + nsec / 1e9


def snapshot_times(mnt: Path, prefix: str, since: float) -> list[float]:
    """Creation times of the snapshots of the ``prefix*`` subvolumes made since
    ``since`` (wherever the server puts them)."""
    out: list[float] = []
    with btrfsutil.SubvolumeIterator(str(mnt), info=True) as it:
        for path, info in it:
            if path.startswith(prefix) and any(info.parent_uuid):
                t = otime(str(mnt / path))
                if t >= since:
                    out.append(t)
    return out


def create(samba: PrivateSamba, names: list[str], auth: str) -> tuple[float, list[Any]]:
    wall, out = timed(samba, "fss_create_expose backup ro " + " ".join(names), auth)
    ids = _EXPOSED.findall(out)
    assert len(ids) == len(names), out
    return wall, ids


def delete(samba: PrivateSamba, ids: list[Any], auth: str) -> float:
    return timed(samba, "; ".join(f"fss_delete {sh} {s} {c}" for s, c, sh in ids), auth)[0]


# ------------------------------------------------------------------ processes


def children(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        tree += kids
        todo += kids
    return tree


def rss_kb(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


def named(comm: str, conf: Path) -> list[int]:
    """Pids of processes called ``comm`` started with config ``conf``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                if f.read().strip() != comm:
                    continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if str(conf).encode() in f.read():
                    out.append(int(d))
        except OSError:
            continue
    return out


class Strace:
    """``strace -f -c`` of fsync/fdatasync over some processes, for one command."""

    def __init__(self, pids: list[int], out: Path) -> None:
        self.out = out
        argv = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out)]
        for p in pids:
            argv += ["-p", str(p)]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # attached

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        calls = 0
        for line in self.out.read_text().splitlines():
            f = line.split()
            if f and f[-1] in ("fsync", "fdatasync") and len(f) >= 5:
                calls += int(f[3])
        return calls


def io_counters(agent: PrivateAgent) -> dict[str, int]:
    try:
        st = admin.request(str(agent.socket) + ".admin", "status")
    except (admin.AdminError, admin.AgentUnreachable):
        return {}
    return dict(st.get("io") or {})


def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b}


# ------------------------------------------------------------------ the parts


def curve(anchor: PrivateSamba, ours: PrivateSamba, agent: PrivateAgent,
          mnt: Path, n: int, runs: int, auth: str) -> dict[str, Any]:
    names = [f"share{i}" for i in range(n)]
    res: dict[str, Any] = {}
    for server in (anchor, ours):  # warm-up (helpers, caches)
        _, ids = create(server, names, auth)
        delete(server, ids, auth)
    time.sleep(1.05)
    rows: dict[str, list[tuple[float, float, float, float]]] = {"samba": [], "ours": []}
    bare: dict[str, list[float]] = {"samba": [], "ours": []}
    own: list[float] = []
    for _ in range(runs):
        for kind, server in (("samba", anchor), ("ours", ours)):
            base, _ = timed(server, "fss_get_sup_version", auth)
            many, _ = timed(server, "; ".join(["fss_get_sup_version"] * (BARE + 1)), auth)
            bare[kind].append((many - base) / BARE)
            since = time.time() - 0.01
            mark = agent.log.stat().st_size
            c, ids = create(server, names, auth)
            times = snapshot_times(mnt, kind, since)
            d = delete(server, ids, auth)
            if kind == "ours":
                own.append(agent_ms(agent.log, mark))
            rows[kind].append((base, c, d, (max(times) - min(times)) if times else float("nan")))
        time.sleep(1.05)  # Samba names snapshots by the second
    for kind, r in rows.items():
        base = statistics.median(x[0] for x in r)
        wall = statistics.median(x[1] + x[2] for x in r)
        res[kind] = {
            "create_ms": statistics.median(x[1] for x in r) * 1e3,
            "delete_ms": statistics.median(x[2] for x in r) * 1e3,
            "wall_ms": wall * 1e3,
            "connect_ms": base * 1e3,
            "net_ms": (wall - 2 * base) * 1e3,
            "spread_ms": statistics.median(x[3] for x in r) * 1e3,
            "bare_call_ms": statistics.median(bare[kind]) * 1e3,
        }
    res["ours"]["agent_ms"] = statistics.median(own)
    return res


def counts(ours: PrivateSamba, agent: PrivateAgent, n: int, auth: str,
           tmp: Path) -> dict[str, Any]:
    """fsyncs and transactions of one set of ``n`` shares (untimed)."""
    assert agent.proc is not None
    names = [f"share{i}" for i in range(n)]
    out: dict[str, Any] = {}
    pids = children(agent.proc.pid)
    c0 = io_counters(agent)
    tr = Strace(pids, tmp / f"strace-create-{n}")
    _, ids = create(ours, names, auth)
    out["create_fsyncs"] = tr.stop()
    c1 = io_counters(agent)
    tr = Strace(children(agent.proc.pid), tmp / f"strace-delete-{n}")
    delete(ours, ids, auth)
    out["delete_fsyncs"] = tr.stop()
    c2 = io_counters(agent)
    out["create_io"] = diff(c0, c1)
    out["delete_io"] = diff(c1, c2)
    time.sleep(1.05)
    return out


def memory(anchor: PrivateSamba, ours: PrivateSamba, agent: PrivateAgent,
           auth: str, seconds: float) -> dict[str, float]:
    """RSS (MB): agent tree and Samba's rpcd_fsrvp, idle and peak under CLIENTS clients."""
    assert agent.proc is not None

    def agent_rss() -> int:
        return rss_kb(children(agent.proc.pid))  # type: ignore[union-attr]

    def samba_rss() -> int:
        return rss_kb(named("rpcd_fsrvp", anchor.conf))

    for server in (anchor, ours):  # one 16-share set first, as in the issue
        _, ids = create(server, [f"share{i}" for i in range(16)], auth)
        delete(server, ids, auth)
    time.sleep(2)
    res = {"ours_idle_mb": agent_rss() / 1024, "samba_idle_mb": samba_rss() / 1024,
           "agent_alone_idle_mb": rss_kb([agent.proc.pid]) / 1024}
    time.sleep(IDLE_EXIT + 3)  # the agent's worker child (if any) exits when idle
    res["ours_idle_late_mb"] = agent_rss() / 1024
    res["samba_idle_late_mb"] = samba_rss() / 1024
    for kind, server, probe in (("ours", ours, agent_rss), ("samba", anchor, samba_rss)):
        stop = time.monotonic() + seconds
        peak = 0

        def client(i: int, server: PrivateSamba = server, stop: float = stop) -> None:
            while time.monotonic() < stop:
                out = server.rpcclient(f"fss_create_expose backup ro share{i}", check=False,
                                       auth=auth)
                for s, c, sh in _EXPOSED.findall(out.stdout):
                    server.rpcclient(f"fss_delete {sh} {s} {c}", check=False, auth=auth)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, probe())
            time.sleep(0.1)
        res[f"{kind}_busy_peak_mb"] = peak / 1024
        time.sleep(1.05)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="1,4,16,64")
    ap.add_argument("--auth", default="seal", choices=("none", "sign", "seal"))
    ap.add_argument("--busy-seconds", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--helpers", type=int,
                    help="the agent's [rpc_auth] helpers (default: the agent's default)")
    ap.add_argument("--include-registry", action="store_true",
                    help="'include = registry' in both smb.conf (the agent's registry "
                         "writes then run in its light child); default: 'registry shares "
                         "= yes' alone, as 'remotevss setup samba' writes")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    auth = "" if args.auth == "none" else args.auth
    most = max(max(sizes), 16)
    results: dict[str, Any] = {"curve": {}, "counts": {}}
    with (
        tempfile.TemporaryDirectory(prefix="rvss-bench-") as tmp,
        loop_filesystem("btrfs", 2048, tmp) as mnt,
    ):
        paths: dict[str, dict[str, Path]] = {"samba": {}, "ours": {}}
        for kind, table in paths.items():
            for i in range(most):
                path = mnt / f"{kind}{i}"
                btrfsutil.create_subvolume(str(path))
                (path / "file.txt").write_text("x" * 4096)
                table[f"share{i}"] = path
        inc = args.include_registry
        anchor = PrivateSamba(Path(tmp) / "anchor", paths["samba"], samba_fsrvp=True,
                              include_registry=inc)
        ours = PrivateSamba(Path(tmp) / "ours", paths["ours"], samba_fsrvp=False,
                            winbind=bool(auth), include_registry=inc)
        agent = PrivateAgent(Path(tmp) / "agent", ours, verbose=1,
                             rpc_auth={"helpers": args.helpers} if args.helpers else {})
        try:
            anchor.start()
            ours.start()
            agent.start()
            while not (anchor.pipe_dir / "fssagentrpc").exists():
                time.sleep(0.05)
            for n in sizes:
                results["curve"][n] = curve(anchor, ours, agent, mnt, n, args.runs, auth)
                results["counts"][n] = counts(ours, agent, n, auth, Path(tmp))
            results["memory"] = memory(anchor, ours, agent, auth, args.busy_seconds)
        finally:
            agent.stop()
            ours.stop()
            anchor.stop()
    report(results, sizes, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict[str, Any], sizes: list[int], args: argparse.Namespace) -> None:
    print(f"create+expose + delete through smbd, auth {args.auth}, median of {args.runs} runs (ms)")
    cols = ("create_ms", "delete_ms", "wall_ms", "net_ms", "spread_ms")
    print(f"{'shares':>6} {'server':<6} " + " ".join(f"{c[:-3]:>8}" for c in cols)
          + f" {'agent':>8}")
    for n in sizes:
        for kind in ("samba", "ours"):
            r = results["curve"][n][kind]
            extra = f" {r['agent_ms']:>8.1f}" if kind == "ours" else ""
            print(f"{n:>6} {kind:<6} " + " ".join(f"{r[c]:>8.1f}" for c in cols) + extra)
        o, s = results["curve"][n]["ours"], results["curve"][n]["samba"]
        print(f"{'':>6} ratio ours/samba: wall {o['wall_ms'] / s['wall_ms']:.2f}, "
              f"net {o['net_ms'] / s['net_ms']:.2f}")
    lo, hi = min(sizes), max(sizes)
    if hi > lo:
        for kind in ("samba", "ours"):
            a, b = results["curve"][lo][kind], results["curve"][hi][kind]
            rate = (b["net_ms"] - a["net_ms"]) / (hi - lo)
            line = f"growth {kind}: net {rate:.2f} ms per share"
            if kind == "ours":
                line += f", agent's own {(b['agent_ms'] - a['agent_ms']) / (hi - lo):.2f} ms/share"
            print(line)
    if hi > lo:
        print(f"per call through smbd ({BARE} bare GetSupportedVersion in one connection) "
              f"and per DeleteShareMapping (delete of {hi} shares minus {lo}, per share), ms")
        for kind in ("samba", "ours"):
            a, b = results["curve"][lo][kind], results["curve"][hi][kind]
            per_delete = (b["delete_ms"] - a["delete_ms"]) / (hi - lo)
            print(f"  {kind:<6} bare call {b['bare_call_ms']:.2f}, DeleteShareMapping "
                  f"{per_delete:.2f}")
    print("per set, ours: fsync calls of the agent's tree / agent's transaction counters")
    for n in sizes:
        c = results["counts"][n]
        print(f"{n:>6} shares: create+expose {c['create_fsyncs']} fsyncs {c['create_io']}; "
              f"delete {c['delete_fsyncs']} fsyncs {c['delete_io']}")
    m = results.get("memory", {})
    if m:
        print(f"RSS MB, ours = the agent's process tree, Samba = its rpcd_fsrvp; idle 2 s "
              f"after a 16-share set, idle {IDLE_EXIT + 3:.0f} s after it, peak with {CLIENTS} "
              "clients")
        for kind in ("ours", "samba"):
            print(f"  {kind:<6} idle {m[kind + '_idle_mb']:.1f}, later "
                  f"{m.get(kind + '_idle_late_mb', float('nan')):.1f}, "
                  f"busy peak {m[kind + '_busy_peak_mb']:.1f}")
        print(f"  the agent process alone, idle: {m.get('agent_alone_idle_mb', float('nan')):.1f}")


if __name__ == "__main__":
    sys.exit(main())
