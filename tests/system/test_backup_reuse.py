"""What makes an unchanged incremental cheap, against real files: directory trees
reused from the files cache only while every input of their bytes is unchanged,
listings read ahead in the walk's order, small files read ahead by a thread pool.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from remotevss.backup.backup import TREE_ROW, run_backup
from remotevss.backup.listing import ListingPrefetch
from remotevss.backup.prune import prune
from remotevss.backup.readahead import SMALL, ReadAhead
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.restore import restore
from remotevss.backup.snapshot_source import LocalSource

PASS = "reuse test passphrase"


def _tree(root: Path) -> None:
    for d in ("a/b/c", "a/d", "e"):
        (root / d).mkdir(parents=True)
    for i, d in enumerate(("a", "a/b", "a/b/c", "a/d", "e", "")):
        for j in range(3):
            (root / d / f"f{j}.txt").write_bytes(f"{d} {i} {j}\n".encode() * (j + 1))
    (root / "a/link").symlink_to("b/f0.txt")
    _pin_dirs(root)


def _pin_dirs(root: Path) -> None:
    """Directory atimes in the future: listing a directory would otherwise move
    its atime (relatime), which its parent's tree records.  (Called once: utime
    moves the ctime.)"""
    for dirpath, dirs, _files in os.walk(root):
        for name in dirs:
            os.utime(os.path.join(dirpath, name), ns=(4_000_000_000_000_000_000,
                                                       1_600_000_000_000_000_000))


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
    second = _backup(repo, src)
    assert second["cache_hits"] == second["files"] == 18
    # Reading the symlink moved its atime (relatime), so "a" and the root differ once.
    assert second["trees_reused"] == 4
    third = _backup(repo, src)
    assert third["trees_reused"] == third["dirs"] == 6  # the source root and five below

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


def test_a_tree_row_whose_blob_is_pruned_is_not_reused(tmp_path: Path) -> None:
    src, copy, repo = tmp_path / "src", tmp_path / "copy", tmp_path / "repo"
    src.mkdir()
    _tree(src)
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
    assert again["trees_reused"] == 0 and again["cache_hits"] == again["files"]
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


def test_small_files_read_ahead_in_walk_order(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "big").write_bytes(b"x" * (SMALL + 1))
    src = LocalSource(tmp_path, "t")
    listing = {e.name: e for e in src.scandir("")}
    sub = {e.name: e for e in src.scandir("a")}
    ra = ReadAhead()
    try:
        ra.announce("", [(n, src.path(n), e) for n, e in listing.items() if e.type == "f"])
        ra.announce("a", [(n, src.path(f"a/{n}"), e) for n, e in sub.items() if e.type == "f"])
        got = ra.take("a", "f1.txt")  # f0.txt skipped
        assert got is not None and got.data == (tmp_path / "a/f1.txt").read_bytes()
        assert ra.take("a", "f0.txt") is None  # dropped when skipped: the caller reads it
        assert ra.take("", "big") is None  # too large to be read ahead
        got = ra.take("", "f2.txt")
        assert got is not None and got.data == (tmp_path / "f2.txt").read_bytes()
        assert ra.files == 0 and ra.bytes == 0
        # A file replaced between the listing and its read is refused, never read.
        (tmp_path / "f1.txt").rename(tmp_path / "old")
        (tmp_path / "f1.txt").write_bytes(b"new file")
        ra.announce("", [("f1.txt", src.path("f1.txt"), listing["f1.txt"])])
        with pytest.raises(OSError) as err:
            ra.take("", "f1.txt")
        assert err.value.errno == errno.ESTALE
    finally:
        ra.close()
