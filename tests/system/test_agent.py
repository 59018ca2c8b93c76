"""The agent end to end: a real process, real btrfs on a loop device, impacket's
DCE/RPC client on the local socket."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, CTX_BACKUP, Attr, HResult
from tests.system.agent_harness import AgentProcess

pytestmark = pytest.mark.root

ZERO = HResult.ZERO


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mount")
    for tool in ("mkfs.btrfs", "losetup"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


@pytest.fixture
def btrfs(tmp_path: Path) -> Iterator[Path]:
    _need_root()
    from remotevss.loopfs import loop_filesystem

    with loop_filesystem("btrfs", 512, tmp_path) as mnt:
        yield mnt


def make_agent(tmp_path: Path, mnt: Path, n: int = 1, **kw: object) -> AgentProcess:
    import btrfsutil

    shares = {}
    for i in range(n):
        p = mnt / f"share{i}"
        btrfsutil.create_subvolume(str(p))
        shares[f"share{i}"] = p
    work = tmp_path / "agent"
    work.mkdir(exist_ok=True)
    return AgentProcess(work, shares, **kw)  # type: ignore[arg-type]


@pytest.fixture
def agent(tmp_path: Path, btrfs: Path) -> Iterator[AgentProcess]:
    a = make_agent(tmp_path, btrfs)
    a.start()
    yield a
    a.stop()


def unc(name: str, trailing: bool = True) -> str:
    return "\\\\testfs\\" + name + ("\\" if trailing else "")


class Writer(threading.Thread):
    """Keeps writing numbered files (each fully written before the next starts), so a
    snapshot must hold exactly a prefix 0..k of them, complete."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.count = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            data = (f"file {self.count}\n" * 200).encode()
            with open(self.root / f"w{self.count:06d}", "wb") as f:
                f.write(data)
            self.count += 1
            (self.root / "counter").write_text(str(self.count))

    def check_snapshot(
        self, snap: Path, done_before: int, started_after: int, atomic: bool = True
    ) -> int:
        """The snapshot is the crash-consistent image of one instant inside Commit:
        every file written before Commit began is there and whole, none written after
        Commit returned is there, and a file written during the call is either whole
        or (btrfs: data still in delayed allocation at the instant) empty, never torn."""
        names = sorted(p.name for p in snap.iterdir() if p.name.startswith("w"))
        k = len(names)
        if atomic:  # one instant for the whole tree (btrfs)
            assert names == [f"w{i:06d}" for i in range(k)], "snapshot is not a prefix"
        else:  # a tree walk (reflink/copy): each file from some instant inside Commit
            assert names[:done_before] == [f"w{i:06d}" for i in range(done_before)]
            k = int(names[-1][1:]) + 1 if names else 0
        assert done_before <= k <= started_after + 1
        for i in (int(n[1:]) for n in names):
            data = (snap / f"w{i:06d}").read_bytes()
            whole = (f"file {i}\n" * 200).encode()
            if i < done_before:
                assert data == whole, f"w{i:06d} written before commit is not whole"
            else:
                assert data in (whole, b""), f"w{i:06d} is torn"
        return k


