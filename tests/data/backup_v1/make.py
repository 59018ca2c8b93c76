"""How repo.tgz was made: a format-1 repository (two points) written by remotevss at
commit 8b1ea15, before encryption at rest.  Kept so the fixture can be understood;
running it with today's code would make a format-2 repository instead.

    python make.py DIR   # then: tar czf repo.tgz -C DIR repo (after a WAL checkpoint)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import blake3

from remotevss.backup.backup import local_sources, run_backup
from remotevss.backup.repo import Repository, init_repo


def rand(seed: str, n: int) -> bytes:
    return blake3.blake3(seed.encode()).digest(length=n)


def generation(src: Path, gen: int) -> None:
    (src / "sub").mkdir(parents=True, exist_ok=True)
    (src / "big.bin").write_bytes(rand("big", 40_000) + b"".join(
        b"line %d of the big v1 file\n" % i for i in range(30000)))
    (src / "sub" / "small.txt").write_bytes(b"hello v1\n" * 100)
    (src / "sub" / f"gen{gen}.bin").write_bytes(rand(f"gen{gen}", 50_000))
    if not (src / "link").is_symlink():
        (src / "link").symlink_to("sub/small.txt")
    os.setxattr(src / "sub" / "small.txt", "user.note", b"v1 xattr")
    t = 1_600_000_000_000_000_000 + gen
    for p in (src / "big.bin", src / "sub" / "small.txt", src / "sub" / f"gen{gen}.bin"):
        os.utime(p, ns=(t, t))


def main() -> None:
    base = Path(sys.argv[1])
    src, repo = base / "src", base / "repo"
    init_repo(repo, pack_size=1 << 20)
    for gen in (1, 2):
        generation(src, gen)
        with Repository(repo, "write") as r:
            print(run_backup(r, local_sources([f"data={src}"]), {"gen": str(gen)}).id)


if __name__ == "__main__":
    main()
