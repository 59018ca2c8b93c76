"""``backup restore POINT --include LABEL/PATH ... --to DIR``: item-level restore to a
local directory, by the real CLI on the test's temporary directory.

Checked: only the named items come back, each where a whole restore puts it
(with and without ``--path``), with their contents, modes and times; an item
that is missing or outside ``--path`` is refused before anything is written;
``--overwrite`` is refused for a local target.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.backup_cli import cli


def tree(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """relative path -> (mode, mtime_ns, data) of everything below ``root``."""
    out: dict[str, tuple[int, int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (
                st.st_mode, st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "data"
    (src / "docs" / "old").mkdir(parents=True)
    (src / "docs" / "a.txt").write_bytes(b"a" * 5000)
    (src / "docs" / "old" / "b.txt").write_bytes(b"b" * 100)
    (src / "img").mkdir()
    (src / "img" / "c.bin").write_bytes(os.urandom(200_000))
    (src / "top.txt").write_bytes(b"top")
    os.chmod(src / "docs" / "a.txt", 0o600)
    os.utime(src / "docs" / "a.txt", ns=(1_400_000_000_000_000_001, 1_400_000_000_000_000_001))
    os.utime(src / "docs" / "old", ns=(1_300_000_000_000_000_000, 1_300_000_000_000_000_000))
    r = tmp_path / "repo"
    cli("init", "--repo", r)
    cli("run", "--repo", r, src)
    return r, src


def test_only_the_items_come_back_at_their_places(repo: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    r, src = repo
    whole = tmp_path / "whole"
    cli("restore", "--repo", r, "latest", "--to", whole)
    out = tmp_path / "out"
    cli("restore", "--repo", r, "latest", "--include", "data/docs/a.txt", "--include",
        "data/docs/old", "--to", out)
    got = tree(out)
    full = tree(whole)
    items = {"data/docs/a.txt", "data/docs/old", "data/docs/old/b.txt"}
    assert set(got) == items | {"data", "data/docs"}
    for k in items:
        assert got[k] == full[k], k

    # With --path: relative to it, as a restore of --path puts them.
    out2 = tmp_path / "out2"
    cli("restore", "--repo", r, "latest", "--path", "data", "--include", "data/img",
        "--include", "data/top.txt", "--to", out2)
    assert set(tree(out2)) == {"img", "img/c.bin", "top.txt"}
    assert (out2 / "img" / "c.bin").read_bytes() == (src / "img" / "c.bin").read_bytes()


def test_bad_items_change_nothing(repo: tuple[Path, Path], tmp_path: Path) -> None:
    r, _src = repo
    out = tmp_path / "out"
    res = cli("restore", "--repo", r, "latest", "--include", "data/docs/a.txt", "--include",
              "data/missing", "--to", out, check=1)
    assert "no such path" in res.stderr and not out.exists()
    res = cli("restore", "--repo", r, "latest", "--path", "data/img", "--include",
              "data/docs/a.txt", "--to", out, check=1)
    assert "not inside --path" in res.stderr and not out.exists()
    res = cli("restore", "--repo", r, "latest", "--overwrite", "--to", out, check=2)
    assert "--overwrite" in res.stderr and not out.exists()


@pytest.mark.parametrize("order", [("data/docs/hl", "data/img/hl2"),
                                   ("data/img/hl2", "data/docs/hl")], ids=["first", "later"])
def test_two_names_of_one_file_in_two_items_stay_one_file(tmp_path: Path,
                                                           order: tuple[str, str]) -> None:
    """Hardlinks between items (either name asked for first) come back as one file
    with two names, as a whole restore would make them."""
    src = tmp_path / "data"
    (src / "docs").mkdir(parents=True)
    (src / "img").mkdir()
    (src / "docs" / "hl").write_bytes(b"shared" * 1000)
    os.link(src / "docs" / "hl", src / "img" / "hl2")
    r = tmp_path / "repo"
    cli("init", "--repo", r)
    cli("run", "--repo", r, src)
    out = tmp_path / "out"
    cli("restore", "--repo", r, "latest", "--include", order[0], "--include", order[1],
        "--to", out)
    a, b = (out / "data" / "docs" / "hl").stat(), (out / "data" / "img" / "hl2").stat()
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert (out / "data" / "img" / "hl2").read_bytes() == b"shared" * 1000
