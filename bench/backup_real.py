"""Backup benchmark on real trees of this machine: remotevss vs restic and borg, one run.

Why real trees: a generated dataset has the file-size mix we chose; a system
tree (``/usr/share``, ``/usr/lib/python3``: ~50,000 files, most of them
small) has the one real shares have, where per-file costs dominate.  All
three tools encrypt (remotevss AES-256-GCM, restic's repository v2, borg
``repokey-blake2``) and compress with zstd; each does a full backup and an
unchanged incremental of the same trees with a warm page cache, runs
interleaved per round (order rotated, the page cache re-warmed before each
tool) so machine noise hits all alike.  Reported: medians,
ratios to restic, peak RSS (wait4), and for remotevss the CPU split.  Memory
(PSS and RSS summed over a run's processes, sampled every 10 ms) comes from
a round and a restore of its own, not timed: the sampling slowed remotevss's
runs by ~19 % and restic's not at all (see ``run``).

    .venv/bin/python bench/backup_real.py [--trees /usr/share /usr/lib/python3]
        [--rounds 3] [--tools remotevss,restic,borg] [--profile FILE]
        [--baseline SRC_DIR [--baseline-python PY]] [--restores 5] [--changed 1]

``--tools`` may name ``remotevss-pN``: remotevss with ``--processes N``, to
compare worker counts in one run.

``--profile FILE`` also runs remotevss's full backup, unchanged incremental
and (with ``--changed``) changed run under cProfile (the main thread only;
the other threads' and workers' CPU shows in the user time) into FILE,
FILE.incr and FILE.changed, and prints the top functions by internal time.  ``--changed
PCT`` (default 1) backs up a private copy of the trees instead, and after
the unchanged incremental changes PCT % of its files (one byte each, same
size) and times a third run.  ``--restores N`` restores each tool's last
point N times warm and N times cold (page cache dropped: needs root).
``--baseline
SRC_DIR`` adds a tool "baseline": remotevss run from another checkout's
``src`` (e.g. ``git archive HEAD~3 src | tar -x -C /tmp/base``), so a
change is measured before and after in the same run, rotated like the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PY = str(REPO_ROOT / ".venv/bin/python")
SRC = str(REPO_ROOT / "src")
PASSWORD = "bench passphrase"
# remotevss as the installed ``remotevss`` command runs it (remotevss.cli:main), so
# the command line's own start-up is measured as users meet it.
REMOTEVSS = ["-c", "import sys; from remotevss.cli import main; sys.exit(main())", "backup"]
# Modules imported once per tool before its rounds, so that their bytecode is cached
# (below) and no timed run compiles sources, as an installed package's never does.
WARM_IMPORTS = ("import remotevss.cli, remotevss.backup.cli, remotevss.backup.backup, "
                "remotevss.backup.restore, remotevss.backup.workers")


# Peak memory of the last run() (MB): "rss" the main process alone (wait4), "rss_sum"
# and "pss_sum" over the process and all its descendants, sampled every 10 ms.  PSS
# splits each shared page among the processes mapping it, so its sum is the memory
# the run really occupies; the RSS sum counts pages that forked workers share with
# their parent (the interpreter, libraries, the parent's heap) once per process.
LAST_MEM: dict[str, float] = {}


def _tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            todo.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
    return out


def _mem_sample(pid: int) -> tuple[float, float]:
    rss = pss = 0.0
    for p in _tree_pids(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss += int(line.split()[1]) / 1024
    return rss, pss


def run(argv: list[str], env: dict[str, str], sample: bool = True
        ) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + sys, children included) of
    one command; with ``sample``, the sampled peaks go to LAST_MEM.

    Why timed runs are not sampled: reading ``smaps_rollup`` every 10 ms takes the
    mmap lock of the process it reads, which remotevss's processes need for
    every large buffer they map and unmap; it made a full backup of the
    51,283-file tree 19 % slower (3.14 -> 3.72 s, 4 runs each) and restic's not
    at all (5.83 / 5.67 s).  Memory is measured in runs of its own."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **env})
    assert proc.stderr is not None
    peaks = [0.0, 0.0]
    done = threading.Event()

    def sampling() -> None:
        while not done.wait(0.01):
            rss, pss = _mem_sample(proc.pid)
            peaks[0], peaks[1] = max(peaks[0], rss), max(peaks[1], pss)

    sampler = threading.Thread(target=sampling, daemon=True)
    if sample:
        sampler.start()
    err = proc.stderr.read()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _pid, status, ru = os.wait4(proc.pid, 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done.set()
    if sample:
        sampler.join()
    secs = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):  # 3: remotevss skipped unreadable files (named on stderr)
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({code}): {err.decode()[-2000:]}")
    LAST_MEM.update(rss=ru.ru_maxrss / 1024, rss_sum=peaks[0], pss_sum=peaks[1])
    # wait4's usage covers the process and the children it waited for (its workers)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return secs, ru.ru_maxrss / 1024, cpu


def changed_files(trees: list[Path], pct: float) -> list[str]:
    """Every (100 / pct)-th regular file of the trees, in a fixed order."""
    step = max(1, round(100 / pct))
    files: list[str] = []
    for root in trees:
        for dirpath, dirs, names in os.walk(root):
            dirs.sort()
            files.extend(os.path.join(dirpath, n) for n in sorted(names)
                         if os.path.isfile(os.path.join(dirpath, n))
                         and not os.path.islink(os.path.join(dirpath, n))
                         and os.path.getsize(os.path.join(dirpath, n)) > 0)
    return files[::step]


def change(files: list[str]) -> None:
    """Flip the first byte of each file (size unchanged, content and mtime new)."""
    for path in files:
        with open(path, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes((first[0] ^ 1,)))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def warm(trees: list[Path]) -> tuple[int, int]:
    """Read everything once (warm cache for all tools); returns (files, bytes)."""
    files = nbytes = 0
    for root in trees:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    if not os.path.isfile(path) or os.path.islink(path):
                        continue
                    with open(path, "rb") as f:
                        while chunk := f.read(8 << 20):
                            nbytes += len(chunk)
                    files += 1
                except OSError:
                    continue
    return files, nbytes


class Tool:
    def __init__(self, name: str, scratch: Path, trees: list[Path],
                 baseline: str | None = None, baseline_python: str | None = None) -> None:
        self.name = name
        self.baseline = baseline
        # the baseline may run with another interpreter (the old checkout's venv and
        # its libraries), so that a dependency change is measured too
        self.py = (baseline_python or PY) if name == "baseline" else PY
        self.repo = scratch / f"repo-{name}"
        self.trees = trees
        self.env: dict[str, str] = {}
        self.count = 0
        # "remotevss-pN": remotevss with --processes N (worker counts side by side)
        self.ours = name == "baseline" or name.split("-p")[0] == "remotevss"
        self.extra = ["--processes", name.split("-p")[1]] if "-p" in name else []

    def init(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        for extra in ("-cache", "-base"):  # the bytecode stays for the next round
            shutil.rmtree(str(self.repo) + extra, ignore_errors=True)
        if self.ours:
            # Bytecode in a directory of the run's own (a checkout's src may be read-only,
            # and PYTHONDONTWRITEBYTECODE, set in some environments, made every run
            # compile the sources again: ~50 ms of CPU a command).
            self.env = {"REMOTEVSS_BACKUP_PASSWORD": PASSWORD, "PYTHONDONTWRITEBYTECODE": "",
                        "PYTHONPYCACHEPREFIX": str(self.repo) + "-pycache"}
            # This checkout's src (an installed or editable remotevss may be another's).
            self.env["PYTHONPATH"] = (self.baseline if self.name == "baseline" and self.baseline
                                      else SRC)
            subprocess.run([self.py, "-c", WARM_IMPORTS], check=True,
                           env={**os.environ, **self.env})
            argv = [self.py, *REMOTEVSS, "init", "--repo", str(self.repo)]
        elif self.name == "restic":
            self.env = {"RESTIC_PASSWORD": PASSWORD,
                        "RESTIC_CACHE_DIR": str(self.repo) + "-cache"}
            argv = ["restic", "-r", str(self.repo), "init", "--repository-version", "2"]
        else:
            self.env = {"BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(self.repo) + "-base"}
            argv = ["borg", "init", "-e", "repokey-blake2", str(self.repo)]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, **self.env})

    def backup_argv(self) -> list[str]:
        self.count += 1
        if self.ours:
            return [self.py, *REMOTEVSS, "run", "--repo", str(self.repo),
                    *self.extra, *(f"{p.name}={p}" for p in self.trees)]
        if self.name == "restic":
            return ["restic", "-r", str(self.repo), "backup", "-q", *map(str, self.trees)]
        return ["borg", "create", "--compression", "zstd,3", f"{self.repo}::a{self.count}",
                *map(str, self.trees)]

    def restore_argv(self, target: Path) -> list[str] | None:
        if self.ours:
            return [self.py, *REMOTEVSS, "restore", "--repo", str(self.repo),
                    "latest", "--to", str(target)]
        if self.name == "restic":
            return ["restic", "-r", str(self.repo), "restore", "-q", "latest", "--target",
                    str(target)]
        return None  # borg extracts into the working directory: left out

    def cleanup(self) -> None:
        for extra in ("", "-cache", "-base", "-pycache"):
            shutil.rmtree(str(self.repo) + extra, ignore_errors=True)


def profile(trees: list[Path], scratch: Path, out: str, to_change: list[str]) -> None:
    """cProfile (the main thread) of a full backup into ``out``, then of the unchanged
    incremental into ``out``.incr and, with files to change, of the run after
    they changed into ``out``.changed; the top functions of each are printed."""
    repo = scratch / "repo-profile"
    env = {**os.environ, "REMOTEVSS_BACKUP_PASSWORD": PASSWORD, "PYTHONDONTWRITEBYTECODE": "",
           "PYTHONPYCACHEPREFIX": str(scratch / "profile-pycache"), "PYTHONPATH": SRC}
    subprocess.run([PY, "-c", WARM_IMPORTS], check=True, env=env)
    subprocess.run([PY, *REMOTEVSS, "init", "--repo", str(repo)], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    runs = [("full backup", out), ("unchanged incremental", out + ".incr")]
    if to_change:
        runs.append(("after the change", out + ".changed"))
    for what, path in runs:
        if what == "after the change":
            change(to_change)
        script = ("import cProfile; from remotevss.cli import main; "
                  f"cProfile.run('main()', {path!r})")
        subprocess.run([PY, "-c", script, "backup", "run", "--repo", str(repo),
                        *(f"{p.name}={p}" for p in trees)],
                       check=False, stdout=subprocess.DEVNULL, env=env)
        stats = pstats.Stats(path)
        print(f"\nprofile of the main thread ({what}; {path}), by internal time:")
        stats.sort_stats("tottime").print_stats(18)
    shutil.rmtree(repo, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", nargs="+", default=["/usr/share", "/usr/lib/python3"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tools", default="remotevss,restic,borg")
    ap.add_argument("--workdir", default=None, help="scratch directory (default: /var/tmp)")
    ap.add_argument("--profile", metavar="FILE",
                    help="also profile remotevss's full backup (FILE), unchanged incremental "
                         "(FILE.incr) and 1 %% changed run (FILE.changed)")
    ap.add_argument("--changed", type=float, default=1.0, metavar="PCT",
                    help="back up a copy of the trees and time a run after PCT %% of its "
                         "files changed (0: back up the trees themselves, no such run)")
    ap.add_argument("--restores", type=int, default=0, metavar="N",
                    help="then restore the last round's point N times warm and N times cold "
                         "(drop_caches: needs root) per tool")
    ap.add_argument("--restore-in-place", action="store_true",
                    help="restore into a directory of the scratch disk, not into a fresh "
                         "ext4 per restore (see fresh_fs)")
    ap.add_argument("--baseline", metavar="SRC_DIR",
                    help="also run remotevss from this src directory (tool 'baseline')")
    ap.add_argument("--baseline-python", metavar="PYTHON",
                    help="the interpreter for the baseline (e.g. the old checkout's .venv)")
    args = ap.parse_args()
    trees = [Path(t) for t in args.trees]
    scratch = Path(tempfile.mkdtemp(prefix="rvss-bench-real-", dir=args.workdir or "/var/tmp"))
    to_change: list[str] = []
    if args.changed:  # a private copy: the benchmark changes files
        copies = []
        for t in trees:
            copies.append(scratch / "trees" / t.name)
            shutil.copytree(t, copies[-1], symlinks=True, ignore_dangling_symlinks=True)
        trees = copies
        to_change = changed_files(trees, args.changed)
    names = args.tools.split(",") + (["baseline"] if args.baseline else [])
    tools = [Tool(name, scratch, trees, args.baseline, args.baseline_python) for name in names]
    results: dict[str, dict[str, list[float]]] = {t.name: {} for t in tools}
    try:
        nfiles, nbytes = warm(trees)
        print(f"trees {' '.join(map(str, trees))}: {nfiles} files, {nbytes / 1e6:.0f} MB",
              file=sys.stderr)
        # Round 0 measures memory (sampled, times not counted); rounds 1..N time.
        for rnd in range(-1, args.rounds):
            sampled = rnd < 0
            # Rotate the order and re-warm before each tool: on a busy machine the page
            # cache is partly evicted between runs, and the first tool would pay for it.
            for tool in tools[rnd % len(tools):] + tools[:rnd % len(tools)]:
                warm(trees)
                tool.init()
                r = results[tool.name]
                full, rss1, cpu1 = run(tool.backup_argv(), tool.env, sampled)
                mem = [dict(LAST_MEM)]
                incr, rss2, cpu2 = run(tool.backup_argv(), tool.env, sampled)
                mem.append(dict(LAST_MEM))
                changed = rss3 = 0.0
                if to_change:
                    change(to_change)
                    changed, rss3, _cpu3 = run(tool.backup_argv(), tool.env, sampled)
                    mem.append(dict(LAST_MEM))
                if sampled:
                    pss = max(m["pss_sum"] for m in mem)
                    rsum = max(m["rss_sum"] for m in mem)
                    for key, value in (("rss_mb", max(rss1, rss2, rss3)),
                                       ("pss_sum_mb", pss), ("rss_sum_mb", rsum),
                                       ("full_pss_sum_mb", mem[0]["pss_sum"])):
                        r.setdefault(key, []).append(value)
                    print(f"memory round {tool.name}: peak RSS {max(rss1, rss2, rss3):.0f} MB, "
                          f"sums: RSS {rsum:.0f} MB, PSS {pss:.0f} MB (full "
                          f"{mem[0]['pss_sum']:.0f})", file=sys.stderr)
                    tool.cleanup()
                    continue
                if to_change:
                    r.setdefault("changed_s", []).append(changed)
                for key, value in (("full_s", full), ("incr_s", incr), ("full_cpu_s", cpu1),
                                   ("incr_cpu_s", cpu2), ("stored_mb", du(tool.repo) / 1e6)):
                    r.setdefault(key, []).append(value)
                print(f"round {rnd + 1} {tool.name}: full {full:.2f} s, incr {incr:.2f} s, "
                      f"changed {changed:.2f} s", file=sys.stderr)
                if rnd < args.rounds - 1 or not args.restores:
                    tool.cleanup()
        if args.restores:
            restores(tools, scratch, args.restores, results,
                     fs_size=2 * nbytes + (1 << 30), fresh=not args.restore_in_place)
        if args.profile:
            profile(trees, scratch, args.profile, to_change)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(results, nfiles, nbytes)
    return 0


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def fresh_fs(scratch: Path, size: int, use: bool) -> Iterator[Path]:
    """A directory on an ext4 file system made for one restore (a sparse image on a
    loop device), or a plain directory of ``scratch`` when ``use`` is false or
    mounting fails (not root, no loop devices).

    Why: a restore right after deleting the previous one pays for the deletion.
    ext4 does not hand out an inode freed in the last 60 s and scans past each
    such inode of the block group for every new file (``recently_deleted``):
    on this VM that took a restore of 10,000 files from ~2 s to 6-15 s of
    system time, growing with every round, whichever tool ran."""
    target = scratch / "restore-target"
    image = scratch / "restore-fs.img"
    mounted = False
    if use:
        target.mkdir(exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(size)
        # Inode tables and journal written now, not by a kernel thread during the restore.
        made = subprocess.run(["mkfs.ext4", "-q", "-F", "-E",
                               "lazy_itable_init=0,lazy_journal_init=0", str(image)],
                              capture_output=True)
        mounted = made.returncode == 0 and subprocess.run(
            ["mount", "-o", "loop", str(image), str(target)], capture_output=True
        ).returncode == 0
        if not mounted:
            print("restore: no fresh file system (needs root and a loop device): "
                  "restoring into a directory of the scratch disk", file=sys.stderr)
    try:
        yield target / "out"
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], check=True)
        else:
            shutil.rmtree(target / "out", ignore_errors=True)
        image.unlink(missing_ok=True)


def restores(tools: list[Tool], scratch: Path, n: int,
             results: dict[str, dict[str, list[float]]], fs_size: int,
             fresh: bool = True) -> None:
    """Restore each tool's last point into an empty directory of a file system made for
    that restore (``fresh_fs``), warm (repository in the page cache) and cold (all
    caches dropped first), interleaved per round."""
    for tool in tools:  # memory, sampled (not timed: see ``run``)
        if tool.restore_argv(scratch) is not None:
            with fresh_fs(scratch, fs_size, fresh) as target:
                restore_one(tool, target, False, -1, results)
    for rnd in range(n):
        for cold in (False, True):
            for tool in tools[rnd % len(tools):] + tools[:rnd % len(tools)]:
                if tool.restore_argv(scratch) is None:
                    continue
                with fresh_fs(scratch, fs_size, fresh) as target:
                    restore_one(tool, target, cold, rnd, results)
    for tool in tools:
        tool.cleanup()


def restore_one(tool: Tool, target: Path, cold: bool, rnd: int,
                results: dict[str, dict[str, list[float]]]) -> None:
    argv = tool.restore_argv(target)
    assert argv is not None
    # Warm too: write back the previous restore's dirty pages first, or
    # the kernel flushes them during this one (warm runs took 3-6x the
    # cold ones, which get a sync from drop_caches).
    os.sync()
    if cold and not drop_caches():
        return
    sampled = rnd < 0  # the memory run (``restores``)
    secs, rss, _cpu = run(argv, tool.env, sampled)
    if sampled:
        results[tool.name].setdefault("restore_rss_mb", []).append(rss)
        results[tool.name].setdefault("restore_pss_sum_mb", []).append(
            LAST_MEM["pss_sum"])
        print(f"restore memory {tool.name}: {secs:.2f} s (sampled), RSS {rss:.0f} MB, "
              f"PSS sum {LAST_MEM['pss_sum']:.0f} MB", file=sys.stderr)
        return
    key = "restore_cold_s" if cold else "restore_warm_s"
    results[tool.name].setdefault(key, []).append(secs)
    print(f"restore {rnd + 1} {tool.name} {'cold' if cold else 'warm'}: {secs:.2f} s",
          file=sys.stderr)


def report(results: dict[str, dict[str, list[float]]], nfiles: int, nbytes: int) -> None:
    med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in results.items()}
    print(f"\n{nfiles} files, {nbytes / 1e6:.0f} MB, warm cache, {os.cpu_count()} cores, "
          f"median of {len(next(iter(results.values()))['full_s'])} rounds")
    print(f"{'tool':10} {'full s':>7} {'MB/s':>6} {'CPU s':>6} {'incr s':>7} {'incr/full':>9} "
          f"{'changed s':>9} {'stored MB':>9} {'peak RSS MB':>11} {'PSS sum MB':>10} "
          f"{'RSS sum MB':>10}")
    for tool, m in med.items():
        print(f"{tool:10} {m['full_s']:7.1f} {nbytes / 1e6 / m['full_s']:6.0f} "
              f"{m['full_cpu_s']:6.1f} {m['incr_s']:7.2f} {m['incr_s'] / m['full_s']:9.1%} "
              f"{m.get('changed_s', float('nan')):9.2f} "
              f"{m['stored_mb']:9.0f} {m['rss_mb']:11.0f} {m['pss_sum_mb']:10.0f} "
              f"{m['rss_sum_mb']:10.0f}")
    ours = med.get("remotevss")
    if ours and "restic" in med:
        ratio = med["restic"]["full_s"] / ours["full_s"]
        frac = ours["incr_s"] / ours["full_s"]
        print(f"\nfull throughput vs restic: {ratio:.2f}x (target >= 1.5x) "
              f"{'MET' if ratio >= 1.5 else 'MISSED'}")
        if "borg" in med:
            print(f"full throughput vs borg: {med['borg']['full_s'] / ours['full_s']:.2f}x")
        print(f"unchanged incremental / full: {frac:.1%} (target <= 10 %) "
              f"{'MET' if frac <= 0.10 else 'MISSED'}")
        if "changed_s" in ours:
            cfrac = ours["changed_s"] / ours["full_s"]
            print(f"1 % changed / full: {cfrac:.1%} (target <= 15 %) "
                  f"{'MET' if cfrac <= 0.15 else 'MISSED'}")
        print(f"peak memory, PSS summed over the run's processes: {ours['pss_sum_mb']:.0f} MB "
              f"(target <= 150 MB) {'MET' if ours['pss_sum_mb'] <= 150 else 'MISSED'}; "
              f"RSS summed {ours['rss_sum_mb']:.0f} MB, largest process {ours['rss_mb']:.0f} MB")
    if ours and "baseline" in med:
        base = med["baseline"]
        print(f"against the baseline: full {base['full_s'] / ours['full_s']:.2f}x, "
              f"unchanged incremental {base['incr_s'] / ours['incr_s']:.2f}x faster")
    for tool, m in med.items():
        if "restore_warm_s" in m:
            print(f"restore {tool}: warm {m['restore_warm_s']:.2f} s, cold "
                  f"{m.get('restore_cold_s', float('nan')):.2f} s, peak RSS "
                  f"{m['restore_rss_mb']:.0f} MB, PSS sum {m['restore_pss_sum_mb']:.0f} MB")
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
