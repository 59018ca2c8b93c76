r"""DCE/RPC authentication through smbd against our agent, with clients we did not write.

A private smbd without rpcd_fsrvp, winbindd (so Samba's ``ntlm_auth`` can check
NTLM against the private passdb) and ``remotevss agent`` in its default policy:
``[rpc_auth] min_level = "integrity"`` (MS-FSRVP 3.1.4).  Clients:

* rpcclient with ``[sign]``/``[seal]``, NTLMSSP and SPNEGO: the whole
  fss_create_expose + fss_delete;
* impacket binding NTLM at integrity and privacy, every request carrying the
  verification trailer Windows sends: the spec's whole sequence;
* unauthenticated binds (rpcclient's default): E_ACCESSDENIED, nothing changes;
* a wrong RPC password on a good SMB session: access denied, the agent serves on;
* an RPC user other than the SMB user: E_ACCESSDENIED (identity_mismatch = refuse).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remotevss.client.rpc import FsrvpCalls
from remotevss.fsrvp.constants import CTX_BACKUP, INTERFACE_UUID, HResult
from remotevss.samba.private import PASSWORD, PrivateAgent, PrivateSamba, missing_tools
from tests.hardening.harness import add_smb_user, delete_all, remove_smb_user, sequence
from tests.support.samba_agent import (
    agent_behind_samba,
    journal_mappings,
    leftovers,
    subvolume_shares,
)
from tests.support.vtrailer import verification_trailer

TOOLS = ("smbd", "winbindd", "ntlm_auth", "rpcclient", "smbpasswd", "net", "unshare")
_missing = missing_tools(*TOOLS)
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, winbindd, mount namespace)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/system tools: {_missing}"),
]

SHARES = ("data0", "data1")
OTHER = f"rvrpc{os.getpid() % 100000}"
OTHER_PW = "Other-Passw0rd-1"
INTEGRITY, PRIVACY = 5, 6


@dataclass
class Stack:
    samba: PrivateSamba
    agent: PrivateAgent
    shares: dict[str, Path]

    def rpcclient(self, binding: str, command: str, user: str = "ANCHORFS\\root") -> tuple[int, str]:
        import subprocess

        r = subprocess.run(
            ["rpcclient", "-s", str(self.samba.conf), "-p", str(self.samba.port),
             "-U", f"{user}%{PASSWORD}", binding, "-c", command],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        return r.returncode, r.stdout + r.stderr

    def clean(self) -> None:
        assert journal_mappings(self.agent) == [] and leftovers(self.samba) == []

    def log_since(self, offset: int) -> str:
        return self.agent.log.read_bytes()[offset:].decode(errors="replace")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("rpcauth")
    with loop_filesystem("btrfs", 512, work) as mnt:
        shares = subvolume_shares(mnt, SHARES)
        with agent_behind_samba(work, shares, winbind=True, min_level="integrity",
                                trace=True) as (s, a):  # fmt: skip
            add_smb_user(s.conf, OTHER, OTHER_PW)
            try:
                yield Stack(s, a, shares)
            finally:
                remove_smb_user(s.conf, OTHER)


class AuthFsrvp(FsrvpCalls):
    """impacket: an SMB session as one user, the FSRVP bind authenticated (NTLM) as another
    or the same, each request stub followed by Windows' verification trailer."""

    def __init__(self, port: int, level: int, *, smb: tuple[str, str] = ("root", PASSWORD),
                 rpc: tuple[str, str] = ("root", PASSWORD), domain: str = "ANCHORFS",
                 trailer: bool = True) -> None:  # fmt: skip
        from impacket.dcerpc.v5 import rpcrt, transport
        from impacket.smbconnection import SMBConnection
        from impacket.uuid import uuidtup_to_bin

        self.smb = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, timeout=60)
        self.smb.login(*smb)
        t = transport.SMBTransport("127.0.0.1", port, filename=r"\FssagentRpc", smb_connection=self.smb)
        self._dce = t.get_dce_rpc()
        self._dce.set_credentials(rpc[0], rpc[1], domain)
        self._dce.set_auth_type(rpcrt.RPC_C_AUTHN_WINNT)
        self._dce.set_auth_level(level)
        self._dce.connect()
        self._dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "1.0")))
        self.trailer = trailer

    def _exchange(self, opnum: int, stub: bytes) -> bytes:
        if self.trailer:
            call_id = self._dce._DCERPC_v5__callid  # the id impacket gives this call
            stub = verification_trailer(
                stub, iface=INTERFACE_UUID, version=(1, 0), call_id=call_id, context_id=0,
                opnum=opnum,
            )
        return super()._exchange(opnum, stub)

    def close(self) -> None:
        self._dce.disconnect()
        self.smb.close()

    def __enter__(self) -> AuthFsrvp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_unauthenticated_calls_are_denied_by_default(stack: Stack) -> None:
    offset = stack.agent.log.stat().st_size
    rc, out = stack.rpcclient("ncacn_np:127.0.0.1", "fss_create_expose backup ro data0")
    assert rc != 0 or "failed" in out.lower(), out
    assert re.search(r"(?i)access.?denied|0x80070005", out), out
    assert "below the required 5" in stack.log_since(offset)
    stack.clean()


