"""A directory laid out like a Debian server with samba and winbind, for
`remotevss setup samba --root DIR`, and the command run on it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "remotevss.cli"]
STOCK = Path("/usr/share/samba/smb.conf")


def setup(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "setup", "samba", "--root", str(root), *args],
                          capture_output=True, text=True, check=False, timeout=60)


def debian_root(tmp_path: Path) -> Path:
    """Debian's stock smb.conf, winbind's unit and Samba's RPC helpers below ``tmp_path``."""
    if not STOCK.exists() or not Path("/lib/systemd/system/winbind.service").exists():
        pytest.skip("Debian's samba and winbind packages are not installed")
    root = tmp_path / "root"
    (root / "etc/samba").mkdir(parents=True)
    shutil.copy(STOCK, root / "etc/samba/smb.conf")
    (root / "lib/systemd/system").mkdir(parents=True)
    shutil.copy("/lib/systemd/system/winbind.service", root / "lib/systemd/system/")
    shutil.copytree("/usr/libexec/samba", root / "usr/libexec/samba")
    return root


def tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` (Samba's helpers left out) and every link's target."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "-> " + str(p.readlink())
        elif p.is_file() and "usr/libexec" not in str(p):
            out[str(p.relative_to(root))] = p.read_text()
    return out
