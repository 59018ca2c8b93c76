"""Coverage-guided fuzzing (atheris/libFuzzer) of every decoder a peer's bytes reach.

Targets (tests/hardening/fuzz_targets.py): the NPA hand-off decoder, the DCE/RPC
server engine, and the NDR stubs of all 13 opnums (requests and responses).

    .venv/bin/pip install atheris==3.0.0     # a wheel on PyPI for CPython 3.11, x86_64
    .venv/bin/python bench/soak/fuzz.py --runs 1000000 --out /tmp/fuzz

Each target runs in its own child process (libFuzzer owns the process), with its
share of ``--runs``, ``-timeout`` as the hang bound and the seeds of
``fuzz_targets.seeds()`` plus the saved CI corpus as the starting corpus.  A
crash stops libFuzzer; the driver records it (input saved under
``<out>/crashes/<target>/``) and restarts the child on the grown corpus until
the target's runs are used up.  The result is printed and written to
``<out>/summary.json``; ``--export`` writes the grown corpus (the inputs that
added coverage, at most ``--export-max`` a target, and every crash input) to
tests/hardening/fuzz_corpus/<target>.hex for the CI replay.

Without atheris, ``--engine hypothesis`` runs the same targets with hypothesis
(not coverage-guided, far slower).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
CORPUS_DIR = ROOT / "tests" / "hardening" / "fuzz_corpus"
SHARES = {"npa": 0.3, "dcerpc": 0.35, "stub": 0.35}
HANG_SECONDS = 2  # libFuzzer -timeout: one input taking longer is a hang


# ------------------------------------------------------------------ child


def child(target: str, runs: int, corpora: list[Path], artifacts: Path, extra: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["remotevss", "tests.hardening.fuzz_targets"]):
        from tests.hardening import fuzz_targets

    fn = fuzz_targets.TARGETS[target]
    bound = fuzz_targets.TIME_BOUND
    Hang = fuzz_targets.Hang

    def one(data: bytes) -> None:
        t0 = time.perf_counter()
        fn(data)
        dt = time.perf_counter() - t0
        if dt > bound:
            raise Hang(f"{target}: one input took {dt:.3f} s (bound {bound} s)")

    atheris.Setup(
        [
            sys.argv[0],
            f"-runs={runs}",
            f"-timeout={HANG_SECONDS}",
            "-rss_limit_mb=4096",
            "-max_len=8192",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            *extra,
            *map(str, corpora),
        ],
        one,
    )
    atheris.Fuzz()


# ------------------------------------------------------------------ driver


def load_hex(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    return [bytes.fromhex(line) for line in path.read_text().split() if line]


def write_seeds(target: str, corpus: Path) -> None:
    from tests.hardening import fuzz_targets

    corpus.mkdir(parents=True, exist_ok=True)
    for data in fuzz_targets.seeds()[target] + load_hex(CORPUS_DIR / f"{target}.hex"):
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)  # noqa: S324


def run_target(target: str, runs: int, out: Path, max_crashes: int) -> dict[str, object]:
    corpus = out / "corpus" / target
    artifacts = out / "crashes" / target
    artifacts.mkdir(parents=True, exist_ok=True)
    write_seeds(target, corpus)
    done = 0
    crashes: list[str] = []
    hangs: list[str] = []
    rounds = 0
    t0 = time.monotonic()
    log = (out / f"{target}.log").open("w")
    while done < runs and len(crashes) + len(hangs) < max_crashes:
        rounds += 1
        before = set(os.listdir(artifacts))
        proc = subprocess.run(
            [sys.executable, __file__, "--child", target, "--runs", str(runs - done),
             "--corpus", str(corpus), "--artifacts", str(artifacts)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        log.write(proc.stdout + proc.stderr)
        executed = _executed(proc.stderr)
        done += executed
        new = sorted(set(os.listdir(artifacts)) - before)
        if proc.returncode == 0:
            break
        if not new:
            raise RuntimeError(f"{target}: child exited {proc.returncode} without an artifact:\n"
                               + proc.stderr[-3000:])
        for name in new:
            (hangs if name.startswith("timeout-") else crashes).append(name)
        done += 1  # the crashing input itself
    log.close()
    return {
        "target": target,
        "runs": done,
        "seconds": round(time.monotonic() - t0, 1),
        "corpus": len(os.listdir(corpus)),
        "crashes": crashes,
        "hangs": hangs,
        "restarts": rounds - 1,
    }


def _executed(stderr: str) -> int:
    m = re.findall(r"stat::number_of_executed_units:\s*(\d+)", stderr)
    if m:
        return int(m[-1])
    m = re.findall(r"Done (\d+) runs", stderr)
    if m:
        return int(m[-1])
    m = re.findall(r"^#(\d+)\s", stderr, re.M)
    return int(m[-1]) if m else 0


def export(target: str, out: Path, limit: int) -> int:
    """Save the grown corpus (libFuzzer keeps only inputs that added coverage), at most
    ``limit`` inputs, smallest first, plus every crash input, as hex lines for the CI
    replay."""
    corpus = out / "corpus" / target
    items = sorted((p.read_bytes() for p in corpus.iterdir()), key=lambda b: (len(b), b))
    keep = items[:limit]
    crash_dir = out / "crashes" / target
    keep += [p.read_bytes() for p in sorted(crash_dir.iterdir())] if crash_dir.is_dir() else []
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    (CORPUS_DIR / f"{target}.hex").write_text("".join(b.hex() + "\n" for b in keep))
    return len(keep)


def hypothesis_engine(runs: int) -> list[dict[str, object]]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.hardening import fuzz_targets

    results = []
    for target, share in SHARES.items():
        n = int(runs * share)
        seeds = fuzz_targets.seeds()[target]
        t0 = time.monotonic()

        @settings(max_examples=n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.one_of(st.binary(max_size=4096),
                         st.sampled_from(seeds).flatmap(
                             lambda s: st.lists(st.tuples(st.integers(0, len(s)),
                                                          st.binary(max_size=8)), max_size=4)
                             .map(lambda edits, s=s: _apply(s, edits)))))
        def prop(data: bytes, target: str = target) -> None:
            fuzz_targets.run_one(target, data)

        prop()
        results.append({"target": target, "runs": n, "seconds": round(time.monotonic() - t0, 1),
                        "crashes": [], "hangs": []})
    return results


def _apply(seed: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    b = bytearray(seed)
    for pos, chunk in edits:
        b[pos : pos + len(chunk)] = chunk
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs over all targets")
    ap.add_argument("--out", type=Path, default=Path("/tmp/remotevss-fuzz"))
    ap.add_argument("--targets", default=",".join(SHARES))
    ap.add_argument("--engine", choices=("atheris", "hypothesis"), default="atheris")
    ap.add_argument("--max-crashes", type=int, default=20)
    ap.add_argument("--export", action="store_true", help="save a minimized corpus for CI")
    ap.add_argument("--export-max", type=int, default=400)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--export-only", action="store_true",
                    help="only minimize and save the corpus of an earlier run in --out")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.runs, [args.corpus], args.artifacts, [])
        return 0
    if args.export_only:
        print({t: export(t, args.out, args.export_max) for t in args.targets.split(",")})
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    targets = args.targets.split(",")
    total = sum(SHARES[t] for t in targets)
    if args.engine == "hypothesis":
        results = hypothesis_engine(args.runs)
    else:
        results = [
            run_target(t, int(args.runs * SHARES[t] / total), args.out, args.max_crashes)
            for t in targets
        ]
    summary = {
        "engine": args.engine,
        "inputs": sum(int(r["runs"]) for r in results),  # type: ignore[call-overload]
        "crashes": sum(len(r["crashes"]) for r in results),  # type: ignore[arg-type]
        "hangs": sum(len(r["hangs"]) for r in results),  # type: ignore[arg-type]
        "targets": results,
    }
    if args.export and args.engine == "atheris":
        summary["exported"] = {t: export(t, args.out, args.export_max) for t in targets}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 1 if summary["crashes"] or summary["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
