"""Snapshot backends on real filesystems (btrfs, XFS with reflink, ext4, tmpfs, ZFS).

Each backend runs on the filesystem it is chosen for: btrfs on btrfs,
reflink on XFS, copy on ext4, zfs on a zfs-fuse pool (Sun's ZFS code in user
space; it has no extended attributes, so the xattr/ACL steps are skipped
there, detected, not assumed).  Needs root; see tests/conftest.py.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remotevss.snapshots import mounts
from remotevss.snapshots.base import Backend, NotSupported, SnapshotError, Volume
from remotevss.snapshots.copy import PARTIAL
from remotevss.snapshots.select import BACKENDS, choose_backend

pytestmark = pytest.mark.root
LoopFs = Callable[..., Path]  # the ``loopfs`` fixture: make(fstype, size_mb=0) -> mount point

FS_FOR = {"btrfs": "btrfs", "reflink": "xfs", "copy": "ext4", "zfs": "zfs"}
NAME = "@GMT-2024.01.02-03.04.05.000000-abcd1234"


@dataclass
class Env:
    backend: Backend
    share: Path
    mnt: Path
    volume: Volume
    xattrs: bool = True

    def snap(self, name: str = NAME, writable: bool = False) -> Path:
        """Create a snapshot; return the path that corresponds to the share."""
        made = Path(self.backend.create(self.volume, name, writable))
        assert made == Path(self.volume.snapshot_dir) / name
        return made / self.volume.share_subpath


@pytest.fixture(params=sorted(FS_FOR))
def env(request: pytest.FixtureRequest, loopfs: LoopFs,
        subvolume: Callable[[Path], Path]) -> Iterator[Env]:
    name = request.param
    if name == "zfs":
        pool, mnt = request.getfixturevalue("zfspool")()
        subprocess.run(["zfs", "create", f"{pool}/share"], check=True)
        share = mnt / "share"
    else:
        mnt = loopfs(FS_FOR[name])
        share = subvolume(mnt / "vol") if name == "btrfs" else mnt / "share"
        share.mkdir(exist_ok=True)
    backend = BACKENDS[name]
    yield Env(backend, share, mnt, backend.check(str(share)), has_xattrs(share))


def has_xattrs(directory: Path) -> bool:
    """zfs-fuse answers EOPNOTSUPP to every user xattr."""
    probe = directory / ".xattr-probe"
    probe.write_text("")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
        return False
    finally:
        probe.unlink()


def assert_erofs(fn: Callable[[], object]) -> None:
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno == errno.EROFS, info.value


def assert_read_only(snap: Path, xattrs: bool = True) -> None:
    assert_erofs(lambda: os.open(snap / "f0", os.O_WRONLY))
    assert_erofs(lambda: os.open(snap / "new", os.O_WRONLY | os.O_CREAT, 0o600))
    assert_erofs(lambda: os.truncate(snap / "f0", 0))
    if xattrs:
        assert_erofs(lambda: os.setxattr(snap / "f0", "user.x", b"1"))
    assert_erofs(lambda: os.utime(snap / "f0"))
    assert_erofs(lambda: (snap / "newdir").mkdir())
    assert_erofs(lambda: (snap / "f0").unlink())
    assert_erofs(lambda: (snap / "f0").chmod(0o777))
    assert_erofs(lambda: (snap / "f0").rename(snap / "f9"))


def populate(share: Path, n: int = 20, text: str = "v0") -> None:
    (share / "d" / "e").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (share / f"f{i}").write_text(f"{text}-{i}")
        (share / "d" / "e" / f"g{i}").write_text(f"{text}-deep-{i}")


# ------------------------------------------------------------------ every backend


def test_snapshot_freezes_content_while_a_writer_runs(env: Env) -> None:
    populate(env.share)
    (env.share / "doomed").write_text("still here")
    stop = threading.Event()
    written = []

    def writer() -> None:  # replaces "hot" atomically, over and over
        i = 0
        while not stop.is_set():
            tmp = env.share / f".hot.tmp{i % 2}"
            tmp.write_text(f"hot-{i:08d}" * 100)
            written.append(i)
            os.replace(tmp, env.share / "hot")
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(written) < 50:
            time.sleep(0.001)
        snap = env.snap()
        for i in range(20):  # changes after the snapshot must not show
            (env.share / f"f{i}").write_text("v1")
        (env.share / "doomed").unlink()
        (env.share / "born-later").write_text("x")
    finally:
        stop.set()
        t.join()
    for i in range(20):
        assert (snap / f"f{i}").read_text() == f"v0-{i}"
        assert (snap / "d" / "e" / f"g{i}").read_text() == f"v0-deep-{i}"
    assert (snap / "doomed").read_text() == "still here"
    assert not (snap / "born-later").exists()
    assert re.fullmatch(r"(hot-\d{8}){100}", (snap / "hot").read_text())


def test_read_only_snapshot_refuses_root_with_erofs(env: Env) -> None:
    populate(env.share)
    snap = env.snap()
    assert_read_only(snap, env.xattrs)
    assert (snap / "f0").read_text() == "v0-0"


def test_writable_snapshot_then_seal(env: Env) -> None:
    populate(env.share)
    snap = env.snap(writable=True)
    (snap / "f0").write_text("changed in the snapshot")
    (snap / "made-in-snapshot").mkdir()
    assert (env.share / "f0").read_text() == "v0-0"
    env.backend.seal(str(snap))
    env.backend.seal(str(snap))  # idempotent
    assert_read_only(snap, env.xattrs)
    assert (snap / "f0").read_text() == "changed in the snapshot"


def test_delete_is_complete_and_idempotent(env: Env) -> None:
    populate(env.share)
    path = str(env.snap())
    assert env.backend.exists(path)
    env.backend.delete(path)
    assert not env.backend.exists(path)
    assert not os.path.lexists(path)
    assert mounts.mount_at(path) is None
    env.backend.delete(path)
    assert os.listdir(env.volume.snapshot_dir) == []
    assert (env.share / "f0").read_text() == "v0-0"


def test_delete_while_a_file_in_the_snapshot_is_open(env: Env) -> None:
    populate(env.share)
    snap = env.snap()
    if env.backend.name == "zfs" and (m := mounts.mount_at(str(snap))) and m.fstype != "zfs":
        # zfs-fuse wedges its daemon once a busy FUSE mount of it is detached;
        # the backend refuses with EBUSY there and changes nothing
        with open(snap / "f0"), pytest.raises(SnapshotError) as info:
            env.backend.delete(str(snap))
        assert info.value.errno == errno.EBUSY
        assert env.backend.exists(str(snap)) and (snap / "f0").read_text() == "v0-0"
        env.backend.delete(str(snap))
        assert not os.path.lexists(snap)
        pytest.skip("zfs-fuse: busy delete refused (EBUSY); lazy detach is kernel ZFS only")
    with open(snap / "f0") as busy:
        os.chdir(snap / "d")
        try:
            env.backend.delete(str(snap))
        finally:
            os.chdir("/")
        assert busy.read() == "v0-0"
    assert not os.path.lexists(snap)
    assert mounts.mount_at(str(snap)) is None


def test_two_snapshots_within_one_second(env: Env) -> None:
    populate(env.share)
    a = env.snap(NAME[:-8] + "aaaaaaaa")
    (env.share / "f0").write_text("between")
    b = env.snap(NAME[:-8] + "bbbbbbbb")
    assert a != b
    assert (a / "f0").read_text() == "v0-0"
    assert (b / "f0").read_text() == "between"


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "x\0y", "n" * 256, "é" * 128])
def test_bad_names_are_refused(env: Env, bad: str) -> None:
    with pytest.raises(SnapshotError) as info:
        env.backend.create(env.volume, bad, False)
    assert not isinstance(info.value, NotSupported)
    assert not os.path.exists(env.volume.snapshot_dir) or not os.listdir(env.volume.snapshot_dir)


def test_delete_refuses_paths_outside_a_snapshot_dir(env: Env) -> None:
    with pytest.raises(SnapshotError):
        env.backend.delete(str(env.share))
    with pytest.raises(SnapshotError):
        env.backend.seal(str(env.share))
    assert env.share.is_dir()


def test_metadata_hardlinks_symlinks_xattrs(env: Env) -> None:
    s = env.share
    (s / "sub").mkdir()
    (s / "a").write_bytes(b"linked")
    os.link(s / "a", s / "b")
    os.link(s / "a", s / "sub" / "c")
    outside = env.mnt / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not in the share")
    os.symlink(str(outside), s / "dirlink")
    os.symlink("../a", s / "sub" / "rel")
    os.symlink("/nonexistent/target", s / "dangling")
    os.mkfifo(s / "fifo", 0o640)
    os.mknod(s / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(s / "sock", 0o600 | stat.S_IFSOCK)
    if env.xattrs:
        os.setxattr(s / "a", "user.colour", b"blue")
        os.setxattr(s / "sub", "user.kind", b"dir")
    (s / "suid").write_text("#!/bin/sh\n")
    os.chown(s / "suid", 1234, 5678)
    os.chmod(s / "suid", 0o4750)
    os.utime(s / "suid", ns=(1_000_000_123, 2_000_000_456))
    os.utime(s / "sub", ns=(3_000_000_789, 4_000_000_012))
    snap = env.snap()

    a, b, c = (os.stat(p) for p in (snap / "a", snap / "b", snap / "sub" / "c"))
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert (a.st_dev, a.st_ino) != (os.stat(s / "a").st_dev, os.stat(s / "a").st_ino)
    assert os.readlink(snap / "dirlink") == str(outside)
    assert os.readlink(snap / "sub" / "rel") == "../a"
    assert os.readlink(snap / "dangling") == "/nonexistent/target"
    assert stat.S_ISFIFO(os.lstat(snap / "fifo").st_mode)
    assert stat.S_IMODE(os.lstat(snap / "fifo").st_mode) == 0o640
    null = os.lstat(snap / "null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISSOCK(os.lstat(snap / "sock").st_mode)
    if env.xattrs:
        assert os.getxattr(snap / "a", "user.colour") == b"blue"
        assert os.getxattr(snap / "sub", "user.kind") == b"dir"
    st = os.stat(snap / "suid")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4750)
    # zfs-fuse stores whole seconds: the snapshot keeps what the share holds
    assert st.st_mtime_ns == os.stat(s / "suid").st_mtime_ns
    assert st.st_mtime_ns in (2_000_000_456, 2_000_000_000)
    assert os.stat(snap / "sub").st_mtime_ns == os.stat(s / "sub").st_mtime_ns
    assert os.stat(snap / "sub").st_mtime_ns in (4_000_000_012, 4_000_000_000)
    assert os.stat(snap).st_mode == os.stat(s).st_mode


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """POSIX ACL xattr value (version 2; tag, perm, id), as setfacl writes it."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ANY = 0xFFFFFFFF
ACL_1234 = _acl((1, 7, ANY), (2, 7, 1234), (4, 5, ANY), (0x10, 7, ANY), (0x20, 5, ANY))


