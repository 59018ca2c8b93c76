"""Backup requestor: a deduplicating repository of recovery points.

``run_backup(repo, sources, meta)`` is the API the shadow-copy-set client
calls; ``remotevss.backup.cli`` is the command line.  Format: docs/backup.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from remotevss.backup.backup import RecoveryPoint, run_backup
    from remotevss.backup.repo import RepoError, RepoLocked, Repository, init_repo
    from remotevss.backup.snapshot_source import LocalSource, Source

# Loaded on first use: `remotevss agent` and `remotevss --help` import this package for
# its command line only, and the repository code (cryptography, zstd, blake3) would add
# ~85 ms and several MB to every start of the agent.
_WHERE = {"RecoveryPoint": "backup", "run_backup": "backup", "RepoError": "repo",
          "RepoLocked": "repo", "Repository": "repo", "init_repo": "repo",
          "LocalSource": "snapshot_source", "Source": "snapshot_source"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"remotevss.backup.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'remotevss.backup' has no attribute {name!r}")


__all__ = ["LocalSource", "RecoveryPoint", "RepoError", "RepoLocked", "Repository", "Source",
           "init_repo", "run_backup"]
