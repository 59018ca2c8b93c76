"""The backup repository against real filesystems: byte-identical restores of btrfs
snapshots taken while the live tree changes, incremental cost, SIGKILL during a run,
a flipped byte found by verify, prune reclaiming space, locks.

The snapshot tests need root (loop btrfs) and skip otherwise; the rest run on the
test's temporary directory.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from remotevss.backup.backup import local_sources, run_backup
from remotevss.backup.chunker import ChunkerParams
from remotevss.backup.packs import DATA, pack_path
from remotevss.backup.repo import RepoError, RepoLocked, Repository, init_repo
from remotevss.backup.snapshot_source import LocalSource
from tests.support.backup_cli import CLI, cli, rand

LoopFs = Callable[..., Path]
ROOT = os.geteuid() == 0
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20




def acl_xattr(uid: int) -> bytes:
    """system.posix_acl_access: user::rw- user:<uid>:r-- group::r-- mask::r-- other::---"""
    entries = [(ACL_USER_OBJ, 6, 0xFFFFFFFF), (ACL_USER, 4, uid), (ACL_GROUP_OBJ, 4, 0xFFFFFFFF),
               (ACL_MASK, 4, 0xFFFFFFFF), (ACL_OTHER, 0, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def make_tree(root: Path, small: int, dense: list[int], sparse: list[int], seed: str = "s",
              small_max: int = 16384) -> int:
    """Many small files, some dense and sparse large ones, and every kind of metadata.

    Returns the bytes of file data written (holes excluded).
    """
    rnd = random.Random(seed)
    written = 0
    for i in range(small):
        d = root / "small" / f"d{i % 37:02d}" / f"e{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        n = rnd.randint(0, small_max)
        (d / f"f{i:05d}.bin").write_bytes(rand(f"{seed}small{i}", n))
        written += n
    (root / "big").mkdir(exist_ok=True)
    for i, n in enumerate(dense):
        (root / "big" / f"dense{i}.bin").write_bytes(rand(f"{seed}dense{i}", n))
        written += n
    for i, n in enumerate(sparse):
        with open(root / "big" / f"sparse{i}.img", "wb") as f:
            f.truncate(n)
            for k in range(4):  # four 1 MiB data islands, one at the very end
                off = (n - (1 << 20)) if k == 3 else (k * n // 4 + 12345)
                f.seek(off)
                f.write(rand(f"{seed}sparse{i}.{k}", 1 << 20))
                written += 1 << 20
    meta = root / "meta"
    meta.mkdir(exist_ok=True)
    (meta / "empty").touch()
    (meta / "zeros").write_bytes(bytes(300000))
    (meta / "text.txt").write_bytes(b"hello\n" * 1000)
    (meta / "link").symlink_to("text.txt")
    (meta / "dangling").symlink_to("/nonexistent/target")
    os.link(meta / "text.txt", meta / "hardlink.txt")
    os.mkfifo(meta / "fifo")
    (meta / os.fsdecode(b"caf\xe9-not-utf8")).write_bytes(b"latin-1 name")
    (meta / "private").write_bytes(b"secret")
    os.chmod(meta / "private", 0o600)
    (meta / "script").write_bytes(b"#!/bin/sh\n")
    os.chmod(meta / "script", 0o4755)
    os.setxattr(meta / "text.txt", "user.comment", b"\x00binary\xffvalue")
    os.setxattr(meta / "private", "system.posix_acl_access", acl_xattr(4242))
    ro = meta / "readonly-dir"
    ro.mkdir()
    (ro / "inside").write_bytes(b"x")
    if ROOT:
        os.chown(meta / "private", 1234, 5678)
        os.lchown(meta / "link", 2345, 6789)
        os.mknod(meta / "null", stat.S_IFCHR | 0o644, os.makedev(1, 3))
    os.chmod(ro, 0o555)
    old = 1_500_000_000_123_456_789
    os.utime(meta / "text.txt", ns=(old, old))
    os.utime(meta / "link", ns=(old, old + 5), follow_symlinks=False)
    return written


def xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)}


def assert_same_tree(a: Path, b: Path, *, only: set[str] | None = None) -> int:
    """Contents, sizes, mtimes (ns), modes, owners (root), xattrs/ACLs, symlink
    targets, hardlink groups, device numbers; sparse files must stay sparse.
    Returns the number of entries compared."""
    count = 0
    links_a: dict[int, str] = {}
    links_b: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(a):
        rel = os.path.relpath(dirpath, a)
        other = b / rel
        names_a = sorted(dirnames + filenames)
        names_b = sorted(os.listdir(other))
        if only is None:
            assert names_a == names_b, rel
        for name in [".", *names_a]:
            pa, pb = Path(dirpath, name), other / name
            relname = os.path.normpath(os.path.join(rel, name))
            if only is not None and relname not in only and name != ".":
                continue
            sa, sb = os.lstat(pa), os.lstat(pb)
            count += 1
            assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), relname
            assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), relname
            if relname != "." or only is None:
                assert sa.st_mtime_ns == sb.st_mtime_ns, relname
            if ROOT:
                assert (sa.st_uid, sa.st_gid) == (sb.st_uid, sb.st_gid), relname
            assert xattrs(pa) == xattrs(pb), relname
            if stat.S_ISLNK(sa.st_mode):
                assert os.readlink(pa) == os.readlink(pb), relname
            elif stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
                assert sa.st_rdev == sb.st_rdev, relname
            elif stat.S_ISREG(sa.st_mode):
                assert sa.st_size == sb.st_size, relname
                assert file_digest(pa) == file_digest(pb), relname
                if sa.st_blocks * 512 < sa.st_size:  # sparse stays sparse
                    assert sb.st_blocks <= sa.st_blocks + 512, (relname, sa.st_blocks,
                                                               sb.st_blocks)
                if sa.st_nlink > 1:
                    first_a = links_a.setdefault(sa.st_ino, relname)
                    first_b = links_b.setdefault(sb.st_ino, relname)
                    assert first_a == first_b, relname
    return count


def file_digest(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return h.hexdigest()


def repo_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "packs").rglob("*.pack"))


def backup(repo: Path, *sources: str, meta: dict[str, Any] | None = None,
           pack_size: int | None = None) -> dict[str, Any]:
    if not (repo / "config.json").exists():
        init_repo(repo, pack_size=pack_size or (64 << 20))
    with Repository(repo, "write") as r:
        point = run_backup(r, local_sources(list(sources)), meta or {})
    return point.__dict__


def backed_up(tmp_path: Path, src: Path) -> Path:
    """``src`` backed up as source "s" into a new encrypted repository (passphrase "p",
    no worker processes); returns the repository's path."""
    repo_path = tmp_path / "repo"
    init_repo(repo_path, passphrase="p")
    with Repository(repo_path, "write", passphrase="p") as repo:
        run_backup(repo, [LocalSource(src, "s")], processes=0)
    return repo_path


