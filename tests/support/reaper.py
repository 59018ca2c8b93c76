"""Nothing outlives a test run: processes, mounts and loop devices of one run, found and removed.

Why: tests start real daemons (smbd, samba-dcerpcd, winbindd, krb5kdc, the
agent and its workers), mount loop filesystems and attach loop devices.  Each
fixture stops what it started, but an interrupted run (Ctrl-C, SIGTERM from a
CI timeout) or a fixture that fails half-way used to leave them behind, and a
machine that has been tested on then lies to the next run.

How one run's things are recognised, without touching anyone else's (other
test runs, the machine's own Samba):
* every run gets its own temporary root (``TMPDIR`` for the run and all its
  children, so ``tmp_path``, ``tempfile`` and the daemons' directories are
  below it);
* every process the run starts inherits ``REMOTEVSS_TEST_RUN=<token>`` in its
  environment; a process that was given a fresh environment still names the
  run's root on its command line (its config, socket or log is there).
Mounts below the root are unmounted (deepest first, lazily if busy) and loop
devices whose backing file is below it are detached.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_VAR = "REMOTEVSS_TEST_RUN"
TOKEN_FILE = ".run-token"  # in the run's root: how another process learns the token


@dataclass
class Leftovers:
    """What one run left behind (empty when it cleaned up after itself)."""

    processes: list[tuple[int, str]] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    loops: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.processes or self.mounts or self.loops)

    def describe(self) -> str:
        parts = [f"process {pid} ({cmd})" for pid, cmd in self.processes]
        parts += [f"mount {m}" for m in self.mounts]
        parts += [f"loop device {dev} ({backing})" for dev, backing in self.loops]
        return "; ".join(parts)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _is_zombie(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    end = stat.rfind(b")")
    return end >= 0 and stat[end + 2 : end + 3] == b"Z"


def run_processes(token: str, root: str) -> list[tuple[int, str]]:
    """Live processes of the run: its token in their environment or its root on
    their command line.  This process and its ancestors are not counted."""
    mark = f"{TOKEN_VAR}={token}".encode()
    rootb = root.encode()
    spare = {os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in spare:
        spare.add(pid)
        stat = _read(f"/proc/{pid}/stat")
        fields = stat[stat.rfind(b")") + 2 :].split()
        pid = int(fields[1]) if len(fields) > 1 else 1
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in spare:
            continue
        p = int(entry)
        cmdline = _read(f"/proc/{p}/cmdline")
        if not cmdline or _is_zombie(p):
            continue  # kernel threads and the dead
        environ = _read(f"/proc/{p}/environ")
        if mark in environ.split(b"\0") or rootb in cmdline:
            found.append((p, cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:120]))
    return found


def run_mounts(root: str) -> list[str]:
    """Mount points below ``root`` in this mount namespace, deepest first."""
    mounts = []
    for line in _read("/proc/self/mountinfo").decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) > 4:
            target = fields[4].encode().decode("unicode_escape")
            if target == root or target.startswith(root + "/"):
                mounts.append(target)
    return sorted(set(mounts), key=lambda m: m.count("/"), reverse=True)


def run_loops(root: str) -> list[tuple[str, str]]:
    """Loop devices whose backing file is below ``root``."""
    proc = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"],
                          capture_output=True, text=True, check=False)
    if proc.returncode or not proc.stdout.strip():
        return []
    loops = []
    for dev in json.loads(proc.stdout).get("loopdevices", []):
        back = str(dev.get("back-file") or "").removesuffix(" (deleted)")
        if back.startswith(root + "/"):
            loops.append((str(dev["name"]), back))
    return loops


def leftovers(token: str, root: str) -> Leftovers:
    return Leftovers(run_processes(token, root), run_mounts(root), run_loops(root))


def reap(token: str, root: str, grace: float = 5.0) -> Leftovers:
    """Remove what the run left: SIGTERM then SIGKILL its processes, unmount, detach.

    Returns what was found before removal (for the report)."""
    found = leftovers(token, root)
    for pid, _ in found.processes:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (alive := run_processes(token, root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, _ in alive:
        _signal(pid, signal.SIGKILL)
    if alive:
        time.sleep(0.1)  # let the kernel reap them before the mounts go
    for target in run_mounts(root):
        if subprocess.run(["umount", target], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    for dev, _ in run_loops(root):
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def remove_tree(root: Path) -> None:
    """Delete the run's root, never crossing into a mount that is still there."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], capture_output=True,
                   check=False)
