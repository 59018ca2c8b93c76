"""Pack files: where blobs (chunks, trees, recovery point records) are stored.

Why packs: one file per chunk would mean millions of small files on the
repository's filesystem; packs keep the file count low and writes sequential.
Each pack is self-describing (a header, the blobs, then a trailer that lists
every blob) so ``check`` can compare it with the index and the index could be
rebuilt from the packs alone.

Layout (all integers little-endian)::

    header   "RVSSPACK" | u16 pack version | u16 flags | u32 reserved (0) | 16-byte pack id
    blobs    stored bytes of each blob, back to back (version 2: each sealed, see crypto.py)
    trailer  one 56-byte entry per blob:
               32-byte blob id | u8 type | u8 compression | u16 reserved
               | u32 stored length | u32 raw length | u64 offset in the pack | u32 reserved
             version 2: the whole trailer sealed, with the 32-byte header as associated data
    footer   u32 entry count | u32 trailer length (as stored) | 32-byte blake3 of the stored
             trailer | "RVSSEND\\0"

Version 1 packs (repository format 1) have flags 0 and a plain trailer; version 2
packs set flag bit 0 when the repository is encrypted.  The blake3 in the footer
tells damage ("checksum mismatch") from a trailer that does not authenticate.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import blake3

from remotevss.backup.crypto import Codec, SealError

PACK_MAGIC = b"RVSSPACK"
PACK_END = b"RVSSEND\0"
PACK_VERSION = 2
FLAG_ENCRYPTED = 1
HEADER = struct.Struct("<8sHHI16s")
ENTRY = struct.Struct("<32sBBHIIQI")
FOOTER = struct.Struct("<II32s8s")

# Blob types.
DATA = 0
TREE = 1
POINT = 2
BLOB_TYPES = {DATA: "data", TREE: "tree", POINT: "point"}

# Compression of a stored blob.
RAW = 0
ZSTD = 1


class PackError(Exception):
    """A pack file is not what its header, trailer or the index say."""


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """Where one blob lives inside its pack."""

    id: bytes
    type: int
    compression: int
    offset: int
    stored_len: int
    raw_len: int


def pack_path(root: Path, name: str) -> Path:
    """``packs/<first two hex digits>/<name>.pack``: fan-out keeps directories small."""
    return root / "packs" / name[:2] / f"{name}.pack"


def fsync_dir(path: Path) -> None:
    """Make a rename or create in ``path`` durable (POSIX needs the directory fsynced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def blob_aad(blob_id: bytes, btype: int) -> bytes:
    """What a stored blob is sealed to: its id and type (so it cannot be swapped)."""
    return blob_id + bytes((btype,))


class PackWriter:
    """Appends blobs to a new pack under ``tmp/``; ``finish`` seals it into ``packs/``.

    Why tmp first: a pack appears under ``packs/`` only complete and fsynced,
    so anything under ``packs/`` parses; a crash leaves at most a tmp file.
    """

    def __init__(self, root: Path, codec: Codec, tmp_prefix: str = "") -> None:
        self.root = root
        self.codec = codec
        self.name = uuid.uuid4().hex
        self.tmp_path = root / "tmp" / f"{tmp_prefix}{self.name}.pack"
        self._f = open(self.tmp_path, "xb", buffering=1 << 20)  # noqa: SIM115 - closed in finish
        self.header = pack_header(codec, self.name)
        self._f.write(self.header)
        self.size = HEADER.size
        self.entries: list[BlobEntry] = []

    def add(self, blob_id: bytes, btype: int, compression: int,
            stored: bytes | bytearray | memoryview, raw_len: int) -> BlobEntry:
        entry = BlobEntry(blob_id, btype, compression, self.size, len(stored), raw_len)
        self._f.write(stored)
        self.size += len(stored)
        self.entries.append(entry)
        return entry

    def finish(self) -> tuple[str, int]:
        """Write the trailer, fsync, move into ``packs/``; returns (name, size)."""
        trailer = b"".join(
            ENTRY.pack(e.id, e.type, e.compression, 0, e.stored_len, e.raw_len, e.offset, 0)
            for e in self.entries
        )
        if not self.codec.legacy:
            trailer = self.codec.seal(trailer, self.header)
        self._f.write(trailer)
        self._f.write(FOOTER.pack(len(self.entries), len(trailer),
                                  blake3.blake3(trailer).digest(), PACK_END))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        final = pack_path(self.root, self.name)
        final.parent.mkdir(exist_ok=True)
        os.rename(self.tmp_path, final)
        fsync_dir(final.parent)
        return self.name, self.size + len(trailer) + FOOTER.size

    def abandon(self) -> None:
        self._f.close()
        self.tmp_path.unlink(missing_ok=True)


def pack_header(codec: Codec, name: str) -> bytes:
    """The 32-byte header a pack of this repository must start with."""
    if codec.legacy:
        return HEADER.pack(PACK_MAGIC, 1, 0, 0, bytes.fromhex(name))
    return HEADER.pack(PACK_MAGIC, PACK_VERSION, FLAG_ENCRYPTED if codec.encrypted else 0, 0,
                       bytes.fromhex(name))


def read_trailer(path: Path, codec: Codec) -> list[BlobEntry]:
    """Parse and check a pack's header, footer and trailer (not the blobs)."""
    name = path.name.removesuffix(".pack")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER.size + FOOTER.size:
            raise PackError(f"{path.name}: truncated ({size} bytes)")
        header = f.read(HEADER.size)
        magic, version, flags, res, pid = HEADER.unpack(header)
        if magic != PACK_MAGIC:
            raise PackError(f"{path.name}: bad header magic")
        if version not in (1, PACK_VERSION):
            raise PackError(f"{path.name}: unsupported pack version {version}")
        if pid.hex() != name:
            raise PackError(f"{path.name}: header names pack {pid.hex()}")
        if header != pack_header(codec, name) or res:
            raise PackError(f"{path.name}: header (version {version}, flags {flags}) does not "
                            "fit this repository")
        f.seek(size - FOOTER.size)
        count, tlen, digest, end = FOOTER.unpack(f.read(FOOTER.size))
        if end != PACK_END:
            raise PackError(f"{path.name}: bad footer magic")
        plain_len = count * ENTRY.size
        if (tlen != plain_len + (0 if codec.legacy else codec.overhead)
                or HEADER.size + tlen + FOOTER.size > size):
            raise PackError(f"{path.name}: bad trailer length")
        f.seek(size - FOOTER.size - tlen)
        trailer = f.read(tlen)
    if blake3.blake3(trailer).digest() != digest:
        raise PackError(f"{path.name}: trailer checksum mismatch")
    if not codec.legacy:
        try:
            trailer = codec.open(trailer, header)
        except SealError as exc:
            raise PackError(f"{path.name}: trailer {exc}") from None
    entries = []
    data_end = size - FOOTER.size - tlen
    for i in range(count):
        bid, btype, comp, _r, slen, rlen, off, _r2 = ENTRY.unpack_from(trailer, i * ENTRY.size)
        if off < HEADER.size or off + slen > data_end:
            raise PackError(f"{path.name}: blob {bid.hex()[:16]} outside the data area")
        entries.append(BlobEntry(bid, btype, comp, off, slen, rlen))
    return entries
