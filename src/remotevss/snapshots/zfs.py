"""zfs backend: a shadow copy is a ZFS snapshot of the dataset the share is.

Why ZFS's own snapshots: they are atomic, O(1), and several datasets of one
pool can be snapshotted in one transaction group (OpenZFS takes several names
in one ``zfs snapshot``), which is what a shadow copy *set* means.

Mapping: a share is the mountpoint of a dataset (read from the mount table:
fstype ``zfs``, or ``fuse.zfs`` under zfs-fuse).  A share that is a
subdirectory of a dataset is refused with a message naming the dataset to
create, unless the ``zfs-enclosing`` backend is chosen (then the enclosing
dataset is snapshotted and the share is a subpath of it, as with btrfs).

Layout, the same as btrfs's so shadow_copy2 needs the same settings:
``<mountpoint>/.snapshots`` is the mountpoint of a child dataset
``<dataset>/.snapshots`` (so later snapshots of the share hold one empty
directory for it), and ``<mountpoint>/.snapshots/<name>`` is the snapshot as
the agent names it.  ZFS snapshot names cannot hold "@": ``@GMT-...`` is
``<dataset>@GMT-...`` without the leading "@".  What sits at that path:

* writable snapshots (before RecoveryComplete): a clone
  ``<dataset>/.snapshots/<zname>`` mounted there; ``seal`` sets
  ``readonly=on``; ``delete`` destroys the clone, then the snapshot;
* read-only snapshots where ZFS has the ``.zfs`` directory (OpenZFS): a
  symlink to ``../.zfs/snapshot/<zname>`` (no clone, no mount);
* read-only snapshots without it (zfs-fuse): a clone with ``readonly=on``.

Every snapshot and clone carries ``org.remotevss:managed=yes`` from its
creation (``-o`` on the same command) plus the set, copy, context and owning
agent (``org.remotevss:agent``) when the caller names them, so orphan
collection can find them from ZFS alone (``managed``; agent/strays.py);
delete refuses datasets without the marker.  Persistent contexts get a ``zfs hold``
with tag ``remotevss``, released by ``delete``.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from remotevss.snapshots import mounts, zfs_cli
from remotevss.snapshots.base import (
    NotSupported,
    SnapRequest,
    SnapshotError,
    Usage,
    Volume,
    validate_snapshot_name,
)

log = logging.getLogger(__name__)

SNAPSHOT_DIR = ".snapshots"
ZFS_FSTYPES = ("zfs", "fuse.zfs")
PROP = "org.remotevss"
MANAGED = f"{PROP}:managed"
OWNER = f"{PROP}:agent"  # which agent made it: its state directory (agent/strays.py)
DOOMED = f"{PROP}:doomed"  # deleted while busy; destroyed by _sweep
HOLD_TAG = "remotevss"
FUSE_BUSY_WAIT = 3.0  # seconds a busy zfs-fuse clone is retried before EBUSY
# After a clean unmount ZFS may answer EBUSY to the destroy for a moment (the
# FUSE daemon finishes its unmount behind the kernel's); the destroy is retried
# that long.  A clone that stays busy -- e.g. a process in another mount
# namespace still holds a copy of its mount -- is left doomed for _sweep.
DESTROY_PATIENCE = {"zfs": 2.0, "fuse": 5.0}


@dataclass(frozen=True)
class Dataset:
    """A mounted ZFS filesystem."""

    name: str
    mountpoint: str

    @property
    def pool(self) -> str:
        return zfs_cli.pool_of(self.name)

    @property
    def container(self) -> str:
        return f"{self.name}/{SNAPSHOT_DIR}"

    def snapshot(self, zname: str) -> str:
        return f"{self.name}@{zname}"

    def clone(self, zname: str) -> str:
        return f"{self.container}/{zname}"


@dataclass(frozen=True)
class ManagedSnapshot:
    """A snapshot remotevss made, as ZFS itself records it (``ZfsBackend.managed``)."""

    path: str
    zfs_name: str
    set_id: str
    copy_id: str
    context: str
    held: bool
    owner: str = ""
    doomed: bool = False  # its clone is being destroyed (``_sweep`` finishes it)


@dataclass
class Spread:
    """How far apart in time the snapshots of the last ``create_many`` were."""

    snapshots: int = 0
    calls: int = 0  # zfs snapshot invocations
    seconds: float = 0.0
    atomic: bool = True


def zfs_name(snap_name: str) -> str:
    """The agent's name -> the ZFS snapshot/clone component (drops one leading "@")."""
    validate_snapshot_name(snap_name)
    z = snap_name[1:] if snap_name.startswith("@") else snap_name
    zfs_cli.check_component(z)
    return z


