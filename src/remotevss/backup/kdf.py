"""The passphrase's key derivation (scrypt), started as soon as a command knows it.

Why: scrypt takes ~0.3 s of one core on every command that opens an
encrypted repository, and it lets go of the GIL.  Started before the
repository's modules are imported and its index is opened, the ~60 ms those
take run beside it instead of after it.  Only the first key file is derived
ahead: ``unlock`` tries it first and it is nearly always the only one; a
second derivation at the same time would hold another 64 MiB.

This module imports nothing heavy (no ``cryptography``): the command line
calls :func:`start_from_argv` before argparse and the rest of the command
line load (~45 ms on the test box: the parser of every sub-verb, the
client's connection options), and :func:`start` again once the arguments
are parsed (it starts nothing twice).  What it reads ahead is only a hint:
``keys.unlock`` reads and checks the key files itself, and takes a result
from here only for exactly the same passphrase, salt and parameters, so a
command line read wrongly here costs time, never a wrong key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

MAX_N, MAX_R, MAX_P = 1 << 20, 32, 16
MAX_MEMORY = 256 << 20  # scrypt needs 128 * N * r bytes
MAX_KEY_FILE = 4096
MAX_PASSPHRASE = 4096  # as the command line's --password-file reads it
PASSWORD_ENV = "REMOTEVSS_BACKUP_PASSWORD"  # noqa: S105 - the variable's name
REPO_ENV = "REMOTEVSS_REPO"
# The ``backup`` sub-verbs that open an existing repository given by --repo with
# the passphrase of --password-file or $REMOTEVSS_BACKUP_PASSWORD.
OPENING_VERBS = frozenset({"run", "restore", "list", "ls", "diff", "check", "verify",
                           "prune", "copy"})
_EARLY_OPTIONS = ("--repo", "--password-file")

_Params = tuple[str, bytes, int, int, int]  # passphrase, salt, n, r, p


class _Derivation:
    def __init__(self, params: _Params) -> None:
        self.result: bytes | None = None
        self.thread = threading.Thread(target=self._run, args=params, name="rvss-kdf",
                                       daemon=True)

    def _run(self, passphrase: str, salt: bytes, n: int, r: int, p: int) -> None:
        with contextlib.suppress(ValueError, MemoryError):  # met again by the caller
            self.result = derive_now(passphrase, salt, n, r, p)


_lock = threading.Lock()
_ahead: dict[_Params, _Derivation] = {}


def bounded(kdf: Any, salt: bytes) -> tuple[int, int, int] | None:
    """(n, r, p) of a key file's ``kdf`` field if it is scrypt within our bounds (a
    crafted key file must not make us allocate gigabytes), else None."""
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        return None
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    if not (isinstance(n, int) and isinstance(r, int) and isinstance(p, int)):
        return None
    if (not (2 <= n <= MAX_N and n & (n - 1) == 0) or not (1 <= r <= MAX_R)
            or not (1 <= p <= MAX_P) or 128 * n * r > MAX_MEMORY or len(salt) < 16):
        return None
    return n, r, p


def derive_now(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # The standard library's scrypt (the same function, the same bytes) rather than
    # cryptography's: this one lets go of the GIL while it works, and a backup
    # lists the tree in a thread meanwhile (cryptography 46's holds it: the
    # unchanged incremental lost ~0.1 s of that overlap).
    return hashlib.scrypt(passphrase.encode(), salt=salt, n=n, r=r, p=p,
                          maxmem=128 * r * (n + p + 2) + (1 << 20), dklen=32)


def derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt of the passphrase: the one started ahead for the same inputs, or now."""
    with _lock:
        ahead = _ahead.pop((passphrase, salt, n, r, p), None)
    if ahead is not None:
        ahead.thread.join()
        if ahead.result is not None:
            return ahead.result
    return derive_now(passphrase, salt, n, r, p)


def start(repo: str | os.PathLike[str], passphrase: Callable[[], str]) -> None:
    """Begin deriving the key of the repository's first key file.  ``passphrase``
    is called only if there is such a file (an unencrypted repository never
    asks); any problem (no file, a damaged one, no passphrase) starts nothing
    and is left to the command to meet and report."""
    try:
        # As ``sorted(Path(repo, "keys").glob("*.json"))``, without importing pathlib
        # before the derivation starts.
        keys = os.path.join(repo, "keys")
        files = sorted(n for n in os.listdir(keys) if n.endswith(".json") and n[0] != ".")
        if not files:
            return
        with open(os.path.join(keys, files[0]), "rb") as f:
            doc = json.loads(f.read(MAX_KEY_FILE))  # a longer one is damaged: no JSON
        salt = base64.b64decode(str(doc["salt"]), validate=True)
        params = bounded(doc.get("kdf"), salt)
        if params is None:
            return
        key = (passphrase(), salt, *params)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error):
        return
    with _lock:
        if key in _ahead:
            return
        job = _ahead[key] = _Derivation(key)
    job.thread.start()


def start_from_argv(argv: Sequence[str]) -> None:
    """:func:`start` from a ``backup`` command line (the words after ``backup``),
    before argparse has read it.

    Only the plain forms are read: ``--repo PATH`` or ``--repo=PATH`` (else
    $REMOTEVSS_REPO) and ``--password-file FILE`` (else
    $REMOTEVSS_BACKUP_PASSWORD; never a prompt).  Anything argparse might
    read otherwise (an abbreviation such as ``--rep``, an option given twice,
    ``--``) starts nothing here: :func:`start` runs again after parsing."""
    verb = next((a for a in argv if not a.startswith("-")), "")
    if verb not in OPENING_VERBS:
        return
    found: dict[str, str] = {}
    words = iter(argv)
    for word in words:
        name, eq, value = word.partition("=")
        if word == "--" or name in found:
            return
        if name in _EARLY_OPTIONS:
            found[name] = value if eq else next(words, "")
        elif name.startswith("--") and any(o.startswith(name) for o in _EARLY_OPTIONS):
            return  # an abbreviation argparse would expand
    repo = found.get("--repo") or os.environ.get(REPO_ENV)
    if not repo:
        return
    secret_file = found.get("--password-file")
    if secret_file is not None:
        try:
            with open(secret_file, encoding="utf-8") as f:
                secret = f.readline(MAX_PASSPHRASE + 1).rstrip("\r\n")
        except (OSError, ValueError):
            return
        if not secret or len(secret) > MAX_PASSPHRASE:
            return
    else:
        secret = os.environ.get(PASSWORD_ENV, "")
        if not secret:
            return
    start(repo, lambda: secret)
