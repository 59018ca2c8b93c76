"""``backup copy``: copy every recovery point of one repository into another.

Why: a format 1 repository cannot be encrypted in place (every id is an
unkeyed hash and every tree names those ids), so "migrating" means copying
its points into a new, encrypted repository; the same command moves points
between any two repositories.  Points keep their uuid, time, metadata and
stats; data is re-addressed under the target's ids and sealed with its key.

Rules:
- Resumable and idempotent: a point whose uuid the target already has is
  skipped, and each copied point is committed on its own (same crash-safety
  as a backup: packs fsynced before the index transaction that adds the
  point).
- Chunks keep their source boundaries; the target's files cache starts
  empty, so its first backup reads every file once (and large files are
  re-chunked with the target's chunker, so they are stored again).
- Every blob read is verified (authenticated and re-hashed) on the way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from remotevss.backup.packs import DATA, POINT, TREE
from remotevss.backup.progress import Progress
from remotevss.backup.repo import BlobWriter, RepoError, Repository
from remotevss.backup.tree import encode_tree


@dataclass
class CopyResult:
    copied: list[str] = field(default_factory=list)  # uuids
    skipped: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Copier:
    def __init__(self, src: Repository, dst: Repository, writer: BlobWriter,
                 progress: Progress) -> None:
        self.src, self.dst, self.writer, self.progress = src, dst, writer, progress
        self.ids: dict[bytes, bytes] = {}  # source id -> target id (chunks and trees)
        self.result = CopyResult()

    def data(self, cid: bytes) -> bytes:
        new = self.ids.get(cid)
        if new is None:
            raw = self.src.read_blob(cid)
            new = self.dst.blob_id(raw)
            if not self.writer.has(new):
                comp, stored = self.dst.encode(new, DATA, raw)
                self.writer.add(new, DATA, comp, stored, len(raw))
                self.result.blobs += 1
                self.result.bytes += len(raw)
                self.progress.add_bytes(len(raw))
            self.ids[cid] = new
        return new

    def tree(self, tid: bytes) -> bytes:
        new = self.ids.get(tid)
        if new is not None:
            return new
        entries = self.src.read_tree(tid)
        for e in entries:
            if "content" in e:
                e["content"] = [[off, n, self.data(bytes.fromhex(cid)).hex()]
                                for off, n, cid in e["content"]]
            if "subtree" in e:
                e["subtree"] = self.tree(bytes.fromhex(e["subtree"])).hex()
        raw = encode_tree(entries)
        new = self.dst.blob_id(raw)
        self.writer.add_raw(new, TREE, raw)
        self.ids[tid] = new
        return new


def copy_points(src: Repository, dst: Repository, progress: Progress | None = None
                ) -> CopyResult:
    """Copy the points of ``src`` (open "read") that ``dst`` (open "write") lacks."""
    progress = progress or Progress(enabled=False)
    have = {p.uuid for p in dst.points()}
    writer = dst.writer()
    copier = _Copier(src, dst, writer, progress)
    try:
        for point in src.points():
            if point.uuid in have:
                copier.result.skipped.append(point.uuid)
                continue
            if point.damaged:
                raise RepoError(f"source point {point.id}: {point.damaged}")
            record: dict[str, Any] = src.load_json(point.record)
            root = copier.tree(point.root)
            record["root"] = root.hex()
            raw = json.dumps(record, sort_keys=True).encode()
            record_id = dst.blob_id(raw)
            writer.add_raw(record_id, POINT, raw)
            with writer.final() as idx:
                idx.add_point(point.uuid, point.time_ns, root, record_id, point.meta,
                              point.stats)
            copier.result.copied.append(point.uuid)
    finally:
        writer.close()
        progress.finish()
    return copier.result
