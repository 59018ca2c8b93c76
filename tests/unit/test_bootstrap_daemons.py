"""scripts/bootstrap.sh on a file server: the machine's own Samba keeps running.

bootstrap is how a clone gets its ``.venv`` (README), so an admin runs it on a
server whose smbd serves users.  Debian starts a daemon when its package is
installed, and the tests start private instances, so bootstrap stops and
disables daemons; it must do that only for packages it installed itself.  Once
it disabled smbd, nmbd and winbind whatever was there: a file server that
followed the README lost nmbd at once and smbd at the next boot.

The script runs for real; only the Debian tools it calls (dpkg-query, apt-get,
systemctl) are replaced by scripts that record their calls, since installing
packages and talking to systemd cannot happen here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _packages(name: str = "APT_PACKAGES") -> list[str]:
    text = (REPO / "scripts" / "bootstrap.sh").read_text()
    body = re.search(rf"\b{name}=\((.*?)\)", text, re.S)
    assert body, f"bootstrap.sh lists {name}"
    return body.group(1).split()


def _run_bootstrap(tmp_path: Path, installed: set[str],
                   *args: str) -> tuple[list[str], list[str], list[str]]:
    """(systemctl calls, apt-get calls, pip calls) of one bootstrap run on a machine
    that has ``installed`` (the project is a copy: no venv is built, nothing is
    installed; the full install's stamp is there, so only ``--server``'s own stamp
    is missing)."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "bootstrap.sh", project / "scripts")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    venv = project / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to("/bin/true")
    log = tmp_path / "calls"
    (venv / "pip").write_text(f'#!/bin/bash\necho "pip $*" >> {log}\n')
    (venv / "pip").chmod(0o755)
    stamp = hashlib.sha256((project / "pyproject.toml").read_bytes()).hexdigest()[:16]
    if not args:
        (project / ".venv" / f".installed-{stamp}").touch()
    db = tmp_path / "installed"
    db.write_text("".join(f"{p}\n" for p in installed))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        "dpkg-query": f'p="${{@: -1}}"; grep -qx "$p" {db} && printf "install ok installed"'
                      " || exit 1",
        "apt-get": f'echo "apt-get $*" >> {log}; [ "$1" = install ] || exit 0; '
                   f'for a in "$@"; do case "$a" in -*|install) ;; *) echo "$a" >> {db};; esac;'
                   " done",
        "systemctl": f'echo "systemctl $*" >> {log}',
    }
    for name, body in tools.items():
        tool = bin_dir / name
        tool.write_text(f"#!/bin/bash\n{body}\n")
        tool.chmod(0o755)
    r = subprocess.run(["bash", str(project / "scripts" / "bootstrap.sh"), *args],
                       capture_output=True,
                       text=True, timeout=60, check=False,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    return ([c for c in calls if c.startswith("systemctl")],
            [c for c in calls if c.startswith("apt-get")],
            [c for c in calls if c.startswith("pip")])


def test_a_servers_own_samba_is_left_running(tmp_path: Path) -> None:
    systemctl, apt, _ = _run_bootstrap(tmp_path, set(_packages()))
    assert apt == [], "everything is there: nothing to install"
    assert systemctl == [], "smbd, nmbd and winbind are the server's: not stopped or disabled"


def test_daemons_bootstrap_installs_are_stopped(tmp_path: Path) -> None:
    """A new machine (CI's): the daemons of the packages just installed are stopped
    and disabled, the ones already there are not."""
    missing = {"samba", "winbind", "krb5-kdc"}
    systemctl, apt, _ = _run_bootstrap(tmp_path, set(_packages()) - missing)
    assert any(c.startswith("apt-get install") and all(p in c.split() for p in missing)
               for c in apt), apt
    stopped = {c.split()[-1] for c in systemctl if c.startswith("systemctl disable --now")}
    assert stopped == {"smbd", "nmbd", "samba-ad-dc", "winbind", "krb5-kdc"}, systemctl


def test_server_mode_installs_only_what_remotevss_runs(tmp_path: Path) -> None:
    """``--server`` (README, "Running the agent") on a bare machine: the server's
    packages and the project without its test extras; no test tools (a KDC, AD
    provisioning, restic, borg, zfs-fuse, debootstrap) and no daemon stopped."""
    server = _packages("SERVER_PACKAGES")
    assert set(server) <= set(_packages()), "the full install covers the server's"
    systemctl, apt, pip = _run_bootstrap(tmp_path, set(), "--server")
    [install] = [c.split() for c in apt if c.startswith("apt-get install")]
    asked = {w for w in install[2:] if not w.startswith("-")}
    assert asked == set(server), apt
    for tool in ("krb5-kdc", "krb5-admin-server", "samba-ad-provision", "samba-testsuite",
                 "restic", "borgbackup", "zfs-fuse", "debootstrap", "strace"):
        assert tool not in asked
    assert systemctl == [], "the machine's Samba is the one the agent serves behind"
    assert len(pip) == 1 and pip[0].split()[-1] == ".", pip  # no [test] extras


def test_server_mode_refuses_unknown_options(tmp_path: Path) -> None:
    project = tmp_path / "p" / "scripts"
    project.mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "bootstrap.sh", project)
    r = subprocess.run(["bash", str(project / "bootstrap.sh"), "--sever"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2 and "usage" in r.stderr, r.stderr
