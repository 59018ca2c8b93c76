"""``backup ls`` and ``backup diff``: looking into recovery points without FUSE, by the
real CLI on real trees in the test's temporary directory.

Checked: the exact text, ``--long`` and NDJSON outputs of ``ls`` (files, a
directory, a symlink, a hardlink, a FIFO, a non-UTF-8 name printed escaped and
found again by its escaped form, xattrs, ``--depth``, one file, a missing path
exits 1); the exact ``diff`` of two points (added, removed, content, mode,
time-only and xattr changes, a file replaced by a directory, and the summary)
as text and NDJSON, in both directions and below a path; an unchanged subtree is
never read; both verbs run while a backup holds the repository.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
from pathlib import Path

import pytest

from remotevss.backup.browse import diff
from remotevss.backup.repo import Repository
from tests.support.backup_cli import cli

T0 = 1_700_000_000_000_000_000  # 2023-11-14 22:13:20 UTC
WHEN = "2023-11-14 22:13:20"
ODD = os.fsdecode(b"name\xff")  # a name that is not UTF-8, as the tree stores it
OWNER = f"{pwd.getpwuid(os.getuid()).pw_name}/{grp.getgrgid(os.getgid()).gr_name}"


def stamp(root: Path, overrides: dict[str, int] | None = None) -> None:
    """Every entry's times fixed (mtime T0 unless overridden), deepest first."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames, *([""] if Path(dirpath) == root else [])]:
            p = Path(dirpath, name) if name else root
            mtime = (overrides or {}).get(str(p.relative_to(root.parent)), T0)
            os.utime(p, ns=(T0 + 1, mtime), follow_symlinks=False)


def make_v1(src: Path) -> None:
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_bytes(b"alpha\n")
    (src / "docs" / "b.txt").write_bytes(b"bravo")
    os.link(src / "docs" / "b.txt", src / "docs" / "hl")
    os.mkfifo(src / "fifo")
    os.symlink("docs/a.txt", src / "link")
    (src / ODD).write_bytes(b"x")
    (src / "swap").write_bytes(b"file")
    (src / "tagged.txt").write_bytes(b"t")
    os.setxattr(src / "tagged.txt", "user.note", b"v1")
    for d in [src, src / "docs"]:
        os.chmod(d, 0o755)
    for name in ["docs/a.txt", "docs/b.txt", "fifo", ODD, "swap", "tagged.txt"]:
        os.chmod(src / name, 0o644)
    stamp(src)


def make_v2(src: Path) -> None:
    """Each kind of change once (see the expected diff)."""
    (src / "docs" / "a.txt").write_bytes(b"alpha, changed\n")  # M
    os.chmod(src / "docs" / "b.txt", 0o600)  # U (both names of the file)
    (src / "docs" / "c.txt").write_bytes(b"charlie")  # +
    os.chmod(src / "docs" / "c.txt", 0o644)
    (src / "fifo").unlink()  # -
    (src / "swap").unlink()  # T: a file replaced by a directory
    (src / "swap").mkdir(mode=0o755)
    (src / "swap" / "inner.txt").write_bytes(b"inner")
    os.chmod(src / "swap" / "inner.txt", 0o644)
    os.setxattr(src / "tagged.txt", "user.note", b"v2")  # U: xattrs only
    stamp(src, {f"data/{ODD}": T0 + 5_000_000_000})  # U: mtime only


@pytest.fixture
def points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, dict[str, int]]:
    """A repository with point 1 (make_v1) and point 2 (make_v2); the ctimes of point 1."""
    monkeypatch.setenv("TZ", "UTC")
    src = tmp_path / "data"
    make_v1(src)
    r = tmp_path / "repo"
    cli("init", "--repo", r)
    cli("run", "--repo", r, src)
    ctimes = {p: os.lstat(src / p).st_ctime_ns for p in ["docs/a.txt", "docs/b.txt",
                                                          "tagged.txt"]}
    make_v2(src)
    cli("run", "--repo", r, src)
    return r, src, ctimes


def lines(*args: str | Path, check: int = 0) -> list[str]:
    return cli(*args, check=check).stdout.splitlines()


