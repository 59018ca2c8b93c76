"""Registry shares and smbd messages without python-samba: what RegistryExposer runs.

Why: the python-samba way (samba/worker.py ``SambaOps``) leaks per call and
needs a ~30 MB child process to keep that out of the agent.  These operations
use the ``tdb`` binding (samba/regdb.py) and plain unix datagrams
(samba/dgm.py) instead, so they run in the agent itself -- or, when
something else in the process already holds ``registry.tdb`` open
(python-samba's loadparm with ``include = registry``: tdb allows one handle
per file and process), in a tiny child that imports nothing else
(samba/child.py, ~9 MB, only while there is work).

:class:`LightPaths` is everything the operations need from Samba's
configuration, computed from the agent's snapshot of it (samba/conf.py) and
handed to the child as JSON.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from remotevss.samba import dgm
from remotevss.samba.regdb import Params, RegistryDb

TYPE_CHECKING = False  # typing itself costs the tiny child ~2 MB
if TYPE_CHECKING:
    from typing import Any


class LightPaths:
    """Where registry.tdb, Samba's message sockets and smbd's pid file are."""

    __slots__ = ("config_file", "registry", "smbd_pid_file", "socket_dirs")

    def __init__(
        self, config_file: str, registry: str, socket_dirs: list[str], smbd_pid_file: str
    ) -> None:
        self.config_file = config_file  # for the smbcontrol fallback only
        self.registry = registry  # <state dir>/registry.tdb
        self.socket_dirs = list(socket_dirs)  # msg.sock candidates, in order
        self.smbd_pid_file = smbd_pid_file  # <pid directory>/smbd.pid

    def as_list(self) -> list[object]:
        """The constructor's arguments (JSON for the child)."""
        return [self.config_file, self.registry, self.socket_dirs, self.smbd_pid_file]

    @classmethod
    def from_conf(cls, conf: Any) -> LightPaths:
        return cls(
            conf.config_file,
            os.path.join(conf.state_dir, "registry.tdb"),
            [os.path.join(conf.lock_dir, "msg.sock"), os.path.join(conf.private_dir, "msg.sock")],
            os.path.join(str(conf.get("pid directory")), "smbd.pid"),
        )


class LightOps:
    """Same methods as samba/worker.py's SambaOps and SambaWorker."""

    def __init__(self, paths: LightPaths, tdb_module: Any = None) -> None:
        self.paths = paths
        self.db = RegistryDb(paths.registry, tdb_module)

    def check(self) -> None:
        """Raise regdb.RegdbFormatError if registry.tdb is not a format we write."""
        self.db.check()

    def write_share(self, name: str, params: Params) -> None:
        self.db.write_shares([(name, params)])

    def delete_share(self, name: str) -> None:
        self.db.delete_shares([name])

    def write_shares(self, shares: list[tuple[str, Params]]) -> None:
        self.db.write_shares(shares)

    def delete_shares(self, names: list[str]) -> None:
        self.db.delete_shares(names)

    def get_share(self, name: str) -> tuple[str, Params] | None:
        return self.db.get_share(name)

    def share_names(self) -> list[str]:
        return self.db.share_names()

    def notify(self, *, force_tdis: Sequence[str] = (), conf_updated: bool = True) -> int:
        """MSG_SMB_FORCE_TDIS per share, then MSG_SMB_CONF_UPDATED, to every Samba
        process that serves shares (samba/notify.py has what each does in smbd;
        winbindd and nmbd are left out: dgm.NO_SHARES); ``smbcontrol`` when there
        is no socket directory.  Returns the processes reached."""
        messages = [(dgm.MSG_SMB_FORCE_TDIS, s.encode() + b"\0") for s in force_tdis]
        if conf_updated:
            messages.append((dgm.MSG_SMB_CONF_UPDATED, b""))
        if not messages:
            return 0
        sock_dir = dgm.socket_dir(self.paths.socket_dirs)
        if sock_dir is not None:
            parent = dgm.smbd_parent(self.paths.smbd_pid_file)
            return dgm.send_all(sock_dir, messages, skip_tdis_to=parent, shares_only=True)
        _log().warning("no Samba messaging directory (%s): using smbcontrol",
                       ", ".join(self.paths.socket_dirs))  # fmt: skip
        reached = [self._smbcontrol(["close-share", s]) for s in force_tdis]
        if conf_updated:
            reached.append(self._smbcontrol(["reload-config"]))
        return min(reached)

    def _smbcontrol(self, args: list[str]) -> int:
        import subprocess  # rare: not loaded into the tiny child up front

        cmd = ["smbcontrol", "-s", self.paths.config_file, "smbd", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            _log().warning("%s: %s", " ".join(cmd), exc)
            return 0
        if proc.returncode != 0:
            _log().warning(
                "%s: exit %d: %s", " ".join(cmd), proc.returncode, proc.stderr.strip()
            )
            return 0
        return 1

    def close(self) -> None:
        pass


def _log() -> Any:
    """The package's logger, imported on first use: the tiny child stays small."""
    import logging

    return logging.getLogger("remotevss.samba")
