"""8 FSRVP clients through smbd at once, mixed sequences, for minutes: the concurrency soak.

    .venv/bin/python bench/soak/concurrency.py --minutes 10 [--clients 8] [--out DIR]

Builds its own stack (loop btrfs with two subvolume shares, a private smbd +
samba-dcerpcd without rpcd_fsrvp, a real agent with Samba's shares and registry
exposure, ``sequence_timeout`` short so abandoned sets expire within the run)
unless called from the tests (tests/hardening/test_concurrency.py runs it for
30 s on the session's stack).

Each client is a separate process whose TCP connections come from its own
loopback address (127.0.0.10+i; impacket has no option, so ``connect`` is
wrapped to ``bind`` first): SetContext's owner check sees distinct clients, as
it would on a network.  Each loops, until the deadline, over a random mix:

* ``full``: SetContext (backup, file-share backup, app rollback, backup with
  auto-recovery), Start, Add 1-2 shares, Prepare, Commit, Expose,
  GetShareMapping, RecoveryComplete, then DeleteShareMapping (persistent sets
  are kept for a while and deleted in a later iteration);
* ``abort``: SetContext, Start, Add, maybe Commit/Expose, Abort;
* ``query``: GetSupportedVersion, IsPathSupported, IsPathShadowCopied;
* ``retry``: SetContext twice in a row (the spec's same-client retry);
* ``abandon`` (rarely): SetContext, Start, Add, then hang up: the set must die
  by the message sequence timer, nobody else may be blocked for longer.

What is checked (any violation is an error in the summary):

* every return code is the spec's for that step: SetContext is ZERO or
  FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS (another client holds the context), and
  once a client holds the context every call of its sequence is ZERO;
* mutual exclusion: the intervals in which clients held the context never
  overlap (client-side timestamps: from SetContext's answer to the releasing
  call's request);
* no stuck timer: after an abandoned sequence someone gets the context within
  the sequence timeout + 5 s whenever clients were asking;
* no deadlock: no call takes longer than 30 s, every worker finishes;
* at the end, after the timer has fired: journal = snapshots on disk = registry
  shares = mounts, no set left, no intent pending;
* agent RSS (VmRSS) growth from the end of warm-up to the end at most 5 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from remotevss.fsrvp.constants import (  # noqa: E402
    CTX_APP_ROLLBACK,
    CTX_BACKUP,
    CTX_FILE_SHARE_BACKUP,
    Attr,
    HResult,
)

ZERO = HResult.ZERO
IN_PROGRESS = HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS
CONTEXTS = [CTX_BACKUP, CTX_FILE_SHARE_BACKUP, CTX_APP_ROLLBACK,
            CTX_BACKUP | Attr.ATTR_AUTO_RECOVERY]
SHARES = ["data0", "data1"]
STALL_SECONDS = 30.0
RSS_LIMIT_KB = 5 * 1024


# ------------------------------------------------------------------ worker


class Worker:
    def __init__(self, idx: int, port: int, source: str, seed: int, abandon_p: float,
                 timer: float) -> None:  # fmt: skip
        self.idx = idx
        self.timer = timer
        self.port = port
        self.source = source
        self.rng = random.Random(seed)
        self.abandon_p = abandon_p
        self.c: Any = None
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.holds: list[list[float | None]] = []  # [acquired, released or None (abandoned)]
        self.kept: list[tuple[uuid.UUID, dict[str, uuid.UUID]]] = []  # persistent sets
        self.max_call = 0.0
        self.calls = 0

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def connect(self) -> None:
        from tests.hardening.harness import SmbFsrvp

        self.close()
        self.c = SmbFsrvp(self.port, source=self.source, timeout=STALL_SECONDS * 2)

    def close(self) -> None:
        if self.c is not None:
            self.c.close()
            self.c = None

    def call(self, name: str, *args: Any) -> Any:
        t0 = time.monotonic()
        r = getattr(self.c, name)(*args)
        dt = time.monotonic() - t0
        self.calls += 1
        self.max_call = max(self.max_call, dt)
        if dt > STALL_SECONDS:
            self.errors.append(f"{name} took {dt:.1f} s")
        return r

    def expect(self, what: str, code: int, *allowed: int) -> bool:
        if code in (allowed or (ZERO,)):
            return True
        self.errors.append(f"{what}: 0x{code:08x} (expected {[hex(a) for a in allowed or (0,)]})")
        return False

    def acquire(self, ctx: int) -> bool:
        r = self.call("set_context", ctx).return_value
        if r == IN_PROGRESS:
            self.count("set_context_in_progress")
            return False
        if not self.expect("SetContext", r, ZERO):
            return False
        self.count("set_context_ok")
        self.holds.append([time.time(), None])
        return True

    def release_mark(self) -> None:
        self.holds[-1][1] = time.time()

    def unc(self, share: str) -> str:
        return f"\\\\HARDFS\\{share}\\"

    def full(self) -> None:
        ctx = self.rng.choice(CONTEXTS)
        if not self.acquire(ctx):
            return
        shares = self.rng.sample(SHARES, self.rng.randint(1, 2))
        r = self.call("start", uuid.uuid4())
        if not self.expect("Start", r.return_value):
            return self._give_up(None)
        sid = r.shadow_copy_set_id
        copies = {}
        for s in shares:
            a = self.call("add", sid, self.unc(s))
            if not self.expect("Add", a.return_value):
                return self._give_up(sid)
            copies[s] = a.shadow_copy_id
        for step in ("prepare", "commit", "expose"):
            if not self.expect(step, self.call(step, sid).return_value):
                return self._give_up(sid)
        for s, cid in copies.items():
            m = self.call("get_share_mapping", cid, sid, self.unc(s))
            if not self.expect("GetShareMapping", m.return_value):
                return self._give_up(sid)
        self.release_mark()
        if not self.expect("RecoveryComplete", self.call("recovery_complete", sid).return_value):
            return
        if ctx == CTX_APP_ROLLBACK and self.rng.random() < 0.7:
            self.kept.append((sid, copies))  # a persistent copy, deleted later
            self.count("persistent_kept")
        else:
            self.delete(sid, copies)
        self.count("full")

    def delete(self, sid: uuid.UUID, copies: dict[str, uuid.UUID]) -> None:
        for s, cid in copies.items():
            self.expect("DeleteShareMapping",
                        self.call("delete_share_mapping", sid, cid, self.unc(s)).return_value)

    def _give_up(self, sid: uuid.UUID | None) -> None:
        self.release_mark()
        if sid is not None:
            self.call("abort", sid)
        self.count("gave_up")

    def abort(self) -> None:
        if not self.acquire(self.rng.choice(CONTEXTS)):
            return
        r = self.call("start", uuid.uuid4())
        if not self.expect("Start", r.return_value):
            return self._give_up(None)
        sid = r.shadow_copy_set_id
        self.expect("Add", self.call("add", sid, self.unc(self.rng.choice(SHARES))).return_value)
        depth = self.rng.randint(0, 2)
        if depth >= 1:
            self.expect("Commit", self.call("commit", sid).return_value)
        if depth >= 2:
            self.expect("Expose", self.call("expose", sid).return_value)
        self.release_mark()
        self.expect("Abort", self.call("abort", sid).return_value)
        self.count("abort")

    def query(self) -> None:
        self.expect("GetSupportedVersion", self.call("get_supported_version").return_value)
        s = self.rng.choice(SHARES)
        self.expect("IsPathSupported", self.call("is_path_supported", self.unc(s)).return_value)
        self.expect("IsPathShadowCopied",
                    self.call("is_path_shadow_copied", self.unc(s)).return_value)
        self.count("query")

    def retry(self) -> None:
        if not self.acquire(CTX_BACKUP):
            return
        r = self.call("set_context", CTX_FILE_SHARE_BACKUP).return_value  # same client: ZERO
        self.expect("SetContext retry", r, ZERO)
        r2 = self.call("start", uuid.uuid4())
        if not self.expect("Start after retry", r2.return_value):
            return self._give_up(None)
        self.release_mark()
        self.expect("Abort", self.call("abort", r2.shadow_copy_set_id).return_value)
        self.count("retry")

    def abandon(self) -> None:
        if not self.acquire(CTX_BACKUP):
            return
        r = self.call("start", uuid.uuid4())
        if self.expect("Start", r.return_value):
            self.call("add", r.shadow_copy_set_id, self.unc(self.rng.choice(SHARES)))
        self.close()  # hang up: the set is left to the timer
        self.count("abandon")
        # stay away (a retry from this address would drop the set at once): the
        # others must get the context back through the timer alone
        time.sleep(self.timer + 1.0)

    def run(self, until: float) -> None:
        self.connect()
        while time.time() < until:
            if self.c is None or self.rng.random() < 0.05:
                self.connect()
            roll = self.rng.random()
            try:
                if self.kept and self.rng.random() < 0.3:
                    self.delete(*self.kept.pop(0))
                elif roll < self.abandon_p:
                    self.abandon()
                elif roll < 0.55:
                    self.full()
                elif roll < 0.75:
                    self.abort()
                elif roll < 0.92:
                    self.query()
                else:
                    self.retry()
            except Exception as exc:  # noqa: BLE001 - recorded; the soak goes on
                self.errors.append(f"exception: {type(exc).__name__}: {exc}")
                self.close()
            time.sleep(self.rng.uniform(0.002, 0.03))
        if self.c is None:
            self.connect()
        while self.kept:
            self.delete(*self.kept.pop(0))
        self.close()


def worker_main(args: argparse.Namespace) -> int:
    w = Worker(args.worker, args.port, args.source, args.seed, args.abandon, args.timer)
    with contextlib.suppress(KeyboardInterrupt):
        w.run(args.until)
    Path(args.out).write_text(json.dumps({
        "idx": w.idx, "source": w.source, "counts": w.counts, "errors": w.errors[:200],
        "n_errors": len(w.errors), "holds": w.holds, "max_call": w.max_call, "calls": w.calls,
    }))  # fmt: skip
    return 0


# ------------------------------------------------------------------ driver


def run_workers(stack: Any, seconds: float, clients: int, out: Path, seed: int,
                timer: float, abandon_p: float = 0.03) -> dict[str, Any]:  # fmt: skip
    """Run the clients against ``stack`` (tests.hardening.harness.Stack); the summary."""
    from tests.hardening.harness import read_journal, vmrss_kb

    out.mkdir(parents=True, exist_ok=True)
    pid = stack.agent.pid
    until = time.time() + seconds
    procs = []
    for i in range(clients):
        procs.append(subprocess.Popen([
            sys.executable, __file__, "--worker", str(i), "--port", str(stack.samba.port),
            "--source", f"127.0.0.{10 + i}", "--seed", str(seed * 100 + i),
            "--until", str(until), "--abandon", str(abandon_p), "--timer", str(timer),
            "--out", str(out / f"w{i}.json"),
        ], cwd=ROOT))  # fmt: skip
    warm = min(seconds * 0.1, 30.0)
    time.sleep(warm)
    rss = [vmrss_kb(pid)]
    rss_warm = rss[0]
    while time.time() < until:
        time.sleep(min(5.0, max(0.0, until - time.time())))
        rss.append(vmrss_kb(pid))
    stuck = []
    for p in procs:
        try:
            p.wait(timeout=STALL_SECONDS * 3)
        except subprocess.TimeoutExpired:
            stuck.append(p.pid)
            p.kill()
            p.wait()
    results = [json.loads((out / f"w{i}.json").read_text())
               for i in range(clients) if (out / f"w{i}.json").exists()]  # fmt: skip
    # the abandoned sets die by the timer; then everything must be gone
    deadline = time.monotonic() + timer + 10
    while read_journal(stack.agent.workdir / "state").sets and time.monotonic() < deadline:
        time.sleep(0.2)
    errors: list[str] = []  # the driver's own findings; the workers' are in results
    try:
        j = stack.check()
        if j.sets:
            errors.append(f"sets left at the end: {j.sets}")
    except AssertionError as exc:
        errors.append(f"inconsistent at the end: {exc}")
    rss_end = vmrss_kb(pid)
    overlaps, stuck_timer, gaps = _exclusion(results, timer)
    errors += overlaps + stuck_timer
    if stuck:
        errors.append(f"workers did not finish (deadlock?): {stuck}")
    if rss_end - rss_warm > RSS_LIMIT_KB:
        errors.append(f"agent RSS grew {rss_end - rss_warm} kB (limit {RSS_LIMIT_KB} kB)")
    counts: dict[str, int] = {}
    for r in results:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
    return {
        "expose": stack.agent.expose,
        "seconds": seconds,
        "clients": clients,
        "calls": sum(r["calls"] for r in results),
        "counts": counts,
        "max_call_s": round(max((r["max_call"] for r in results), default=0.0), 3),
        "abandoned_then_next_holder_s": [round(g, 2) for g in gaps],
        "rss_kb": {"after_warmup": rss_warm, "end": rss_end, "max": max(rss + [rss_end]),
                   "growth": rss_end - rss_warm},
        "n_errors": sum(r["n_errors"] for r in results) + len(errors),
        "errors": (errors + [e for r in results for e in r["errors"]])[:50],
    }  # fmt: skip


def _exclusion(results: list[dict[str, Any]], timer: float
               ) -> tuple[list[str], list[str], list[float]]:  # fmt: skip
    """Context holds of different clients must not overlap; an abandoned hold ends by
    the next acquisition, which must come within the timer + 5 s."""
    holds = sorted((h[0], h[1], r["idx"]) for r in results for h in r["holds"])
    errors, stuck, gaps = [], [], []
    for n, (a0, a1, ai) in enumerate(holds):
        if a1 is not None:
            continue
        nxt = next((b0 for b0, _b1, bi in holds[n + 1 :] if bi != ai), None)
        if nxt is not None:  # abandoned: the next holder came after the timer
            gaps.append(nxt - a0)
            if nxt - a0 > timer + 5:
                stuck.append(f"context free only {nxt - a0:.1f} s after client {ai} hung up")
    for (_a0, a1, ai), (b0, _b1, bi) in zip(holds, holds[1:], strict=False):
        if a1 is not None and b0 < a1 and ai != bi:
            errors.append(f"clients {ai} and {bi} held the context at once ({b0:.3f} < {a1:.3f})")
    return errors, stuck, gaps


def build_stack(work: Path, timer: float, expose: str = "registry") -> Any:
    """Loop btrfs + private Samba + agent, as tests/hardening/conftest.py builds it."""
    import btrfsutil

    from remotevss.loopfs import loop_filesystem
    from tests.hardening.harness import SambaAgent, Stack
    from tests.support.samba import PrivateSamba

    es = contextlib.ExitStack()
    mnt = es.enter_context(loop_filesystem("btrfs", 1024, work))
    shares = {}
    for name in SHARES:
        btrfsutil.create_subvolume(str(mnt / name))
        (mnt / name / "f.txt").write_text(f"{name} v1\n")
        shares[name] = mnt / name
    samba = PrivateSamba(work / "samba", dict(shares), samba_fsrvp=False, netbios_name="HARDFS")
    (work / "agent").mkdir()
    agent = SambaAgent(work / "agent", {}, sequence_timeout=timer, samba_conf=samba.conf,
                       expose=expose)  # fmt: skip
    samba.start()
    es.callback(samba.stop)
    agent.start()
    es.callback(agent.stop)
    return Stack(samba, agent, shares), es


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--timer", type=float, default=5.0, help="agent sequence_timeout, seconds")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("/tmp/remotevss-concurrency"))
    ap.add_argument("--expose", choices=("registry", "symlink"), default="registry",
                    help="snapshot shares as Samba registry shares (production) or symlinks "
                         "(leaves python-samba's registry and messaging out of the RSS figure)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--abandon", type=float, default=0.03, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        return worker_main(args)
    if os.geteuid() != 0:
        print("needs root (loop btrfs, smbd)", file=sys.stderr)
        return 2
    import tempfile

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rvss-soak-") as tmp:
        stack, es = build_stack(Path(tmp), args.timer, args.expose)
        with es:
            summary = run_workers(stack, args.minutes * 60, args.clients, args.out, args.seed,
                                  args.timer)  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 1 if summary["n_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
