"""Strays: shadow copies that ZFS says this agent made and its journal does not know.

Why: the journal is what tells the agent which snapshots are its own.  When
it is lost, restored from an old backup, or the state directory is wiped,
the snapshots it listed stay in ZFS for ever, each pinning the data it
captured, and nothing would ever delete them.  ZFS keeps labels with every
snapshot the agent takes (user properties, snapshots/zfs.py), so the agent
can find them from ZFS itself, at start-up (agent/reconcile.py) and on every
GC pass (agent/gc.py), and compare them with the journal.

Rules of this module
--------------------
* **Ours only.**  A snapshot is looked at only if it carries
  ``org.remotevss:managed=yes`` and ``org.remotevss:agent`` equal to this
  agent's identity (:func:`agent_identity`: the real path of its state
  directory; two agents never share one, as each owns its journal).  A
  user's own snapshots, TrueNAS's, and another agent's are never touched.
* **Unknown.**  A labelled snapshot is a stray when neither its path nor its
  copy id is in a set the agent holds or in a pending intent.  Every
  snapshot's creation intent is journaled before it is taken, so a snapshot
  being taken right now is never a stray.  ZFS is listed, and the journal
  read after it, under the service's call lock (at start-up: before
  serving), so no call removes a copy in between.  Clones marked doomed are
  being destroyed already (the backend's sweep finishes them).
* **Auto-release** strays (no hold, a context label naming an auto-release
  context) are deleted through the ordinary teardown path: a
  ``DeleteSnapshot`` effect journaled as an intent and carried out by the
  EffectRunner, so a crash in the middle is finished at the next start-up;
  one ``gc_delete`` event line with reason ``stray`` each.
* **Persistent** strays (held, a context without auto-release, or no
  context label) are never deleted by the agent: a client or an
  administrator may rely on them.  They are kept, reported once per run
  (``stray_kept`` event), listed by ``remotevss sets list``, ``status`` and
  ``storage list``, and deleted only by root with ``remotevss sets delete
  SET_ID`` (their set id is a label too).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

from remotevss.agent.journal import Intent
from remotevss.agent.release import Pick
from remotevss.fsrvp import contexts
from remotevss.fsrvp.constants import Attr
from remotevss.fsrvp.machine import DeleteSnapshot, Effect, ShadowCopySet
from remotevss.shares.table import LocalShare, ShareLookup
from remotevss.snapshots.base import NotSupported, SnapshotError, Volume
from remotevss.snapshots.select import BACKENDS
from remotevss.snapshots.zfs import ZfsBackend, on_zfs

log = logging.getLogger("remotevss.agent.gc")

ZFS_BACKENDS = ("zfs", "zfs-enclosing")


def agent_identity(state_dir: str) -> str:
    """What the agent writes into ``org.remotevss:agent``: its state directory's
    real path.  It survives a lost journal and a wiped state directory (the
    configuration names the same directory again), and differs between two
    agents on one machine, which cannot share a state directory."""
    return os.path.realpath(state_dir)


@dataclass(frozen=True)
class Stray:
    """A snapshot labelled by this agent that its journal does not know."""

    volume: str  # the agent's volume name, "<backend>:<root>"
    path: str  # what the backend's delete takes
    zfs_name: str
    set_id: str
    copy_id: str
    context: str
    held: bool

    @property
    def persistent(self) -> bool:
        """Kept unless ZFS says plainly that it is an auto-release copy."""
        if self.held:
            return True
        value = contexts.context_from_name(self.context) if self.context else None
        return value is None or bool(value & Attr.ATTR_NO_AUTO_RELEASE)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"persistent": self.persistent}

    def pick(self, reason: str, detail: str) -> Pick:
        """This stray's deletion as a Pick: counted and logged like the GC's others."""
        return Pick(_uuid(self.set_id), _uuid(self.copy_id), reason, detail, extra={
            "status": "stray",
            "context": self.context or None,
            "copies": [{"id": self.copy_id, "volume": self.volume, "snapshot": self.path,
                        "zfs": self.zfs_name, "held": self.held, "shares": []}],
        })


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        return UUID(int=0)


def _key(path: str) -> tuple[str, str]:
    """A snapshot path as (snapshot directory, name without one leading "@"):
    the journal's and ZFS's spellings of one snapshot compare equal."""
    path = os.path.abspath(path)
    name = os.path.basename(path)
    return os.path.dirname(path), name[1:] if name.startswith("@") else name


def unknown(found: Iterable[Stray], sets: Iterable[ShadowCopySet],
            intents: Iterable[Intent]) -> list[Stray]:
    """The labelled snapshots neither a set nor a pending intent names (pure)."""
    paths: set[tuple[str, str]] = set()
    copies: set[str] = set()
    for s in sets:
        for c in s.copies:
            copies.add(str(c.id))
            if c.snapshot_path:
                paths.add(_key(c.snapshot_path))
    for i in intents:
        if isinstance(path := i.detail.get("path"), str) and path:
            paths.add(_key(path))
        if isinstance(copy := i.detail.get("copy"), str) and copy:
            copies.add(copy)
    return [x for x in found if _key(x.path) not in paths and x.copy_id not in copies]


def teardown(strays: Iterable[Stray], reason: str, detail: str,
             done: list[Pick]) -> list[Effect]:
    """The DeleteSnapshot effects of ``strays`` (the runner journals and carries
    them out); one Pick per stray appended to ``done``."""
    effects: list[Effect] = []
    for x in strays:
        p = x.pick(reason, detail)
        effects.append(DeleteSnapshot(p.copy_id or UUID(int=0), x.volume, x.path))
        done.append(p)
    return effects


AUTO_DETAIL = "auto-release shadow copy labelled by this agent in ZFS, unknown to its journal"


def collectable(strays: Iterable[Stray], done: list[Pick]) -> list[Effect]:
    """The auto-release strays' deletion (the GC's and start-up's rule)."""
    return teardown([x for x in strays if not x.persistent], "stray", AUTO_DETAIL, done)


