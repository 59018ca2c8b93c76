"""Two remotevss checkouts' incremental backups, paired on one copy of real trees.

Why besides ``backup_real.py --baseline``: on the shared development box the
machine's load swings a full round's times by 2x, and a round takes a
minute; here each step runs both versions back to back (order alternating),
each with its repository, so a change of a tenth of a second is seen in the
per-pair differences.  Per round: an unchanged incremental of each, then
PCT % of the files change (one byte each, as ``backup_real.py`` does) and
a run of each; ``--full N`` adds N full backups of each (fresh repositories,
alternating).  Reported: medians of wall and CPU seconds (the command and
its children) per version, and the median of the per-pair ratios.

    .venv/bin/python bench/backup_ab.py --old /tmp/base/src [--new src] --rounds 9 \
        [--trees /usr/share /usr/lib/python3] [--changed 1] [--full 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backup_real import PASSWORD, PY, REMOTEVSS, SRC, WARM_IMPORTS, change, changed_files  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, children included) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 3):
        raise RuntimeError(f"{argv[-4:]} failed: {done.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


class Version:
    def __init__(self, name: str, src: str, scratch: Path, trees: list[Path]) -> None:
        self.name = name
        self.repo = scratch / f"repo-{name}"
        self.env = {**os.environ, "REMOTEVSS_BACKUP_PASSWORD": PASSWORD, "PYTHONPATH": src,
                    "PYTHONDONTWRITEBYTECODE": "",
                    "PYTHONPYCACHEPREFIX": str(scratch / f"pycache-{name}")}
        self.trees = trees
        subprocess.run([PY, "-c", WARM_IMPORTS], check=True, env=self.env)

    def init(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        subprocess.run([PY, *REMOTEVSS, "init", "--repo", str(self.repo)], check=True,
                       stdout=subprocess.DEVNULL, env=self.env)

    def backup(self) -> tuple[float, float]:
        return timed([PY, *REMOTEVSS, "run", "--repo", str(self.repo),
                      *(f"{t.name}={t}" for t in self.trees)], self.env)


def summary(label: str, got: dict[str, list[tuple[float, float]]], names: list[str]) -> None:
    a, b = (got[n] for n in names)
    if not a:
        return
    wall = [statistics.median(w for w, _c in got[n]) for n in names]
    cpu = [statistics.median(c for _w, c in got[n]) for n in names]
    ratio = statistics.median(y[0] / x[0] for x, y in zip(a, b, strict=True))
    print(f"{label:22s} wall {names[0]} {wall[0]:.3f} s, {names[1]} {wall[1]:.3f} s "
          f"(pairs: {names[1]}/{names[0]} {ratio:.2f}); CPU {cpu[0]:.2f} / {cpu[1]:.2f} s; "
          f"n={len(a)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, metavar="SRC_DIR", help="the other checkout's src")
    ap.add_argument("--new", default=SRC, metavar="SRC_DIR", help="default: this checkout's")
    ap.add_argument("--trees", nargs="+", default=["/usr/share", "/usr/lib/python3"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--changed", type=float, default=1.0, metavar="PCT")
    ap.add_argument("--full", type=int, default=0, metavar="N")
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="rvss-bench-ab-", dir=args.workdir))
    try:
        trees = []
        for t in map(Path, args.trees):
            trees.append(scratch / "trees" / t.name)
            shutil.copytree(t, trees[-1], symlinks=True, ignore_dangling_symlinks=True)
        to_change = changed_files(trees, args.changed)
        versions = [Version("old", args.old, scratch, trees), Version("new", args.new, scratch,
                                                                        trees)]
        names = [v.name for v in versions]
        got: dict[str, dict[str, list[tuple[float, float]]]] = {
            k: {n: [] for n in names} for k in ("full", "unchanged", "changed")}
        for i in range(args.full):
            for v in versions[i % 2:] + versions[:i % 2]:
                v.init()
                got["full"][v.name].append(v.backup())
        for v in versions:
            if not args.full:
                v.init()
                v.backup()
            v.backup()  # the first incremental after a full one writes its digest rows
        for i in range(args.rounds):
            order = versions[i % 2:] + versions[:i % 2]
            for v in order:
                got["unchanged"][v.name].append(v.backup())
            change(to_change)
            for v in order:
                got["changed"][v.name].append(v.backup())
            print(f"round {i + 1}: " + ", ".join(
                f"{v.name} {got['unchanged'][v.name][-1][0]:.2f} / "
                f"{got['changed'][v.name][-1][0]:.2f} s" for v in versions), file=sys.stderr)
        print(f"{len(to_change)} files changed per round ({args.changed:g} %), load "
              f"{os.getloadavg()[0]:.1f}")
        for key in ("full", "unchanged", "changed"):
            summary(key, got[key], names)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
