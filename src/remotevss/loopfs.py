"""Loop-mounted scratch filesystems for the demo, the tests and the benchmarks.

Why in the package: the demo needs a real btrfs without touching the
machine's disks, and tests and benchmarks need the same thing; one helper
keeps the mount/umount/detach discipline in one place.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

MKFS = {
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
}
MIN_SIZE_MB = {"btrfs": 128, "xfs": 320, "ext4": 16}


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.contextmanager
def loop_filesystem(
    fstype: str, size_mb: int = 0, workdir: str | Path | None = None
) -> Iterator[Path]:
    """Make a sparse image, mkfs it, mount it with ``-o loop``; undo all on exit."""
    size_mb = max(size_mb, MIN_SIZE_MB[fstype])
    with tempfile.TemporaryDirectory(prefix=f"rvss-{fstype}-", dir=workdir) as tmp:
        image = Path(tmp) / f"{fstype}.img"
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        _run(*MKFS[fstype], str(image))
        _run("mount", "-o", "loop", str(image), str(mnt))
        try:
            yield mnt
        finally:
            subprocess.run(["umount", "-R", str(mnt)], check=False, stderr=subprocess.DEVNULL)
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
