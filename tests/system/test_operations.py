"""Operations, in-process on real filesystems: orphan GC, shadow storage limits,
``remotevss status``, metrics (docs/operations.md)."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from remotevss import cli
from remotevss.agent.config import GcConfig, MetricsConfig, StorageConfig
from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, CTX_BACKUP, HResult
from tests.conftest import LoopFs
from tests.system.ops_harness import ZERO, running_agent, sequence, unc

pytestmark = pytest.mark.root

HOUR = 3600.0


def _snapshots(share: Path) -> list[str]:
    d = share / ".snapshots"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(list(argv))
    return rc, capsys.readouterr().out


def _share(root: Path, name: str = "data", mib: int = 0) -> Path:
    p = root / name
    p.mkdir()
    (p / "small.txt").write_text("point in time\n")
    if mib:
        (p / "big.bin").write_bytes(os.urandom(mib << 20))
    return p


# ------------------------------------------------------------------ orphan GC


def test_gc_collects_orphan_and_aged_copies_and_keeps_young_persistent(
    tmp_path: Path, loopfs: LoopFs, capsys: pytest.CaptureFixture[str]
) -> None:
    share = _share(loopfs("tmpfs"))
    gc = GcConfig(interval=0, orphan_after=2 * HOUR, max_age=24 * HOUR)
    with running_agent(tmp_path, {"data": share}, gc=gc) as a:
        # an auto-release copy whose client finished the sequence and vanished
        orphan_sid, _, orphan_share = sequence(a, "data", CTX_BACKUP)
        # a persistent copy (APP_ROLLBACK = NO_AUTO_RELEASE), exposed and recovered
        keep_sid, _, keep_share = sequence(a, "data", CTX_APP_ROLLBACK)
        assert {orphan_share, keep_share} <= a.exposed()
        assert len(_snapshots(share)) == 2

        a.clock.advance(1 * HOUR)  # not idle long enough yet
        rc, out = _cli(capsys, "gc", "--json", "--admin-socket", a.admin_socket)
        assert rc == 0 and json.loads(out) == []

        a.clock.advance(1.5 * HOUR)  # 2.5 h idle: the auto-release set is an orphan
        rc, out = _cli(capsys, "gc", "--json", "--admin-socket", a.admin_socket)
        done = json.loads(out)
        assert rc == 0
        assert [(d["set"], d["reason"]) for d in done] == [(str(orphan_sid), "orphan")]
        assert "idle" in done[0]["detail"]
        assert orphan_sid not in a.service.machine.sets
        assert orphan_share not in a.exposed()  # its share is gone...
        assert len(_snapshots(share)) == 1  # ... and its snapshot
        # the persistent copy, younger than max_age, survives
        assert keep_sid in a.service.machine.sets and keep_share in a.exposed()
        assert {s.id for s in a.service.journal.load_sets()} == {keep_sid}
        assert a.service.journal.pending_intents() == []

        a.clock.advance(22 * HOUR)  # now 24.5 h old: the age limit takes it
        assert [(p.set_id, p.reason) for p in a.run(a.ops.collector.run_pass())] == [
            (keep_sid, "max_age")
        ]
        assert a.service.machine.sets == {} and a.exposed() == set()
        assert _snapshots(share) == [] and a.service.journal.load_sets() == []
        assert a.ops.collector.stats.deleted == {"orphan": 1, "max_age": 1}


def test_gc_max_age_per_context(tmp_path: Path, loopfs: LoopFs) -> None:
    share = _share(loopfs("tmpfs"))
    gc = GcConfig(interval=0, orphan_after=0, max_age=HOUR,
                  max_age_by_context=(("app_rollback", 0.0),))
    with running_agent(tmp_path, {"data": share}, gc=gc) as a:
        backup_sid, _, _ = sequence(a, "data", CTX_BACKUP)
        rollback_sid, _, _ = sequence(a, "data", CTX_APP_ROLLBACK)
        a.clock.advance(48 * HOUR)
        picks = a.run(a.ops.collector.run_pass())
        assert [(p.set_id, p.reason) for p in picks] == [(backup_sid, "max_age")]
        assert set(a.service.machine.sets) == {rollback_sid}  # 0 = never by age


# ------------------------------------------------------------------ storage limits


def test_storage_limit_evicts_oldest_then_refuses_per_policy(
    tmp_path: Path, loopfs: LoopFs, capsys: pytest.CaptureFixture[str]
) -> None:
    """ext4: the copy backend, where a snapshot's size is exactly its data (4 MiB)."""
    share = _share(loopfs("ext4", 96), mib=4)
    refuse = []
    with running_agent(tmp_path, {"data": share}, reload_to=refuse,
                       gc=GcConfig(interval=0, orphan_after=0, max_age=0)) as a:
        rc, out = _cli(capsys, "storage", "resize", "data", "--max", "10M",
                       "--admin-socket", a.admin_socket)
        assert rc == 0 and "10485760" in out
        limits = json.loads((tmp_path / "state" / "storage-limits.json").read_text())
        assert limits == {"volumes": {str(share): "10485760"}}

        first, _, first_share = sequence(a, "data", CTX_BACKUP)
        second, _, _ = sequence(a, "data", CTX_APP_ROLLBACK)  # 2 x 4 MiB fit in 10 MiB
        rc, out = _cli(capsys, "storage", "list", "--json", "--admin-socket", a.admin_socket)
        (vol,) = json.loads(out)
        assert vol["basis"] == "snapshots" and vol["copies"] == 2
        assert 8 << 20 <= vol["used"] < 9 << 20 and vol["maximum"] == 10 << 20
        rc, out = _cli(capsys, "storage", "list", "--admin-socket", a.admin_socket)
        assert str(share) in out and "10.0 MiB" in out

        # a third would make 12 MiB: delete_oldest removes the first copy, then commits
        third, _, _ = sequence(a, "data", CTX_BACKUP)
        assert set(a.service.machine.sets) == {second, third}
        assert first_share not in a.exposed() and len(_snapshots(share)) == 2
        assert a.ops.collector.stats.deleted == {"storage": 1}

        # policy refuse (applied by a reload): the fourth commit is refused, cleanly
        refuse.append(replace(a.config, storage=StorageConfig(policy="refuse")))
        a.loop.call_soon_threadsafe(a.ops.reload)
        deadline = time.monotonic() + 5
        while a.config.storage.policy != "refuse" and time.monotonic() < deadline:
            time.sleep(0.01)
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            assert c.add(sid, unc("data")).return_value == ZERO
            assert c.prepare(sid).return_value == ZERO
            rc = c.commit(sid).return_value
            assert rc == HResult.VSS_E_INSUFFICIENT_STORAGE == 0x8004231F
            assert a.service.machine.sets[sid].status.value == "Added"  # as after any failure
            assert len(_snapshots(share)) == 2  # nothing taken, nothing evicted
            assert set(a.service.machine.sets) == {second, third, sid}
            assert c.abort(sid).return_value == ZERO
        assert a.ops.storage.refusals == 1


