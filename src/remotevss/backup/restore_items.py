"""``backup restore POINT --include LABEL/PATH ... --to DIR``: chosen items, locally.

Why a layer over :func:`remotevss.backup.restore.restore` rather than a filter
inside it: each item is a subtree (or one file) that ``restore`` already
restores completely; what an item-level restore adds is *where* it lands --
at the place a whole restore would put it (``DIR/<path relative to --path>``)
-- and the checks that every item exists and lies inside ``--path`` before
anything is written.  The same meaning as ``--include`` onto a share
(:mod:`remotevss.backup.smb_restore`).  Parent directories that the items need
are created plainly (their own metadata is not restored: they were not asked
for).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from remotevss.backup.index import PointRow
from remotevss.backup.progress import Progress
from remotevss.backup.repo import RepoError, Repository
from remotevss.backup.restore import (
    PROCESSES,
    RestoreResult,
    _Restorer,
    make_real_dirs,
    restore,
)
from remotevss.backup.snapshot_source import DIR


def normalise(path: str) -> str:
    return "/".join(p for p in path.split("/") if p)


def restore_items(repo: Repository, point: PointRow, target: str | Path, base: str,
                  includes: Sequence[str], progress: Progress | None = None,
                  processes: int = PROCESSES) -> RestoreResult:
    """Restore each of ``includes`` (point paths at or below ``base``) under ``target``
    where a restore of ``base`` would put it; RepoError (nothing written) for an item
    that is missing or outside ``base``."""
    base = normalise(base)
    finder = _Restorer(repo, point, Progress(enabled=False))
    if base:
        b = finder.find(base)
        if b is None:
            raise RepoError(f"{base}: no such path in recovery point {point.id}")
        if b["type"] != DIR:
            raise RepoError(f"--include needs a directory --path, not the file {base}")
    plan: list[tuple[str, str]] = []  # (item, where restore() is pointed)
    for text in includes:
        item = normalise(text)
        entry = finder.find(item) if item else None
        if entry is None:
            raise RepoError(f"--include {text}: no such path in recovery point {point.id}")
        if base and not (item == base or item.startswith(base + "/")):
            raise RepoError(f"--include {text} is not inside --path {base}")
        rel = item[len(base):].strip("/") if base else item
        if entry["type"] == DIR:
            plan.append((item, os.path.join(os.fspath(target), rel)))
        else:  # a file is restored *into* a directory: its parent's place
            plan.append((item, os.path.join(os.fspath(target), os.path.dirname(rel))))
    total = RestoreResult()
    restored: dict[str, str] = {}  # shared: hardlinks between items stay hardlinks
    os.makedirs(target, exist_ok=True)
    for item, where in plan:
        # The directories between the target and the item: made, or replaced when a
        # file or symlink stands there (never followed), as a whole restore does.
        rel = os.path.relpath(where, os.fspath(target))
        make_real_dirs(os.fspath(target), [] if rel == "." else rel.split(os.sep))
        r = restore(repo, point, where, item, progress, processes, restored=restored)
        total.files += r.files
        total.dirs += r.dirs
        total.others += r.others
        total.bytes += r.bytes
        total.errors += r.errors
        total.warnings += r.warnings
    return total