@pytest.mark.parametrize("flags", ["sign", "seal", "sign,spnego", "seal,spnego"])
def test_rpcclient_sign_and_seal_run_the_sequence(stack: Stack, flags: str) -> None:
    offset = stack.agent.log.stat().st_size
    binding = f"ncacn_np:127.0.0.1[{flags}]"
    rc, out = stack.rpcclient(binding, "fss_create_expose backup ro data0 data1")
    assert rc == 0, out
    exposed = re.findall(r"^([0-9a-f-]{36})\(([0-9a-f-]{36})\): share (\S+)@", out, re.M)
    assert {share for _, _, share in exposed} == set(SHARES), out
    for set_id, copy_id, share in exposed:
        rc, out = stack.rpcclient(binding, f"fss_delete {share} {set_id} {copy_id}")
        assert rc == 0, out
    level = 6 if flags.startswith("seal") else 5
    log = stack.log_since(offset)
    assert f"RPC auth from 127.0.0.1: ANCHORFS\\root at level {level}" in log, log[-2000:]
    assert "refused" not in log
    # Samba's client appends a verification trailer to its authenticated calls; the
    # engine checked them against the calls (dcerpc/vtrailer.py) and let them through
    # (the trace shows short stubs whole: at least IsPathSupported's)
    assert "8ae3137102f43671" in log.lower(), log[-3000:]
    # every call's event line says how it was authenticated
    events = [json.loads(x.split("remotevss.events INFO ", 1)[1])
              for x in log.splitlines() if "remotevss.events INFO " in x]  # fmt: skip
    assert events and all(
        e["rpc_auth"] == ("privacy" if level == 6 else "integrity")
        and e["rpc_user"] == "ANCHORFS\\root"
        for e in events
    ), events[:3]
    stack.clean()


@pytest.mark.parametrize("level", [INTEGRITY, PRIVACY])
def test_impacket_ntlm_with_verification_trailer_runs_the_whole_sequence(stack: Stack,
                                                                         level: int) -> None:  # fmt: skip
    with AuthFsrvp(stack.samba.port, level) as c:
        assert c.get_supported_version().return_value == 0
        sid, copies = sequence(c, list(SHARES), CTX_BACKUP, host="127.0.0.1")
        assert len(copies) == 2 and len(journal_mappings(stack.agent)) == 2
        # a file read through the exposed snapshot share equals the point in time
        delete_all(c, sid, copies)
    stack.clean()


def test_wrong_rpc_password_is_denied_and_the_agent_serves_on(stack: Stack) -> None:
    from impacket.dcerpc.v5.rpcrt import DCERPCException

    with (
        pytest.raises(DCERPCException, match="access_denied"),
        AuthFsrvp(stack.samba.port, PRIVACY, rpc=("root", "wrong-password")) as c,
    ):
        c.get_supported_version()
    with AuthFsrvp(stack.samba.port, PRIVACY) as c:
        assert c.get_supported_version().return_value == 0


def test_unknown_rpc_user_is_denied_and_the_agent_serves_on(stack: Stack) -> None:
    from impacket.dcerpc.v5.rpcrt import DCERPCException

    offset = stack.agent.log.stat().st_size
    with (
        pytest.raises(DCERPCException, match="access_denied"),
        AuthFsrvp(stack.samba.port, PRIVACY, rpc=("no-such-user", "whatever")) as c,
    ):
        c.get_supported_version()
    assert "RPC auth from" not in stack.log_since(offset)  # no call ran authenticated
    with AuthFsrvp(stack.samba.port, PRIVACY) as c:
        assert c.get_supported_version().return_value == 0
    stack.clean()