def on_zfs(path: str) -> bool:
    m = _mount_of(os.path.realpath(path))
    return m is not None and m.fstype in ZFS_FSTYPES


def _mount_of(path: str) -> mounts.Mount | None:
    """The mount that holds ``path``: the deepest (and topmost stacked) mount point above it."""
    best: mounts.Mount | None = None
    for m in mounts.read_mounts():
        mp = m.mount_point
        inside = path == mp or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best


def dataset_at(mountpoint: str) -> Dataset | None:
    """The ZFS dataset mounted exactly at ``mountpoint`` (None if none)."""
    m = mounts.mount_at(mountpoint)
    if m is None or m.fstype not in ZFS_FSTYPES or m.root != "/":
        return None
    return Dataset(m.source, mountpoint)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except zfs_cli.ZfsError as exc:
        log.error("%s: zfs said: %s", what, exc.zfs_message or exc)
        raise
    except OSError as exc:
        raise SnapshotError(f"{what}: {exc}", exc.errno) from exc


class ZfsBackend:
    """``enclosing=False`` (backend "zfs"): shares must be dataset mountpoints.
    ``enclosing=True`` (backend "zfs-enclosing"): a share inside a dataset
    snapshots that whole dataset."""

    def __init__(self, name: str = "zfs", enclosing: bool = False) -> None:
        self.name = name
        self.enclosing = enclosing
        self.last_spread = Spread()
        self._warned: set[str] = set()  # shares whose refusal was logged (check runs often)

    # ------------------------------------------------------------ mapping

    def check(self, share_path: str) -> Volume:
        path = os.path.realpath(share_path)
        if not os.path.isdir(path):
            raise NotSupported(f"{share_path}: not an existing directory", errno.ENOENT)
        m = _mount_of(path)
        if m is None or m.fstype not in ZFS_FSTYPES:
            raise NotSupported(f"{share_path}: not on ZFS")
        if m.root != "/":
            raise NotSupported(f"{share_path}: a bind mount of a directory inside "
                               f"dataset {m.source}, not its mountpoint")
        ds = Dataset(m.source, m.mount_point)
        sub = os.path.relpath(path, ds.mountpoint)
        sub = "" if sub == "." else sub
        if sub and not self.enclosing:
            suggestion = f"{ds.name}/{os.path.basename(path)}"
            first = path not in self._warned
            self._warned.add(path)
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "share %s is a directory inside ZFS dataset %s (mounted at %s), not a dataset: "
                "create a dataset for it (e.g. zfs create -o mountpoint=%s %s, then move the "
                "files in) or configure backend = \"zfs-enclosing\" to snapshot all of %s",
                share_path, ds.name, ds.mountpoint, path, suggestion, ds.name)
            raise NotSupported(
                f"{share_path}: not a ZFS dataset mountpoint but a directory inside dataset "
                f"{ds.name}; create a dataset for it (e.g. {suggestion} with mountpoint={path}) "
                f"or use backend zfs-enclosing", errno.EOPNOTSUPP)
        snapdir = os.path.join(ds.mountpoint, SNAPSHOT_DIR)
        if below := mounts.mounts_below(path, exclude=(snapdir,)):
            raise NotSupported(f"{share_path}: mount points below the share "
                               f"(child datasets?): {below}")
        return Volume(self.name, ds.mountpoint, snapdir, sub)

    def _dataset(self, volume: Volume) -> Dataset:
        ds = dataset_at(volume.root)
        if ds is None:
            raise NotSupported(f"{volume.root}: no longer a mounted ZFS dataset")
        return ds

    @staticmethod
    def has_snapdir(ds: Dataset) -> bool:
        """The ``.zfs/snapshot`` directory (OpenZFS; hidden or not, lookup works)."""
        return os.path.isdir(os.path.join(ds.mountpoint, ".zfs", "snapshot"))

    def multi_snapshot(self, pool: str) -> bool:
        return zfs_cli.probe_multi_snapshot(pool)

    # ------------------------------------------------------------ create

    def create(self, volume: Volume, snap_name: str, writable: bool, *, set_id: str = "",
               copy_id: str = "", context: str = "", persistent: bool = False) -> str:
        return self.create_many([SnapRequest(volume, snap_name, writable, set_id=set_id,
                                             copy_id=copy_id, context=context,
                                             persistent=persistent)])[0]

    def create_many(self, requests: list[SnapRequest]) -> list[str]:
        """All snapshots of ``requests`` per pool in one ``zfs snapshot`` where the
        running ZFS takes several names (one txg: atomic), else one after another
        with the spread logged; then the clones/links and holds.  All or nothing."""
        plan = [self._plan(r) for r in requests]
        for ds, _, _, r in plan:
            share = os.path.join(ds.mountpoint, r.volume.share_subpath)
            if below := mounts.mounts_below(share, exclude=(r.volume.snapshot_dir,)):
                raise NotSupported(f"{share}: mount points below the share: {below}")
        seen: set[str] = set()
        for ds, zname, target, _ in plan:
            if ds.snapshot(zname) in seen:
                raise SnapshotError(f"{ds.snapshot(zname)} requested twice", errno.EEXIST)
            seen.add(ds.snapshot(zname))
            if os.path.lexists(target):
                raise SnapshotError(f"{target} already exists", errno.EEXIST)
        made_snaps: list[str] = []
        made_paths: list[str] = []
        try:
            for ds in {p[0] for p in plan}:
                self._ensure_container(ds)
                self._sweep(ds)
            self._snapshot_all(plan, made_snaps)
            for ds, zname, target, r in plan:
                self._publish(ds, zname, target, r)
                made_paths.append(target)
                if r.persistent:
                    with _errors(f"hold on {ds.snapshot(zname)}"):
                        zfs_cli.hold(HOLD_TAG, ds.snapshot(zname))
        except BaseException:
            for ds, zname, target, _ in plan:
                if ds.snapshot(zname) in made_snaps:
                    try:
                        self._remove(ds, zname, target)
                    except SnapshotError as exc:  # pragma: no cover - logged, journal retries
                        log.error("undo of %s failed: %s", target, exc)
            raise
        return [p[2] for p in plan]

    def _plan(self, r: SnapRequest) -> tuple[Dataset, str, str, SnapRequest]:
        zname = zfs_name(r.snap_name)
        ds = self._dataset(r.volume)
        for name in (ds.snapshot(zname), ds.clone(zname)):
            if len(name) > zfs_cli.MAXNAMELEN:
                raise SnapshotError(f"ZFS name too long: {name}", errno.ENAMETOOLONG)
        return ds, zname, os.path.join(r.volume.snapshot_dir, r.snap_name), r

    def _ensure_container(self, ds: Dataset) -> None:
        """``<dataset>/.snapshots`` mounted at ``<mountpoint>/.snapshots``."""
        snapdir = os.path.join(ds.mountpoint, SNAPSHOT_DIR)
        m = mounts.mount_at(snapdir)
        if m is None or m.source != ds.container:
            with _errors(f"creating {ds.container}"):
                if not zfs_cli.exists(ds.container):
                    zfs_cli.create(ds.container, {"mountpoint": snapdir, MANAGED: "yes"})
                else:
                    zfs_cli.run("mount", ds.container, what=f"zfs mount {ds.container}")
        with _errors(f"checking {snapdir}"):
            os.chmod(snapdir, 0o755)  # noqa: S103 - share users may browse snapshots
            mounts.check_private_dir(snapdir)

    @staticmethod
    def _props(r: SnapRequest, per_copy: bool = True) -> dict[str, str]:
        props = {MANAGED: "yes"}
        if r.set_id:
            props[f"{PROP}:set"] = r.set_id
        if r.context:
            props[f"{PROP}:context"] = r.context
        if r.copy_id and per_copy:
            props[f"{PROP}:copy"] = r.copy_id
        if r.owner:
            props[OWNER] = r.owner
        return props

    def _snapshot_all(self, plan: list[tuple[Dataset, str, str, SnapRequest]],
                      made: list[str]) -> None:
        by_pool: dict[str, list[tuple[Dataset, str, str, SnapRequest]]] = {}
        for p in plan:
            by_pool.setdefault(p[0].pool, []).append(p)
        spread = Spread(snapshots=len(plan))
        first: float | None = None
        last = 0.0
        for pool, items in by_pool.items():
            names = [ds.snapshot(z) for ds, z, _, _ in items]
            common = {k: v for k, v in self._props(items[0][3], per_copy=False).items()
                      if all(self._props(r, per_copy=False).get(k) == v for *_, r in items)}
            if len(items) > 1 and self.multi_snapshot(pool):
                with _errors(f"snapshot of {len(names)} datasets of pool {pool}"):
                    zfs_cli.snapshot(names, common)
                now = time.monotonic()
                first = now if first is None else first
                last = now
                spread.calls += 1
                made += names
                for (*_, r), name in zip(items, names, strict=True):
                    extra = {k: v for k, v in self._props(r).items() if k not in common}
                    if extra:
                        with _errors(f"properties of {name}"):
                            zfs_cli.set_props(name, extra)
                continue
            for ds, z, _, r in items:
                name = ds.snapshot(z)
                with _errors(f"snapshot of {ds.name}"):
                    zfs_cli.snapshot([name], self._props(r))
                now = time.monotonic()
                first = now if first is None else first
                last = now
                spread.calls += 1
                made.append(name)
        spread.seconds = last - (first if first is not None else last)
        spread.atomic = spread.calls <= 1
        self.last_spread = spread
        if len(plan) > 1:
            log.info("zfs: %d snapshots in %d zfs snapshot call(s) over %d pool(s), "
                     "spread %.1f ms%s", spread.snapshots, spread.calls, len(by_pool),
                     spread.seconds * 1000,
                     " (one txg: atomic)" if spread.atomic else
                     " (not atomic: one call per pool or per dataset)")

    def _publish(self, ds: Dataset, zname: str, target: str, r: SnapRequest) -> None:
        """Make the snapshot visible at ``target``: a symlink into .zfs, or a clone."""
        if not r.writable and self.has_snapdir(ds):
            with _errors(f"linking {target}"):
                os.symlink(os.path.join("..", ".zfs", "snapshot", zname), target)
            return
        props = self._props(r)
        if not r.writable:  # (readonly=off given here shows as a "temporary" value under
            props["readonly"] = "on"  # zfs-fuse that hides a later zfs set readonly=on)
        props["mountpoint"] = target
        with _errors(f"clone of {ds.snapshot(zname)}"):
            zfs_cli.clone(ds.snapshot(zname), ds.clone(zname), props)
        if not os.path.isdir(target) or mounts.mount_at(target) is None:
            raise SnapshotError(f"clone {ds.clone(zname)} is not mounted at {target}", errno.EIO)
        if not r.writable:
            self._protect(target)

    @staticmethod
    def _protect(path: str) -> None:
        """A kernel-level read-only mount over a read-only clone where ZFS's own
        mount is not one: zfs-fuse honours readonly=on for writes but still
        opens files for writing.  OpenZFS mounts readonly=on datasets ro."""
        m = mounts.mount_at(path)
        if m is not None and not m.read_only:
            with _errors(f"read-only mount of {path}"):
                mounts.bind_readonly(path)

    # ------------------------------------------------------------ the rest

    def _locate(self, snap_path: str) -> tuple[Dataset, str, str]:
        """``<mountpoint>/.snapshots/<name>`` -> (dataset, zfs name, path).  Refuses
        anything else: a corrupt journal must not make us destroy other datasets."""
        path = os.path.abspath(snap_path)
        zname = zfs_name(os.path.basename(path))
        snapdir = os.path.dirname(path)
        if os.path.basename(snapdir) != SNAPSHOT_DIR:
            raise SnapshotError(f"{snap_path}: not inside a {SNAPSHOT_DIR} directory",
                                errno.EINVAL)
        ds = dataset_at(os.path.dirname(snapdir))
        if ds is None:
            raise SnapshotError(f"{snap_path}: {os.path.dirname(snapdir)} is not a mounted "
                                f"ZFS dataset", errno.ENOENT)
        return ds, zname, path

    @staticmethod
    def _managed(name: str) -> bool:
        with _errors(f"reading {name}"):
            try:
                return zfs_cli.get_one(name, MANAGED) == "yes"
            except zfs_cli.ZfsError as exc:
                if exc.errno == errno.ENOENT:
                    return False
                raise

    def seal(self, snap_path: str) -> None:
        ds, zname, path = self._locate(snap_path)
        if os.path.islink(path):
            return  # .zfs/snapshot is read-only by nature
        clone = ds.clone(zname)
        if not self._managed(clone):
            raise SnapshotError(f"{snap_path}: no clone {clone} made by remotevss", errno.ENOENT)
        with _errors(f"sealing {clone}"):
            # always set: zfs-fuse reports the mount's "temporary" value, not the stored one
            zfs_cli.set_props(clone, {"readonly": "on"})
        self._protect(path)

    def delete(self, snap_path: str) -> None:
        ds, zname, path = self._locate(snap_path)
        self._remove(ds, zname, path)
        self._sweep(ds)

    def _remove(self, ds: Dataset, zname: str, path: str) -> None:
        """Link or clone, then the hold, then the snapshot; each step idempotent."""
        if os.path.islink(path):
            os.unlink(path)
        clone = ds.clone(zname)
        gone = True
        if self._managed(clone):
            gone = self._destroy_clone(clone, path)
        if mounts.mount_at(path) is None and os.path.isdir(path) and not os.path.islink(path):
            try:
                os.rmdir(path)  # zfs-fuse leaves the empty mountpoint directory behind
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                    raise SnapshotError(f"removing {path}: {exc}", exc.errno) from exc
        snap = ds.snapshot(zname)
        if gone and self._managed(snap):
            self._release_and_destroy(snap)

    def _release_and_destroy(self, snap: str) -> None:
        with _errors(f"destroying {snap}"):
            refs = zfs_cli.get_one(snap, "userrefs")
            if refs not in (None, "0"):
                try:
                    zfs_cli.release(HOLD_TAG, snap)
                except zfs_cli.ZfsError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
            self._destroy_retrying(snap)

    def _destroy_clone(self, clone: str, path: str) -> bool:
        """Unmount, then destroy; False if the clone is still in use.

        The mounts at ``path`` (our read-only bind mount, ZFS's own) are
        removed with umount(2) by us, never with ``zfs unmount``: zfs-fuse
        wedges a dataset whose ``zfs unmount`` failed with EBUSY.  A busy clone
        (open files, a cwd inside) is detached lazily, as the other backends
        do: it leaves the namespace now, and is marked doomed; ``_sweep``
        destroys it once ZFS lets go of it (OpenZFS: when the last file
        closes; zfs-fuse: only after its daemon restarts)."""
        with _errors(f"destroying {clone}"):
            busy = False
            m0 = mounts.mount_at(path)
            patience = DESTROY_PATIENCE["fuse" if m0 is not None and m0.fstype != "zfs"
                                        else "zfs"]
            deadline = time.monotonic() + FUSE_BUSY_WAIT
            while (m := mounts.mount_at(path)) is not None:
                if not mounts.try_unmount(path):
                    if m.fstype != "zfs" and time.monotonic() < deadline:
                        time.sleep(0.1)  # smbd lets go of an unexposed share in a moment
                        continue
                    if m.fstype != "zfs":
                        # zfs-fuse wedges once a busy FUSE mount of it is detached:
                        # refuse, change nothing; the caller retries later
                        raise SnapshotError(f"{path} is in use (zfs-fuse cannot destroy "
                                            f"a busy clone)", errno.EBUSY)
                    busy = True
                    mounts.unmount_all(path)  # lazily, what is left
                    break
            if not busy:
                try:
                    self._destroy_retrying(clone, patience=patience)
                    return True
                except zfs_cli.ZfsError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
            zfs_cli.set_props(clone, {DOOMED: "yes"})
            log.info("%s is busy: detached, destroyed once no longer in use", clone)
            return False

    def _sweep(self, ds: Dataset) -> None:
        """Destroy doomed clones (and their snapshots) that are no longer in use.

        Kernel ZFS answers EBUSY while a detached clone still has open files, so
        trying is safe.  zfs-fuse deadlocks on a destroy of a dataset whose FUSE
        mount is still alive, and cannot tell us when it is gone: there, a doomed
        clone is only destroyed once it is mounted again (after the daemon
        restarted), i.e. when a plain unmount is possible."""
        m = mounts.mount_at(ds.mountpoint)
        fuse = m is not None and m.fstype != "zfs"
        try:
            vals = zfs_cli.run("get", "-H", "-p", "-r", "-o", "name,value", DOOMED,
                               ds.container, what=f"zfs get {DOOMED}")
        except zfs_cli.ZfsError:
            return
        for line in vals.splitlines():
            name, _, value = line.partition("\t")
            if value != "yes" or "@" in name or not name.startswith(ds.container + "/"):
                continue
            zname = name[len(ds.container) + 1:]
            try:
                mountpoint = zfs_cli.get_one(name, "mountpoint") or ""
                if fuse and mounts.mount_at(mountpoint) is None:
                    continue
                if mounts.mount_at(mountpoint) is not None and not self._destroy_clone(
                        name, mountpoint):
                    continue
                self._destroy_retrying(name, patience=0)
                snap = ds.snapshot(zname)
                if self._managed(snap):
                    self._release_and_destroy(snap)
            except SnapshotError as exc:
                log.warning("doomed clone %s not destroyed yet: %s", name, exc)

    @staticmethod
    def _destroy_retrying(name: str, patience: float = 2.0) -> None:
        """ZFS reports EBUSY for a while after an unmount (see DESTROY_PATIENCE):
        retried until ``patience`` seconds have passed (0: one attempt)."""
        deadline = time.monotonic() + patience
        delay = 0.05
        while True:
            try:
                zfs_cli.destroy(name)
                return
            except zfs_cli.ZfsError as exc:
                if exc.errno == errno.ENOENT:
                    return
                if exc.errno != errno.EBUSY or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def exists(self, snap_path: str) -> bool:
        try:
            ds, zname, path = self._locate(snap_path)
        except SnapshotError:
            return False
        if os.path.islink(path):
            return os.path.isdir(path)
        clone = ds.clone(zname)
        return (self._managed(clone) and zfs_cli.get_one(clone, DOOMED) != "yes"
                and self._managed(ds.snapshot(zname)))

    def restore_protection(self, snap_path: str, read_only: bool) -> None:
        """readonly=on is a property on disk; a clone that did not mount is
        mounted again, and the read-only bind mount (``_protect``) re-applied."""
        ds, zname, path = self._locate(snap_path)
        if os.path.islink(path):
            return
        clone = ds.clone(zname)
        if not self._managed(clone):
            return
        with _errors(f"restoring {clone}"):
            if read_only:
                zfs_cli.set_props(clone, {"readonly": "on"})
            if mounts.mount_at(path) is None:
                zfs_cli.run("mount", clone, what=f"zfs mount {clone}")
        if read_only:
            self._protect(path)

    def managed(self, volume: Volume) -> list[ManagedSnapshot]:
        """Every snapshot of the volume's dataset that remotevss made, read from ZFS
        (user properties), not from the journal: what reconciliation and orphan
        collection compare the journal against.  ``path`` is what ``delete`` takes."""
        ds = self._dataset(volume)
        props = [MANAGED, f"{PROP}:set", f"{PROP}:copy", f"{PROP}:context", OWNER, DOOMED,
                 "userrefs"]
        zfs_cli.check_dataset(ds.name)
        with _errors(f"listing snapshots of {ds.name}"):  # one command: the GC's cost
            vals = zfs_cli.get([ds.name], props, recursive=True)
        doomed = {n for n, v in vals.items()
                  if n.startswith(ds.container + "/") and v.get(DOOMED) == "yes"}
        out = []
        for name, v in vals.items():
            if not name.startswith(ds.name + "@") or v.get(MANAGED) != "yes":
                continue
            zname = name.split("@", 1)[1]
            path = os.path.join(volume.snapshot_dir, "@" + zname)
            if not os.path.lexists(path) and os.path.lexists(
                    alt := os.path.join(volume.snapshot_dir, zname)):
                path = alt  # a name the agent gave without the leading "@"
            out.append(ManagedSnapshot(
                path, name, v.get(f"{PROP}:set", ""), v.get(f"{PROP}:copy", ""),
                v.get(f"{PROP}:context", ""), v.get("userrefs", "0") not in ("0", ""),
                v.get(OWNER, ""), ds.clone(zname) in doomed,
            ))
        return out

    def usage(self, volume: Volume) -> Usage:
        """``used``: what our snapshots and clones hold (usedbysnapshots of the
        dataset + used of the .snapshots container), from ZFS's own accounting."""
        ds = self._dataset(volume)
        used: int | None = None
        try:
            vals = zfs_cli.get([ds.name], ["usedbysnapshots", "available", "used"])
            used = int(vals[ds.name]["usedbysnapshots"])
            if zfs_cli.exists(ds.container):
                used += int(zfs_cli.get_one(ds.container, "used") or 0)
            avail = int(vals[ds.name]["available"])
            size = avail + int(vals[ds.name]["used"])
        except (zfs_cli.ZfsError, KeyError, ValueError) as exc:
            log.warning("zfs accounting of %s unavailable: %s", ds.name, exc)
            return mounts.statvfs_usage(volume.root, used=None)
        return Usage(used, size, avail)


def copy_bytes(snap_path: str) -> int | None:
    """What deleting this shadow copy frees, from ZFS's accounting: the snapshot's
    ``used`` (blocks only it still references) plus its clone's ``used``.
    None when ZFS cannot say (the snapshot is not ours or not there)."""
    try:
        ds, zname, _ = ZfsBackend()._locate(snap_path)
        vals = _get_present([ds.snapshot(zname), ds.clone(zname)], ["used", MANAGED])
    except SnapshotError:
        return None
    snap = vals.get(ds.snapshot(zname), {})
    if snap.get(MANAGED) != "yes":
        return None
    clone = vals.get(ds.clone(zname), {})
    try:
        return int(snap["used"]) + (int(clone["used"]) if clone.get(MANAGED) == "yes" else 0)
    except (KeyError, ValueError):
        return None


def _get_present(names: list[str], props: list[str]) -> dict[str, dict[str, str]]:
    """``zfs get`` of the names that exist (one missing name fails the whole call)."""
    out: dict[str, dict[str, str]] = {}
    for n in names:
        try:
            out.update(zfs_cli.get([n], props))
        except zfs_cli.ZfsError as exc:
            if exc.errno != errno.ENOENT:
                raise
    return out
