"""Crash soak: SIGKILL the agent at random effects, many times, on every backend.

    .venv/bin/python bench/soak/crash.py --rounds 40

For each backend (btrfs, reflink on XFS, copy on ext4: one loop filesystem each,
three shares) a real agent process is started ``--rounds`` times with a random
crash point (``REMOTEVSS_CRASH_AFTER``, the points of agent/service.py) and runs
a random sequence: 1-3 shares, a random context (backup, app rollback =
persistent, backup with auto-recovery = writable snapshots), finishing with
DeleteShareMapping or with Abort (teardown effects).  Persistent copies made in
earlier rounds accumulate and must survive every crash intact.  When a crash
cut a client's DeleteShareMapping calls short, the copies not yet deleted are
still there (as they must be) and the client retries those deletions.  After each
crash the agent restarts and ``check_consistent`` (journal = snapshots =
exposures = read-only mounts, no pending intent) must hold, with exactly the
persistent sets left.  Rounds in which the chosen point is not reached (the
sequence ended first) are counted apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, CTX_BACKUP, Attr, HResult  # noqa: E402

ZERO = HResult.ZERO
POINTS = ["create_intent", "create_snapshot", "expose_intent", "expose_share",
          "unexpose_share", "delete_snapshot", "unexpose"]  # fmt: skip
CONTEXTS = {"backup": CTX_BACKUP, "persistent": CTX_APP_ROLLBACK,
            "writable": CTX_BACKUP | Attr.ATTR_AUTO_RECOVERY}  # fmt: skip
SHARES = ["share0", "share1", "share2"]


def unc(n: str) -> str:
    return f"\\\\testfs\\{n}\\"


def one_round(a: Any, rng: random.Random, kept: dict[str, dict[str, uuid.UUID]],
              point: str) -> tuple[bool, str, dict[str, Any]]:  # fmt: skip
    """One crash run; returns (died, context name, what the client was doing)."""
    ctx_name = rng.choice(list(CONTEXTS))
    shares = rng.sample(SHARES, rng.randint(1, 3))
    finish_abort = rng.random() < 0.4
    a.start(crash_after=point)
    new_persistent: tuple[uuid.UUID, dict[str, uuid.UUID]] | None = None
    doing: dict[str, Any] = {"deleting": False}
    try:
        with a.client() as c:
            assert c.set_context(CONTEXTS[ctx_name]).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            copies = {s: c.add(sid, unc(s)).shadow_copy_id for s in shares}
            doing.update(sid=sid, copies=copies)
            c.prepare(sid)
            assert c.commit(sid).return_value == ZERO
            assert c.expose(sid).return_value == ZERO
            for s, cid in copies.items():
                c.get_share_mapping(cid, sid, unc(s))
            if finish_abort:
                c.abort(sid)
            else:
                assert c.recovery_complete(sid).return_value == ZERO
                if ctx_name == "persistent" and rng.random() < 0.5:
                    new_persistent = (sid, copies)
                else:
                    doing["deleting"] = True
                    for s, cid in copies.items():
                        c.delete_share_mapping(sid, cid, unc(s))
    except Exception:  # noqa: BLE001 - the agent dies mid-call by design
        pass
    died = a.proc.poll() is not None or _wait_dead(a, 0.3)
    if died:
        assert a.wait_dead() == -signal.SIGKILL
    else:
        a.stop()
        if new_persistent is not None:
            kept[str(new_persistent[0])] = new_persistent[1]
    return died, ctx_name, doing


def _wait_dead(a: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if a.proc.poll() is not None:
            return True
        time.sleep(0.02)
    return False


def soak_backend(fstype: str, rounds: int, rng: random.Random, work: Path) -> dict[str, Any]:
    from remotevss.loopfs import loop_filesystem
    from tests.hardening.harness import check_consistent
    from tests.system.agent_harness import AgentProcess

    size = {"btrfs": 512, "xfs": 512, "ext4": 256}[fstype]
    stats: dict[str, Any] = {"fstype": fstype, "rounds": 0, "killed": {}, "not_reached": 0,
                             "deletions_retried": 0, "failures": [],
                             "persistent_kept_max": 0}  # fmt: skip
    with loop_filesystem(fstype, size, work) as mnt:
        shares = {}
        for n in SHARES:
            p = mnt / n
            if fstype == "btrfs":
                import btrfsutil

                btrfsutil.create_subvolume(str(p))
            else:
                p.mkdir()
            for i in range(20):
                (p / f"f{i}").write_bytes(os.urandom(2048))
            shares[n] = p
        (work / f"agent-{fstype}").mkdir()
        a = AgentProcess(work / f"agent-{fstype}", shares)
        kept: dict[str, dict[str, uuid.UUID]] = {}
        for _ in range(rounds):
            point = rng.choice(POINTS)
            died, ctx, doing = one_round(a, rng, kept, point)
            stats["rounds"] += 1
            if died:
                stats["killed"][point] = stats["killed"].get(point, 0) + 1
            else:
                stats["not_reached"] += 1
            a.start()
            try:
                if died and doing["deleting"]:
                    # the client's DeleteShareMapping calls were cut short: the copies not
                    # yet deleted are still (correctly) there; the client retries them
                    with a.client() as c:
                        for s, cid in doing["copies"].items():
                            r = c.delete_share_mapping(doing["sid"], cid, unc(s)).return_value
                            assert r in (ZERO, HResult.FSRVP_E_OBJECT_NOT_FOUND), hex(r)
                    stats["deletions_retried"] += 1
                j = check_consistent(a.workdir / "state", list(shares.values()), set(a.exposed()))
                assert set(j.sets) == set(kept), (j.sets, list(kept))
                assert all(v == "Recovered" for v in j.sets.values()), j.sets
                stats["persistent_kept_max"] = max(stats["persistent_kept_max"], len(kept))
                # every persistent copy still there, its files intact
                for path in j.copies.values():
                    assert (Path(path) / "f0").stat().st_size == 2048
                if len(kept) > 4:  # keep the filesystem from filling: drop the oldest
                    sid = next(iter(kept))
                    with a.client() as c:
                        for s, cid in kept.pop(sid).items():
                            assert c.delete_share_mapping(uuid.UUID(sid), cid,
                                                          unc(s)).return_value == ZERO
            except AssertionError as exc:
                stats["failures"].append(f"{point}/{ctx}: {exc}"[:2000])
            finally:
                a.stop()
        a.start()
        with contextlib.suppress(Exception), a.client() as c:
            for sid, copies in kept.items():
                for s, cid in copies.items():
                    c.delete_share_mapping(uuid.UUID(sid), cid, unc(s))
        a.stop()
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100, help="crash runs per backend")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("/tmp/remotevss-crash-soak.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop devices)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    results = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rvss-crash-") as tmp:
        for fstype in ("btrfs", "xfs", "ext4"):
            results.append(soak_backend(fstype, args.rounds, rng, Path(tmp)))
    summary = {"seconds": round(time.monotonic() - t0), "backends": results,
               "failures": sum(len(r["failures"]) for r in results)}  # fmt: skip
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