def flip_stored_byte(repo_path: Path, loc: Any) -> None:
    """Damage a blob where it lies: one bit in the middle of its stored bytes."""
    path = pack_path(repo_path, loc.pack)
    data = bytearray(path.read_bytes())
    data[loc.entry.offset + loc.entry.stored_len // 2] ^= 0x01
    path.write_bytes(bytes(data))


# --- btrfs snapshots (root) ------------------------------------------------------------

WRITER = r"""
import os, random, sys, time
root = sys.argv[1]; rnd = random.Random(5); n = 0
files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith('.bin')]
while not os.path.exists(os.path.join(root, 'STOP')):
    p = rnd.choice(files)
    with open(p, 'r+b') as f:
        f.seek(rnd.randrange(max(1, os.path.getsize(p))))
        f.write(os.urandom(rnd.randint(1, 65536)))
    if n % 50 == 0:
        with open(os.path.join(root, 'big', 'sparse0.img'), 'r+b') as f:
            f.seek(rnd.randrange(64 << 20)); f.write(os.urandom(4096))
        open(os.path.join(root, 'new-%d' % n), 'wb').write(os.urandom(1000))
    n += 1
    if n == 200:
        open(os.path.join(root, 'WRITING'), 'w').close()
print(n)
"""


@pytest.fixture
def btrfs_tree(loopfs: LoopFs) -> Callable[..., tuple[Path, Path, int]]:
    """make(**make_tree args) -> (live subvolume, read-only snapshot, data bytes)."""
    btrfsutil = pytest.importorskip("btrfsutil")

    def make(size_mb: int = 700, **kw: Any) -> tuple[Path, Path, int]:
        mnt = loopfs("btrfs", size_mb)
        live = mnt / "live"
        btrfsutil.create_subvolume(str(live))
        written = make_tree(live, **kw)
        snap = mnt / "snap1"
        btrfsutil.create_snapshot(str(live), str(snap), read_only=True)
        return live, snap, written

    return make


@pytest.mark.root
def test_snapshot_restore_is_identical_while_live_tree_changes(
        btrfs_tree: Callable[..., tuple[Path, Path, int]], tmp_path: Path) -> None:
    live, snap, _ = btrfs_tree(small=3000, dense=[24 << 20, 40 << 20], sparse=[64 << 20])
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live)], stdout=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 30
        while not (live / "WRITING").exists():  # the writer is really running
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        repo = tmp_path / "repo"
        first = backup(repo, f"data={snap}", meta={"shadow_copy_set": "s1"})
        assert writer.poll() is None, "the writer must outlive the backup"
    finally:
        (live / "STOP").touch()
        writes = int(writer.communicate(timeout=30)[0])
    assert writes > 200
    assert first["stats"]["error_count"] == 0
    out = tmp_path / "out"
    proc = cli("restore", "latest", "--repo", repo, "--path", "data", "--to", out, "--json")
    assert json.loads(proc.stdout)["errors"] == []
    assert assert_same_tree(snap, out) > 3000
    # The live tree really diverged from the snapshot, so a backup of it would differ.
    with pytest.raises(AssertionError):
        assert_same_tree(live, out)
    assert cli("check", "--repo", repo).returncode == 0

    # Second run, nothing changed: files cache hits for every file, ~0 new bytes.
    second = backup(repo, f"data={snap}")
    s1, s2 = first["stats"], second["stats"]
    assert s2["bytes_read"] == 0
    assert s2["cache_hits"] == s2["files"] - 1  # all but the second name of the hardlink
    assert s2["new_stored"] < 0.01 * s1["new_stored"], (s2["new_stored"], s1["new_stored"])
    assert s2["seconds"] < s1["seconds"]
    listing = json.loads(cli("list", "--repo", repo, "--json").stdout)
    assert [p["meta"] for p in listing] == [{"shadow_copy_set": "s1"}, {}]


@pytest.mark.root
def test_incremental_after_one_percent_change_stores_about_one_percent(
        btrfs_tree: Callable[..., tuple[Path, Path, int]], tmp_path: Path) -> None:
    btrfsutil = pytest.importorskip("btrfsutil")
    live, snap, written = btrfs_tree(size_mb=1400, small=2000,
                                     dense=[32 << 20] * 12, sparse=[64 << 20])
    repo = tmp_path / "repo"
    first = backup(repo, f"data={snap}")
    # Change 1 % of the data on a writable snapshot: rewrite 1 % of the small
    # files and overwrite one contiguous range inside a large file.
    work = snap.parent / "work"
    btrfsutil.create_snapshot(str(snap), str(work))
    target = written // 100
    changed = 0
    small = sorted((work / "small").rglob("*.bin"))
    for p in small[::100]:
        size = p.stat().st_size
        p.write_bytes(rand(f"changed{p.name}", size))
        changed += size
    with open(work / "big" / "dense3.bin", "r+b") as f:
        f.seek(10 << 20)
        f.write(rand("changed-dense", target - changed))
    changed = target
    snap2 = snap.parent / "snap2"
    btrfsutil.create_snapshot(str(work), str(snap2), read_only=True)
    second = backup(repo, f"data={snap2}")
    new = second["stats"]["new_stored"]
    base = first["stats"]["new_stored"]
    ratio = new / changed
    print(f"changed {changed} bytes, stored {new} new bytes: {ratio:.2f}x")
    # Content-defined chunks: the changed range re-stores at most the chunk on
    # each side of it (each up to max_size; where the cut points fall depends on
    # the repository's random chunker seed), plus new trees and metadata.
    edges = 2 * ChunkerParams().max_size
    assert 0.5 * changed <= new <= changed + edges + (1 << 20), (new, changed, base)
    assert second["stats"]["bytes_read"] < 0.2 * first["stats"]["bytes_read"]
    out = tmp_path / "out"
    cli("restore", "2", "--repo", repo, "--path", "data", "--to", out)
    assert_same_tree(snap2, out)


