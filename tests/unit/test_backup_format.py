"""Pure parts of the backup repository: chunker vectors, pack format, tree codec,
Bloom filter, retention policy."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remotevss.backup.chunker import ChunkerParams, chunk_id, compress, decompress, is_zero
from remotevss.backup.crypto import SEAL_INTO, Codec, Keys, LegacyCodec, new_master
from remotevss.backup.index import PointRow
from remotevss.backup.packs import (
    DATA,
    ENTRY,
    FOOTER,
    RAW,
    ZSTD,
    PackError,
    PackWriter,
    pack_path,
    read_trailer,
)
from remotevss.backup.prune import parse_duration, select_keep
from remotevss.backup.repo import Bloom
from remotevss.backup.snapshot_source import SourceEntry
from remotevss.backup.tree import Entry, decode_tree, encode_tree

GOLDEN_INPUT = blake3.blake3(b"golden").digest(length=8 << 20)


def test_chunker_golden_vectors() -> None:
    """Cut points of the repository's default parameters must never change:
    a different library build would silently stop deduplicating against old points."""
    assert blake3.blake3(GOLDEN_INPUT).hexdigest()[:16] == "fa29a581d84d9adc"
    cuts = [c.length for c in ChunkerParams().make().cut_buf(GOLDEN_INPUT)]
    assert cuts == [1455205, 1154463, 2455996, 1303776, 1754776, 264392]
    small = ChunkerParams(avg_size=16384, min_size=4096, max_size=65536).make()
    assert [c.length for c in small.cut_buf(GOLDEN_INPUT[:200000])] == [
        19980, 17085, 4138, 8594, 21994, 22015, 27274, 32230, 8285, 33881, 4524]


def test_chunks_resynchronise_after_an_insert() -> None:
    """Content-defined: inserting bytes early changes only the chunks around the edit."""
    params = ChunkerParams()
    a = [chunk_id(c.data) for c in params.make().cut_buf(GOLDEN_INPUT)]
    edited = GOLDEN_INPUT[:100] + b"inserted" + GOLDEN_INPUT[100:]
    b = [chunk_id(c.data) for c in params.make().cut_buf(edited)]
    assert a[0] != b[0]
    assert a[1:] == b[1:]


def test_chunker_params_round_trip_and_reject_unknown() -> None:
    p = ChunkerParams(avg_size=1 << 19)
    assert ChunkerParams.from_json(p.to_json()) == p
    with pytest.raises(ValueError):
        ChunkerParams.from_json({**p.to_json(), "algorithm": "rabin"})


def test_compress_keeps_incompressible_data_raw() -> None:
    rnd = os.urandom(1 << 16)
    assert compress(rnd) == (RAW, rnd)
    comp, stored = compress(b"abc" * 10000)
    assert comp == ZSTD and len(stored) < 1000
    assert decompress(comp, stored, 30000) == b"abc" * 10000


@pytest.mark.parametrize("size", [0, 1000, SEAL_INTO - 1, SEAL_INTO, SEAL_INTO + 1, 3 << 20])
def test_chunks_sealed_in_place_open_like_any_sealed_blob(size: int) -> None:
    """``seal_chunk`` (one output buffer for large chunks, from a view of a larger
    read buffer) gives what ``seal`` gives: nonce, ciphertext, tag under the same
    key and aad; it opens, and a flipped byte anywhere, or another aad, does not."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from remotevss.backup.crypto import NONCE, SealError

    keys = Keys(new_master())
    buf = bytearray(os.urandom(size + 7))
    data = memoryview(buf)[3:3 + size]
    sealed = bytes(keys.seal_chunk(data, b"aad"))
    assert len(sealed) == len(keys.seal(bytes(data), b"aad")) == size + keys.overhead
    assert keys.open(sealed, b"aad") == bytes(data)
    # The layout is AES-GCM's own, behind the nonce (what packs hold today).
    aead = AESGCM(blake3.blake3(keys.master, derive_key_context=(
        "remotevss-backup 2026-12 blob and index encryption")).digest())
    assert aead.decrypt(sealed[:NONCE], sealed[NONCE:], b"aad") == bytes(data)
    for pos in {0, NONCE, len(sealed) // 2, len(sealed) - 1}:
        bad = bytearray(sealed)
        bad[pos] ^= 1
        with pytest.raises(SealError):
            keys.open(bytes(bad), b"aad")
    with pytest.raises(SealError):
        keys.open(sealed, b"other")
    for plain in (Codec(), LegacyCodec()):  # the other codecs seal chunks as ever
        assert plain.seal_chunk(data, b"aad") == plain.seal(bytes(data), b"aad")


@given(st.binary(max_size=300), st.integers(0, 70000))
def test_is_zero(prefix: bytes, zeros: int) -> None:
    data = bytes(zeros) + prefix
    assert is_zero(data) == (len(data) > 0 and not any(data))
    assert is_zero(memoryview(data)) == (len(data) > 0 and not any(data))


CODECS = {"legacy": LegacyCodec(), "plain": Codec(), "encrypted": Keys(new_master())}


def _write_pack(tmp_path: Path, codec: Codec) -> tuple[str, list[tuple[bytes, bytes]]]:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "packs").mkdir()
    w = PackWriter(tmp_path, codec)
    blobs = [(chunk_id(b"x" * n), b"x" * n) for n in (1, 10, 1000)]
    for bid, raw in blobs:
        w.add(bid, DATA, RAW, raw, len(raw))
    name, size = w.finish()
    assert pack_path(tmp_path, name).stat().st_size == size
    assert not list((tmp_path / "tmp").iterdir())
    return name, blobs


