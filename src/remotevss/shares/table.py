"""Share names: parse the client's UNC, find the local share, never touch the host.

Why so strict: FSRVP share names arrive from the network and are abused for
NTLM coercion (a UNC naming an attacker's host).  Only the share part is
ever looked up, and only in the local configuration; the host part is checked
for shape and then ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

MAX_UNC_CHARS = 1024
# A share name as Samba and Windows accept it (no separators, no control chars).
_SHARE_RE = re.compile(r"^[^\\/\x00-\x1f\"*:<>?|]{1,80}$")
_HOST_RE = re.compile(r"^[^\\/\x00-\x1f\"*<>?|]{1,255}$")


class BadShareName(ValueError):
    """The UNC is not of the form ``\\\\host\\share[\\]`` (E_INVALIDARG)."""


@dataclass(frozen=True)
class LocalShare:
    name: str
    path: str
    backend: str = "auto"
    #: Why this share can never be snapshotted ("" = it may be): e.g. a Samba share whose
    #: path depends on the user (``%U``).  The agent answers FSRVP_E_NOT_SUPPORTED.
    unsupported: str = ""


class ShareLookup(Protocol):
    """What the agent needs from a share table: the agent's own or Samba's
    (remotevss.samba.shares.SambaShareTable)."""

    def lookup(self, name: str) -> LocalShare | None:
        """The share called ``name`` (case-insensitive), or None."""
        ...


def parse_unc(unc: str) -> str:
    """Return the share part of ``\\\\host\\share`` or ``\\\\host\\share\\``."""
    if len(unc) > MAX_UNC_CHARS or not unc.startswith("\\\\"):
        raise BadShareName(f"not a UNC share name: {unc[:80]!r}")
    parts = unc[2:].split("\\")
    if len(parts) == 3 and parts[2] == "":
        parts = parts[:2]  # DiskShadow's trailing backslash
    if len(parts) != 2:
        raise BadShareName(f"expected \\\\host\\share: {unc[:80]!r}")
    host, share = parts
    if not _HOST_RE.match(host) or not _SHARE_RE.match(share):
        raise BadShareName(f"invalid host or share in {unc[:80]!r}")
    return share


class ShareTable:
    """Local shares by case-insensitive name (the agent's config; Samba's later)."""

    def __init__(self, shares: Iterable[LocalShare]) -> None:
        self._shares = {s.name.casefold(): s for s in shares}

    def lookup(self, name: str) -> LocalShare | None:
        return self._shares.get(name.casefold())

    def __iter__(self) -> Iterator[LocalShare]:
        return iter(self._shares.values())