def test_storage_resize_rejects_bad_sizes(
    tmp_path: Path, loopfs: LoopFs, capsys: pytest.CaptureFixture[str]
) -> None:
    share = _share(loopfs("tmpfs"))
    with running_agent(tmp_path, {"data": share}) as a:
        capsys.readouterr()
        rc = cli.main(["storage", "resize", "data", "--max", "lots",
                       "--admin-socket", a.admin_socket])
        assert rc == 2 and "not a size" in capsys.readouterr().err
        assert not (tmp_path / "state" / "storage-limits.json").exists()
        rc, out = _cli(capsys, "storage", "resize", str(share), "--max", "20%",
                       "--admin-socket", a.admin_socket)
        assert rc == 0 and "20%" in out
        # a path inside the share: the share's volume (the copy backend's is the share)
        (share / "sub").mkdir()
        rc, out = _cli(capsys, "storage", "resize", str(share / "sub"), "--max", "30%",
                       "--admin-socket", a.admin_socket)
        assert rc == 0 and f"maximum of {share}: 30%" in out
        # a path no share is on: no maximum would ever apply to it, so none is stored
        for other in ("/etc", f"copy:{tmp_path}", "nosuchshare"):
            rc = cli.main(["storage", "resize", other, "--max", "1G",
                           "--admin-socket", a.admin_socket])
            err = capsys.readouterr().err
            assert rc == 2 and ("share" in err), err
        limits = json.loads((tmp_path / "state" / "storage-limits.json").read_text())
        assert limits == {"volumes": {str(share): "30%"}}