@pytest.mark.parametrize("kind", CODECS)
def test_pack_trailer_lists_every_blob(tmp_path: Path, kind: str) -> None:
    name, blobs = _write_pack(tmp_path, CODECS[kind])
    entries = read_trailer(pack_path(tmp_path, name), CODECS[kind])
    assert [e.id for e in entries] == [b for b, _ in blobs]
    with open(pack_path(tmp_path, name), "rb") as f:
        data = f.read()
    for e, (_bid, raw) in zip(entries, blobs, strict=True):
        assert data[e.offset:e.offset + e.stored_len] == raw
        assert e.type == DATA and e.raw_len == len(raw)


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize("where", ["header", "trailer", "footer", "truncate"])
def test_damaged_pack_structure_is_detected(tmp_path: Path, where: str, kind: str) -> None:
    codec = CODECS[kind]
    name, _ = _write_pack(tmp_path, codec)
    path = pack_path(tmp_path, name)
    data = bytearray(path.read_bytes())
    if where == "header":
        data[0] ^= 1
    elif where == "trailer":
        data[-FOOTER.size - ENTRY.size + 40] ^= 1
    elif where == "footer":
        data[-1] ^= 1
    else:
        data = data[:-5]
    path.write_bytes(bytes(data))
    with pytest.raises(PackError):
        read_trailer(path, codec)


@pytest.mark.parametrize("kind", CODECS)
def test_pack_renamed_to_another_id_is_detected(tmp_path: Path, kind: str) -> None:
    name, _ = _write_pack(tmp_path, CODECS[kind])
    other = "0" * 32
    pack_path(tmp_path, other).parent.mkdir(exist_ok=True)
    pack_path(tmp_path, name).rename(pack_path(tmp_path, other))
    with pytest.raises(PackError, match="header names"):
        read_trailer(pack_path(tmp_path, other), CODECS[kind])