def full_sequence(
    a: AgentProcess,
    names: list[str],
    context: int = CTX_BACKUP,
    writers: dict[str, Writer] | None = None,
) -> dict[str, object]:
    """The spec's sequence; returns set id, copy ids, mappings and writer bounds."""
    with a.client() as c:
        for n in names:
            r = c.is_path_supported(unc(n))
            assert r.return_value == ZERO and r.supported_by_this_provider
            assert r.owner_machine_name == "TESTFS"
        v = c.get_supported_version()
        assert (v.return_value, v.min_version, v.max_version) == (ZERO, 1, 1)
        assert c.set_context(context).return_value == ZERO
        r = c.start(uuid.uuid4())
        assert r.return_value == ZERO
        sid = r.shadow_copy_set_id
        copies = {}
        for n in names:
            r = c.add(sid, unc(n))
            assert r.return_value == ZERO, hex(r.return_value)
            copies[n] = r.shadow_copy_id
        assert c.prepare(sid).return_value == ZERO
        before = {n: w.count for n, w in (writers or {}).items()}
        r = c.commit(sid)
        assert r.return_value == ZERO, hex(r.return_value)
        after = {n: w.count for n, w in (writers or {}).items()}
        assert c.expose(sid).return_value == ZERO
        mappings = {}
        for n in names:
            r = c.get_share_mapping(copies[n], sid, unc(n))
            assert r.return_value == ZERO
            m = r.mapping
            assert (m.shadow_copy_set_id, m.shadow_copy_id) == (sid, copies[n])
            assert m.share_name_unc == unc(n)
            assert m.shadow_copy_share_name == f"{n}@{{{copies[n]}}}"
            mappings[n] = m
        return {
            "set": sid,
            "copies": copies,
            "mappings": mappings,
            "before": before,
            "after": after,
        }


def exposed_path(a: AgentProcess, name: str) -> Path:
    return a.expose_dir / name


@pytest.mark.parametrize("n_shares", [1, 16])
def test_full_sequence_point_in_time(tmp_path: Path, btrfs: Path, n_shares: int) -> None:
    a = make_agent(tmp_path, btrfs, n_shares)
    a.start()
    try:
        names = sorted(a.shares)
        writers = {n: Writer(a.shares[n]) for n in names}
        for w in writers.values():
            w.start()
        time.sleep(0.05)
        res = full_sequence(a, names, writers=writers)
        time.sleep(0.05)
        for w in writers.values():
            w.stop_flag.set()
            w.join()
        for n in names:
            m = res["mappings"][n]  # type: ignore[index]
            snap = exposed_path(a, m.shadow_copy_share_name)
            k = writers[n].check_snapshot(snap, res["before"][n], res["after"][n])  # type: ignore[index]
            assert writers[n].count > k  # the live share moved on
            with pytest.raises(OSError) as exc:
                (snap / "new").write_text("x")
            assert exc.value.errno == errno.EROFS
        with a.client() as c:
            sid = res["set"]
            assert c.recovery_complete(sid).return_value == ZERO  # type: ignore[arg-type]
            sc = c.is_path_shadow_copied(unc(names[0]))
            assert sc.return_value == ZERO and sc.shadow_copy_present
            for n in names:
                cid = res["copies"][n]  # type: ignore[index]
                assert c.delete_share_mapping(sid, cid, unc(n)).return_value == ZERO
            sc = c.is_path_shadow_copied(unc(names[0]))
            assert sc.return_value == ZERO and not sc.shadow_copy_present
        assert a.snapshots() == [] and a.exposed() == {}
    finally:
        a.stop()


def test_writable_snapshot_until_recovery_complete(agent: AgentProcess) -> None:
    res = full_sequence(agent, ["share0"], CTX_BACKUP | Attr.ATTR_AUTO_RECOVERY)
    m = res["mappings"]["share0"]  # type: ignore[index]
    snap = exposed_path(agent, m.shadow_copy_share_name)
    (snap / "fixup.log").write_text("writer auto-recovery\n")
    assert (snap / "fixup.log").read_text() == "writer auto-recovery\n"
    with agent.client() as c:
        assert c.recovery_complete(res["set"]).return_value == ZERO  # type: ignore[arg-type]
    with pytest.raises(OSError) as exc:
        (snap / "fixup.log").write_text("again")
    assert exc.value.errno == errno.EROFS
    assert (snap / "fixup.log").read_text() == "writer auto-recovery\n"


def test_timer_expiry_tears_down_unfinished_set(tmp_path: Path, btrfs: Path) -> None:
    a = make_agent(tmp_path, btrfs, sequence_timeout=1)
    a.start()
    try:
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            assert c.add(sid, unc("share0")).return_value == ZERO
            assert c.commit(sid).return_value == ZERO
            assert len(a.snapshots()) == 1
            time.sleep(1.6)  # the agent's own timer fires; no call needed
            assert a.snapshots() == []
            assert c.expose(sid).return_value == HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH
            assert c.start(uuid.uuid4()).return_value == HResult.FSRVP_E_BAD_STATE
    finally:
        a.stop()


