"""The zfs backend on real ZFS code (zfs-fuse: Sun's ZFS in user space, pool v23).

What is ZFS-specific beyond the backend contract (test_snapshots.py): the
share -> dataset mapping, user properties, holds, clones, batches over
datasets and pools, ZFS's own accounting, and ZFS's messages in our errors.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from remotevss.snapshots import mounts, zfs_cli
from remotevss.snapshots.base import NotSupported, SnapRequest, SnapshotError, supports_batches
from remotevss.snapshots.select import BACKENDS, choose_backend
from remotevss.snapshots.zfs import ZfsBackend
from tests.support.zfs_fuse import zfs

pytestmark = pytest.mark.root
ZfsPool = Callable[..., tuple[str, Path]]
NAME = "@GMT-2024.01.02-03.04.05.000000-abcd1234"


def prop(name: str, p: str) -> str:
    return zfs("get", "-H", "-p", "-o", "value", p, name).strip()


def stored(name: str, p: str) -> str:
    """The value set on the dataset itself (zfs-fuse shows a mount's "temporary" one)."""
    return zfs("get", "-H", "-s", "local", "-o", "value", p, name).strip()


def datasets(pool: str, kind: str = "all") -> set[str]:
    return set(zfs("list", "-H", "-o", "name", "-t", kind, "-r", pool).split())


def dataset(pool: str, mnt: Path, name: str) -> Path:
    zfs("create", f"{pool}/{name}")
    return mnt / name


@pytest.fixture
def zb() -> ZfsBackend:
    return ZfsBackend()


def test_share_maps_to_its_dataset_and_is_chosen_automatically(zfspool: ZfsPool,
                                                               zb: ZfsBackend) -> None:
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    volume = zb.check(str(share))
    assert (volume.root, volume.snapshot_dir, volume.share_subpath) == (
        str(share), str(share / ".snapshots"), "")
    assert choose_backend(str(share)).name == "zfs"
    assert supports_batches(BACKENDS["zfs"])
    assert BACKENDS["zfs"].check(str(share)) == volume


def test_subdirectory_share_is_refused_naming_the_dataset(
        zfspool: ZfsPool, zb: ZfsBackend, caplog: pytest.LogCaptureFixture) -> None:
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data") / "finance"
    share.mkdir()
    (share / "ledger").write_text("1")
    before = datasets(pool)
    with caplog.at_level(logging.WARNING), pytest.raises(NotSupported) as info:
        zb.check(str(share))
    assert f"inside dataset {pool}/data" in str(info.value)
    assert f"{pool}/data/finance" in str(info.value)
    assert any(f"{pool}/data/finance" in r.getMessage() for r in caplog.records)
    assert datasets(pool) == before  # the probe changed nothing
    # configured to snapshot the enclosing dataset: the share is a subpath of it
    enclosing = BACKENDS["zfs-enclosing"]
    volume = enclosing.check(str(share))
    assert (volume.root, volume.share_subpath) == (str(mnt / "data"), "finance")
    assert volume.name == f"zfs-enclosing:{mnt / 'data'}"
    snap = Path(enclosing.create(volume, NAME, False))
    assert (snap / "finance" / "ledger").read_text() == "1"
    enclosing.delete(str(snap))
    assert datasets(pool, "snapshot") == set()


def test_child_dataset_below_the_share_is_not_supported(zfspool: ZfsPool,
                                                        zb: ZfsBackend) -> None:
    pool, mnt = zfspool()
    dataset(pool, mnt, "data")
    zfs("create", f"{pool}/data/inner")
    with pytest.raises(NotSupported, match="mount points below"):
        zb.check(str(mnt / "data"))
    assert zb.check(str(mnt / "data" / "inner")).root == str(mnt / "data" / "inner")


def test_user_properties_name_set_copy_context(zfspool: ZfsPool, zb: ZfsBackend) -> None:
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    volume = zb.check(str(share))
    path = zb.create(volume, NAME, True, set_id="set-1", copy_id="copy-1",
                     context="FSRVP_CTX_BACKUP")
    snap, clone = f"{pool}/data@{NAME[1:]}", f"{pool}/data/.snapshots/{NAME[1:]}"
    for name in (snap, clone):
        assert prop(name, "org.remotevss:set") == "set-1"
        assert prop(name, "org.remotevss:copy") == "copy-1"
        assert prop(name, "org.remotevss:context") == "FSRVP_CTX_BACKUP"
        assert prop(name, "org.remotevss:managed") == "yes"
    assert prop(clone, "origin") == snap
    assert prop(clone, "mountpoint") == path
    zb.delete(path)
    assert datasets(pool, "snapshot") == set()
    assert datasets(pool, "filesystem") == {pool, f"{pool}/data", f"{pool}/data/.snapshots"}


def test_persistent_context_holds_the_snapshot(zfspool: ZfsPool, zb: ZfsBackend) -> None:
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    volume = zb.check(str(share))
    held = zb.create(volume, NAME[:-8] + "aaaaaaaa", False, persistent=True)
    free = zb.create(volume, NAME[:-8] + "bbbbbbbb", False, persistent=False)
    assert prop(f"{pool}/data@GMT-2024.01.02-03.04.05.000000-aaaaaaaa", "userrefs") == "1"
    assert prop(f"{pool}/data@GMT-2024.01.02-03.04.05.000000-bbbbbbbb", "userrefs") == "0"
    zb.delete(held)  # releases, then destroys
    zb.delete(free)
    assert datasets(pool, "snapshot") == set()


def test_writable_clone_sealed_read_only(zfspool: ZfsPool, zb: ZfsBackend) -> None:
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    (share / "f").write_text("v0")
    volume = zb.check(str(share))
    path = Path(zb.create(volume, NAME, True))
    clone = f"{pool}/data/.snapshots/{NAME[1:]}"
    assert stored(clone, "readonly") in ("", "off")
    (path / "f").write_text("recovered")
    zb.seal(str(path))
    # (zfs-fuse does not keep readonly=on set on a mounted clone: the read-only
    # bind mount the backend adds is what refuses writes there)
    assert mounts.mount_at(str(path)) is not None and mounts.mount_at(str(path)).read_only
    with pytest.raises(OSError) as info:
        (path / "f").write_text("x")
    assert info.value.errno == errno.EROFS
    assert (path / "f").read_text() == "recovered"
    assert (share / "f").read_text() == "v0"
    zb.delete(str(path))
    assert clone not in datasets(pool)
    assert not path.exists()


def test_errors_carry_the_zfs_message(zfspool: ZfsPool, zb: ZfsBackend,
                                      caplog: pytest.LogCaptureFixture) -> None:
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    volume = zb.check(str(share))
    # a snapshot of that name made by someone else: EEXIST, ZFS's words logged, ours kept
    zfs("snapshot", f"{pool}/data@{NAME[1:]}")
    with caplog.at_level(logging.ERROR), pytest.raises(zfs_cli.ZfsError) as info:
        zb.create(volume, NAME, False)
    assert info.value.errno == errno.EEXIST
    assert "already exists" in info.value.zfs_message
    assert any("zfs said" in r.getMessage() and "already exists" in r.getMessage()
               for r in caplog.records)
    assert datasets(pool, "snapshot") == {f"{pool}/data@{NAME[1:]}"}
    # delete never destroys what remotevss did not make
    zb.delete(str(share / ".snapshots" / NAME))
    assert datasets(pool, "snapshot") == {f"{pool}/data@{NAME[1:]}"}
    # a name ZFS cannot take
    with pytest.raises(SnapshotError) as bad:
        zb.create(volume, "@GMT-with space", False)
    assert bad.value.errno == errno.EINVAL


def test_enospc_from_zfs(zfspool: ZfsPool, zb: ZfsBackend) -> None:
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    volume = zb.check(str(share))
    zfs("set", "quota=1M", f"{pool}/data")
    (share / "f").write_bytes(os.urandom(64 << 10))
    path = Path(zb.create(volume, NAME, True))  # the clone is charged to data's quota
    with pytest.raises(OSError) as info, open(path / "big", "wb") as f:
        for _ in range(64):
            f.write(os.urandom(64 << 10))
            f.flush()
            os.fsync(f.fileno())
    assert info.value.errno in (errno.EDQUOT, errno.ENOSPC)
    zb.delete(str(path))


def test_batch_on_one_pool_and_across_pools(zfspool: ZfsPool, zb: ZfsBackend) -> None:
    pool, mnt = zfspool()
    pool2, mnt2 = zfspool()
    shares = [dataset(pool, mnt, f"s{i}") for i in range(3)] + [dataset(pool2, mnt2, "t")]
    for i, s in enumerate(shares):
        (s / "f").write_text(f"v{i}")
    multi = zfs_cli.probe_multi_snapshot(pool)
    assert datasets(pool, "snapshot") == set()  # the probe made nothing
    reqs = [SnapRequest(zb.check(str(s)), NAME, False, set_id="S", copy_id=f"c{i}")
            for i, s in enumerate(shares)]
    paths = zb.create_many(reqs)
    assert paths == [str(s / ".snapshots" / NAME) for s in shares]
    for i, p in enumerate(paths):
        assert (Path(p) / "f").read_text() == f"v{i}"
        name = f"{reqs[i].volume.root.split('/')[-1]}@{NAME[1:]}"
        assert prop(f"{pool if i < 3 else pool2}/{name}", "org.remotevss:copy") == f"c{i}"
        assert prop(f"{pool if i < 3 else pool2}/{name}", "org.remotevss:set") == "S"
    spread = zb.last_spread
    assert spread.snapshots == 4
    # one call per pool where ZFS takes several names, else one per dataset
    assert spread.calls == (2 if multi else 4)
    assert not spread.atomic  # two pools are never one transaction
    assert spread.seconds >= 0
    for p in paths:
        zb.delete(p)
    assert datasets(pool, "snapshot") | datasets(pool2, "snapshot") == set()


def test_zfs_fuse_capabilities_are_detected(zfspool: ZfsPool, zb: ZfsBackend) -> None:
    """zfs-fuse takes one name per ``zfs snapshot`` and has no .zfs directory;
    the probe answers that without creating anything."""
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    fuse = mounts.mount_at(str(share))
    assert fuse is not None
    if fuse.fstype != "fuse.zfs":
        pytest.skip("not zfs-fuse")
    zfs_cli.forget_probes()
    assert zfs_cli.probe_multi_snapshot(pool) is False
    assert not ZfsBackend.has_snapdir(zb._dataset(zb.check(str(share))))
    assert datasets(pool, "snapshot") == set()


def test_batch_failure_undoes_what_it_made(zfspool: ZfsPool, zb: ZfsBackend) -> None:
    pool, mnt = zfspool()
    a, b = dataset(pool, mnt, "a"), dataset(pool, mnt, "b")
    zfs("snapshot", f"{pool}/b@{NAME[1:]}")  # the second snapshot will fail: EEXIST
    reqs = [SnapRequest(zb.check(str(s)), NAME, True) for s in (a, b)]
    with pytest.raises(SnapshotError) as info:
        zb.create_many(reqs)
    assert info.value.errno == errno.EEXIST
    assert datasets(pool, "snapshot") == {f"{pool}/b@{NAME[1:]}"}
    assert os.listdir(a / ".snapshots") == []


def test_usage_from_zfs_accounting(zfspool: ZfsPool, zb: ZfsBackend) -> None:
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    volume = zb.check(str(share))
    with open(share / "big", "wb") as f:
        f.write(os.urandom(4 << 20))
    path = zb.create(volume, NAME, False)
    before = zb.usage(volume)
    os.unlink(share / "big")  # now only the snapshot holds those 4 MiB
    subprocess.run(["sync"], check=True)
    deadline = time.monotonic() + 60  # ZFS accounts at the next txg sync
    assert before.used is not None
    while ((after := zb.usage(volume)).used or 0) - before.used < 3 << 20 \
            and time.monotonic() < deadline:
        time.sleep(1)
    assert after.used is not None
    assert after.used - before.used >= 3 << 20
    assert int(prop(f"{pool}/data", "usedbysnapshots")) >= 3 << 20
    assert 0 < after.filesystem_free <= after.filesystem_size
    zb.delete(path)


def test_managed_snapshots_are_found_from_zfs_alone(zfspool: ZfsPool, zb: ZfsBackend) -> None:
    """What orphan collection needs after a lost journal: ZFS says which snapshots
    are ours, of which set, copy and context, and which are held."""
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    volume = zb.check(str(share))
    zfs("snapshot", f"{pool}/data@admin-made")  # not ours: never listed
    a = zb.create(volume, NAME[:-8] + "aaaaaaaa", False, set_id="S1", copy_id="C1",
                  context="FSRVP_CTX_APP_ROLLBACK", persistent=True)
    b = zb.create(volume, NAME[:-8] + "bbbbbbbb", True, set_id="S2", copy_id="C2")
    found = {m.path: m for m in zb.managed(volume)}
    assert set(found) == {a, b}
    assert (found[a].set_id, found[a].copy_id, found[a].context, found[a].held) == (
        "S1", "C1", "FSRVP_CTX_APP_ROLLBACK", True)
    assert (found[b].set_id, found[b].copy_id, found[b].held) == ("S2", "C2", False)
    assert found[a].owner == found[b].owner == "" and not found[b].doomed
    # the owning agent's label; a recursive snapshot of the pool (TrueNAS's periodic
    # tasks) inherits our labels on the .snapshots children, and is still not ours
    (c,) = zb.create_many([SnapRequest(volume, NAME[:-8] + "cccccccc", True, set_id="S3",
                                       copy_id="C3", owner="/var/lib/remotevss")])
    zfs("snapshot", "-r", f"{pool}@daily")
    zfs("set", "org.remotevss:doomed=yes",  # as _destroy_clone marks a busy clone
        f"{pool}/data/.snapshots/{os.path.basename(b)[1:]}")
    found = {m.path: m for m in zb.managed(volume)}
    assert set(found) == {a, b, c}
    assert found[c].owner == "/var/lib/remotevss" and found[b].doomed
    assert not found[a].doomed and not found[c].doomed
    zfs("set", "org.remotevss:doomed=no", f"{pool}/data/.snapshots/{os.path.basename(b)[1:]}")
    for n in sorted(datasets(pool, "snapshot")):
        if n.endswith("@daily"):
            zfs("destroy", n)
    for m in found.values():  # what a collector would do with an orphan
        zb.delete(m.path)
    assert zb.managed(volume) == []
    assert datasets(pool, "snapshot") == {f"{pool}/data@admin-made"}


def test_restore_protection_after_the_read_only_mount_is_lost(zfspool: ZfsPool,
                                                              zb: ZfsBackend) -> None:
    """As after a reboot: the clone is mounted by ZFS again, the bind mount is not."""
    pool, mnt = zfspool()
    share = dataset(pool, mnt, "data")
    (share / "f").write_text("v0")
    volume = zb.check(str(share))
    path = zb.create(volume, NAME, False)
    top = mounts.mount_at(path)
    assert top is not None and top.read_only
    subprocess.run(["umount", path], check=True)  # our read-only bind mount only
    under = mounts.mount_at(path)
    assert under is not None and not under.read_only  # zfs-fuse's own mount
    zb.restore_protection(path, read_only=True)
    with pytest.raises(OSError) as info:
        os.open(os.path.join(path, "f"), os.O_WRONLY)
    assert info.value.errno == errno.EROFS
    zb.restore_protection(path, read_only=True)  # idempotent: one bind mount
    assert len([m for m in mounts.read_mounts() if m.mount_point == path]) == 2
    zb.delete(path)
    assert datasets(pool, "snapshot") == set()
