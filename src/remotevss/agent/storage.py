"""Shadow storage: what snapshots cost per volume, a maximum, and what happens over it.

The Linux counterpart of ``vssadmin list/resize shadowstorage``.  Windows
keeps copy-on-write data in a diff area with a maximum size; Linux snapshot
backends have no diff area, so "used" is measured, per volume, as the space
that deleting our snapshots would free:

* **copy** backend: the allocated blocks of each snapshot tree (``st_blocks``,
  hard links once).  Exact: a copy shares nothing.  Sealed snapshots never
  change, so their size is measured once.
* **btrfs** backend with quotas enabled (``btrfs quota enable``): the sum of
  the snapshots' level-0 qgroup *exclusive* bytes, read from the quota tree
  with BTRFS_IOC_TREE_SEARCH (snapshots/btrfs_qgroup.py).  Exact, up to the
  last transaction commit (~30 s).
* **zfs** backend: ZFS's own accounting, per copy the snapshot's ``used``
  (blocks only it references) plus its clone's ``used``; the volume's
  ``usedbysnapshots`` and quotas are ZFS's (snapshots/zfs.py).  Exact, up to
  the last transaction group sync (seconds).
* **btrfs without quotas, reflink**: shared extents make per-snapshot usage
  unknowable cheaply (du counts shared data, FIEMAP is O(extents)).  The
  maximum then applies to the *filesystem's* used space (statvfs), and
  ``storage list`` says ``basis: filesystem``: "keep this volume under 80 %
  by deleting old shadow copies".

The **maximum** per volume is ``[storage] max`` (default ``unbounded``), or
what ``remotevss storage resize VOLUME --max SIZE`` stored for the volume in
``<state_dir>/storage-limits.json`` (written atomically; read at every
check).  A size is bytes (``10G``) or a percentage of the filesystem (``20%``).

**At Commit** (the service's commit guard), per volume in the set: the
projected use is ``used`` plus the new snapshot's estimate (copy backend: the
share's allocated bytes, since everything will be copied; btrfs and reflink:
0, a new snapshot shares all its data).  If that exceeds the maximum:

* policy ``delete_oldest`` (default, as VSS does): the oldest *eligible*
  copies on that volume (sets in Recovered state: finished, not in anyone's
  sequence) are deleted, oldest first, until the projection fits; if deleting
  every eligible copy would not be enough, nothing is deleted and the commit
  is refused.  Where sizes are unknown (basis filesystem) one copy is deleted
  per check (btrfs frees space in the background; the next pass re-measures).
* policy ``refuse``: the commit is refused.

A refused commit answers **VSS_E_INSUFFICIENT_STORAGE 0x8004231F** (see
docs/decisions.md) and the set returns to Added, as after any failed commit.
The periodic GC pass applies ``delete_oldest`` to volumes already over their
maximum (snapshots grow as the live data diverges).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from remotevss.agent.config import AgentConfig
from remotevss.agent.events import emit
from remotevss.agent.release import Pick, logged, release_picks
from remotevss.agent.sizes import SizeLimit, human, parse_limit
from remotevss.fsrvp.constants import HResult
from remotevss.fsrvp.machine import CreateSnapshot, Machine, Outcome, Status
from remotevss.shares.table import LocalShare
from remotevss.snapshots.base import NotSupported, SnapshotError
from remotevss.snapshots.copy import SNAPSHOT_DIR

if TYPE_CHECKING:
    from remotevss.agent.service import AgentService
    from remotevss.agent.strays import Stray

log = logging.getLogger("remotevss.agent.storage")

LIMITS_FILE = "storage-limits.json"


@dataclass(frozen=True)
class CopyRef:
    """What measuring needs of one shadow copy (taken on the event loop, used in a thread)."""

    set_id: UUID
    copy_id: UUID
    volume: str
    snapshot_path: str
    writable: bool
    creation_time: float
    status: str


@dataclass
class VolumeUsage:
    volume: str  # the agent's volume name, "<backend>:<root>"
    root: str
    backend: str
    basis: str  # "snapshots" (exact) or "filesystem" (statvfs; see module doc)
    note: str  # why the basis is "filesystem", or ""
    used: int  # bytes counted against the maximum
    snapshot_bytes: int | None  # bytes held by our snapshots, when measurable
    allocated: int  # bytes in use on the filesystem
    size: int  # filesystem size
    maximum: int | None  # None: unbounded
    limit: str  # the maximum as configured ("20%", "10737418240", "unbounded")
    copies: int
    copy_bytes: dict[str, int | None] = field(default_factory=dict)  # copy id -> bytes
    #: persistent strays kept on this volume (agent/strays.py) and what they hold;
    #: not in ``used``: no deletion rule may take them
    strays: int = 0
    stray_bytes: int | None = 0

    @property
    def over(self) -> bool:
        return self.maximum is not None and self.used > self.maximum

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"over": self.over}


def copy_refs(machine: Machine) -> list[CopyRef]:
    return [
        CopyRef(s.id, c.id, c.volume_name, c.snapshot_path, c.writable, c.creation_time,
                s.status.value)
        for s in machine.sets.values()
        for c in s.copies
        if c.snapshot_path
    ]


def tree_bytes(top: str, skip_top: str = "") -> int:
    """Allocated bytes of a directory tree (st_blocks; hard links once; no symlink
    following; ``skip_top`` names one entry of ``top`` to leave out)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        total += os.lstat(top).st_blocks * 512
    except FileNotFoundError:
        return 0
    for dirpath, dirnames, filenames in os.walk(top, onerror=None):
        if dirpath == top and skip_top in dirnames:
            dirnames.remove(skip_top)
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
    return total


