"""Run a real ``remotevss agent`` process on real loop filesystems, for system tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from remotevss.client.local import LocalClient
from remotevss.linepipe import stop_process


def _accepts(path: Path) -> bool:
    """Whether a process listens on unix socket ``path`` (bound is not enough)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


@dataclass
class AgentProcess:
    """One agent: its config, directories and (while running) its process."""

    workdir: Path
    shares: dict[str, Path]
    mode: str = "spec"
    sequence_timeout: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    socket_dir: Path | None = None  # default: workdir
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return (self.socket_dir or self.workdir) / "agent.sock"

    @property
    def admin_socket(self) -> Path:
        """The agent's default admin socket (bound after the FSRVP socket)."""
        return Path(str(self.socket) + ".admin")

    @property
    def expose_dir(self) -> Path:
        return self.workdir / "exposed"

    @property
    def config(self) -> Path:
        return self.workdir / "agent.toml"

    @property
    def log(self) -> Path:
        return self.workdir / "agent.log"

    def write_config(self) -> None:
        lines = [
            "[agent]",
            f'socket = "{self.socket}"',
            f'state_dir = "{self.workdir / "state"}"',
            f'expose_dir = "{self.expose_dir}"',
            f'mode = "{self.mode}"',
            'netbios_name = "TESTFS"',
        ]
        if self.sequence_timeout is not None:
            lines.append(f"sequence_timeout = {self.sequence_timeout}")
        lines.append("[shares]")
        lines += [f'{name} = "{path}"' for name, path in self.shares.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, crash_after: str | None = None, timeout: float = 30,
              until_bound: bool = False) -> None:
        """Start the agent and wait until it serves (both sockets accept), or with
        ``until_bound`` only until the FSRVP socket exists (start-up still runs)."""
        self.write_config()
        env = dict(os.environ, **self.extra_env)
        env.pop("REMOTEVSS_CRASH_AFTER", None)
        if crash_after:
            env["REMOTEVSS_CRASH_AFTER"] = crash_after
        # A killed agent leaves its sockets behind: a connect to the old admin
        # socket is refused until the new agent replaces it, after the FSRVP one.
        for path in (self.socket, self.admin_socket):
            if path.exists():
                path.unlink()
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "remotevss.cli", "agent", "--config", str(self.config), "-vv"],
            stdout=logf,
            stderr=logf,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while not (self.socket.is_socket() and (until_bound or _accepts(self.admin_socket))):
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not come up:\n" + self.log.read_text())
            time.sleep(0.001 if until_bound else 0.02)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = stop_process(self.proc)
        self.proc = None
        return rc

    def wait_dead(self, timeout: float = 30) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        self.proc = None
        return rc

    def client(self, **kw: int) -> LocalClient:
        return LocalClient(str(self.socket), **kw)

    def snapshots(self) -> list[Path]:
        """Every snapshot (or partial one) on disk, over all shares' volumes."""
        found: list[Path] = []
        for path in self.shares.values():
            snapdir = path / ".snapshots"
            if snapdir.is_dir():
                found.extend(sorted(snapdir.iterdir()))
        return found

    def exposed(self) -> dict[str, str]:
        if not self.expose_dir.is_dir():
            return {}
        return {p.name: os.readlink(p) for p in self.expose_dir.iterdir() if p.is_symlink()}
