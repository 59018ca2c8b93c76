"""What makes an unchanged incremental cheap, against real files: directory trees
reused from the files cache only while every input of their bytes is unchanged,
listings read ahead in the walk's order.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from remotevss.backup.backup import TREE_ROW, run_backup
from remotevss.backup.listing import ListingPrefetch
from remotevss.backup.prune import prune
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.restore import restore
from remotevss.backup.snapshot_source import LocalSource, SourceEntry

PASS = "reuse test passphrase"


def _tree(root: Path) -> None:
    for d in ("a/b/c", "a/d", "e"):
        (root / d).mkdir(parents=True)
    for i, d in enumerate(("a", "a/b", "a/b/c", "a/d", "e", "")):
        for j in range(3):
            (root / d / f"f{j}.txt").write_bytes(f"{d} {i} {j}\n".encode() * (j + 1))
    (root / "a/link").symlink_to("b/f0.txt")


def _atimes(root: Path) -> dict[str, int]:
    return {p: os.lstat(os.path.join(root, p)).st_atime_ns
            for p in ("a", "a/b", "a/b/c", "a/d", "e", "a/link", "a/f0.txt")}


def _backup(repo: Path, src: Path) -> dict[str, int]:
    with Repository(repo, "write", passphrase=PASS) as r:
        return run_backup(r, [LocalSource(src, "data")]).stats


def _restore(repo: Path, out: Path) -> None:
    with Repository(repo, "read", passphrase=PASS) as r:
        restore(r, r.find_point("latest"), out)


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            body: object = (os.readlink(p) if os.path.islink(p) else
                            open(p, "rb").read() if os.path.isfile(p) else None)  # noqa: SIM115
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, body)
    return out


def test_unchanged_directories_reuse_their_trees_and_changes_rebuild_the_path(
        tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    _tree(src)
    init_repo(repo, passphrase=PASS)
    first = _backup(repo, src)
    assert first["trees_reused"] == 0
    # Directories and files are read with O_NOATIME; a symlink is stat'ed after
    # readlink: what the first run recorded is what the second one sees.
    atimes = _atimes(src)
    second = _backup(repo, src)
    assert second["cache_hits"] == second["files"] == 18
    assert second["trees_reused"] == second["dirs"] == 6  # the source root and five below
    assert _atimes(src) == atimes

    # A change deep down rebuilds the trees on its path, and only those.
    (src / "a/b/c/f1.txt").write_bytes(b"changed\n")
    fourth = _backup(repo, src)
    assert fourth["trees_reused"] == 2  # a/d and e
    # Metadata only (no file content read): a symlink retargeted, a mode changed.
    (src / "a/link").unlink()
    (src / "a/link").symlink_to("d/f2.txt")
    os.chmod(src / "e/f0.txt", 0o600)
    fifth = _backup(repo, src)
    assert fifth["trees_reused"] == 3  # a/b, a/b/c and a/d
    out = tmp_path / "out"
    _restore(repo, out)
    assert _snapshot(out / "data") == _snapshot(src)


def _sealed_rows(repo: Path, dirs: tuple[str, ...]) -> dict[str, bytes]:
    """Each directory's files-cache row as stored (sealed with a fresh nonce on
    every write, so equal bytes mean the row was not written again)."""
    with Repository(repo, "read", passphrase=PASS) as r:
        idx = r.index
        return {d: idx.con.execute("SELECT sealed FROM files_cache WHERE source=? AND dir=?",
                                   idx._cache_keys("data", d)).fetchone()[0] for d in dirs}


def test_a_change_deep_down_rewrites_only_its_own_directorys_cache_row(
        tmp_path: Path) -> None:
    """The directories above a changed file get new trees, but their files did not
    change: their files-cache rows (every file of a directory in one sealed row,
    which is costly for large directories) stay as they were."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    _tree(src)
    init_repo(repo, passphrase=PASS)
    _backup(repo, src)
    dirs = ("", "a", "a/b", "a/b/c", "a/d", "e")
    before = _sealed_rows(repo, dirs)
    (src / "a/b/c/f1.txt").write_bytes(b"changed\n")
    stats = _backup(repo, src)
    assert stats["cache_hits"] == stats["files"] - 1 and stats["trees_reused"] == 2
    after = _sealed_rows(repo, dirs)
    assert [d for d in dirs if after[d] != before[d]] == ["a/b/c"]
    out = tmp_path / "out"
    _restore(repo, out)
    assert _snapshot(out / "data") == _snapshot(src)