def test_acls_copied_not_inherited(env: Env) -> None:
    """Source ACLs are kept; a default ACL on the snapshot directory leaks into nothing."""
    if not env.xattrs:
        pytest.skip(f"{env.backend.name}: this filesystem has no xattrs (POSIX ACLs are xattrs)")
    (env.share / "plain").write_text("no acl")
    (env.share / "dir").mkdir()
    (env.share / "dir" / "plain").write_text("no acl")
    (env.share / "withacl").write_text("acl")
    os.setxattr(env.share / "withacl", "system.posix_acl_access", ACL_1234)
    os.setxattr(env.share / "dir", "system.posix_acl_default", ACL_1234)
    snapdir = Path(env.volume.snapshot_dir)
    if not snapdir.exists():
        snapdir.mkdir(mode=0o755)
    os.setxattr(snapdir, "system.posix_acl_default", ACL_1234)
    snap = env.snap()
    for p in (snap, snap / "plain", snap / "dir" / "plain"):
        assert "system.posix_acl_access" not in os.listxattr(p), p
    assert "system.posix_acl_default" not in os.listxattr(snap)
    assert os.getxattr(snap / "withacl", "system.posix_acl_access") == ACL_1234
    assert os.getxattr(snap / "dir", "system.posix_acl_default") == ACL_1234
    assert os.stat(snap / "withacl").st_mode == os.stat(env.share / "withacl").st_mode


