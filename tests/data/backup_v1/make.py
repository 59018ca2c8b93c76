import os, sys, blake3, tarfile
from pathlib import Path
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.backup import run_backup, local_sources
base = Path(sys.argv[1])
src = base / "src"; repo = base / "repo"
def rand(seed, n): return blake3.blake3(seed.encode()).digest(length=n)
def gen(gen):
    (src / "sub").mkdir(parents=True, exist_ok=True)
    (src / "big.bin").write_bytes(rand("big", 40_000) + b"".join(b"line %d of the big v1 file\n" % i for i in range(30000)))
    (src / "sub" / "small.txt").write_bytes(b"hello v1\n" * 100)
    (src / "sub" / f"gen{gen}.bin").write_bytes(rand(f"gen{gen}", 50_000))
    if not (src / "link").is_symlink(): (src / "link").symlink_to("sub/small.txt")
    os.setxattr(src / "sub" / "small.txt", "user.note", b"v1 xattr")
    t = 1_600_000_000_000_000_000 + gen
    for p in (src / "big.bin", src / "sub" / "small.txt", src / "sub" / f"gen{gen}.bin"):
        os.utime(p, ns=(t, t))
init_repo(repo, pack_size=1 << 20)
for g in (1, 2):
    gen(g)
    with Repository(repo, "write") as r:
        print(run_backup(r, local_sources([f"data={src}"]), {"gen": str(g)}).id)
