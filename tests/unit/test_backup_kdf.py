"""The passphrase's scrypt started ahead (backup/kdf.py) and the command line's start-up.

Why: every command on an encrypted repository pays ~0.3 s of scrypt; the
command line starts it before the repository's modules load, and builds only
the ``backup`` verb's parser, so those imports run beside it.  These tests
hold what that may not change: the same key bytes, nothing derived twice,
crafted or damaged key files met exactly as before, and the modules a backup
command no longer loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remotevss.backup import kdf, keys
from remotevss.backup.repo import RepoError, Repository, init_repo

FAST = {"name": "scrypt", "n": 1 << 10, "r": 8, "p": 1}


def _first_key(repo: Path) -> Path:
    return sorted((repo / "keys").glob("*.json"))[0]


def test_a_derivation_started_ahead_gives_the_same_key_once(tmp_path: Path) -> None:
    init_repo(tmp_path / "r", passphrase="right", kdf=FAST)
    doc = json.loads(_first_key(tmp_path / "r").read_bytes())
    salt = keys._b64(doc, "salt", "k")
    expect = kdf.derive_now("right", salt, 1 << 10, 8, 1)

    asked: list[int] = []
    kdf.start(tmp_path / "r", lambda: asked.append(1) or "right")  # type: ignore[func-returns-value]
    assert asked == [1] and len(kdf._ahead) == 1
    # Another passphrase does not take it; the same one does, and only once.
    assert kdf.derive("wrong", salt, 1 << 10, 8, 1) != expect
    assert kdf.derive("right", salt, 1 << 10, 8, 1) == expect
    assert kdf._ahead == {}
    with Repository(tmp_path / "r", "read", passphrase="right") as repo:
        assert repo.codec.encrypted


def test_nothing_is_started_for_plain_crafted_or_damaged_key_files(tmp_path: Path) -> None:
    def never() -> str:
        raise AssertionError("the passphrase was asked for")

    init_repo(tmp_path / "plain", encrypted=False)
    kdf.start(tmp_path / "plain", never)  # no key file: not even the passphrase is read
    kdf.start(tmp_path / "missing", never)

    init_repo(tmp_path / "r", passphrase="p", kdf=FAST)
    path = _first_key(tmp_path / "r")
    doc = json.loads(path.read_bytes())
    doc["kdf"] = {"name": "scrypt", "n": 1 << 22, "r": 8, "p": 1}  # 4 GiB: refused
    path.write_bytes(json.dumps(doc).encode())
    kdf.start(tmp_path / "r", lambda: "p")
    path.write_bytes(b"{not json")
    kdf.start(tmp_path / "r", lambda: "p")
    assert kdf._ahead == {}
    with pytest.raises(RepoError, match="is damaged"):
        Repository(tmp_path / "r", "read", passphrase="p")


PROBE = r"""
import hashlib, sys, threading
calls = []
real = hashlib.scrypt
def scrypt(*a, **k):
    calls.append(threading.current_thread().name)
    return real(*a, **k)
hashlib.scrypt = scrypt
import remotevss.cli as cli
rc = cli.main(["backup", "list", "--repo", sys.argv[1]])
print(rc, calls)
print(sorted(m for m in sys.modules if m == "asyncio" or m.startswith(
    ("remotevss.agent", "remotevss.client.cli.commands", "remotevss.setup", "impacket"))))