# ------------------------------------------------------------------ status


def test_status_json_shows_set_in_flight_and_hijacked_pipe(
    tmp_path: Path, loopfs: LoopFs, capsys: pytest.CaptureFixture[str]
) -> None:
    share = _share(loopfs("tmpfs"))
    np_dir = tmp_path / "ncalrpc" / "np"
    with running_agent(tmp_path, {"data": share}, pipe_dir=np_dir) as a:
        rc, out = _cli(capsys, "status", "--json", "--admin-socket", a.admin_socket)
        st = json.loads(out)
        assert rc == 0 and st["healthy"] and st["samba_pipe"]["owned"] is True
        assert st["sets"] == [] and st["timer_deadline"] is None

        with a.client() as c:  # a set in flight: Added, the 1800 s timer running
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            assert c.add(sid, unc("data")).return_value == ZERO
        rc, out = _cli(capsys, "status", "--json", "--admin-socket", a.admin_socket)
        st = json.loads(out)
        assert rc == 0
        (s,) = st["sets"]
        assert (s["id"], s["status"], s["in_flight"]) == (str(sid), "Added", True)
        assert st["context"]["set"] is True
        assert 1790 < st["timer_remaining_s"] <= 1800
        assert abs(st["timer_deadline"] - (a.clock() + 1800)) < 15

        # samba-dcerpcd takes the pipe socket over: unhealthy, exit 1, and says why
        assert a.pipe is not None
        a.pipe.path.unlink()
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(a.pipe.path))
        other.listen()
        try:
            deadline = time.monotonic() + 5
            while a.pipe.owned and time.monotonic() < deadline:
                time.sleep(0.02)
            rc, out = _cli(capsys, "status", "--json", "--admin-socket", a.admin_socket)
            st = json.loads(out)
            assert rc == 1 and not st["healthy"]
            assert st["samba_pipe"]["owned"] is False
            assert st["samba_pipe"]["problem"] == "replaced by another socket"
            assert any("not ours" in p for p in st["problems"])
            rc, out = _cli(capsys, "status", "--admin-socket", a.admin_socket)
            assert rc == 1 and "UNHEALTHY" in out and "NOT OURS" in out and str(sid) in out
        finally:
            other.close()
    rc, out = _cli(capsys, "status", "--json", "--admin-socket", str(tmp_path / "agent.sock.admin"))
    assert rc == 3 and json.loads(out)["reachable"] is False


