"""A private MIT Kerberos KDC on loopback for the Kerberos tests.

Why MIT's krb5kdc from Debian: it is a KDC we did not write, it starts in
well under a second, and its tools (kinit, kvno, kadmin.local) make the user
tickets and the file server's keytab the way an administrator would.
Everything lives under one directory; every process that should see this
realm gets :attr:`PrivateKdc.env` (``KRB5_CONFIG`` and friends), so the
machine's own ``/etc/krb5.conf`` is never read or changed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from remotevss.linepipe import stop_process
from remotevss.samba.private import free_port

REALM = "REMOTEVSS.TEST"
MASTER_PASSWORD = "kdc-master-remotevss"  # noqa: S105 - a throwaway test KDC
TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit", "kvno")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass
class PrivateKdc:
    root: Path
    realm: str = REALM
    port: int = field(default_factory=free_port)
    #: Seconds of clock skew the acceptor tolerates (krb5.conf ``clockskew``).  Small,
    #: so a test can make an expired ticket without waiting MIT's default 5 minutes.
    clockskew: int = 300
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.root / "krb5.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this realm (and no other)."""
        return {
            "KRB5_CONFIG": str(self.conf),
            "KRB5_KDC_PROFILE": str(self.root / "kdc.conf"),
        }

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        r, realm = self.root, self.realm
        self.conf.write_text(
            "[libdefaults]\n"
            f"  default_realm = {realm}\n"
            "  dns_lookup_kdc = false\n"
            "  dns_lookup_realm = false\n"
            "  dns_canonicalize_hostname = false\n"
            "  rdns = false\n"
            "  ignore_acceptor_hostname = true\n"
            f"  clockskew = {self.clockskew}\n"
            "  udp_preference_limit = 1\n"
            "[realms]\n"
            f"  {realm} = {{\n    kdc = 127.0.0.1:{self.port}\n  }}\n"
            "[domain_realm]\n"
            f"  localhost = {realm}\n"
        )
        (r / "kdc.conf").write_text(
            "[kdcdefaults]\n"
            f"  kdc_ports = {self.port}\n"
            f"  kdc_tcp_ports = {self.port}\n"
            f"  kdc_listen = 127.0.0.1:{self.port}\n"
            f"  kdc_tcp_listen = 127.0.0.1:{self.port}\n"
            "[realms]\n"
            f"  {realm} = {{\n"
            f"    database_name = {r}/principal\n"
            f"    key_stash_file = {r}/stash\n"
            f"    acl_file = {r}/kadm5.acl\n"
            "    max_life = 10h\n"
            # Samba refuses a PAC on a standalone server; MIT >= 1.20 adds one by default.
            "    disable_pac = true\n"
            "    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n"
            "  }\n"
            "[logging]\n"
            f"  kdc = FILE:{r}/kdc.log\n"
        )

    def start(self) -> None:
        self.write_config()
        self.run("kdb5_util", "create", "-s", "-r", self.realm, "-P", MASTER_PASSWORD)
        log = open(self.root / "krb5kdc.out", "ab")  # noqa: SIM115 - the daemon's own
        try:
            self.proc = subprocess.Popen(
                ["krb5kdc", "-n", "-r", self.realm],
                env={**os.environ, **self.env}, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + 15
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"krb5kdc did not come up; see {self.root}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)
            self.proc = None

    def run(
        self, *argv: str, input_text: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), input=input_text, capture_output=True, text=True, check=check,
            timeout=30, env={**os.environ, **self.env},
        )  # fmt: skip

    def kadmin(self, query: str) -> str:
        return self.run("kadmin.local", "-r", self.realm, "-q", query).stdout

    def add_user(self, name: str, password: str) -> None:
        self.kadmin(f"addprinc -pw {password} {name}")

    def add_service(self, principal: str, keytab: Path) -> None:
        """A service principal with a random key, exported to ``keytab``."""
        self.kadmin(f"addprinc -randkey {principal}")
        self.kadmin(f"ktadd -k {keytab} {principal}")

    def kinit(self, principal: str, password: str, ccache: Path, lifetime: str = "") -> None:
        argv = ["kinit", "-c", f"FILE:{ccache}"]
        if lifetime:
            argv += ["-l", lifetime]
        self.run(*argv, principal, input_text=password + "\n")

    def kvno(self, ccache: Path, *services: str) -> None:
        """Fetch service tickets into ``ccache`` (what a Windows client's SSPI does on
        first use; impacket's own TGS request is not accepted by MIT's KDC)."""
        self.run("kvno", "-c", f"FILE:{ccache}", *services)
