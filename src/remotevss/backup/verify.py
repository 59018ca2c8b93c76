"""``check`` (structure, fast) and ``verify`` (every byte re-read and re-hashed).

Why two: ``check`` reads only pack headers/trailers, trees and the index, so
it is cheap enough to run after every backup and proves the index, the packs
and the points agree (every index row is compared with the authenticated pack
trailers and point records, or opened); ``verify`` also reads all data, every
blob a trailer lists, so it finds bit rot and tampering anywhere in a pack,
and it names the files of every recovery point that a damaged blob affects.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from remotevss.backup.packs import POINT, BlobEntry, PackError, fsync_dir, pack_path, read_trailer
from remotevss.backup.progress import Progress
from remotevss.backup.records import LOST_WITH_ROOT, rebuild_record, records_missing
from remotevss.backup.repo import BlobError, RepoError, Repository
from remotevss.backup.tree import Entry, content_ids, find_entry, walk


@dataclass
class Report:
    """Problems (``errors``: the repository is damaged) and notes (harmless leftovers)."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    affected: list[dict[str, Any]] = field(default_factory=list)
    #: What ``repair`` forgot: blob rows, pack rows, files-cache directories.
    repaired: dict[str, int] | None = None
    packs: int = 0
    blobs: int = 0
    points: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.__dict__}


def _check_packs(repo: Repository, report: Report,
                 lost: dict[bytes, str] | None = None) -> dict[str, list[BlobEntry]]:
    """Every indexed pack exists, parses, and its trailer lists what the index says.
    ``lost`` receives the indexed blobs of the packs that are missing or unreadable."""
    trailers: dict[str, list[BlobEntry]] = {}
    indexed = set()
    for pack_id, name, size in repo.index.packs():
        indexed.add(name)
        report.packs += 1
        path = pack_path(repo.path, name)
        try:
            actual = path.stat().st_size
            entries = read_trailer(path, repo.codec)
        except (OSError, PackError) as exc:
            why = "missing" if isinstance(exc, FileNotFoundError) else str(exc)
            report.errors.append(f"pack {name}: {why}")
            if lost is not None:
                for b in repo.index.pack_blobs(pack_id):
                    lost[b.id] = f"its pack {name} is {why}" if why == "missing" else (
                        f"its pack {name} is unreadable: {why}")
            continue
        if actual != size:
            report.errors.append(f"pack {name}: size {actual}, index says {size}")
        trailers[name] = entries
        by_id = {e.id: e for e in entries}
        for b in repo.index.pack_blobs(pack_id):
            report.blobs += 1
            if by_id.get(b.id) != b:
                report.errors.append(f"index: row of blob {b.id.hex()[:16]} differs from the "
                                     f"trailer of pack {name}")
    for path in sorted((repo.path / "packs").glob("*/*.pack")):
        if path.name.removesuffix(".pack") not in indexed:
            report.notes.append(f"pack {path.name}: not in the index (left by an interrupted "
                                "run; prune removes it)")
    for path in sorted((repo.path / "tmp").iterdir()):
        report.notes.append(f"tmp/{path.name}: unfinished pack (removed by the next backup)")
    return trailers


def _point_walk(repo: Repository, report: Report, bad: dict[bytes, str] | None,
                seen: set[bytes] | None) -> Iterator[tuple[int, str, str, Entry]]:
    """(point id, uuid, path, entry) over all points; unreadable trees become errors."""
    for point in repo.points():
        report.points += 1

        def on_error(prefix: str, tid: bytes, exc: Exception, p: Any = point) -> None:
            where = prefix or "/"
            report.errors.append(f"point {p.id}: tree of {where} ({tid.hex()[:16]}): {exc}")
            report.affected.append({"point": p.id, "uuid": p.uuid, "path": where,
                                    "blob": tid.hex(), "what": "directory listing"})

        def load(tid: bytes) -> list[Entry]:
            if bad is not None and tid in bad:
                raise BlobError(tid, bad[tid])
            return repo.read_tree(tid)

        if point.damaged:
            report.errors.append(f"index: {point.damaged}")
        _check_record(repo, report, point)
        for path, e in walk(load, point.root, "", on_error, seen):
            yield point.id, point.uuid, path, e


def _check_links(repo: Repository, report: Report,
                 links: dict[int, list[tuple[str, str, str]]]) -> None:
    """A hardlink's data is its first name's: a second name whose first is not a file
    of the same point (it could not be read at backup) does not restore."""
    roots = {p.id: p.root for p in repo.points() if p.id in links}
    for pid, items in links.items():
        if pid not in roots:
            continue
        for puuid, path, first in items:
            try:
                target = find_entry(repo.read_tree, roots[pid], first.split("/"))
            except (RepoError, ValueError):  # an unreadable tree: the walk reported it
                continue
            if target is None or target.get("type") != "f" or "link" in target:
                report.errors.append(f"point {pid}: {path}: hardlink to {first}, "
                                     "which is not a file of the point")
                report.affected.append({"point": pid, "uuid": puuid, "path": path,
                                        "what": "hardlink target"})


