"""A directory backed up live (not from a snapshot) while a file in it is being
written: the backup names the file as changed while it was read, instead of
storing a copy that may mix old and new data without a word.

On the test's real file system, with a writer thread appending to a 48 MiB file
for as long as the backup runs, read by the parent (``processes=0``) and by a
worker process: the point is made, the file is in it, ``stats.errors`` names it
("changed while it was read"), and an unchanged neighbour is not named; the CLI
exits 3 for it, as for a skipped file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from remotevss.backup import backup as backup_engine
from remotevss.backup.backup import run_backup
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.snapshot_source import LocalSource
from tests.support.backup_cli import cli, rand


@contextmanager
def appending(path: Path) -> Iterator[None]:
    """Append a byte to ``path`` every millisecond until the block ends."""
    stop = threading.Event()

    def run() -> None:
        with open(path, "ab", buffering=0) as f:
            while not stop.is_set():
                f.write(b"+")
                time.sleep(0.001)

    t = threading.Thread(target=run)
    t.start()
    try:
        time.sleep(0.05)
        yield
    finally:
        stop.set()
        t.join()


def make_source(tmp_path: Path) -> Path:
    src = tmp_path / "live"
    src.mkdir()
    (src / "growing.log").write_bytes(rand("log", 48 << 20))
    (src / "still.txt").write_bytes(b"unchanged")
    return src


@pytest.mark.parametrize("processes", [0, 1])
def test_a_file_written_during_its_read_is_named(tmp_path: Path, processes: int) -> None:
    src = make_source(tmp_path)
    repo = tmp_path / "repo"
    init_repo(repo, encrypted=False)
    with Repository(repo, "write") as r, appending(src / "growing.log"):
        point = run_backup(r, [LocalSource(src, "live")], processes=processes,
                           processes_from=0)
    errors = point.stats["errors"]
    assert [e["path"] for e in errors] == ["live/growing.log"], errors
    assert "changed while it was read" in errors[0]["error"]
    out = tmp_path / "out"
    cli("restore", "latest", "--repo", repo, "--path", "live", "--to", out)
    assert (out / "growing.log").read_bytes()[:48 << 20] == rand("log", 48 << 20)
    assert (out / "still.txt").read_bytes() == b"unchanged"


def test_the_cli_exits_3_for_a_file_written_during_its_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTEVSS_BACKUP_PASSWORD", "pw")
    src = make_source(tmp_path)
    repo = tmp_path / "repo"
    cli("init", "--repo", repo)
    with appending(src / "growing.log"):
        proc = cli("run", src, "--repo", repo, "--json", "--processes", "0", check=3)
    assert [e["path"] for e in json.loads(proc.stdout)["stats"]["errors"]] == [
        "live/growing.log"]
    assert "live/growing.log: changed while it was read" in proc.stderr
    assert os.path.getsize(src / "still.txt") == 9


class _Unopenable(LocalSource):
    """A local source whose file ``locked`` fails to open (as for root nothing does)."""

    def open(self, relpath: str, entry: Any) -> Any:
        if relpath.endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return super().open(relpath, entry)


def test_a_skipped_file_is_not_counted_in_the_points_files_and_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_bytes(b"fine")
    (src / "locked").write_bytes(b"x" * 1000)
    repo = tmp_path / "repo"
    init_repo(repo, encrypted=False)
    with Repository(repo, "write") as r:
        point = run_backup(r, [_Unopenable(src, "data")], processes=0)
    assert [e["path"] for e in point.stats["errors"]] == ["data/locked"]
    assert (point.stats["files"], point.stats["bytes_total"]) == (1, 4)


class _FirstNameVanishes(LocalSource):
    """The first name of a hardlinked file is deleted between the listing and its
    read (a log rotated, a file replaced by rename), the second name stays."""

    def open(self, relpath: str, entry: Any) -> Any:
        if relpath.endswith("a_first"):
            os.unlink(self.path(relpath))
        return super().open(relpath, entry)


def _links_to_a_failed_first_name(self: Any, first: str, key: tuple[int, int],
                                  failed: bool) -> None:
    """What a backup did before it let a later name carry the data: the waiting
    names are released still linking to the first name that failed."""
    for _src, node, *_rest in self.link_waiters.pop(first, []):
        node.pending -= 1
        if node.pending == 0 and node.sealed:
            self.close_dir(node)


def test_verify_names_a_hardlink_whose_first_name_was_not_backed_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A point made by an earlier version (a later name links to a first name the
    point lacks): verify names it."""
    monkeypatch.setattr(backup_engine._Engine, "release_links",
                        _links_to_a_failed_first_name)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_first").write_bytes(b"shared data")
    os.link(src / "a_first", src / "b_second")
    (src / "c_pair").write_bytes(b"kept pair")
    os.link(src / "c_pair", src / "d_pair")
    repo = tmp_path / "repo"
    init_repo(repo, encrypted=False)
    with Repository(repo, "write") as r:
        point = run_backup(r, [_FirstNameVanishes(src, "d")], processes=1,
                           processes_from=0)
    assert [e["path"] for e in point.stats["errors"]] == ["d/a_first"]
    proc = cli("verify", "--repo", repo, "--json", check=4)
    report = json.loads(proc.stdout)
    assert [(a["path"], a["what"]) for a in report["affected"]] == [
        ("d/b_second", "hardlink target")], report
    assert any("d/b_second" in e and "d/a_first" in e for e in report["errors"])


@pytest.mark.parametrize("processes", [0, 1])
def test_a_second_name_carries_the_data_when_the_first_could_not_be_read(
        tmp_path: Path, processes: int) -> None:
    """The first name of a hardlinked file vanishes before its read: the later names
    do not link to it; the next one is read as the file and the others link to it,
    so the point restores them and verify finds it whole."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a_first").write_bytes(rand("shared", 300_000))
    os.link(src / "a_first", src / "b_second")
    os.link(src / "a_first", src / "sub" / "c_third")
    (src / "x_pair").write_bytes(b"kept pair")
    os.link(src / "x_pair", src / "y_pair")
    repo = tmp_path / "repo"
    init_repo(repo, encrypted=False)
    with Repository(repo, "write") as r:
        point = run_backup(r, [_FirstNameVanishes(src, "d")], processes=processes,
                           processes_from=0)
    assert [e["path"] for e in point.stats["errors"]] == ["d/a_first"]
    assert point.stats["files"] == 4
    cli("verify", "--repo", repo)
    listing = cli("ls", "latest", "--repo", repo, "-l").stdout
    assert "d/sub/c_third link to d/b_second" in listing, listing
    out = tmp_path / "out"
    cli("restore", "latest", "--repo", repo, "--path", "d", "--to", out)
    assert (out / "b_second").read_bytes() == rand("shared", 300_000)
    assert os.path.samefile(out / "b_second", out / "sub" / "c_third")
    assert os.path.samefile(out / "x_pair", out / "y_pair")
    # Later runs: read once more (the unlink changed its ctime), then from the cache.
    for _ in range(2):
        with Repository(repo, "write") as r:
            again = run_backup(r, [LocalSource(src, "d")], processes=processes)
        assert again.stats["errors"] == []
    assert again.stats["bytes_read"] == 0
    cli("verify", "--repo", repo)
