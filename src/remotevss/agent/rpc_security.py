"""DCE/RPC authentication on the Samba pipe: ``ntlm_auth`` for NTLM, the keytab for Kerberos.

Why a helper process for NTLM: on a standalone server winbindd checks NTLM
against Samba's own passdb, on a domain member against the DC, and neither
way does the agent see a password hash.  On a standalone server a name of
another domain (the workgroup, none) is the local SAM's user, as smbd maps
it; winbindd cannot route those, so a one-shot child checks them against the
passdb (``ntlm_auth.LocalSamLogon``, ``samba/sam_logon.py``).  Helpers are pooled (a spawn costs
~40 ms) and spawned on the first authenticated bind, so an agent whose
clients never authenticate never runs one.

Kerberos needs no helper: the ticket is decrypted with the file server's key
from the keytab Samba uses (``dedicated keytab file`` or the system keytab),
through GSSAPI.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import partial

from remotevss.agent.auth_gate import AuthGate
from remotevss.agent.config import AgentConfig, ConfigError
from remotevss.agent.ntlm_auth import LocalSamLogon, NtlmHelperPool
from remotevss.dcerpc.rpc_auth import KerberosFactory, RpcSecurity

HELPER_PROTOCOL = "--helper-protocol=squid-2.5-ntlmssp"
SYSTEM_KEYTAB = "/etc/krb5.keytab"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SambaAuthNames:
    """What smb.conf says about naming and Kerberos (samba.components)."""

    separator: str = "\\"  # ``winbind separator``: ntlm_auth answers DOMAIN<sep>user
    realm: str = ""  # ``realm``
    keytab: str = ""  # the keytab smbd uses (``kerberos method``), if any
    netbios_name: str = ""  # ``netbios name``: the local SAM's domain name
    standalone: bool = False  # no domain (``security = user``, not a DC): see LocalSamLogon


def helper_argv(config: AgentConfig) -> list[str]:
    argv = [*config.rpc_auth.ntlm_auth, HELPER_PROTOCOL]
    if config.samba.config_file:
        argv.append(f"--configfile={config.samba.config_file}")
    return argv


def keytab_path(config: AgentConfig, names: SambaAuthNames) -> str:
    """The keytab Kerberos binds are checked against (``[rpc_auth] keytab``)."""
    env = os.environ.get("KRB5_KTNAME", "").removeprefix("FILE:")
    return config.rpc_auth.keytab or names.keytab or env or SYSTEM_KEYTAB


def kerberos_factory(config: AgentConfig, names: SambaAuthNames) -> KerberosFactory | None:
    """Kerberos acceptors for ``[rpc_auth] kerberos``, or None when it is off.

    "auto" turns it on only if the keytab can be read and GSSAPI finds keys in
    it; "on" makes a missing keytab a start-up error, not a silent NTLM-only agent.
    """
    mode = config.rpc_auth.kerberos
    if mode == "off":
        return None
    keytab = keytab_path(config, names)
    why = _kerberos_unusable(keytab)
    if why:
        if mode == "on":
            raise ConfigError(f"[rpc_auth] kerberos = on, but {why}")
        log.info("Kerberos RPC authentication off: %s", why)
        return None
    from remotevss.dcerpc.krb5_gss import KerberosAcceptor

    realm = (config.rpc_auth.realm or names.realm).upper()  # as authz.policy_for takes it
    log.info("Kerberos RPC authentication on: keytab %s, realm %s", keytab, realm or "-")
    return partial(KerberosAcceptor, keytab)


#: The keytab check, run in a child: it loads GSSAPI (python-gssapi and MIT krb5,
#: ~8 MB resident), which the agent itself loads only when a Kerberos bind arrives.
_KEYTAB_CHECK = (
    "import sys\n"
    "from remotevss.dcerpc.krb5_gss import KerberosAcceptor\n"
    "try:\n"
    "    KerberosAcceptor(sys.argv[1])\n"
    "except Exception as exc:\n"
    "    print(exc)\n"
    "    sys.exit(1)\n"
)


def _kerberos_unusable(keytab: str) -> str:
    """Why the keytab cannot accept Kerberos binds ("" when it can)."""
    if not os.access(keytab, os.R_OK):
        return f"keytab {keytab} is not readable"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _KEYTAB_CHECK, keytab],
            capture_output=True, text=True, timeout=30, check=False, close_fds=True,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"keytab {keytab}: cannot check it: {exc}"
    if done.returncode:
        why = done.stdout.strip() or (done.stderr.strip().splitlines() or ["check failed"])[-1]
        return f"keytab {keytab}: {why}"
    return ""


class RpcAuthenticator:
    """Makes one :class:`RpcSecurity` per pipe connection, all sharing the helper pool."""

    def __init__(self, config: AgentConfig, names: SambaAuthNames | None = None) -> None:
        names = names or SambaAuthNames()
        ra = config.rpc_auth
        local = None
        if names.standalone and names.netbios_name and config.samba.config_file:
            # smbd's name mapping on a standalone server (ntlm_auth.LocalSamLogon)
            local = LocalSamLogon(config.samba.config_file, names.netbios_name,
                                  timeout=ra.timeout)  # fmt: skip
        self.pool = NtlmHelperPool(
            helper_argv(config), size=ra.helpers, timeout=ra.timeout,
            separator=names.separator, local_sam=local, idle_seconds=ra.helper_idle,
        )  # fmt: skip
        #: One helper per authenticating connection, so the gate caps the helpers.
        self.gate = AuthGate(ra.helpers, ra.timeout)
        self.kerberos = kerberos_factory(config, names)

    def apply(self, config: AgentConfig) -> None:
        """A reload: the pool's size, idle time and per-answer timeout (agent/reload.py)."""
        self.pool.size = config.rpc_auth.helpers
        self.pool.timeout = config.rpc_auth.timeout
        self.pool.idle_seconds = config.rpc_auth.helper_idle
        self.gate.timeout = config.rpc_auth.timeout
        self.gate.resize(config.rpc_auth.helpers)
        if self.pool.local_sam is not None:
            self.pool.local_sam.timeout = config.rpc_auth.timeout

    def security(self) -> RpcSecurity:
        return RpcSecurity(self.pool.acceptor, self.kerberos)

    def close(self) -> None:
        self.pool.close()