def split_volume(name: str) -> tuple[str, str]:
    backend, _, root = name.partition(":")
    return backend, root


class StorageManager:
    """Limits (config + limits file), measurement, eviction planning, the commit guard."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.limits_path = Path(config.state_dir) / LIMITS_FILE
        self._sealed: dict[str, int] = {}  # snapshot path -> bytes (read-only copies)
        self.last: dict[str, VolumeUsage] = {}
        self.last_at: float | None = None
        self.refusals = 0
        self.on_delete: list[Callable[[Pick], None]] = []  # shared with the GC (metrics)
        self.strays: list[Stray] = []  # the GC's last kept strays, shown per volume

    # ------------------------------------------------------------ limits

    def limits(self) -> dict[str, str]:
        """Per-volume maximums set by ``storage resize`` (volume root -> size text)."""
        try:
            data = json.loads(self.limits_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable %s: %s", self.limits_path, exc)
            return {}
        vols = data.get("volumes", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in vols.items()} if isinstance(vols, dict) else {}

    def limit_for(self, root: str) -> SizeLimit:
        text = self.limits().get(root, self.config.storage.max)
        try:
            return parse_limit(text)
        except ValueError as exc:
            log.error("volume %s: bad maximum %r (%s); treating as unbounded", root, text, exc)
            return SizeLimit()

    def set_limit(self, root: str, text: str) -> SizeLimit:
        """Store ``text`` as the maximum of the volume rooted at ``root`` (durably)."""
        limit = parse_limit(text)
        limits = self.limits()
        limits[root] = str(limit)
        self.limits_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.limits_path.with_name(LIMITS_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"volumes": limits}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.limits_path)
        dfd = os.open(self.limits_path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return limit

    def any_limit(self) -> bool:
        return not parse_limit(self.config.storage.max).unbounded or any(
            not parse_limit(v).unbounded for v in self.limits().values() if _valid(v)
        )

    # ------------------------------------------------------------ measuring

    def measure(self, refs: list[CopyRef], volumes: Iterable[str] = ()) -> dict[str, VolumeUsage]:
        """Usage of every volume holding a copy, plus ``volumes`` (blocking: a thread)."""
        by_volume: dict[str, list[CopyRef]] = {v: [] for v in volumes}
        for r in refs:
            by_volume.setdefault(r.volume, []).append(r)
        out: dict[str, VolumeUsage] = {}
        for name, copies in sorted(by_volume.items()):
            try:
                out[name] = self._measure_volume(name, copies)
            except OSError as exc:
                log.warning("cannot measure volume %s: %s", name, exc)
        live = {r.snapshot_path for r in refs}
        self._sealed = {p: n for p, n in self._sealed.items() if p in live}
        self._count_strays(out)
        return out

    def _count_strays(self, usage: dict[str, VolumeUsage]) -> None:
        """Kept strays per volume, with ZFS's size of each (not part of ``used``)."""
        from remotevss.snapshots.zfs import copy_bytes

        by_root = {u.root: u for u in usage.values()}
        for x in list(self.strays):
            u = by_root.get(split_volume(x.volume)[1])
            if u is None:
                continue
            u.strays += 1
            n = copy_bytes(x.path)
            u.stray_bytes = None if n is None or u.stray_bytes is None else u.stray_bytes + n

    def _measure_volume(self, name: str, copies: list[CopyRef]) -> VolumeUsage:
        backend, root = split_volume(name)
        st = os.statvfs(root)
        size, allocated = st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize
        per_copy: dict[str, int | None] = {}
        note = ""
        if backend == "copy":
            for r in copies:
                per_copy[str(r.copy_id)] = self._tree_bytes(r)
        elif backend == "btrfs":
            note = self._btrfs(root, copies, per_copy)
        elif backend in ("zfs", "zfs-enclosing"):
            note = self._zfs(copies, per_copy)
        else:
            note = "reflink clones share extents with the live data: not measured per snapshot"
            per_copy = {str(r.copy_id): None for r in copies}
        exact = not note
        snap = sum(v or 0 for v in per_copy.values()) if exact else None
        limit = self.limit_for(root)
        return VolumeUsage(
            volume=name, root=root, backend=backend,
            basis="snapshots" if exact else "filesystem", note=note,
            used=snap if snap is not None else allocated, snapshot_bytes=snap,
            allocated=allocated, size=size, maximum=limit.resolve(size), limit=str(limit),
            copies=len(copies), copy_bytes=per_copy,
        )

    def _tree_bytes(self, r: CopyRef) -> int:
        cached = self._sealed.get(r.snapshot_path)
        if cached is not None:
            return cached
        n = tree_bytes(r.snapshot_path)
        if not r.writable:
            self._sealed[r.snapshot_path] = n
        return n

    @staticmethod
    def _btrfs(root: str, copies: list[CopyRef], per_copy: dict[str, int | None]) -> str:
        from remotevss.snapshots.btrfs_qgroup import QuotaUnavailable, qgroup_info

        try:
            import btrfsutil

            ids: dict[int, CopyRef] = {}
            for r in copies:
                try:
                    ids[btrfsutil.subvolume_id(r.snapshot_path)] = r
                except OSError:
                    per_copy[str(r.copy_id)] = 0  # gone: holds nothing
            info = qgroup_info(root, list(ids))
        except QuotaUnavailable as exc:
            for r in copies:
                per_copy[str(r.copy_id)] = None
            return str(exc)
        for sid, r in ids.items():
            q = info.get(sid)
            per_copy[str(r.copy_id)] = None if q is None else q.exclusive
        if any(v is None for v in per_copy.values()):
            return "some snapshots have no qgroup (created before quotas were enabled)"
        return ""

    @staticmethod
    def _zfs(copies: list[CopyRef], per_copy: dict[str, int | None]) -> str:
        """ZFS's own accounting per copy (snapshot + clone ``used``; snapshots/zfs.py)."""
        from remotevss.snapshots.zfs import copy_bytes

        for r in copies:
            per_copy[str(r.copy_id)] = copy_bytes(r.snapshot_path)
        if any(v is None for v in per_copy.values()):
            return "some snapshots are unknown to ZFS (gone, or not made by remotevss)"
        return ""

    async def measure_all(self, service: AgentService) -> dict[str, VolumeUsage]:
        """Measure every volume with copies, with a limit, or behind a configured share."""
        refs = copy_refs(service.machine)
        volumes = await asyncio.to_thread(self._known_volumes, service)
        usage = await asyncio.to_thread(self.measure, refs, volumes)
        self.last, self.last_at = usage, service.clock()
        return usage

    def _known_volumes(self, service: AgentService) -> list[str]:
        """Volumes of the shares the agent serves: Samba's behind Samba."""
        found = share_volumes(service.shares, self.config.backend)
        return sorted({v.volume for v in found if v.volume is not None})

    # ------------------------------------------------------------ eviction

    def plan_volume(
        self, machine: Machine, u: VolumeUsage, incoming: int, exclude: UUID | None = None
    ) -> tuple[list[Pick], bool]:
        """Oldest eligible copies of the volume to delete so that ``used + incoming``
        fits its maximum; (picks, True) if that is enough, ([], False) if not."""
        if u.maximum is None or u.used + incoming <= u.maximum:
            return [], True
        eligible = sorted(
            (
                (c.creation_time, s.id, c.id)
                for s in machine.sets.values()
                if s.status is Status.RECOVERED and s.id != exclude
                for c in s.copies
                if c.volume_name == u.volume and c.snapshot_path
            ),
            key=lambda t: t[0],
        )
        excess = u.used + incoming - u.maximum
        detail = (f"volume {u.root}: {human(u.used)} used ({u.basis}) + {human(incoming)} new > "
                  f"maximum {human(u.maximum)} ({u.limit})")
        picks: list[Pick] = []
        for _t, sid, cid in eligible:
            freed = u.copy_bytes.get(str(cid))
            picks.append(Pick(sid, cid, "storage", detail))
            if u.basis != "snapshots" or freed is None:
                return picks, True  # unknown sizes: one per check (see module doc)
            excess -= freed
            if excess <= 0:
                return picks, True
        return [], False

    def plan_over_limit(self, machine: Machine, usage: dict[str, VolumeUsage]) -> list[Pick]:
        """For the periodic pass: volumes already over their maximum (delete_oldest only)."""
        if self.config.storage.policy != "delete_oldest":
            return []
        picks: list[Pick] = []
        for u in usage.values():
            if u.over:
                vol_picks, _enough = self.plan_volume(machine, u, 0)
                if not vol_picks:
                    log.warning("volume %s is over its shadow storage maximum and no copy is "
                                "eligible for deletion", u.root)
                picks += vol_picks
        return picks

    async def guard(
        self, service: AgentService, set_id: UUID, creates: list[CreateSnapshot]
    ) -> int | None:
        """The commit guard (runs under the service's lock): None admits the commit,
        after deleting the oldest copies if the policy says so; an HRESULT refuses it."""
        if not creates or not self.any_limit():
            return None
        refs = copy_refs(service.machine)
        volumes = sorted({e.volume_name for e in creates})
        usage = await asyncio.to_thread(self.measure, refs, volumes)
        self.last.update(usage)
        incoming = await asyncio.to_thread(lambda: {v: _estimate(v) for v in volumes})
        picks: list[Pick] = []
        for v in volumes:
            u = usage.get(v)
            if u is None or u.maximum is None or u.used + incoming[v] <= u.maximum:
                continue
            vol_picks: list[Pick] = []
            enough = False
            if self.config.storage.policy == "delete_oldest":
                vol_picks, enough = self.plan_volume(service.machine, u, incoming[v], set_id)
            if not enough:
                self.refusals += 1
                emit({
                    "event": "storage_refused", "set": str(set_id), "volume": u.root,
                    "used": u.used, "incoming": incoming[v], "maximum": u.maximum,
                    "limit": u.limit, "basis": u.basis, "policy": self.config.storage.policy,
                    "result": "VSS_E_INSUFFICIENT_STORAGE",
                }, logging.WARNING)
                return HResult.VSS_E_INSUFFICIENT_STORAGE
            picks += vol_picks
        if picks:
            def decide(machine: Machine, applied: list[Pick]) -> Outcome:
                return release_picks(machine, picks, applied)

            await service.release(logged(decide, self.on_delete), locked=True)
        return None