def test_samba_mode_codes_after_expiry(tmp_path: Path, btrfs: Path) -> None:
    """smbtorture's seq_timeout expectations."""
    a = make_agent(tmp_path, btrfs, mode="samba", sequence_timeout=1)
    a.start()
    try:
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            time.sleep(1.5)
            assert c.add(sid, unc("share0")).return_value == HResult.E_INVALIDARG
    finally:
        a.stop()


def test_denied_caller_gets_access_denied_on_every_opnum(tmp_path: Path, btrfs: Path) -> None:
    """A caller the socket's mode would normally keep out (we open it up) is refused
    by the agent itself, on every opnum, with no state change."""
    import subprocess
    import sys
    import tempfile

    open_dir = Path(tempfile.mkdtemp(prefix="rvss-sock-"))
    open_dir.chmod(0o755)
    agent = make_agent(tmp_path, btrfs, socket_dir=open_dir)
    agent.start()
    os.chmod(agent.socket, 0o666)
    script = f"""
import uuid, sys
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from remotevss.client.local import LocalClient
from remotevss.fsrvp import calls
c = LocalClient({str(agent.socket)!r})
u = uuid.uuid4
reqs = [calls.GetSupportedVersionRequest(), calls.SetContextRequest(0),
        calls.StartShadowCopySetRequest(u()), calls.AddToShadowCopySetRequest(u(), u(), r"\\\\x\\share0"),
        calls.CommitShadowCopySetRequest(u(), 1000), calls.ExposeShadowCopySetRequest(u(), 1000),
        calls.RecoveryCompleteShadowCopySetRequest(u()), calls.AbortShadowCopySetRequest(u()),
        calls.IsPathSupportedRequest(r"\\\\x\\share0"), calls.IsPathShadowCopiedRequest(r"\\\\x\\share0"),
        calls.GetShareMappingRequest(u(), u(), r"\\\\x\\share0", 1),
        calls.DeleteShareMappingRequest(u(), u(), r"\\\\x\\share0"),
        calls.PrepareShadowCopySetRequest(u(), 1000)]
print(",".join(hex(c.call(r).return_value) for r in reqs))
"""
    nobody = 65534
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        user=nobody,
        group=nobody,
        extra_groups=[],
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    codes = out.stdout.strip().split(",")
    assert codes == [hex(HResult.E_ACCESSDENIED)] * 13
    try:
        with agent.client() as c:  # root: nothing changed, the context is free
            assert c.set_context(CTX_BACKUP).return_value == ZERO
        assert agent.snapshots() == []
    finally:
        agent.stop()
        shutil.rmtree(open_dir, ignore_errors=True)


CRASH_POINTS = [
    "create_intent",
    "create_snapshot",
    "expose_intent",
    "expose_share",
    "unexpose_share",
    "delete_snapshot",
]


