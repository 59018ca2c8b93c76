r"""``backup restore POINT --to \\server\share\path`` against a real private smbd.

A share is backed up over SMB (``SmbSource``, so the point keeps security
descriptors, DOS attributes and creation times), then restored onto another
share of the same smbd (loop btrfs) by the real CLI.  Everything is read back
*over SMB* and compared with the source share as SMB shows it: contents,
sizes, LastWriteTime and CreationTime (100 ns), DOS attributes and the
security descriptor bytes.  Checked:

* a whole-share and a whole-point restore equal the source, and the report
  counts what was written;
* ``--include`` restores only the named items, at their places;
* an existing file makes the restore refuse without ``--overwrite`` and
  change nothing (not even a time); ``--overwrite`` then restores it, also
  over read-only and hidden files;
* two restores racing onto one target write each file once; a file that
  appears between the check and the writing pass is skipped, not replaced;
* damaged data fails only its files, which are not left on the share;
* entries SMB cannot create (a symlink of a local-directory point) are
  skipped and reported (exit 3);
* bad targets are refused before any connection;
* names of the point that differ only in case are restored once (the first),
  the others skipped and named, never written over each other;
* existing files that smbd lists under a mangled name (``name.``, ``CON``)
  are found before anything is written;
* a signal during a large file removes that file and stops between files;
* a read-only share: nothing restored is exit 1, with a plain message and
  the files a failed directory holds counted;
* what ``backup mount`` shows of such a point (descriptor as an xattr, owner bits).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pytest

from remotevss.backup.backup import run_backup
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.smb import SD_XATTR, SmbSession, SmbSource
from remotevss.backup.snapshot_source import DIR, LocalSource
from tests.support.samba import PASSWORD, PrivateSamba

_missing = [t for t in ("smbd", "smbpasswd", "mkfs.btrfs") if shutil.which(t) is None]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, loop btrfs)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/system tools: {_missing}"),
]

CLI = [sys.executable, "-m", "remotevss.cli", "backup"]
HIDDEN, READONLY = 0x2, 0x1


def rand(seed: str, n: int) -> bytes:
    return blake3.blake3(seed.encode()).digest(length=n)


def posix_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """A system.posix_acl_access value: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@dataclass
class Env:
    samba: PrivateSamba
    source: Path
    target: Path
    repo: Path
    work: Path

    def unc(self, share: str, *path: str) -> str:
        return "\\".join([f"\\\\127.0.0.1\\{share}", *path])

    def session(self) -> SmbSession:
        return SmbSession("127.0.0.1", username="root", password=PASSWORD, port=self.samba.port)

    def cli(self, *args: str | Path, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, REMOTEVSS_PASSWORD=PASSWORD)
        env.pop("KRB5CCNAME", None)
        proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env,
                              timeout=300, check=False)
        if check is not None:
            assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def restore(self, *args: str | Path, check: int | None = 0
                ) -> subprocess.CompletedProcess[str]:
        return self.cli("restore", "--repo", self.repo, "-U", "root", "-p",
                        str(self.samba.port), *args, check=check)


def make_source(root: Path) -> None:
    for i in range(120):
        d = root / "small" / f"d{i % 4}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03d}.bin").write_bytes(rand(f"s{i}", (i * 997) % 20000))
    (root / "dense.bin").write_bytes(rand("dense", 3 << 20))  # a large file (several writes)
    with open(root / "sparse.img", "wb") as f:  # holes: restored with SetInfo(end of file)
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(rand("island", 200_000))
    (root / "empty").touch()
    (root / "café ünïcode.txt").write_text("names survive\n" * 50)
    (root / "empty-dir").mkdir()
    # Different owners and modes, and one extra ACL entry: distinct security descriptors.
    os.chown(root / "dense.bin", 1234, 1234)
    os.chmod(root / "dense.bin", 0o640)
    os.chmod(root / "small" / "d1", 0o700)
    os.setxattr(root / "empty", "system.posix_acl_access", posix_acl(
        [(0x01, 6, 0xFFFFFFFF), (0x02, 6, 4321), (0x04, 4, 0xFFFFFFFF), (0x10, 6, 0xFFFFFFFF),
         (0x20, 0, 0xFFFFFFFF)]))
    old = 1_500_000_000_123_456_700
    os.utime(root / "empty", ns=(old, old))
    os.utime(root / "small" / "d2", ns=(old, old))


