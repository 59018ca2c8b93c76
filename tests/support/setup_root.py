"""A directory laid out like a Debian server with samba and winbind, for
`remotevss setup samba --root DIR`, and the command run on it."""

from __future__ import annotations

import json
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


def doctor_json(work: Path, smb_conf: Path, agent: str = "",
                shares: str = "agent") -> tuple[int, dict[str, dict[str, str]]]:
    """`remotevss doctor --json` for ``smb_conf`` (no agent running: its checks fail);
    ``agent``: more lines for the TOML's [agent] table; ``shares``: [samba] shares
    ("samba" also checks registry shares).  (exit status, checks by name)"""
    cfg = work / "agent.toml"
    cfg.write_text(f'[agent]\nadmin_socket = "{work}/none.sock"\n{agent}\n'
                   f'[samba]\nconfig_file = "{smb_conf}"\nshares = "{shares}"\n'
                   '[rpc_auth]\nmin_level = "none"\n')
    p = subprocess.run([*CLI, "doctor", "--config", str(cfg), "--json"], capture_output=True,
                       text=True, timeout=120, check=False)
    return p.returncode, {c["name"]: c for c in json.loads(p.stdout)}
