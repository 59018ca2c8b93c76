"""Run a command whose libwbclient must reach a private winbindd (tests, demo, benchmarks only).

Why: libwbclient (ntlm_auth, wbinfo) connects to the compiled-in
``/run/samba/winbindd``; the socket directory in smb.conf only moves the
daemon's side (environment overrides work only under nss_wrapper).  A
private Samba's winbindd listens elsewhere, so the command runs in a mount
namespace of its own (``unshare --mount --propagation private`` around this
module) where that directory is bind-mounted over ``/run/samba/winbindd``.
The machine's own winbindd, if any, is untouched: this module refuses to run
in its parent's (or init's) mount namespace, where the bind mount would hijack it.

The new namespace starts as a copy of every mount of the parent's, and a
copy keeps its filesystem in use: a ZFS clone or loop filesystem of a test,
mounted when the helper started, could then not be destroyed until the
helper exits (zfs-fuse answers EBUSY).  So the command lets go of every
mount below the temporary directory that none of its paths need.

A domain member's daemons need more of the machine seen their way (tests
only): ``--bind SRC=DST`` bind-mounts a file over another in the same
namespace, e.g. a hosts file naming the private domain controller or an
nsswitch.conf that asks winbind for users.

Usage: ``unshare --mount --propagation private -- python -m remotevss.samba.wbns
[--bind SRC=DST ...] DIR CMD [ARG...]``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from remotevss.snapshots import mounts

WINBINDD_DIR = "/run/samba/winbindd"
USAGE = (
    "usage: unshare --mount --propagation private -- "
    "python -m remotevss.samba.wbns [--bind SRC=DST ...] SOCKET_DIR COMMAND [ARG...]"
)


def _mount_ns(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:  # gone, or not ours to inspect (PID 1 in some containers)
        return None


def _own_mount_namespace() -> bool:
    """True if unshare made us a mount namespace: ours differs from PID 1's (when
    readable) and from our parent's, unless that parent is ``unshare --fork``."""
    mine = _mount_ns("self")
    if mine is None or mine == _mount_ns("1"):
        return False
    ppid = os.getppid()
    if mine != _mount_ns(str(ppid)):
        return True
    try:
        with open(f"/proc/{ppid}/comm") as f:
            return f.read().strip() == "unshare"
    except OSError:
        return False


def _bind(source: str, target: str) -> bool:
    # mount must not write to our stdout: it may be a line protocol (ntlm_auth's).
    mount = subprocess.run(
        ["mount", "--bind", source, target],
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno(),
        check=False,
    )
    if mount.returncode:
        print(f"wbns: mount --bind {source} {target} failed", file=sys.stderr)
    return mount.returncode == 0


def _needed_paths(paths: list[str]) -> list[str]:
    """The existing paths named by ``paths`` (arguments, ``--opt=PATH`` too)."""
    out = []
    for arg in paths:
        for cand in (arg, arg.partition("=")[2]):
            if cand.startswith("/") and os.path.exists(cand):
                out.append(os.path.realpath(cand))
    return out


def let_go_of_temporary_mounts(needed: list[str]) -> list[str]:
    """Unmount, in this (private) namespace only, every mount below the temporary
    directory that holds none of ``needed``; returns their mount points."""
    gone = []
    for point in sorted(set(mounts.mounts_below(tempfile.gettempdir())), key=len, reverse=True):
        if any(p == point or p.startswith(point + "/") for p in needed):
            continue
        try:
            mounts.unmount_all(point)
        except OSError as exc:
            print(f"wbns: cannot let go of {point}: {exc}", file=sys.stderr)
            continue
        gone.append(point)
    return gone


def main(argv: list[str]) -> int:
    binds: list[tuple[str, str]] = []
    while len(argv) >= 2 and argv[0] == "--bind":
        source, sep, target = argv[1].partition("=")
        if not sep or not os.path.isfile(source) or not os.path.isfile(target):
            print(f"wbns: --bind wants FILE=FILE, got {argv[1]!r}\n{USAGE}", file=sys.stderr)
            return 2
        binds.append((source, target))
        argv = argv[2:]
    if len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    socket_dir, command = argv[0], argv[1:]
    if not os.path.isdir(socket_dir):
        print(f"wbns: {socket_dir}: not a directory\n{USAGE}", file=sys.stderr)
        return 2
    if not _own_mount_namespace():
        print(
            f"wbns: refusing to bind-mount over {WINBINDD_DIR} in its parent's mount"
            f" namespace (run under unshare --mount)\n{USAGE}",
            file=sys.stderr,
        )
        return 2
    os.makedirs(WINBINDD_DIR, exist_ok=True)
    for source, target in [(socket_dir, WINBINDD_DIR), *binds]:
        if not _bind(source, target):
            return 1
    let_go_of_temporary_mounts(_needed_paths([socket_dir, *command,
                                              *(src for src, _ in binds)]))
    try:
        os.execvp(command[0], command)  # noqa: S606 - argv from our own caller, no shell
    except OSError as exc:
        print(f"wbns: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