"""


def test_a_backup_command_derives_once_ahead_and_loads_no_agent_modules(
        tmp_path: Path) -> None:
    init_repo(tmp_path / "r", passphrase="secret")
    env = {**os.environ, "REMOTEVSS_BACKUP_PASSWORD": "secret"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "r")], env=env,
                          capture_output=True, text=True, check=True, timeout=120)
    lines = done.stdout.splitlines()
    assert lines[-2] == "0 ['rvss-kdf']", done.stderr
    assert lines[-1] == "[]"

    env["REMOTEVSS_BACKUP_PASSWORD"] = "wrong"  # still told apart, nothing changed
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "r")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[0] == "7 ['rvss-kdf']", done.stderr
    assert "wrong passphrase" in done.stderr


def _drain() -> list[tuple[str, bytes, int, int, int]]:
    """The derivations started ahead (their threads ended), forgotten."""
    with kdf._lock:
        jobs = dict(kdf._ahead)
        kdf._ahead.clear()
    for job in jobs.values():
        job.thread.join()
    return list(jobs)


def test_the_command_line_starts_the_derivation_before_it_is_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "r"
    init_repo(repo, passphrase="right", kdf=FAST)
    salt = keys._b64(json.loads(_first_key(repo).read_bytes()), "salt", "k")
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\nsecond line\n")
    monkeypatch.delenv(kdf.REPO_ENV, raising=False)
    monkeypatch.setenv(kdf.PASSWORD_ENV, "right")

    kdf.start_from_argv(["run", "--repo", str(repo), "data=/srv"])
    assert _drain() == [("right", salt, 1 << 10, 8, 1)]
    kdf.start_from_argv(["list", f"--repo={repo}", "--json"])
    assert _drain() == [("right", salt, 1 << 10, 8, 1)]
    kdf.start_from_argv(["restore", "--password-file", str(secret_file), "--repo", str(repo),
                         "latest", "--to", str(tmp_path / "out")])
    assert _drain() == [("from-file", salt, 1 << 10, 8, 1)]
    monkeypatch.setenv(kdf.REPO_ENV, str(repo))
    kdf.start_from_argv(["check"])
    # The one started ahead is the one the command then takes.
    assert kdf.derive("right", salt, 1 << 10, 8, 1) == kdf.derive_now("right", salt, 1 << 10, 8, 1)
    assert kdf._ahead == {}


@pytest.mark.parametrize("argv", [
    ["init", "--repo", "{repo}"],  # creates the key: nothing to derive ahead
    ["key", "list", "--repo", "{repo}"],
    ["run", "--rep", "{repo}", "d=/srv"],  # argparse would expand it: not guessed here
    ["run", "--repo", "{repo}", "--repo", "{repo}", "d=/srv"],
    ["run", "--", "--repo", "{repo}"],
    ["run", "--repo", "{repo}", "--password-file", "{repo}/missing"],
    ["run", "--repo", "{repo}", "--password-file", "{repo}/config.json"],  # no passphrase line
    ["run", "--repo", "{repo}/elsewhere", "d=/srv"],
])
def test_the_command_line_read_early_starts_nothing_it_cannot_be_sure_of(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    repo = tmp_path / "r"
    init_repo(repo, passphrase="right", kdf=FAST)
    (repo / "config.json").write_bytes(b"\n" + (repo / "config.json").read_bytes())
    monkeypatch.delenv(kdf.REPO_ENV, raising=False)
    monkeypatch.setenv(kdf.PASSWORD_ENV, "right")
    kdf.start_from_argv([a.format(repo=repo) for a in argv])
    assert _drain() == []


def test_no_passphrase_no_early_derivation(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    init_repo(tmp_path / "r", passphrase="right", kdf=FAST)
    monkeypatch.delenv(kdf.PASSWORD_ENV, raising=False)  # the prompt comes later, if at all
    kdf.start_from_argv(["run", "--repo", str(tmp_path / "r"), "d=/srv"])
    assert _drain() == []


def test_malloc_is_tuned_without_a_child_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc takes the settings; libc is found among the process's own symbols
    (``ctypes.util.find_library`` ran ``ldconfig -p`` in a child at every start)."""
    from remotevss.backup import memory

    def no_child(*_a: object, **_k: object) -> None:
        raise AssertionError("a child process was started")

    monkeypatch.setattr(subprocess, "Popen", no_child)
    monkeypatch.setattr(os, "posix_spawn", no_child)
    assert memory.tune_malloc()
