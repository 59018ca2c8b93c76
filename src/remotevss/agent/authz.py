"""Who may call: the spec's rule plus Samba's, for every opnum.

MS-FSRVP (<4>) admits members of BUILTIN\\Administrators and BUILTIN\\Backup
Operators; Samba also admits the SeBackupPrivilege holder and root.  The
local socket has no SIDs: there root or members of the configured group are
admitted.  Anything else gets E_ACCESSDENIED with no state change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Policy:
    allowed_gids: frozenset[int] = frozenset()
    allowed_sids: frozenset[str] = field(
        default_factory=lambda: frozenset({SID_ADMINISTRATORS, SID_BACKUP_OPERATORS})
    )

    def permits(self, caller: Caller) -> bool:
        return (
            caller.uid == 0
            or bool(caller.gids & self.allowed_gids)
            or bool(caller.sids & self.allowed_sids)
            or bool(caller.privileges & SE_BACKUP_PRIVILEGE)
        )
