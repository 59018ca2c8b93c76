"""``prune``: forget recovery points by policy and give their space back.

Why rewrite packs: a pack is immutable, so space held by dead blobs comes
back only by deleting the pack; packs whose live share is below the
threshold have their live blobs copied (stored bytes, no recompression) into
new packs first.  Crash safety comes from ordering: new packs are sealed and
committed (blob rows now point at them) before the old packs' rows are
dropped, and files are unlinked only after that commit; a crash at any step
leaves an index that names only existing data, plus at worst unindexed pack
files, which the next prune deletes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from remotevss.backup.index import PointRow
from remotevss.backup.packs import fsync_dir, pack_path
from remotevss.backup.progress import Progress
from remotevss.backup.repo import BlobError, Repository
from remotevss.backup.tree import Entry, content_ids, walk

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> int:
    """``1y2w3d4h5m6s`` (any subset, in order) -> seconds."""
    m = re.fullmatch(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?",
                     text.strip())
    if not text.strip() or m is None:
        raise ValueError(f"bad duration {text!r} (use e.g. 30d, 12h, 1w2d)")
    return sum(int(v) * _UNITS[u] for v, u in zip(m.groups(), "ywdhms", strict=True) if v)


def select_keep(points: list[PointRow], keep_last: int | None, keep_within: int | None,
                now_ns: int) -> set[int]:
    """Ids of points kept: the ``keep_last`` newest, and all newer than ``keep_within`` s."""
    keep: set[int] = set()
    newest_first = sorted(points, key=lambda p: (p.time_ns, p.id), reverse=True)
    if keep_last:
        keep.update(p.id for p in newest_first[:keep_last])
    if keep_within is not None:
        limit = now_ns - keep_within * 1_000_000_000
        keep.update(p.id for p in points if p.time_ns >= limit)
    return keep


@dataclass
class PruneResult:
    removed_points: list[int] = field(default_factory=list)
    kept_points: list[int] = field(default_factory=list)
    packs_deleted: int = 0
    packs_rewritten: int = 0
    packs_written: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    orphans_removed: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _pack_bytes(repo: Repository) -> int:
    return sum(p.stat().st_size for p in (repo.path / "packs").glob("*/*.pack"))


def prune(repo: Repository, keep_last: int | None, keep_within: int | None,
          threshold: float = 0.8, dry_run: bool = False,
          progress: Progress | None = None) -> PruneResult:
    """Apply the keep policy, then reclaim space; ``repo`` must be open "exclusive"."""
    if repo.mode != "exclusive":
        raise ValueError("prune needs the repository open in exclusive mode")
    if not keep_last and keep_within is None:
        raise ValueError("refusing to remove every recovery point: give --keep-last or "
                         "--keep-within")
    if (keep_last is not None and keep_last < 0) or (keep_within is not None
                                                      and keep_within < 1):
        # a negative count would slice from the end, a zero duration keeps nothing
        raise ValueError(f"refusing to prune with keep_last={keep_last}, keep_within="
                         f"{keep_within}: keep_last must be 1 or more, keep_within 1 s or more")
    progress = progress or Progress(enabled=False)
    res = PruneResult(bytes_before=_pack_bytes(repo))
    points = repo.points()
    keep = select_keep(points, keep_last, keep_within, time.time_ns())
    res.kept_points = sorted(keep)
    res.removed_points = sorted(p.id for p in points if p.id not in keep)
    idx = repo.index
    if res.removed_points and not dry_run:
        idx.begin()
        for pid in res.removed_points:
            idx.delete_point(pid)
        idx.commit()

    # Live blobs: everything the kept points reach.
    live: set[bytes] = set()

    def load(tid: bytes) -> list[Entry]:
        live.add(tid)
        return repo.read_tree(tid)

    seen: set[bytes] = set()
    for p in points:
        if p.id in keep:
            live.add(p.record)
            for _path, e in walk(load, p.root, "", None, seen):
                live.update(content_ids(e))

    delete: list[tuple[int, str]] = []
    rewrite: list[tuple[int, str]] = []
    freed = 0  # bytes the deleted packs hold beyond the live blobs copied out of them
    for pack_id, name, size in idx.packs():
        blobs = idx.pack_blobs(pack_id)
        live_bytes = sum(b.stored_len for b in blobs if b.id in live)
        if live_bytes == 0:
            delete.append((pack_id, name))
            freed += size
        elif live_bytes < threshold * size:
            rewrite.append((pack_id, name))
            freed += size - live_bytes
    if dry_run:  # what a real run would do (the new packs' own headers not counted)
        res.packs_deleted = len(delete) + len(rewrite)
        res.packs_rewritten = len(rewrite)
        res.bytes_after = res.bytes_before - freed
        return res

    dead: set[bytes] = set()
    writer = repo.writer()
    try:
        for pack_id, name in rewrite:
            blobs = idx.pack_blobs(pack_id)
            copies = []
            try:  # read and check first: never carry damage into a new pack
                for b in blobs:
                    if b.id in live:
                        stored = repo.read_stored(name, b)
                        repo.decode(b, stored)
                        copies.append((b, stored))
            except BlobError as exc:
                res.errors.append(f"pack {name} kept: {exc}")
                continue
            for b, stored in copies:
                writer.add(b.id, b.type, b.compression, stored, b.raw_len)
                progress.add_bytes(b.stored_len)
            dead.update(b.id for b in blobs if b.id not in live)
            delete.append((pack_id, name))
            res.packs_rewritten += 1
        writer.flush()  # new packs committed: live rows now point at them
        res.packs_written = writer.packs_written
    finally:
        writer.close()
    for pack_id, _name in delete:
        dead.update(b.id for b in idx.pack_blobs(pack_id))
    idx.begin()
    for pack_id, _name in delete:
        idx.delete_pack(pack_id)  # only rows still pointing at the old pack
    # Files-cache rows naming a blob that is gone would make the next backup
    # reference missing data: forget them (those files are read again).
    if dead:
        for skey, dkey, rows in idx.cache_scan():
            if rows is None:  # a row that does not open: forget it too
                idx.cache_replace(skey, dkey, {})
                continue
            alive = {n: r for n, r in rows.items()
                     if not any(bytes.fromhex(c[2]) in dead for c in json.loads(r.content))}
            if len(alive) != len(rows):
                idx.cache_replace(skey, dkey, alive)
    idx.commit()
    dirs = set()
    for _pid, name in delete:
        path = pack_path(repo.path, name)
        path.unlink(missing_ok=True)
        dirs.add(path.parent)
    res.packs_deleted = len(delete)
    # Packs no index row names (an interrupted backup or prune) and tmp leftovers.
    indexed = {name for _i, name, _s in idx.packs()}
    for path in (repo.path / "packs").glob("*/*.pack"):
        if path.name.removesuffix(".pack") not in indexed:
            path.unlink()
            dirs.add(path.parent)
            res.orphans_removed += 1
    for path in (repo.path / "tmp").iterdir():
        path.unlink()
    for d in dirs:
        fsync_dir(d)
    idx.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    res.bytes_after = _pack_bytes(repo)
    progress.finish()
    return res