def smb_view(session: SmbSession, share: str, sub: str = "") -> dict[str, tuple[Any, ...]]:
    """path -> (type, mtime, btime, attributes, size, sha256, security descriptor), all
    as SMB shows them, for everything below ``sub`` (not ``sub`` itself)."""
    src = SmbSource(session, share, "view", security=True)
    out: dict[str, tuple[Any, ...]] = {}
    try:
        def walk(rel: str, shown: str) -> None:
            for e in src.scandir(rel):
                path = f"{rel}/{e.name}" if rel else e.name
                key = f"{shown}/{e.name}" if shown else e.name
                if e.type == DIR:
                    sd = src.xattrs(path, e).get(SD_XATTR)
                    out[key] = ("d", e.mtime_ns, e.btime_ns, e.attributes, 0, "", sd)
                    walk(path, key)
                else:
                    f = src.open(path, e)
                    try:
                        data = f.pread(0, e.size)
                        sd = (f.xattrs() or {}).get(SD_XATTR)
                    finally:
                        f.close()
                    out[key] = ("f", e.mtime_ns, e.btime_ns, e.attributes, e.size,
                                hashlib.sha256(data).hexdigest(), sd)
        walk(sub, "")
    finally:
        src.close()
    return out


def without_btime(view: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    return {k: v[:2] + v[3:] for k, v in view.items()}


def point_btimes(repo: Path, label: str) -> dict[str, int]:
    """path -> CreationTime (ns) as the latest point kept it.  Why not the live
    source's: Samba derives a file's creation time from its other times when none
    is stored, so reading the source (atime) moves what it reports."""
    from remotevss.backup.tree import decode_tree, walk

    with Repository(repo, "read") as r:
        point = r.find_point("latest")
        out = {path.partition("/")[2]: e["btime"] for path, e in walk(
            lambda tid: decode_tree(r.read_blob(tid)), point.root, "")}
    out.pop("", None)
    return {k: v for k, v in out.items() if k}


def assert_same(restored: dict[str, tuple[Any, ...]], source: dict[str, tuple[Any, ...]],
                btimes: dict[str, int]) -> None:
    """Equal to the source as SMB shows it; creation times equal to the point's."""
    assert without_btime(restored) == without_btime(source)
    assert {k: v[2] for k, v in restored.items()} == {k: btimes[k] for k in restored}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("restore-smb")
    with loop_filesystem("btrfs", 512, work) as mnt:
        source, target, readonly = mnt / "data", mnt / "restore", mnt / "ro"
        source.mkdir()
        target.mkdir()
        readonly.mkdir()
        make_source(source)
        # The target keeps NT ACLs as set (acl_xattr, as shares for Windows clients
        # do), so the descriptors read back are byte for byte what restore wrote.
        samba = PrivateSamba(work / "samba", {"data": source, "restore": target,
                                              "ro": readonly},
                             share_options={"restore": {"vfs objects": "acl_xattr btrfs"},
                                            "ro": {"read only": "yes"}})
        samba.start()
        e = Env(samba, source, target, work / "repo", work)
        try:
            r = samba.smbclient("data", "setmode \"café ünïcode.txt\" +h")
            assert r.returncode == 0, r
            r = samba.smbclient("data", "setmode small\\d0\\e0\\f000.bin +r")
            assert r.returncode == 0, r
            init_repo(e.repo)
            with e.session() as s, Repository(e.repo, "write", command="test") as repo:
                point = run_backup(repo, [SmbSource(s, "data", "data", security=True)])
            assert point.stats["error_count"] == 0, point.stats
            yield e
        finally:
            samba.stop()


def test_whole_share_restore_equals_the_source(env: Env) -> None:
    r = env.restore("latest", "--path", "data", "--to", env.unc("restore", "whole"), "--json")
    report = json.loads(r.stdout)
    with env.session() as s:
        source = smb_view(s, "data")
        restored = smb_view(s, "restore", "whole")
    assert_same(restored, source, point_btimes(env.repo, "data"))
    files = [k for k, v in source.items() if v[0] == "f"]
    assert report["files"] == len(files) and report["skipped"] == [] and report["errors"] == []
    assert report["bytes"] == sum(v[4] for v in source.values())
    assert report["dirs"] == sum(1 for v in source.values() if v[0] == "d")
    # What makes the comparison meaningful: distinct SDs, attributes, old times came back.
    sds = {v[6] for v in source.values()}
    assert len(sds) >= 3 and None not in sds
    assert restored["café ünïcode.txt"][3] & HIDDEN
    assert restored["small/d0/e0/f000.bin"][3] & READONLY
    assert restored["empty"][1] == 1_500_000_000_123_456_700
    assert restored["small/d2"][1] == 1_500_000_000_123_456_700
    assert (env.target / "whole" / "dense.bin").stat().st_uid == 1234
    sparse = env.target / "whole" / "sparse.img"
    assert sparse.stat().st_blocks * 512 < 2 << 20, "holes are not written"

    # The whole point (no --path): one directory per source label below the target.
    env.restore("latest", "--to", "//127.0.0.1/restore/wholepoint")
    with env.session() as s:
        assert_same(smb_view(s, "restore", "wholepoint/data"), source,
                    point_btimes(env.repo, "data"))
        assert [e.name for e in SmbSource(s, "restore", "v").scandir("wholepoint")] == ["data"]


def test_include_restores_only_the_named_items(env: Env) -> None:
    r = env.restore("latest", "--path", "data", "--include", "data/small/d1",
                    "--include", "data/small/d2/e2/f002.bin", "--include", "data/empty",
                    "--to", env.unc("restore", "subset"), "--json")
    report = json.loads(r.stdout)
    with env.session() as s:
        source = smb_view(s, "data")
        restored = smb_view(s, "restore", "subset")
    wanted = {k for k in source if k.startswith("small/d1/") or k in (
        "small/d1", "small/d2/e2/f002.bin", "empty")}
    parents = {"small", "small/d2", "small/d2/e2"}
    assert set(restored) == wanted | parents
    btimes = point_btimes(env.repo, "data")
    assert_same({k: restored[k] for k in wanted}, {k: source[k] for k in wanted}, btimes)
    assert report["files"] == sum(1 for k in wanted if source[k][0] == "f")

    # Without --path, the target receives label directories; an include keeps its place.
    env.restore("latest", "--include", "data/dense.bin", "--to", env.unc("restore", "bylabel"))
    assert sorted(p.name for p in (env.target / "bylabel").iterdir()) == ["data"]
    assert [p.name for p in (env.target / "bylabel" / "data").iterdir()] == ["dense.bin"]

    # A file --path: restored into the target directory.
    env.restore("latest", "--path", "data/small/d0/e0/f000.bin", "--to",
                env.unc("restore", "single", "dir"))
    with env.session() as s:
        one = smb_view(s, "restore", "single")
    assert set(one) == {"dir", "dir/f000.bin"}
    assert without_btime({"f": one["dir/f000.bin"]}) == without_btime(
        {"f": source["small/d0/e0/f000.bin"]})

    bad = env.restore("latest", "--include", "data/nope", "--to", env.unc("restore", "x"),
                      check=1)
    assert "no such path" in bad.stderr and not (env.target / "x").exists()
    bad = env.restore("latest", "--path", "data", "--include", "home/x", "--to",
                      env.unc("restore", "x"), check=1)
    assert "no such path" in bad.stderr or "not inside --path" in bad.stderr
    # a file where the target directory should be
    bad = env.restore("latest", "--path", "data/small", "--to",
                      env.unc("restore", "subset", "empty"), check=1)
    assert "directory" in bad.stderr.lower(), bad.stderr
    assert (env.target / "subset" / "empty").is_file()


def test_existing_files_refuse_without_overwrite_and_change_nothing(env: Env) -> None:
    to = env.unc("restore", "again")
    env.restore("latest", "--path", "data", "--include", "data/small/d3", "--include",
                "data/dense.bin", "--to", to)
    victim = env.target / "again" / "small" / "d3" / "e1" / "f007.bin"
    victim.write_bytes(b"changed by a user")
    (env.target / "again" / "dense.bin").unlink()  # missing files alone would be restored

    def snapshot() -> dict[str, tuple[Any, ...]]:
        with env.session() as s:
            return smb_view(s, "restore", "again")

    before = snapshot()
    r = env.restore("latest", "--path", "data", "--to", to, check=1)
    assert "already exist" in r.stderr and "f007.bin" in r.stderr, r.stderr
    assert "--overwrite" in r.stderr
    assert snapshot() == before, "a refused restore changed the target"

    r = env.restore("latest", "--path", "data", "--to", to, "--overwrite", "--json")
    with env.session() as s:
        assert_same(smb_view(s, "restore", "again"), smb_view(s, "data"),
                    point_btimes(env.repo, "data"))
    assert json.loads(r.stdout)["errors"] == []

    # Again over itself: every file exists now, one of them read-only (DOS attribute).
    r = env.restore("latest", "--path", "data", "--to", to, "--overwrite", "--json")
    report = json.loads(r.stdout)
    assert report["errors"] == [] and report["warnings"] == [], report
    with env.session() as s:
        assert_same(smb_view(s, "restore", "again"), smb_view(s, "data"),
                    point_btimes(env.repo, "data"))


def test_two_restores_racing_onto_one_target_never_replace(env: Env) -> None:
    """Two restores of the same point onto the same new target at once: the one that
    looks after the other has written is refused whole (in practice: always, on
    loopback), or, if both looked before, whichever creates a file first writes it and
    the other skips it.  Every file is written exactly once; the result equals the
    source."""
    env_vars = dict(os.environ, REMOTEVSS_PASSWORD=PASSWORD)
    argv = [*CLI, "restore", "--repo", str(env.repo), "-U", "root", "-p", str(env.samba.port),
            "latest", "--path", "data", "--to", env.unc("restore", "race"), "--json"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env_vars) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert all(c in (0, 1, 3) for c in codes) and codes != [1, 1], (codes, outs)
    with env.session() as s:
        source = smb_view(s, "data")
        restored = smb_view(s, "restore", "race")
    files = {k for k, v in source.items() if v[0] == "f"}
    written = skipped = 0
    for code, (out, err) in zip(codes, outs, strict=True):
        if code == 1:
            assert "already exist" in err, err
            continue
        report = json.loads(out)
        assert report["errors"] == [], report["errors"]
        assert all(x["error"] == "exists (not overwritten)" for x in report["skipped"])
        written += report["files"]
        skipped += len(report["skipped"])
    assert written == len(files), (written, len(files), codes)
    assert skipped in (0, len(files)), (skipped, codes)  # 0: the other was refused whole
    btimes = point_btimes(env.repo, "data")
    assert_same({k: restored[k] for k in files}, {k: source[k] for k in files}, btimes)
    assert set(restored) == set(source)


def test_a_file_appearing_between_the_passes_is_skipped_not_replaced(env: Env) -> None:
    """A user's file created after the existence check and before the writing pass
    (at the hook between them, by the real file system under smbd) survives."""
    from remotevss.backup.progress import Progress
    from remotevss.backup.smb_restore import parse_target, restore_to_share

    (env.target / "between").mkdir()
    user_file = env.target / "between" / "dense.bin"

    class Between(Progress):
        def set_total(self, files: int, nbytes: int) -> None:
            super().set_total(files, nbytes)
            user_file.write_bytes(b"written by a user meanwhile")

    with env.session() as s, Repository(env.repo, "read") as r:
        result = restore_to_share(r, r.find_point("latest"), s,
                                  parse_target(env.unc("restore", "between")), "data",
                                  progress=Between(enabled=False))
    assert result.skipped == [{"path": "data/dense.bin", "error": "exists (not overwritten)"}]
    assert result.errors == []
    assert user_file.read_bytes() == b"written by a user meanwhile"
    with env.session() as s:
        source = smb_view(s, "data")
        restored = smb_view(s, "restore", "between")
    assert set(restored) == set(source)
    files = {k for k, v in source.items() if v[0] == "f" and k != "dense.bin"}
    assert result.files == len(files)
    assert_same({k: restored[k] for k in files}, {k: source[k] for k in files},
                point_btimes(env.repo, "data"))


def test_unsupported_entries_are_skipped_and_reported(env: Env, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "file.txt").write_bytes(b"x" * 1000)
    os.symlink("file.txt", local / "link")
    os.link(local / "file.txt", local / "hard.txt")
    repo = tmp_path / "repo"
    init_repo(repo)
    with Repository(repo, "write", command="test") as r:
        run_backup(r, [LocalSource(local, "local")])
    proc = env.cli("restore", "--repo", repo, "-U", "root", "-p", str(env.samba.port),
                   "latest", "--to", env.unc("restore", "fromlocal"), "--json", check=3)
    report = json.loads(proc.stdout)
    assert [s["path"] for s in report["skipped"]] == ["local/link"]
    assert "symlink" in report["skipped"][0]["error"]
    assert report["files"] == 2
    out = env.target / "fromlocal" / "local"
    assert (out / "hard.txt").read_bytes() == (out / "file.txt").read_bytes() == b"x" * 1000
    assert not (out / "link").exists()


def test_damaged_data_fails_only_its_files(env: Env, tmp_path: Path) -> None:
    """A flipped byte in a pack: the small and the large file using that data are
    reported and not left on the share; everything else is restored (exit 3)."""
    from remotevss.backup.packs import pack_path
    from remotevss.backup.tree import decode_tree

    repo = tmp_path / "repo"
    shutil.copytree(env.repo, repo)
    with Repository(repo, "read") as r:
        point = r.find_point("latest")
        root = decode_tree(r.read_blob(point.root))
        data = decode_tree(r.read_blob(bytes.fromhex(root[0]["subtree"])))
        small = decode_tree(r.read_blob(bytes.fromhex(
            next(e for e in data if e["name"] == "small")["subtree"])))
        d0 = decode_tree(r.read_blob(bytes.fromhex(
            next(e for e in small if e["name"] == "d0")["subtree"])))
        e1 = decode_tree(r.read_blob(bytes.fromhex(
            next(e for e in d0 if e["name"] == "e1")["subtree"])))
        victims = {"dense.bin": next(e for e in data if e["name"] == "dense.bin"),
                   "small/d0/e1/f004.bin": next(e for e in e1 if e["name"] == "f004.bin")}
        spots = []
        for e in victims.values():
            loc = r.index.locate(bytes.fromhex(e["content"][-1][2]))
            assert loc is not None
            spots.append((pack_path(repo, loc.pack), loc.entry.offset + loc.entry.stored_len // 2))
    for path, off in spots:
        with open(path, "r+b") as f:
            f.seek(off)
            byte = f.read(1)
            f.seek(off)
            f.write(bytes([byte[0] ^ 0xFF]))
    proc = env.cli("restore", "--repo", repo, "-U", "root", "-p", str(env.samba.port),
                   "latest", "--path", "data", "--to", env.unc("restore", "damaged"), "--json",
                   check=3)
    report = json.loads(proc.stdout)
    assert sorted(x["path"] for x in report["errors"]) == sorted(
        f"data/{k}" for k in victims), report["errors"]
    with env.session() as s:
        restored = smb_view(s, "restore", "damaged")
        source = smb_view(s, "data")
    assert set(source) - set(restored) == set(victims)
    assert_same(restored, {k: v for k, v in source.items() if k not in victims},
                point_btimes(env.repo, "data"))


@pytest.mark.parametrize("to", [
    "\\\\127.0.0.1\\restore\\..\\x",
    "\\\\127.0.0.1\\restore\\a:b",
    "\\\\127.0.0.1",
])
def test_bad_targets_are_refused(env: Env, to: str) -> None:
    r = env.restore("latest", "--to", to, check=2)
    assert "bad share path" in r.stderr


def test_mount_view_of_a_point_from_smb(env: Env) -> None:
    """What ``backup mount`` shows of an SMB point (its file system without FUSE, which
    tests/system/test_backup_mount.py covers): the descriptor as a user.* xattr,
    the mounting user as owner, owner bits only, the kept times and sizes."""
    from remotevss.backup.mount import SMB_XATTR_PREFIX, PointsView

    with env.session() as s:
        source = smb_view(s, "data")
    with Repository(env.repo, "read") as r:
        view = PointsView(r)
        pid = r.find_point("latest").id
        base = f"/points/{pid}/data"
        for rel in ("dense.bin", "empty", "small/d1", "café ünïcode.txt"):
            st = view.getattr(f"{base}/{rel}")
            kind, mtime, _btime, _attrs, size, _sha, sd = source[rel]
            assert st["st_mtime"] == mtime and st["st_uid"] == os.getuid(), rel
            assert st["st_mode"] & 0o077 == 0, rel
            if kind == "f":
                assert st["st_size"] == size
            assert view.listxattr(f"{base}/{rel}") == [SMB_XATTR_PREFIX + SD_XATTR]
            assert view.getxattr(f"{base}/{rel}", SMB_XATTR_PREFIX + SD_XATTR) == sd


def test_refused_logon_and_missing_share_fail_cleanly(env: Env) -> None:
    r = env.cli("restore", "--repo", env.repo, "-U", "root%wrong-password", "-p",
                str(env.samba.port), "latest", "--to", env.unc("restore", "nologon"), check=1)
    assert "STATUS_LOGON_FAILURE" in r.stderr, r.stderr
    r = env.restore("latest", "--to", env.unc("nosuchshare", "x"), check=1)
    assert "no such share" in r.stderr, r.stderr
    assert not (env.target / "nologon").exists()


def local_point(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A repository with one point of a local directory holding ``files``."""
    local = tmp_path / "local"
    for rel, data in files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    repo = tmp_path / "repo"
    init_repo(repo)
    with Repository(repo, "write", command="test") as r:
        run_backup(r, [LocalSource(local, "local")])
    return repo


def test_names_differing_only_in_case_are_never_written_over_each_other(
        env: Env, tmp_path: Path) -> None:
    files = {"A.txt": b"upper", "a.txt": b"lower", "sub/Inner.txt": b"nested",
             "sub/inner.TXT": b"n2", "Dir/one": b"1", "dir/two": b"2",
             "stra\u00dfe": b"sharp s", "STRASSE": b"not the same name on a share"}
    repo = local_point(tmp_path, files)
    for extra in ((), ("--overwrite",)):
        name = f"case{len(extra)}"
        proc = env.cli("restore", "--repo", repo, "-U", "root", "-p", str(env.samba.port),
                       "latest", "--path", "local", "--to", env.unc("restore", name),
                       "--json", *extra, check=3)
        report = json.loads(proc.stdout)
        skipped = {s["path"]: s["error"] for s in report["skipped"]}
        assert set(skipped) == {"local/a.txt", "local/sub/inner.TXT", "local/dir"}, skipped
        assert "differs only in case from 'A.txt'" in skipped["local/a.txt"]
        assert report["errors"] == [] and report["files"] == 5, report
        out = env.target / name
        # The first name of each pair, with its own data; ß and SS are two names.
        got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert got == {"A.txt": b"upper", "sub/Inner.txt": b"nested", "Dir/one": b"1",
                       "STRASSE": files["STRASSE"], "stra\u00dfe": b"sharp s"}, got


def test_existing_names_smbd_lists_mangled_are_found_before_writing(
        env: Env, tmp_path: Path) -> None:
    """smbd lists ``name.``, ``name `` and DOS device names under 8.3 names: the
    existence check opens them instead of trusting the listing."""
    odd = ["name.", "name ", "CON", "aux.txt"]
    repo = local_point(tmp_path, {**{n: b"from the point" for n in odd}, "plain": b"p"})
    out = env.target / "mangled"
    out.mkdir()
    for n in odd:
        (out / n).write_bytes(b"USER DATA")
    proc = env.cli("restore", "--repo", repo, "-U", "root", "-p", str(env.samba.port),
                   "latest", "--path", "local", "--to", env.unc("restore", "mangled"),
                   check=1)
    assert "4 target(s) already exist, nothing was restored" in proc.stderr, proc.stderr
    for n in odd:
        assert f"mangled\\{n} (exists)" in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(odd), "a refused restore wrote"
    assert all((out / n).read_bytes() == b"USER DATA" for n in odd)
    env.cli("restore", "--repo", repo, "-U", "root", "-p", str(env.samba.port), "latest",
            "--path", "local", "--to", env.unc("restore", "mangled"), "--overwrite")
    assert all((out / n).read_bytes() == b"from the point" for n in odd)
    assert (out / "plain").read_bytes() == b"p"


@pytest.mark.parametrize("second", [False, True], ids=["one-signal", "two-signals"])
def test_a_signal_during_a_large_file_removes_it_and_stops(
        env: Env, tmp_path: Path, second: bool) -> None:
    """SIGINT while a large file is being written (sent from the progress hook, so
    at a known moment; the real signal and handler): the file is removed from the
    share, the files before it stay whole, nothing after it is written; with a
    second SIGINT the restore stops at once (KeyboardInterrupt all the same)."""
    import signal

    from remotevss.backup.progress import Progress
    from remotevss.backup.signals import stop_at_safe_points
    from remotevss.backup.smb_restore import parse_target, restore_to_share

    big = rand("big", 24 << 20)
    repo = local_point(tmp_path, {"a-first": b"whole", "b-large": big, "c-after": b"late"})
    notes: list[str] = []

    class Interrupting(Progress):
        sent = 0

        def add_bytes(self, n: int) -> None:
            super().add_bytes(n)
            if n >= 1 << 20 and self.sent < 1 + second:  # inside the large file
                self.sent += 1
                os.kill(os.getpid(), signal.SIGINT)

    name = f"stopped{int(second)}"
    with env.session() as s, Repository(repo, "read") as r:
        with pytest.raises(KeyboardInterrupt), stop_at_safe_points(notes.append):
            restore_to_share(r, r.find_point("latest"), s,
                             parse_target(env.unc("restore", name)), "local",
                             progress=Interrupting(enabled=False))
        # The session is still usable: nothing was cut off in the middle of a message.
        assert sorted(e.name for e in SmbSource(s, "restore", "v").scandir(name)) == (
            ["a-first"] if not second else sorted(os.listdir(env.target / name)))
    out = env.target / name
    assert (out / "a-first").read_bytes() == b"whole"
    assert not (out / "c-after").exists()
    if not second:
        assert not (out / "b-large").exists(), "a partial file was left under its name"
        assert notes and "again to stop at once" in notes[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_read_only_share_restores_nothing_and_says_why(env: Env) -> None:
    r = env.restore("latest", "--to", env.unc("ro"), "--json", check=1)
    report = json.loads(r.stdout)
    assert report["files"] == 0 and report["dirs"] == 0
    with env.session() as s:
        files = sum(1 for v in smb_view(s, "data").values() if v[0] == "f")
    [err] = report["errors"]
    assert err["path"] == "data/"
    assert err["error"] == ("mkdir: Permission denied (STATUS_ACCESS_DENIED); "
                            f"the {files} files below it are not restored"), err
    r = env.restore("latest", "--to", env.unc("ro", "x"), check=1)
    assert "Permission denied (STATUS_ACCESS_DENIED): \\\\127.0.0.1\\ro\\x" in r.stderr, (
        r.stderr)
    assert "Unknown NtStatus" not in r.stderr


def test_exclude_patterns_apply_to_a_share_read_over_smb(env: Env, tmp_path: Path) -> None:
    """--exclude patterns and --exclude-caches on an SMB source: names at any depth,
    paths below the share's root and a tagged cache's contents are left out (the
    share listed, and the tag read, by the real smbd)."""
    from remotevss.backup.excludes import CACHEDIR_SIGNATURE, Excludes
    from remotevss.backup.restore import list_paths

    repo = tmp_path / "repo"
    init_repo(repo, encrypted=False)
    tagged, fake = env.source / "zz-cache", env.source / "zz-fake-cache"
    try:  # (removed again: the module's other tests compare the share with its point)
        for d, tag in ((tagged, CACHEDIR_SIGNATURE + b"\n"), (fake, b"no signature")):
            d.mkdir()
            (d / "CACHEDIR.TAG").write_bytes(tag)
            (d / "blob").write_bytes(b"cached")
        with env.session() as s, Repository(repo, "write", command="test") as r:
            run_backup(r, [SmbSource(s, "data", "data", security=False, excludes=Excludes(
                ["*.bin", "small/d1"], caches=True))])
        with env.session() as s:
            source = smb_view(s, "data")
    finally:
        shutil.rmtree(tagged, ignore_errors=True)
        shutil.rmtree(fake, ignore_errors=True)
    with Repository(repo, "read") as r:
        paths = set(list_paths(r, r.find_point("latest"), "data"))
    expected = {f"data/{k}" for k in source
                if not k.endswith(".bin") and k != "small/d1" and not k.startswith("small/d1/")
                and k != "zz-cache/blob"}
    assert "data/zz-cache/CACHEDIR.TAG" in paths and "data/zz-fake-cache/blob" in paths
    assert paths - {"data"} == expected
    assert "data/sparse.img" in paths and "data/small/d0" in paths
