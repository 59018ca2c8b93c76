"""Exposing a snapshot as a share, and taking it away again.

Why an interface: on a Samba server the snapshot share is a registry share
(added by the Samba integration); without Samba, the agent publishes each
exposed snapshot as a symlink ``<expose_dir>/<share@{guid}>`` so local
tools find it by the same name.  Both must be idempotent: start-up
reconciliation replays them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class ExposeError(Exception):
    pass


class Exposer(Protocol):
    def expose(self, name: str, base_share: str, path: str, writable: bool) -> None: ...
    def unexpose(self, name: str) -> None: ...
    def exposed(self) -> dict[str, str]:
        """name -> path of every share this exposer has made."""
        ...


class SymlinkExposer:
    """Exposure without Samba: a symlink per snapshot share in one directory."""

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
