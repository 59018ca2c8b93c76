"""CI replay of the soak fuzzer's corpus (bench/soak/fuzz.py) and a seeded mutation pass.

``fuzz_corpus/<target>.hex`` holds the inputs that added coverage in the
1,200,000-input atheris run (and would hold every crash input it found: none
so far), one hex line each.  Every one is replayed through the same target
function the fuzzer ran (tests/hardening/fuzz_targets.py): only the documented
exceptions, within the per-input time bound.  Then 3,000 deterministic
mutations per target of corpus inputs (bit flips, truncations, insertions,
wild 32-bit values) go through the same check, so CI explores a little on every
run too.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from tests.hardening.fuzz_targets import TARGETS, run_one, seeds

CORPUS = Path(__file__).parent / "fuzz_corpus"
MUTATIONS = 3_000


def corpus(target: str) -> list[bytes]:
    path = CORPUS / f"{target}.hex"
    saved = [bytes.fromhex(x) for x in path.read_text().split()] if path.exists() else []
    return saved + seeds()[target]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        kind = rng.randrange(6)
        if kind == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif kind == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 32))
        elif kind == 3 and len(b) >= 6:
            i = rng.randrange(2, len(b) - 3)
            b[i : i + 4] = struct.pack(
                "<I", rng.choice([0, 1, 0x7FFF, 0x8000, 0xFFFF, 0xFFFFFFFF, rng.getrandbits(32)])
            )
        elif kind == 4 and len(b) > 2:
            i, j = sorted(rng.sample(range(len(b)), 2))
            b[i:j] = b[i:j] * rng.randint(2, 4)  # repeated regions: counts vs sizes
        elif kind == 5 and b:
            b[rng.randrange(len(b))] = rng.choice([0x00, 0xFF, 0x5C, 0xD8, 0xDC, 0x80])
    return bytes(b)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_saved_corpus_replays_clean(target: str) -> None:
    inputs = corpus(target)
    assert len(inputs) >= 5
    for i, data in enumerate(inputs):
        try:
            run_one(target, data)
        except Exception as exc:
            pytest.fail(f"{target} input {i} ({data[:64].hex()}...): {exc!r}")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeded_mutations(target: str) -> None:
    rng = random.Random(0xF022 + len(target))
    inputs = corpus(target)
    for n in range(MUTATIONS):
        data = mutate(rng, rng.choice(inputs))
        try:
            run_one(target, data)
        except Exception as exc:
            pytest.fail(f"{target} mutation {n} ({data.hex()}): {exc!r}")