def _valid(text: str) -> bool:
    try:
        parse_limit(text)
    except ValueError:
        return False
    return True


def _estimate(volume: str) -> int:
    """Bytes a new snapshot of ``volume`` will add at once (module doc)."""
    backend, root = split_volume(volume)
    if backend != "copy":
        return 0
    return tree_bytes(root, skip_top=SNAPSHOT_DIR)


@dataclass(frozen=True)
class ShareVolume:
    """A share the agent serves and the volume it snapshots it on (None: it cannot)."""

    name: str
    path: str
    volume: str | None  # the agent's volume name, "<backend>:<root>"
    reason: str = ""  # why ``volume`` is None

    @property
    def root(self) -> str | None:
        return None if self.volume is None else split_volume(self.volume)[1]


def share_volume(share: LocalShare, default_backend: str) -> ShareVolume:
    """``share``'s volume, chosen as the agent chooses it for a call
    (AgentService._resolve_share): the share's backend, else ``[agent] backend``."""
    from remotevss.snapshots.select import choose_backend

    if share.unsupported:
        return ShareVolume(share.name, share.path, None, share.unsupported)
    forced = share.backend if share.backend != "auto" else None
    if forced is None and default_backend != "auto":
        forced = default_backend
    try:
        return ShareVolume(share.name, share.path,
                           choose_backend(share.path, forced).check(share.path).name)
    except (NotSupported, SnapshotError, OSError) as exc:
        return ShareVolume(share.name, share.path, None, str(exc))


