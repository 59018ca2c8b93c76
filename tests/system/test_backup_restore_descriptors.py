"""A restore holds a descriptor for each directory waiting for its metadata (those
whose files a writer process may still be writing): under a low RLIMIT_NOFILE it
settles them sooner instead of running out.  Real CLI, real limit (``prlimit``)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.backup_cli import CLI, cli, rand


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_many_directories_restore_under_a_low_descriptor_limit(tmp_path: Path) -> None:
    """1,200 directories of one file each (a writer process from the 500th file on)
    with at most 320 descriptors: every directory comes back with its mode and
    times, every file with its data."""
    src = tmp_path / "src"
    for i in range(1200):
        d = src / f"d{i // 40:02d}" / f"e{i:04d}"
        d.mkdir(parents=True)
        (d / "f").write_bytes(rand(f"fd{i}", 100))
        os.chmod(d, 0o750)
        os.utime(d, ns=(1_500_000_000_000_000_000 + i, 1_500_000_000_000_000_000 + i))
    repo = tmp_path / "repo"
    cli("init", "--repo", repo, "--unencrypted")
    cli("run", "--repo", repo, src)
    out = tmp_path / "out"
    proc = subprocess.run(["prlimit", "--nofile=320:320", *CLI, "restore", "latest",
                           "--repo", str(repo), "--path", "src", "--to", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    for d in src.rglob("e*"):
        got = os.lstat(out / d.relative_to(src))
        assert (stat.S_IMODE(got.st_mode), got.st_mtime_ns) == (0o750, d.lstat().st_mtime_ns)
        assert (out / d.relative_to(src) / "f").read_bytes() == (d / "f").read_bytes()
