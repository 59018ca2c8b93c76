"""DCE/RPC authentication for the Samba pipe: Samba's ``ntlm_auth`` checks the credentials.

Why a helper process: on a standalone server winbindd checks NTLM against
Samba's own passdb, on a domain member against the DC, and neither way does
the agent see a password hash.  Helpers are pooled (a spawn costs ~40 ms) and
spawned on the first authenticated bind, so an agent whose clients never
authenticate never runs one.
"""

from __future__ import annotations

from remotevss.agent.config import AgentConfig
from remotevss.agent.ntlm_auth import NtlmHelperPool
from remotevss.dcerpc.rpc_auth import RpcSecurity

HELPER_PROTOCOL = "--helper-protocol=squid-2.5-ntlmssp"


def helper_argv(config: AgentConfig) -> list[str]:
    argv = [*config.rpc_auth.ntlm_auth, HELPER_PROTOCOL]
    if config.samba.config_file:
        argv.append(f"--configfile={config.samba.config_file}")
    return argv


class RpcAuthenticator:
    """Makes one :class:`RpcSecurity` per pipe connection, all sharing the helper pool."""

    def __init__(self, config: AgentConfig, separator: str = "\\") -> None:
        """``separator``: smb.conf's ``winbind separator`` (samba.components)."""
        ra = config.rpc_auth
        self.pool = NtlmHelperPool(
            helper_argv(config), size=ra.helpers, timeout=ra.timeout,
            separator=separator,
        )  # fmt: skip

    def security(self) -> RpcSecurity:
        return RpcSecurity(self.pool.acceptor)

    def close(self) -> None:
        self.pool.close()
