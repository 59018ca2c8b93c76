"""A private Samba (smbd + samba-dcerpcd) on loopback, for interop tests and benchmarks.

Why private: tests and benchmarks must not touch the machine's own Samba.
Everything (config, tdbs, sockets, logs) lives under one directory, smbd
listens on a high port on 127.0.0.1 only, and netbios is off.  With
``samba_fsrvp=True`` Samba's own rpcd_fsrvp serves \\pipe\\FssagentRpc (the
anchor our agent is measured against).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

RPCD_DIR = Path("/usr/libexec/samba")
PASSWORD = "Passw0rd-remotevss"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateSamba:
    root: Path
    shares: dict[str, Path]
    samba_fsrvp: bool = True
    netbios_name: str = "ANCHORFS"
    sequence_timeout: int | None = None
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: Extra ``[global]`` parameters (override the defaults above of the same name).
    extra_global: dict[str, str] = field(default_factory=dict)
    #: Per-share parameters, merged over the default share lines (``read only = no``,
    #: ``vfs objects = btrfs``, ``btrfs: manipulate snapshots = yes``).
    share_options: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Raw lines appended to smb.conf (e.g. a ``[printers]`` section, an ``include``).
    extra_lines: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    def write_config(self) -> None:
        for d in ("etc", "lock", "state", "cache", "pid", "priv", "ncalrpc", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "ncalrpc", 0o755)
        r = self.root
        lines = [
            "[global]",
            f"netbios name = {self.netbios_name}",
            "workgroup = REMOTEVSS",
            "security = user",
            f"passdb backend = tdbsam:{r}/priv/passdb.tdb",
            f"lock directory = {r}/lock",
            f"state directory = {r}/state",
            f"cache directory = {r}/cache",
            f"pid directory = {r}/pid",
            f"private dir = {r}/priv",
            f"ncalrpc dir = {r}/ncalrpc",
            f"log file = {r}/log/%m.log",
            "log level = 1",
            f"smb ports = {self.port}",
            "interfaces = lo",
            "bind interfaces only = yes",
            "disable netbios = yes",
            "load printers = no",
            "disable spoolss = yes",
            "printcap name = /dev/null",
            "registry shares = yes",
            "include = registry",
            "rpc start on demand helpers = false",
            f"rpc server dynamic port range = {self.port + 1}-{self.port + 40}",
        ]
        if self.sequence_timeout is not None:
            lines.append(f"fss: sequence timeout = {self.sequence_timeout}")
        lines = _merged(lines, self.extra_global)
        for name, path in self.shares.items():
            share = [
                f"path = {path}",
                "read only = no",
                "vfs objects = btrfs",
                "btrfs: manipulate snapshots = yes",
            ]
            lines += [f"[{name}]", *_merged(share, self.share_options.get(name, {}))]
        lines += self.extra_lines
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.write_config()
        subprocess.run(
            ["smbpasswd", "-c", str(self.conf), "-s", "-a", "root"],
            input=f"{PASSWORD}\n{PASSWORD}\n".encode(),
            check=True,
            capture_output=True,
        )
        helpers = ["rpcd_classic", "rpcd_winreg", "rpcd_lsad"]
        if self.samba_fsrvp:
            helpers.append("rpcd_fsrvp")
        log = open(self.root / "log" / "daemons.log", "ab")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen(
                [
                    "/usr/libexec/samba/samba-dcerpcd",
                    "-s",
                    str(self.conf),
                    "-F",
                    "--no-process-group",
                    *[str(RPCD_DIR / h) for h in helpers],
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        self._wait(lambda: (self.root / "ncalrpc" / "np" / "srvsvc").exists(), "samba-dcerpcd")
        self.procs.append(
            subprocess.Popen(
                ["smbd", "-F", "--no-process-group", "-s", str(self.conf)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        self._wait(self._port_open, "smbd")

    def _port_open(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _wait(self, ready: object, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{what}: a Samba daemon exited ({p.returncode}); see {self.root}/log"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up; see {self.root}/log")
            time.sleep(0.05)

    def rpcclient(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "rpcclient",
                "-s",
                str(self.conf),
                "-p",
                str(self.port),
                "-U",
                f"root%{PASSWORD}",
                "127.0.0.1",
                "-c",
                command,
            ],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def net(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``net -s <conf> ARGS`` (e.g. ``net("conf", "addshare", name, path)``)."""
        return self._run(["net", "-s", str(self.conf), *args], check)

    def sharesec(
        self, share: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``sharesec -s <conf> SHARE ARGS`` (``--viewsddl``, ``--replace=ACL`` ...)."""
        return self._run(["sharesec", "-s", str(self.conf), share, *args], check)

    def smbclient(
        self, share: str, command: str, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``smbclient //127.0.0.1/SHARE -c COMMAND`` as root."""
        return self._run(
            [
                "smbclient",
                "-s",
                str(self.conf),
                f"//127.0.0.1/{share}",
                "-p",
                str(self.port),
                "-U",
                f"root%{PASSWORD}",
                "-c",
                command,
            ],
            check,
        )

    def _run(self, argv: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)

    def stop(self) -> None:
        """Stop each daemon with its whole session (smbd and rpcd children included)."""
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()


def _merged(lines: list[str], overrides: dict[str, str]) -> list[str]:
    """``key = value`` lines with ``overrides`` replacing same-named keys, new keys appended."""
    keys = {k.strip().lower(): (k, v) for k, v in overrides.items()}
    out = []
    for line in lines:
        key = line.split("=", 1)[0].strip().lower()
        if key in keys:
            k, v = keys.pop(key)
            out.append(f"{k} = {v}")
        else:
            out.append(line)
    return out + [f"{k} = {v}" for k, v in keys.values()]