def test_bind_mount_below_the_share_is_not_supported(env: Env) -> None:
    (env.share / "with space").mkdir()
    other = env.mnt / "other"
    other.mkdir()
    subprocess.run(["mount", "--bind", str(other), str(env.share / "with space")], check=True)
    with pytest.raises(NotSupported, match="mount points below"):
        env.backend.check(str(env.share))
    with pytest.raises(NotSupported):
        env.backend.create(env.volume, NAME, False)


def test_own_snapshots_do_not_block_check(env: Env) -> None:
    populate(env.share)
    env.snap()
    assert env.backend.check(str(env.share)) == env.volume


def test_missing_or_file_share_is_not_supported(env: Env) -> None:
    with pytest.raises(NotSupported):
        env.backend.check(str(env.share / "missing"))
    (env.share / "file").write_text("x")
    with pytest.raises(NotSupported):
        env.backend.check(str(env.share / "file"))


def test_usage_reports_the_filesystem(env: Env) -> None:
    u = env.backend.usage(env.volume)
    assert 0 < u.filesystem_free <= u.filesystem_size


# ------------------------------------------------------------------ btrfs


def test_btrfs_share_in_subdirectory_of_subvolume(loopfs: LoopFs,
                                                  subvolume: Callable[[Path], Path]) -> None:
    mnt = loopfs("btrfs")
    vol = subvolume(mnt / "vol")
    share = vol / "dept" / "finance"
    share.mkdir(parents=True)
    (share / "ledger").write_text("1")
    backend = BACKENDS["btrfs"]
    volume = backend.check(str(share))
    assert (volume.root, volume.share_subpath) == (str(vol), "dept/finance")
    assert volume.snapshot_dir == str(vol / ".snapshots")
    snap = Path(backend.create(volume, NAME, False))
    assert (snap / volume.share_subpath / "ledger").read_text() == "1"
    # the top-level subvolume (id 5) of the filesystem is a volume too
    (mnt / "plain").mkdir()
    assert backend.check(str(mnt / "plain")).root == str(mnt)


