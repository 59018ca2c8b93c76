"""Tell running smbd processes that shares changed: MSG_SMB_CONF_UPDATED, MSG_SMB_FORCE_TDIS.

Used only by the python-samba fallback (samba/worker.py ``SambaOps``: clustered
Samba, whose messages go through ctdb, or a registry the light code refuses);
the agent itself sends the same messages as plain datagrams (samba/dgm.py).

Why in-process messaging: ``smbcontrol smbd reload-config`` costs ~28 ms (a
process start), and it talks to the smbd parent, which forwards to its
children when it gets round to it.  Samba's messages are unix datagrams to
``<lock dir>/msg.sock/<pid>``; every Samba process holds a lock file
``<lock dir>/msg.lock/<pid>`` (source3 ``messaging_send_all`` walks that
directory).  ``samba.messaging.Messaging`` speaks the same protocol, so we
send each message straight to every Samba process, the way Samba's own FSRVP
server does, for ~50 us of set-up plus a few us per process.

What the messages do in smbd 4.17 (verified against a private smbd, see
docs/samba.md "Snapshot shares"):

* MSG_SMB_CONF_UPDATED (0x21): reload the config.  A *new* registry share
  needs no message at all -- smbd resolves unknown share names from the
  registry at each tree connect -- but a process that already has a share
  of that name loaded keeps the old definition until it reloads.
* MSG_SMB_FORCE_TDIS (0x302, payload: share name + NUL): close every tree
  connect to that share (clients get NETWORK_NAME_DELETED), which also lets
  the process drop the service.  Without it a client with the tree open
  keeps reading a deleted share and can even connect to it again.  It goes
  to every process *but the smbd parent*: the parent forwards it to all its
  children, and that second copy, arriving a little later, also closes trees
  connected in between (e.g. to a share just re-exposed at a new path).
  Samba's own ``messaging_send_all`` has that race.

The Messaging context is made per notification and dropped at once: a
context we never read from would collect other processes' broadcasts.
Messages are fire-and-forget (as in Samba); smbd handles them within
microseconds of arrival.  If in-process messaging is unavailable, we fall
back to ``smbcontrol`` (slow but correct).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Sequence
from typing import Any

from remotevss.samba._lib import LOCK, SambaUnavailable, module
from remotevss.samba.conf import InProcessSambaConf

log = logging.getLogger("remotevss.samba")

MSG_SMB_CONF_UPDATED = 0x0021
MSG_SMB_FORCE_TDIS = 0x0302
NONCLUSTER_VNN = 0xFFFFFFFF


class SmbdNotifier:
    """Sends smbd's config/tree-disconnect messages to every Samba process."""

    def __init__(self, conf: InProcessSambaConf, *, use_messaging: bool = True) -> None:
        self.conf = conf
        self.use_messaging = use_messaging
        self._messaging: Any = None
        self._server_id: Any = None
        if use_messaging:
            try:
                self._messaging = module("samba.messaging")
                self._server_id = module("samba.dcerpc.server_id")
            except SambaUnavailable as exc:
                log.warning("in-process Samba messaging unavailable (%s); using smbcontrol", exc)
                self.use_messaging = False

    def conf_updated(self) -> int:
        """Every Samba process re-reads its configuration; returns processes reached."""
        return self.notify(conf_updated=True)

    def force_tdis(self, share: str) -> int:
        """Every smbd closes its tree connects to ``share``."""
        return self.notify(force_tdis=[share], conf_updated=False)

    def notify(self, *, force_tdis: Sequence[str] = (), conf_updated: bool = True) -> int:
        """FORCE_TDIS for each share in ``force_tdis``, then (if asked) CONF_UPDATED, to
        every Samba process, through one messaging context.  Returns the number of
        processes reached (smbcontrol fallback: 1 if it succeeded)."""
        messages = [(MSG_SMB_FORCE_TDIS, share.encode() + b"\0") for share in force_tdis]
        if conf_updated:
            messages.append((MSG_SMB_CONF_UPDATED, b""))
        if not messages:
            return 0
        if self.use_messaging:
            try:
                return self._send_messaging(messages)
            except (RuntimeError, OSError) as exc:  # NTSTATUSError is a RuntimeError
                log.warning("Samba messaging failed (%s); falling back to smbcontrol", exc)
        reached = [self._send_smbcontrol(["close-share", share]) for share in force_tdis]
        if conf_updated:
            reached.append(self._send_smbcontrol(["reload-config"]))
        return min(reached)

    def peers(self) -> list[int]:
        """Pids of the Samba processes that take messages (lock files of messaging_dgm)."""
        try:
            names = os.listdir(os.path.join(self.conf.lock_dir, "msg.lock"))
        except OSError:
            return []
        me = os.getpid()
        return [int(n) for n in names if n.isdigit() and int(n) != me]

    def smbd_parent(self) -> int | None:
        """The main smbd's pid (``<pid directory>/smbd.pid``), if it is running."""
        try:
            with open(os.path.join(str(self.conf.get("pid directory")), "smbd.pid")) as f:
                pid = int(f.read().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def _send_messaging(self, messages: list[tuple[int, bytes]]) -> int:
        with LOCK:
            ctx = self._messaging.Messaging(lp_ctx=self.conf.lp)
            try:
                own = os.path.join(self.conf.lock_dir, "msg.sock", str(os.getpid()))
                if not os.path.exists(own):
                    # our datagram socket is not where smbd's are: sends would go nowhere
                    raise OSError(f"messaging socket {own} missing (socket directory mismatch)")
                parent = self.smbd_parent()
                reached = 0
                for pid in self.peers():
                    dest = self._server_id.server_id()
                    dest.pid = pid
                    dest.task_id = 0
                    dest.vnn = ctx.server_id.vnn  # the receiver ignores it; ours must match it
                    dest.unique_id = 0
                    try:
                        for msg_type, payload in messages:  # one receiver handles them in order
                            if msg_type == MSG_SMB_FORCE_TDIS and pid == parent:
                                # the parent forwards it to every child: a second copy that
                                # would also close trees connected after the first one
                                continue
                            ctx.send(dest, msg_type, payload)
                        reached += 1
                    except RuntimeError:  # a dead process's stale socket: nothing to tell
                        continue
                return reached
            finally:
                del ctx  # unregisters us (msg.lock/<pid>, msg.sock/<pid>) at once

    def _send_smbcontrol(self, args: list[str]) -> int:
        cmd = ["smbcontrol", "-s", self.conf.config_file, "smbd", *args]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode == 0:
                return 1
            log.warning("%s: exit %d: %s", " ".join(cmd), proc.returncode, proc.stderr.strip())
        return 0
