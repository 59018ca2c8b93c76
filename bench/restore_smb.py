r"""Benchmark: ``backup restore --to \\host\share\path`` and reading through ``backup mount``.

bench/backup.py's mixed dataset (40 % of the bytes in ~100 MiB files, 35 %
in 1-8 MiB files, 25 % in small files) on a loop btrfs, backed up over SMB
(so the point carries security descriptors, DOS attributes, creation times)
from a private smbd, which also serves an empty target share (vfs_acl_xattr,
as shares for Windows clients have).  Side by side, warm page cache, smbd and
Python on the same cores:

1. ours: ``remotevss backup restore latest --path data --to
   \\127.0.0.1\restore\ours`` (the whole command: data decompressed and
   written, then descriptors, times and attributes set), AES-GCM encrypted;
   and with ``--no-security``;
2. anchor: ``smbclient -c 'recurse; mput *'`` of the same tree from a local
   directory into ``\\127.0.0.1\restore\anchor``: data only (no descriptors,
   no times), nothing to decompress; encrypted (``--client-protection=encrypt``)
   against our default, signed only against ``--no-encryption``.  Reported:
   ours / smbclient time;
3. browsing: ``cp -a`` of the point's directory out of ``backup mount``
   against ``backup restore --to DIR`` of the same point (both local).

Usage (root): .venv/bin/python bench/restore_smb.py [--size-gb 0.3] [--files 8000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backup import generate, warm  # noqa: E402

from remotevss.backup.backup import run_backup  # noqa: E402
from remotevss.backup.repo import Repository, init_repo  # noqa: E402
from remotevss.backup.smb import SmbSession, SmbSource  # noqa: E402
from remotevss.loopfs import loop_filesystem  # noqa: E402
from tests.support.samba import PASSWORD, PrivateSamba  # noqa: E402

CLI = [sys.executable, "-m", "remotevss.cli", "backup"]


def timed(argv: list[str], ok: tuple[int, ...] = (0,)) -> float:
    env = dict(os.environ, REMOTEVSS_PASSWORD=PASSWORD)
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    took = time.perf_counter() - t0
    if r.returncode not in ok:
        raise SystemExit(f"{' '.join(argv[:4])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return took


def mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in
               Path("/proc/mounts").read_text().splitlines())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=0.3)
    ap.add_argument("--files", type=int, default=8000)
    ap.add_argument("--workdir", default=None, help="scratch directory (default: /var/tmp)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop btrfs, smbd, FUSE)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rvss-bench-restore-", dir=args.workdir or "/var/tmp"))
    results: dict[str, dict[str, float]] = {}
    size_mb = int(args.size_gb * 1000 * 7) + 1024
    try:
        with loop_filesystem("btrfs", size_mb, work) as mnt:
            run(args, mnt, work, results)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    for name, r in results.items():
        print(f"{name:36s} " + "  ".join(f"{k} {v}" for k, v in r.items()), flush=True)
    print(json.dumps(results, indent=2))
    return 0


def run(args: argparse.Namespace, mnt: Path, work: Path,
        results: dict[str, dict[str, float]]) -> None:
    data, target = mnt / "data", mnt / "restore"
    data.mkdir()
    target.mkdir()
    nfiles, nbytes = generate(data, args.size_gb, args.files)
    print(f"dataset: {nfiles} files, {nbytes / 1e6:.0f} MB", flush=True)
    samba = PrivateSamba(work / "samba", {"data": data, "restore": target},
                         share_options={"restore": {"vfs objects": "acl_xattr btrfs"}})
    samba.start()
    repo = mnt / "repo"
    try:
        init_repo(repo)
        with SmbSession("127.0.0.1", username="root", password=PASSWORD,
                        port=samba.port) as s, Repository(repo, "write") as r:
            run_backup(r, [SmbSource(s, "data", "data")])
        local = mnt / "local"
        t_local = timed([*CLI, "restore", "latest", "--repo", str(repo), "--to", str(local)])
        subprocess.run(["sync"], check=True)
        warm(local / "data")
        base = [*CLI, "restore", "latest", "--repo", str(repo), "--path", "data",
                "-U", "root", "-p", str(samba.port)]
        t_ours = timed([*base, "--to", r"\\127.0.0.1\restore\ours"])
        t_nosec = timed([*base, "--no-security", "--to", r"\\127.0.0.1\restore\nosec"])
        t_signed = timed([*base, "--no-encryption", "--to", r"\\127.0.0.1\restore\signed"])

        def smbclient(directory: str, *extra: str) -> list[str]:
            return ["smbclient", "-s", str(samba.conf), "//127.0.0.1/restore", "-p",
                    str(samba.port), "-U", f"root%{PASSWORD}", "-m", "SMB3", *extra, "-c",
                    f'lcd "{local / "data"}"; mkdir {directory}; cd {directory}; '
                    "prompt OFF; recurse ON; mput *"]

        t_anchor = timed(smbclient("anchor", "--client-protection=encrypt"))
        t_anchor_signed = timed(smbclient("anchor-signed"))
        for name, secs, anchor in (
                ("restore --to share (ours)", t_ours, t_anchor),
                ("restore --to share --no-security", t_nosec, t_anchor),
                ("smbclient -e mput (anchor)", t_anchor, t_anchor),
                ("restore --to share --no-encryption", t_signed, t_anchor_signed),
                ("smbclient mput, signed (anchor)", t_anchor_signed, t_anchor_signed)):
            results[name] = {"seconds": round(secs, 2), "MB/s": round(nbytes / secs / 1e6, 1),
                             "files/s": round(nfiles / secs, 1),
                             "ratio_to_anchor": round(secs / anchor, 2)}
        mp = mnt / "mnt"
        mp.mkdir()
        proc = subprocess.Popen([*CLI, "mount", str(repo), str(mp)],
                                stderr=subprocess.DEVNULL)
        try:
            while not mounted(mp):
                time.sleep(0.05)
            t_cp = timed(["cp", "-a", str(mp / "latest" / "data"), str(mnt / "copied")])
        finally:
            proc.send_signal(2)
            proc.wait(timeout=60)
        results["cp -a out of backup mount"] = {
            "seconds": round(t_cp, 2), "MB/s": round(nbytes / t_cp / 1e6, 1),
            "ratio_to_local_restore": round(t_cp / t_local, 2)}
        results["restore --to DIR (local)"] = {"seconds": round(t_local, 2),
                                               "MB/s": round(nbytes / t_local / 1e6, 1)}
    finally:
        samba.stop()


if __name__ == "__main__":
    sys.exit(main())
