r"""The pure parts of restore-onto-a-share and of the mount: target parsing, names
SMB cannot carry, which runs of a chunk are sent, which entries an ``--include``
selects, and the mount's by-time names and hole-filling reads (on a real
repository in the test's directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from remotevss.backup.backup import run_backup
from remotevss.backup.mount import PointsView, time_name
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.smb_restore import (
    HOLE_BLOCK,
    Selection,
    bad_name,
    data_runs,
    is_share_target,
    parse_target,
)
from remotevss.backup.snapshot_source import LocalSource
from remotevss.client.errors import BadUnc


def test_parse_target() -> None:
    t = parse_target(r"\\FS1\Data\restored\2026")
    assert (t.unc.host, t.unc.share, t.path) == ("fs1", "Data", ("restored", "2026"))
    assert t.smb_path("x") == "restored\\2026\\x"
    assert t.text() == r"\\fs1\Data\restored\2026"
    assert parse_target("//fs1/data/").path == ()
    assert parse_target(r"\\fs1\data").text() == r"\\fs1\data"
    assert is_share_target("//h/s") and is_share_target(r"\\h\s") and not is_share_target("/tmp")


@pytest.mark.parametrize("text", [
    r"\\fs1", r"\\fs1\data\..\etc", r"\\fs1\data\a\\b", r"\\fs1\data\a:b", r"\\fs1\da*ta",
    r"\\fs1\data\x" + "\\y" * 600, "/local/dir", r"\\fe80::1\data",
])
def test_bad_targets(text: str) -> None:
    with pytest.raises(BadUnc):
        parse_target(text)


def test_bad_name() -> None:
    assert bad_name("ok name.txt") is None
    assert bad_name("café") is None
    for name in ("", ".", "..", "a\\b", "a:b", "a*", "a?", 'a"', "a<", "a|", "a\x01", "x" * 256):
        assert bad_name(name), name
    assert "UTF-8" in (bad_name("bad\udcff") or "")


def test_data_runs_skip_zero_blocks() -> None:
    block = HOLE_BLOCK
    data = b"a" * block + bytes(2 * block) + b"b" * 10 + bytes(block - 10)
    runs = [(off, bytes(v)) for off, v in data_runs(data, 0)]
    assert runs == [(0, b"a" * block), (3 * block, b"b" * 10 + bytes(block - 10))]
    # blocks align to the file, not the chunk: a chunk at an odd offset
    runs = [(off, len(v)) for off, v in data_runs(bytes(3 * block) + b"z", 100)]
    assert runs == [(3 * block, 101)]
    assert list(data_runs(bytes(5000), 0)) == []  # small all-zero chunk: nothing
    assert [bytes(v) for _o, v in data_runs(b"xy", 7)] == [b"xy"]


def test_selection() -> None:
    everything = Selection(None)
    assert everything.below("a") is everything
    sel = Selection([("data", "docs", "a.txt"), ("data", "img")])
    assert sel.below("home") is None
    data = sel.below("data")
    assert data is not None and data.below("other") is None
    docs = data.below("docs")
    assert docs is not None and docs.below("b.txt") is None
    assert docs.below("a.txt") is not None and docs.below("a.txt").paths is None  # type: ignore[union-attr]
    img = data.below("img")
    assert img is not None and img.paths is None and img.below("anything") is not None


def test_points_view_reads_holes_and_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"island" * 1000)
    (src / "small").write_bytes(b"hello")
    repo_path = tmp_path / "repo"
    init_repo(repo_path)
    with Repository(repo_path, "write") as repo:
        point = run_backup(repo, [LocalSource(src, "src")])
    with Repository(repo_path, "read") as repo:
        view = PointsView(repo)
        assert view.readdir("/") == ["points", "by-time", "latest"]
        assert view.readdir("/points") == [str(point.id)]
        assert view.readdir("/by-time") == [time_name(point.time_ns)]
        assert view.readlink("/latest") == f"points/{point.id}"
        size = view.getattr(f"/points/{point.id}/src/sparse")["st_size"]
        fh = view.open(f"/points/{point.id}/src/sparse", os.O_RDONLY)
        whole = view.read(fh, size + 100, 0, size)
        assert whole == (src / "sparse").read_bytes()
        assert view.read(fh, 10, (1 << 20) - 5, size) == bytes(5) + b"islan"
        assert view.read(fh, 10, size - 4, size) == bytes(4)  # trailing hole, clipped at EOF
        view.release(fh)
        with pytest.raises(OSError) as info:
            view.open(f"/points/{point.id}/src/small", os.O_WRONLY)
        assert info.value.errno == 30  # EROFS
        with pytest.raises(OSError):
            view.getattr(f"/points/{point.id}/src/nope")
        with pytest.raises(OSError):
            view.getattr("/points/999")