# ------------------------------------------------------------------ metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_counters_move_with_calls(tmp_path: Path, loopfs: LoopFs) -> None:
    share = _share(loopfs("tmpfs"))
    port = _free_port()
    gc = GcConfig(interval=0, orphan_after=HOUR)
    with running_agent(tmp_path, {"data": share}, gc=gc,
                       metrics=MetricsConfig(port=port)) as a:
        assert a.ops.metrics is not None and a.ops.metrics_port == port
        server = a.ops.metrics._server
        assert server is not None and server.server_address[0] == "127.0.0.1"  # localhost only
        before = _scrape(port)
        assert before.get('remotevss_fsrvp_calls_total{opnum="SET_CONTEXT",result="ZERO"}', 0) == 0
        sequence(a, "data", CTX_BACKUP, finish=False)
        with a.client() as c:  # a refused call is counted under its result
            assert c.start(uuid.uuid4()).return_value == HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS
        m = _scrape(port)
        assert m['remotevss_fsrvp_calls_total{opnum="SET_CONTEXT",result="ZERO"}'] == 1
        assert m['remotevss_fsrvp_calls_total{opnum="COMMIT_SHADOW_COPY_SET",result="ZERO"}'] == 1
        assert m['remotevss_fsrvp_calls_total{opnum="START_SHADOW_COPY_SET",'
                 'result="FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS"}'] == 1
        assert m['remotevss_fsrvp_call_duration_seconds_count{opnum="COMMIT_SHADOW_COPY_SET"}'] == 1
        vol = f"copy:{share}"
        assert m[f'remotevss_shadow_copies{{volume="{vol}"}}'] == 1
        assert m[f'remotevss_exposed_shares{{volume="{vol}"}}'] == 1
        assert m['remotevss_sets{state="Exposed"}'] == 1

        with a.client() as c:
            sid = next(iter(a.service.machine.sets))
            assert c.recovery_complete(sid).return_value == ZERO
        m = _scrape(port)
        assert m['remotevss_sequence_duration_seconds_count{outcome="recovered"}'] == 1
        a.clock.advance(2 * HOUR)
        a.run(a.ops.collector.run_pass())
        m = _scrape(port)
        assert m['remotevss_gc_deletions_total{reason="orphan"}'] == 1
        assert m[f'remotevss_shadow_copies{{volume="{vol}"}}'] == 0
        assert m[f'remotevss_exposed_shares{{volume="{vol}"}}'] == 0
        assert m[f'remotevss_storage_used_bytes{{basis="snapshots",volume="{vol}"}}'] == 0


# ------------------------------------------------------------------ btrfs accounting


def test_btrfs_usage_is_qgroup_exclusive_bytes(
    tmp_path: Path,
    loopfs: LoopFs,
    subvolume: Callable[[Path], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With quotas on, "used" is what deleting the snapshots would free: nothing while
    the live data is unchanged, the overwritten data once it diverges."""
    import subprocess

    import btrfsutil

    mnt = loopfs("btrfs", 256)
    share = subvolume(mnt / "data")
    (share / "big.bin").write_bytes(os.urandom(6 << 20))
    with running_agent(tmp_path, {"data": share}, backend="btrfs",
                       gc=GcConfig(interval=0, orphan_after=0, max_age=0)) as a:
        sequence(a, "data", CTX_BACKUP)
        rc, out = _cli(capsys, "storage", "list", "--json", "--admin-socket", a.admin_socket)
        (vol,) = json.loads(out)
        assert vol["basis"] == "filesystem" and "quota" in vol["note"]  # quotas off
        assert vol["used"] == vol["allocated"]

        subprocess.run(["btrfs", "quota", "enable", str(mnt)], check=True)
        subprocess.run(["btrfs", "quota", "rescan", "-w", str(mnt)], check=True,
                       capture_output=True)
        btrfsutil.sync(str(mnt))
        rc, out = _cli(capsys, "storage", "list", "--json", "--admin-socket", a.admin_socket)
        (vol,) = json.loads(out)
        assert vol["basis"] == "snapshots" and vol["note"] == ""
        assert vol["used"] < 1 << 20  # shares everything with the live subvolume

        (share / "big.bin").write_bytes(os.urandom(6 << 20))  # the live data diverges
        btrfsutil.sync(str(mnt))
        rc, out = _cli(capsys, "storage", "list", "--json", "--admin-socket", a.admin_socket)
        (vol,) = json.loads(out)
        assert 6 << 20 <= vol["used"] < 7 << 20  # the old 6 MiB are the snapshot's alone