def test_ls_text_long_depth_and_paths(points: tuple[Path, Path, dict[str, int]]) -> None:
    r, _src, _ctimes = points
    assert lines("ls", "--repo", r, "1") == [
        "data", "data/docs", "data/docs/a.txt", "data/docs/b.txt", "data/docs/hl",
        "data/fifo", "data/link", "data/name\\xff", "data/swap", "data/tagged.txt"]
    assert lines("ls", "--repo", r, "1", "--depth", "1") == ["data"]
    assert lines("ls", "--repo", r, "1", "data", "--depth", "1") == [
        "data/docs", "data/fifo", "data/link", "data/name\\xff", "data/swap",
        "data/tagged.txt"]
    # PATH may follow the options (plain argparse called it unrecognized).
    assert lines("ls", "1", "--repo", r, "--depth", "1", "data") == lines(
        "ls", "--repo", r, "1", "data", "--depth", "1")
    o = f"{OWNER:<15}"
    assert lines("ls", "--repo", r, "1", "data", "-l") == [
        f"drwxr-xr-x {o}          0 {WHEN} data/docs",
        f"-rw-r--r-- {o}          6 {WHEN} data/docs/a.txt",
        f"-rw-r--r-- {o}          5 {WHEN} data/docs/b.txt",
        f"-rw-r--r-- {o}          5 {WHEN} data/docs/hl link to data/docs/b.txt",
        f"prw-r--r-- {o}          0 {WHEN} data/fifo",
        f"lrwxrwxrwx {o}         10 {WHEN} data/link -> docs/a.txt",
        f"-rw-r--r-- {o}          1 {WHEN} data/name\\xff",
        f"-rw-r--r-- {o}          4 {WHEN} data/swap",
        f"-rw-r--r-- {o}          1 {WHEN} data/tagged.txt"]
    # Point 2 (by 'latest'), below a directory that was a file in point 1.
    assert lines("ls", "--repo", r, "latest", "data/swap", "--long") == [
        f"-rw-r--r-- {o}          5 {WHEN} data/swap/inner.txt"]
    # One file: itself; found by the escaped name ls printed, and by its raw bytes.
    late = "2023-11-14 22:13:25"
    for path in ["data/name\\xff", f"data/{ODD}"]:
        assert lines("ls", "--repo", r, "2", path, "-l") == [
            f"-rw-r--r-- {o}          1 {late} data/name\\xff"]
    res = cli("ls", "--repo", r, "1", "data/docs/c.txt", check=1)
    assert res.stdout == ""
    assert res.stderr == ("remotevss backup: data/docs/c.txt: no such path in recovery "
                          "point 1\n")
    assert cli("ls", "--repo", r, "1", "--depth", "0", check=2).stdout == ""


def test_ls_json(points: tuple[Path, Path, dict[str, int]]) -> None:
    r, _src, ctimes = points
    uid, gid = os.getuid(), os.getgid()
    user, group = OWNER.split("/")
    common = {"uid": uid, "gid": gid, "user": user, "group": group, "mtime": T0,
              "atime": T0 + 1, "type": "f"}
    out = lines("ls", "--repo", r, "1", "data/docs", "--json")
    assert [json.loads(line) for line in out] == [
        {**common, "name": "a.txt", "path": "data/docs/a.txt", "mode": 0o644, "size": 6,
         "ctime": ctimes["docs/a.txt"]},
        {**common, "name": "b.txt", "path": "data/docs/b.txt", "mode": 0o644, "size": 5,
         "ctime": ctimes["docs/b.txt"]},
        {**common, "name": "hl", "path": "data/docs/hl", "mode": 0o644, "size": 5,
         "ctime": ctimes["docs/b.txt"], "link": "data/docs/b.txt"}]
    [tagged] = lines("ls", "--repo", r, "1", "data/tagged.txt", "--json")
    assert json.loads(tagged) == {**common, "name": "tagged.txt", "path": "data/tagged.txt",
                                  "mode": 0o644, "size": 1, "ctime": ctimes["tagged.txt"],
                                  "xattrs": {"user.note": "djE="}}
    whole = [json.loads(line) for line in lines("ls", "--repo", r, "1", "--json")]
    assert [d["path"] for d in whole][:2] == ["data", "data/docs"]
    assert all(re.fullmatch("[0-9a-f]{64}", d["subtree"]) for d in whole if d["type"] == "d")
    # The non-UTF-8 name as the tree format keeps it (os.fsencode undoes it).
    odd = next(line for line in lines("ls", "--repo", r, "1", "--json") if "name\\udcff" in line)
    assert os.fsencode(json.loads(odd)["path"]) == b"data/name\xff"
    assert {d["type"] for d in whole} == {"d", "f", "l", "p"}


EXPECTED_DIFF = [
    "M  data/docs/a.txt",
    "U  data/docs/b.txt",
    "+  data/docs/c.txt",
    "U  data/docs/hl",
    "-  data/fifo",
    "U  data/name\\xff",
    "T  data/swap",
    "+  data/swap/inner.txt",
    "U  data/tagged.txt",
    # a.txt: 15 new bytes for 6 old; c.txt 7 and inner.txt 5 added; the file swap's 4 gone
    "2 added, 1 removed, 1 modified, 4 metadata only, 1 type changed; data +27 B -10 B"]


