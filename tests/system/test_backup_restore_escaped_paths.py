"""Paths copied from ``backup ls`` output into ``restore --path`` and
``restore --include``: ``ls`` prints names escaped (a newline as ``\\n``, a byte
that is not UTF-8 as ``\\xNN``, a backslash as ``\\\\``) and says its output is
meant to be fed to ``restore --include``; so restore finds the escaped form too,
as ``ls`` does, and the raw name still works.

On the test's real file system with the real CLI: each odd name printed by
``ls`` restores by that text through ``--include`` and through ``--path``, with
its contents; a name that looks escaped but is stored as typed wins over the
unescaped reading; a path in neither form is refused (exit 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.backup_cli import cli

# name on disk -> what ``ls`` prints for it
NAMES = {
    "nl\nname": r"nl\nname",
    os.fsdecode(b"caf\xe9"): r"caf\xe9",
    "back\\slash": r"back\\slash",
    "a\tb": r"a\tb",
}


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REMOTEVSS_BACKUP_PASSWORD", "pw")
    src = tmp_path / "data"
    (src / "dir\nnl").mkdir(parents=True)
    for name in NAMES:
        (src / name).write_bytes(os.fsencode(name))
    (src / "dir\nnl" / "inside").write_bytes(b"inside")
    (src / "x\\n").write_bytes(b"typed")  # a backslash and an n, stored as typed
    (src / "x\n").write_bytes(b"newline")
    repo = tmp_path / "repo"
    cli("init", "--repo", repo)
    cli("run", src, "--repo", repo)
    return repo


def test_names_printed_by_ls_restore_by_that_text(repo: Path, tmp_path: Path) -> None:
    printed = cli("ls", "latest", "--repo", repo).stdout.splitlines()
    for n, (name, shown) in enumerate([*NAMES.items(), ("dir\nnl", r"dir\nnl")]):
        text = f"data/{shown}"
        assert text in printed
        want = b"inside" if name == "dir\nnl" else os.fsencode(name)
        out = tmp_path / f"inc{n}"
        cli("restore", "latest", "--repo", repo, "--include", text, "--to", out)
        got = out / "data" / name
        assert (got / "inside" if got.is_dir() else got).read_bytes() == want
        out = tmp_path / f"path{n}"
        cli("restore", "latest", "--repo", repo, "--path", text, "--to", out)
        got = out if name == "dir\nnl" else out / name
        assert (got / "inside" if got.is_dir() else got).read_bytes() == want


def test_raw_names_still_restore_and_a_name_stored_as_typed_wins(
        repo: Path, tmp_path: Path) -> None:
    cli("restore", "latest", "--repo", repo, "--include", "data/nl\nname", "--to",
        tmp_path / "raw")
    assert (tmp_path / "raw" / "data" / "nl\nname").read_bytes() == b"nl\nname"
    cli("restore", "latest", "--repo", repo, "--path", r"data/x\n", "--to", tmp_path / "typed")
    assert os.listdir(tmp_path / "typed") == ["x\\n"]
    assert (tmp_path / "typed" / "x\\n").read_bytes() == b"typed"
    proc = cli("restore", "latest", "--repo", repo, "--include", r"data/no\nsuch", "--to",
               tmp_path / "none", check=1)
    assert "no such path" in proc.stderr
    assert not (tmp_path / "none").exists()