def run_until_killed(a: AgentProcess, point: str, share: str = "share0") -> None:
    """Start ``a`` to die by SIGKILL right after effect ``point`` and drive a whole
    backup sequence on ``share`` into it; assert that it did die there."""
    a.start(crash_after=point)
    try:
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            cid = c.add(sid, unc(share)).shadow_copy_id
            c.commit(sid)
            c.expose(sid)
            c.get_share_mapping(cid, sid, unc(share))
            c.recovery_complete(sid)
            c.delete_share_mapping(sid, cid, unc(share))
    except Exception:  # noqa: BLE001 - the agent dies mid-call by design
        pass
    rc = a.wait_dead()
    assert rc == -9, f"agent did not die at {point}: {rc}"


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_after_each_effect_leaks_nothing(tmp_path: Path, btrfs: Path, point: str) -> None:
    a = make_agent(tmp_path, btrfs, 2)
    a.start()
    # A persistent shadow copy made before the crash must survive it.
    keep = full_sequence(a, ["share1"], CTX_APP_ROLLBACK)
    with a.client() as c:
        assert c.recovery_complete(keep["set"]).return_value == ZERO  # type: ignore[arg-type]
    kept_snaps = a.snapshots()
    kept_exposed = a.exposed()
    assert len(kept_snaps) == 1 and len(kept_exposed) == 1
    a.stop()

    run_until_killed(a, point)

    a.start()
    try:
        assert a.snapshots() == kept_snaps, a.log.read_text()
        assert a.exposed() == kept_exposed
        with a.client() as c:  # the server is free and the persistent copy is intact
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            kset, kcopy = keep["set"], keep["copies"]["share1"]  # type: ignore[index]
            assert c.delete_share_mapping(kset, kcopy, unc("share1")).return_value == ZERO
        assert a.snapshots() == [] and a.exposed() == {}
    finally:
        a.stop()


def test_restart_keeps_exposed_sets_and_reapplies(agent: AgentProcess) -> None:
    res = full_sequence(agent, ["share0"])
    name = res["mappings"]["share0"].shadow_copy_share_name  # type: ignore[index]
    # a crash or power loss (SIGTERM would release this unfinished auto-release set:
    # docs/operations.md), then a reboot that wiped /run
    assert agent.proc is not None
    agent.proc.kill()
    agent.wait_dead()
    (agent.expose_dir / name).unlink()
    agent.start()
    assert name in agent.exposed()
    with agent.client() as c:
        cid = res["copies"]["share0"]  # type: ignore[index]
        r = c.get_share_mapping(cid, res["set"], unc("share0"))  # type: ignore[arg-type]
        assert r.return_value == ZERO
        assert c.recovery_complete(res["set"]).return_value == ZERO  # type: ignore[arg-type]


def test_unknown_share_and_bad_unc(agent: AgentProcess) -> None:
    with agent.client() as c:
        assert c.is_path_supported(unc("nope")).return_value == HResult.FSRVP_E_OBJECT_NOT_FOUND
        assert c.is_path_supported("share0").return_value == HResult.E_INVALIDARG
        assert c.is_path_supported(r"\\h\share0\sub\dir").return_value == HResult.E_INVALIDARG
        # the host part is never used: any host form names the same local share
        for host in ("TESTFS", "testfs.example.com", "192.0.2.1", "[fe80::1]", "attacker"):
            r = c.is_path_supported("\\\\" + host + "\\share0")
            assert r.return_value == ZERO


def test_share_with_mount_below_is_not_supported(tmp_path: Path, btrfs: Path) -> None:
    import subprocess

    a = make_agent(tmp_path, btrfs)
    inner = a.shares["share0"] / "mnt"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
    try:
        a.start()
        with a.client() as c:
            r = c.is_path_supported(unc("share0"))
            assert r.return_value == HResult.FSRVP_E_NOT_SUPPORTED
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            assert c.add(sid, unc("share0")).return_value == HResult.FSRVP_E_NOT_SUPPORTED
    finally:
        a.stop()
        subprocess.run(["umount", str(inner)], check=False)


