"""Key files: the repository's master secret, wrapped once per passphrase.

Why wrapped keys: the master secret encrypts everything and never changes
(re-encrypting a repository is a full rewrite), while passphrases do; each
``keys/<id>.json`` holds the secret sealed under a key derived from one
passphrase, so a passphrase is added, changed or revoked by writing or
deleting one small file.

Rules:
- The KDF is scrypt (memory-hard), N=2^16, r=8, p=2 by default: 64 MiB and
  ~0.3 s per try, so a backup's peak memory stays within budget; the
  parameters are stored per key and bounded when read (a crafted key file
  must not make us allocate gigabytes).
- The wrapped payload also carries the digest of ``config.json``, so a
  config changed after ``init`` (e.g. "encryption": "none") is refused.
- Key files and ``config.json`` are canonical JSON with a blake3 checksum
  field: any changed byte is reported as damage of that named file, apart
  from a wrong passphrase (which is what a failing unwrap of an intact file
  means).
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from remotevss.backup import kdf as kdfmod
from remotevss.backup.crypto import CIPHER_NAME, MASTER_LEN, NONCE, Keys
from remotevss.backup.packs import fsync_dir

KEYS_DIR = "keys"
KEY_VERSION = 1
DEFAULT_KDF: dict[str, Any] = {"name": "scrypt", "n": 1 << 16, "r": 8, "p": 2}
MAX_KEY_FILE = kdfmod.MAX_KEY_FILE


class KeyProblem(Exception):
    """A key file or the passphrase does not open the repository."""


class WrongPassphrase(KeyProblem):
    """No key file of the repository opens with the passphrase."""


class DamagedFile(KeyProblem):
    """A key file or config.json is not byte-for-byte what was written."""


# -- canonical, checksummed JSON ----------------------------------------------------------
def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def dump_checked(doc: dict[str, Any]) -> bytes:
    """``doc`` plus a ``checksum`` field over the rest, one line of canonical JSON."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return canonical({**body, "checksum": blake3.blake3(canonical(body)).hexdigest()}) + b"\n"


def load_checked(raw: bytes, what: str) -> dict[str, Any]:
    """Parse what ``dump_checked`` wrote; any other byte sequence is damage of ``what``."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise DamagedFile(f"{what} is damaged (not valid JSON)") from None
    if not isinstance(doc, dict) or "checksum" not in doc:
        raise DamagedFile(f"{what} is damaged (no checksum)")
    if dump_checked(doc) != raw:
        raise DamagedFile(f"{what} is damaged (checksum mismatch)")
    return doc


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode),
              "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(path.parent)


# -- wrapping -------------------------------------------------------------------------------
def _kdf(passphrase: str, kdf: dict[str, Any], salt: bytes) -> bytes:
    params = kdfmod.bounded(kdf, salt)
    if params is None:
        raise DamagedFile(f"unsupported key derivation parameters {kdf}")
    return kdfmod.derive(passphrase, salt, *params)


def _aad(repo_id: str, key_id: str) -> bytes:
    return f"remotevss-backup key\0{repo_id}\0{key_id}".encode()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    created: str
    host: str
    user: str
    path: Path


def make_key(master: bytes, passphrase: str, repo_id: str, config_digest: str,
             kdf: dict[str, Any] | None = None) -> dict[str, Any]:
    """A key-file document wrapping ``master`` under ``passphrase``."""
    if not passphrase:
        raise ValueError("the passphrase must not be empty")
    kdf = dict(kdf or DEFAULT_KDF)
    key_id = os.urandom(8).hex()
    salt = os.urandom(16)
    nonce = os.urandom(NONCE)
    payload = canonical({"master": base64.b64encode(master).decode(), "config": config_digest})
    wrapped = AESGCM(_kdf(passphrase, kdf, salt)).encrypt(nonce, payload, _aad(repo_id, key_id))
    return {"v": KEY_VERSION, "id": key_id, "repo": repo_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(), "user": _user(), "kdf": kdf,
            "salt": base64.b64encode(salt).decode(), "cipher": CIPHER_NAME,
            "nonce": base64.b64encode(nonce).decode(),
            "wrapped": base64.b64encode(wrapped).decode()}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _b64(doc: dict[str, Any], field: str, what: str) -> bytes:
    try:
        return base64.b64decode(str(doc[field]), validate=True)
    except (KeyError, ValueError):
        raise DamagedFile(f"{what} is damaged (field {field})") from None


def unwrap(doc: dict[str, Any], passphrase: str, repo_id: str, what: str
           ) -> tuple[bytes, str] | None:
    """(master, config digest), or None when the passphrase is not this key's."""
    if (doc.get("v") != KEY_VERSION or doc.get("cipher") != CIPHER_NAME
            or doc.get("repo") != repo_id or not isinstance(doc.get("kdf"), dict)):
        raise DamagedFile(f"{what} does not belong to this repository or is of an unknown kind")
    salt, nonce, wrapped = (_b64(doc, f, what) for f in ("salt", "nonce", "wrapped"))
    if len(nonce) != NONCE:
        raise DamagedFile(f"{what} is damaged (nonce)")
    kek = _kdf(passphrase, doc["kdf"], salt)
    try:
        payload = AESGCM(kek).decrypt(nonce, wrapped, _aad(repo_id, str(doc["id"])))
    except InvalidTag:
        return None
    data = json.loads(payload)
    master = base64.b64decode(data["master"])
    if len(master) != MASTER_LEN:
        raise DamagedFile(f"{what}: bad master secret length")
    return master, str(data["config"])


