"""`remotevss backup` refusing what it cannot do safely, and saying why, with real
processes and files:

* prune refuses a count below 1 and a duration of no time (exit 2; a negative
  --keep-last used to remove points), and names its errors in text mode;
* init refuses pack sizes outside 1 to 1024 MiB (exit 2);
* every verb takes --password-file (restore did not);
* check and verify call damage of config.json, a key file or index.sqlite
  damage (exit 4, the file named); other verbs keep exit 1;
* key remove names the whole id of the key it removed;
* with FUSE (root): a prune refused by a mount names the mount's pid, a dead
  mount's directory is named as stale, and the mount runs on libfuse 3 (also on
  a directory that is not empty).
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from remotevss.backup.packs import pack_path
from remotevss.backup.repo import Repository
from tests.support.backup_cli import CLI, cli, rand
from tests.support.backup_mount import Mount, mounted

PASSWORD = os.environ["REMOTEVSS_BACKUP_PASSWORD"]  # set by tests/conftest.py
FUSE_OK = os.geteuid() == 0 and Path("/dev/fuse").exists()
needs_fuse = pytest.mark.skipif(not FUSE_OK, reason="needs root and /dev/fuse (FUSE mount)")


def run_env(*args: str | Path, check: int | None = 0, unset: tuple[str, ...] = (),
            **env: str) -> subprocess.CompletedProcess[str]:
    """``remotevss backup ARGS`` with variables changed (``cli`` takes the test's own)."""
    environ = {k: v for k, v in os.environ.items() if k not in unset} | env
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=180, check=False, env=environ)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def point_ids(repo: Path) -> list[int]:
    return [p["id"] for p in json.loads(cli("list", "--repo", repo, "--json").stdout)]


@pytest.fixture
def two_points(tmp_path: Path) -> Path:
    """A repository with two points of a small tree."""
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}.bin").write_bytes(rand(f"f{i}", 3000))
    cli("init", "--repo", repo)
    cli("run", "--repo", repo, src)
    (src / "new.bin").write_bytes(rand("new", 5000))
    cli("run", "--repo", repo, src)
    return repo


# -- prune ------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [["--keep-last=-1"], ["--keep-last=-2"],
                                    ["--keep-last", "0"], ["--keep-within", "0d"],
                                    ["--keep-within", "0s"], ["--keep-last", "1",
                                                              "--keep-within", "0h"]])
def test_prune_refuses_keeping_nothing(two_points: Path, policy: list[str]) -> None:
    """A negative --keep-last was a slice from the end (it removed points), and a
    zero duration keeps no point: both are usage errors, and nothing goes."""
    proc = cli("prune", "--repo", two_points, *policy, check=2)
    option = policy[-2] if len(policy) > 1 else policy[0].split("=")[0]
    assert f"argument {option}" in proc.stderr, proc.stderr
    assert point_ids(two_points) == [1, 2]


def test_prune_names_its_errors_without_json(tmp_path: Path) -> None:
    """A pack prune must rewrite holds a damaged live blob: it is kept, and the
    text-mode command says why it exits 1 (it said nothing)."""
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(rand("big", 2 << 20))  # only in point 1
    (src / "small.bin").write_bytes(rand("small", 100_000))  # in both, same pack
    cli("init", "--repo", repo)
    cli("run", "--repo", repo, src)
    (src / "big.bin").unlink()
    cli("run", "--repo", repo, src)
    with Repository(repo, "read") as r:
        root = r.read_tree(r.find_point("latest").root)
        label = next(e for e in root if e["name"] == "src")
        small = next(e for e in r.read_tree(bytes.fromhex(label["subtree"]))
                     if e["name"] == "small.bin")
        loc = r.index.locate(bytes.fromhex(small["content"][0][2]))
    assert loc is not None
    path = pack_path(repo, loc.pack)
    data = bytearray(path.read_bytes())
    data[loc.entry.offset + loc.entry.stored_len // 2] ^= 0xFF
    path.write_bytes(data)

    proc = cli("prune", "--repo", repo, "--keep-last", "1", check=1)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("remotevss backup: prune: ")]
    assert len(lines) == 1 and f"pack {loc.pack} kept" in lines[0], proc.stderr
    assert "removed points [1]" in proc.stdout


def test_prune_says_how_many_leftover_packs_it_removed(two_points: Path) -> None:
    """A pack no index row names (left by an interrupted run) is deleted by prune;
    the summary said 'packs deleted 0' while one went."""
    some = next((two_points / "packs").glob("*/*.pack"))
    leftover = some.parent / ("0" * 32 + ".pack")
    shutil.copyfile(some, leftover)
    proc = cli("prune", "--repo", two_points, "--keep-last", "2")
    assert not leftover.exists()
    assert "1 leftover pack removed" in proc.stdout, proc.stdout
    assert point_ids(two_points) == [1, 2]
    cli("verify", "--repo", two_points)


# -- init -------------------------------------------------------------------------------
def test_init_takes_pack_sizes_of_1_to_1024_mib(tmp_path: Path) -> None:
    """-5 was stored as it was and 0 meant the default: both are refused now."""
    for size in ("-5", "0", "1025"):
        repo = tmp_path / f"repo{size}"
        proc = cli("init", "--repo", repo, f"--pack-size={size}", check=2)
        assert "argument --pack-size: must be 1 to 1024" in proc.stderr
        assert not (repo / "config.json").exists()
    for mib in (1, 1024):
        repo = tmp_path / f"repo{mib}"
        cli("init", "--repo", repo, "--pack-size", str(mib))
        assert json.loads((repo / "config.json").read_bytes())["pack_size"] == mib << 20


