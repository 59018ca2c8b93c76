"""Shared pieces of the hardening tests and soaks: the agent behind a private Samba,
an FSRVP client over SMB (optionally from a chosen loopback source address), and
the consistency check "journal = disk = exposures = mount table".

Why one consistency check everywhere: "no leak" must mean the same thing after a
SIGKILL, a full disk, a failed registry write and a 10-minute soak: every
snapshot on disk is a journaled shadow copy, every journaled copy is on disk,
every exposed share is a journaled mapping and the reverse, no intent is left
pending, no half-built ``.partial`` tree and no stray read-only bind mount.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remotevss.client.rpc import FsrvpCalls
from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import INTERFACE_UUID, HResult
from tests.support.samba import PASSWORD, PrivateSamba
from tests.system.agent_harness import AgentProcess

ZERO = HResult.ZERO


def unc(name: str, host: str = "testfs") -> str:
    return f"\\\\{host}\\{name}\\"


# ------------------------------------------------------------------ journal


@dataclass
class JournalView:
    sets: dict[str, str]  # set id -> status
    copies: dict[str, str]  # copy id -> snapshot path
    exposed: set[str]  # exposed share names of mappings marked exposed
    intents: list[tuple[str, str]]  # (kind, detail)


def read_journal(state_dir: Path) -> JournalView:
    """A read-only look at the agent's journal (WAL: safe while the agent runs)."""
    path = state_dir / "journal.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        sets = dict(db.execute("SELECT id, status FROM sets").fetchall())
        copies = dict(db.execute("SELECT id, snapshot_path FROM copies").fetchall())
        exposed = {
            r[0]
            for r in db.execute("SELECT exposed_name FROM mappings WHERE is_exposed=1").fetchall()
        }
        intents = db.execute("SELECT kind, detail FROM intents").fetchall()
    finally:
        db.close()
    return JournalView(sets, copies, exposed, intents)


def snapshot_mounts(roots: list[Path]) -> set[str]:
    """Mount points inside any ``<root>/.snapshots`` (read-only bind mounts)."""
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            for r in roots:
                if mp.startswith(str(r / ".snapshots") + "/"):
                    found.add(mp)
    return found


def check_consistent(
    state_dir: Path, share_roots: list[Path], exposed_now: set[str]
) -> JournalView:
    """Assert journal = disk = exposures = mounts; return the journal view."""
    j = read_journal(state_dir)
    assert j.intents == [], f"pending intents: {j.intents}"
    on_disk: set[str] = set()
    for root in share_roots:
        d = root / ".snapshots"
        if d.is_dir():
            on_disk |= {str(p) for p in d.iterdir()}
    journaled = {p for p in j.copies.values() if p}
    assert on_disk == journaled, f"disk {sorted(on_disk)} != journal {sorted(journaled)}"
    assert exposed_now == j.exposed, f"exposed {sorted(exposed_now)} != journal {sorted(j.exposed)}"
    mounts = snapshot_mounts(share_roots)
    assert mounts <= journaled, f"stray snapshot mounts: {sorted(mounts - journaled)}"
    return j


# ------------------------------------------------------------------ SMB client


class SmbFsrvp(FsrvpCalls):
    """impacket over SMB to ``\\pipe\\FssagentRpc`` of a PrivateSamba, optionally from a
    given loopback source address (so the agent sees distinct client addresses)."""

    def __init__(
        self, port: int, user: str = "root", password: str = PASSWORD, source: str | None = None,
        timeout: float = 60,
    ) -> None:
        from impacket.dcerpc.v5 import transport
        from impacket.smbconnection import SMBConnection
        from impacket.uuid import uuidtup_to_bin

        with bound_source(source):
            self.smb = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, timeout=timeout)
        if user == "":  # anonymous (null session)
            self.smb.login("", "")
        else:
            self.smb.login(user, password)
        t = transport.SMBTransport(
            "127.0.0.1", port, filename=r"\FssagentRpc", smb_connection=self.smb
        )
        self._dce = t.get_dce_rpc()
        self._dce.connect()
        self._dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "1.0")))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._dce.disconnect()
        with contextlib.suppress(Exception):
            self.smb.close()

    def __enter__(self) -> SmbFsrvp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def bound_source(source: str | None) -> Iterator[None]:
    """While active, new TCP sockets of this process bind to ``source`` before connecting
    (impacket has no option for it).  Process-wide: use from one thread only."""
    if source is None:
        yield
        return
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if self.family == socket.AF_INET:
            self.bind((source, 0))
        original(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]


# ------------------------------------------------------------------ agent behind Samba


