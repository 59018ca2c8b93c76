"""Run a Samba tool on a ``--root`` image as if it were the machine: ``testparm`` as oracle.

Why: `remotevss setup samba --root DIR` edits DIR/etc/samba, whose include
lines name files as the target sees them (``/etc/samba/shares.conf``).  Only
in a mount namespace where DIR's Samba directories are bound over the
machine's does Samba's own parser read exactly those files; the machine's
/etc/samba and /var/lib/samba are not touched (testparm may create
registry.tdb there).

Used as ``unshare --mount --propagation private -- python -m tests.support.etc_view
ROOT PROGRAM ARGS...`` (see :func:`loadparm_value`); needs root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: Bound from ROOT: the configuration; from a scratch directory beside ROOT: what
#: the tools may write (so ROOT keeps only what setup wrote).
CONFIG = ("etc/samba",)
SCRATCH = ("var/lib/samba", "var/cache/samba", "run/samba")


def loadparm_value(root: Path, section: str, parameter: str) -> str:
    """The value Samba's loadparm gives ``parameter`` of ``section`` in ROOT's smb.conf."""
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            sys.executable, "-m", "tests.support.etc_view", str(root),
            "testparm", "-s", "--section-name", section, "--parameter-name", parameter]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                       cwd="/", env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    scratch = root.parent / f"{root.name}.etc-view"
    for base, d in [(root, d) for d in CONFIG] + [(scratch, d) for d in SCRATCH]:
        if Path("/", d).is_dir():  # Debian's samba packages made them
            (base / d).mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(base / d), "/" + d], check=True)
    os.chdir("/")  # where smbd under systemd opens relative includes
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
