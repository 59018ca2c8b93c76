"""Encryption at rest: nothing readable without the passphrase, wrong passphrases change
nothing, keys come and go, a flipped byte anywhere is found and named, and repositories
of format 1 (made by the code before encryption) still restore every point.

All on the test's temporary directory; real CLI processes where the exit code and
message matter, the library where hundreds of flips are tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import blake3
import pytest

from remotevss.backup.backup import local_sources, run_backup
from remotevss.backup.index import Index
from remotevss.backup.packs import FOOTER, HEADER, TREE, pack_path
from remotevss.backup.repo import RepoError, Repository, WrongPassphrase, init_repo
from remotevss.backup.restore import restore
from remotevss.backup.verify import check, verify

CLI = [sys.executable, "-m", "remotevss.backup.cli"]
PASS = "correct horse battery staple"
V1_REPO = Path(__file__).parent.parent / "data" / "backup_v1" / "repo.tgz"
SECRET_TEXT = b"the quarterly figures are in the salary spreadsheet\n"


def cli(*args: str | Path, check: int | None = 0, env: dict[str, str] | None = None,
        password: str | None = PASS, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, **(env or {}))
    full.pop("REMOTEVSS_BACKUP_PASSWORD", None)
    if password is not None:
        full["REMOTEVSS_BACKUP_PASSWORD"] = password
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120,
                          check=False, env=full, input=stdin)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def rand(seed: str, n: int) -> bytes:
    return blake3.blake3(seed.encode()).digest(length=n)


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: size, mtime, digest (to prove nothing was written)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns,
                                             hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def make_source(root: Path) -> None:
    (root / "finance" / "2026").mkdir(parents=True)
    (root / "finance" / "2026" / "salary-spreadsheet-q4.txt").write_bytes(SECRET_TEXT * 2000)
    (root / "finance" / "random.bin").write_bytes(rand("r", 700_000))
    for i in range(20):
        (root / f"note-{i}.txt").write_bytes(b"note %d\n" % i * (i + 1))


# --- confidentiality -------------------------------------------------------------------

def test_repository_reveals_no_names_contents_or_plain_ids(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_source(src)
    plain_ids = [blake3.blake3(SECRET_TEXT * 2000).digest(),
                 blake3.blake3(b"note 5\n" * 6).digest()]  # whole small files: one chunk each
    needles = [b"salary-spreadsheet", b"finance", b"payroll-share", SECRET_TEXT[:24],
               *plain_ids, *(i.hex().encode() for i in plain_ids)]

    def found(repo: Path) -> set[bytes]:
        blob = b"".join(p.read_bytes() for p in repo.rglob("*") if p.is_file())
        return {n for n in needles if n in blob}

    enc = tmp_path / "enc"
    cli("init", "--repo", enc, "--pack-size", "1")
    cli("run", f"payroll-share={src}", "--repo", enc, "--meta", "note=payroll-share")
    assert found(enc) == set()
    with Repository(enc) as r:  # ...yet everything is there for the key holder
        assert r.codec.encrypted and r.points()[0].meta == {"note": "payroll-share"}
        assert r.blob_id(SECRET_TEXT * 2000) not in plain_ids
    out = tmp_path / "out"
    cli("restore", "latest", "--repo", enc, "--to", out)
    assert (out / "payroll-share/finance/2026/salary-spreadsheet-q4.txt").read_bytes() == \
        SECRET_TEXT * 2000

    # The same run into an unencrypted repository shows what the test looks for.
    plain = tmp_path / "plain"
    cli("init", "--repo", plain, "--unencrypted", password=None)
    cli("run", f"payroll-share={src}", "--repo", plain, password=None)
    assert {b"salary-spreadsheet", b"payroll-share", plain_ids[0]} <= found(plain)


def test_chunk_boundaries_depend_on_the_repository_secret(tmp_path: Path) -> None:
    """Chunk lengths of a known file would fingerprint it: each repository cuts its own."""
    data = rand("big", 6 << 20)
    cuts = []
    for name in ("a", "b"):
        init_repo(tmp_path / name, passphrase=PASS)
        with Repository(tmp_path / name, passphrase=PASS) as r:
            cuts.append([c.length for c in r.chunker.make().cut_buf(data)])
    plain = [c.length for c in
             init_repo(tmp_path / "p", encrypted=False).chunker.make().cut_buf(data)]
    assert cuts[0] != cuts[1] and plain not in cuts


# --- passphrases ---------------------------------------------------------------------------

def test_wrong_or_missing_passphrase_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_source(src)
    repo = tmp_path / "repo"
    cli("init", "--repo", repo)
    cli("run", f"data={src}", "--repo", repo)
    before = snapshot(repo)
    for args in (["list"], ["run", f"data={src}"], ["prune", "--keep-last", "1"], ["check"],
                 ["verify"], ["restore", "latest", "--to", tmp_path / "out"],
                 ["key", "add"], ["key", "list"]):
        proc = cli(*args, "--repo", repo, password="not the passphrase", check=7)
        assert "wrong passphrase" in proc.stderr and "nothing was changed" in proc.stderr
        assert snapshot(repo) == before, args
        proc = cli(*args, "--repo", repo, password=None, check=1)  # no terminal to ask on
        assert "REMOTEVSS_BACKUP_PASSWORD" in proc.stderr, proc.stderr
        assert snapshot(repo) == before, args
    assert not (tmp_path / "out").exists()
    pw = tmp_path / "pw"
    pw.write_text(PASS + "\n")
    assert "1 points: ok" in cli("check", "--repo", repo, "--password-file", pw,
                                 password=None).stdout


def test_unencrypted_only_when_asked(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    proc = cli("init", "--repo", repo, password=None, check=1)
    assert "--unencrypted" in proc.stderr or "passphrase" in proc.stderr
    assert not repo.exists() or not any(repo.iterdir())
    with pytest.raises(RepoError, match="needs a passphrase"):
        init_repo(repo, passphrase="")
    cli("init", "--repo", repo, "--unencrypted", password=None)
    assert json.loads((repo / "config.json").read_text())["encryption"] == "none"
    assert cli("list", "--repo", repo, password=None).returncode == 0
    # config.json altered to say "none" on an encrypted repository: refused
    enc = tmp_path / "enc"
    init_repo(enc, passphrase=PASS)
    (enc / "config.json").write_bytes((repo / "config.json").read_bytes())
    with pytest.raises(RepoError, match="altered"):
        Repository(enc, passphrase=PASS)


def test_keys_add_list_remove_passwd(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_source(src)
    repo = tmp_path / "repo"
    cli("init", "--repo", repo)
    cli("run", f"data={src}", "--repo", repo)
    new = {"REMOTEVSS_BACKUP_NEW_PASSWORD": "second passphrase"}
    added = json.loads(cli("key", "add", "--repo", repo, "--json", env=new).stdout)["added"]
    keys = json.loads(cli("key", "list", "--repo", repo, "--json").stdout)
    assert len(keys) == 2 and [k["current"] for k in keys].count(True) == 1
    second = cli("list", "--repo", repo, "--json", password="second passphrase")
    assert len(json.loads(second.stdout)) == 1  # the same data opens with either
    proc = cli("key", "remove", added, "--repo", repo, password="second passphrase", check=1)
    assert "the one this passphrase opened" in proc.stderr
    first = next(k["id"] for k in keys if k["current"])
    cli("key", "remove", first, "--repo", repo, password="second passphrase")
    cli("list", "--repo", repo, check=7)  # the first passphrase no longer opens it
    proc = cli("key", "remove", added, "--repo", repo, password="second passphrase", check=1)
    assert "the one this passphrase opened" in proc.stderr
    cli("key", "passwd", "--repo", repo, password="second passphrase",
        env={"REMOTEVSS_BACKUP_NEW_PASSWORD": "third"})
    cli("list", "--repo", repo, password="second passphrase", check=7)
    keys = json.loads(cli("key", "list", "--repo", repo, "--json", password="third").stdout)
    assert len(keys) == 1 and keys[0]["id"] not in (first, added)
    assert cli("check", "--repo", repo, password="third").returncode == 0
    assert oct((repo / "keys" / f"{keys[0]['id']}.json").stat().st_mode & 0o777) == "0o600"


# --- tampering -------------------------------------------------------------------------------

def _two_points(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    make_source(src)
    repo = tmp_path / "repo"
    init_repo(repo, pack_size=1 << 19, passphrase=PASS)
    for gen in range(2):
        (src / "finance" / f"gen{gen}").write_bytes(rand(f"gen{gen}", 200_000))
        with Repository(repo, "write", passphrase=PASS) as r:
            run_backup(r, local_sources([f"data={src}"]))
    con = sqlite3.connect(repo / "index.sqlite")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return repo, src


def _flip(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x01]))


def test_a_flipped_byte_anywhere_in_a_pack_is_found_and_named(tmp_path: Path) -> None:
    repo, _src = _two_points(tmp_path)
    rnd = random.Random(16)
    with Repository(repo, passphrase=PASS) as r:
        assert verify(r).ok
        packs = sorted((repo / "packs").rglob("*.pack"))
        assert len(packs) >= 3
        tried = 0
        for path in packs:
            size = path.stat().st_size
            positions = {*range(HEADER.size), *range(size - FOOTER.size, size),
                         *(rnd.randrange(HEADER.size, size - FOOTER.size) for _ in range(40))}
            for pos in sorted(positions):
                _flip(path, pos)
                report = verify(r)
                _flip(path, pos)
                tried += 1
                assert not report.ok, (path.name, pos)
                assert any(path.name.removesuffix(".pack") in e for e in report.errors), (
                    pos, report.errors)
        assert verify(r).ok
    assert tried > 300


def test_a_flipped_byte_in_a_tree_names_the_directory(tmp_path: Path) -> None:
    repo, _src = _two_points(tmp_path)
    with Repository(repo, passphrase=PASS) as r:
        sub = next(e for e in r.read_tree(r.points()[0].root))
        tid = bytes.fromhex(sub["subtree"])
        loc = r.index.locate(tid)
        assert loc is not None and loc.entry.type == TREE
        _flip(pack_path(repo, loc.pack), loc.entry.offset + 20)
        report = verify(r)
        # point 2 changed below data/, so only point 1 uses this tree
        assert [(a["point"], a["path"], a["what"]) for a in report.affected] == [
            (1, "data", "directory listing")]
        assert any("does not authenticate" in e for e in report.errors)


def test_a_flipped_byte_in_a_key_file_or_config_is_named(tmp_path: Path) -> None:
    repo, _src = _two_points(tmp_path)
    key = next((repo / "keys").glob("*.json"))
    for path, name in ((key, f"keys/{key.name}"), (repo / "config.json", "config.json")):
        for pos in range(path.stat().st_size):
            _flip(path, pos)
            with pytest.raises(RepoError) as info:
                Repository(repo, passphrase=PASS)
            _flip(path, pos)
            assert name in str(info.value) and "damaged" in str(info.value), (pos, info.value)
    # With a second, intact key the repository still opens and check names the bad one.
    with Repository(repo, passphrase=PASS) as r:
        from remotevss.backup.keys import add_key
        add_key(repo, r.codec, "other", r.config.repo_id,  # type: ignore[arg-type]
                blake3.blake3((repo / "config.json").read_bytes()).hexdigest())
    other = next(p for p in (repo / "keys").glob("*.json") if p != key)
    _flip(other, 30)
    with Repository(repo, passphrase=PASS) as r:
        assert any(f"keys/{other.name} is damaged" in e for e in check(r).errors)


def _logical(path: Path) -> list[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        # sqlite_sequence only decides the next point number: not repository content.
        return [line for line in con.iterdump() if "sqlite_sequence" not in line]
    finally:
        con.close()


def test_a_flipped_byte_in_the_index_is_found_or_changes_nothing(tmp_path: Path) -> None:
    """Any flip is either found (by opening or check, naming the index) or lands where
    SQLite keeps nothing the repository means (free space, unused header fields)."""
    repo, _src = _two_points(tmp_path)
    index = repo / "index.sqlite"
    original = _logical(index)
    size = index.stat().st_size
    rnd = random.Random(7)
    positions = sorted({*range(0, 100), *(rnd.randrange(size) for _ in range(400))})
    found = harmless = 0
    with Repository(repo, passphrase=PASS) as r:
        for pos in positions:
            _flip(index, pos)
            try:
                r.index.close()
                r.index = Index(index, readonly=True, codec=r.codec)
                errors = check(r).errors
            except (ValueError, sqlite3.DatabaseError, RepoError) as exc:
                errors = [f"index: {exc}"]
            if errors:
                assert any("index" in e for e in errors), (pos, errors)
                found += 1
            else:
                assert _logical(index) == original, pos
                harmless += 1
            _flip(index, pos)
        r.index.close()
        r.index = Index(index, readonly=True, codec=r.codec)
        assert check(r).ok
    print(f"index flips: {found} found, {harmless} harmless")
    assert found > len(positions) // 10


def test_a_damaged_files_cache_row_is_reread_not_trusted(tmp_path: Path) -> None:
    repo, src = _two_points(tmp_path)
    con = sqlite3.connect(repo / "index.sqlite")
    # Every row: a directory's files rows and the row with its listing digest (which
    # alone would let an unchanged directory be skipped without opening the other).
    rows = con.execute("SELECT source, dir, sealed FROM files_cache").fetchall()
    assert len(rows) >= 2
    for s, d, sealed in rows:
        con.execute("UPDATE files_cache SET sealed=? WHERE source=? AND dir=?",
                    (sealed[:-1] + bytes([sealed[-1] ^ 1]), s, d))
    con.commit()
    con.close()
    with Repository(repo, passphrase=PASS) as r:
        assert any("files-cache row" in e for e in check(r).errors)
    with Repository(repo, "write", passphrase=PASS) as r:
        point = run_backup(r, local_sources([f"data={src}"]))
    assert point.stats["bytes_read"] > 0  # its files were read again
    assert point.stats["cache_hits"] == 0 and point.stats["trees_reused"] == 0
    with Repository(repo, passphrase=PASS) as r:
        assert check(r).ok  # and its row rewritten


# --- format 1 ----------------------------------------------------------------------------------

def _v1_expected() -> dict[str, bytes]:
    """What tests/data/backup_v1/make.py put in the source of each point."""
    big = rand("big", 40_000) + b"".join(b"line %d of the big v1 file\n" % i
                                         for i in range(30000))
    base = {"big.bin": big, "sub/small.txt": b"hello v1\n" * 100,
            "sub/gen1.bin": rand("gen1", 50_000)}
    return base


def _tree(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def test_format_1_repository_keeps_every_point_and_takes_new_ones(tmp_path: Path) -> None:
    with tarfile.open(V1_REPO) as tar:
        tar.extractall(tmp_path)  # our own fixture
    repo = tmp_path / "repo"
    assert json.loads((repo / "config.json").read_text())["version"] == 1
    listing = json.loads(cli("list", "--repo", repo, "--json", password=None).stdout)
    assert [(p["id"], p["meta"]) for p in listing] == [(1, {"gen": "1"}), (2, {"gen": "2"})]
    assert cli("verify", "--repo", repo, password=None).returncode == 0
    expected = _v1_expected()
    for point in (1, 2):
        out = tmp_path / f"out{point}"
        cli("restore", str(point), "--repo", repo, "--path", "data", "--to", out, password=None)
        want: dict[str, Any] = {**expected, "link": ("link", "sub/small.txt")}
        if point == 2:
            want["sub/gen2.bin"] = rand("gen2", 50_000)
        assert _tree(out) == want
        assert os.getxattr(out / "sub/small.txt", "user.note") == b"v1 xattr"
        assert (out / "big.bin").stat().st_mtime_ns == 1_600_000_000_000_000_000 + point
    # New points go in as format 1 (unencrypted), old ones stay, prune works.
    src = tmp_path / "src"
    make_source(src)
    cli("run", f"data={src}", "--repo", repo, password=None)
    with Repository(repo, "read", passphrase="ignored: format 1 has no keys") as r:
        assert not r.codec.encrypted and r.config.version == 1
        assert len(r.points()) == 3
        out = tmp_path / "out3"
        assert not restore(r, r.points()[-1], out, "data").errors
    assert _tree(out) == _tree(src)
    cli("prune", "--repo", repo, "--keep-last", "2", password=None)
    assert cli("check", "--repo", repo, password=None).returncode == 0
    assert [p["id"] for p in json.loads(cli("list", "--repo", repo, "--json",
                                            password=None).stdout)] == [2, 3]


def test_wrong_passphrase_error_type(tmp_path: Path) -> None:
    init_repo(tmp_path / "r", passphrase=PASS)
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        Repository(tmp_path / "r", passphrase="nope")
    assert not list((tmp_path / "r" / "locks").iterdir())


def test_format_1_points_copy_into_an_encrypted_repository(tmp_path: Path) -> None:
    with tarfile.open(V1_REPO) as tar:
        tar.extractall(tmp_path)  # our own fixture
    old, new = tmp_path / "repo", tmp_path / "new"
    before = json.loads(cli("list", "--repo", old, "--json", password=None).stdout)
    cli("init", "--repo", new)
    res = json.loads(cli("copy", "--from", old, "--repo", new, "--json").stdout)
    assert len(res["copied"]) == 2 and res["skipped"] == []
    after = json.loads(cli("list", "--repo", new, "--json").stdout)
    assert [(p["uuid"], p["time_ns"], p["meta"], p["stats"]) for p in after] == [
        (p["uuid"], p["time_ns"], p["meta"], p["stats"]) for p in before]
    assert cli("verify", "--repo", new).returncode == 0
    for point, extra in ((1, {}), (2, {"sub/gen2.bin": rand("gen2", 50_000)})):
        out = tmp_path / f"out{point}"
        cli("restore", str(point), "--repo", new, "--path", "data", "--to", out)
        assert _tree(out) == {**_v1_expected(), "link": ("link", "sub/small.txt"), **extra}
        assert os.getxattr(out / "sub/small.txt", "user.note") == b"v1 xattr"
    with Repository(new, passphrase=PASS) as r:
        assert r.codec.encrypted
    again = json.loads(cli("copy", "--from", old, "--repo", new, "--json").stdout)
    assert again["copied"] == [] and len(again["skipped"]) == 2  # resumable, idempotent
    # An encrypted source needs its own passphrase.
    other = tmp_path / "other"
    cli("init", "--repo", other, password="other pass")
    proc = cli("copy", "--from", other, "--repo", new, check=7,
               env={"REMOTEVSS_BACKUP_FROM_PASSWORD": "wrong"})
    assert "wrong passphrase" in proc.stderr
    cli("copy", "--from", other, "--repo", new, env={"REMOTEVSS_BACKUP_FROM_PASSWORD":
                                                     "other pass"})


def test_crafted_key_file_cannot_demand_huge_kdf_memory(tmp_path: Path) -> None:
    """A key file is input: its scrypt parameters are bounded before any allocation."""
    from remotevss.backup.keys import dump_checked, load_checked

    repo = tmp_path / "r"
    init_repo(repo, passphrase=PASS)
    key = next((repo / "keys").glob("*.json"))
    doc = load_checked(key.read_bytes(), "key")
    for kdf in ({"name": "scrypt", "n": 1 << 20, "r": 32, "p": 1},  # 4 GiB
                {"name": "scrypt", "n": 3, "r": 8, "p": 1},
                {"name": "argon2", "n": 1 << 16, "r": 8, "p": 1}):
        key.write_bytes(dump_checked({**doc, "kdf": kdf}))
        with pytest.raises(RepoError, match="unsupported key derivation parameters"):
            Repository(repo, passphrase=PASS)
