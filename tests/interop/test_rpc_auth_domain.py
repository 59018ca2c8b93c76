r"""RPC authentication on an Active Directory domain member, against a real Samba AD DC.

A private Samba AD DC (tests/support/addc.py, 127.0.0.2) and a member smbd
joined to it with ``net ads join``, winbindd and its machine keytab
(``net ads keytab create``), ``remotevss agent`` on the member's pipe at the
default policy.  What a standalone server cannot show:

* NTLM for a domain user is checked by the DC (ntlm_auth -> member winbindd ->
  netlogon), and the domain user is authorized by the groups in its token
  (Domain Admins -> BUILTIN\Administrators), a plain domain user refused;
* Kerberos tickets from the DC's KDC carry a PAC, smbd reads it, the agent
  accepts the ticket with the member's machine keytab: our client (``-k``)
  and rpcclient ``[krb5,seal]``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from remotevss.fsrvp.constants import CTX_BACKUP, HResult
from remotevss.samba.private import PrivateAgent, PrivateSamba
from tests.support.addc import (
    ADDRESS,
    ADMIN_PASSWORD,
    DOMAIN,
    REALM,
    PrivateAdDc,
    member_globals,
    missing_tools,
)

_missing = missing_tools()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Samba AD DC, mount namespaces)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba AD tools: {_missing}"),
]

SHARES = ("data0",)
USER, USER_PW = "plainuser", "Plain-Passw0rd-1"
PRIVACY = 6


@dataclass
class Domain:
    dc: PrivateAdDc
    member: PrivateSamba
    agent: PrivateAgent
    krb5_conf: Path

    def log_since(self, offset: int) -> str:
        return self.agent.log.read_bytes()[offset:].decode(errors="replace")

    def kinit(self, principal: str, password: str, *services: str) -> Path:
        cc = self.dc.root / f"cc-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, "KRB5_CONFIG": str(self.krb5_conf)}
        subprocess.run(["kinit", "-c", f"FILE:{cc}", principal], input=password + "\n",
                       text=True, check=True, capture_output=True, env=env)  # fmt: skip
        if services:
            subprocess.run(["kvno", "-c", f"FILE:{cc}", *services], check=True,
                           capture_output=True, env=env)  # fmt: skip
        return cc


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Domain]:
    from remotevss.loopfs import loop_filesystem
    from tests.support.samba_agent import subvolume_shares

    work = tmp_path_factory.mktemp("addomain")
    dc = PrivateAdDc(work / "dc")
    dc.start()
    try:
        dc.samba_tool("user", "create", USER, USER_PW)
        krb5_conf = dc.write_krb5_conf(work / "krb5.conf")
        env = {"KRB5_CONFIG": str(krb5_conf)}
        keytab = work / "member.keytab"
        with loop_filesystem("btrfs", 512, work) as mnt:
            member = PrivateSamba(
                work / "member", subvolume_shares(mnt, SHARES), samba_fsrvp=False,
                winbind=True, netbios_name="FSMEMBER", env=env,
                extra_global=member_globals(keytab),
            )  # fmt: skip
            ns = member.namespace_argv((dc.hosts, "/etc/hosts"), (dc.nsswitch, "/etc/nsswitch.conf"))
            member.wrap = ns
            member.write_config()
            admin = f"Administrator%{ADMIN_PASSWORD}"
            conf = str(member.conf)
            run = {"check": True, "capture_output": True, "text": True,
                   "env": {**os.environ, **env}, "timeout": 120}  # fmt: skip
            subprocess.run([*ns, "net", "ads", "join", "-s", conf, "-U", admin,
                            "--no-dns-updates", "-S", ADDRESS], **run)  # type: ignore[call-overload]  # fmt: skip
            for spn in ("host/localhost", "cifs/localhost"):  # the name the clients dial
                dc.samba_tool("spn", "add", spn, "FSMEMBER$")
            subprocess.run([*ns, "net", "ads", "keytab", "create", "-s", conf, "-P"], **run)  # type: ignore[call-overload]
            for spn in ("host/localhost", "cifs/localhost"):
                subprocess.run([*ns, "net", "ads", "keytab", "add", spn, "-s", conf, "-P"], **run)  # type: ignore[call-overload]
            agent = PrivateAgent(work / "agent", member, min_level="integrity",
                                 rpc_auth={"kerberos": "on"}, trace=True)  # fmt: skip
            member.start()
            try:
                agent.start()
                try:
                    yield Domain(dc, member, agent, krb5_conf)
                finally:
                    agent.stop()
            finally:
                member.stop()
    finally:
        dc.stop()


def _impacket(domain: Domain, user: str, password: str) -> object:
    """An SMB session and an NTLM (privacy) FSRVP binding as DOMAIN\\user."""
    from impacket.dcerpc.v5 import rpcrt, transport
    from impacket.smbconnection import SMBConnection
    from impacket.uuid import uuidtup_to_bin

    from remotevss.client.rpc import FsrvpCalls
    from remotevss.fsrvp.constants import INTERFACE_UUID

    port = domain.member.port
    smb = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, timeout=60)
    smb.login(user, password, DOMAIN)
    t = transport.SMBTransport("127.0.0.1", port, filename=r"\FssagentRpc", smb_connection=smb)
    dce = t.get_dce_rpc()
    dce.set_credentials(user, password, DOMAIN)
    dce.set_auth_type(rpcrt.RPC_C_AUTHN_WINNT)
    dce.set_auth_level(PRIVACY)
    dce.connect()
    dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "1.0")))
    calls = FsrvpCalls()
    calls._dce = dce
    return calls


def test_domain_admin_over_ntlm_runs_the_whole_sequence(domain: Domain) -> None:
    """ntlm_auth asks the member's winbindd, which asks the DC; Domain Admins are
    BUILTIN\\Administrators on the member, so the sequence runs."""
    from tests.hardening.harness import delete_all, sequence

    offset = domain.agent.log.stat().st_size
    c = _impacket(domain, "Administrator", ADMIN_PASSWORD)
    sid, copies = sequence(c, list(SHARES), CTX_BACKUP, host="localhost")  # type: ignore[arg-type]
    delete_all(c, sid, copies, host="localhost")  # type: ignore[arg-type]
    log = domain.log_since(offset)
    assert f"RPC auth from 127.0.0.1: {DOMAIN}\\administrator at level 6" in log.replace(
        f"{DOMAIN}\\Administrator", f"{DOMAIN}\\administrator"
    ), log[-2000:]


def test_plain_domain_user_is_authenticated_but_not_authorized(domain: Domain) -> None:
    offset = domain.agent.log.stat().st_size
    c = _impacket(domain, USER, USER_PW)
    # authenticated (the bind and the sealed calls work), refused on every opnum
    assert c.get_supported_version().return_value == HResult.E_ACCESSDENIED  # type: ignore[attr-defined]
    assert c.set_context(CTX_BACKUP).return_value == HResult.E_ACCESSDENIED  # type: ignore[attr-defined]
    assert c.start(uuid.uuid4()).return_value == HResult.E_ACCESSDENIED  # type: ignore[attr-defined]
    log = domain.log_since(offset)
    assert re.search(rf"RPC auth from 127\.0\.0\.1: {DOMAIN}\\{USER} at level 6", log, re.I), log


def test_wrong_domain_password_is_refused(domain: Domain) -> None:
    from impacket.smbconnection import SessionError

    with pytest.raises(SessionError, match="LOGON_FAILURE"):
        _impacket(domain, "Administrator", "not-the-password")


def test_kerberos_with_a_pac_and_the_machine_keytab(domain: Domain, tmp_path: Path) -> None:
    """A ticket from the DC's KDC (with a PAC), accepted with the member's machine
    keytab: our client (-k, privacy) makes and deletes a shadow copy; rpcclient
    [krb5,seal] binds too."""
    cc = domain.kinit(f"Administrator@{REALM}", ADMIN_PASSWORD, "cifs/localhost")
    env = {**os.environ, "KRB5_CONFIG": str(domain.krb5_conf), "KRB5CCNAME": str(cc),
           "REMOTEVSS_CLIENT_STATE": str(tmp_path / "state")}  # fmt: skip
    env.pop("REMOTEVSS_PASSWORD", None)
    offset = domain.agent.log.stat().st_size
    base = [sys.executable, "-m", "remotevss.cli", "shadow", "-k", "-p", str(domain.member.port),
            "--no-follow-owner"]  # fmt: skip
    r = subprocess.run([*base, "--json", "create", r"\\localhost\data0"], capture_output=True,
                       text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (made,) = json.loads(r.stdout)["sets"]
    r = subprocess.run([*base, "delete", made["set_id"]], capture_output=True, text=True,
                       env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        ["rpcclient", "-s", str(domain.member.conf), "-p", str(domain.member.port), "-I",
         "127.0.0.1", "--use-kerberos=required", "-U", "Administrator",
         "ncacn_np:fsmember[krb5,seal]", "-c", "fss_get_sup_version"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and "supports FSRVP versions from 1 to 1" in r.stdout, r.stderr
    log = domain.log_since(offset)
    assert log.count(f"RPC auth from 127.0.0.1: Administrator@{REALM} at level 6") >= 3, log
    assert "refused" not in log