def zfs_volumes(shares: Iterable[LocalShare], default_backend: str) -> list[Volume]:
    """The ZFS volumes behind the shares, one per dataset (blocking: the mount
    table only; unlike ``choose_backend`` it never probes other filesystems)."""
    out: dict[str, Volume] = {}
    for share in shares:
        if share.unsupported:
            continue
        forced = share.backend if share.backend != "auto" else None
        if forced is None and default_backend != "auto":
            forced = default_backend
        try:  # auto picks zfs on ZFS (snapshots/select.py); no other backend is probed
            if forced is None and on_zfs(share.path):
                forced = "zfs"
            if forced not in ZFS_BACKENDS:
                continue
            volume = BACKENDS[forced].check(share.path)
        except (NotSupported, SnapshotError, OSError):
            continue
        out.setdefault(volume.root, volume)
    return list(out.values())


class StrayFinder:
    """Lists the snapshots labelled by this agent on the volumes of its ZFS shares."""

    def __init__(self, shares: ShareLookup, default_backend: str, owner: str) -> None:
        self.shares = shares
        self.default_backend = default_backend
        self.owner = owner

    def _share_list(self) -> list[LocalShare]:
        every = getattr(self.shares, "__iter__", None)  # both share tables iterate
        return list(every()) if callable(every) else []

    def labelled(self) -> list[Stray]:
        """Every live snapshot with our label (blocking: ``zfs`` commands).  A volume
        ZFS cannot list is logged and skipped: nothing is decided about it."""
        out: list[Stray] = []
        backend = ZfsBackend()
        for volume in zfs_volumes(self._share_list(), self.default_backend):
            try:
                managed = backend.managed(volume)
            except SnapshotError as exc:
                log.warning("cannot list the snapshots of %s: %s", volume.root, exc)
                continue
            out += [Stray(volume.name, m.path, m.zfs_name, m.set_id, m.copy_id, m.context,
                          m.held)
                    for m in managed if m.owner == self.owner and not m.doomed]
        return out