def test_a_tree_row_whose_blob_is_pruned_is_not_reused(tmp_path: Path) -> None:
    src, copy, repo = tmp_path / "src", tmp_path / "copy", tmp_path / "repo"
    src.mkdir()
    _tree(src)
    # A hard link: "a/d" gets no listing digest, so its tree is reused through the
    # row that fingerprints its entries (the path SMB sources take too).
    os.link(src / "a/d/f0.txt", src / "a/d/hard.txt")
    shutil.copytree(src, copy, symlinks=True)  # same chunks, other trees (inodes, times)
    init_repo(repo, passphrase=PASS)
    _backup(repo, src)
    assert _backup(repo, src)["trees_reused"] > 0
    with Repository(repo, "read", passphrase=PASS) as r:
        assert TREE_ROW in r.index.cache_dir("data", "a/d")
    with Repository(repo, "write", passphrase=PASS) as r:
        run_backup(r, [LocalSource(copy, "other")])
    with Repository(repo, "exclusive", passphrase=PASS) as r:
        # Keep only the copy's point; rewrite every pack with a dead byte: the
        # trees of "data" go, its chunks stay (the copy has them).
        prune(r, keep_last=1, keep_within=None, threshold=1.0)
    with Repository(repo, "read", passphrase=PASS) as r:
        rows = r.index.cache_dir("data", "a/d")
    assert TREE_ROW not in rows and "f0.txt" in rows
    again = _backup(repo, src)
    # every file from the cache but the hard link's second name (stored as a link)
    assert again["trees_reused"] == 0 and again["cache_hits"] == again["files"] - 1 == 18
    out = tmp_path / "out"
    _restore(repo, out)
    assert _snapshot(out / "data") == _snapshot(src)


def test_listings_read_ahead_match_a_walk_in_any_order(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "a/d").chmod(0o700)
    src = LocalSource(tmp_path, "t")
    ahead = ListingPrefetch(src, max_entries=4)  # fills up: the walk must not wait forever
    try:
        # Not the walk's order: whatever was not read ahead is listed on demand.
        for rel in ("e", "", "a/b/c", "a", "a/d", "a/b", "a"):
            assert [e.name for e in ahead.scandir(rel)] == [e.name for e in src.scandir(rel)]
        with pytest.raises(FileNotFoundError):
            ahead.scandir("missing")
    finally:
        ahead.stop()


