"""Backup benchmark: remotevss vs restic and borg on one generated dataset, in one run.

Why side by side: absolute times depend on the machine; the issue's targets
are ratios against restic (full throughput >= 1.5x restic's), against our own
full run (unchanged incremental <= 10 % of it) and an absolute peak RSS
(<= 150 MB).  All tools read the same read-only btrfs snapshot on a loop
device, with a warm page cache (a first untimed read), and write their
repositories to the same scratch directory.

    sudo .venv/bin/python bench/backup.py [--size-gb 1.7] [--files 53000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3

REPO_ROOT = Path(__file__).resolve().parent.parent
WORDS = (b"the of and to in is that for it as was with be by on not he this are or his "
         b"from at which but have an they you were her she there been one all we their "
         b"file share server snapshot backup volume shadow copy restore point data block "
         b"chunk pack index write read sync error status request response client agent "
         b"report invoice customer order total amount date name address city country").split()


def _xof(seed: str, n: int) -> bytes:
    return blake3.blake3(seed.encode()).digest(length=n)


_LINES: list[bytes] = []
_TEMPLATES = [_xof(f"template{i}", 48) for i in range(64)]


def _records(seed: str, n: int) -> bytes:
    """Database-like binary: 64-byte records, 16 unique bytes + one of 64 templates."""
    r = _xof(seed, n // 4 + 16)
    t = _TEMPLATES
    return b"".join(r[i:i + 16] + t[r[i] & 63] for i in range(0, len(r), 16))[:n]


def _text(seed: str, n: int) -> bytes:
    """Log/CSV-like text: lines drawn from a pool, each with a unique number (~3x zstd)."""
    if not _LINES:
        rnd = random.Random(7)
        for _ in range(20000):
            _LINES.append(b" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 14))))
    rnd = random.Random(seed)
    out = []
    size = 0
    while size < n:
        line = b"%d;%s\n" % (rnd.getrandbits(24), rnd.choice(_LINES))
        out.append(line)
        size += len(line)
    return b"".join(out)[:n]


def _content(kind: str, seed: str, n: int) -> bytes:
    if kind == "text":
        return _text(seed, n)
    if kind == "binary":
        return _records(seed, n)
    return _xof(seed, n)  # incompressible


def generate(root: Path, size_gb: float, files: int, seed: int = 1) -> tuple[int, int]:
    """A deterministic mixed tree: many small files, some medium, a few large.

    Budget: 25 % of bytes in small files (the rest of ``files``), 35 % in
    medium (1-8 MiB), 40 % in large (~100 MiB); kinds rotate text / binary /
    incompressible.  Returns (files, bytes).
    """
    total = int(size_gb * 1e9)
    rnd = random.Random(seed)
    kinds = ("text", "binary", "random")
    nfiles = nbytes = 0
    plan: list[tuple[str, int]] = []
    large = max(1, int(total * 0.40) // (100 << 20))
    for i in range(large):
        plan.append((f"large/big{i:02d}.dat", int(total * 0.40) // large))
    medium_budget = int(total * 0.35)
    while medium_budget > 0:
        n = rnd.randint(1 << 20, 8 << 20)
        plan.append((f"medium/d{len(plan) % 16:02d}/m{len(plan):05d}.bin", n))
        medium_budget -= n
    small_count = max(1, files - len(plan))
    avg_small = max(1, int(total * 0.25) // small_count)
    for i in range(small_count):
        n = int(rnd.expovariate(1 / avg_small))
        plan.append((f"small/p{i // 2000:03d}/q{i // 100 % 20:02d}/f{i:06d}.txt", n))
    for i, (rel, n) in enumerate(plan):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = kinds[i % 3] if not rel.startswith("small") else ("text", "text", "binary")[i % 3]
        with open(path, "wb") as f:
            pos = 0
            while pos < n:  # write large files in 16 MiB pieces to bound memory
                step = min(16 << 20, n - pos)
                f.write(_content(kind, f"{seed}:{rel}:{pos}", step))
                pos += step
        nfiles += 1
        nbytes += n
    return nfiles, nbytes


def timed_rss(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Like ``timed`` but reaps the child itself so wait4 reports its peak RSS."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    assert proc.stderr is not None
    err = proc.stderr.read()
    _pid, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    secs = time.monotonic() - t0
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({proc.returncode}): "
                           f"{err.decode()[-2000:]}")
    return secs, ru.ru_maxrss / 1024


def warm(root: Path) -> None:
    """Read every file once so all tools start with a warm page cache.

    (``tar cf /dev/null`` would not do: GNU tar skips reading when it writes to /dev/null.)
    """
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(8 << 20):
                    pass


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.7)
    ap.add_argument("--files", type=int, default=53000)
    ap.add_argument("--tools", default="remotevss,restic,borg")
    ap.add_argument("--workdir", default=None, help="scratch directory (default: /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/backup.py needs root (loop btrfs)", file=sys.stderr)
        return 2
    import btrfsutil

    from remotevss.loopfs import loop_filesystem

    scratch = Path(tempfile.mkdtemp(prefix="rvss-bench-", dir=args.workdir or "/var/tmp"))
    results: dict[str, dict[str, float]] = {}
    image_mb = int(args.size_gb * 1000 * 1.6) + 512
    try:
        with loop_filesystem("btrfs", image_mb, scratch) as mnt:
            live = mnt / "live"
            btrfsutil.create_subvolume(str(live))
            t0 = time.monotonic()
            nfiles, nbytes = generate(live, args.size_gb, args.files)
            print(f"dataset: {nfiles} files, {nbytes / 1e6:.0f} MB, generated in "
                  f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
            snap = mnt / "snap"
            btrfsutil.create_snapshot(str(live), str(snap), read_only=True)
            subprocess.run(["sync"], check=True)
            warm(snap)
            for tool in args.tools.split(","):
                repo = scratch / f"repo-{tool}"
                results[tool] = run_tool(tool, repo, snap)
                results[tool]["stored_mb"] = du(repo) / 1e6
                shutil.rmtree(repo)
                print(f"{tool}: {json.dumps(results[tool])}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    report(results, nbytes, nfiles)
    return 0


def run_tool(tool: str, repo: Path, snap: Path) -> dict[str, float]:
    py = str(REPO_ROOT / ".venv/bin/python")
    if tool == "remotevss":
        cli = [py, "-m", "remotevss.backup.cli"]
        env = {"REMOTEVSS_BACKUP_PASSWORD": "bench"}  # encrypted, as restic's repository is
        subprocess.run([*cli, "init", "--repo", str(repo)], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, **env})
        full, rss1 = timed_rss([*cli, "run", f"data={snap}", "--repo", str(repo)], env)
        incr, rss2 = timed_rss([*cli, "run", f"data={snap}", "--repo", str(repo)], env)
    elif tool == "restic":
        env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(repo) + "-cache"}
        subprocess.run(["restic", "-r", str(repo), "init", "--repository-version", "2"],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, **env})
        argv = ["restic", "-r", str(repo), "backup", "-q", str(snap)]
        full, rss1 = timed_rss(argv, env)
        incr, rss2 = timed_rss(argv, env)
        shutil.rmtree(str(repo) + "-cache", ignore_errors=True)
    elif tool == "borg":
        env = {"BORG_BASE_DIR": str(repo) + "-base", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK":
               "yes"}
        subprocess.run(["borg", "init", "-e", "none", str(repo)], check=True,
                       env={**os.environ, **env})
        full, rss1 = timed_rss(["borg", "create", "--compression", "zstd,3",
                                f"{repo}::a", str(snap)], env)
        incr, rss2 = timed_rss(["borg", "create", "--compression", "zstd,3",
                                f"{repo}::b", str(snap)], env)
        shutil.rmtree(str(repo) + "-base", ignore_errors=True)
    else:
        raise SystemExit(f"unknown tool {tool}")
    return {"full_s": full, "incr_s": incr, "rss_mb": max(rss1, rss2)}


def report(results: dict[str, dict[str, float]], nbytes: int, nfiles: int) -> None:
    print(f"\n{nfiles} files, {nbytes / 1e6:.0f} MB (btrfs snapshot, warm cache, "
          f"{os.cpu_count()} cores)")
    print(f"{'tool':10} {'full s':>8} {'MB/s':>7} {'incr s':>8} {'incr/full':>9} "
          f"{'stored MB':>10} {'peak RSS MB':>12}")
    for tool, r in results.items():
        print(f"{tool:10} {r['full_s']:8.1f} {nbytes / 1e6 / r['full_s']:7.0f} {r['incr_s']:8.2f} "
              f"{r['incr_s'] / r['full_s']:9.1%} {r['stored_mb']:10.0f} {r['rss_mb']:12.0f}")
    ours = results.get("remotevss")
    if ours:
        print("\ntargets (issue 7):")
        if "restic" in results:
            ratio = results["restic"]["full_s"] / ours["full_s"]
            print(f"  full throughput vs restic: {ratio:.2f}x (target >= 1.5x) "
                  f"{'MET' if ratio >= 1.5 else 'MISSED'}")
        if "borg" in results:
            print(f"  full throughput vs borg: {results['borg']['full_s'] / ours['full_s']:.2f}x")
        frac = ours["incr_s"] / ours["full_s"]
        print(f"  unchanged incremental / full: {frac:.1%} (target <= 10 %) "
              f"{'MET' if frac <= 0.10 else 'MISSED'}")
        print(f"  peak RSS: {ours['rss_mb']:.0f} MB (target <= 150 MB) "
              f"{'MET' if ours['rss_mb'] <= 150 else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
