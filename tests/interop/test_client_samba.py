r"""Our FSRVP client against a server we did not write: Samba 4.17's rpcd_fsrvp on btrfs.

A private smbd + samba-dcerpcd with Samba's own FSRVP server and vfs_btrfs
(``tests.support.samba.PrivateSamba``) on a loop-mounted btrfs; every share is
its own subvolume.  The client runs as a separate process (``python -m
remotevss.cli shadow ...``) with a private client table, exactly as a user
would run it, and through the Python API where a test must interfere in the
middle of a sequence (stopping or freezing the server).

After every test nothing may be left on the server: no ``share@{guid}``
registry share (``net conf list``) and no ``@GMT-*`` snapshot subvolume in
any share.  Samba names snapshots by the second, so each creation uses a
share of its own (or waits 1.1 s).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from impacket.dcerpc.v5 import rpcrt

from remotevss.client import errors
from remotevss.client.connection import ConnectOptions, Credentials, FsrvpConnection
from remotevss.client.shadow import ShadowCopySet
from remotevss.client.state import ClientState
from remotevss.samba.private import PrivateAgent
from tests.support.samba import PASSWORD, PrivateSamba

TOOLS = ("smbd", "smbpasswd", "net", "mkfs.btrfs")
_missing = [t for t in TOOLS if shutil.which(t) is None]
_missing += [] if Path("/usr/libexec/samba/rpcd_fsrvp").exists() else ["rpcd_fsrvp"]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, loop btrfs)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/system tools: {_missing}"),
]

SHARES = 10
CREDS = Credentials("root", PASSWORD)


@dataclass
class Server:
    samba: PrivateSamba
    shares: dict[str, Path]
    mnt: Path
    #: Our agent behind this smbd (tests/interop/test_client_agent.py); None: Samba's rpcd_fsrvp.
    agent: PrivateAgent | None = None

    @property
    def port(self) -> int:
        return self.samba.port

    @property
    def cli_args(self) -> list[str]:
        """Our agent checks RPC credentials through winbindd, which on a standalone
        server knows only SERVER\\user (docs/security.md): name the domain."""
        return ["-W", "ANCHORFS"] if self.agent else []

    @property
    def creds(self) -> Credentials:
        return Credentials("root", PASSWORD, domain="ANCHORFS") if self.agent else CREDS

    def options(self, **kw: object) -> ConnectOptions:
        return ConnectOptions(port=self.port, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.agent:
            self.agent.stop()
        self.samba.stop()

    def signal_fsrvp(self, sig: int) -> None:
        """Signal what answers FSRVP: samba-dcerpcd's session, or our agent's process."""
        if self.agent:
            assert self.agent.proc is not None
            os.kill(self.agent.proc.pid, sig)
        else:
            os.killpg(self.samba.procs[0].pid, sig)

    def unc(self, name: str) -> str:
        return f"\\\\127.0.0.1\\{name}"

    def wait_fsrvp(self, timeout: float = 20) -> None:
        """PrivateSamba waits for srvsvc; rpcd_fsrvp's socket may come a moment later."""
        sock = self.samba.root / "ncalrpc" / "np" / "fssagentrpc"
        deadline = time.monotonic() + timeout
        while not sock.exists():
            assert time.monotonic() < deadline, "rpcd_fsrvp did not come up"
            time.sleep(0.05)

    def restart(self) -> None:
        self.samba.start()
        if self.agent:
            self.agent.start()
        else:
            self.wait_fsrvp()

    def leftovers(self) -> list[str]:
        out = subprocess.run(
            ["net", "-s", str(self.samba.conf), "conf", "list"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        found = [line.strip() for line in out.splitlines() if "@{" in line]
        for path in self.shares.values():
            found += [str(p) for p in path.glob("@GMT-*")]  # Samba's vfs_btrfs
            found += [str(p) for p in path.glob(".snapshots/@GMT-*")]  # our agent
        return found

    def read(self, share: str, name: str = "f.txt") -> bytes:
        from impacket.smbconnection import SMBConnection

        c = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=self.port, timeout=10)
        try:
            c.login("root", PASSWORD)
            buf = io.BytesIO()
            c.getFile(share, name, buf.write)
            return buf.getvalue()
        finally:
            c.close()


def _make_server(
    work: Path, mnt: Path, prefix: str, n: int, fsrvp: bool = True, agent: bool = False
) -> Server:
    """``n`` subvolume shares; FSRVP from Samba's rpcd_fsrvp, from our agent
    (``agent``: spec mode, behind this smbd) or from nobody (``fsrvp`` False)."""
    import btrfsutil

    shares = {}
    for i in range(n):
        path = mnt / f"{prefix}{i}"
        btrfsutil.create_subvolume(str(path))
        (path / "f.txt").write_text(f"{prefix}{i}: version 1\n")
        shares[f"{prefix}{i}"] = path
    samba = PrivateSamba(
        work, shares, samba_fsrvp=fsrvp and not agent, sequence_timeout=60, winbind=agent
    )
    # the agent's default RPC policy: calls below packet integrity are refused
    ours = (PrivateAgent(work / "agent", samba, sequence_timeout=60, min_level="integrity")
            if agent else None)  # fmt: skip
    server = Server(samba, shares, mnt, ours)
    samba.start()
    if ours:
        try:
            ours.start()
        except BaseException:
            samba.stop()
            raise
    elif fsrvp:
        server.wait_fsrvp()
    return server


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("client-samba")
    with loop_filesystem("btrfs", 512, work) as mnt:
        yield work, mnt


@pytest.fixture(scope="module")
def server(btrfs: tuple[Path, Path]) -> Iterator[Server]:
    work, mnt = btrfs
    s = _make_server(work / "samba", mnt, "share", SHARES)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def clean(server: Server) -> Iterator[Server]:
    assert server.leftovers() == []
    yield server
    assert server.leftovers() == [], "left on the server"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "client.sqlite3"


def cli(
    server: Server | None, state: Path, *args: str, port: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, REMOTEVSS_CLIENT_STATE=str(state), REMOTEVSS_PASSWORD=PASSWORD)
    env.pop("KRB5CCNAME", None)
    p = port if port is not None else (server.port if server else 445)
    argv = [sys.executable, "-m", "remotevss.cli", "shadow", "-U", "root", "-p", str(p)]
    argv += [*(server.cli_args if server else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def sets(server: Server, state: Path) -> list[dict]:  # type: ignore[type-arg]
    r = cli(server, state, "list", "--no-check", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["sets"]  # type: ignore[no-any-return]


# ----------------------------------------------------------------- every command


def test_every_command_end_to_end(
    clean: Server, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = clean
    r = cli(srv, state, "query", srv.unc("share0"))
    assert r.returncode == 0, r.stderr
    copied = "no" if srv.agent else "unknown"  # Samba: IsPathShadowCopied is NOT_SUPPORTED
    assert rf"\\127.0.0.1\share0: supported (owner ANCHORFS); shadow copied: {copied}" in r.stdout

    r = cli(srv, state, "add", srv.unc("share0"))
    assert r.returncode == 0 and "1 share(s) pending" in r.stdout, r.stderr
    t0 = time.perf_counter()
    r = cli(srv, state, "--json", "create", srv.unc("share1"))
    create_s = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    (created,) = json.loads(r.stdout)["sets"]
    assert created["status"] == "recovered" and created["context"] == "backup"
    assert [c["original_share"] for c in created["copies"]] == [
        srv.unc("share1"),
        srv.unc("share0"),
    ]
    # the live files change; the snapshot shares keep the point-in-time content
    for name in ("share0", "share1"):
        (srv.shares[name] / "f.txt").write_text(f"{name}: version 2\n")
    for c in created["copies"]:
        snap = c["snapshot_share"]
        assert snap.startswith("\\\\127.0.0.1\\") and "@{" + c["copy_id"] + "}" in snap
        original = c["original_share"].rsplit("\\", 1)[1]
        assert srv.read(snap.rsplit("\\", 1)[1]) == f"{original}: version 1\n".encode()
        assert srv.read(original) == f"{original}: version 2\n".encode()
    assert len(srv.leftovers()) == 4  # two registry shares, two snapshots

    r = cli(srv, state, "list")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert f"* Shadow copy set ID = {{{created['set_id']}}}" in r.stdout
    assert "Number of shadow copies listed: 2" in r.stdout
    assert "Attributes:      Auto_Release Read-only" in r.stdout

    r = cli(srv, state, "expose", created["set_id"])  # already exposed: re-reads the mappings
    assert r.returncode == 0 and created["copies"][0]["snapshot_share"] in r.stdout, r.stderr

    first = created["copies"][0]["copy_id"]
    r = cli(srv, state, "delete", "{" + first + "}")
    assert r.returncode == 0 and f"deleted shadow copy {{{first}}}" in r.stdout, r.stderr
    assert len(srv.leftovers()) == 2
    r = cli(srv, state, "delete", created["set_id"])
    assert r.returncode == 0, r.stderr
    assert sets(srv, state) == []

    # committed only, exposed by a second invocation; a persistent context
    r = cli(
        srv,
        state,
        "--json",
        "create",
        "--no-expose",
        "--context",
        "nas-rollback",
        srv.unc("share2"),
    )
    assert r.returncode == 0 and "not exposed" in r.stderr, r.stderr
    (s,) = json.loads(r.stdout)["sets"]
    assert s["status"] == "committed" and s["copies"][0]["snapshot_share"] is None
    r = cli(srv, state, "--json", "expose", s["set_id"])
    assert r.returncode == 0, r.stderr
    (s,) = json.loads(r.stdout)["sets"]
    assert s["status"] == "recovered" and s["copies"][0]["snapshot_share"]

    # writable: left Exposed until `recover`
    r = cli(
        srv, state, "--json", "create", "--writable", "--context", "app-rollback", srv.unc("share3")
    )
    assert r.returncode == 0, r.stderr
    (w,) = json.loads(r.stdout)["sets"]
    assert w["status"] == "exposed" and w["writable"] and "recover" in r.stderr
    r = cli(srv, state, "recover", w["set_id"])
    assert r.returncode == 0 and "recovered (RecoveryComplete)" in r.stdout, r.stderr
    assert {x["status"] for x in sets(srv, state)} == {"recovered"}

    r = cli(srv, state, "--json", "delete", "--all")
    assert r.returncode == 0, r.stderr
    assert [d["outcome"] for d in json.loads(r.stdout)["deleted"]] == ["deleted", "deleted"]
    with capsys.disabled():
        print(
            f"\n[client] `remotevss shadow create` of 2 shares against Samba: {create_s:.2f} s wall"
        )


def test_script_mode(clean: Server, state: Path, tmp_path: Path) -> None:
    srv = clean
    checker = tmp_path / "check.py"
    checker.write_text(
        "import io, os, sys\n"
        "from impacket.smbconnection import SMBConnection\n"
        "shares = os.environ['REMOTEVSS_SNAPSHOT_SHARES'].split()\n"
        "assert len(shares) == 1 and os.environ['REMOTEVSS_DATA'], shares\n"
        "c = SMBConnection('127.0.0.1', '127.0.0.1', sess_port=int(sys.argv[1]))\n"
        f"c.login('root', {PASSWORD!r})\n"
        "buf = io.BytesIO()\n"
        "c.getFile(shares[0].rsplit(chr(92), 1)[1], 'f.txt', buf.write)\n"
        "sys.exit(0 if buf.getvalue() == b'share4: version 1\\n' else 9)\n"
    )
    live = srv.shares["share4"] / "f.txt"
    script = tmp_path / "backup.dsh"
    script.write_text(
        "# back up share4 from a shadow copy, then let it go\n"
        "set context backup\n"
        f"add {srv.unc('share4')} alias DATA\n"
        "create\n"
        f"exec {sys.executable} -c \"open({str(live)!r}, 'w').write('changed')\"\n"
        f"exec {sys.executable} {checker} {srv.port}\n"
        "list shadows set %VSS_SHADOW_SET%\n"
        "set context nas-rollback\n"
        f"add {srv.unc('share5')}\n"
        "create\n"
        "delete shadows set %VSS_SHADOW_SET%\n"
        "exit\n"
    )
    r = cli(srv, state, "-s", str(script))
    assert r.returncode == 0, r.stdout + r.stderr
    assert live.read_text() == "changed"
    assert "releasing auto-release set" in r.stdout
    assert sets(srv, state) == []


# ----------------------------------------------------------------- authentication levels


def _tapped(conn: FsrvpConnection) -> list[bytes]:
    """Every PDU the transport sends and receives from now on."""
    seen: list[bytes] = []
    t = conn._transport
    send, recv = t.send, t.recv

    def tap_send(data: bytes, *a: object, **kw: object) -> object:
        seen.append(bytes(data))
        return send(data, *a, **kw)

    def tap_recv(*a: object, **kw: object) -> bytes:
        data: bytes = recv(*a, **kw)
        seen.append(bytes(data))
        return data

    t.send, t.recv = tap_send, tap_recv
    return seen


@pytest.mark.parametrize(
    ("level", "sealed"), [("privacy", True), ("integrity", False), ("none", False)]
)
def test_auth_levels(clean: Server, level: str, sealed: bool) -> None:
    opts = ConnectOptions(port=clean.port, auth_level=level)  # type: ignore[arg-type]
    with FsrvpConnection("127.0.0.1", clean.creds, opts) as conn:
        assert conn.negotiated_auth_level == level  # what Samba's bind_ack said
        assert conn.dialect == "3.1.1"
        seen = _tapped(conn)
        resp = conn.is_path_supported(clean.unc("share6") + "\\")
        assert resp.return_value == 0 and resp.owner_machine_name == "ANCHORFS"
    wire = b"".join(seen)
    assert len(seen) == 2
    plain_request = "share6".encode("utf-16-le") in wire
    plain_reply = "ANCHORFS".encode("utf-16-le") in wire
    # privacy seals the stubs; integrity and none leave them readable on the pipe
    assert plain_request is not sealed and plain_reply is not sealed
    request, reply = (rpcrt.MSRPCHeader(pdu) for pdu in seen)
    for pdu in (request, reply):
        if level == "none":
            assert pdu["auth_len"] == 0
        else:  # each PDU carries its verifier at the negotiated level
            assert rpcrt.SEC_TRAILER(pdu["sec_trailer"])["auth_level"] == (
                rpcrt.RPC_C_AUTHN_LEVEL_PKT_PRIVACY
                if sealed
                else rpcrt.RPC_C_AUTHN_LEVEL_PKT_INTEGRITY
            )


@pytest.mark.parametrize("level", ["integrity", "none"])
def test_cli_create_at_other_levels(clean: Server, state: Path, level: str) -> None:
    share = "share7" if level == "integrity" else "share8"
    r = cli(clean, state, "--auth-level", level, "--json", "create", clean.unc(share))
    assert r.returncode == 0, r.stderr
    (s,) = json.loads(r.stdout)["sets"]
    assert clean.read(s["copies"][0]["snapshot_share"].rsplit("\\", 1)[1]).startswith(
        share.encode()
    )
    r = cli(clean, state, "--auth-level", level, "delete", s["set_id"])
    assert r.returncode == 0, r.stderr


def test_ipv6_literal_host(clean: Server, state: Path) -> None:
    try:
        with socket.create_connection(("::1", clean.port), timeout=2):
            pass
    except OSError as exc:
        pytest.skip(f"Samba is not reachable on [::1] here: {exc}")
    r = cli(clean, state, "query", r"\\[::1]\share0", r"\\--1.ipv6-literal.net\share0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(r"\\--1.ipv6-literal.net\share0: supported (owner ANCHORFS)") == 2


# ----------------------------------------------------------------- failures


def test_failures_are_clear(clean: Server, state: Path) -> None:
    srv = clean
    r = subprocess.run(
        [sys.executable, "-m", "remotevss.cli", "shadow", "-U", "root%wrong", "-p", str(srv.port),
         "create", srv.unc("share9")],
        capture_output=True, text=True, env=dict(os.environ, REMOTEVSS_CLIENT_STATE=str(state)),
    )  # fmt: skip
    assert r.returncode == 4, r.stderr
    assert "127.0.0.1: logon refused: bad user name or password (STATUS_LOGON_FAILURE)" in r.stderr

    r = cli(srv, state, "create", r"\\127.0.0.2\share9")
    assert r.returncode == 3 and "127.0.0.2: connection refused on port" in r.stderr

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    r = cli(srv, state, "create", srv.unc("share9"), port=port)
    assert r.returncode == 3 and f"connection refused on port {port}" in r.stderr

    r = cli(srv, state, "create", r"\\127.0.0.1\share9\subdir")
    assert r.returncode == 2 and "a path inside a share" in r.stderr
    r = cli(srv, state, "create", r"\\fe80--1.ipv6-literal.net\share9")
    assert r.returncode == 2 and "link-local" in r.stderr

    r = cli(srv, state, "create", srv.unc("no_such_share"))
    assert r.returncode == 1
    no_share = "FSRVP_E_OBJECT_NOT_FOUND (0x80042308)" if srv.agent else "E_INVALIDARG (0x80070057)"
    assert f"IsPathSupported failed: {no_share}" in r.stderr
    assert "no such share on the server" in r.stderr

    unknown = "11111111-2222-3333-4444-555555555555"
    r = cli(srv, state, "delete", unknown)
    assert r.returncode == 5 and "no shadow copy set or shadow copy" in r.stderr
    r = cli(srv, state, "expose", unknown)
    assert r.returncode == 5
    # ids the client never recorded, sent to the server: Samba's "no such set" code
    r = cli(srv, state, "delete", "--share", srv.unc("share9"), "--set", unknown, "--copy", unknown)
    assert r.returncode == 5, r.stderr
    assert "DeleteShareMapping failed: FSRVP_E_OBJECT_NOT_FOUND (0x80042308)" in r.stderr
    assert sets(srv, state) == []


def test_connect_timeout_on_a_silent_port(state: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts (in the kernel) and never answers
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        r = cli(None, state, "--connect-timeout", "1", "query", r"\\127.0.0.1\x", port=port)
    assert r.returncode == 6, r.stderr
    assert "no SMB answer" in r.stderr and time.monotonic() - t0 < 15


def test_no_fsrvp_agent(btrfs: tuple[Path, Path], state: Path) -> None:
    work, mnt = btrfs
    plain = _make_server(work / "plain", mnt, "plain", 1, fsrvp=False)
    try:
        r = cli(plain, state, "query", plain.unc("plain0"))
    finally:
        plain.samba.stop()
    assert r.returncode == 3, r.stderr
    assert "no FSRVP agent on this server" in r.stderr


# ----------------------------------------------------------------- the server goes away


@pytest.fixture
def own_server(btrfs: tuple[Path, Path]) -> Iterator[Server]:
    """A Samba these tests may stop, freeze and restart."""
    work, mnt = btrfs
    name = f"own{int(time.monotonic() * 1000) % 100000}-"
    s = _make_server(work / name, mnt, name, 2)
    try:
        yield s
    finally:
        for p in s.samba.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError, AssertionError):
            s.signal_fsrvp(signal.SIGCONT)
        s.stop()
    assert s.leftovers() == []


def test_server_stopped_mid_sequence(own_server: Server, tmp_path: Path) -> None:
    srv = own_server
    opts = srv.options(connect_timeout=5, call_timeout=10)
    st = ClientState(tmp_path / "api.sqlite3")
    names = list(srv.shares)
    s = ShadowCopySet(None, srv.creds, options=opts, state=st)
    s.add(srv.unc(names[0]))
    srv.stop()
    with pytest.raises(errors.FsrvpCallError) as exc:
        s.commit()
    assert isinstance(exc.value, errors.ConnectionLost) and exc.value.exit_code == 3
    assert "PrepareShadowCopySet" in str(exc.value)
    (rec,) = st.sets()  # the abort could not reach the server: the entry stays, with why
    assert rec.status == "added" and "cleanup failed" in rec.note
    srv.restart()
    assert srv.leftovers() == []

    # committed, then the server restarts (Samba reloads committed sets from its tdb;
    # our agent drops sets that never reached Exposed, with their snapshots);
    # a later `delete` aborts it, and since Samba ignores Abort of a committed set,
    # the client exposes and deletes it instead: nothing is left.
    state = tmp_path / "cli.sqlite3"
    r = cli(srv, state, "--json", "create", "--no-expose", srv.unc(names[1]))
    assert r.returncode == 0, r.stderr
    (created,) = json.loads(r.stdout)["sets"]
    assert len(srv.leftovers()) == 1  # the snapshot
    srv.stop()
    r = cli(srv, state, "--connect-timeout", "3", "expose", created["set_id"])
    assert r.returncode == 3 and "connection refused" in r.stderr
    srv.restart()
    if srv.agent:
        assert srv.leftovers() == []  # dropped at the agent's start-up
    r = cli(srv, state, "delete", created["set_id"])
    if srv.agent:
        assert r.returncode == 0 and "already gone on the server" in r.stderr, r.stderr
    else:
        assert r.returncode == 0 and "aborted set" in r.stdout, r.stderr
    assert srv.leftovers() == []
    # the stale API entry: the server no longer knows it
    r = cli(srv, state, "list")
    assert r.returncode == 0
    ShadowCopySet.resume(rec, srv.creds, opts, state=st).abort()
    assert st.sets() == []


def test_call_timeout_when_the_server_hangs(own_server: Server) -> None:
    srv = own_server
    opts = srv.options(call_timeout=2, connect_timeout=5)
    conn = FsrvpConnection("127.0.0.1", srv.creds, opts)
    srv.signal_fsrvp(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(errors.CallTimeout) as exc:
            conn.get_supported_version()
        took = time.monotonic() - t0
    finally:
        srv.signal_fsrvp(signal.SIGCONT)
    assert 1.5 < took < 10 and exc.value.exit_code == 6
    assert "GetSupportedVersion: no answer within 2 s; connection closed" in str(exc.value)
    assert conn.closed
    with pytest.raises(errors.ConnectionLost):
        conn.get_supported_version()
    # the server recovers; a new binding works
    with FsrvpConnection("127.0.0.1", srv.creds, opts) as again:
        assert again.get_supported_version().return_value == 0


def test_interrupted_create_cleans_up(own_server: Server, tmp_path: Path) -> None:
    """Ctrl-C in the middle: the set is aborted before the error propagates."""
    srv = own_server
    opts = srv.options()
    s = ShadowCopySet(None, srv.creds, options=opts)
    name = next(iter(srv.shares))

    with pytest.raises(KeyboardInterrupt), s:
        s.add(srv.unc(name))
        s.commit()
        raise KeyboardInterrupt
    assert s.status == "aborted"
    assert srv.leftovers() == []