def _full_snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Content, mode, mtime and xattrs of every entry below ``root``."""
    out = _snapshot(root)
    for p in list(out):
        full = os.path.join(root, p)
        xattrs = {} if os.path.islink(full) else {
            n: os.getxattr(full, n) for n in os.listxattr(full)}
        out[p] = (*out[p], xattrs)
    return out


def _check_point_matches(repo: Path, src: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    _restore(repo, out)
    assert _full_snapshot(out / "data") == _full_snapshot(src)


def test_a_skipped_directory_notices_every_kind_of_change_inside(tmp_path: Path) -> None:
    """The listing digest covers what a change leaves behind even when the
    directory's own mtime and the file's size stay the same: mtime, ctime
    (content rewritten with its old mtime put back; an xattr set), inode (a file
    replaced by another with the same size and times), and changes two levels
    down under directories whose own listings did not change."""
    src, repo, out = tmp_path / "src", tmp_path / "repo", tmp_path / "out"
    src.mkdir()
    _tree(src)
    init_repo(repo, passphrase=PASS)
    _backup(repo, src)
    again = _backup(repo, src)
    assert again["trees_reused"] == again["dirs"] == 6

    def keep_times(path: Path, change: object) -> None:
        st = os.lstat(path)
        parent = os.lstat(path.parent)
        assert callable(change)
        change()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.utime(path.parent, ns=(parent.st_atime_ns, parent.st_mtime_ns))

    f = src / "a/b/c/f1.txt"  # two directories below "a", whose listing stays the same
    # mtime only
    os.utime(f, ns=(os.lstat(f).st_atime_ns, os.lstat(f).st_mtime_ns + 10**9))
    stats = _backup(repo, src)
    assert stats["trees_reused"] == 2  # a/d and e: untouched
    _check_point_matches(repo, src, out)
    # ctime only: same size and mtime, other bytes
    keep_times(f, lambda: f.write_bytes(f.read_bytes().upper()))
    stats = _backup(repo, src)
    assert stats["cache_hits"] == stats["files"] - 1
    _check_point_matches(repo, src, out)
    # an xattr set (ctime moves, nothing else)
    g = src / "a/d/f0.txt"
    os.setxattr(g, "user.note", b"kept")
    _backup(repo, src)
    _check_point_matches(repo, src, out)
    # inode: replaced by a file of the same size, mtime and parent mtime
    h = src / "e/f2.txt"
    body = h.read_bytes()

    def replace() -> None:
        tmp = src / "e/.new"
        tmp.write_bytes(body[::-1])
        os.rename(tmp, h)

    keep_times(h, replace)
    stats = _backup(repo, src)
    assert stats["cache_hits"] == stats["files"] - 1
    _check_point_matches(repo, src, out)
    # and nothing changed since the last run (reading the files for the checks
    # above moved atimes, which the trees keep): every tree reused, nothing read
    _backup(repo, src)
    stats = _backup(repo, src)
    assert stats["trees_reused"] == stats["dirs"] and stats["cache_hits"] == stats["files"]
    _check_point_matches(repo, src, out)



def test_a_first_backup_asks_the_files_cache_nothing_and_the_next_reuses_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source without any cached row (its first backup) makes no per-directory
    files-cache queries; the rows it writes (sealed as each directory closed)
    then serve the next run, which reads no file and reuses every tree, and a
    second source in the same repository still gets its own first backup."""
    from remotevss.backup.index import Index

    asked: list[str] = []
    real_dir, real_dirs = Index.cache_dir, Index.cache_dirs

    def cache_dir(self: Index, source: str, directory: str) -> object:
        asked.append(directory)
        return real_dir(self, source, directory)

    def cache_dirs(self: Index, source: str, directories: list[str]) -> object:
        asked.extend(directories)
        return real_dirs(self, source, directories)

    monkeypatch.setattr(Index, "cache_dir", cache_dir)
    monkeypatch.setattr(Index, "cache_dirs", cache_dirs)
    src, repo = tmp_path / "src", tmp_path / "repo"
    _tree(src)
    init_repo(repo, passphrase=PASS)
    first = _backup(repo, src)
    assert asked == [] and first["cache_hits"] == 0 and first["files"] == 18
    second = _backup(repo, src)
    assert asked, "the second run used no files cache"
    assert second["bytes_read"] == 0 and second["cache_hits"] == 18
    assert second["trees_reused"] == second["dirs"] == 6
    asked.clear()
    with Repository(repo, "write", passphrase=PASS) as r:
        other = run_backup(r, [LocalSource(src, "other")]).stats
    assert asked == [] and other["cache_hits"] == 0


@pytest.mark.parametrize("after", [1 << 30, 3])
def test_dedup_answers_are_the_same_with_or_without_the_bloom_filter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """The filter is built only once a run has asked BLOOM_AFTER dedup questions (a
    run reading a few changed files never pays for reading every blob id); until
    then and after, an id is known exactly when it is indexed or pending."""
    from remotevss.backup import repo as repo_mod
    from remotevss.backup.packs import DATA
    from remotevss.backup.repo import store_data

    monkeypatch.setattr(repo_mod, "BLOOM_AFTER", after)
    init_repo(tmp_path / "r", passphrase=PASS)
    with Repository(tmp_path / "r", "write", passphrase=PASS) as r:
        w = r.writer()
        indexed = [store_data(w, f"indexed {i}".encode()) for i in range(5)]
        w.flush()
        pending = [store_data(w, f"pending {i}".encode()) for i in range(3)]
        absent = [r.blob_id(f"absent {i}".encode()) for i in range(5)]
        answers = [w.has(b) for b in indexed + pending + absent]
        assert answers == [True] * 8 + [False] * 5
        assert [w.known(b) for b in indexed + pending + absent] == answers
        assert (w._bloom is not None) == (after == 3)
        # A blob added once the filter exists is known to it; and stored once only.
        late = store_data(w, b"late")
        assert w.has(late) and w.known(late)
        assert not w.add_raw(late, DATA, b"late")
        w.close()
        w = r.writer()  # a source's first backup: built at the first question
        w.expect_many_questions()
        assert w.has(indexed[0]) and not w.has(absent[0]) and w._bloom is not None
        w.close()