def share_volumes(shares: object, default_backend: str) -> list[ShareVolume]:
    """Every share of a share table (Samba's or ``[shares]``) with its volume; blocking
    (stats, mount table, Samba's registry): call it in a thread."""
    if not isinstance(shares, Iterable):  # a table that can only look names up
        return []
    return [share_volume(sh, default_backend) for sh in shares if isinstance(sh, LocalShare)]


def resolve_volume_root(text: str, served: Iterable[ShareVolume],
                        held: Iterable[str] = ()) -> str:
    """A volume as the administrator names it (docs/operations.md), as the root its
    maximum is stored under: a share name, a path inside a share, a volume holding
    a share, or the agent's ``backend:root`` name.  ``served``: the shares the agent
    serves (Samba's behind Samba), ``held``: roots of volumes with shadow copies.

    Why refuse any other path: a limit stored for a volume the agent never
    snapshots applies to nothing, and the administrator would believe otherwise.
    """
    from remotevss.snapshots.select import choose_backend

    served = list(served)
    known = {v.root for v in served if v.root is not None} | set(held)
    backend, sep, root = text.partition(":")
    if sep and backend in ("btrfs", "reflink", "copy", "zfs", "zfs-enclosing") and \
            os.path.isabs(root):
        if root in known:
            return root
        raise ValueError(f"{text!r}: no share the agent serves is on this volume")
    by_name = {v.name.casefold(): v for v in served}
    if (share := by_name.get(text.casefold())) is not None:
        if share.root is None:
            raise ValueError(f"share {share.name!r} cannot be shadow-copied: {share.reason}")
        return share.root
    if not os.path.isabs(text):
        raise ValueError(f"{text!r}: not the name of a share the agent serves, nor an "
                         "absolute path")
    path = os.path.realpath(text)
    if not os.path.isdir(path):
        raise ValueError(f"{text!r}: no such directory")
    inside = [v for v in served if v.root is not None and _within(path, v.path)]
    if inside:  # the share's volume (the innermost share: a share inside a share)
        return str(max(inside, key=lambda v: len(os.path.realpath(v.path))).root)
    try:
        found = choose_backend(path).check(path).root
    except (NotSupported, SnapshotError, OSError):
        found = path
    if found in known:  # e.g. the btrfs subvolume that holds a share below it
        return found
    raise ValueError(f"{text!r}: not a share's path, a path inside a share, or a volume "
                     "holding a share the agent serves; no maximum would apply to it")


def _within(path: str, share_path: str) -> bool:
    top = os.path.realpath(share_path)
    return path == top or path.startswith(top.rstrip("/") + "/")
