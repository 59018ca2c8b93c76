"""Blob ids, sealing and opening: the one place that knows whether a repository is encrypted.

Why one codec object: every stored byte (pack blobs, pack trailers, index
rows, trees) goes through ``seal``/``open`` and every id through
``blob_id``, so the rest of the repository code is the same for encrypted
and plain repositories, and a format change touches only this module.

Rules:
- Encrypted (``Keys``): AES-256-GCM, a fresh random 96-bit nonce per seal
  (stored in front of the ciphertext, the 16-byte tag after it); the caller's
  ``aad`` binds the sealed bytes to where they belong (blob id and type, pack
  header, index row key), so bytes moved elsewhere do not open.  Ids are
  keyed blake3, so an id says nothing about content to someone without the key.
- Plain: ids are blake3 of the content; seal appends a 16-byte blake3 of
  ``aad`` + data, so damage is still found (not tampering: anyone can
  recompute it).  Version-1 repositories (``legacy``) seal nothing at all.
- Sub-keys are derived from one 32-byte master secret with blake3's
  derive-key mode, each with its own context string.
"""

from __future__ import annotations

import os

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE = 12
TAG = 16
CHECK = 16
SEAL_INTO = 256 << 10  # from this size on, sealed into one buffer (Keys.seal_chunk)
MASTER_LEN = 32
CIPHER_NAME = "aes-256-gcm"

_CONTEXTS = {
    "data": "remotevss-backup 2026-12 blob and index encryption",
    "id": "remotevss-backup 2026-12 blob ids",
    "cache": "remotevss-backup 2026-12 files cache keys",
    "seed": "remotevss-backup 2026-12 chunker seed",
}


class SealError(Exception):
    """Sealed bytes do not open: damaged, tampered with, moved, or the wrong key."""


def _derive(master: bytes, what: str) -> bytes:
    return blake3.blake3(master, derive_key_context=_CONTEXTS[what]).digest()


class Codec:
    """Plain repositories (format 2, ``encryption: none``): checksummed, not secret."""

    encrypted = False
    legacy = False
    overhead = CHECK

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data).digest()

    def seal(self, data: bytes | memoryview, aad: bytes) -> bytes:
        check = blake3.blake3(aad)
        check.update(data)  # the digest of aad + data, without copying data twice
        return bytes(data) + check.digest(CHECK)

    def seal_chunk(self, data: bytes | memoryview, aad: bytes) -> bytes | bytearray:
        """``seal`` for file data (the encrypted codec seals large chunks in place)."""
        return self.seal(data, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        data, check = sealed[:-CHECK], sealed[-CHECK:]
        if len(sealed) < CHECK or blake3.blake3(aad + data).digest(CHECK) != check:
            raise SealError("checksum mismatch")
        return data

    def cache_key(self, *parts: str) -> bytes:
        """Files-cache lookup key: the path itself (plain), a keyed hash (encrypted)."""
        return os.fsencode("\0".join(parts))

    def chunker_seed(self) -> int | None:
        return None


class LegacyCodec(Codec):
    """Format 1: blake3 ids, nothing sealed (the integrity check is the content id)."""

    legacy = True
    overhead = 0

    def seal(self, data: bytes | memoryview, aad: bytes) -> bytes:
        return bytes(data)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        return sealed


class Keys(Codec):
    """An unlocked encrypted repository: the master secret and what derives from it."""

    encrypted = True
    overhead = NONCE + TAG

    def __init__(self, master: bytes) -> None:
        if len(master) != MASTER_LEN:
            raise ValueError("master secret must be 32 bytes")
        self.master = master
        self._data_key = _derive(master, "data")
        self._aead = AESGCM(self._data_key)
        self._id_key = _derive(master, "id")
        self._cache_key = _derive(master, "cache")

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._id_key).digest()

    def seal(self, data: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def seal_chunk(self, data: bytes | memoryview, aad: bytes) -> bytes | bytearray:
        """``seal``, for file data: a large chunk is sealed into one output buffer
        instead of the ciphertext and its copy behind the nonce.  Why: buffers of
        this size are fresh mmaps, and each MiB of one costs 256 page faults; on
        incompressible data those faults took more CPU than the encryption."""
        if len(data) < SEAL_INTO:
            return self.seal(data, aad)
        nonce = os.urandom(NONCE)
        out = bytearray(NONCE + len(data) + TAG)
        out[:NONCE] = nonce
        enc = Cipher(algorithms.AES(self._data_key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        view = memoryview(out)
        n = enc.update_into(data, view[NONCE:])  # room: len + 16 (it asks for len + 15)
        enc.finalize()
        view[NONCE + n:] = enc.tag
        return out

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < NONCE + TAG:
            raise SealError("too short to be sealed")
        try:
            out: bytes = self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], aad)
        except InvalidTag:
            raise SealError("does not authenticate (damaged or tampered with)") from None
        return out

    def cache_key(self, *parts: str) -> bytes:
        return blake3.blake3(os.fsencode("\0".join(parts)),
                             key=self._cache_key).digest(16)

    def chunker_seed(self) -> int:
        """A secret seed: cut points (chunk lengths) of a known file cannot be predicted."""
        return int.from_bytes(_derive(self.master, "seed")[:8], "little") >> 1  # pyfastcdc: < 2**63

    def __repr__(self) -> str:  # never print the secret
        return "Keys(<secret>)"


def new_master() -> bytes:
    return os.urandom(MASTER_LEN)
