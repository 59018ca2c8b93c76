"""Typed intents: what the journal records before an external effect happens.

Why: "write the intent, run the effect, clear the intent" is what makes every
effect crash-safe (agent/journal.py); this module says, once per kind, what
an intent records (its *row*: the journal's ``kind`` and JSON ``detail``)
and what start-up does with one left pending (:meth:`recover`): effects
that make something are *undone*, effects that remove something are
*finished*.  agent/effects.py writes and clears them; agent/reconcile.py
replays them.

Rules of this module
--------------------
* One frozen dataclass per kind.  The row form is the journal's on-disk
  format: kinds and detail keys never change meaning (old journals replay).
* ``recover`` is idempotent and goes through :class:`Effects` only: an
  intent knows what to do, not how.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

from remotevss.fsrvp.machine import DeleteSnapshot, Effect, SealSnapshot, UnexposeShare

Detail = Mapping[str, str | bool]


class Effects(Protocol):
    """The removals start-up needs (all idempotent)."""

    def unexpose(self, name: str) -> None: ...
    def delete_snapshot(self, volume: str, path: str) -> None: ...
    def seal_snapshot(self, volume: str, path: str) -> None: ...


@dataclass(frozen=True)
class CreateSnapshotIntent:
    """A snapshot is being taken (Commit).  Undo: delete it."""

    kind: ClassVar[str] = "create_snapshot"
    volume: str
    path: str
    copy: str

    def row(self) -> dict[str, str | bool]:
        return {"volume": self.volume, "path": self.path, "copy": self.copy}

    @classmethod
    def from_row(cls, d: Detail) -> CreateSnapshotIntent:
        return cls(str(d["volume"]), str(d["path"]), str(d.get("copy", "")))

    def recover(self, fx: Effects) -> None:
        fx.delete_snapshot(self.volume, self.path)

    def label(self) -> str:
        return f"{self.kind} {self.path}"


@dataclass(frozen=True)
class _ShareIntent:
    """The shape of an intent about one snapshot share (detail: its name)."""

    kind: ClassVar[str]
    name: str

    def row(self) -> dict[str, str | bool]:
        return {"name": self.name}

    @classmethod
    def from_row(cls, d: Detail) -> Self:
        return cls(str(d["name"]))

    def label(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class ExposeIntent(_ShareIntent):
    """A snapshot share is being published (Expose).  Undo: take it away."""

    kind: ClassVar[str] = "expose"

    def recover(self, fx: Effects) -> None:
        fx.unexpose(self.name)


@dataclass(frozen=True)
class UnexposeIntent(_ShareIntent):
    """A snapshot share is being removed (teardown).  Finish: remove it."""

    kind: ClassVar[str] = "unexpose"

    def recover(self, fx: Effects) -> None:
        fx.unexpose(self.name)


@dataclass(frozen=True)
class _SnapshotIntent:
    """The shape of an intent about one existing snapshot (detail: volume, path)."""

    kind: ClassVar[str]
    volume: str
    path: str

    def row(self) -> dict[str, str | bool]:
        return {"volume": self.volume, "path": self.path}

    @classmethod
    def from_row(cls, d: Detail) -> Self:
        return cls(str(d["volume"]), str(d["path"]))

    def label(self) -> str:
        return f"{self.kind} {self.path}"


@dataclass(frozen=True)
class DeleteSnapshotIntent(_SnapshotIntent):
    """A snapshot is being deleted (teardown).  Finish: delete it."""

    kind: ClassVar[str] = "delete_snapshot"

    def recover(self, fx: Effects) -> None:
        fx.delete_snapshot(self.volume, self.path)


@dataclass(frozen=True)
class SealSnapshotIntent(_SnapshotIntent):
    """A writable snapshot is being made read-only (expiry, shutdown).  Finish: seal it."""

    kind: ClassVar[str] = "seal_snapshot"

    def recover(self, fx: Effects) -> None:
        fx.seal_snapshot(self.volume, self.path)


@dataclass(frozen=True)
class DeleteMappingIntent:
    """A DeleteShareMapping is under way.  Finish: remove its share (``name``, "" if
    it was not exposed); start-up then rolls the journal's sets forward (the
    mapping goes, the last mapping takes the copy: agent/reconcile.py), never
    resurrecting a mapping whose share may be gone.  Written without fsync
    (durable within a second): a power cut can lose it (RELIABILITY.md §7)."""

    kind: ClassVar[str] = "delete_mapping"
    set_id: str
    copy_id: str
    share: str
    name: str

    def row(self) -> dict[str, str | bool]:
        return {"set": self.set_id, "copy": self.copy_id, "share": self.share, "name": self.name}

    @classmethod
    def from_row(cls, d: Detail) -> DeleteMappingIntent:
        return cls(str(d["set"]), str(d["copy"]), str(d["share"]), str(d.get("name", "")))

    def recover(self, fx: Effects) -> None:
        if self.name:
            fx.unexpose(self.name)

    def label(self) -> str:
        return f"{self.kind} {self.share} of {self.set_id}"


Intent = (
    CreateSnapshotIntent
    | ExposeIntent
    | UnexposeIntent
    | DeleteSnapshotIntent
    | SealSnapshotIntent
    | DeleteMappingIntent
)
KINDS: dict[str, type[Intent]] = {
    cls.kind: cls
    for cls in (
        CreateSnapshotIntent,
        ExposeIntent,
        UnexposeIntent,
        DeleteSnapshotIntent,
        SealSnapshotIntent,
        DeleteMappingIntent,
    )
}


class UnknownIntent(ValueError):
    """A journal row of a kind this agent does not know (a newer agent wrote it)."""


def from_row(kind: str, detail: Detail) -> Intent:
    cls = KINDS.get(kind)
    if cls is None:
        raise UnknownIntent(f"unknown intent kind {kind!r}")
    try:
        return cls.from_row(detail)
    except KeyError as exc:
        raise UnknownIntent(f"intent {kind} without {exc}") from exc


def for_teardown(e: Effect) -> Intent:
    """The intent of one teardown effect the machine handed out."""
    match e:
        case UnexposeShare(exposed_name=name):
            return UnexposeIntent(name)
        case DeleteSnapshot(volume_name=vol, snapshot_path=path):
            return DeleteSnapshotIntent(vol, path)
        case SealSnapshot(volume_name=vol, snapshot_path=path):
            return SealSnapshotIntent(vol, path)
    raise AssertionError(f"not a teardown effect: {e}")