def test_tree_round_trips_odd_names_and_is_canonical() -> None:
    odd = os.fsdecode(b"caf\xe9-\xff.txt")  # not UTF-8: surrogate escapes
    entries = [{"name": odd, "type": "f", "mode": 0o644, "content": [[0, 3, "ab" * 32]]},
               {"name": "dir", "type": "d", "subtree": "cd" * 32}]
    raw = encode_tree(entries)
    assert raw.isascii()
    back = decode_tree(raw)
    assert back == entries
    assert os.fsencode(back[0]["name"]) == b"caf\xe9-\xff.txt"
    assert encode_tree(back) == raw
    with pytest.raises(ValueError):
        decode_tree(raw.replace(b'"v":1', b'"v":2'))


@settings(max_examples=20)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=200, unique=True))
def test_bloom_has_no_false_negatives(ids: list[bytes]) -> None:
    bloom = Bloom(len(ids))
    for i in ids[::2]:
        bloom.add(i)
    assert all(i in bloom for i in ids[::2])


def test_bloom_false_positive_rate_is_low() -> None:
    bloom = Bloom(10000)
    for i in range(10000):
        bloom.add(chunk_id(struct.pack("<I", i)))
    fp = sum(chunk_id(struct.pack("<I", i)) in bloom for i in range(10000, 30000))
    assert fp < 20000 * 0.01


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("1w2d3h") == 9 * 86400 + 3 * 3600
    assert parse_duration("90s") == 90
    assert parse_duration("1y") == 365 * 86400
    for bad in ("", "3x", "d", "2h1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def _point(i: int, t: int) -> PointRow:
    return PointRow(i, f"{i:032x}", t, b"", b"", {}, {})


def test_keep_policy() -> None:
    s = 1_000_000_000
    now = 100 * 86400 * s
    points = [_point(i + 1, now - (10 - i) * 86400 * s) for i in range(10)]  # 10 days .. 1 day
    assert select_keep(points, 3, None, now) == {8, 9, 10}
    assert select_keep(points, None, 2 * 86400, now) == {9, 10}
    assert select_keep(points, 1, 5 * 86400, now) == {6, 7, 8, 9, 10}
    assert select_keep(points, None, None, now) == set()
    assert select_keep([], 5, 10, now) == set()


def test_key_derivation_is_scrypt_and_lets_other_threads_run() -> None:
    """The passphrase's key is RFC 7914 scrypt with the stored parameters (so keys
    wrapped before stay readable), and while it is derived another thread runs:
    a backup lists its tree meanwhile."""
    import hashlib
    import threading
    import time

    from remotevss.backup.keys import _kdf

    # RFC 7914, section 12 (first 32 bytes), through the same function _kdf uses
    assert hashlib.scrypt(b"pleaseletmein", salt=b"SodiumChloride", n=16384, r=8, p=1,
                          dklen=32) == bytes.fromhex(
        "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2")
    salt = b"SodiumChloride\0\0"
    assert _kdf("pleaseletmein", {"name": "scrypt", "n": 16384, "r": 8, "p": 1}, salt) == \
        hashlib.scrypt(b"pleaseletmein", salt=salt, n=16384, r=8, p=1, dklen=32)
    ticks = [0]
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            ticks[0] += 1

    thread = threading.Thread(target=count)
    thread.start()
    try:
        time.sleep(0.02)
        before = ticks[0]
        _kdf("x", {"name": "scrypt", "n": 1 << 16, "r": 8, "p": 2}, bytes(16))
        during = ticks[0] - before
    finally:
        stop.set()
        thread.join()
    assert during > 1_000_000, f"the other thread got {during} ticks during the derivation"


def test_trees_with_stored_content_text_encode_to_the_same_bytes() -> None:
    """encode_tree_stored puts the files cache's content text in as it is; the
    tree must be byte for byte what parsing it and encode_tree give, whatever
    the names hold (a name that looks like the placeholder, an xattr named
    "content", non-ASCII and surrogate-escaped names)."""
    import copy
    import json

    from remotevss.backup.tree import encode_tree, encode_tree_stored

    def content(i: int) -> list[list[object]]:
        return [[0, 10 + i, f"{i:064x}"], [10 + i, 7, f"{i + 1:064x}"]]

    names = ['a"content":0', '"content":0', "content", "caf\u00e9", "\udcff raw", "x\\y"]
    entries = []
    for i, name in enumerate(names):
        entries.append({"name": name, "type": "f", "size": 17 + i, "mtime": i,
                        "content": (json.dumps(content(i), separators=(",", ":")),),
                        "xattrs": {"content": "MA==", "user.x": '"content":0'}})
    entries.append({"name": "dir", "type": "d", "subtree": "ab" * 32})
    entries.append({"name": "empty", "type": "f", "size": 0, "content": ("[]",)})
    entries.append({"name": "parsed", "type": "f", "size": 3, "content": [[0, 3, "cd" * 32]]})
    parsed = copy.deepcopy(entries)
    for e in parsed:
        if type(e.get("content")) is tuple:
            e["content"] = json.loads(e["content"][0])
    assert encode_tree_stored(entries) == encode_tree(parsed)
    assert encode_tree_stored([]) == encode_tree([])


_ODD_NAMES = ["plain.txt", 'a"content":0', 'q"},{"atime":1', "caf\u00e9", "\udcff raw",
              "x\\y", "tab\there", "ends],", '"subtree":"' + "0" * 64]


def _source_entry(name: str, i: int, ftype: str = "f") -> SourceEntry:
    return SourceEntry(name, ftype, 0o644 + i, 1000 + i, 100 + (i % 2), 17 * i,
                       10**18 + i, 2 * 10**18 + i, 3 * 10**18 + i, 5000 + i, 1, 1)


@pytest.mark.parametrize(("user", "group"), [("root", "staff"), (None, "g\u00e9"), ("u", None),
                                             (None, None)])
def test_file_text_is_what_encode_tree_writes_for_the_entry(user: str | None,
                                                              group: str | None) -> None:
    """An unchanged file of a changed directory goes into its tree as finished
    text; the tree must be byte for byte what make_entry and encode_tree give
    (odd names, unknown owner names, several entries mixed with dicts)."""
    import json

    from remotevss.backup.tree import encode_tree_stored, file_text, make_entry, owner_parts

    parts: list[Entry | str] = []
    dicts = []
    for i, name in enumerate(_ODD_NAMES):
        e = _source_entry(name, i)
        content = [[0, e.size, f"{i:064x}"]] if e.size else []
        text = json.dumps(content, separators=(",", ":"))
        entry = make_entry(e, user, group, {})
        entry["content"] = content
        dicts.append(entry)
        if i % 3 == 2:  # every third as a dict with stored text, the rest as text
            parts.append({**make_entry(e, user, group, {}), "content": (text,)})
        else:
            parts.append(file_text(e, owner_parts(user, group), text))
        assert encode_tree([entry]) == f'{{"entries":[{file_text(e, owner_parts(user, group), text)}],"v":1}}'.encode()
    d = _source_entry("sub", 99, "d")
    dicts.append({**make_entry(d, user, group, {"user.a": b"\x00"}), "subtree": "ab" * 32})
    parts.append(dict(dicts[-1]))
    assert encode_tree_stored(parts) == encode_tree(dicts)


def test_with_subtrees_changes_only_the_subtree_ids_and_refuses_what_it_cannot_cut() -> None:
    """A directory whose listing is unchanged gets its last tree with new subtree
    ids; the bytes must be encode_tree's for the new ids, and anything that does
    not cut into the listing's entries must give None (then the tree is built)."""
    from remotevss.backup.tree import make_entry, with_subtrees

    entries = []
    for i, name in enumerate(_ODD_NAMES):
        ftype = "d" if i % 2 else "f"
        e = make_entry(_source_entry(name, i, ftype), "root", "root",
                       {"user.x": b'"},{"atime":'} if i == 3 else {})
        if ftype == "d":
            e["subtree"] = f"{i:064x}"
        else:
            e["content"] = [[0, 1, f"{i:064x}"]]
        entries.append(e)
    raw = encode_tree(entries)
    dirs = [(i, e["name"], f"{i + 100:064x}") for i, e in enumerate(entries) if e["type"] == "d"]
    for e in entries:
        if e["type"] == "d":
            e["subtree"] = f"{entries.index(e) + 100:064x}"
    assert with_subtrees(raw, len(entries), dirs) == encode_tree(entries)
    assert with_subtrees(raw, len(entries), []) == raw
    assert with_subtrees(raw, len(entries) + 1, dirs) is None  # the count proves every cut
    assert with_subtrees(raw, len(entries), [(0, entries[0]["name"], "ab" * 32)]) is None  # a file
    assert with_subtrees(raw, len(entries), [(1, "other", "ab" * 32)]) is None  # not its name
    assert with_subtrees(raw, len(entries), [(1, entries[1]["name"], "ab")]) is None
    assert with_subtrees(raw.replace(b'"v":1', b'"v":2'), len(entries), dirs) is None
    assert with_subtrees(encode_tree([]), 0, []) is None


def test_a_row_spliced_from_its_old_text_reads_back_as_the_rows() -> None:
    """A changed directory's files-cache row keeps the text of its unchanged rows
    (index._splice); it must read back as exactly the new rows, whatever the
    names hold, and a text it cannot cut (a name ending in '],', other
    separators) is encoded anew."""
    import json

    from remotevss.backup.index import CacheRow, _splice

    old = {n: CacheRow(i, i + 1, i + 2, i + 3, f'[[0,{i},"{i:064x}"]]',
                       '{"user.a": "MA=="}' if i == 2 else "{}")
           for i, n in enumerate(n for n in _ODD_NAMES if not n.endswith("],"))}
    text = json.dumps(old, separators=(",", ":"))
    rows = dict(old)
    del rows["plain.txt"]
    rows["caf\u00e9"] = CacheRow(9, 9, 9, 9, "[]", "{}")  # changed
    rows["new \u00e9],"] = CacheRow(8, 8, 8, 8, "[]", "{}")  # added, with '],' in its name
    spliced = _splice(rows, old, text)
    assert spliced is not None and json.loads(spliced) == {n: list(r) for n, r in rows.items()}
    assert '"x\\\\y":[5,6,7,8' in spliced  # an unchanged row's own text
    odd = {**old, "ends],": CacheRow(1, 2, 3, 4, "[]", "{}")}
    assert _splice(odd, odd, json.dumps(odd, separators=(",", ":"))) is None
    assert _splice(rows, old, json.dumps(old)) is None  # spaces after separators
    assert _splice(rows, old, "{}") is None


def test_a_sealed_files_cache_row_of_the_wrong_shape_is_damaged(tmp_path: Path) -> None:
    """Rows are built in C from the opened JSON; one with a field missing or extra
    (or not an array) must still be refused as damaged, never half read."""
    from typing import Any

    from remotevss.backup.index import CacheRow, Index, IndexDamaged

    idx = Index(tmp_path / "index.sqlite", codec=Keys(new_master()))
    good = CacheRow(1, 2, 3, 4, "[]", "{}")
    bad_rows: list[Any] = [[1, 2, 3, 4, "[]"], [1, 2, 3, 4, "[]", "{}", 7], 5]
    for i, bad in enumerate(bad_rows):
        skey, dkey = idx._cache_keys("src", f"d{i}")
        idx._write_sealed(skey, dkey, {"ok": good, "bad": bad})
        with pytest.raises(IndexDamaged):
            idx.cache_dir("src", f"d{i}")
    skey, dkey = idx._cache_keys("src", "fine")
    idx._write_sealed(skey, dkey, {"ok": good})
    rows, text = idx.cache_dir_text("src", "fine")
    assert rows == {"ok": good} and type(rows["ok"]) is CacheRow and rows["ok"].content == "[]"
    assert text == '{"ok":[1,2,3,4,"[]","{}"]}'
    idx.close()
