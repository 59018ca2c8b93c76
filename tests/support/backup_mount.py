"""``remotevss backup mount`` run as the tests run it: its own process, until the
kernel shows the mount; stopped by a signal, cleaned up whatever happened."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.support.backup_cli import CLI


def mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path)
               for line in Path("/proc/mounts").read_text().splitlines())


class Mount:
    """``backup mount`` in its own process, until ``mounted``."""

    def __init__(self, repo: Path, mnt: Path, cwd: Path | None = None) -> None:
        self.mnt = mnt
        self.proc = subprocess.Popen([*CLI, "mount", str(repo), str(mnt)], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not mounted(mnt):
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if mounted(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], check=False)