def test_diff_text(points: tuple[Path, Path, dict[str, int]]) -> None:
    r, _src, _ctimes = points
    assert lines("diff", "--repo", r, "1", "2") == EXPECTED_DIFF
    assert lines("diff", "--repo", r, "1", "latest", "data/docs") == [
        "M  data/docs/a.txt", "U  data/docs/b.txt", "+  data/docs/c.txt", "U  data/docs/hl",
        "1 added, 0 removed, 1 modified, 2 metadata only, 0 type changed; data +22 B -6 B"]
    assert lines("diff", "--repo", r, "2", "1", "data/swap") == [
        "T  data/swap", "-  data/swap/inner.txt",
        "0 added, 1 removed, 0 modified, 0 metadata only, 1 type changed; data +4 B -5 B"]
    assert lines("diff", "--repo", r, "1", "2", "data/docs/c.txt") == [
        "+  data/docs/c.txt",
        "1 added, 0 removed, 0 modified, 0 metadata only, 0 type changed; data +7 B -0 B"]
    assert lines("diff", "--repo", r, "2", "2") == [
        "0 added, 0 removed, 0 modified, 0 metadata only, 0 type changed; data +0 B -0 B"]
    res = cli("diff", "--repo", r, "1", "2", "data/nothing", check=1)
    assert res.stderr == ("remotevss backup: data/nothing: no such path in recovery point 1 "
                          "nor in 2\n")


def test_diff_json(points: tuple[Path, Path, dict[str, int]]) -> None:
    r, _src, _ctimes = points
    got = [json.loads(line) for line in lines("diff", "--repo", r, "1", "2", "--json")]
    assert got == [
        {"change": "M", "path": "data/docs/a.txt", "type": "f", "fields": ["size", "content"]},
        {"change": "U", "path": "data/docs/b.txt", "type": "f", "fields": ["mode"]},
        {"change": "+", "path": "data/docs/c.txt", "type": "f"},
        {"change": "U", "path": "data/docs/hl", "type": "f", "fields": ["mode"]},
        {"change": "-", "path": "data/fifo", "type": "p"},
        {"change": "U", "path": f"data/{ODD}", "type": "f", "fields": ["mtime"]},
        {"change": "T", "path": "data/swap", "type": "d", "old_type": "f"},
        {"change": "+", "path": "data/swap/inner.txt", "type": "f"},
        {"change": "U", "path": "data/tagged.txt", "type": "f", "fields": ["xattrs"]},
        {"summary": {"added": 2, "removed": 1, "modified": 1, "metadata": 4,
                     "type_changed": 1, "bytes_added": 27, "bytes_removed": 10}}]


def test_diff_skips_unchanged_subtrees_unread(tmp_path: Path) -> None:
    """Trees are content-addressed: a subtree with the same id is never read."""
    src = tmp_path / "data"
    for i in range(3):
        (src / "same" / f"sub{i}").mkdir(parents=True)
        (src / "same" / f"sub{i}" / "f").write_bytes(b"same")
    (src / "moving").mkdir()
    (src / "moving" / "f").write_bytes(b"1")
    r = tmp_path / "repo"
    cli("init", "--repo", r)
    cli("run", "--repo", r, src)
    (src / "moving" / "g").write_bytes(b"2")
    cli("run", "--repo", r, src)
    with Repository(r, "read") as repo:
        old, new = repo.points()
        read: list[bytes] = []
        real = repo.read_tree

        def counting(tree_id: bytes) -> list[dict[str, object]]:
            read.append(tree_id)
            return real(tree_id)

        repo.read_tree = counting  # type: ignore[method-assign]
        changes = [(c.kind, c.path) for c in diff(repo, old, new)]
        same = next(e for e in real(bytes.fromhex(next(
            e for e in real(new.root) if e["name"] == "data")["subtree"]))
            if e["name"] == "same")
    assert ("+", "data/moving/g") in changes
    assert not any(p.startswith("data/same") for _k, p in changes)
    assert bytes.fromhex(same["subtree"]) not in read
    assert len(read) == 6  # two roots, two 'data', two 'moving'


def test_readers_run_while_a_backup_holds_the_repository(
        points: tuple[Path, Path, dict[str, int]]) -> None:
    r, _src, _ctimes = points
    with Repository(r, "write", command="backup run"):  # as a running backup holds it
        assert lines("diff", "--repo", r, "1", "2") == EXPECTED_DIFF
        assert len(lines("ls", "--repo", r, "2")) == 11
