"""\\pipe\\FssagentRpc through a real smbd 4.17 to our agent.

A private smbd + samba-dcerpcd (without Samba's rpcd_fsrvp) on a high
loopback port, one btrfs subvolume share ``fsrvp_share`` (smbtorture's
hard-coded name), and a real ``remotevss agent`` process that serves the pipe
in that Samba's ``<ncalrpc dir>/np``.  Clients: Samba's rpcclient and
smbtorture, impacket over SMB.  Shares come from the agent's own ``[shares]``
and exposure is a symlink for now (``[samba] shares = "agent"``, ``expose =
"symlink"``): the snapshot share is not reachable over SMB here, so only the
FSRVP results are checked.

smbtorture gets a client-only config: Samba's source4 loadparm (smbtorture,
``samba.param``) refuses the server config's ``include = registry``.
"""

from __future__ import annotations

import grp
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import INTERFACE_UUID, HResult
from remotevss.samba import npa
from remotevss.samba.private import missing_tools
from tests.support.pipe_harness import assert_closed_without_reply, serve_listener
from tests.support.samba import PASSWORD, PrivateSamba
from tests.system.agent_harness import AgentProcess

TOOLS = ("smbd", "rpcclient", "smbtorture", "smbpasswd", "mkfs.btrfs", "useradd", "userdel")
_missing = missing_tools(*TOOLS)
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, loop btrfs, users)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/system tools: {_missing}"),
]

SHARE = "fsrvp_share"


@dataclass
class SambaAgent(AgentProcess):
    """An agent process that also serves the pipe of one PrivateSamba."""

    samba_conf: Path | None = None

    @property
    def pipe(self) -> Path:
        assert self.samba_conf is not None
        return self.samba_conf.parents[1] / "ncalrpc" / "np" / "fssagentrpc"

    def write_config(self) -> None:
        super().write_config()
        with open(self.config, "a") as f:
            f.write(
                f'[samba]\nconfig_file = "{self.samba_conf}"\n'
                'shares = "agent"\nexpose = "symlink"\n'
                # rpcclient, smbtorture and impacket bind here without RPC auth
                '[rpc_auth]\nmin_level = "none"\n'
            )

    def start(self, crash_after: str | None = None, timeout: float = 30) -> None:
        super().start(crash_after, timeout)
        deadline = time.monotonic() + timeout
        while not self.pipe.is_socket():
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.02)


@dataclass
class Stack:
    samba: PrivateSamba
    agent: SambaAgent
    share: Path
    client_conf: Path

    def rpcclient(self, command: str, user: str = "root", password: str = PASSWORD) -> str:
        out = subprocess.run(
            ["rpcclient", "-s", str(self.samba.conf), "-p", str(self.samba.port),
             "-U", f"{user}%{password}", "127.0.0.1", "-c", command],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        return out.stdout + out.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import btrfsutil

    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("samba-pipe")
    with loop_filesystem("btrfs", 512, work) as mnt:
        share = mnt / SHARE
        btrfsutil.create_subvolume(str(share))
        samba = PrivateSamba(work / "samba", {SHARE: share}, samba_fsrvp=False)
        (work / "agent").mkdir()
        agent = SambaAgent(work / "agent", {SHARE: share}, mode="samba", samba_conf=samba.conf)
        client_conf = work / "client.conf"
        client_conf.write_text("[global]\n")
        try:
            samba.start()
            agent.start()
            yield Stack(samba, agent, share, client_conf)
        finally:
            agent.stop()
            samba.stop()


def test_rpcclient_get_supported_version(stack: Stack) -> None:
    out = stack.rpcclient("fss_get_sup_version")
    assert "supports FSRVP versions from 1 to 1" in out, out
    log = stack.agent.log.read_text()
    assert re.search(r"pipe opened by ANCHORFS\\root from 127\.0\.0\.1 .*NPA level 7", log), log


def test_rpcclient_is_path_supported(stack: Stack) -> None:
    out = stack.rpcclient(f"fss_is_path_sup {SHARE}")
    assert f"UNC \\\\127.0.0.1\\{SHARE}\\ supports shadow copy requests" in out, out
    out = stack.rpcclient("fss_is_path_sup no_such_share")
    assert "0x80070057" in out, out


def test_rpcclient_create_expose_reaches_commit_and_expose(stack: Stack) -> None:
    out = stack.rpcclient(f"fss_create_expose backup ro {SHARE}")
    assert "commit completed" in out, out
    m = re.search(r"([0-9a-f-]{36})\(([0-9a-f-]{36})\): share (\S+) exposed as a snapshot", out)
    assert m, out
    set_id, copy_id, name = m.groups()
    assert name == f"{SHARE}@{{{copy_id}}}"
    exposed = stack.agent.exposed()
    assert Path(exposed[name]).parent == stack.share / ".snapshots"
    out = stack.rpcclient(f"fss_delete {SHARE} {set_id} {copy_id}")
    assert "deleted" in out, out
    assert stack.agent.exposed() == {} and stack.agent.snapshots() == []


@pytest.mark.parametrize("test", ["get_version", "is_path_supported"])
def test_smbtorture(stack: Stack, test: str) -> None:
    out = subprocess.run(
        ["smbtorture", "-s", str(stack.client_conf), "ncacn_np:127.0.0.1",
         "-U", f"root%{PASSWORD}", f"--option=smb ports={stack.samba.port}",
         "--option=fss:sequence timeout=1", f"rpc.fsrvp.fsrvp.{test}"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and f"success: fsrvp.{test}" in out.stdout, out.stdout + out.stderr


class SmbPipe:
    """impacket's SMB client and DCE/RPC engine, our FSRVP codec."""

    def __init__(self, port: int, user: str, password: str) -> None:
        from impacket.dcerpc.v5 import transport
        from impacket.smbconnection import SMBConnection
        from impacket.uuid import uuidtup_to_bin

        self.smb = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, timeout=30)
        self.smb.login(user, password)
        t = transport.SMBTransport(
            "127.0.0.1", port, filename=r"\FssagentRpc", smb_connection=self.smb
        )
        self.dce = t.get_dce_rpc()
        self.dce.connect()
        self.dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "1.0")))

    def call(self, req: calls.Request) -> calls.Response:
        self.dce.call(req.opnum, calls.encode_request(req))
        return calls.decode_response(req.opnum, self.dce.recv())

    def close(self) -> None:
        self.dce.disconnect()
        self.smb.close()


