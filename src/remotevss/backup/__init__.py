"""Backup requestor: a deduplicating repository of recovery points.

``run_backup(repo, sources, meta)`` is the API the shadow-copy-set client
calls; ``remotevss.backup.cli`` is the command line.  Format: docs/backup.md.
"""

from remotevss.backup.backup import RecoveryPoint, run_backup
from remotevss.backup.repo import RepoError, RepoLocked, Repository, init_repo
from remotevss.backup.snapshot_source import LocalSource, Source

__all__ = ["LocalSource", "RecoveryPoint", "RepoError", "RepoLocked", "Repository", "Source",
           "init_repo", "run_backup"]
