"""Failures of the world below the agent: a full disk, a read-only filesystem, a
failing Samba registry write.  Each gives the client a clear return code, leaves
no partial state (``check_consistent``: journal = disk = exposures = mounts), and
leaves the set where the spec wants it so the client can retry or abort.

* Commit on a full filesystem (copy on ext4, reflink on XFS) in a two-share set
  whose other snapshot (btrfs) succeeds first: VSS_E_INSUFFICIENT_STORAGE
  0x8004231F (what a shadow storage limit answers too), the btrfs snapshot is removed again (all
  or nothing), the set is back in Added, and a retried Commit after freeing
  space succeeds.
* Commit on a filesystem remounted read-only (each backend): 0x80070013
  (HRESULT_FROM_WIN32(ERROR_WRITE_PROTECT)), same guarantees.
* Expose while every sync of Samba's registry.tdb fails (fault injection with
  ``strace -P registry.tdb -e inject=...`` attached to the agent): E_FAIL,
  no snapshot share in the registry, the set back in Committed with its
  snapshots (the client may retry Expose or Abort, decisions.md "Commit
  failure" applied to Expose), and a retried Expose after the fault succeeds.
* Expose whose second share's registry write is refused (a foreign registry
  share already has that name) after the first share was exposed: the first is
  taken back (nothing half-exposed), the foreign share is left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remotevss.fsrvp.constants import CTX_BACKUP, HResult
from tests.hardening.harness import ZERO, Stack, check_consistent, read_journal, unc
from tests.system.agent_harness import AgentProcess

pytestmark = pytest.mark.root

E_DISK_FULL = HResult.VSS_E_INSUFFICIENT_STORAGE  # 0x8004231F
E_WRITE_PROTECT = HResult.E_WRITE_PROTECT  # 0x80070013, HRESULT_FROM_WIN32(ERROR_WRITE_PROTECT)


@dataclass
class Env:
    agent: AgentProcess
    mounts: dict[str, Path]  # backend -> mount point

    def roots(self) -> list[Path]:
        return list(self.agent.shares.values())

    def check(self) -> None:
        j = check_consistent(self.agent.workdir / "state", self.roots(), set(self.agent.exposed()))
        assert j.sets == {}, j.sets


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount)")
    btrfsutil = pytest.importorskip("btrfsutil")
    from contextlib import ExitStack

    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("failures")
    with ExitStack() as es:
        mounts = {
            "btrfs": es.enter_context(loop_filesystem("btrfs", 128, work)),
            "reflink": es.enter_context(loop_filesystem("xfs", 320, work)),
            "copy": es.enter_context(loop_filesystem("ext4", 48, work)),
        }
        shares = {}
        for backend, mnt in mounts.items():
            share = mnt / backend
            if backend == "btrfs":
                btrfsutil.create_subvolume(str(share))
            else:
                share.mkdir()
            for i in range(300):
                (share / f"f{i:03d}").write_bytes(os.urandom(4096))
            shares[backend] = share
        (work / "agent").mkdir()
        a = AgentProcess(work / "agent", shares)
        a.start()
        try:
            # a first snapshot of each share creates .snapshots; then remove it
            with a.client() as c:
                for name in shares:
                    sid = _commit_ok(c, [name])
                    assert c.abort(sid).return_value == ZERO
            yield Env(a, mounts)
        finally:
            a.stop()


def _commit_ok(c: object, names: list[str]) -> uuid.UUID:
    sid = _started(c, names)
    assert c.commit(sid).return_value == ZERO  # type: ignore[attr-defined]
    return sid


def _started(c: object, names: list[str]) -> uuid.UUID:
    assert c.set_context(CTX_BACKUP).return_value == ZERO  # type: ignore[attr-defined]
    r = c.start(uuid.uuid4())  # type: ignore[attr-defined]
    assert r.return_value == ZERO
    for n in names:
        assert c.add(r.shadow_copy_set_id, unc(n)).return_value == ZERO  # type: ignore[attr-defined]
    return r.shadow_copy_set_id  # type: ignore[no-any-return]


def fill(mnt: Path) -> Path:
    """Use up the filesystem's free space (a big preallocated file, then 4 KiB files
    until ENOSPC); return the filler directory to remove."""
    filler = mnt / "filler"
    filler.mkdir()
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    if free > (2 << 20):
        subprocess.run(["fallocate", "-l", str(free - (1 << 20)), str(filler / "big")],
                       check=True)  # fmt: skip
    i = 0
    try:
        while True:
            (filler / f"{i}").write_bytes(b"x" * 4096)
            i += 1
    except OSError:
        pass
    return filler


def _after_failure(env: Env, sid: uuid.UUID) -> None:
    """Nothing made by the failed Commit is left, and the set is Added again."""
    a = env.agent
    assert a.snapshots() == [], a.snapshots()
    j = read_journal(a.workdir / "state")
    assert j.intents == [] and j.sets == {str(sid): "Added"}, j
    check_consistent(a.workdir / "state", env.roots(), set(a.exposed()))


@pytest.mark.parametrize("backend", ["copy", "reflink"])
def test_disk_full_during_commit(env: Env, backend: str) -> None:
    a = env.agent
    filler = fill(env.mounts[backend])
    try:
        with a.client() as c:
            sid = _started(c, ["btrfs", backend])  # btrfs first: it succeeds, then is undone
            r = c.commit(sid)
            assert r.return_value == E_DISK_FULL, hex(r.return_value)
            _after_failure(env, sid)
            assert "No space left on device" in a.log.read_text()
            shutil.rmtree(filler)
            assert c.commit(sid).return_value == ZERO  # the set was Added: retry works
            assert len(a.snapshots()) == 2
            assert c.abort(sid).return_value == ZERO
    finally:
        shutil.rmtree(filler, ignore_errors=True)
    env.check()


@pytest.mark.parametrize("backend", ["btrfs", "reflink", "copy"])
def test_readonly_filesystem_during_commit(env: Env, backend: str) -> None:
    a = env.agent
    mnt = env.mounts[backend]
    with a.client() as c:
        sid = _started(c, [backend])
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            r = c.commit(sid)
            assert r.return_value == E_WRITE_PROTECT, hex(r.return_value)
            _after_failure(env, sid)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        assert c.commit(sid).return_value == ZERO
        assert c.abort(sid).return_value == ZERO
    env.check()


# ------------------------------------------------------------------ Samba registry


def _inject(pid: int, path: Path) -> subprocess.Popen[bytes]:
    """Fail every fsync/fdatasync/pwrite of ``path`` in process ``pid`` and its children
    (all threads; the agent writes the registry from its Samba worker child) with EIO,
    until the strace process is stopped."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    pids = [str(pid), *children.split()]
    p = subprocess.Popen(
        ["strace", "-qq", "-f", *[a for x in pids for a in ("-p", x)], "-P", str(path),
         "-e", "trace=fsync,fdatasync,pwrite64,write",
         "-e", "inject=fsync,fdatasync,pwrite64,write:error=EIO", "-o", "/dev/null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)  # attached to every thread
    assert p.poll() is None, p.stderr.read() if p.stderr else ""
    return p


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_failing_registry_write_during_expose(clean_stack: Stack) -> None:
    st = clean_stack
    registry = st.samba.root / "state" / "registry.tdb"
    assert registry.exists()
    with st.client() as c:
        sid = _started(c, ["data0", "data1"])
        assert c.commit(sid).return_value == ZERO
        snaps = read_journal(st.agent.workdir / "state").copies
        tracer = _inject(st.agent.pid, registry)
        try:
            r = c.expose(sid)
        finally:
            tracer.terminate()
            tracer.wait(10)
        assert r.return_value == HResult.E_FAIL, hex(r.return_value)
        assert st.registry_snapshot_shares() == set()  # nothing half-exposed
        j = st.check()
        assert j.sets == {str(sid): "Committed"} and j.copies == snaps  # snapshots kept
        assert "expose of" in st.agent.log.read_text()
        assert c.expose(sid).return_value == ZERO  # the fault is gone: a retry works
        assert len(st.registry_snapshot_shares()) == 2
        st.check()
        assert c.abort(sid).return_value == ZERO
    assert st.registry_snapshot_shares() == set()


def test_expose_failing_on_the_second_share_unexposes_the_first(clean_stack: Stack,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    """All or nothing: data0's share is exposed, then data1's registry write is refused
    (a foreign registry share already has its name); data0's share is taken back, the
    foreign share is left alone, the set is Committed again."""
    st = clean_stack
    with st.client() as c:
        sid = _started(c, ["data0", "data1"])
        assert c.commit(sid).return_value == ZERO
        copies = read_journal(st.agent.workdir / "state").copies
        cid1 = next(cid for cid, path in copies.items() if "/data1/" in path)
        foreign = f"data1@{{{cid1}}}"
        st.samba.net("conf", "addshare", foreign, str(tmp_path))
        try:
            r = c.expose(sid)
            assert r.return_value == HResult.E_FAIL, hex(r.return_value)
            assert st.registry_snapshot_shares() == {foreign}  # data0's was taken back
            j = read_journal(st.agent.workdir / "state")
            assert j.sets == {str(sid): "Committed"} and j.exposed == set() and j.intents == []
            assert "a share of that name exists" in st.agent.log.read_text()
        finally:
            st.samba.net("conf", "delshare", foreign)
        assert c.expose(sid).return_value == ZERO
        assert len(st.registry_snapshot_shares()) == 2
        st.check()
        assert c.abort(sid).return_value == ZERO
