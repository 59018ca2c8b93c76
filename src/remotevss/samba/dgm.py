"""Samba messages as the datagrams smbd reads (messaging_dgm), without python-samba.

Why: ``samba.messaging`` costs a process ~25 MB and leaks ~1.1 KB per
context (RELIABILITY.md §5); ``smbcontrol`` costs a process start (~30 ms).
The wire format is a few bytes (Samba 4.17, ``lib/messaging/messages_dgm.c``
and ``source3/lib/messages.c``):

* one unix datagram per message to ``<socket dir>/<pid>``; a message that
  fits one fragment (1024 bytes) starts with a 64-bit cookie of 0;
* then the 52-byte header (``message_hdr_put``): destination and source
  ``server_id`` (pid uint64, task_id uint32, vnn uint32, unique_id uint64,
  little-endian) and the message type (uint32);
* then the payload.

The receiver checks only the length and that the source is not itself; it
needs no reply address.  The socket directory is ``msg.sock`` in the lock
directory (Debian's Samba) or in the private directory (upstream's
``messaging_init_internal``): the first one that exists is used.  Like
``messaging_send_all`` the destinations are the entries of that directory,
whose names are pids; a stale socket of a dead process refuses the datagram
(ECONNREFUSED) and is skipped.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence

MSG_SMB_CONF_UPDATED = 0x0021
MSG_SMB_FORCE_TDIS = 0x0302
NONCLUSTER_VNN = 0xFFFFFFFF
FRAGMENT = 1024
_SERVER_ID = struct.Struct("<QIIQ")
HEADER_LENGTH = 2 * _SERVER_ID.size + 4  # MESSAGE_HDR_LENGTH
SEND_TIMEOUT = 10.0  # seconds a full receive queue may hold the backlog thread up


def datagram(msg_type: int, payload: bytes, dest_pid: int, src_pid: int) -> bytes:
    """One unfragmented message: cookie 0, header, payload."""
    size = 8 + HEADER_LENGTH + len(payload)
    if size > FRAGMENT:
        raise ValueError(f"a message of {len(payload)} bytes needs fragments (not supported)")
    return b"".join(
        (
            struct.pack("<Q", 0),
            _SERVER_ID.pack(dest_pid, 0, NONCLUSTER_VNN, 0),
            _SERVER_ID.pack(src_pid, 0, NONCLUSTER_VNN, 0),
            struct.pack("<I", msg_type),
            payload,
        )
    )


def socket_dir(candidates: Sequence[str]) -> str | None:
    """The first candidate ``msg.sock`` directory that exists."""
    for d in candidates:
        if os.path.isdir(d):
            return d
    return None


def peers(sock_dir: str) -> list[int]:
    """Pids with a messaging socket in ``sock_dir`` (ours left out)."""
    try:
        names = os.listdir(sock_dir)
    except OSError:
        return []
    me = os.getpid()
    return sorted(int(n) for n in names if n.isdigit() and int(n) not in (0, me))


#: Samba processes that serve no shares: a share's change means nothing to them,
#: and MSG_SMB_CONF_UPDATED costs each a full configuration reload (winbindd:
#: 0.7-1.2 ms of CPU per process and message, measured with Samba 4.17).
NO_SHARES = frozenset({"winbindd", "nmbd"})


def serves_no_shares(pid: int) -> bool:
    """True if ``pid`` is a process of NO_SHARES (its ``comm``); unknown: False."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() in NO_SHARES
    except OSError:
        return False


def smbd_parent(pid_file: str) -> int | None:
    """The main smbd's pid from its pid file, if that process exists."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def send_all(
    sock_dir: str, messages: Sequence[tuple[int, bytes]], *, skip_tdis_to: int | None = None,
    shares_only: bool = False,
) -> int:
    """Send ``messages`` (type, payload) in order to every process with a socket in
    ``sock_dir``; MSG_SMB_FORCE_TDIS not to ``skip_tdis_to`` (the smbd parent: it
    forwards it to its children, a second copy that would close trees connected
    in between); with ``shares_only`` (the messages are about shares), not to the
    processes that serve none (NO_SHARES).  Returns the number of processes
    reached or queued for.

    Never waits for a receiver: a process whose receive queue is full (smbd
    reloading its configuration for the messages before ours; Linux queues 10
    datagrams per socket by default) gets the rest of its messages from a
    background thread, in order, as Samba's own sender does (messaging_dgm
    hands them to a thread pool)."""
    me = os.getpid()
    reached = 0
    with _BACKLOG.lock, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for pid in peers(sock_dir):
            if shares_only and serves_no_shares(pid):
                continue
            path = os.path.join(sock_dir, str(pid))
            grams = [
                datagram(msg_type, payload, pid, me)
                for msg_type, payload in messages
                if not (msg_type == MSG_SMB_FORCE_TDIS and pid == skip_tdis_to)
            ]
            if path in _BACKLOG.pending:  # behind earlier messages still queued for it
                _BACKLOG.queue(path, grams)
                reached += 1
                continue
            try:
                for i, gram in enumerate(grams):
                    try:
                        s.sendto(gram, path)
                    except BlockingIOError:
                        _BACKLOG.queue(path, grams[i:])
                        break
                reached += 1
            except OSError as exc:
                if exc.errno in _GONE:
                    continue  # a dead process's leftover socket
                raise
    return reached


_GONE = (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)


class _Backlog:
    """Datagrams waiting for a full receive queue, sent by one daemon thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.pending: dict[str, collections.deque[bytes]] = {}
        self.thread: threading.Thread | None = None
        self.dropped = 0  # datagrams given up on (a receiver stuck for SEND_TIMEOUT)

    def queue(self, path: str, grams: list[bytes]) -> None:
        """Call with :attr:`lock` held."""
        self.pending.setdefault(path, collections.deque()).extend(grams)
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, name="samba-dgm", daemon=True)
            self.thread.start()
        self.ready.notify()

    def _run(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.settimeout(SEND_TIMEOUT)
            while True:
                with self.lock:
                    while not self.pending:
                        self.ready.wait()
                    path, grams = next(iter(self.pending.items()))
                    gram = grams[0]
                error: OSError | None = None
                try:
                    s.sendto(gram, path)
                except OSError as exc:  # gone, or stuck for SEND_TIMEOUT (TimeoutError)
                    error = exc
                with self.lock:
                    if error is None:
                        grams.popleft()
                        if not grams:
                            del self.pending[path]
                        continue
                    del self.pending[path]
                    if isinstance(error, TimeoutError):
                        self.dropped += len(grams)
                if isinstance(error, TimeoutError):
                    import logging

                    logging.getLogger("remotevss.samba").warning(
                        "Samba process %s read no message for %.0f s: %d dropped",
                        os.path.basename(path), SEND_TIMEOUT, len(grams),
                    )

    def wait_empty(self, timeout: float) -> bool:
        """True once every queued datagram is sent or dropped (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return True
            time.sleep(0.005)
        return False


_BACKLOG = _Backlog()
