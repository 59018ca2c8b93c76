"""Our agent behind a private smbd, for interop tests: start, inspect, clean up.

The agent runs as its own process (remotevss.samba.private.PrivateAgent) and
serves the private Samba's \\pipe\\FssagentRpc; shares are Samba's, snapshot
shares are registry shares (the ``[samba]`` defaults).  What the agent knows
is read from its journal (read-only SQLite) and cleaned up over its local
socket, so a test can start from zero without restarting anything.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remotevss.client.local import LocalClient
from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import INTERFACE_UUID, HResult, hresult_name
from remotevss.samba.private import PrivateAgent, PrivateSamba


@dataclass(frozen=True)
class KnownMapping:
    set_id: uuid.UUID
    copy_id: uuid.UUID
    status: str
    local_share: str
    exposed_name: str
    snapshot_path: str


def journal_mappings(agent: PrivateAgent) -> list[KnownMapping]:
    """Every (set, copy, mapping) in the agent's journal, read-only."""
    path = agent.state_dir / "journal.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT s.id, c.id, s.status, m.local_share, m.exposed_name, c.snapshot_path "
            "FROM sets s JOIN copies c ON c.set_id = s.id JOIN mappings m ON m.copy_id = c.id"
        ).fetchall()
    finally:
        db.close()
    return [
        KnownMapping(uuid.UUID(s), uuid.UUID(c), st, share, name, snap)
        for s, c, st, share, name, snap in rows
    ]


def delete_everything(agent: PrivateAgent) -> None:
    """DeleteShareMapping for every exposed or recovered mapping the agent keeps."""
    with LocalClient(str(agent.socket)) as c:
        for m in journal_mappings(agent):
            if m.status in ("Exposed", "Recovered"):
                unc = f"\\\\localhost\\{m.local_share}"
                r = c.delete_share_mapping(m.set_id, m.copy_id, unc)
                assert r.return_value == HResult.ZERO, (m, hex(r.return_value))


def leftovers(samba: PrivateSamba) -> list[str]:
    """Snapshot shares in Samba's registry and snapshots in the shares' .snapshots."""
    out = samba.net("conf", "listshares").stdout
    found = [line.strip() for line in out.splitlines() if "@{" in line]
    for path in samba.shares.values():
        found += [str(p) for p in (path / ".snapshots").glob("@GMT-*")]
    return found


@contextlib.contextmanager
def agent_behind_samba(
    work: Path,
    shares: dict[str, Path],
    *,
    share_options: dict[str, dict[str, str]] | None = None,
    winbind: bool = False,
    samba_options: dict[str, Any] | None = None,
    **agent: object,
) -> Iterator[tuple[PrivateSamba, PrivateAgent]]:
    """A private smbd without rpcd_fsrvp (recipe B) and ``remotevss agent`` on its pipe.

    ``agent`` keywords go to PrivateAgent (mode, sequence_timeout, snapshot_names,
    min_level, rpc_auth); ``winbind`` also runs winbindd, which NTLM RPC
    authentication needs; ``samba_options`` go to PrivateSamba (env, extra_global ...).
    """
    samba = PrivateSamba(
        work / "samba", shares, samba_fsrvp=False, share_options=share_options or {},
        winbind=winbind, **(samba_options or {}),
    )  # fmt: skip
    proc = PrivateAgent(work / "agent", samba, **agent)  # type: ignore[arg-type]
    try:
        samba.start()
        proc.start()
        yield samba, proc
    finally:
        proc.stop()
        samba.stop()


def subvolume_shares(mnt: Path, names: Iterable[str]) -> dict[str, Path]:
    """One btrfs subvolume per share under ``mnt``, each holding ``file.txt``
    (``<name> content``): what the interop tests snapshot and read back."""
    import btrfsutil

    shares = {}
    for name in names:
        btrfsutil.create_subvolume(str(mnt / name))
        (mnt / name / "file.txt").write_text(f"{name} content\n")
        shares[name] = mnt / name
    return shares


# ------------------------------------------------------------- SMB helpers


class FsrvpOverSmb:
    """\\pipe\\FssagentRpc on an SMB session the caller already has (impacket), our codec."""

    def __init__(self, smb: Any, port: int) -> None:
        from impacket.dcerpc.v5 import transport
        from impacket.uuid import uuidtup_to_bin

        t = transport.SMBTransport("127.0.0.1", port, filename=r"\FssagentRpc", smb_connection=smb)
        self.dce = t.get_dce_rpc()
        self.dce.connect()
        self.dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "1.0")))

    def call(self, req: calls.Request) -> Any:
        self.dce.call(req.opnum, calls.encode_request(req))
        return calls.decode_response(req.opnum, self.dce.recv())

    def ok(self, req: calls.Request) -> Any:
        r = self.call(req)
        assert r.return_value == HResult.ZERO, (type(req).__name__, hresult_name(r.return_value))
        return r

    def create_expose(self, unc: str, context: int = 0) -> tuple[uuid.UUID, uuid.UUID, str]:
        """SetContext .. GetShareMapping: (set id, copy id, ShadowCopyShareName)."""
        self.ok(calls.SetContextRequest(context))
        sid = self.ok(calls.StartShadowCopySetRequest(uuid.uuid4())).shadow_copy_set_id
        cid = self.ok(calls.AddToShadowCopySetRequest(uuid.uuid4(), sid, unc)).shadow_copy_id
        self.ok(calls.PrepareShadowCopySetRequest(sid, 60_000))
        self.ok(calls.CommitShadowCopySetRequest(sid, 60_000))
        self.ok(calls.ExposeShadowCopySetRequest(sid, 60_000))
        m = self.ok(calls.GetShareMappingRequest(cid, sid, unc, 1)).mapping
        return sid, cid, m.shadow_copy_share_name

    def close(self) -> None:
        self.dce.disconnect()


def smb_login(port: int, password: str) -> Any:
    from impacket.smbconnection import SMBConnection

    c = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, timeout=30)
    c.login("root", password)
    return c


def fresh_tree(c: Any, share: str) -> int:
    """A real TREE_CONNECT: impacket reuses its tree id for a name it connected before."""
    c.getSMBServer()._Session["TreeConnectTable"].pop(share, None)
    return int(c.connectTree(share))


def smb_read(c: Any, tid: int, path: str) -> str:
    """File content, or ``ERR <NT status name>``."""
    from impacket.smbconnection import SessionError

    try:
        fid = c.openFile(tid, path, desiredAccess=0x120089)  # FILE_GENERIC_READ
        try:
            return str(c.readFile(tid, fid).decode())
        finally:
            c.closeFile(tid, fid)
    except SessionError as exc:
        return "ERR " + nt_status(exc)


def smb_write(c: Any, tid: int, path: str, data: bytes) -> str:
    """``ok`` or ``ERR <NT status name>``."""
    from impacket.smbconnection import SessionError

    try:
        fid = c.createFile(tid, path)
        try:
            c.writeFile(tid, fid, data)
        finally:
            c.closeFile(tid, fid)
        return "ok"
    except SessionError as exc:
        return "ERR " + nt_status(exc)


def nt_status(exc: Any) -> str:
    from impacket import nt_errors

    code = exc.getErrorCode()
    return str(nt_errors.ERROR_MESSAGES.get(code, (hex(code),))[0])
