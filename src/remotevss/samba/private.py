"""A private Samba (smbd + samba-dcerpcd) on loopback: the demo, the interop tests, benchmarks.

Why private: the demo, tests and benchmarks must not touch the machine's own
Samba.  Everything (config, tdbs, sockets, logs) lives under one directory,
smbd listens on a high port on 127.0.0.1 only, netbios is off, and the
daemons run in their own sessions so that :meth:`PrivateSamba.stop` ends them
with all their children.

With ``samba_fsrvp=True`` Samba's own rpcd_fsrvp serves \\pipe\\FssagentRpc
(the anchor our agent is measured against); with ``False``, samba-dcerpcd runs
an explicit helper list without it and ``rpc start on demand helpers = no``
(docs/samba.md, recipe B), so the pipe is free for ``remotevss agent``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from remotevss.linepipe import stop_process

RPCD_DIR = Path("/usr/libexec/samba")
SAMBA_DCERPCD = RPCD_DIR / "samba-dcerpcd"
PASSWORD = "Passw0rd-remotevss"  # noqa: S105 - tests: a loopback-only private Samba
#: Helpers samba-dcerpcd runs besides (optionally) rpcd_fsrvp: srvsvc and friends,
#: winreg, lsarpc/samr.  No rpcd_epmapper: nothing then listens on TCP 135.
HELPERS = ("rpcd_classic", "rpcd_winreg", "rpcd_lsad")


def missing_tools(*programs: str) -> list[str]:
    """Which of ``programs`` are not on PATH, plus samba-dcerpcd if it is not installed
    (it lives outside PATH): what a private Samba's user lacks, for one clear message."""
    missing = [p for p in programs if shutil.which(p) is None]
    return missing + ([] if SAMBA_DCERPCD.exists() else [str(SAMBA_DCERPCD)])


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
    #: ``include = registry`` besides ``registry shares = yes`` (``remotevss setup
    #: samba`` writes only the latter): the agent's loadparm then holds registry.tdb
    #: and its registry writes run in the light child (samba/registry_exposer.py).
    include_registry: bool = True
    #: Per-share parameters, merged over the default share lines (``read only = no``,
    #: ``vfs objects = btrfs``, ``btrfs: manipulate snapshots = yes``).
    share_options: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Raw lines appended to smb.conf (e.g. a ``[printers]`` section, an ``include``).
    extra_lines: list[str] = field(default_factory=list)
    #: The SMB password of root (the only account).
    password: str = PASSWORD
    #: Also run winbindd (socket in ``<root>/winbindd``): RPC authentication needs it.
    winbind: bool = False
    #: Extra environment for the daemons and tools (e.g. a private KRB5_CONFIG).
    env: dict[str, str] = field(default_factory=dict)
    #: argv prefix the daemons run under (a domain member's: its own mount namespace,
    #: :func:`namespace_argv`, so that smbd, winbindd and NSS reach its winbindd).
    wrap: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    @property
    def pipe_dir(self) -> Path:
        """Where smbd looks for pipe sockets (``<ncalrpc dir>/np``)."""
        return self.root / "ncalrpc" / "np"

    @property
    def winbind_dir(self) -> Path:
        return self.root / "winbindd"

    def namespace_argv(self, *binds: tuple[Path, str]) -> list[str]:
        """An argv prefix running a command in a mount namespace of its own where
        libwbclient finds this Samba's winbindd (and ``binds``: file over file)."""
        extra = [x for src, dst in binds for x in ("--bind", f"{src}={dst}")]
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            sys.executable, "-m", "remotevss.samba.wbns", *extra, str(self.winbind_dir),
        ]  # fmt: skip

    @property
    def ntlm_auth_argv(self) -> list[str]:
        """``ntlm_auth`` reaching this Samba's winbindd (see :mod:`remotevss.samba.wbns`);
        the caller appends the helper protocol and ``--configfile``."""
        return [*self.namespace_argv(), "ntlm_auth"]

    def write_config(self) -> None:
        for d in ("etc", "lock", "state", "cache", "pid", "priv", "ncalrpc", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "ncalrpc", 0o755)  # noqa: S103 - samba-dcerpcd's own rule
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
            *(["include = registry"] if self.include_registry else []),
            "rpc start on demand helpers = false",
            f"rpc server dynamic port range = {self.port + 1}-{self.port + 40}",
        ]
        if self.sequence_timeout is not None:
            lines.append(f"fss: sequence timeout = {self.sequence_timeout}")
        if self.winbind:
            self.winbind_dir.mkdir(mode=0o755, exist_ok=True)
            os.chmod(self.winbind_dir, 0o755)  # noqa: S103 - winbindd insists on exactly 0755
            lines.append(f"winbindd socket directory = {self.winbind_dir}")
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
        """Write smb.conf, add root to the private passdb, start samba-dcerpcd then smbd."""
        self.write_config()
        subprocess.run(
            ["smbpasswd", "-c", str(self.conf), "-s", "-a", "root"],
            input=f"{self.password}\n{self.password}\n".encode(),
            check=True,
            capture_output=True,
        )
        helpers = [*HELPERS, "rpcd_fsrvp"] if self.samba_fsrvp else list(HELPERS)
        conf = str(self.conf)
        daemons: list[tuple[list[str], Callable[[], bool], str]] = [
            ([str(SAMBA_DCERPCD), "-s", conf, "-F", "--no-process-group",
              *[str(RPCD_DIR / h) for h in helpers]],
             (self.pipe_dir / "srvsvc").exists, "samba-dcerpcd"),
            (["smbd", "-F", "--no-process-group", "-s", conf], self._port_open, "smbd"),
        ]  # fmt: skip
        if self.winbind:
            (self.winbind_dir / "pipe").unlink(missing_ok=True)  # a stale one is not "up"
            daemons.append(
                (["winbindd", "-F", "--no-process-group", "-s", conf],
                 self._winbindd_listening, "winbindd")
            )  # fmt: skip
        log = open(self.root / "log" / "daemons.log", "ab")  # noqa: SIM115 - the daemons' own
        try:
            for argv, ready, what in daemons:  # each waits for the one before
                self.procs.append(
                    subprocess.Popen(
                        [*self.wrap, *argv], stdout=log, stderr=log, start_new_session=True,
                        env={**os.environ, **self.env},
                    )  # fmt: skip
                )
                self._wait(ready, what)
        except BaseException:
            self.stop()
            raise
        finally:
            log.close()

    def _winbindd_listening(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            return s.connect_ex(str(self.winbind_dir / "pipe")) == 0

    def _port_open(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{what}: a Samba daemon exited ({p.returncode}); see {self.root}/log"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up; see {self.root}/log")
            time.sleep(0.05)

    def rpcclient(
        self, command: str, check: bool = True, *, auth: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """``rpcclient 127.0.0.1 -c COMMAND`` as root; ``auth`` = "sign" or "seal" binds
        with NTLM as ``<netbios name>\\root`` (what winbindd checks on a standalone server)."""
        user = f"{self.netbios_name}\\root" if auth else "root"
        return subprocess.run(
            [
                "rpcclient",
                "-s",
                str(self.conf),
                "-p",
                str(self.port),
                "-U",
                f"{user}%{self.password}",
                f"ncacn_np:127.0.0.1[{auth}]" if auth else "127.0.0.1",
                "-c",
                command,
            ],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
            env={**os.environ, **self.env},
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
                f"root%{self.password}",
                "-c",
                command,
            ],
            check,
        )

    def _run(self, argv: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, check=check, timeout=60,
            env={**os.environ, **self.env},
        )  # fmt: skip

    def stop(self) -> None:
        """Stop each daemon with its whole session (smbd and rpcd children included)
        and wait until no process of those sessions is left."""
        stop_sessions(self.procs)
        self.procs.clear()


def stop_sessions(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process's whole session (it was started with start_new_session),
    SIGKILL what is left after a while, and wait until no process of them remains."""
    for p in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        deadline = time.monotonic() + 5
        while _group_alive(p.pid):  # children exit a moment after their parent
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                if time.monotonic() > deadline + 5:
                    break  # only unreaped zombies can be left
            time.sleep(0.02)


@dataclass
class PrivateAgent:
    """``remotevss agent`` as its own process behind a :class:`PrivateSamba` (recipe B).

    It serves the Samba's ``\\pipe\\FssagentRpc`` (``<ncalrpc dir>/np/fssagentrpc``)
    and a local socket in ``workdir``; shares come from Samba's config and
    snapshot shares are registry shares (``[samba]`` defaults).
    """

    workdir: Path
    samba: PrivateSamba
    mode: str = "spec"
    sequence_timeout: float | None = None
    snapshot_names: str = "unique"
    verbose: int = 2
    #: ``[rpc_auth] min_level``.  "none" (the compatibility switch) by default here:
    #: most tests and benchmarks drive the agent with rpcclient/smbtorture/impacket
    #: binds without auth; the RPC-auth tests set "integrity" (the agent's default).
    min_level: str = "none"
    identity_mismatch: str = "refuse"
    trace: bool = False  # [log] trace: every PDU's stub in the log
    #: More ``[rpc_auth]`` settings (kerberos, keytab, realm, helpers ...), as TOML values.
    rpc_auth: dict[str, str | int | float] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.workdir / "agent.toml"

    @property
    def log(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def socket(self) -> Path:
        return self.workdir / "agent.sock"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def pipe(self) -> Path:
        return self.samba.pipe_dir / "fssagentrpc"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "[agent]",
            f'socket = "{self.socket}"',
            f'state_dir = "{self.state_dir}"',
            f'expose_dir = "{self.workdir / "exposed"}"',
            f'mode = "{self.mode}"',
            f'snapshot_names = "{self.snapshot_names}"',
        ]
        if self.sequence_timeout is not None:
            lines.append(f"sequence_timeout = {self.sequence_timeout}")
        lines += ["[samba]", f'config_file = "{self.samba.conf}"']
        lines += [
            "[rpc_auth]",
            f'min_level = "{self.min_level}"',
            f'identity_mismatch = "{self.identity_mismatch}"',
        ]
        if self.samba.winbind:
            lines.append(f"ntlm_auth = {json.dumps(self.samba.ntlm_auth_argv)}")
        lines += [f"{key} = {json.dumps(value)}" for key, value in self.rpc_auth.items()]
        if self.trace:
            lines += ["[log]", "trace = true"]
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def argv(self) -> list[str]:
        verbose = ["-" + "v" * self.verbose] if self.verbose else []
        return [
            sys.executable,
            "-m",
            "remotevss.cli",
            "agent",
            "--config",
            str(self.config),
        ] + verbose

    def start(self, timeout: float = 30) -> None:
        """Start the agent and wait until both its sockets are there."""
        self.write_config()
        for stale in (self.socket, self.pipe):
            if stale.is_socket():
                stale.unlink()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, env={**os.environ, **self.samba.env}
            )
        deadline = time.monotonic() + timeout
        while not (self.socket.is_socket() and self.pipe.is_socket()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"agent did not come up; see {self.log}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        """SIGTERM (a graceful stop), SIGKILL after 30 s; the exit status."""
        if self.proc is None:
            return None
        rc = stop_process(self.proc)
        self.proc = None
        return rc


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
