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