def _check_record(repo: Repository, report: Report, point: Any) -> None:
    """The point's index row must say what its (authenticated) record blob says."""
    try:
        record = repo.load_json(point.record)
    except (BlobError, ValueError) as exc:
        hint = ("; verify --repair rebuilds it, or the next backup of the same sources "
                "once its root tree is stored again"
                if not repo.index.has_blob(point.record) else "")
        report.errors.append(
            f"point {point.id}: record blob {point.record.hex()[:16]}: {exc}{hint}")
        return
    if (record.get("uuid"), record.get("time_ns"), record.get("root")) != (
            point.uuid, point.time_ns, point.root.hex()):
        report.errors.append(f"index: row of point {point.id} differs from its record blob")


def _check_index(repo: Repository, report: Report) -> None:
    """SQLite's own structure, rows that name no pack, and every sealed row opens."""
    con = repo.index.con
    try:
        problems = [r[0] for r in con.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            report.errors.extend(f"index: {p}" for p in problems[:20])
        report.errors.extend(f"index: {p}" for p in repo.index.schema_differences())
        orphans = con.execute("SELECT count(*) FROM blobs WHERE pack NOT IN "
                              "(SELECT id FROM packs)").fetchone()[0]
        if orphans:
            report.errors.append(f"index: {orphans} blob rows name no pack")
        for _skey, dkey, rows in repo.index.cache_scan():
            if rows is None:
                report.errors.append(f"index: files-cache row {bytes(dkey).hex()[:16]} does not "
                                     "open (damaged; the next backup rereads that directory)")
    except sqlite3.DatabaseError as exc:
        report.errors.append(f"index: {exc}")


def _check_keys(repo: Repository, report: Report) -> None:
    """Every key file is intact (only the one we opened with can be unwrapped)."""
    from remotevss.backup.keys import DamagedFile, list_keys

    for k in list_keys(repo.path):
        if isinstance(k, DamagedFile):
            report.errors.append(str(k))


def check(repo: Repository) -> Report:
    """Keys, index vs. pack trailers, and every point's trees and chunk references."""
    report = Report()
    _check_keys(repo, report)
    _check_index(repo, report)
    _check_packs(repo, report)
    checked: set[bytes] = set()
    for pid, _uuid, path, e in _point_walk(repo, report, None, set()):
        for cid in content_ids(e):
            if cid not in checked:
                if not repo.index.has_blob(cid):
                    report.errors.append(f"point {pid}: {path}: chunk {cid.hex()[:16]} missing")
                    continue
                checked.add(cid)
    return report


def verify(repo: Repository, progress: Progress | None = None, workers: int = 2,
           repair: bool = False) -> Report:
    """Re-read every indexed blob, decompress and re-hash it; name the affected files.
    ``repair`` (the repository open "exclusive"): then forget what cannot be read
    (``_repair``), so that the next backup of the same data stores it again."""
    if repair and repo.mode != "exclusive":
        raise ValueError("verify --repair needs the repository open in exclusive mode")
    progress = progress or Progress(enabled=False)
    report = Report()
    _check_keys(repo, report)
    _check_index(repo, report)
    bad: dict[bytes, str] = {}  # blob id -> why it cannot be read
    damaged: set[str] = set()  # readable packs holding a blob that is not
    trailers = _check_packs(repo, report, bad)
    total = sum(size for _i, _n, size in repo.index.packs())
    progress.set_total(0, total)

    def verify_pack(name: str, indexed: set[BlobEntry]) -> list[tuple[bytes, bool, str]]:
        """Every blob the trailer lists, indexed or not: no byte of a pack goes unchecked."""
        errs = []
        for b in trailers[name]:
            try:
                repo.decode(b, repo.read_stored(name, b))
            except BlobError as exc:
                errs.append((b.id, b in indexed, str(exc)))
        return errs

    with ThreadPoolExecutor(max(1, workers)) as pool:
        packs = repo.index.packs()
        futures = [(name, size, pool.submit(verify_pack, name, set(repo.index.pack_blobs(pid))))
                   for pid, name, size in packs if name in trailers]
        for name, size, fut in futures:
            for bid, indexed, msg in fut.result():
                damaged.add(name)
                if indexed:  # a copy no index row uses harms no point
                    bad[bid] = msg
                report.errors.append(f"pack {name}: {msg}"
                                     + ("" if indexed else " (an unused copy)"))
            report.bytes_read += size
            progress.add_bytes(size)
    # Which files of which points does the damage reach?  Walk every point
    # (without the de-duplication of trees: each point names its own files).
    missing: set[bytes] = set()
    present: set[bytes] = set()
    links: dict[int, list[tuple[str, str, str]]] = {}
    for pid, puuid, path, e in _point_walk(repo, report, bad, None):
        if "link" in e:
            links.setdefault(pid, []).append((puuid, path, e["link"]))
        for cid in content_ids(e):
            if cid not in bad and cid not in present and cid not in missing:
                if repo.index.has_blob(cid):
                    present.add(cid)
                else:
                    missing.add(cid)
                    report.errors.append(f"chunk {cid.hex()[:16]}: missing from the index")
            if cid in bad or cid in missing:
                report.affected.append({"point": pid, "uuid": puuid, "path": path,
                                        "blob": cid.hex(), "what": "file data"})
                break
    _check_links(repo, report, links)
    progress.finish()
    if repair:
        packs = repo.index.packs()
        _repair(repo, report, bad, [p for p in packs if p[1] not in trailers],
                [p for p in packs if p[1] in damaged])
    return report


def _repair(repo: Repository, report: Report, bad: dict[bytes, str],
            lost_packs: list[tuple[int, str, int]],
            damaged_packs: list[tuple[int, str, int]]) -> None:
    """Forget the blobs that cannot be read, the packs that are gone and the files
    cache, in one transaction; the good blobs of a damaged pack are copied into
    a new pack first (as prune rewrites packs: committed before the old rows
    go), and the damaged pack is deleted.

    Why this heals: blob ids are keyed hashes of the content, so the next backup
    of the same data computes the same ids, finds them unknown and stores them
    again; every point that names them (old ones too) is then whole.  The files
    cache is forgotten whole, or an unchanged file (or directory) would be taken
    from it without being read: that next backup reads every file once.  Points
    whose data no longer exists anywhere stay damaged, and ``verify`` keeps
    naming their files."""
    unindexed = {p.record for p in records_missing(repo)}  # forgotten by an earlier repair
    if not (bad or lost_packs or damaged_packs or unindexed):  # nothing to mend: cache stays
        report.repaired = {"blobs": 0, "packs_lost": 0, "packs_rewritten": 0, "cache_dirs": 0,
                           "records": 0}
        return
    idx = repo.index
    writer = repo.writer()
    records: list[bytes] = []  # lost point records rebuilt (records.py)
    try:
        for p in repo.points():
            if p.record in bad or p.record in unindexed:
                raw = (rebuild_record(repo, p) if p.root not in bad else
                       f"point {p.id}: {LOST_WITH_ROOT}")
                if isinstance(raw, str):
                    report.notes.append(f"repair: {raw}")
                    continue
                comp, stored = repo.encode(p.record, POINT, raw)
                writer.add(p.record, POINT, comp, stored, len(raw))
                records.append(p.record)
        for pack_id, name, _size in damaged_packs:
            for b in idx.pack_blobs(pack_id):
                if b.id not in bad:  # re-read and checked again: never carry damage over
                    stored = repo.read_stored(name, b)
                    repo.decode(b, stored)
                    writer.add(b.id, b.type, b.compression, stored, b.raw_len)
        writer.flush()  # the good blobs' rows now name the new pack
    finally:
        writer.close()
    idx.begin()
    try:
        for pack_id, _name, _size in (*lost_packs, *damaged_packs):
            idx.delete_pack(pack_id)  # only rows still naming it
        for rid in records:  # in the new pack now
            bad.pop(rid, None)
        idx.forget_blobs(bad)
        # The whole files cache: a directory whose listing is unchanged reuses its
        # tree, and a tree names the lost blobs however deep they lie.
        # (Not when only records were rebuilt: nothing the cache names was lost.)
        dirs = idx.cache_clear() if bad or lost_packs or damaged_packs else 0
        idx.commit()
    except BaseException:
        idx.rollback()
        raise
    parents = set()
    for _pack_id, name, _size in damaged_packs:
        path = pack_path(repo.path, name)
        path.unlink(missing_ok=True)
        parents.add(path.parent)
    for d in parents:
        fsync_dir(d)
    report.repaired = {"blobs": len(bad), "packs_lost": len(lost_packs),
                       "packs_rewritten": len(damaged_packs), "cache_dirs": dirs,
                       "records": len(records)}
    rebuilt = f", rebuilt {len(records)} lost point record(s)" if records else ""
    report.notes.append(
        f"repair: forgot {len(bad)} unreadable blob(s) and {len(lost_packs)} lost pack(s), "
        f"rewrote {len(damaged_packs)} damaged pack(s) without their bad blobs{rebuilt}; the next "
        "backup of the same data stores what was lost again, which mends every point "
        "that uses it (run verify after it)")