def test_impacket_over_smb(stack: Stack) -> None:
    pipe = SmbPipe(stack.samba.port, "root", PASSWORD)
    try:
        r = pipe.call(calls.GetSupportedVersionRequest())
        assert isinstance(r, calls.GetSupportedVersionResponse)
        assert (r.min_version, r.max_version, r.return_value) == (1, 1, HResult.ZERO)
        s = pipe.call(calls.IsPathSupportedRequest(f"\\\\127.0.0.1\\{SHARE}\\"))
        assert isinstance(s, calls.IsPathSupportedResponse)
        assert s.return_value == HResult.ZERO and s.supported_by_this_provider
        assert s.owner_machine_name == stack.samba.netbios_name  # Samba's, not the agent's
    finally:
        pipe.close()


ALL_OPNUMS: list[calls.Request] = [
    calls.GetSupportedVersionRequest(),
    calls.SetContextRequest(0),
    calls.StartShadowCopySetRequest(uuid.uuid4()),
    calls.AddToShadowCopySetRequest(uuid.uuid4(), uuid.uuid4(), f"\\\\x\\{SHARE}"),
    calls.CommitShadowCopySetRequest(uuid.uuid4(), 1000),
    calls.ExposeShadowCopySetRequest(uuid.uuid4(), 1000),
    calls.RecoveryCompleteShadowCopySetRequest(uuid.uuid4()),
    calls.AbortShadowCopySetRequest(uuid.uuid4()),
    calls.IsPathSupportedRequest(f"\\\\x\\{SHARE}"),
    calls.IsPathShadowCopiedRequest(f"\\\\x\\{SHARE}"),
    calls.GetShareMappingRequest(uuid.uuid4(), uuid.uuid4(), f"\\\\x\\{SHARE}", 1),
    calls.DeleteShareMappingRequest(uuid.uuid4(), uuid.uuid4(), f"\\\\x\\{SHARE}"),
    calls.PrepareShadowCopySetRequest(uuid.uuid4(), 1000),
]


@pytest.fixture
def smb_user(stack: Stack) -> Iterator[tuple[str, str]]:
    name, password = f"rvss{uuid.uuid4().hex[:8]}", "Us3r-Passw0rd"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        subprocess.run(
            ["smbpasswd", "-c", str(stack.samba.conf), "-s", "-a", name],
            input=f"{password}\n{password}\n".encode(), check=True, capture_output=True,
        )  # fmt: skip
        yield name, password
    finally:
        subprocess.run(["smbpasswd", "-c", str(stack.samba.conf), "-x", name],
                       check=False, capture_output=True)
        subprocess.run(["userdel", name], check=False, capture_output=True)


