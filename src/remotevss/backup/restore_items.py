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
from functools import partial
from pathlib import Path

from remotevss.backup import restore_fs
from remotevss.backup.index import PointRow
from remotevss.backup.progress import Progress
from remotevss.backup.repo import RepoError, Repository
from remotevss.backup.restore import (
    PROCESSES,
    Rel,
    RestoreResult,
    _Restorer,
    run_restorer,
)
from remotevss.backup.snapshot_source import DIR
from remotevss.backup.tree import Entry


def normalise(path: str) -> str:
    return "/".join(p for p in path.split("/") if p)


def restore_items(repo: Repository, point: PointRow, target: str | Path, base: str,
                  includes: Sequence[str], progress: Progress | None = None,
                  processes: int = PROCESSES) -> RestoreResult:
    """Restore each of ``includes`` (point paths at or below ``base``) under ``target``
    where a restore of ``base`` would put it; RepoError (nothing written) for an item
    that is missing or outside ``base``.  ``target`` is opened once, as a whole
    restore opens it; each item is reached from it, no symlink followed."""
    base = normalise(base)
    finder = _Restorer(repo, point, Progress(enabled=False))
    if base:
        b = finder.find(base)
        if b is None:
            raise RepoError(f"{base}: no such path in recovery point {point.id}")
        if b["type"] != DIR:
            raise RepoError(f"--include needs a directory --path, not the file {base}")
    plan: list[tuple[str, Entry, Rel]] = []  # (item, its entry, its place below target)
    for text in includes:
        item = normalise(text)
        entry = finder.find(item) if item else None
        if entry is None:
            raise RepoError(f"--include {text}: no such path in recovery point {point.id}")
        if base and not (item == base or item.startswith(base + "/")):
            raise RepoError(f"--include {text} is not inside --path {base}")
        below = item[len(base):] if base else item
        plan.append((item, entry, tuple(p for p in below.split("/") if p)))
    total = RestoreResult()
    restored: dict[str, Rel] = {}  # shared: hardlinks between items stay hardlinks
    top = restore_fs.open_target(os.fspath(target), 0o777)
    try:
        for item, entry, rel in plan:
            r = _Restorer(repo, point, progress or Progress(enabled=False), processes,
                          restored=restored, root=top.fd)
            add(total, run_restorer(r, partial(_restore_item, r, top.fd, item, entry, rel)))
    finally:
        os.close(top.fd)
    return total


def _restore_item(r: _Restorer, root: int, item: str, entry: Entry, rel: Rel) -> None:
    """One item at ``rel`` below ``root``: the directories between are made, or
    replaced when a file or symlink stands there (never followed), as a whole
    restore does; a directory item is then restored there, a file into its parent."""
    where = rel[:-1]  # a file item's rel ends in its name, as a directory's does
    parent = make_real_dirs(root, where)
    try:
        if entry["type"] != DIR:
            r.inherit_dir = restore_fs.has_default_acl(parent)
            r.restore_entry(parent, entry["name"], where, entry, item)
        elif not rel:  # the item is --path itself: it becomes the target
            r.fill_dir(os.dup(root), (), entry, item, False, False)
        else:
            r.inherit_dir = restore_fs.has_default_acl(parent)
            r.restore_dir(parent, rel[-1], rel, entry, item)
    finally:
        os.close(parent)


def make_real_dirs(root: int, parts: Rel) -> int:
    """Open ``root/parts[0]/parts[1]/...``, made or replaced as real directories (none
    of them a symlink that could lead elsewhere), and return the last one's
    descriptor.  New ones are plain (mode 777 less the umask), as ``os.makedirs``
    makes them."""
    fd = os.dup(root)
    for name in parts:
        try:
            nxt, _made = restore_fs.open_dir(fd, name, 0o777)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def add(total: RestoreResult, r: RestoreResult) -> None:
    total.files += r.files
    total.dirs += r.dirs
    total.others += r.others
    total.bytes += r.bytes
    total.errors += r.errors
    total.warnings += r.warnings
