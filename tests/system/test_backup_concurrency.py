"""Several backups into one repository at once, and prune against running backups,
with real ``remotevss backup`` processes.

A backup is held in the middle of its run with SIGSTOP (outside any index
transaction), so "at the same time" is certain rather than a race the
machine's speed decides; SIGCONT lets it finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.support.backup_cli import CLI, cli, rand


def make_share(root: Path, seed: str, big: int = 10, shared: bool = False) -> None:
    root.mkdir(parents=True)
    for i in range(big):
        (root / f"big{i}.bin").write_bytes(rand(f"{seed}{i}", 6 << 20))
    for i in range(150):
        (root / "small" / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (root / "small" / f"d{i % 7}" / f"f{i}.txt").write_bytes(b"%s %d\n" % (seed.encode(), i)
                                                                 * (i + 1))
    if shared:  # the same bytes as share "common": deduplicated against an earlier point
        (root / "common.bin").write_bytes(rand("common", 3 << 20))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def start(repo: Path, spec: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "run", spec, "--repo", str(repo), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def hold_mid_run(repo: Path, proc: subprocess.Popen[str]) -> None:
    """SIGSTOP ``proc`` once it has sealed a pack and started the next, at a moment it
    holds no index transaction (so other processes are not left waiting on SQLite's lock)
    and still has its next pack in progress: between the look and the stop it may
    have finished that pack too (with 1 MiB packs, often), then it runs on and is
    held again."""
    packs = len(list((repo / "packs").rglob("*.pack")))
    deadline = time.monotonic() + 60

    def in_progress() -> bool:
        return bool(list((repo / "tmp").glob(f"{writer_of(repo, proc.pid)}-*")))

    while True:
        while len(list((repo / "packs").rglob("*.pack"))) <= packs or not in_progress():
            assert proc.poll() is None, ("the backup ended before it could be held",
                                         proc.stderr)
            assert time.monotonic() < deadline
            time.sleep(0.005)
        _stop_outside_a_commit(repo, proc)
        if in_progress():
            return
        proc.send_signal(signal.SIGCONT)


def _stop_outside_a_commit(repo: Path, proc: subprocess.Popen[str]) -> None:
    while True:
        proc.send_signal(signal.SIGSTOP)
        _wait_stopped(proc.pid)  # a signal is delivered later: look only once it was
        con = sqlite3.connect(repo / "index.sqlite", timeout=0)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # stopped inside a commit: let it finish that
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
        finally:
            con.close()


def _wait_stopped(pid: int) -> None:
    """Until every thread of ``pid`` is in the stopped state (T)."""
    deadline = time.monotonic() + 10
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if states and all(st in ("T", "t", "Z", "X") for st in states):  # Z: a thread ending
            return
        assert time.monotonic() < deadline, f"{pid} did not stop: {states}"
        time.sleep(0.001)


def writer_of(repo: Path, pid: int) -> str:
    """The writer id in the lock note of process ``pid`` (its tmp files' prefix)."""
    for note in (repo / "locks").glob("*.lock"):
        try:
            data = json.loads(note.read_text() or "{}")
        except (OSError, ValueError):
            continue
        if data.get("pid") == pid:
            return str(data["id"])
    return "no-note-yet"


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, (proc.returncode, err)
    result: dict[str, object] = json.loads(out)
    return result


def test_two_backups_of_different_shares_at_once_both_restore(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("init", "--repo", repo, "--pack-size", "1")
    a, b = tmp_path / "a", tmp_path / "b"
    make_share(a, "a", shared=True)
    make_share(b, "b", shared=True)

    first = start(repo, f"sales={a}")
    hold_mid_run(repo, first)
    try:
        assert len(list((repo / "locks").glob("*.lock"))) == 1
        assert list((repo / "tmp").iterdir()), "the held run has a pack in progress"
        # The second share goes in, from start to end, while the first run is mid-way.
        second = json.loads(cli("run", f"hr={b}", "--repo", repo, "--json").stdout)
        assert first.poll() is None
        # The same share twice at once is refused (they would share files-cache rows).
        proc = cli("run", f"sales={a}", "--repo", repo, check=5)
        assert "source 'sales' is locked" in proc.stderr
    finally:
        point_a = finish(first)
    assert second["id"] == 1 and point_a["id"] == 2
    assert not list((repo / "locks").glob("*.lock")) and not list((repo / "tmp").iterdir())

    # And both again at the same time, unheld, after changes on both shares.
    (a / "big3.bin").write_bytes(rand("a-new", 5 << 20))
    (b / "small" / "d1" / "added.txt").write_bytes(b"added")
    procs = [start(repo, f"sales={a}"), start(repo, f"hr={b}")]
    results = [finish(p) for p in procs]
    assert sorted(r["id"] for r in results) == [3, 4]  # type: ignore[type-var]

    assert "4 points: ok" in cli("check", "--repo", repo).stdout
    assert cli("verify", "--repo", repo).returncode == 0
    points = json.loads(cli("list", "--repo", repo, "--json").stdout)
    assert sorted(p["meta"].get("x", p["id"]) for p in points) == [1, 2, 3, 4]
    for pid, label, src in ((1, "hr", b), (2, "sales", a)):
        out = tmp_path / f"out{pid}"
        cli("restore", str(pid), "--repo", repo, "--path", label, "--to", out)
        want = tree(src)
        if pid == 2:
            want["big3.bin"] = rand("a3", 6 << 20)  # as it was before the change
        if pid == 1:
            del want["small/d1/added.txt"]
        assert tree(out) == want, pid
    for r, label, src in ((results[0], "sales", a), (results[1], "hr", b)):
        out = tmp_path / f"latest-{label}"
        cli("restore", str(r["id"]), "--repo", repo, "--path", label, "--to", out)
        assert tree(out) == tree(src), label


def test_prune_refuses_or_waits_while_a_backup_runs_and_keeps_what_it_needs(
        tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("init", "--repo", repo, "--pack-size", "1")
    common = tmp_path / "common"
    common.mkdir()
    (common / "common.bin").write_bytes(rand("common", 3 << 20))
    cli("run", f"sales={common}", "--repo", repo)  # point 1: the blobs the next run reuses
    src = tmp_path / "src"
    make_share(src, "s", shared=True)

    backup = start(repo, f"sales={src}")
    hold_mid_run(repo, backup)
    waiting: subprocess.Popen[str] | None = None
    try:
        packs_before = sorted((repo / "packs").rglob("*.pack"))
        tmp_before = sorted((repo / "tmp").iterdir())
        proc = cli("prune", "--repo", repo, "--keep-last", "1", check=5)
        assert f"backup run (pid {backup.pid}" in proc.stderr, proc.stderr
        assert sorted((repo / "packs").rglob("*.pack")) == packs_before
        assert sorted((repo / "tmp").iterdir()) == tmp_before
        waiting = subprocess.Popen([*CLI, "prune", "--repo", str(repo), "--keep-last", "1",
                                    "--wait", "120", "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert waiting.poll() is None, "prune --wait must wait for the backup"
    finally:
        point = finish(backup)
    assert waiting is not None
    out, err = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, err
    res = json.loads(out)
    assert res["removed_points"] == [1] and res["kept_points"] == [point["id"]]
    # The kept point needed point 1's blobs (common.bin was deduplicated): all there.
    restored = tmp_path / "out"
    cli("restore", "latest", "--repo", repo, "--path", "sales", "--to", restored)
    assert tree(restored) == tree(src)
    assert cli("verify", "--repo", repo).returncode == 0
    assert os.listdir(repo / "tmp") == []


def test_sigkill_of_one_of_two_concurrent_backups(tmp_path: Path) -> None:
    """The survivor completes; the repository checks with both earlier points; the next
    run names the killed one and removes its unfinished pack, and nobody else's."""
    repo = tmp_path / "repo"
    cli("init", "--repo", repo, "--pack-size", "1")
    a, b = tmp_path / "a", tmp_path / "b"
    make_share(a, "a", big=6)
    make_share(b, "b", big=6)
    cli("run", f"hr={b / 'small'}", "--repo", repo)  # point 1

    victim = start(repo, f"sales={a}")
    hold_mid_run(repo, victim)
    survivor = start(repo, f"hr={b}")
    hold_mid_run(repo, survivor)  # both mid-run, each with its own pack in progress
    # (a writer may also have a full pack still being finished by its sealing thread)
    writers = {writer_of(repo, victim.pid), writer_of(repo, survivor.pid)}
    assert {p.name.split("-")[0] for p in (repo / "tmp").iterdir()} == writers
    victim.kill()
    victim.communicate(timeout=60)
    point = finish(survivor)
    assert point["id"] == 2
    report = cli("check", "--repo", repo).stdout
    assert "2 points: ok" in report and "tmp/" in report  # the victim's pack: a note
    third = cli("run", f"sales={a}", "--repo", repo, "--json")
    assert f"(pid {victim.pid}" in third.stderr and "was interrupted" in third.stderr
    assert not list((repo / "tmp").iterdir())
    assert not list((repo / "locks").glob("*.lock"))
    assert "3 points: ok" in cli("check", "--repo", repo).stdout
    for pid, label, src in ((1, "hr", b / "small"), (2, "hr", b), (3, "sales", a)):
        out = tmp_path / f"out{pid}"
        cli("restore", str(pid), "--repo", repo, "--path", label, "--to", out)
        assert tree(out) == tree(src), pid