def test_non_admin_smb_user_is_denied_everything(stack: Stack, smb_user: tuple[str, str]) -> None:
    user, password = smb_user
    assert "0x80070005" in stack.rpcclient("fss_get_sup_version", user, password)
    pipe = SmbPipe(stack.samba.port, user, password)
    try:
        codes = [pipe.call(r).return_value for r in ALL_OPNUMS]
    finally:
        pipe.close()
    assert codes == [HResult.E_ACCESSDENIED] * len(ALL_OPNUMS)
    assert stack.agent.snapshots() == [] and stack.agent.exposed() == {}
    root = SmbPipe(stack.samba.port, "root", PASSWORD)
    try:  # the context was not taken by the denied SetContext
        assert root.call(calls.SetContextRequest(0)).return_value == HResult.ZERO
        started = root.call(calls.StartShadowCopySetRequest(uuid.uuid4()))
        assert isinstance(started, calls.StartShadowCopySetResponse)
        assert started.return_value == HResult.ZERO
        aborted = root.call(calls.AbortShadowCopySetRequest(started.shadow_copy_set_id))
        assert aborted.return_value == HResult.ZERO
    finally:
        root.close()
    assert re.search(rf"pipe opened by ANCHORFS\\{user} from 127\.0\.0\.1", stack.agent.log.read_text())


@pytest.mark.parametrize("grant", ["SeBackupPrivilege", "Backup Operators"])
def test_users_granted_by_samba_are_admitted(
    stack: Stack, smb_user: tuple[str, str], grant: str
) -> None:
    """The two ways docs/samba.md gives to let a backup account in, end to end."""
    user, password = smb_user
    net = ["net", "-s", str(stack.samba.conf)]
    if grant == "SeBackupPrivilege":
        steps = [[*net, "sam", "rights", "grant", user, "SeBackupPrivilege"]]
    else:
        try:
            grp.getgrnam("backup")
        except KeyError:
            pytest.skip("no unix group 'backup' to map BUILTIN\\Backup Operators to")
        subprocess.run(  # may already be mapped by an earlier run on this passdb
            [*net, "groupmap", "add", "sid=S-1-5-32-551", "unixgroup=backup", "type=builtin"],
            check=False, capture_output=True,
        )  # fmt: skip
        steps = [[*net, "sam", "addmem", "BUILTIN\\Backup Operators", user]]
    for step in steps:
        subprocess.run(step, check=True, capture_output=True)
    out = stack.rpcclient("fss_get_sup_version", user, password)
    assert "supports FSRVP versions from 1 to 1" in out, out


def test_garbage_handshake_is_refused_and_serving_goes_on(stack: Stack) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(stack.agent.pipe))
        s.sendall(b"\x00\x00\x00\x40" + b"JUNK" * 16)
        assert_closed_without_reply(s)
    assert "supports FSRVP versions from 1 to 1" in stack.rpcclient("fss_get_sup_version")
    assert "refused a bad NPA hand-off" in stack.agent.log.read_text()


# -------------------------------------------- the listener in-process, own Samba


def test_live_handoff_fields_and_simulated_hijack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samba = PrivateSamba(tmp_path / "samba", {"plain": tmp_path}, samba_fsrvp=False)
    seen: list[npa.NpaInfo] = []
    decode = npa.decode_request

    def spy(blob: bytes) -> npa.NpaInfo:
        seen.append(decode(blob))
        return seen[-1]

    monkeypatch.setattr(npa, "decode_request", spy)
    samba.start()
    try:
        np_dir = tmp_path / "samba" / "ncalrpc" / "np"
        with serve_listener(tmp_path / "agent", pipe_dir=np_dir) as served:
            out = samba.rpcclient("fss_get_sup_version", check=False)
            assert "versions from 1 to 1" in out.stdout, out.stdout + out.stderr
            info = seen[-1]
            assert (info.level, info.transport) == (7, 1)
            assert (info.account_name, info.domain_name, info.unix_name) == (
                "root", "ANCHORFS", "root"
            )
            assert (info.uid, info.gid) == (0, 0) and 0 in info.groups
            assert info.remote_client_addr == "127.0.0.1" and info.remote_client_port > 0
            assert (info.local_server_addr, info.local_server_port) == ("127.0.0.1", samba.port)
            assert info.npa_flags == 0 and "S-1-22-1-0" in info.sids
            assert len(info.session_key) == 16
            # Hijack: someone unlinks the path and binds their own socket there.
            served.path.unlink()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
                other.bind(str(served.path))
                other.listen()
                assert not served.listener.check()
                assert served.listener.problem == "replaced by another socket"
    finally:
        samba.stop()


def test_samba_dcerpcd_with_rpcd_fsrvp_takes_the_socket_and_we_notice(tmp_path: Path) -> None:
    np_dir = tmp_path / "samba" / "ncalrpc" / "np"
    with serve_listener(tmp_path / "agent", pipe_dir=np_dir) as served:
        assert served.listener.owned
        samba = PrivateSamba(tmp_path / "samba", {"plain": tmp_path}, samba_fsrvp=True)
        samba.start()  # samba-dcerpcd unlinks our socket and binds rpcd_fsrvp's
        try:
            assert not served.listener.check()
            assert served.listener.problem == "replaced by another socket"
            out = samba.rpcclient("fss_get_sup_version", check=False)
            assert "versions from 1 to 1" in out.stdout  # Samba's own server answered
            assert served.listener.handshakes == 0
        finally:
            samba.stop()
