"""A repository on a read-only file system (a write-protected backup disk, a
read-only export): the readers work on it, the writers say why they cannot.

Checked on a real ext4 on a loop device, remounted read-only after a backup:
``list``, ``ls``, ``diff``, ``check``, ``verify``, ``key list`` and ``restore``
exit 0 and restore the tree; ``run``, ``prune`` and ``key add`` exit 1 naming
the read-only file system; the repository's files are not changed.  Also when
the index's WAL files are absent (SQLite cannot make them there).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LoopFs
from tests.support.backup_cli import cli, rand

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")


@pytest.mark.parametrize("without_wal", [False, True])
def test_readers_work_and_writers_refuse_on_a_read_only_repository(
        tmp_path: Path, loopfs: LoopFs, monkeypatch: pytest.MonkeyPatch,
        without_wal: bool) -> None:
    monkeypatch.setenv("REMOTEVSS_BACKUP_PASSWORD", "pw")
    monkeypatch.setenv("REMOTEVSS_BACKUP_NEW_PASSWORD", "pw2")
    fs = loopfs("ext4", 64)
    repo = fs / "repo"
    src = tmp_path / "data"
    src.mkdir()
    (src / "a").write_bytes(rand("a", 100_000))
    cli("init", "--repo", repo)
    cli("run", src, "--repo", repo)
    (src / "b").write_bytes(b"second")
    cli("run", src, "--repo", repo)
    if without_wal:  # as a copy of the repository made without the WAL's files
        con = sqlite3.connect(repo / "index.sqlite")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        for name in ("index.sqlite-wal", "index.sqlite-shm"):
            (repo / name).unlink(missing_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in repo.rglob("*"))

    assert cli("list", "--repo", repo).stdout.count("\n") == 2
    assert "data/b" in cli("ls", "latest", "--repo", repo).stdout
    assert "+  data/b" in cli("diff", "1", "2", "--repo", repo).stdout
    cli("check", "--repo", repo)
    cli("verify", "--repo", repo)
    cli("key", "list", "--repo", repo)
    out = tmp_path / "out"
    cli("restore", "latest", "--repo", repo, "--path", "data", "--to", out)
    assert (out / "a").read_bytes() == rand("a", 100_000)
    assert (out / "b").read_bytes() == b"second"

    for verb in (["run", str(src)], ["prune", "--keep-last", "1"], ["key", "add"]):
        proc = cli(*verb, "--repo", repo, check=1)
        assert "read-only file system" in proc.stderr.lower(), (verb, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert sorted((str(p), p.stat().st_mtime_ns) for p in repo.rglob("*")) == before
