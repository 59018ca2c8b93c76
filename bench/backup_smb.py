r"""Benchmark: copy-out over SMB 3 from Samba on loopback, and ``backup run \\host\share``.

A loop btrfs with one share holding bench/backup.py's mixed dataset (40 % of
the bytes in ~100 MiB files, 35 % in 1-8 MiB files, 25 % in small files),
served by a private smbd with Samba's own rpcd_fsrvp.  Measured, warm page
cache, smbd and Python sharing the machine's cores:

1. copy-out alone: ``SmbSource`` walks the share and reads every byte
   (``SmbFile``: small files in one compound, large ones with 2 MiB reads, two
   in flight), data discarded; with AES-GCM encryption (the default) and with
   signing only; all files, and the large files alone;
2. ``remotevss backup run \\127.0.0.1\data --read smb``: shadow copy set,
   copy into a fresh repository, release; then an unchanged incremental;
3. the same with the local fast path (``--smb-conf``: the snapshot path read
   directly).

Usage (root): .venv/bin/python bench/backup_smb.py [--size-gb 0.5] [--files 15000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import btrfsutil  # noqa: E402
from backup import generate  # noqa: E402

from remotevss.backup.smb import SmbSession, SmbSource  # noqa: E402
from remotevss.backup.snapshot_source import DIR, FILE  # noqa: E402
from remotevss.loopfs import loop_filesystem  # noqa: E402
from tests.support.samba import PASSWORD, PrivateSamba  # noqa: E402


def copy_out(port: int, share: str, encrypt: bool, subdir: str = "",
             security: bool = True) -> dict[str, float]:
    """Read every file of the share through SmbSource; returns files, bytes, seconds."""
    t0 = time.perf_counter()
    nfiles = nbytes = 0
    with SmbSession("127.0.0.1", port=port, username="root", password=PASSWORD,
                    encrypt=encrypt) as session:
        src = SmbSource(session, share, "data", security=security)
        stack = [subdir]
        buf = memoryview(bytearray(8 << 20))
        while stack:
            rel = stack.pop()
            entries = src.scandir(rel)
            src.will_read(rel, [e for e in entries if e.type == FILE])
            for e in entries:
                child = f"{rel}/{e.name}" if rel else e.name
                if e.type == DIR:
                    stack.append(child)
                    continue
                f = src.open(child, e)
                try:
                    for off, length in f.extents():
                        pos = off
                        while pos < off + length:
                            n = f.readinto(pos, buf[:min(len(buf), off + length - pos)])
                            if n == 0:
                                break
                            pos += n
                            nbytes += n
                finally:
                    f.close()
                nfiles += 1
        src.close()
    return {"files": nfiles, "bytes": nbytes, "seconds": round(time.perf_counter() - t0, 3)}


def cli(args: list[str]) -> tuple[float, float, dict[str, object]]:
    """Wall seconds, peak RSS (MB) and the JSON result of ``remotevss backup ...``."""
    env = dict(os.environ, REMOTEVSS_PASSWORD=PASSWORD, REMOTEVSS_BACKUP_PASSWORD="bench")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "remotevss.cli", "backup", *args, "--json"],
                       capture_output=True, text=True, env=env, check=False)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"backup {args[0]} failed ({r.returncode}): {r.stderr}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return took, max(rss, before) / 1024, json.loads(r.stdout) if r.stdout.strip() else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=0.5)
    ap.add_argument("--files", type=int, default=15000)
    ap.add_argument("--workdir", default=None, help="scratch directory (default: /var/tmp)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop btrfs, smbd)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rvss-bench-smb-", dir=args.workdir or "/var/tmp"))
    results: dict[str, object] = {}
    size_mb = int(args.size_gb * 1000 * 3) + 512
    with loop_filesystem("btrfs", size_mb, work) as mnt:
        btrfsutil.create_subvolume(str(mnt / "data"))
        t0 = time.perf_counter()
        nfiles, nbytes = generate(mnt / "data", args.size_gb, args.files)
        print(f"dataset: {nfiles} files, {nbytes / 1e6:.0f} MB "
              f"(generated in {time.perf_counter() - t0:.1f} s)", flush=True)
        samba = PrivateSamba(work / "samba", {"data": mnt / "data"})
        samba.start()
        sock = samba.root / "ncalrpc" / "np" / "fssagentrpc"
        while not sock.exists():
            time.sleep(0.05)
        try:
            for name, enc, sub, sec in (
                    ("copy-out all, encrypted", True, "", True),
                    ("copy-out all, signed only", False, "", True),
                    ("copy-out large files, encrypted", True, "large", True),
                    ("copy-out large files, signed only", False, "large", True),
                    ("copy-out medium files, encrypted", True, "medium", True),
                    ("copy-out small files, encrypted", True, "small", True),
                    ("copy-out small files, no security desc.", True, "small", False)):
                r = copy_out(samba.port, "data", enc, sub, sec)
                r["MB/s"] = round(r["bytes"] / r["seconds"] / 1e6, 1)
                r["files/s"] = round(r["files"] / r["seconds"], 1)
                results[name] = r
                print(f"{name:40s} {r['files']:7d} files {r['bytes'] / 1e6:8.1f} MB "
                      f"{r['seconds']:7.2f} s {r['MB/s']:7.1f} MB/s {r['files/s']:8.1f} files/s",
                      flush=True)
            for mode in ("smb", "local"):
                repo = work / f"repo-{mode}"
                cli(["init", "--repo", str(repo)])
                run = ["run", "-U", "root", "-p", str(samba.port), "--repo", str(repo),
                       "--read", mode, "--smb-conf", str(samba.conf), r"\\127.0.0.1\data"]
                full, rss, doc = cli(run)
                time.sleep(1.1)  # Samba names snapshots by the second
                incr, rss2, doc2 = cli(run)
                time.sleep(1.1)
                stats = doc["stats"]  # type: ignore[index]
                results[f"backup run --read {mode}"] = {
                    "full_s": round(full, 2), "incr_s": round(incr, 2),
                    "MB/s": round(nbytes / full / 1e6, 1),
                    "stored_MB": round(stats["new_stored"] / 1e6, 1),  # type: ignore[index]
                    "peak_rss_MB": round(max(rss, rss2), 1),
                    "engine_s": stats["seconds"],  # type: ignore[index]
                }
                print(f"backup run --read {mode:5s}: full {full:6.2f} s "
                      f"({nbytes / full / 1e6:.0f} MB/s), unchanged incremental {incr:5.2f} s, "
                      f"peak RSS {max(rss, rss2):.0f} MB", flush=True)
        finally:
            samba.stop()
    print(json.dumps(results, indent=2))
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
