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

import errno
import os
import socket
import struct
from collections.abc import Sequence

MSG_SMB_CONF_UPDATED = 0x0021
MSG_SMB_FORCE_TDIS = 0x0302
NONCLUSTER_VNN = 0xFFFFFFFF
FRAGMENT = 1024
_SERVER_ID = struct.Struct("<QIIQ")
HEADER_LENGTH = 2 * _SERVER_ID.size + 4  # MESSAGE_HDR_LENGTH
SEND_TIMEOUT = 2.0  # seconds a full receive queue may hold us up, per process


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
    sock_dir: str, messages: Sequence[tuple[int, bytes]], *, skip_tdis_to: int | None = None
) -> int:
    """Send ``messages`` (type, payload) in order to every process with a socket in
    ``sock_dir``; MSG_SMB_FORCE_TDIS not to ``skip_tdis_to`` (the smbd parent: it
    forwards it to its children, a second copy that would close trees connected
    in between).  Returns the number of processes reached."""
    me = os.getpid()
    reached = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(SEND_TIMEOUT)
        for pid in peers(sock_dir):
            path = os.path.join(sock_dir, str(pid))
            try:
                for msg_type, payload in messages:
                    if msg_type == MSG_SMB_FORCE_TDIS and pid == skip_tdis_to:
                        continue
                    s.sendto(datagram(msg_type, payload, pid, me), path)
                reached += 1
            except TimeoutError:
                continue  # its queue stayed full: a hung process, not ours to wait for
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                    continue  # a dead process's leftover socket
                raise
    return reached
