"""Run a command whose libwbclient must reach a private winbindd (tests, demo, benchmarks).

Why: libwbclient (ntlm_auth, wbinfo) connects to the compiled-in
``/run/samba/winbindd``; the socket directory in smb.conf only moves the
daemon's side.  A private Samba's winbindd listens elsewhere, so the command
runs in a mount namespace of its own (``unshare --mount --propagation
private`` around this module) where that directory is bind-mounted over
``/run/samba/winbindd``.  The machine's own winbindd, if any, is untouched.

Usage: ``unshare --mount --propagation private -- python -m remotevss.samba.wbns DIR CMD [ARG...]``
"""

from __future__ import annotations

import os
import subprocess
import sys

WINBINDD_DIR = "/run/samba/winbindd"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not os.path.isdir(argv[0]):
        print("usage: python -m remotevss.samba.wbns SOCKET_DIR COMMAND [ARG...]", file=sys.stderr)
        return 2
    os.makedirs(WINBINDD_DIR, exist_ok=True)
    subprocess.run(["mount", "--bind", argv[0], WINBINDD_DIR], check=True)
    os.execvp(argv[1], argv[1:])  # noqa: S606 - argv from our own caller, no shell


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
