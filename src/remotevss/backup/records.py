"""A recovery point's record blob: made by a backup, re-made when it was lost.

Why re-make it: the record (uuid, time, root tree, source labels, meta) is the
authenticated copy of the point's index row, written into the last pack of
its backup.  When that pack is lost, ``verify --repair`` forgets the record,
and no later backup would store it again (it is unique to its point), so
``verify`` would report the point for ever although its files restore.  Every
field can be rebuilt: uuid, time and root from the index row (whose sealed
part authenticates them), the labels from the root tree (one entry per
source, in the order of the run), meta from the sealed row.  The rebuilt
bytes hash to the record id the row names (the id is a keyed hash), which
proves they are the same record; only then is it stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from remotevss.backup.packs import POINT

if TYPE_CHECKING:
    from remotevss.backup.index import PointRow
    from remotevss.backup.repo import BlobWriter, Repository


LOST_WITH_ROOT = ("its record and its root tree are lost; the next backup of the same "
                  "sources, if they are unchanged, stores the tree again and rebuilds the record")


def point_record(uuid: str, time_ns: int, root: bytes, labels: Sequence[str],
                 meta: dict[str, Any]) -> bytes:
    """The record blob's bytes (its id is the repository's hash of them)."""
    return json.dumps({"uuid": uuid, "time_ns": time_ns, "root": root.hex(),
                       "sources": list(labels), "meta": dict(meta)},
                      sort_keys=True).encode()


def records_missing(repo: Repository) -> list[PointRow]:
    """Points whose record blob is in no indexed pack (one query; usually none)."""
    ids = {r[0] for r in repo.index.con.execute(
        "SELECT id FROM points WHERE NOT EXISTS "
        "(SELECT 1 FROM blobs WHERE blobs.id = points.record)")}
    return [p for p in repo.points() if p.id in ids] if ids else []


def rebuild_record(repo: Repository, p: PointRow,
                   known_trees: dict[bytes, bytes] | None = None) -> bytes | str:
    """The bytes of point ``p``'s record, or why they cannot be rebuilt.

    ``known_trees``: tree blobs written by the caller but not indexed yet (a
    backup's new root)."""
    from remotevss.backup.repo import BlobError
    from remotevss.backup.tree import decode_tree

    if p.damaged:
        return f"point {p.id}: its record is lost and its index row is damaged"
    try:
        raw_root = (known_trees or {}).get(p.root)
        entries = decode_tree(raw_root) if raw_root is not None else repo.read_tree(p.root)
    except (BlobError, ValueError) as exc:
        return f"point {p.id}: {LOST_WITH_ROOT} ({exc})"
    raw = point_record(p.uuid, p.time_ns, p.root, [e["name"] for e in entries], p.meta)
    if repo.blob_id(raw) != p.record:
        return f"point {p.id}: its record is lost and cannot be rebuilt exactly"
    return raw


def rebuild_records(repo: Repository, writer: BlobWriter,
                    known_trees: dict[bytes, bytes] | None = None) -> list[int]:
    """Add to ``writer`` every lost record that can be rebuilt; the points mended."""
    mended = []
    for p in records_missing(repo):
        raw = rebuild_record(repo, p, known_trees)
        if isinstance(raw, bytes):
            writer.add_raw(p.record, POINT, raw)
            mended.append(p.id)
    return mended
