"""Pack files: where blobs (chunks, trees, recovery point records) are stored.

Why packs: one file per chunk would mean millions of small files on the
repository's filesystem; packs keep the file count low and writes sequential.
Each pack is self-describing (a header, the blobs, then a trailer that lists
every blob) so ``check`` can compare it with the index and the index could be
rebuilt from the packs alone.

Layout (all integers little-endian)::

    header   "RVSSPACK" | u16 format version | u16 flags (0) | u32 reserved | 16-byte pack id
    blobs    stored bytes of each blob, back to back
    trailer  one 56-byte entry per blob:
               32-byte blob id | u8 type | u8 compression | u16 reserved
               | u32 stored length | u32 raw length | u64 offset in the pack | u32 reserved
    footer   u32 entry count | u32 trailer length | 32-byte blake3 of the trailer
             | "RVSSEND\\0"
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import blake3

PACK_MAGIC = b"RVSSPACK"
PACK_END = b"RVSSEND\0"
PACK_VERSION = 1
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


class PackWriter:
    """Appends blobs to a new pack under ``tmp/``; ``finish`` seals it into ``packs/``.

    Why tmp first: a pack appears under ``packs/`` only complete and fsynced,
    so anything under ``packs/`` parses; a crash leaves at most a tmp file.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = uuid.uuid4().hex
        self.tmp_path = root / "tmp" / f"{self.name}.pack"
        self._f = open(self.tmp_path, "xb", buffering=1 << 20)  # noqa: SIM115 - closed in finish
        self._f.write(HEADER.pack(PACK_MAGIC, PACK_VERSION, 0, 0, bytes.fromhex(self.name)))
        self.size = HEADER.size
        self.entries: list[BlobEntry] = []

    def add(self, blob_id: bytes, btype: int, compression: int, stored: bytes, raw_len: int
            ) -> BlobEntry:
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


def read_trailer(path: Path) -> list[BlobEntry]:
    """Parse and check a pack's header, footer and trailer (not the blobs)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER.size + FOOTER.size:
            raise PackError(f"{path.name}: truncated ({size} bytes)")
        magic, version, _flags, _res, pid = HEADER.unpack(f.read(HEADER.size))
        if magic != PACK_MAGIC:
            raise PackError(f"{path.name}: bad header magic")
        if version != PACK_VERSION:
            raise PackError(f"{path.name}: unsupported pack version {version}")
        if pid.hex() != path.name.removesuffix(".pack"):
            raise PackError(f"{path.name}: header names pack {pid.hex()}")
        f.seek(size - FOOTER.size)
        count, tlen, digest, end = FOOTER.unpack(f.read(FOOTER.size))
        if end != PACK_END:
            raise PackError(f"{path.name}: bad footer magic")
        if tlen != count * ENTRY.size or HEADER.size + tlen + FOOTER.size > size:
            raise PackError(f"{path.name}: bad trailer length")
        f.seek(size - FOOTER.size - tlen)
        trailer = f.read(tlen)
    if blake3.blake3(trailer).digest() != digest:
        raise PackError(f"{path.name}: trailer checksum mismatch")
    entries = []
    data_end = size - FOOTER.size - tlen
    for i in range(count):
        bid, btype, comp, _r, slen, rlen, off, _r2 = ENTRY.unpack_from(trailer, i * ENTRY.size)
        if off < HEADER.size or off + slen > data_end:
            raise PackError(f"{path.name}: blob {bid.hex()[:16]} outside the data area")
        entries.append(BlobEntry(bid, btype, comp, off, slen, rlen))
    return entries
