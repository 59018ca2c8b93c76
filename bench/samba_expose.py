"""Benchmark: snapshot-share exposure through Samba's registry, ours vs ``net conf``.

Ours: :class:`remotevss.samba.registry_exposer.RegistryExposer` --
``expose`` (clone definition + share ACL, one registry transaction, messages
to smbd) and ``unexpose`` (delete, ACL entry, FORCE_TDIS + CONF_UPDATED), in
three set-ups measured in one run: the registry written with the tdb binding
in this process (samba/regdb.py, messages as datagrams, samba/dgm.py), the
same in the tiny light child (when loadparm holds registry.tdb), and the
python-samba worker child (the fallback, and what the agent used before).
Messages alone: datagrams vs python-samba's ``Messaging`` vs ``smbcontrol``.
Baseline: what an agent shelling out would do -- ``net conf addshare`` /
``net conf delshare`` (each a process start), plus ``smbcontrol smbd
reload-config`` / ``close-share`` to tell smbd.  A private smbd (no FSRVP
server) on a loop btrfs, base share with a stored ACL so it is copied, and
``--sessions`` idle SMB sessions open (one smbd child each, all of which get
our messages).

Usage (root): .venv/bin/python bench/samba_expose.py [--runs 50] [--sessions 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import btrfsutil  # noqa: E402
from impacket.smbconnection import SMBConnection  # noqa: E402

from remotevss.loopfs import loop_filesystem  # noqa: E402
from remotevss.samba import dgm  # noqa: E402
from remotevss.samba.conf import InProcessSambaConf, SambaConf  # noqa: E402
from remotevss.samba.light import LightOps, LightPaths  # noqa: E402
from remotevss.samba.notify import SmbdNotifier  # noqa: E402
from remotevss.samba.registry_exposer import RegistryExposer  # noqa: E402
from remotevss.samba.shares import SambaShareTable  # noqa: E402
from remotevss.samba.worker import SambaWorker  # noqa: E402
from tests.support.samba import PASSWORD, PrivateSamba  # noqa: E402


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def expose_cycle(
    exposer: RegistryExposer, snap: Path, runs: int
) -> tuple[list[float], list[float]]:
    """``runs`` exposures of fresh snapshot share names, then their removal: the times."""
    names = [f"data@{{{uuid.uuid4()}}}" for _ in range(runs)]
    it = iter(names)
    expose = timed(lambda: exposer.expose(next(it), "data", str(snap), False), runs)
    it = iter(names)
    return expose, timed(lambda: exposer.unexpose(next(it)), runs)


def _rss_kb(pid: int | None) -> int:
    if pid is None:
        return 0
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--baseline-runs", type=int, default=10)
    ap.add_argument("--sessions", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rvss-bench-expose-") as tmp:
        work = Path(tmp)
        with loop_filesystem("btrfs", 512, work) as mnt:
            data = mnt / "data"
            btrfsutil.create_subvolume(str(data))
            snap = mnt / "snap"
            btrfsutil.create_snapshot(str(data), str(snap), read_only=True)
            samba = PrivateSamba(work / "samba", {"data": data}, samba_fsrvp=False)
            samba.start()
            try:
                samba.sharesec("data", "--replace=S-1-1-0:ALLOWED/0x0/READ")
                sessions = []
                for _ in range(args.sessions):
                    c = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=samba.port)
                    c.login("root", PASSWORD)
                    c.connectTree("data")
                    sessions.append(c)
                # without "include = registry" loadparm leaves registry.tdb closed in
                # this process, as in the agent with "registry shares = yes" alone
                conf_path = work / "smb-noinclude.conf"
                conf_path.write_text(samba.conf.read_text().replace("include = registry\n", ""))
                conf = SambaConf(conf_path)
                paths = LightPaths.from_conf(conf)
                table = SambaShareTable(conf)
                light = LightOps(paths)
                exposer = RegistryExposer(conf, ops=light)
                conf.registry_reader = exposer.read_share
                conf.registry_names_reader = exposer.share_names
                expose, unexpose = expose_cycle(exposer, snap, args.runs)
                lookup_file = timed(lambda: table.lookup("data"), 1000)
                samba.net("conf", "addshare", "regshare", str(data))
                lookup_reg = timed(lambda: table.lookup("regshare"), 1000)
                messages = timed(lambda: light.notify(conf_updated=True), args.runs)

                def child_setup(worker: SambaWorker) -> dict[str, float]:
                    t0 = time.perf_counter()
                    worker.check()  # the child's start: once per set (idle exit 30 s)
                    start = time.perf_counter() - t0
                    wexposer = RegistryExposer(conf, ops=worker)
                    conf.registry_reader = wexposer.read_share
                    wexpose, wunexpose = expose_cycle(wexposer, snap, args.runs)
                    wlookup = timed(lambda: table.lookup("regshare"), 300)
                    rss = _rss_kb(worker.pid)
                    worker.close()
                    return {"expose_ms": median_ms(wexpose), "unexpose_ms": median_ms(wunexpose),
                            "start_ms": round(start * 1000, 1), "rss_mb": round(rss / 1024, 1),
                            "lookup_registry_share_us": round(statistics.median(wlookup) * 1e6, 1)}

                light_child = child_setup(
                    SambaWorker(str(conf_path), mode="light", light_paths=paths)
                )
                samba_child = child_setup(SambaWorker(str(conf_path)))
                conf.registry_reader = exposer.read_share
                # python-samba's messaging, in this process (what the worker did)
                s4messages = timed(SmbdNotifier(InProcessSambaConf(conf_path)).conf_updated,
                                   args.runs)

                base = [f"data@{{{uuid.uuid4()}}}" for _ in range(args.baseline_runs)]
                it = iter(base)
                net_add = timed(
                    lambda: samba.net("conf", "addshare", next(it), str(snap)), len(base)
                )
                it = iter(base)
                net_del = timed(lambda: samba.net("conf", "delshare", next(it)), len(base))

                def smbcontrol(*a: str) -> None:
                    subprocess.run(
                        ["smbcontrol", "-s", str(samba.conf), "smbd", *a],
                        check=True,
                        capture_output=True,
                    )

                reload_ = timed(lambda: smbcontrol("reload-config"), len(base))
                close = timed(lambda: smbcontrol("close-share", "nosuch"), len(base))
                result = {
                    "smbd_processes_messaged": len(dgm.peers(dgm.socket_dir(paths.socket_dirs)
                                                             or "")),
                    "expose_ms": median_ms(expose),
                    "unexpose_ms": median_ms(unexpose),
                    "light_child": light_child,
                    "python_samba_worker": samba_child,
                    "notify_conf_updated_datagrams_ms": median_ms(messages),
                    "notify_conf_updated_samba_messaging_ms": median_ms(s4messages),
                    "lookup_file_share_us": round(statistics.median(lookup_file) * 1e6, 1),
                    "lookup_registry_share_us": round(statistics.median(lookup_reg) * 1e6, 1),
                    "net_conf_addshare_ms": median_ms(net_add),
                    "net_conf_delshare_ms": median_ms(net_del),
                    "smbcontrol_reload_config_ms": median_ms(reload_),
                    "smbcontrol_close_share_ms": median_ms(close),
                }  # fmt: skip
                result["baseline_expose_ms"] = round(
                    result["net_conf_addshare_ms"] + result["smbcontrol_reload_config_ms"], 3
                )
                result["baseline_unexpose_ms"] = round(
                    result["net_conf_delshare_ms"]
                    + result["smbcontrol_close_share_ms"]
                    + result["smbcontrol_reload_config_ms"],
                    3,
                )
                print(json.dumps(result, indent=2))
                for c in sessions:
                    c.close()
            finally:
                samba.stop()


if __name__ == "__main__":
    main()
