"""Samba's shares as the agent's share table: file shares and registry shares.

Why: behind smbd, the shares a client can name in an FSRVP UNC are smbd's
shares, not a list in our own config.  :class:`SambaShareTable` answers the
agent's ``lookup(name)`` (shares/table.py ``ShareLookup``) the way smbd's
``find_service`` resolves a tree connect: file shares (smb.conf after
includes and ``copy =``) first, then registry shares if ``registry shares``
is on.  Only the share part of the UNC is ever looked up; the host part is
never contacted or resolved (shares/table.py ``parse_unc``).

Left out, as no snapshot can be taken of them: ``[global]``, ``IPC$``,
``[homes]`` and ``[printers]``, printable shares, ``available = no`` shares,
and snapshot shares (``share@{guid}``, ours or Samba's own FSRVP server's).
A share whose path has Samba substitutions (``/home/%U``) or is not absolute
is returned with ``unsupported`` set: the agent answers FSRVP_E_NOT_SUPPORTED
for it rather than E_INVALIDARG, as the share does exist.

Cost (2-core VM): a file share ~5 us (a stat of smb.conf and each included
file, then a dict), a registry share ~35 us (read live from registry.tdb, so
``net conf`` changes are seen at once); a changed smb.conf is reloaded once
(~1 ms) on the next lookup.
"""

from __future__ import annotations

from collections.abc import Iterator

from remotevss.samba._lib import LOCK
from remotevss.samba.conf import (
    SambaConf,
    ShareDefinition,
    is_snapshot_share_name,
    samba_bool,
)
from remotevss.shares.table import LocalShare

#: Sections that are never a snapshot-capable share (compared case-insensitively).
SPECIAL_SECTIONS = frozenset({"global", "homes", "printers", "ipc$", "print$"})


def unsupported_reason(path: str) -> str:
    """Why a share path cannot be snapshotted whatever the filesystem ("" = it may be)."""
    if not path:
        return "the share has no path"
    if "%" in path:
        return f"the share path {path!r} uses Samba substitutions (%U, %m, ...)"
    if not path.startswith("/"):
        return f"the share path {path!r} is not absolute"
    return ""


class SambaShareTable:
    """``lookup(name) -> LocalShare | None`` over Samba's configuration."""

    def __init__(self, conf: SambaConf, *, backend: str = "auto") -> None:
        self.conf = conf
        self.backend = backend
        self._generation = -1
        self._file: dict[str, LocalShare | None] = {}  # casefold -> share; None: hidden

    @property
    def netbios_name(self) -> str:
        return self.conf.netbios_name

    def lookup(self, name: str) -> LocalShare | None:
        key = name.casefold()
        if key in SPECIAL_SECTIONS or is_snapshot_share_name(name):
            return None
        with LOCK:
            self._sync()
            if key in self._file:
                return self._file[key]  # a file share shadows a registry share of that name
            if not self.conf.registry_shares:
                return None
            return self._from_definition(self.conf.registry_share(name))

    def __iter__(self) -> Iterator[LocalShare]:
        """Every share lookup() would find (file shares, then registry shares)."""
        with LOCK:
            self._sync()
            shares = [s for s in self._file.values() if s is not None]
            if self.conf.registry_shares:
                for n in self.conf.registry_share_names():
                    if n.casefold() not in self._file:
                        share = self.lookup(n)
                        if share is not None:
                            shares.append(share)
        return iter(shares)

    # ------------------------------------------------------------------

    def _sync(self) -> None:
        self.conf.refresh()
        if self.conf.generation == self._generation:
            return
        table: dict[str, LocalShare | None] = {}
        for service in self.conf.file_services():
            key = service.casefold()
            if key in SPECIAL_SECTIONS or is_snapshot_share_name(service):
                table[key] = None
                continue
            if samba_bool(self.conf.get("printable", service)) or not samba_bool(
                self.conf.get("available", service), default=True
            ):
                table[key] = None
                continue
            path = str(self.conf.get("path", service) or "")
            table[key] = self._share(service, path)
        self._file = table
        self._generation = self.conf.generation

    def _from_definition(self, d: ShareDefinition | None, depth: int = 0) -> LocalShare | None:
        if d is None or is_snapshot_share_name(d.name):
            return None
        if samba_bool(d.get("printable")) or not samba_bool(d.get("available"), default=True):
            return None
        path = d.get("path")
        copy = d.get("copy")
        if path is None and copy and depth < 3:  # ``copy = other``: path from the other share
            other = self.lookup(copy) if copy.casefold() in self._file else None
            if other is None:
                other = self._from_definition(self.conf.registry_share(copy), depth + 1)
            path = other.path if other is not None else None
        return self._share(d.name, path or "")

    def _share(self, name: str, path: str) -> LocalShare:
        return LocalShare(name, path, self.backend, unsupported=unsupported_reason(path))