def test_btrfs_nested_subvolumes(loopfs: LoopFs,
                                 subvolume: Callable[[Path], Path]) -> None:
    mnt = loopfs("btrfs")
    vol = subvolume(mnt / "vol")
    inner = subvolume(vol / "inner")
    backend = BACKENDS["btrfs"]
    assert backend.check(str(inner)).root == str(inner)  # the nearest subvolume wins
    with pytest.raises(NotSupported, match="subvolumes below"):
        backend.check(str(vol))
    (vol / "elsewhere").mkdir()  # a sibling of the nested subvolume is fine
    assert backend.check(str(vol / "elsewhere")).share_subpath == "elsewhere"


def test_btrfs_bind_mount_of_plain_directory_is_not_supported(
    loopfs: LoopFs, subvolume: Callable[[Path], Path], tmp_path: Path
) -> None:
    mnt = loopfs("btrfs")
    (subvolume(mnt / "vol") / "dir").mkdir()
    view = tmp_path / "view"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(mnt / "vol" / "dir"), str(view)], check=True)
    try:
        with pytest.raises(NotSupported, match="not reachable"):
            BACKENDS["btrfs"].check(str(view))
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_btrfs_snapshot_dir_is_a_subvolume(loopfs: LoopFs,
                                           subvolume: Callable[[Path], Path]) -> None:
    """So a snapshot of the volume holds one stub, not one per older snapshot."""
    import btrfsutil

    vol = subvolume(loopfs("btrfs") / "vol")
    backend = BACKENDS["btrfs"]
    volume = backend.check(str(vol))
    backend.create(volume, NAME[:-8] + "aaaaaaaa", False)
    second = Path(backend.create(volume, NAME[:-8] + "bbbbbbbb", False))
    assert btrfsutil.is_subvolume(volume.snapshot_dir)
    assert os.listdir(second / ".snapshots") == []


# ------------------------------------------------------------------ tree backends


@pytest.fixture(params=["reflink", "copy"])
def tree(request: pytest.FixtureRequest, loopfs: LoopFs) -> Env:
    mnt = loopfs(FS_FOR[request.param])
    share = mnt / "share"
    share.mkdir()
    backend = BACKENDS[request.param]
    return Env(backend, share, mnt, backend.check(str(share)))