@pytest.mark.root
def test_sigkill_during_backup_leaves_repository_valid(
        btrfs_tree: Callable[..., tuple[Path, Path, int]], tmp_path: Path) -> None:
    live, snap, _ = btrfs_tree(small=500, dense=[48 << 20] * 4, sparse=[])
    repo = tmp_path / "repo"
    cli("init", "--repo", repo, "--pack-size", "4")
    cli("run", f"data={snap / 'small'}", "--repo", repo)  # point 1: the earlier point
    proc = subprocess.Popen([*CLI, "run", f"all={snap}", "--repo", str(repo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    packs_before = len(list((repo / "packs").rglob("*.pack")))
    deadline = time.monotonic() + 60
    while len(list((repo / "packs").rglob("*.pack"))) < packs_before + 3:
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    notes = list((repo / "locks").glob("*.lock"))
    assert len(notes) == 1 and notes[0].read_text(), "a killed run leaves its note"
    out = cli("check", "--repo", repo)
    assert "1 points: ok" in out.stdout, out.stdout
    assert [p["id"] for p in json.loads(cli("list", "--repo", repo, "--json").stdout)] == [1]
    cli("restore", "1", "--repo", repo, "--path", "data", "--to", tmp_path / "r1")
    assert_same_tree(snap / "small", tmp_path / "r1")
    # The next run completes, reuses what the killed run stored, and restores.
    again = cli("run", f"all={snap}", "--repo", repo, "--json")
    assert "was interrupted" in again.stderr
    stats = json.loads(again.stdout)["stats"]
    assert stats["new_raw"] < stats["bytes_read"] - (3 * 3 << 20)
    assert cli("check", "--repo", repo).returncode == 0
    cli("restore", "2", "--repo", repo, "--path", "all", "--to", tmp_path / "r2")
    assert_same_tree(snap, tmp_path / "r2")
    assert not list((repo / "locks").glob("*.lock"))
    assert not list((repo / "tmp").iterdir())


# --- any filesystem ---------------------------------------------------------------------

def test_roundtrip_metadata_sparse_hardlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, small=200, dense=[5 << 20], sparse=[32 << 20])
    repo = tmp_path / "repo"
    point = backup(repo, f"data={src}")
    assert point["stats"]["error_count"] == 0
    out = tmp_path / "out"
    cli("restore", str(point["id"]), "--repo", repo, "--path", "data", "--to", out)
    assert assert_same_tree(src, out) > 200
    cli("restore", "latest", "--repo", repo, "--path", "data", "--to", tmp_path / "out0",
        "--processes", "0")
    assert assert_same_tree(src, tmp_path / "out0") > 200
    # A single file, and a hardlink whose first name is outside the restored part.
    one = tmp_path / "one"
    cli("restore", "latest", "--repo", repo, "--path", "data/meta/hardlink.txt", "--to", one)
    assert (one / "hardlink.txt").read_bytes() == b"hello\n" * 1000
    assert (one / "hardlink.txt").stat().st_mtime_ns == 1_500_000_000_123_456_789


class FlakySource(LocalSource):
    """A local source whose file ``unreadable`` fails to open (as for root nothing does)."""

    def open(self, relpath: str, entry: Any) -> Any:
        if relpath.endswith("unreadable"):
            raise PermissionError(13, "Permission denied")
        return super().open(relpath, entry)


def test_source_errors_are_reported_and_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_bytes(b"fine")
    (src / "unreadable").write_bytes(b"x")
    repo = tmp_path / "repo"
    init_repo(repo)
    with Repository(repo, "write") as r:
        point = run_backup(r, [FlakySource(src, "data")])
    assert point.stats["error_count"] == 1
    assert point.stats["errors"] == [{"path": "data/unreadable", "error": "Permission denied"}]
    out = tmp_path / "out"
    cli("restore", "latest", "--repo", repo, "--path", "data", "--to", out)
    assert os.listdir(out) == ["ok"]
    if not ROOT:  # the CLI's exit code for a partial backup
        (src / "unreadable").chmod(0)
        proc = cli("run", src, "--repo", repo, "--json", check=3)
        assert json.loads(proc.stdout)["stats"]["errors"][0]["path"] == "src/unreadable"


def test_flipped_byte_is_found_by_verify_and_spares_other_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i:02d}").write_bytes(rand(f"v{i}", 100_000))
    repo = tmp_path / "repo"
    backup(repo, f"data={src}")
    (src / "f00").write_bytes(rand("later", 1000))  # a second point sharing f07's chunk
    backup(repo, f"data={src}")
    assert cli("verify", "--repo", repo).returncode == 0
    with Repository(repo) as r:
        loc = r.index.locate(r.blob_id(rand("v7", 100_000)))
    assert loc is not None and loc.entry.type == DATA
    flip_stored_byte(repo, loc)

    assert cli("check", "--repo", repo).returncode == 0  # structure is intact
    proc = cli("verify", "--repo", repo, check=4)
    assert "affected: point 1" in proc.stdout and "data/f07" in proc.stdout
    report = json.loads(cli("verify", "--repo", repo, "--json", check=4).stdout)
    assert sorted((a["point"], a["path"]) for a in report["affected"]) == [
        (1, "data/f07"), (2, "data/f07")]
    out = tmp_path / "out"
    proc = cli("restore", "1", "--repo", repo, "--path", "data", "--to", out, check=3)
    assert "data/f07" in proc.stderr
    assert not (out / "f07").exists()
    names = {f"f{i:02d}" for i in range(50)} - {"f07"}
    assert sorted(os.listdir(out)) == sorted(names)
    for name in names:
        assert (out / name).read_bytes() == rand(f"v{int(name[1:])}", 100_000)


def test_check_reports_a_missing_pack_and_orphans(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(rand("a", 200_000))
    repo = tmp_path / "repo"
    backup(repo, f"data={src}")
    packs = list((repo / "packs").rglob("*.pack"))
    orphan = packs[0].with_name("f" * 32 + ".pack")
    orphan.write_bytes(packs[0].read_bytes())
    proc = cli("check", "--repo", repo)
    assert "not in the index" in proc.stdout
    packs[0].unlink()
    proc = cli("check", "--repo", repo, check=4)
    assert "missing" in proc.stdout


def test_prune_reclaims_space_and_survivors_restore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    repo = tmp_path / "repo"
    cli("init", "--repo", repo, "--pack-size", "1")
    for gen in range(4):  # each generation replaces most of the data
        if src.exists():
            for p in src.iterdir():
                p.unlink()
        src.mkdir(exist_ok=True)
        (src / "keep").write_bytes(rand("keep", 3 << 20))
        for i in range(6):
            (src / f"g{gen}-{i}").write_bytes(rand(f"g{gen}-{i}", 500_000))
        cli("run", f"data={src}", "--repo", repo)
    before = repo_bytes(repo)
    dry = cli("prune", "--repo", repo, "--dry-run", "--keep-last", "1")
    assert "would remove points [1, 2, 3]" in dry.stdout and "packs to delete" in dry.stdout
    plan = json.loads(cli("prune", "--repo", repo, "--dry-run", "--keep-last", "1",
                          "--json").stdout)
    assert repo_bytes(repo) == before and len(json.loads(cli(
        "list", "--repo", repo, "--json").stdout)) == 4  # a dry run changes nothing
    assert cli("prune", "--repo", repo, check=1).returncode == 1  # no policy: refused
    res = json.loads(cli("prune", "--repo", repo, "--keep-last", "1", "--json").stdout)
    after = repo_bytes(repo)
    assert res["removed_points"] == [1, 2, 3]
    assert after < 0.6 * before, (before, after)
    assert res["packs_deleted"] > 0
    # The dry run said what the real one did (its size estimate leaves out the new
    # packs' headers and trailers).
    assert (plan["dry_run"], res["dry_run"]) == (True, False)
    for key in ("removed_points", "kept_points", "packs_deleted", "packs_rewritten"):
        assert plan[key] == res[key], key
    assert abs(plan["bytes_after"] - res["bytes_after"]) < 0.02 * before
    assert cli("check", "--repo", repo).returncode == 0
    assert cli("verify", "--repo", repo).returncode == 0
    out = tmp_path / "out"
    cli("restore", "latest", "--repo", repo, "--path", "data", "--to", out)
    assert_same_tree(src, out)
    # The files cache survives prune only where its chunks did: a new run is correct.
    (src / "g3-0").write_bytes(rand("new", 10))
    cli("run", f"data={src}", "--repo", repo)
    assert cli("check", "--repo", repo).returncode == 0
    cli("restore", "latest", "--repo", repo, "--path", "data", "--to", tmp_path / "out2")
    assert_same_tree(src, tmp_path / "out2")


def test_prune_keep_within_keeps_recent_points(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    repo = tmp_path / "repo"
    for _ in range(3):
        backup(repo, f"data={src}")
    res = json.loads(cli("prune", "--repo", repo, "--keep-within", "1h", "--json").stdout)
    assert res["removed_points"] == [] and res["kept_points"] == [1, 2, 3]


def test_locks_let_writers_share_and_exclude_prune(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    src = tmp_path / "src"
    src.mkdir()
    with Repository(repo, "write", command="test"):
        with Repository(repo, "write"):  # backups of other sources may run at once
            pass
        with pytest.raises(RepoLocked, match=r"by test \(pid"):
            Repository(repo, "exclusive")
        with Repository(repo, "read"):  # restore/verify may read during a backup
            pass
        proc = cli("prune", "--repo", repo, "--keep-last", "1", check=5)
        assert "locked by test (pid" in proc.stderr
    with Repository(repo, "read"), pytest.raises(RepoLocked):
        Repository(repo, "exclusive")
    with Repository(repo, "exclusive", command="prune"):
        proc = cli("run", src, "--repo", repo, check=5)
        assert "locked by prune (pid" in proc.stderr
    with Repository(repo, "write") as r:
        assert r.interrupted is None  # released cleanly before
        r.lock_sources(["data"])
        with Repository(repo, "write") as other, pytest.raises(RepoLocked, match="'data'"):
            other.lock_sources(["data"])  # one backup per source label at a time


def test_stale_lock_of_a_killed_process_is_detected(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    code = ("import sys, time; from pathlib import Path; from remotevss.backup.repo import "
            "Repository; r = Repository(Path(sys.argv[1]), 'write', command='victim'); "
            "(Path(sys.argv[1]) / 'tmp' / (r.writer_id + '-x.pack')).write_bytes(b'partial'); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(repo)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    with pytest.raises(RepoLocked, match="victim"):
        Repository(repo, "exclusive")
    with Repository(repo, "write") as r:  # a live writer's tmp file is not touched
        assert r.interrupted is None
        assert list((repo / "tmp").iterdir())
    proc.kill()
    proc.wait()
    with Repository(repo, "write") as r:
        assert r.interrupted is not None and r.interrupted["pid"] == proc.pid
        assert not list((repo / "tmp").iterdir())


def test_refuses_foreign_or_newer_repositories(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    cfg = json.loads((repo / "config.json").read_text())
    (repo / "config.json").write_text(json.dumps({**cfg, "version": 99}))
    assert "version 99" in cli("list", "--repo", repo, check=1).stderr
    assert "not empty" in cli("init", "--repo", repo, check=1).stderr
    assert "no repository" in cli("list", "--repo", tmp_path / "none", check=1).stderr


def test_multiple_sources_in_one_point(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_bytes(b"from a")
    (b / "x").write_bytes(b"from b")
    repo = tmp_path / "repo"
    init_repo(repo)
    with Repository(repo, "write") as r:
        with pytest.raises(ValueError, match="distinct"):
            run_backup(r, [LocalSource(a, "s"), LocalSource(b, "s")])
        run_backup(r, [LocalSource(a, "share1"), LocalSource(b, "share2")], {"set_id": "x"})
    out = tmp_path / "out"
    cli("restore", "latest", "--repo", repo, "--to", out)
    assert (out / "share1" / "x").read_bytes() == b"from a"
    assert (out / "share2" / "x").read_bytes() == b"from b"


def test_pack_descriptors_in_use_survive_eviction_from_the_cache(tmp_path: Path) -> None:
    """More packs than the 32 descriptors kept open, read from several threads (as
    ``verify`` does): a descriptor evicted while a thread reads through it stays
    open until that read is done, then closes; verify with four threads over
    more than 36 packs finds nothing wrong."""
    from remotevss.backup.verify import verify

    src = tmp_path / "src"
    src.mkdir()
    for i in range(48):
        (src / f"f{i:02d}").write_bytes(rand(f"evict{i}", 1_100_000))
    init_repo(tmp_path / "repo", pack_size=1 << 20, passphrase="p")
    with Repository(tmp_path / "repo", "write", passphrase="p") as repo:
        run_backup(repo, [LocalSource(src, "s")], processes=0)
    with Repository(tmp_path / "repo", "read", passphrase="p") as repo:
        packs = [name for _pid, name, _size in repo.index.packs()]
        assert len(packs) >= 36, len(packs)
        held = repo._pack_fd(packs[0])
        for name in packs[1:35]:  # the held pack is evicted from the cache meanwhile
            repo._pack_done(repo._pack_fd(name))
        assert packs[0] not in repo._packs
        assert os.fstat(held).st_size == pack_path(repo.path, packs[0]).stat().st_size
        repo._pack_done(held)  # its last reader: closed now
        with pytest.raises(OSError):
            os.fstat(held)
        report = verify(repo, workers=4)
        assert report.ok and report.packs == len(packs), report.errors


def test_large_chunks_opened_ahead_restore_identically_and_damage_spares_others(
        tmp_path: Path) -> None:
    """Restore opens large chunks ahead in threads while it writes: files of
    several large chunks, the same content under two names (one chunk asked for
    twice), a hardlinked large file and small files in between restore exactly;
    the threads did open chunks; a damaged large chunk fails only its file."""
    import threading

    from remotevss.backup import restore as restore_mod

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(8):
        (src / f"big{i}").write_bytes(rand(f"ahead{i}", (3 << 20) + 777 * i))
        (src / f"small{i}").write_bytes(rand(f"s{i}", 3000))
    (src / "sub" / "copy").write_bytes(rand("ahead3", (3 << 20) + 777 * 3))
    os.link(src / "big5", src / "sub" / "link5")
    repo_path = backed_up(tmp_path, src)

    opened_by: list[str] = []
    real = Repository.read_blob

    def read_blob(self: Any, blob_id: bytes, loc: Any = None) -> bytes:
        opened_by.append(threading.current_thread().name)
        return real(self, blob_id, loc)

    Repository.read_blob = read_blob  # type: ignore[method-assign]
    try:
        with Repository(repo_path, "read", passphrase="p") as repo:
            point = repo.find_point("latest")
            result = restore_mod.restore(repo, point, tmp_path / "out", "s")
            assert not result.errors and result.files == 18
            assert_same_tree(src, tmp_path / "out")
            assert sum(n.startswith("rvss-restore-read") for n in opened_by) >= 16

            # One large chunk of big2 damaged in its pack: big2 alone fails.
            raw = (src / "big2").read_bytes()
            loc = repo.index.locate(repo.blob_id(raw[:_first_chunk_len(repo, point, "s/big2")]))
            assert loc is not None
            flip_stored_byte(repo_path, loc)
        with Repository(repo_path, "read", passphrase="p") as repo:
            result = restore_mod.restore(repo, repo.find_point("latest"), tmp_path / "out2", "s")
    finally:
        Repository.read_blob = real  # type: ignore[method-assign]
    assert [e["path"] for e in result.errors] == ["s/big2"], result.errors
    assert not (tmp_path / "out2" / "big2").exists()
    for p in src.rglob("*"):
        if p.is_file() and p.name != "big2":
            assert (tmp_path / "out2" / p.relative_to(src)).read_bytes() == p.read_bytes()


def _first_chunk_len(repo: Repository, point: Any, path: str) -> int:
    from remotevss.backup.progress import Progress
    from remotevss.backup.restore import _Restorer

    entry = _Restorer(repo, point, Progress(enabled=False)).find(path)
    assert entry is not None
    length: int = entry["content"][0][1]
    return length


def default_acl_xattr(owner: int, group: int, other: int) -> bytes:
    """system.posix_acl_default with only the three base entries."""
    entries = [(ACL_USER_OBJ, owner, 0xFFFFFFFF), (ACL_GROUP_OBJ, group, 0xFFFFFFFF),
               (ACL_OTHER, other, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_restore_sizes_and_modes_exact_under_any_umask_or_default_acl(tmp_path: Path) -> None:
    """Restore creates a file with its final mode where the umask and the directory
    allow it (no fchmod then), and truncates only when the data written does not
    reach the size: trailing holes, chunks ending in zeros, empty files, set-id
    and sticky bits, read-only files and ACLs come out exact with a plain umask,
    with umask 077 (which would strip 0644 to 0600) and below a target whose
    default ACL (inherited by the directories restore makes) grants less."""
    from remotevss.backup import restore as restore_mod

    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    with open(src / "d" / "tail-hole", "wb") as f:
        f.write(rand("th", 1 << 20))
        f.truncate(9 << 20)
    (src / "d" / "zero-tail").write_bytes(rand("zt", 200_000) + bytes(300_000))
    (src / "d" / "all-zero").write_bytes(bytes(400_000))
    (src / "d" / "empty").touch()
    for mode in (0o644, 0o600, 0o755, 0o444, 0o640, 0o4755, 0o2750, 0o1777, 0o000):
        path = src / "d" / "e" / f"m{mode:o}"
        path.write_bytes(rand(f"m{mode}", 5000))
        os.chmod(path, mode)
    os.setxattr(src / "d" / "e" / "m640", "system.posix_acl_access", acl_xattr(4242))
    repo_path = backed_up(tmp_path, src)

    def restore_into(target: Path) -> None:
        with Repository(repo_path, "read", passphrase="p") as repo:
            result = restore_mod.restore(repo, repo.find_point("latest"), target, "s")
        assert not result.errors and not result.warnings
        assert os.lstat(target / "d" / "tail-hole").st_blocks * 512 < 2 << 20
        # Also below a default ACL: the ACLs the directories inherit are removed.
        assert_same_tree(src, target)

    restore_into(tmp_path / "plain")
    old = os.umask(0o077)
    try:
        restore_into(tmp_path / "umask077")
    finally:
        os.umask(old)
    acl_parent = tmp_path / "acl"
    acl_parent.mkdir()
    os.setxattr(acl_parent, "system.posix_acl_default", default_acl_xattr(6, 0, 0))
    (acl_parent / "probe").touch()
    assert stat.S_IMODE(os.lstat(acl_parent / "probe").st_mode) == 0o600  # the ACL applies
    restore_into(acl_parent / "out")


@pytest.mark.parametrize(("settle_at", "processes"), [(3, 1), (4096, 1), (4096, 2)])
def test_restore_with_a_writer_process_is_identical_and_damage_spares_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settle_at: int,
        processes: int) -> None:
    """Files written by a worker process from the first file on (and by this process
    when the worker holds enough): the whole tree comes out identical (hardlinks in
    one directory and across directories, sparse files, ACLs, set-id bits, a
    read-only directory whose files were written before its mode was set), whether
    the directories' metadata waits for the end or is set every few directories
    (``SETTLE_AT``: what a restore of millions of directories holds); a hardlink
    whose first name lies outside a restored directory becomes a copy; a damaged
    chunk fails only its file, reported from the worker."""
    from remotevss.backup import restore as restore_mod
    from remotevss.backup import workers as workers_mod

    monkeypatch.setattr(restore_mod, "SETTLE_AT", settle_at)

    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, small=400, dense=[3 << 20], sparse=[16 << 20])
    os.link(src / "meta" / "text.txt", src / "small" / "d00" / "e0" / "xlink")
    for i in range(40):
        (src / "meta" / "readonly-dir").chmod(0o755)
        (src / "meta" / "readonly-dir" / f"f{i}").write_bytes(rand(f"ro{i}", 2000))
    (src / "meta" / "readonly-dir").chmod(0o555)
    os.utime(src / "meta" / "readonly-dir", ns=(1_600_000_000_000_000_000,) * 2)
    repo_path = backed_up(tmp_path, src)

    spawned: list[str] = []
    real_spawn = workers_mod.spawn

    def spawn(module: str) -> Any:
        spawned.append(module)
        return real_spawn(module)

    workers_mod.spawn = spawn  # type: ignore[assignment]
    try:
        with Repository(repo_path, "read", passphrase="p") as repo:
            point = repo.find_point("latest")
            result = restore_mod.restore(repo, point, tmp_path / "out", "s",
                                         processes=processes, pool_from=(0, 0))
            files = sum(1 for p in src.rglob("*") if p.is_file() and not p.is_symlink())
            assert not result.errors and result.files == files
            assert_same_tree(src, tmp_path / "out")
            assert spawned == ["remotevss.backup.restore_workers"] * processes

            part = restore_mod.restore(repo, point, tmp_path / "part", "s/small", processes=1,
                                       pool_from=(0, 0))
            assert not part.errors
            assert (tmp_path / "part" / "d00" / "e0" / "xlink").read_bytes() == (
                src / "meta" / "text.txt").read_bytes()

            # The chunks of one small file and of a file with two more names damaged
            # in their packs: those files alone fail, each name with the real error.
            for victim in (src / "small" / "d03" / "e3" / "f00003.bin",
                           src / "meta" / "text.txt"):
                loc = repo.index.locate(repo.blob_id(victim.read_bytes()))
                assert loc is not None
                flip_stored_byte(repo_path, loc)
        with Repository(repo_path, "read", passphrase="p") as repo:
            bad = restore_mod.restore(repo, repo.find_point("latest"), tmp_path / "bad", "s",
                                      processes=processes, pool_from=(0, 0))
    finally:
        workers_mod.spawn = real_spawn  # type: ignore[assignment]
    failed = {"s/small/d03/e3/f00003.bin", "s/meta/hardlink.txt", "s/meta/text.txt",
              "s/small/d00/e0/xlink"}
    assert {e["path"] for e in bad.errors} == failed
    assert all("does not authenticate" in e["error"] for e in bad.errors), bad.errors
    assert not any((tmp_path / "bad" / p.removeprefix("s/")).exists() for p in failed)
    assert bad.files == result.files - 4
    assert_same_tree(src / "big", tmp_path / "bad" / "big")


def test_a_killed_restore_worker_fails_the_restore_by_name(tmp_path: Path) -> None:
    """SIGKILL of the writer process mid-restore: the restore stops with an error that
    names the process and the signal (no hang, no silent gap)."""
    from remotevss.backup import restore as restore_mod

    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, small=600, dense=[], sparse=[])
    repo_path = tmp_path / "repo"
    init_repo(repo_path, encrypted=False)
    with Repository(repo_path, "write") as repo:
        run_backup(repo, [LocalSource(src, "s")], processes=0)
    real_send = restore_mod._Writers.send

    def send(self: Any, batch: Any) -> bool:
        sent = real_send(self, batch)
        if sent:
            for proc in self.procs:
                os.kill(proc.pid, signal.SIGKILL)
        return sent

    restore_mod._Writers.send = send  # type: ignore[method-assign]
    try:
        with Repository(repo_path, "read") as repo, pytest.raises(
                RepoError, match=r"restore worker process \d+ died \(killed by signal 9\)"):
            restore_mod.restore(repo, repo.find_point("latest"), tmp_path / "out", "s",
                                processes=1, pool_from=(0, 0))
    finally:
        restore_mod._Writers.send = real_send  # type: ignore[method-assign]


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "with-a-writer"])
def test_a_signal_stops_a_restore_between_files_and_leaves_no_partial_file(
        tmp_path: Path, processes: int) -> None:
    """SIGINT while a restore writes a large file (sent from the progress hook, at a
    known moment; the real signal and handler): the restore ends with
    KeyboardInterrupt, that file is removed, and every file that is left is whole
    (those handed to the writer process are finished, not cut off)."""
    from remotevss.backup.progress import Progress
    from remotevss.backup.restore import restore
    from remotevss.backup.signals import stop_at_safe_points

    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"a{i:03d}").write_bytes(rand(f"small{i}", 3000 + i))
    (src / "m-large").write_bytes(rand("large", 24 << 20))
    for i in range(50):
        (src / f"z{i:02d}").write_bytes(rand(f"late{i}", 100))
    repo_path = backed_up(tmp_path, src)
    notes: list[str] = []

    class Interrupting(Progress):
        def add_bytes(self, n: int) -> None:
            super().add_bytes(n)
            if n >= 1 << 20 and not notes:  # a chunk of the large file, in this process
                os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "out"
    with Repository(repo_path, "read", passphrase="p") as repo, pytest.raises(
            KeyboardInterrupt), stop_at_safe_points(notes.append):
        restore(repo, repo.find_point("latest"), out, "s", Interrupting(enabled=False),
                processes=processes, pool_from=(0, 0) if processes else (10**9, 1 << 62))
    assert notes and "stopping" in notes[0]
    left = {p.name: p.read_bytes() for p in out.iterdir()}
    assert all(data == (src / name).read_bytes() for name, data in left.items()), (
        "a file was left cut off")
    if processes == 0:  # in order: the large file removed, nothing after it begun
        assert sorted(left) == [f"a{i:03d}" for i in range(300)]
    # With a writer, which files exist depends on who wrote the large file and when
    # its outcome came back: what matters is that none of them is cut off.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def named_default_acl(uid: int) -> bytes:
    """system.posix_acl_default granting user ``uid`` rwx (and a mask that lets it)."""
    entries = [(ACL_USER_OBJ, 7, 0xFFFFFFFF), (ACL_USER, 7, uid), (ACL_GROUP_OBJ, 5, 0xFFFFFFFF),
               (ACL_MASK, 7, 0xFFFFFFFF), (ACL_OTHER, 0, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "with-a-writer"])
def test_restore_below_a_default_acl_grants_nothing_the_source_did_not(
        tmp_path: Path, processes: int) -> None:
    """Restoring into a directory whose default ACL names a user: files, directories
    and FIFOs without an ACL in the point come back without one (not readable by
    that user), those with their own ACLs come back with exactly theirs, and a
    directory of the point with a default ACL still passes it on where the point's
    entries had it -- also when the same point is restored over itself."""
    src = tmp_path / "src"
    (src / "hr" / "deep").mkdir(parents=True)
    for i in range(30):
        (src / "hr" / f"payroll{i}.txt").write_bytes(rand(f"pay{i}", 700))
        os.chmod(src / "hr" / f"payroll{i}.txt", 0o640)
    (src / "hr" / "deep" / "notes").write_bytes(b"private")
    os.mkfifo(src / "hr" / "fifo", 0o600)
    os.setxattr(src / "hr" / "payroll0.txt", "system.posix_acl_access", acl_xattr(4242))
    inheriting = src / "team"
    inheriting.mkdir()
    os.setxattr(inheriting, "system.posix_acl_default", named_default_acl(42))
    (inheriting / "shared").write_bytes(b"for uid 42")  # inherits its access ACL
    assert "system.posix_acl_access" in os.listxattr(inheriting / "shared")
    os.chmod(src / "hr", 0o750)
    repo_path = backed_up(tmp_path, src)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.setxattr(dest, "system.posix_acl_default", named_default_acl(1500))
    for _ in range(2):  # the second time over the first restore's entries
        with Repository(repo_path, "read", passphrase="p") as repo:
            result = restore_mod_restore(repo, dest / "out", processes)
        assert not result.errors and not result.warnings, result
        assert_same_tree(src, dest / "out")
    if ROOT:
        code = subprocess.run(["setpriv", "--reuid", "1500", "--regid", "1500",
                               "--clear-groups", "cat", str(dest / "out" / "hr" / "payroll1.txt")],
                              capture_output=True, check=False).returncode
        assert code != 0, "uid 1500 reads a restored file its source never let it read"


def restore_mod_restore(repo: Repository, target: Path, processes: int) -> Any:
    from remotevss.backup.restore import restore

    return restore(repo, repo.find_point("latest"), target, "s", processes=processes,
                   pool_from=(0, 0) if processes else (10**9, 1 << 62))


def test_restore_replaces_symlinks_and_files_where_directories_go(tmp_path: Path) -> None:
    """A symlink standing where the point has a directory is replaced, never followed
    (it could lead out of the target: a user of a restored tree could redirect root's
    restore), also for --include; a file there is replaced as files are; a --to
    that is an existing file is refused and left as it was."""
    src = tmp_path / "src"
    (src / "docs" / "sub").mkdir(parents=True)
    (src / "docs" / "sub" / "secret.txt").write_bytes(b"secret")
    os.chmod(src / "docs" / "sub" / "secret.txt", 0o600)
    (src / "docs" / "cache").mkdir()
    repo_path = backed_up(tmp_path, src)
    outside = tmp_path / "outside"
    outside.mkdir()
    env = dict(os.environ, REMOTEVSS_BACKUP_PASSWORD="p")

    def restore_cli(*args: str | Path, check: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*CLI, "restore", "latest", "--repo", str(repo_path),
                               *map(str, args)], capture_output=True, text=True, env=env,
                              timeout=120, check=False)
        assert proc.returncode == check, (proc.returncode, proc.stderr)
        return proc

    for include in ((), ("--include", "s/docs/sub/secret.txt"), ("--include", "s/docs/sub")):
        dest = tmp_path / f"dest{len(include)}{include[-1][-3:] if include else ''}"
        (dest / "docs").mkdir(parents=True)
        os.symlink(outside, dest / "docs" / "sub")
        (dest / "docs" / "cache").write_bytes(b"a file where a directory goes")
        restore_cli("--path", "s", "--to", dest, *include)
        assert os.listdir(outside) == [], f"restore wrote through a symlink ({include})"
        assert not (dest / "docs" / "sub").is_symlink()
        assert (dest / "docs" / "sub" / "secret.txt").read_bytes() == b"secret"
        if not include:
            assert (dest / "docs" / "cache").is_dir()
            assert_same_tree(src, dest)

    victim = tmp_path / "pw"
    victim.write_bytes(b"keep me")
    os.chmod(victim, 0o600)
    before = os.lstat(victim)
    proc = restore_cli("--path", "s/docs", "--to", victim, check=1)
    assert "not a directory" in proc.stderr, proc.stderr
    after = os.lstat(victim)
    assert victim.read_bytes() == b"keep me" and os.listxattr(victim) == []
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


def test_verify_names_files_of_a_lost_pack_and_repair_lets_the_next_backup_mend_them(
        tmp_path: Path) -> None:
    """A pack file deleted and a byte flipped in another: verify names the files of
    every point they affect; ``verify --repair`` forgets the lost and damaged blobs
    (and the files-cache rows naming them), so the next backup of the same tree
    stores them again and the *old* point restores whole -- without repair that
    backup would reuse the missing data.  Real files, real packs."""
    from remotevss.backup.restore import restore
    from remotevss.backup.tree import content_ids, walk
    from remotevss.backup.verify import check, verify

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}").write_bytes(rand(f"lost{i}", 300_000))
    repo_path = tmp_path / "repo"
    init_repo(repo_path, passphrase="p", pack_size=1 << 20)
    with Repository(repo_path, "write", passphrase="p") as repo:
        run_backup(repo, [LocalSource(src, "s")], processes=0)
    with Repository(repo_path, "read", passphrase="p") as repo:
        chunks = {path: [repo.index.locate(cid) for cid in content_ids(e)]
                  for path, e in walk(repo.read_tree, repo.points()[0].root, "")
                  if e["type"] == "f"}
    loc_f03, loc_f30 = chunks["s/f03"][0], chunks["s/f30"][-1]
    assert loc_f03 is not None and loc_f30 is not None and loc_f03.pack != loc_f30.pack
    in_lost_pack = sorted(p for p, locs in chunks.items()
                          if any(loc is not None and loc.pack == loc_f03.pack for loc in locs))
    assert "s/f30" not in in_lost_pack
    with Repository(repo_path, "read", passphrase="p") as repo:
        # Every blob of the lost pack, trees and the point's record included
        # when they happen to share it with f03's data.
        lost_ids = {b.id for pid, name, _ in repo.index.packs() if name == loc_f03.pack
                    for b in repo.index.pack_blobs(pid)}
        record_lost = repo.points()[0].record in lost_ids
        root_lost = repo.points()[0].root in lost_ids
    pack_path(repo_path, loc_f03.pack).unlink()
    flip_stored_byte(repo_path, loc_f30)

    with Repository(repo_path, "read", passphrase="p") as repo:
        report = verify(repo)
    assert sorted(a["path"] for a in report.affected) == sorted([*in_lost_pack, "s/f30"])
    assert any("missing" in e for e in report.errors)
    with Repository(repo_path, "read", passphrase="p") as repo, pytest.raises(
            ValueError, match="exclusive"):
        verify(repo, repair=True)

    with Repository(repo_path, "exclusive", passphrase="p") as repo:
        report = verify(repo, repair=True)
    assert report.repaired is not None and report.repaired["packs_lost"] == 1
    assert report.repaired["packs_rewritten"] == 1
    # Forgotten: the lost pack's blobs and f30's flipped chunk -- but not the
    # point's record when it could be rebuilt from the index row and the root tree.
    rebuilt = int(record_lost and not root_lost)
    assert report.repaired["records"] == rebuilt
    assert report.repaired["blobs"] == len(lost_ids) + 1 - rebuilt
    with Repository(repo_path, "read", passphrase="p") as repo:
        after = check(repo)
    assert not any("pack" in e for e in after.errors), after.errors  # the index is consistent
    assert any("missing" in e for e in after.errors)  # point 1 still lacks that data

    with Repository(repo_path, "write", passphrase="p") as repo:
        point = run_backup(repo, [LocalSource(src, "s")], processes=0)
    assert point.stats["files"] == 40
    with Repository(repo_path, "read", passphrase="p") as repo:
        assert verify(repo).ok
        result = restore(repo, repo.points()[0], tmp_path / "out", "s")
    assert not result.errors
    assert_same_tree(src, tmp_path / "out")
    # On a sound repository repair changes nothing: the files cache stays.
    with Repository(repo_path, "exclusive", passphrase="p") as repo:
        assert verify(repo, repair=True).repaired == {
            "blobs": 0, "packs_lost": 0, "packs_rewritten": 0, "cache_dirs": 0, "records": 0}
    with Repository(repo_path, "write", passphrase="p") as repo:
        assert run_backup(repo, [LocalSource(src, "s")], processes=0).stats["bytes_read"] == 0


def test_a_lost_point_record_is_rebuilt_by_repair_or_by_the_next_backup(
        tmp_path: Path) -> None:
    """A point's record blob is unique to its point, so no later backup stores it
    by itself.  Repair rebuilds it from the index row and the root tree (the keyed
    id proves it is the same record) when the root tree is readable; when the
    whole last pack -- record and trees -- is lost, the next backup of the
    unchanged sources stores the trees again and rebuilds the record with them.
    Either way verify ends clean and the point keeps its uuid, time and meta."""
    from remotevss.backup.restore import restore
    from remotevss.backup.verify import verify

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(3):
        (src / "d" / f"x{i}").write_bytes(rand(f"rec{i}", 50_000))
    repo_path = backed_up(tmp_path, src)
    with Repository(repo_path, "read", passphrase="p") as repo:
        p1 = repo.points()[0]
        record = repo.read_blob(p1.record)
        loc = repo.index.locate(p1.record)
        assert loc is not None and repo.index.has_blob(p1.root)

    # 1. Only the record is damaged: repair alone mends it.
    flip_stored_byte(repo_path, loc)
    with Repository(repo_path, "read", passphrase="p") as repo:
        assert any(f"point {p1.id}: record blob" in e for e in verify(repo).errors)
    with Repository(repo_path, "exclusive", passphrase="p") as repo:
        report = verify(repo, repair=True)
    assert report.repaired is not None and report.repaired["records"] == 1
    assert report.repaired["blobs"] == 0
    with Repository(repo_path, "read", passphrase="p") as repo:
        assert verify(repo).ok
        assert repo.read_blob(p1.record) == record

    # 2. The whole pack (one pack holds everything here) is lost: repair cannot
    # rebuild the record (its root tree went with it) and says so; the next run can.
    with Repository(repo_path, "read", passphrase="p") as repo:
        packs = repo.index.packs()
    assert len(packs) == 1
    pack_path(repo_path, packs[0][1]).unlink()
    with Repository(repo_path, "exclusive", passphrase="p") as repo:
        report = verify(repo, repair=True)
    assert report.repaired is not None and report.repaired["records"] == 0
    assert any(f"point {p1.id}: its record and its root tree are lost" in n
               for n in report.notes), report.notes
    with Repository(repo_path, "exclusive", passphrase="p") as repo:  # again: the same
        again_report = verify(repo, repair=True)
    assert again_report.repaired == {"blobs": 0, "packs_lost": 0, "packs_rewritten": 0,
                                     "cache_dirs": 0, "records": 0}
    assert any("its record and its root tree are lost" in n for n in again_report.notes)
    with Repository(repo_path, "write", passphrase="p") as repo:
        run_backup(repo, [LocalSource(src, "s")], processes=0)
    with Repository(repo_path, "read", passphrase="p") as repo:
        assert verify(repo).ok, verify(repo).errors
        again = repo.points()[0]
        assert (again.uuid, again.time_ns, again.meta) == (p1.uuid, p1.time_ns, p1.meta)
        assert repo.read_blob(p1.record) == record
        assert not restore(repo, again, tmp_path / "out", "s").errors
    assert_same_tree(src, tmp_path / "out")


def test_cli_verify_repair_then_run_mends_a_lost_pack(tmp_path: Path) -> None:
    """The same through the command line: exit 4 while damaged, the repair reported,
    a run, then verify exits 0 and the first point restores whole."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"g{i}").write_bytes(rand(f"g{i}", 400_000))
    repo = tmp_path / "repo"
    backup(repo, f"data={src}", pack_size=1 << 20)
    victim = sorted((repo / "packs").rglob("*.pack"))[0]
    victim.unlink()
    assert cli("verify", "--repo", repo, check=4).stdout.count("affected:") >= 1
    report = json.loads(cli("verify", "--repo", repo, "--repair", "--json", check=4).stdout)
    assert report["repaired"]["packs_lost"] == 1 and report["repaired"]["blobs"] >= 1
    assert any("repair: forgot" in n for n in report["notes"])
    cli("run", "--repo", repo, f"data={src}")
    cli("verify", "--repo", repo)
    out = tmp_path / "out"
    cli("restore", "1", "--repo", repo, "--path", "data", "--to", out)
    assert_same_tree(src, out)