@pytest.mark.parametrize("domain", ["WORKGROUP", "REMOTEVSS", ""])
def test_any_other_domain_is_the_local_sam_on_a_standalone_server(stack: Stack,
                                                                  domain: str) -> None:  # fmt: skip
    """smbd on a standalone server maps a domain that is not its netbios name (an
    unknown one, its workgroup, none) to its own SAM; so does the agent, where
    winbindd alone answers NT_STATUS_NO_LOGON_SERVERS (docs/security.md)."""
    offset = stack.agent.log.stat().st_size
    with AuthFsrvp(stack.samba.port, PRIVACY, domain=domain) as c:
        assert c.get_supported_version().return_value == 0
        sid, copies = sequence(c, list(SHARES), CTX_BACKUP, host="127.0.0.1")
        assert len(copies) == 2
        delete_all(c, sid, copies)
    log = stack.log_since(offset)
    assert "RPC auth from 127.0.0.1: ANCHORFS\\root at level 6" in log, log[-2000:]
    assert f"NTLM {domain}\\root checked against the local SAM as ANCHORFS\\root" in log
    stack.clean()


def test_rpcclient_naming_the_workgroup_binds_sealed(stack: Stack) -> None:
    rc, out = stack.rpcclient("ncacn_np:127.0.0.1[seal]", "fss_get_sup_version", "WORKGROUP\\root")
    assert rc == 0 and "NO_LOGON_SERVERS" not in out, out


def test_other_domain_with_a_wrong_password_is_still_refused(stack: Stack) -> None:
    from impacket.dcerpc.v5.rpcrt import DCERPCException

    offset = stack.agent.log.stat().st_size
    for rpc, domain in [(("root", "wrong-password"), "WORKGROUP"), (("root", PASSWORD[:-1]), ""),
                        (("no-such-user", PASSWORD), "WORKGROUP")]:  # fmt: skip
        with (
            pytest.raises(DCERPCException, match="access_denied"),
            AuthFsrvp(stack.samba.port, PRIVACY, rpc=rpc, domain=domain) as c,
        ):
            c.get_supported_version()
    log = stack.log_since(offset)
    assert "RPC auth from" not in log and log.count("NT_STATUS_LOGON_FAILURE") >= 3, log[-2000:]
    # another SAM user naming the workgroup is that user, not the SMB session's
    with AuthFsrvp(stack.samba.port, PRIVACY, rpc=(OTHER, OTHER_PW), domain="WORKGROUP") as c:
        assert c.set_context(CTX_BACKUP).return_value == HResult.E_ACCESSDENIED
    assert f"RPC user ANCHORFS\\{OTHER} is not the SMB user" in stack.log_since(offset)
    stack.clean()


def test_rpc_identity_must_be_the_smb_user(stack: Stack) -> None:
    offset = stack.agent.log.stat().st_size
    with AuthFsrvp(stack.samba.port, PRIVACY, rpc=(OTHER, OTHER_PW)) as c:
        assert c.set_context(CTX_BACKUP).return_value == HResult.E_ACCESSDENIED
        assert c.start(uuid.uuid4()).return_value == HResult.E_ACCESSDENIED
    assert f"RPC user ANCHORFS\\{OTHER} is not the SMB user ANCHORFS\\root" in stack.log_since(
        offset
    )
    stack.clean()


def _helpers_of(pid: int) -> int:
    """ntlm_auth processes among ``pid``'s descendants."""
    parent: dict[int, int] = {}
    comm: dict[int, str] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition("(")[2].rpartition(")")
            parent[int(d)], comm[int(d)] = int(rest.split()[1]), name
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        tree.update(kids)
        todo.extend(kids)
    return sum(comm[p] == "ntlm_auth" for p in tree)


def test_sixteen_sealed_binds_at_once_share_two_helpers(stack: Stack) -> None:
    """16 rpcclient connections bind sealed at once: all complete, and the agent
    never runs more ntlm_auth helpers than [rpc_auth] helpers (2 by default): the
    others wait for a slot on the event loop, not in a thread (agent/auth_gate.py)."""
    import threading

    offset = stack.agent.log.stat().st_size
    assert stack.agent.proc is not None
    agent_pid = stack.agent.proc.pid
    peak, done = 0, threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _helpers_of(agent_pid))
            time.sleep(0.005)

    results: list[tuple[int, str]] = []

    def client() -> None:
        results.append(stack.rpcclient("ncacn_np:127.0.0.1[seal]", "fss_get_sup_version"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        clients = [threading.Thread(target=client) for _ in range(16)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(120)
    finally:
        done.set()
        watcher.join()
    assert len(results) == 16 and all(rc == 0 for rc, _ in results), results
    log = stack.log_since(offset)
    assert log.count("RPC auth from 127.0.0.1: ANCHORFS\\root at level 6") == 16, log[-3000:]
    assert "authentication slot" not in log and "refused" not in log
    assert 1 <= peak <= 2, peak