# -- --password-file ----------------------------------------------------------------------
def test_every_verb_takes_a_password_file() -> None:
    """As docs/backup.md says (restore refused it as an unrecognized argument)."""
    for verb in (["init"], ["run"], ["list"], ["restore"], ["mount"], ["verify"], ["check"],
                 ["prune"], ["copy"], ["key", "list"], ["key", "add"], ["key", "remove"],
                 ["key", "passwd"]):
        assert "--password-file" in cli(*verb, "--help").stdout, verb


def test_restore_reads_the_password_file(two_points: Path, tmp_path: Path) -> None:
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(PASSWORD + "\n")
    wrong.write_text("not it\n")
    out = tmp_path / "out"
    run_env("restore", "--repo", two_points, "latest", "--to", out, "--password-file", right,
            unset=("REMOTEVSS_BACKUP_PASSWORD",))
    assert (out / "src" / "new.bin").read_bytes() == rand("new", 5000)
    proc = run_env("restore", "--repo", two_points, "latest", "--to", tmp_path / "out2",
                   "--password-file", wrong, check=7)  # the file wins over the variable
    assert "wrong passphrase" in proc.stderr
    assert not (tmp_path / "out2").exists()


# -- check and verify ---------------------------------------------------------------------
def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(data)


@pytest.mark.parametrize("target", ["index.sqlite@4096", "index.sqlite@8192",
                                    "config.json@10", "keys@20"])
def test_check_and_verify_call_damaged_own_files_damage(two_points: Path, target: str) -> None:
    """'database disk image is malformed', a damaged config.json or the only key file
    is damage (exit 4, the file named) for check and verify; list still fails (1)."""
    name, offset = target.split("@")
    path = two_points / name
    if name == "keys":
        (path,) = path.glob("*.json")
        name = f"keys/{path.name}"
    _flip(path, int(offset))
    for verb in ("check", "verify"):
        proc = cli(verb, "--repo", two_points, check=4)
        assert name in proc.stderr, proc.stderr
    if name != "index.sqlite":  # (SQLite's own errors were exit 4 for every verb already)
        assert name in cli("list", "--repo", two_points, check=1).stderr


# -- key remove ---------------------------------------------------------------------------
def test_key_remove_names_the_whole_id(two_points: Path) -> None:
    added = run_env("key", "add", "--repo", two_points, "--json",
                    REMOTEVSS_BACKUP_NEW_PASSWORD="second passphrase")
    key_id = json.loads(added.stdout)["added"]
    proc = cli("key", "remove", "--repo", two_points, key_id[:6])
    assert proc.stdout.strip() == f"removed key {key_id}"
    assert key_id not in cli("key", "list", "--repo", two_points).stdout


# -- mount (FUSE) -------------------------------------------------------------------------
@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False)


@needs_fuse
def test_prune_refused_by_a_mount_names_it(two_points: Path, mnt: Path) -> None:
    m = Mount(two_points, mnt)
    try:
        proc = cli("prune", "--repo", two_points, "--keep-last", "1", check=5)
        assert f"locked by backup mount (pid {m.proc.pid} on " in proc.stderr, proc.stderr
    finally:
        code, err = m.stop()
        m.cleanup()
    assert code == 0, err
    assert not list((two_points / "locks").glob("*.reader*"))  # a clean end leaves no note
    cli("prune", "--repo", two_points, "--keep-last", "1")


@needs_fuse
def test_a_killed_mount_is_named_stale(two_points: Path, mnt: Path) -> None:
    m = Mount(two_points, mnt)
    m.proc.kill()
    m.proc.wait()
    assert mounted(mnt)  # the kernel keeps a dead FUSE mount until umount
    proc = cli("mount", two_points, mnt, check=1)
    assert (f"{mnt} is a stale FUSE mount (its process ended); run `umount {mnt}` (or "
            f"`fusermount3 -u {mnt}`) first") in proc.stderr, proc.stderr
    assert "Errno" not in proc.stderr
    subprocess.run(["umount", str(mnt)], check=True)
    again = Mount(two_points, mnt)  # and the killed one's note is not named any more
    try:
        held = cli("prune", "--repo", two_points, "--keep-last", "1", check=5).stderr
        assert f"pid {again.proc.pid} " in held and f"pid {m.proc.pid} " not in held, held
    finally:
        code, err = again.stop()
        again.cleanup()
    assert code == 0, err


@needs_fuse
@pytest.mark.skipif(ctypes.util.find_library("fuse3") is None, reason="no libfuse3")
def test_the_mount_runs_on_libfuse3(two_points: Path, mnt: Path) -> None:
    """mfusepy preferred libfuse.so.2 when installed too; the mount maps libfuse 3,
    which mounts on a directory that is not empty (hiding what it holds meanwhile)."""
    (mnt / "kept.txt").write_text("under the mount")
    m = Mount(two_points, mnt)
    try:
        maps = Path(f"/proc/{m.proc.pid}/maps").read_text()
        assert "libfuse3.so.3" in maps and "libfuse.so.2" not in maps
        assert sorted(os.listdir(mnt)) == ["by-time", "latest", "points"]
    finally:
        code, err = m.stop()
        m.cleanup()
    assert code == 0, err
    assert f"mounted {two_points} on {mnt} (read-only)" in err, err
    assert (mnt / "kept.txt").read_text() == "under the mount"
    # The variable that chose the library was set for mfusepy's import only.
    probe = subprocess.run(
        [sys.executable, "-c", "import os; from remotevss.backup.mount import _mfusepy; "
         "print(_mfusepy()._libfuse_path, os.environ.get('FUSE_LIBRARY_PATH'))"],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "FUSE_LIBRARY_PATH"})
    assert probe.stdout.split() == [ctypes.util.find_library("fuse3"), "None"]