def test_the_collector_runs_rarely_during_a_backup_and_as_before_after(tmp_path: Path) -> None:
    """memory.fewer_collections: the young generation's threshold is raised while
    run_backup runs (the collector took 0.1-0.6 s of a run walking live
    objects) and given back afterwards, also when the run fails."""
    import gc

    from remotevss.backup import memory

    seen: list[tuple[int, int, int]] = []

    class Watched(LocalSource):
        def scandir(self, relpath: str) -> list[SourceEntry]:
            seen.append(gc.get_threshold())
            return super().scandir(relpath)

    _tree(tmp_path / "src")
    init_repo(tmp_path / "r", passphrase=PASS)
    before = gc.get_threshold()
    with Repository(tmp_path / "r", "write", passphrase=PASS) as r:
        run_backup(r, [Watched(tmp_path / "src", "data")])
        assert seen and {t[0] for t in seen} == {max(before[0], memory.GC_THRESHOLD)}
        assert gc.get_threshold() == before
        with pytest.raises(FileNotFoundError):
            run_backup(r, [Watched(tmp_path / "missing", "gone")])
    assert gc.get_threshold() == before


def _point_trees(repo: Path) -> dict[str, bytes]:
    """Every tree of the latest point, by path, as stored (raw JSON)."""
    from remotevss.backup.tree import decode_tree

    out: dict[str, bytes] = {}
    with Repository(repo, "read", passphrase=PASS) as r:
        stack = [("", bytes.fromhex(decode_tree(r.read_blob(
            r.find_point("latest").root))[0]["subtree"]))]
        while stack:
            path, tid = stack.pop()
            raw = r.read_blob(tid)
            out[path] = raw
            stack += [(f"{path}/{e['name']}".lstrip("/"), bytes.fromhex(e["subtree"]))
                      for e in decode_tree(raw) if "subtree" in e]
    return out


def test_a_changed_directory_reuses_its_unchanged_entries_text_and_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One file changed in a large directory: its other entries go into the new
    tree as text made from the listing and the cached rows (no entry dict, no
    json.dumps of the whole directory), the directories above get their last
    trees with the new subtree ids, and their files-cache rows are not even
    opened.  Every tree must still be exactly what encoding its entries gives,
    and the point must restore to the source; the next run reuses everything."""
    from remotevss.backup.index import Index
    from remotevss.backup.tree import decode_tree, encode_tree

    src, repo, out = tmp_path / "src", tmp_path / "repo", tmp_path / "out"
    src.mkdir()
    _tree(src)
    big = src / "a/b/c"
    for i in range(300):
        (big / f"n{i:03d} \u00e9\"x\\].txt").write_bytes(f"{i}\n".encode() * (i % 5))
    os.setxattr(big / "n007 \u00e9\"x\\].txt", "user.note", b"\x00kept")
    (big / "sub").mkdir()
    (big / "ln").symlink_to("n001 \u00e9\"x\\].txt")
    (big / "fifo").mkdir()  # a directory named like another kind
    init_repo(repo, passphrase=PASS)
    _backup(repo, src)
    _backup(repo, src)  # writes the listing digests
    before = _point_trees(repo)
    rows_before = _sealed_rows(repo, ("", "a", "a/b", "a/b/c"))

    asked: list[str] = []
    real_dir, real_text = Index.cache_dir, getattr(Index, "cache_dir_text", None)

    def cache_dir(self: Index, source: str, directory: str) -> object:
        asked.append(directory)
        return real_dir(self, source, directory)

    def cache_dir_text(self: Index, source: str, directory: str) -> object:
        asked.append(directory)
        assert real_text is not None
        return real_text(self, source, directory)

    monkeypatch.setattr(Index, "cache_dir", cache_dir)
    if real_text is not None:
        monkeypatch.setattr(Index, "cache_dir_text", cache_dir_text)
    (big / "n150 \u00e9\"x\\].txt").write_bytes(b"changed\n")
    stats = _backup(repo, src)
    assert asked == ["a/b/c"]  # not "", "a", "a/b": their listings did not change
    assert stats["cache_hits"] == stats["files"] - 1
    assert stats["trees_reused"] == 4  # a/d, e, and the two below a/b/c
    after = _point_trees(repo)
    assert sorted(p for p in after if after[p] != before[p]) == ["", "a", "a/b", "a/b/c"]
    for path, raw in after.items():
        assert encode_tree(decode_tree(raw)) == raw, path
    old_c, new_c = decode_tree(before["a/b/c"]), decode_tree(after["a/b/c"])
    assert [e for e in new_c if e["name"] != "n150 \u00e9\"x\\].txt"] == \
        [e for e in old_c if e["name"] != "n150 \u00e9\"x\\].txt"]
    rows_after = _sealed_rows(repo, ("", "a", "a/b", "a/b/c"))
    assert [d for d in rows_after if rows_after[d] != rows_before[d]] == ["a/b/c"]
    with Repository(repo, "read", passphrase=PASS) as r:
        rows = real_dir(r.index, "data", "a/b/c")
    assert rows["n007 \u00e9\"x\\].txt"].xattrs != "{}" and len(rows) == 303
    _check_point_matches(repo, src, out)
    _backup(repo, src)  # restoring read the files: atimes moved
    again = _backup(repo, src)
    assert again["trees_reused"] == again["dirs"] and again["cache_hits"] == again["files"]


def test_the_files_cache_is_pruned_only_after_a_directory_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run in which every directory's listing matched keys no visited path to
    prune (the tree is the one the last run pruned for); after a directory is
    removed its rows go."""
    from remotevss.backup.index import Index

    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    _tree(src)
    init_repo(repo, passphrase=PASS)
    _backup(repo, src)
    _backup(repo, src)
    pruned: list[int] = []
    real = Index.cache_prune_dirs

    def prune_dirs(self: Index, source: str, visited: set[str]) -> None:
        pruned.append(len(visited))
        real(self, source, visited)

    monkeypatch.setattr(Index, "cache_prune_dirs", prune_dirs)
    _backup(repo, src)
    assert pruned == []
    shutil.rmtree(src / "a/b")
    _backup(repo, src)
    assert pruned == [8]  # "", a, a/d, e and their digest rows
    with Repository(repo, "read", passphrase=PASS) as r:
        assert r.index.cache_dir("data", "a/b/c") == {} and r.index.cache_dir("data", "a/d")


