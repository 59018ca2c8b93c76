"""`remotevss backup` as the system tests run it: a subprocess with an exit-code check,
and reproducible pseudo-random content."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import blake3

CLI = [sys.executable, "-m", "remotevss.backup.cli"]


def cli(*args: str | Path, check: int | None = 0,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``remotevss backup ARGS``; assert its exit code is ``check`` (None: any)."""
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def rand(seed: str, n: int) -> bytes:
    """``n`` bytes that depend only on ``seed`` (incompressible, reproducible)."""
    return blake3.blake3(seed.encode()).digest(length=n)