@pytest.mark.parametrize("fstype,backend", [("xfs", "reflink"), ("ext4", "copy")])
def test_full_sequence_on_tree_backends(
    tmp_path: Path, loopfs: object, fstype: str, backend: str
) -> None:
    """XFS (reflink) and ext4 (copy): the same sequence; read-only enforced for root
    by a read-only bind mount, writable until RecoveryComplete."""
    _need_root()
    mnt = loopfs(fstype, 400)  # type: ignore[operator]
    shares = {"share0": mnt / "share0", "share1": mnt / "share1"}
    for p in shares.values():
        p.mkdir()
    work = tmp_path / "agent"
    work.mkdir()
    a = AgentProcess(work, shares)
    a.start()
    try:
        writer = Writer(shares["share0"])
        writer.start()
        time.sleep(0.05)
        res = full_sequence(a, ["share0"], writers={"share0": writer})
        writer.stop_flag.set()
        writer.join()
        snap = exposed_path(a, res["mappings"]["share0"].shadow_copy_share_name)  # type: ignore[index]
        writer.check_snapshot(snap, res["before"]["share0"], res["after"]["share0"], atomic=False)  # type: ignore[index]
        assert backend in a.log.read_text()
        with pytest.raises(OSError) as exc:
            (snap / "w000000").write_text("x")
        assert exc.value.errno == errno.EROFS
        with a.client() as c:
            assert c.recovery_complete(res["set"]).return_value == ZERO  # type: ignore[arg-type]
        # writable until RecoveryComplete, sealed after
        rw = full_sequence(a, ["share1"], CTX_BACKUP | Attr.ATTR_AUTO_RECOVERY)
        rsnap = exposed_path(a, rw["mappings"]["share1"].shadow_copy_share_name)  # type: ignore[index]
        (rsnap / "fixup").write_text("ok")
        with a.client() as c:
            assert c.recovery_complete(rw["set"]).return_value == ZERO  # type: ignore[arg-type]
        with pytest.raises(OSError) as exc:
            (rsnap / "fixup").write_text("again")
        assert exc.value.errno == errno.EROFS
        assert (rsnap / "fixup").read_text() == "ok"
        assert len(a.snapshots()) == 2
        with a.client() as c:
            for r, n in ((res, "share0"), (rw, "share1")):
                cid = r["copies"][n]  # type: ignore[index]
                assert c.delete_share_mapping(r["set"], cid, unc(n)).return_value == ZERO  # type: ignore[arg-type]
        assert a.snapshots() == [] and a.exposed() == {}
    finally:
        a.stop()


def test_commit_of_a_set_dropped_while_its_snapshot_is_taken_is_an_unknown_set(
    tmp_path: Path, loopfs: object
) -> None:
    """Commit answers FSSAGENT_E_TIMEOUT and keeps taking the snapshot; the client
    aborts.  A Commit of that set id is then a Commit of an unknown set
    (ID_MISMATCH, docs/decisions.md row 3), while the snapshot job still runs
    too (it was BAD_STATE until the job ended), and the snapshot goes."""
    _need_root()
    mnt = loopfs("ext4", 400)  # type: ignore[operator]
    share = mnt / "share0"
    for d in range(40):  # the copy backend copies every file: ~1-3 s here
        (share / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (share / f"d{d}" / f"f{f}").write_text(f"{d} {f}\n")
    work = tmp_path / "agent"
    work.mkdir()
    a = AgentProcess(work, {"share0": share})
    a.start()
    try:
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            assert c.add(sid, unc("share0")).return_value == ZERO
            rc = c.commit(sid, timeout_ms=1).return_value
            if rc == ZERO:  # pragma: no cover - a machine that copies 4000 files in 1 ms
                pytest.skip("the snapshot was taken within 1 ms")
            assert rc == HResult.FSSAGENT_E_TIMEOUT
            assert c.abort(sid).return_value == ZERO
            assert c.commit(sid, timeout_ms=1).return_value == HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH
            assert c.expose(sid).return_value == HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH
        deadline = time.monotonic() + 60
        while a.snapshots() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert a.snapshots() == []
    finally:
        a.stop()


def test_many_concurrent_connections_and_socket_mode(agent: AgentProcess) -> None:
    """32 clients at once: each is served; only one can hold the context at a time."""
    import stat
    from concurrent.futures import ThreadPoolExecutor

    st = agent.socket.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)

    def worker(i: int) -> tuple[int, int]:
        with agent.client() as c:
            for _ in range(5):
                r = c.is_path_supported(unc("share0"))
                assert r.return_value == ZERO
                v = c.get_supported_version()
                assert (v.min_version, v.max_version) == (1, 1)
            return i, c.set_context(CTX_BACKUP).return_value

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(worker, range(32)))
    assert len(results) == 32
    # all local root callers share one client address, so each SetContext is the same
    # client retrying; at most 5 retries, then IN_PROGRESS, then a fresh context
    codes = {code for _, code in results}
    assert codes <= {ZERO, HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS}
    res = full_sequence(agent, ["share0"])
    assert res["set"]