def test_half_made_snapshot_is_not_complete_and_delete_cleans_it(tree: Env) -> None:
    populate(tree.share)
    snapdir = Path(tree.volume.snapshot_dir)
    half = snapdir / PARTIAL.format(NAME)
    (half / "sub").mkdir(parents=True)
    (half / "sub" / "x").write_text("crash")
    (half / "sub").chmod(0o555)
    target = snapdir / NAME
    assert not tree.backend.exists(str(target))
    tree.backend.delete(str(target))
    assert os.listdir(snapdir) == []
    half.mkdir()  # a stale partial does not block a new snapshot of that name
    snap = tree.snap()
    assert (snap / "f1").read_text() == "v0-1"
    assert os.listdir(snapdir) == [NAME]


def test_failure_midway_leaves_nothing(tree: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    populate(tree.share)
    calls = []
    real = tree.backend.clone_file  # type: ignore[attr-defined]

    def flaky(src: int, dst: int, st: os.stat_result) -> None:
        calls.append(1)
        if len(calls) == 10:
            raise OSError(errno.EIO, "injected")
        real(src, dst, st)

    monkeypatch.setattr(tree.backend, "clone_file", flaky)
    with pytest.raises(SnapshotError) as info:
        tree.backend.create(tree.volume, NAME, False)
    assert info.value.errno == errno.EIO
    assert os.listdir(tree.volume.snapshot_dir) == []
    assert mounts.mounts_below(str(tree.mnt)) == []


def test_failure_to_protect_leaves_nothing(tree: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last step (the read-only mount, after the rename) fails: still all-or-nothing."""
    populate(tree.share)

    def refuse(path: str) -> None:
        raise OSError(errno.EPERM, "mount refused", path)

    monkeypatch.setattr(mounts, "bind_readonly", refuse)
    with pytest.raises(SnapshotError) as info:
        tree.backend.create(tree.volume, NAME, False)
    assert info.value.errno == errno.EPERM
    assert os.listdir(tree.volume.snapshot_dir) == []


def test_restore_protection_reapplies_the_read_only_mount(tree: Env) -> None:
    populate(tree.share)
    snap = tree.snap()
    subprocess.run(["umount", str(snap)], check=True)  # as after a reboot
    (snap / "f0").write_text("root can write now")
    tree.backend.restore_protection(str(snap), read_only=True)
    assert_read_only(snap)
    tree.backend.restore_protection(str(snap), read_only=True)
    assert len([m for m in mounts.read_mounts() if m.mount_point == str(snap)]) == 1
    # a crash between bind and remount leaves a writable bind mount: made read-only
    subprocess.run(["umount", str(snap)], check=True)
    subprocess.run(["mount", "--bind", str(snap), str(snap)], check=True)
    tree.backend.restore_protection(str(snap), read_only=True)
    assert_read_only(snap)
    tree.backend.delete(str(snap))
    assert not snap.exists()


def test_snapshot_dir_is_left_out_of_snapshots(tree: Env) -> None:
    populate(tree.share)
    first = tree.snap(NAME[:-8] + "aaaaaaaa")
    second = tree.snap(NAME[:-8] + "bbbbbbbb")
    assert not (first / ".snapshots").exists()
    assert not (second / ".snapshots").exists()
    assert sorted(os.listdir(second)) == sorted(set(os.listdir(tree.share)) - {".snapshots"})


def test_user_owned_snapshot_dir_is_refused(tree: Env) -> None:
    snapdir = Path(tree.volume.snapshot_dir)
    snapdir.mkdir(exist_ok=True)
    os.chown(snapdir, 1000, 1000)
    with pytest.raises(NotSupported):
        tree.backend.check(str(tree.share))
    snapdir.rmdir()
    snapdir.symlink_to(tree.mnt)
    with pytest.raises(SnapshotError):
        tree.backend.create(tree.volume, NAME, False)
    assert set(os.listdir(tree.mnt)) <= {"share", "lost+found"}  # nothing written there


def test_reflink_on_xfs_shares_extents(loopfs: LoopFs) -> None:
    mnt = loopfs("xfs", 600)
    share = mnt / "share"
    share.mkdir()
    block = os.urandom(1 << 20)
    with open(share / "big", "wb") as f:
        for _ in range(200):
            f.write(block)
    os.sync()
    before = os.statvfs(mnt)
    backend = BACKENDS["reflink"]
    snap = Path(backend.create(backend.check(str(share)), NAME, False))
    os.sync()
    after = os.statvfs(mnt)
    used = (before.f_bfree - after.f_bfree) * after.f_frsize
    assert used < 10 << 20, f"snapshot of 200 MiB used {used >> 20} MiB"
    out = subprocess.run(["filefrag", "-v", str(snap / "big")], capture_output=True,
                         text=True, check=True).stdout
    assert "shared" in out
    assert (snap / "big").read_bytes()[: 1 << 20] == block


@pytest.mark.parametrize("fstype", ["ext4", "tmpfs"])
def test_copy_keeps_sparse_files_sparse(loopfs: LoopFs, fstype: str) -> None:
    mnt = loopfs(fstype, 64)
    share = mnt / "share"
    share.mkdir()
    with open(share / "sparse", "wb") as f:
        f.write(b"head" * 1024)
        f.seek(512 << 20)
        f.write(b"tail" * 1024)
        f.truncate(1 << 30)
    backend = BACKENDS["copy"]
    snap = Path(backend.create(backend.check(str(share)), NAME, False))
    st = os.stat(snap / "sparse")
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 <= 256 << 10
    with open(snap / "sparse", "rb") as f:
        assert f.read(4096) == b"head" * 1024
        f.seek(512 << 20)
        assert f.read(4096) == b"tail" * 1024
        f.seek(100 << 20)
        assert f.read(4096) == bytes(4096)


def test_copy_enospc_surfaces_and_leaves_nothing(loopfs: LoopFs) -> None:
    mnt = loopfs("ext4", 32)
    share = mnt / "share"
    share.mkdir()
    (share / "small").write_text("x")
    with open(share / "big", "wb") as f:
        f.write(os.urandom(18 << 20))
    os.sync()
    free = os.statvfs(mnt).f_bfree
    backend = BACKENDS["copy"]
    volume = backend.check(str(share))
    with pytest.raises(SnapshotError) as info:
        backend.create(volume, NAME, False)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(volume.snapshot_dir) == []
    os.sync()
    assert os.statvfs(mnt).f_bfree >= free - 16  # a few blocks for .snapshots itself


# ------------------------------------------------------------------ chooser


def test_choose_backend(loopfs: LoopFs) -> None:
    paths = {fs: loopfs(fs) for fs in ("btrfs", "xfs", "ext4", "tmpfs")}
    assert {fs: choose_backend(str(p)).name for fs, p in paths.items()} == {
        "btrfs": "btrfs", "xfs": "reflink", "ext4": "copy", "tmpfs": "copy"}
    with pytest.raises(NotSupported):
        choose_backend(str(paths["xfs"]), "btrfs")
    with pytest.raises(NotSupported):
        choose_backend(str(paths["ext4"]), "reflink")
    assert choose_backend(str(paths["xfs"]), "copy").name == "copy"
    assert choose_backend(str(paths["btrfs"]), "reflink").name == "reflink"
    with pytest.raises(NotSupported):
        choose_backend(str(paths["ext4"] / "missing"))
    with pytest.raises(SnapshotError):
        choose_backend(str(paths["ext4"]), "zfs")


# ------------------------------------------------------------------ pure helpers


def test_mountinfo_octal_escapes() -> None:
    line = ("36 35 98:0 /a\\134b /mnt/with\\040space\\011tab rw,noatime shared:1 master:2 - "
            "ext4 /dev/my\\040disk rw,errors=continue")
    (m,) = mounts.parse_mountinfo(line)
    assert (m.root, m.mount_point, m.source) == ("/a\\b", "/mnt/with space\ttab", "/dev/my disk")
    assert (m.fstype, m.read_only, m.mount_id, m.parent_id) == ("ext4", False, 36, 35)


def test_btrfs_create_many_takes_a_set_together_all_or_nothing(
        loopfs: LoopFs, subvolume: Callable[[Path], Path]) -> None:
    """BatchBackend: every snapshot of the set, in order, read-only where asked; a
    failure on the last one leaves none of the others behind."""
    from remotevss.snapshots.base import SnapRequest, supports_batches

    mnt = loopfs("btrfs")
    backend = BACKENDS["btrfs"]
    assert supports_batches(backend)
    vols = []
    for i in range(3):
        share = subvolume(mnt / f"vol{i}")
        populate(share, 2, f"v{i}")
        vols.append(backend.check(str(share)))
    made = backend.create_many(  # type: ignore[attr-defined]
        [SnapRequest(v, NAME, writable=(i == 1)) for i, v in enumerate(vols)])
    assert made == [os.path.join(v.snapshot_dir, NAME) for v in vols]
    for i, path in enumerate(made):
        assert (Path(path) / "f0").read_text().startswith(f"v{i}")
    assert_read_only(Path(made[0]))
    (Path(made[1]) / "new").write_text("writable")  # the one asked writable
    other = "@GMT-2024.01.02-03.04.06.000000-abcd1234"
    with pytest.raises(SnapshotError) as exc:  # the last name is taken: EEXIST
        backend.create_many(  # type: ignore[attr-defined]
            [SnapRequest(vols[0], other, False), SnapRequest(vols[1], other, False),
             SnapRequest(vols[2], NAME, False)])
    assert exc.value.errno == errno.EEXIST
    assert not os.path.lexists(os.path.join(vols[0].snapshot_dir, other))
    assert not os.path.lexists(os.path.join(vols[1].snapshot_dir, other))


def _btrfs_set(loopfs: LoopFs, subvolume: Callable[[Path], Path], n: int) -> list[Volume]:
    mnt = loopfs("btrfs", 512)
    backend = BACKENDS["btrfs"]
    vols = []
    for i in range(n):
        share = subvolume(mnt / f"vol{i}")
        populate(share, 1, f"v{i}")
        vols.append(backend.check(str(share)))
    return vols


def test_btrfs_create_many_shares_transaction_commits(
        loopfs: LoopFs, subvolume: Callable[[Path], Path]) -> None:
    """A 16-share set's snapshots are taken together: btrfs makes them in a few
    transaction commits (generations), not one commit per snapshot as one ioctl
    after another would, and ``last_spread`` says so."""
    import btrfsutil

    from remotevss.snapshots.base import SnapRequest

    vols = _btrfs_set(loopfs, subvolume, 16)
    backend = BACKENDS["btrfs"]
    made = backend.create_many(  # type: ignore[attr-defined]
        [SnapRequest(v, NAME, writable=False) for v in vols])
    generations = {btrfsutil.subvolume_info(p).otransid for p in made}
    assert len(generations) <= 8, generations
    spread = backend.last_spread  # type: ignore[attr-defined]
    assert (spread.snapshots, spread.commits) == (16, len(generations))
    assert 0 <= spread.seconds < 1
    for i, path in enumerate(made):
        assert (Path(path) / "f0").read_text().startswith(f"v{i}")
        assert_read_only(Path(path))


def test_btrfs_create_many_failure_in_the_middle_leaves_no_snapshot(
        loopfs: LoopFs, subvolume: Callable[[Path], Path]) -> None:
    """One snapshot of the batch fails in the kernel (its volume's .snapshots is a
    read-only subvolume: EROFS), after every check passed: the call raises that
    errno and every snapshot the batch made is gone again."""
    import btrfsutil

    from remotevss.snapshots.base import SnapRequest

    vols = _btrfs_set(loopfs, subvolume, 16)
    backend = BACKENDS["btrfs"]
    for v in vols:
        backend._ensure_snapshot_dir(v.snapshot_dir)  # type: ignore[attr-defined]
    btrfsutil.set_subvolume_read_only(vols[8].snapshot_dir, True)
    with pytest.raises(SnapshotError) as exc:
        backend.create_many(  # type: ignore[attr-defined]
            [SnapRequest(v, NAME, writable=False) for v in vols])
    assert exc.value.errno == errno.EROFS
    assert vols[8].root in str(exc.value)
    for v in vols:
        assert os.listdir(v.snapshot_dir) == []
    btrfsutil.set_subvolume_read_only(vols[8].snapshot_dir, False)
    made = backend.create_many(  # type: ignore[attr-defined]
        [SnapRequest(v, NAME, writable=False) for v in vols])
    assert all(os.path.isdir(p) for p in made)
