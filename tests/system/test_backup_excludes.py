"""What a backup of a directory leaves out (remotevss.backup.excludes), on real
trees: name and path patterns, CACHEDIR.TAG, --one-file-system over a real
tmpfs mount, a real proc mount inside the tree (always left out), and the
repository inside its own source.  Each run's point is read back with
``list_paths``; a change of the rules between runs is seen although the
directories did not change (their listings are compared after the rules)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from remotevss.backup.backup import run_backup
from remotevss.backup.excludes import CACHEDIR_SIGNATURE, Excludes, read_patterns
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.restore import list_paths
from remotevss.backup.snapshot_source import LocalSource
from tests.support.backup_cli import cli

ROOT = os.geteuid() == 0


def make_tree(src: Path) -> None:
    for rel, data in {
        "keep.txt": b"k", "a.tmp": b"t", "docs/b.tmp": b"t", "docs/c.txt": b"c",
        "node_modules/x/index.js": b"js", "app/node_modules/y.js": b"js",
        "build/out.o": b"o", "build/keep.c": b"c", "build/sub/deep.o": b"o",
        "top-only/f": b"f", "docs/top-only/g": b"g",
        "cache/CACHEDIR.TAG": CACHEDIR_SIGNATURE + b"\n# a cache\n", "cache/blob": b"b",
        "fake-cache/CACHEDIR.TAG": b"not the signature", "fake-cache/data": b"d",
    }.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)


def backed_up_paths(repo: Path, src: Path, excludes: Excludes | None) -> set[str]:
    with Repository(repo, "write") as r:
        run_backup(r, [LocalSource(src, "s", excludes)], processes=0)
    with Repository(repo, "read") as r:
        return {p.removeprefix("s/") for p in list_paths(r, r.find_point("latest"), "s")}


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    src = tmp_path / "src"
    make_tree(src)
    repo = tmp_path / "repo"
    init_repo(repo, encrypted=False)
    yield src, repo


def test_patterns_and_cache_tags(tree: tuple[Path, Path]) -> None:
    src, repo = tree
    everything = backed_up_paths(repo, src, None)
    assert {"a.tmp", "node_modules/x/index.js", "cache/blob", "build/sub/deep.o"} <= everything
    got = backed_up_paths(repo, src, Excludes(
        ["*.tmp", "node_modules", "build/*.o", "/top-only"], caches=True))
    gone = {"a.tmp", "docs/b.tmp", "node_modules", "node_modules/x", "node_modules/x/index.js",
            "app/node_modules", "app/node_modules/y.js", "build/out.o", "build/sub/deep.o",
            "top-only", "top-only/f", "cache/blob"}
    assert got == everything - gone
    assert {"docs/top-only/g", "build/keep.c", "cache/CACHEDIR.TAG", "fake-cache/data"} <= got
    # The rules dropped, the next run has everything again (the listings are
    # compared after the rules, so no directory counts as unchanged).
    assert backed_up_paths(repo, src, None) == everything


def test_exclude_file_and_bad_patterns(tmp_path: Path) -> None:
    f = tmp_path / "excl"
    f.write_text("# comment\n\n*.iso\n  \nvar/cache\n")
    assert read_patterns(str(f)) == ["*.iso", "var/cache"]
    with pytest.raises(ValueError, match="empty"):
        Excludes(["  "])


@pytest.mark.skipif(not ROOT, reason="needs root (mounts tmpfs and proc)")
def test_mounts_pseudo_file_systems_and_the_repository_inside(tree: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    src, repo = tree
    (src / "mnt").mkdir()
    (src / "proc").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(src / "mnt")],
                   check=True)
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(src / "proc")], check=True)
        try:
            (src / "mnt" / "on-tmpfs").write_bytes(b"another file system")
            got = backed_up_paths(repo, src, None)
            assert "mnt/on-tmpfs" in got  # another file system, but a real one
            assert "proc" in got and not any(p.startswith("proc/") for p in got)
            one_fs = backed_up_paths(repo, src, Excludes(one_file_system=True))
            assert "mnt" in one_fs and not any(p.startswith("mnt/") for p in one_fs)
        finally:
            subprocess.run(["umount", str(src / "proc")], check=True)
    finally:
        subprocess.run(["umount", str(src / "mnt")], check=True)

    inside = src / "backups"
    init_repo(inside, encrypted=False)
    for _ in range(2):
        with Repository(inside, "write") as r:
            point = run_backup(r, [LocalSource(src, "s")], processes=0)
    with Repository(inside, "read") as r:
        paths = set(list_paths(r, r.find_point("latest"), "s"))
    assert "s/keep.txt" in paths and not any(p.startswith("s/backups") for p in paths)
    assert point.stats["bytes_read"] == 0  # nothing of the repository was read



def test_cli_run_takes_the_rules_and_records_them(tree: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    src, _repo = tree
    repo = tmp_path / "clirepo"
    patterns = tmp_path / "patterns"
    patterns.write_text("node_modules\n")
    cli("init", "--repo", repo, "--unencrypted")
    cli("run", "--repo", repo, f"s={src}", "--exclude", "*.tmp", "--exclude-file", patterns,
        "--exclude-caches", "--one-file-system")
    with Repository(repo, "read") as r:
        point = r.find_point("latest")
        paths = {p.removeprefix("s/") for p in list_paths(r, point, "s")}
    assert "a.tmp" not in paths and "node_modules" not in paths and "cache/blob" not in paths
    assert "keep.txt" in paths
    assert point.meta["excludes"] == {"exclude": ["*.tmp", "node_modules"],
                                      "exclude_caches": True, "one_file_system": True}
    proc = cli("run", "--repo", repo, f"s={src}", "--exclude-file", tmp_path / "nope",
               check=1)
    assert "nope" in proc.stderr