# -- the keys/ directory --------------------------------------------------------------------
def key_path(repo: Path, key_id: str) -> Path:
    return repo / KEYS_DIR / f"{key_id}.json"


def read_key_file(path: Path) -> dict[str, Any]:
    what = f"key file {KEYS_DIR}/{path.name}"
    with open(path, "rb") as f:
        raw = f.read(MAX_KEY_FILE + 1)
    if len(raw) > MAX_KEY_FILE:
        raise DamagedFile(f"{what} is damaged (too large)")
    doc = load_checked(raw, what)
    if doc.get("id") != path.name.removesuffix(".json"):
        raise DamagedFile(f"{what} is damaged (names key {doc.get('id')!r})")
    return doc


def key_files(repo: Path) -> list[Path]:
    d = repo / KEYS_DIR
    return sorted(d.glob("*.json")) if d.is_dir() else []


def list_keys(repo: Path) -> list[KeyInfo | DamagedFile]:
    out: list[KeyInfo | DamagedFile] = []
    for path in key_files(repo):
        try:
            doc = read_key_file(path)
        except DamagedFile as exc:
            out.append(exc)
            continue
        out.append(KeyInfo(str(doc["id"]), str(doc.get("created", "")),
                           str(doc.get("host", "")), str(doc.get("user", "")), path))
    return out


@dataclass(frozen=True)
class Unlocked:
    keys: Keys
    key_id: str
    config_digest: str
    damaged: list[str]


def unlock(repo: Path, repo_id: str, passphrase: str) -> Unlocked:
    """Try every key file; the first that opens wins.  Nothing is written."""
    damaged: list[str] = []
    paths = key_files(repo)
    for path in paths:
        try:
            doc = read_key_file(path)
            got = unwrap(doc, passphrase, repo_id, f"key file {KEYS_DIR}/{path.name}")
        except DamagedFile as exc:
            damaged.append(str(exc))
            continue
        except OSError as exc:
            damaged.append(f"key file {KEYS_DIR}/{path.name}: {exc.strerror}")
            continue
        if got is not None:
            return Unlocked(Keys(got[0]), str(doc["id"]), got[1], damaged)
    if not paths:
        raise DamagedFile(f"{repo}: the repository is encrypted but {KEYS_DIR}/ holds no key")
    if damaged and len(damaged) == len(paths):
        raise DamagedFile("; ".join(damaged))
    msg = (f"wrong passphrase: none of the repository's {len(paths) - len(damaged)} "
           "key(s) opens with it; nothing was changed")
    if damaged:
        msg += " (and " + "; ".join(damaged) + ")"
    raise WrongPassphrase(msg)


def add_key(repo: Path, keys: Keys, passphrase: str, repo_id: str, config_digest: str,
            kdf: dict[str, Any] | None = None) -> str:
    """Write one more key file for the same master secret; returns its id."""
    (repo / KEYS_DIR).mkdir(exist_ok=True)
    doc = make_key(keys.master, passphrase, repo_id, config_digest, kdf)
    write_atomic(key_path(repo, doc["id"]), dump_checked(doc), 0o600)
    return str(doc["id"])


def remove_key(repo: Path, key_id: str, current: str) -> str:
    """Delete a key file; never the last one, nor the one that opened the repository.
    Returns the whole id of the key removed (``key_id`` may be a prefix)."""
    matches = [p for p in key_files(repo) if p.name.startswith(key_id)] if key_id else []
    if len(matches) != 1:
        raise ValueError(f"no single key matches {key_id!r}")
    target = matches[0].name.removesuffix(".json")
    if target == current:
        raise ValueError(f"key {target} is the one this passphrase opened: remove it with "
                         "another key's passphrase (or use 'key passwd')")
    if len(key_files(repo)) <= 1:
        raise ValueError("refusing to remove the only key")
    matches[0].unlink()
    fsync_dir(repo / KEYS_DIR)
    return target
