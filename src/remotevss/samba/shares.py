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
``net conf`` changes are seen at once).  A changed smb.conf is re-read by
samba/loadparm.py's child (~75 ms): never on the event loop.  The agent
awaits :meth:`SambaShareTable.fresh` before it resolves a share (the read
runs in a thread, so the call sees the change); a lookup on the event-loop
thread that still finds the files changed (they changed in between) answers
from the snapshot it has and has the new one read in the background.
"""

from __future__ import annotations

import asyncio
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
        file = self._sync()
        if key in file:
            return file[key]  # a file share shadows a registry share of that name
        if not self.conf.registry_shares:
            return None
        with LOCK:
            return self._from_definition(self.conf.registry_share(name), file)

    async def fresh(self) -> None:
        """Re-read smb.conf if it changed, off the event loop (see the module doc)."""
        await self.conf.refresh_async()

    def __iter__(self) -> Iterator[LocalShare]:
        """Every share lookup() would find (file shares, then registry shares)."""
        file = self._sync()
        shares = [s for s in file.values() if s is not None]
        if self.conf.registry_shares:
            with LOCK:
                for n in self.conf.registry_share_names():
                    if n.casefold() not in file:
                        share = self.lookup(n)
                        if share is not None:
                            shares.append(share)
        return iter(shares)

    # ------------------------------------------------------------------

    def _sync(self) -> dict[str, LocalShare | None]:
        """The file shares of the current snapshot (re-read first if smb.conf changed)."""
        self.conf.refresh(wait=not _on_event_loop())
        generation = self.conf.generation
        if generation == self._generation:
            return self._file
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
        self._file, self._generation = table, generation
        return table

    def _from_definition(
        self, d: ShareDefinition | None, file: dict[str, LocalShare | None], depth: int = 0
    ) -> LocalShare | None:
        if d is None or is_snapshot_share_name(d.name):
            return None
        if samba_bool(d.get("printable")) or not samba_bool(d.get("available"), default=True):
            return None
        path = d.get("path")
        copy = d.get("copy")
        if path is None and copy and depth < 3:  # ``copy = other``: path from the other share
            other = file.get(copy.casefold())
            if other is None:
                other = self._from_definition(self.conf.registry_share(copy), file, depth + 1)
            path = other.path if other is not None else None
        return self._share(d.name, path or "")

    def _share(self, name: str, path: str) -> LocalShare:
        return LocalShare(name, path, self.backend, unsupported=unsupported_reason(path))


def _on_event_loop() -> bool:
    """Called on a thread that runs an asyncio event loop (which must not wait ~75 ms)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
