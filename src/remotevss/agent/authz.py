"""Who may call: the spec's rule plus Samba's, for every opnum.

MS-FSRVP (<4>) admits members of BUILTIN\\Administrators and BUILTIN\\Backup
Operators; Samba also admits the SeBackupPrivilege holder and root.  The
local socket has no SIDs: there root or members of the configured group are
admitted; behind Samba, the SMB user's token (SIDs, privileges, unix uid
and groups) as smbd hands it over, plus configured extra SIDs and groups.
Unix groups count per transport: a local socket group must not admit an SMB
user who happens to share its gid.  Anything else gets E_ACCESSDENIED with no
state change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from remotevss.agent.config import RPC_AUTH_LEVELS, AgentConfig, group_id

SID_ADMINISTRATORS = "S-1-5-32-544"
SID_BACKUP_OPERATORS = "S-1-5-32-551"
SE_BACKUP_PRIVILEGE = 0x200  # Samba's SEC_PRIV_BACKUP bit in the token's privilege mask


@dataclass(frozen=True)
class Caller:
    """The identity behind one connection, as its transport established it."""

    uid: int
    gids: frozenset[int] = frozenset()
    address: str = ""  # the client's network address (SetContext's owner check)
    sids: frozenset[str] = frozenset()
    privileges: int = 0
    name: str = ""
    transport: str = ""
    auth_level: int = 1  # DCE/RPC level the connection's calls run at (1 = none)
    rpc_user: str = ""  # DOMAIN\\account (NTLM) or user@REALM (Kerberos) at the RPC level


@dataclass(frozen=True)
class Policy:
    allowed_gids: frozenset[int] = frozenset()  # local socket callers
    allowed_sids: frozenset[str] = field(
        default_factory=lambda: frozenset({SID_ADMINISTRATORS, SID_BACKUP_OPERATORS})
    )
    samba_gids: frozenset[int] = frozenset()  # callers behind Samba ([samba] allowed_groups)
    min_auth_level: int = 1  # behind Samba: calls below it are denied (MS-FSRVP 3.1.4)
    allow_identity_mismatch: bool = False
    kerberos_realm: str = ""  # user@REALM is this server's DOMAIN\\user ([rpc_auth] realm)

    def refusal(self, caller: Caller) -> str | None:
        """Why a Samba caller's RPC authentication does not admit it (None: it does)."""
        if caller.transport != "samba":
            return None  # the local socket's caller is vouched for by the kernel
        if caller.auth_level < self.min_auth_level:
            return f"auth level {caller.auth_level} below the required {self.min_auth_level}"
        if (
            caller.rpc_user
            and not self._same_user(caller.rpc_user, caller.name)
            and not self.allow_identity_mismatch
        ):
            return f"RPC user {caller.rpc_user} is not the SMB user {caller.name}"
        return None

    def _same_user(self, rpc_user: str, smb_user: str) -> bool:
        """NTLM names DOMAIN\\account as smbd does; a Kerberos principal user@REALM is
        the SMB user with that account name if REALM is this server's realm."""
        if "\\" in rpc_user or "@" not in rpc_user:
            return rpc_user.casefold() == smb_user.casefold()
        user, _, realm = rpc_user.rpartition("@")
        account = smb_user.rpartition("\\")[2]
        return (
            bool(self.kerberos_realm)
            and realm.casefold() == self.kerberos_realm.casefold()
            and user.casefold() == account.casefold()
        )

    def permits(self, caller: Caller) -> bool:
        if self.refusal(caller) is not None:
            return False
        gids = self.samba_gids if caller.transport == "samba" else self.allowed_gids
        return (
            caller.uid == 0
            or bool(caller.gids & gids)
            or bool(caller.sids & self.allowed_sids)
            or bool(caller.privileges & SE_BACKUP_PRIVILEGE)
        )


def policy_for(config: AgentConfig, samba_realm: str = "") -> Policy:
    """The rule the configuration asks for: the socket group locally, extra SIDs and
    groups from ``[samba]`` behind Samba, on top of the built-in rule.  The Kerberos
    realm is ``[rpc_auth] realm``, else smb.conf's ``realm`` (``samba_realm``)."""
    return Policy(
        allowed_gids=frozenset({group_id(config.socket_group)}),
        allowed_sids=frozenset(
            {SID_ADMINISTRATORS, SID_BACKUP_OPERATORS, *config.samba.allowed_sids}
        ),
        samba_gids=frozenset(group_id(g) for g in config.samba.allowed_groups),
        min_auth_level=RPC_AUTH_LEVELS[config.rpc_auth.min_level],
        allow_identity_mismatch=config.rpc_auth.identity_mismatch == "allow",
        kerberos_realm=(config.rpc_auth.realm or samba_realm).upper(),
    )