@dataclass
class SambaAgent(AgentProcess):
    """A real agent process serving the pipe of one PrivateSamba, with Samba's shares
    and registry exposure (the production setup)."""

    samba_conf: Path | None = None
    expose: str = "registry"
    extra_samba: dict[str, str] = field(default_factory=dict)
    #: A shell snippet run before the agent in a private mount namespace
    #: (``unshare -m``), e.g. a bind mount over /etc/resolv.conf; "" = none.
    namespace_setup: str = ""

    @property
    def pipe(self) -> Path:
        assert self.samba_conf is not None
        return self.samba_conf.parents[1] / "ncalrpc" / "np" / "fssagentrpc"

    def write_config(self) -> None:
        super().write_config()
        lines = [
            "[samba]",
            f'config_file = "{self.samba_conf}"',
            'shares = "samba"',
            f'expose = "{self.expose}"',
            *[f"{k} = {v}" for k, v in self.extra_samba.items()],
            # these tests bind without RPC auth (impacket, rpcclient): the compatibility
            # switch; RPC authentication has its own tests (test_rpc_auth_samba.py)
            "[rpc_auth]",
            'min_level = "none"',
        ]
        with open(self.config, "a") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, crash_after: str | None = None, timeout: float = 30) -> None:
        if self.namespace_setup:
            self._start_in_namespace(timeout)
        else:
            super().start(crash_after, timeout)
        deadline = time.monotonic() + timeout
        while not self.pipe.is_socket():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited:\n{self.log.read_text()}")
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.02)

    def _start_in_namespace(self, timeout: float) -> None:
        import shlex
        import sys

        self.write_config()
        env = dict(os.environ, **self.extra_env)
        env.pop("REMOTEVSS_CRASH_AFTER", None)
        if self.socket.exists():
            self.socket.unlink()
        argv = [sys.executable, "-m", "remotevss.cli", "agent", "--config", str(self.config),
                "-vv"]  # fmt: skip
        script = f"{self.namespace_setup} && exec {shlex.join(argv)}"
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private",
                                      "sh", "-c", script],
                                     stdout=logf, stderr=logf, env=env)  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.socket.is_socket():
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not come up:\n" + self.log.read_text())
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Stack:
    """PrivateSamba (no rpcd_fsrvp) + our agent on its pipe."""

    samba: PrivateSamba
    agent: SambaAgent
    shares: dict[str, Path]

    def client(self, **kw: Any) -> SmbFsrvp:
        return SmbFsrvp(self.samba.port, **kw)

    def registry_snapshot_shares(self) -> set[str]:
        """``share@{guid}`` registry shares, as ``net conf listshares`` shows them."""
        out = self.samba.net("conf", "listshares").stdout
        return {line.strip() for line in out.splitlines() if "@{" in line}

    def check(self) -> JournalView:
        exposed = (set(self.agent.exposed()) if self.agent.expose == "symlink"
                   else self.registry_snapshot_shares())  # fmt: skip
        return check_consistent(self.agent.workdir / "state", list(self.shares.values()), exposed)

    def smbd_pids(self) -> list[int]:
        """smbd parent and children of this Samba (by their config file argument)."""
        out = subprocess.run(["pgrep", "-f", f"smbd .*-s {self.samba.conf}"],
                             capture_output=True, text=True, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_samba(self) -> None:
        """SIGKILL smbd (parent and every child) and samba-dcerpcd: no clean shutdown."""
        for p in self.samba.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for pid in self.smbd_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.samba.procs:
            p.wait(timeout=15)
        self.samba.procs.clear()


def add_smb_user(conf: Path, name: str, password: str) -> None:
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)  # fmt: skip
    subprocess.run(["smbpasswd", "-c", str(conf), "-s", "-a", name],
                   input=f"{password}\n{password}\n".encode(), check=True, capture_output=True)


def remove_smb_user(conf: Path, name: str) -> None:
    subprocess.run(["smbpasswd", "-c", str(conf), "-x", name], check=False, capture_output=True)
    subprocess.run(["userdel", name], check=False, capture_output=True)


def sequence(
    c: FsrvpCalls, shares: list[str], context: int, *, host: str = "testfs",
    recover: bool = True,
) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    """SetContext .. RecoveryComplete, every result ZERO; returns (set id, copy ids)."""
    assert c.set_context(context).return_value == ZERO
    r = c.start(uuid.uuid4())
    assert r.return_value == ZERO, hex(r.return_value)
    sid = r.shadow_copy_set_id
    copies = {}
    for n in shares:
        a = c.add(sid, unc(n, host))
        assert a.return_value == ZERO, hex(a.return_value)
        copies[n] = a.shadow_copy_id
    assert c.prepare(sid).return_value == ZERO
    cm = c.commit(sid)
    assert cm.return_value == ZERO, hex(cm.return_value)
    assert c.expose(sid).return_value == ZERO
    for n in shares:
        m = c.get_share_mapping(copies[n], sid, unc(n, host))
        assert m.return_value == ZERO, hex(m.return_value)
    if recover:
        assert c.recovery_complete(sid).return_value == ZERO
    return sid, copies


def delete_all(c: FsrvpCalls, sid: uuid.UUID, copies: dict[str, uuid.UUID],
               host: str = "testfs") -> None:
    for n, cid in copies.items():
        r = c.delete_share_mapping(sid, cid, unc(n, host))
        assert r.return_value == ZERO, hex(r.return_value)


def call_all_opnums(c: FsrvpCalls, share_unc: str) -> list[int]:
    """One call of every opnum (ids random): the return codes, in opnum order."""
    u = uuid.uuid4
    reqs: list[calls.Request] = [
        calls.GetSupportedVersionRequest(), calls.SetContextRequest(0),
        calls.StartShadowCopySetRequest(u()), calls.AddToShadowCopySetRequest(u(), u(), share_unc),
        calls.CommitShadowCopySetRequest(u(), 1000), calls.ExposeShadowCopySetRequest(u(), 1000),
        calls.RecoveryCompleteShadowCopySetRequest(u()), calls.AbortShadowCopySetRequest(u()),
        calls.IsPathSupportedRequest(share_unc), calls.IsPathShadowCopiedRequest(share_unc),
        calls.GetShareMappingRequest(u(), u(), share_unc, 1),
        calls.DeleteShareMappingRequest(u(), u(), share_unc),
        calls.PrepareShadowCopySetRequest(u(), 1000),
    ]  # fmt: skip
    return [c.call(r).return_value for r in reqs]


def vmrss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
