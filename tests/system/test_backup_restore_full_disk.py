"""A restore onto a disk that fills up: the files that did not fit are named and
removed, and what the summary says was restored is what is on the disk.

On a real ext4 on a loop device too small for the point: exit 3, each file
that did not fit named with ENOSPC and absent (no cut-off file under its
name), every file present is whole, and the restored byte count (text and
JSON) is the size of the files present, not also the data written into the
files that failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LoopFs
from tests.support.backup_cli import cli, rand

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")

SIZE = 6 << 20


def test_a_full_target_disk_fails_the_files_that_do_not_fit_and_counts_only_the_rest(
        tmp_path: Path, loopfs: LoopFs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTEVSS_BACKUP_PASSWORD", "pw")
    src = tmp_path / "data"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(rand(f"f{i}", SIZE))
    repo = tmp_path / "repo"
    cli("init", "--repo", repo)
    cli("run", src, "--repo", repo)
    small = loopfs("ext4", 16)

    proc = cli("restore", "latest", "--repo", repo, "--path", "data", "--to", small / "a",
               "--json", check=3)
    result = json.loads(proc.stdout)
    present = sorted(p.name for p in (small / "a").iterdir())
    failed = sorted(e["path"].removeprefix("data/") for e in result["errors"])
    assert failed and present and sorted(present + failed) == [f"f{i}" for i in range(5)]
    assert all("No space left on device" in e["error"] for e in result["errors"])
    for name in present:
        assert (small / "a" / name).read_bytes() == rand(name, SIZE)
    assert result["files"] == len(present)
    assert result["bytes"] == SIZE * len(present)

    for p in (small / "a").iterdir():
        p.unlink()
    proc = cli("restore", "latest", "--repo", repo, "--path", "data", "--to", small / "a",
               check=3)
    present = sorted(p.name for p in (small / "a").iterdir())
    summary = re.search(r"restored (\d+) files, \d+ directories, ([\d.]+) MiB", proc.stdout)
    assert summary, proc.stdout
    assert int(summary[1]) == len(present)
    assert float(summary[2]) == pytest.approx(6.0 * len(present), abs=0.05)


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr")
def test_a_target_that_cannot_be_made_is_named_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``--to`` below an immutable directory: exit 1, the message names the whole
    target (not only its last component), nothing is written."""
    monkeypatch.setenv("REMOTEVSS_BACKUP_PASSWORD", "pw")
    src = tmp_path / "data"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    repo = tmp_path / "repo"
    cli("init", "--repo", repo)
    cli("run", src, "--repo", repo)
    locked = tmp_path / "locked"
    locked.mkdir()
    subprocess.run(["chattr", "+i", str(locked)], check=True)
    try:
        proc = cli("restore", "latest", "--repo", repo, "--to", locked / "sub" / "dir",
                   check=1)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert f"{locked}/sub" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.listdir(locked) == []
