"""Exposing a snapshot as a share, and taking it away again.

Why an interface: on a Samba server the snapshot share is a registry share
(added by the Samba integration); without Samba, the agent publishes each
exposed snapshot as a symlink ``<expose_dir>/<share@{guid}>`` so local
tools find it by the same name.  Both must be idempotent: start-up
reconciliation replays them.

Why batches: a set's shares are published (Expose) and removed (teardown)
together.  An exposer that can do a whole set in one transaction and one
notification (the registry: one registry transaction, one round of smbd
messages) implements :class:`BatchExposer`; :func:`expose_all` and
:func:`unexpose_all` use it when it is there and fall back to one share at a
time otherwise, so the number of transactions per set does not grow with
the number of shares.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeGuard


class ExposeError(Exception):
    pass


class Exposer(Protocol):
    """An exposer may also have ``quick_unexpose(name) -> bool``: True when
    :meth:`unexpose` of ``name`` is short work in this process, which the agent
    then runs on its event loop instead of a thread (agent/service.py,
    ``_run_io``)."""

    def expose(self, name: str, base_share: str, path: str, writable: bool) -> None: ...
    def unexpose(self, name: str) -> None: ...
    def exposed(self) -> dict[str, str]:
        """name -> path of every share this exposer has made."""
        ...


@dataclass(frozen=True)
class ShareRequest:
    """One snapshot share to publish (the arguments of :meth:`Exposer.expose`)."""

    name: str
    base_share: str
    path: str
    writable: bool


class BatchExposer(Exposer, Protocol):
    def expose_many(self, requests: Sequence[ShareRequest]) -> None:
        """Publish every share of ``requests``; all or nothing (ExposeError: none is)."""
        ...

    def unexpose_many(self, names: Sequence[str]) -> None:
        """Remove every share of ``names``; all or nothing (ExposeError: none is)."""
        ...


def supports_batches(exposer: Exposer) -> TypeGuard[BatchExposer]:
    """True if ``exposer`` implements :class:`BatchExposer`."""
    return callable(getattr(exposer, "expose_many", None)) and callable(
        getattr(exposer, "unexpose_many", None)
    )


def expose_all(
    exposer: Exposer, requests: Sequence[ShareRequest]
) -> tuple[list[str], ExposeError | OSError | None]:
    """Publish ``requests``: (names published, the error that stopped it or None).
    A batch is all or nothing; one at a time stops at the first failure."""
    if not requests:
        return [], None
    if supports_batches(exposer):
        try:
            exposer.expose_many(requests)
        except (ExposeError, OSError) as exc:
            return [], exc
        return [r.name for r in requests], None
    done: list[str] = []
    for r in requests:
        try:
            exposer.expose(r.name, r.base_share, r.path, r.writable)
        except (ExposeError, OSError) as exc:
            return done, exc
        done.append(r.name)
    return done, None


def unexpose_all(exposer: Exposer, names: Sequence[str]) -> list[str]:
    """Remove ``names``; returns those removed.  Raises the first ExposeError
    after trying the rest (one at a time) or at once (a batch: none removed)."""
    if not names:
        return []
    if supports_batches(exposer):
        exposer.unexpose_many(names)
        return list(names)
    done: list[str] = []
    first: ExposeError | None = None
    for n in names:
        try:
            exposer.unexpose(n)
        except ExposeError as exc:
            first = first or exc
            continue
        done.append(n)
    if first is not None:
        raise _Partial(done, first)
    return done


class _Partial(ExposeError):
    """Some of a one-at-a-time removal failed: ``done`` were removed."""

    def __init__(self, done: list[str], first: ExposeError) -> None:
        super().__init__(str(first))
        self.done = done


def removed_before(exc: ExposeError) -> list[str]:
    """The names :func:`unexpose_all` removed before raising ``exc``."""
    return exc.done if isinstance(exc, _Partial) else []


class SymlinkExposer:
    """Exposure without Samba: a symlink per snapshot share in one directory."""

    def quick_unexpose(self, name: str) -> bool:
        return True  # one unlink

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def _link(self, name: str) -> Path:
        if "/" in name or name in ("", ".", "..") or "\x00" in name:
            raise ExposeError(f"invalid share name {name!r}")
        return self.dir / name

    def expose(self, name: str, base_share: str, path: str, writable: bool) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        link = self._link(name)
        tmp = link.with_name(f".{name}.tmp")
        try:
            tmp.unlink(missing_ok=True)
            os.symlink(path, tmp)
            os.replace(tmp, link)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ExposeError(f"cannot expose {name}: {exc}") from exc

    def unexpose(self, name: str) -> None:
        try:
            self._link(name).unlink(missing_ok=True)
        except OSError as exc:
            raise ExposeError(f"cannot unexpose {name}: {exc}") from exc

    def exposed(self) -> dict[str, str]:
        if not self.dir.is_dir():
            return {}
        return {
            p.name: os.readlink(p)
            for p in self.dir.iterdir()
            if p.is_symlink() and not p.name.startswith(".")
        }