def test_back_to_back_sets_within_one_second(agent: AgentProcess) -> None:
    """Samba's own server fails the second commit within a second (E_FAIL: both want
    the same @GMT name); ours names snapshots uniquely, still sorted by time."""
    made = []
    t0 = time.monotonic()
    for _ in range(3):
        res = full_sequence(agent, ["share0"], CTX_APP_ROLLBACK)
        with agent.client() as c:
            assert c.recovery_complete(res["set"]).return_value == ZERO  # type: ignore[arg-type]
        made.append(res)
    assert time.monotonic() - t0 < 3
    names = [p.name for p in agent.snapshots()]
    assert len(names) == 3 and names == sorted(names)
    token = re.compile(r"^@GMT-\d{4}\.\d\d\.\d\d-\d\d\.\d\d\.\d\d\.\d{6}-[0-9a-f]{8}$")
    assert all(token.match(n) for n in names), names


# ------------------------------------------------------------- start, stop, admin access


def _start_fails(a: AgentProcess, *args: str) -> str:
    """Run the agent with a bad configuration: exit 2 and one ``configuration error``
    line (not a traceback, exit 1); stderr returned."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "remotevss.cli", "agent", "--config",
                        str(a.config), *args], capture_output=True, text=True, timeout=60,
                       check=False)  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith("remotevss: configuration error: "), p.stderr
    assert not a.socket.exists()
    return p.stderr


@pytest.mark.parametrize(("extra", "args", "message"), [
    ('socket_group = "nosuchgroup"', (), "unknown unix group 'nosuchgroup'"),
    ("", ("--socket-group", "nosuchgrp"), "unknown unix group 'nosuchgrp'"),
    ("sequence_timeout = nan", (), "sequence_timeout must be a finite"),
    ("sequence_timeout = inf", (), "sequence_timeout must be a finite"),
    ("", ("--sequence-timeout", "nan"), "sequence_timeout must be a finite"),
    ('[samba]\nconfig_file = "/nonexistent.conf"', (), "/nonexistent.conf"),
])
def test_configuration_errors_at_start_are_one_line_exit_2(
    tmp_path: Path, extra: str, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "share").mkdir()
    a = AgentProcess(tmp_path, {"share": tmp_path / "share"})
    a.write_config()
    text = a.config.read_text()
    a.config.write_text(text.replace("[shares]", f"{extra}\n[shares]") if "[samba]" not in extra
                        else text + extra + "\n")
    assert message in _start_fails(a, *args)


def test_reload_refuses_unknown_socket_group_and_keeps_serving(agent: AgentProcess) -> None:
    """The group is only applied at restart, so a reload that took it would leave an
    agent that cannot start again: the file is refused like any other error."""
    import signal
    import subprocess
    import sys

    good = agent.config.read_text()
    agent.config.write_text(good.replace("[agent]\n", '[agent]\nsocket_group = "nosuchgroup"\n'))
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload: configuration error" not in agent.log.read_text():
        assert time.monotonic() < deadline, agent.log.read_text()
        time.sleep(0.05)
    assert "socket_group: unknown unix group 'nosuchgroup'" in agent.log.read_text()
    assert "only take effect at restart" not in agent.log.read_text()
    st = subprocess.run([sys.executable, "-m", "remotevss.cli", "status", "--json", "--socket",
                         str(agent.socket)], capture_output=True, text=True, timeout=60,
                        check=False)  # fmt: skip
    assert json.loads(st.stdout)["agent"]["reloads"] == 0, st.stdout + st.stderr
    with agent.client() as c:
        assert c.is_path_supported(unc("share0")).return_value == ZERO


def test_sigterm_removes_both_sockets_but_not_a_successors(tmp_path: Path, btrfs: Path) -> None:
    import socket as socketmod

    a = make_agent(tmp_path, btrfs)
    a.start()
    assert a.stop() == 0
    assert not a.socket.exists() and not a.admin_socket.exists()

    a.start()  # another process has bound its own socket on the path since: left alone
    a.socket.unlink()
    with socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM) as other:
        other.bind(str(a.socket))
        assert a.stop() == 0
        assert a.socket.is_socket() and not a.admin_socket.exists()


def test_sigterm_during_start_up_stops_gracefully(tmp_path: Path, btrfs: Path) -> None:
    """A SIGTERM that arrives while the agent is still starting (its FSRVP socket
    bound, the admin socket and the first GC pass not done yet) is not the
    default action's death by signal: start-up finishes, the agent stops
    gracefully, exit 0, both sockets removed.  (CI once saw -15 here: the
    handler was installed only after the first GC pass.)"""
    a = make_agent(tmp_path, btrfs)
    for _ in range(5):
        a.start(until_bound=True)
        assert a.stop() == 0, a.log.read_text()[-2000:]
        assert not a.socket.exists() and not a.admin_socket.exists()


def test_sighup_during_start_up_reloads_once_serving(tmp_path: Path, btrfs: Path) -> None:
    """SIGHUP's default action is death: one that arrived before the reload handler
    (the admin socket already answering) killed the agent (CI saw it).  Now it is
    kept and the reload runs once the agent serves."""
    import signal
    import subprocess
    import sys

    from tests.system.agent_harness import _accepts

    a = make_agent(tmp_path, btrfs)
    for _ in range(3):
        a.start(until_bound=True)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not _accepts(a.admin_socket) or "serving FSRVP" not in a.log.read_text():
            assert a.proc.poll() is None, a.log.read_text()[-2000:]
            assert time.monotonic() < deadline, a.log.read_text()[-2000:]
            time.sleep(0.01)
        st = subprocess.run([sys.executable, "-m", "remotevss.cli", "status", "--json",
                             "--socket", str(a.socket)], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
        assert json.loads(st.stdout)["agent"]["reloads"] == 1, st.stdout + st.stderr
        assert a.stop() == 0


#: A user outside root's group (subprocess keeps the supplementary groups unless told).
NOBODY: dict[str, Any] = {"user": "nobody", "group": "nogroup", "extra_groups": []}


def test_status_without_permission_is_not_agent_down(tmp_path: Path, btrfs: Path) -> None:
    """A user outside socket_group gets "permission denied", exit 4: the agent runs,
    and monitoring must not be told it is down (exit 3)."""
    import subprocess
    import sys
    import tempfile

    sockets = Path(tempfile.mkdtemp(prefix="remotevss-perm-"))
    try:
        sockets.chmod(0o755)  # nobody may look in, not connect (the sockets are 0660)
        a = make_agent(tmp_path, btrfs, socket_dir=sockets)
        a.start()
        try:
            for extra in ([], ["--json"]):
                p = subprocess.run([sys.executable, "-m", "remotevss.cli", "status", *extra,
                                    "--socket", str(a.socket)], capture_output=True, text=True,
                                   timeout=60, check=False, **NOBODY)  # fmt: skip
                assert p.returncode == 4, p.stdout + p.stderr
                assert "permission denied" in p.stdout and "UNREACHABLE" not in p.stdout
                assert "socket_group" in p.stdout
            assert json.loads(p.stdout)["permission_denied"] is True
            p = subprocess.run([sys.executable, "-m", "remotevss.cli", "storage", "list",
                                "--socket", str(a.socket)], capture_output=True, text=True,
                               timeout=60, check=False, **NOBODY)  # fmt: skip
            assert p.returncode == 4 and "permission denied" in p.stderr, p.stdout + p.stderr
        finally:
            a.stop()
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