def test_listing_digest_rows_come_in_one_query_when_the_tree_is_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the tree listed ahead (as during the key derivation), an unchanged
    incremental asks for every directory's digest row together: a chain of
    directories with one subdirectory each took a query per directory."""
    from remotevss.backup.index import Index

    src, repo = tmp_path / "src", tmp_path / "repo"
    deep = src.joinpath(*[f"d{i}" for i in range(30)])
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")
    init_repo(repo, passphrase=PASS)
    _backup(repo, src)
    _backup(repo, src)
    single: list[str] = []
    batches: list[int] = []
    real_dir, real_dirs = Index.cache_dir, Index.cache_dirs

    def cache_dir(self: Index, source: str, directory: str) -> object:
        single.append(directory)
        return real_dir(self, source, directory)

    def cache_dirs(self: Index, source: str, directories: list[str]) -> object:
        batches.append(len(directories))
        return real_dirs(self, source, directories)

    monkeypatch.setattr(Index, "cache_dir", cache_dir)
    monkeypatch.setattr(Index, "cache_dirs", cache_dirs)
    source = LocalSource(src, "data")
    lister = ListingPrefetch(source)
    lister._thread.join(10)  # everything listed, as scrypt usually allows
    with Repository(repo, "write", passphrase=PASS) as r:
        stats = run_backup(r, [source], ahead={"data": lister}).stats
    lister.stop()
    assert stats["trees_reused"] == stats["dirs"] == 31
    assert single == [] and batches == [31]


def test_a_first_backup_keeps_no_names_of_listed_directories(tmp_path: Path) -> None:
    """The names the listing reader keeps for the digest-row queries are for
    incrementals; a source's first backup asks nothing, so none may pile up
    (they would grow with the tree)."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    _tree(src)
    init_repo(repo, passphrase=PASS)
    source = LocalSource(src, "data")
    lister = ListingPrefetch(source)
    lister._thread.join(10)
    with Repository(repo, "write", passphrase=PASS) as r:
        run_backup(r, [source], ahead={"data": lister})
    assert lister.take_listed() == []
    lister.stop()
    lister = ListingPrefetch(source)
    lister._thread.join(10)
    assert lister.take_listed() == ["", "a", "a/b", "a/b/c", "a/d", "e"]
    lister.stop()
