"""A private Samba AD domain controller on 127.0.0.2, and a member joined to it, for tests.

Why: on a domain member the agent's credentials come from the domain: NTLM
through winbindd to the DC (netlogon), Kerberos tickets with a PAC from the
DC's KDC, checked with the member's machine keytab.  Provisioning takes ~5 s
(no DNS server: ``--dns-backend=NONE``); everything lives under one directory.

Two things of the machine would otherwise leak in, and are kept out:
- libwbclient (smbd, NSS, ntlm_auth) reaches the compiled-in
  ``/run/samba/winbindd``: the DC and the member's daemons each run in a
  mount namespace of their own with their winbindd's directory bound there
  (:mod:`remotevss.samba.wbns`);
- the DC's name must resolve for the join and for winbindd: a private hosts
  file is bound over ``/etc/hosts`` in those namespaces.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from remotevss.samba.private import stop_sessions

REALM = "AD.REMOTEVSS.TEST"
DOMAIN = "RVAD"
ADDRESS = "127.0.0.2"
ADMIN_PASSWORD = "Admin-Passw0rd-1"  # noqa: S105 - a throwaway test domain
DC_NAME = "RVDC"
TOOLS = ("samba", "samba-tool", "net", "unshare", "winbindd")


def missing_tools() -> list[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not Path("/usr/share/samba/setup").is_dir():
        missing.append("samba-ad-provision")
    if not any(Path(p).exists() for p in ("/lib/x86_64-linux-gnu/libnss_winbind.so.2",
                                           "/usr/lib/x86_64-linux-gnu/libnss_winbind.so.2")):
        missing.append("libnss-winbind")
    return missing


@dataclass
class PrivateAdDc:
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    @property
    def hosts(self) -> Path:
        """/etc/hosts plus the DC's names: bound over /etc/hosts for the domain's daemons."""
        return self.root / "hosts"

    @property
    def nsswitch(self) -> Path:
        """An nsswitch.conf asking winbind for users and groups (a member needs it)."""
        return self.root / "nsswitch.conf"

    def write_krb5_conf(self, path: Path) -> Path:
        path.write_text(
            "[libdefaults]\n"
            f"  default_realm = {REALM}\n"
            "  dns_lookup_kdc = false\n"
            "  dns_lookup_realm = false\n"
            "  dns_canonicalize_hostname = false\n"
            "  rdns = false\n"
            "[realms]\n"
            f"  {REALM} = {{\n    kdc = {ADDRESS}\n  }}\n"
            "[domain_realm]\n"
            f"  localhost = {REALM}\n"
        )
        return path

    def start(self) -> None:
        r = self.root
        for d in ("pid", "winbindd", "ncalrpc", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "winbindd").chmod(0o755)
        (r / "ncalrpc").chmod(0o755)
        self.hosts.write_text(
            Path("/etc/hosts").read_text()
            + f"\n{ADDRESS} {DC_NAME.lower()}.{REALM.lower()} {DC_NAME.lower()}\n"
        )
        self.nsswitch.write_text(
            "passwd: files winbind\ngroup: files winbind\nshadow: files\n"
            "hosts: files\nnetworks: files\nprotocols: files\nservices: files\n"
        )
        options = {
            "interfaces": f"{ADDRESS}/8", "bind interfaces only": "yes",
            "netbios name": DC_NAME, "pid directory": str(r / "pid"),
            "winbindd socket directory": str(r / "winbindd"), "ncalrpc dir": str(r / "ncalrpc"),
            "log file": str(r / "log" / "%m.log"),
        }  # fmt: skip
        self._tool(
            "samba-tool", "domain", "provision", f"--realm={REALM}", f"--domain={DOMAIN}",
            "--server-role=dc", "--dns-backend=NONE", f"--adminpass={ADMIN_PASSWORD}",
            f"--targetdir={r}", f"--host-ip={ADDRESS}",
            *[f"--option={k} = {v}" for k, v in options.items()],
        )  # fmt: skip
        log = open(r / "log" / "samba.out", "ab")  # noqa: SIM115 - the daemon's own
        try:
            self.proc = subprocess.Popen(
                [*self.namespace_argv(), "samba", "-i", "-M", "single", "-s", str(self.conf)],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + 60
        while not all(self._listening(p) for p in (88, 389, 445)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the AD DC did not come up; see {r}/log")
            time.sleep(0.1)

    def namespace_argv(self) -> list[str]:
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            sys.executable, "-m", "remotevss.samba.wbns",
            "--bind", f"{self.hosts}=/etc/hosts", str(self.root / "winbindd"),
        ]  # fmt: skip

    def _listening(self, port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex((ADDRESS, port)) == 0

    def _tool(self, *argv: str) -> str:
        return subprocess.run(
            list(argv), capture_output=True, text=True, check=True, timeout=120
        ).stdout

    def samba_tool(self, *argv: str) -> str:
        """samba-tool on the DC's database (it may run beside the DC)."""
        return self._tool("samba-tool", *argv, "-H", str(self.root / "private" / "sam.ldb"))

    def stop(self) -> None:
        """The DC with its smbd and winbindd children (one session)."""
        if self.proc is not None:
            stop_sessions([self.proc])
            self.proc = None


def member_globals(keytab: Path) -> dict[str, str]:
    """smb.conf [global] for a member of the private domain (merged over PrivateSamba's)."""
    return {
        "workgroup": DOMAIN,
        "realm": REALM,
        "security": "ads",
        "password server": ADDRESS,
        "kerberos method": "dedicated keytab",
        "dedicated keytab file": f"FILE:{keytab}",
        "idmap config * : backend": "tdb",
        "idmap config * : range": "100000-199999",
        f"idmap config {DOMAIN} : backend": "rid",
        f"idmap config {DOMAIN} : range": "200000-299999",
    }
