r"""Reading a snapshot share over SMB 3: the ``SmbSource`` of a backup.

Why smbprotocol's low-level API (``Connection``/``Session``/``TreeConnect``
and hand-sent requests) rather than ``smbclient.open_file``: measured on
loopback against Samba 4.17, 2 MiB reads with two outstanding reach
600-700 MB/s (signed and AES-GCM encrypted alike), the file-object layer
150-220 MB/s and impacket's ``getFile`` ~90 MB/s.

Why requests and responses are packed and parsed here with ``struct``:
smbprotocol's Structure classes cost tens of microseconds per field, so
~0.1 ms per message -- most of the Python time of a small file, which takes
four messages -- and they turn FILETIMEs into ``datetime`` (microseconds),
losing the 100 ns resolution SMB gives.  smbprotocol still negotiates, logs
on (NTLM via pyspnego), derives the keys and runs the receiving thread;
:meth:`SmbSession._send_fast` frames, signs and encrypts what we send
(pinned to smbprotocol 1.17.0's bookkeeping: credits, ``Request`` objects).

Round trips, the real cost per file: a directory is one related compound
(Create + QueryDirectory + QueryDirectory + Close; a third listing request
only for directories of many thousand entries); a file up to
``SMALL_FILE`` bytes is one compound (Create + Read + QueryInfo(security) +
Close); a larger file is Create + QueryInfo, then 2 MiB reads with two in
flight, then Close.  Requests carry FILE_OPEN_FOR_BACKUP_INTENT, so a user
with SeBackupPrivilege reads regardless of ACLs.

What SMB gives and what a recovery point keeps (docs/backup.md):
sizes, the four FILETIMEs (mtime = LastWriteTime, atime = LastAccessTime,
ctime = ChangeTime, ``btime`` = CreationTime, in ns), the DOS attributes
(``attrib``), the FileId (files-cache key with size, mtime and ChangeTime),
and -- when ``security`` is on -- the security descriptor (owner, group,
DACL; self-relative, as the server sends it) as the pseudo-xattr
``smb.security_descriptor``.  POSIX modes and owners are not visible over
plain SMB: ``mode`` is synthesised (0755 directories, 0644 files, without
write bits when FILE_ATTRIBUTE_READONLY) and ``uid``/``gid`` are -1, which
restore leaves alone.  Samba shows symlinks as their targets (a dangling
one not at all) and hardlinks as separate files.  Sparse files: the
allocated ranges are asked (FSCTL_QUERY_ALLOCATED_RANGES) when the server
flags a file sparse or reports fewer allocated bytes than its size; Samba
answers "all data" unless its own sparse flag is set, so holes are then
found by the engine's all-zero-chunk test (stored as holes, restored sparse).

Failures: a status answer for one file or directory (access denied, name
not found, sharing violation) becomes an ``OSError``, which the engine
records and skips; a broken connection, a timeout or a logon failure
raises :class:`SmbError`, which ends the run without a recovery point
(a server process stuck on one request would otherwise make every later
request wait its full timeout).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, NoReturn

from cryptography.hazmat.primitives.ciphers import aead
from smbprotocol.connection import Ciphers, Connection, Dialects, Request
from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.header import NtStatus
from smbprotocol.ioctl import SMB2IOCTLRequest
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from remotevss.backup.excludes import CACHEDIR_SIGNATURE, CACHEDIR_TAG, Excludes
from remotevss.backup.snapshot_source import DIR, FILE, SourceEntry
from remotevss.fsrvp import filetime

log = logging.getLogger(__name__)

READ_SIZE = 2 << 20  # bytes per read request (32 credits)
READ_DEPTH = 2  # read requests in flight per file
SMALL_FILE = 1 << 20  # files up to this size: one compound round trip
PREFETCH = 0  # small-file compounds in flight ahead of the engine
CREDIT_RESERVE = 96  # credits left for large reads and listings when prefetching
LIST_BUFFER = 256 << 10  # QueryDirectory output buffer (4 credits)
SD_BUFFER = 64 << 10
SD_XATTR = "smb.security_descriptor"
DEFAULT_TIMEOUT = 120.0  # seconds for any one SMB request
CREDITS_WANTED = 256

# MS-SMB2 / MS-FSCC constants (values, so no enum conversions in the hot path)
_FILE_READ_DATA = 0x00000001  # = FILE_LIST_DIRECTORY
_FILE_READ_EA = 0x00000008
_FILE_READ_ATTRIBUTES = 0x00000080
_READ_CONTROL = 0x00020000
_SYNCHRONIZE = 0x00100000
_SHARE_ALL = 0x7  # read | write | delete: never conflict with the server's own opens
_FILE_OPEN = 1
_FILE_DIRECTORY_FILE = 0x00000001
_FILE_SEQUENTIAL_ONLY = 0x00000004
_FILE_NON_DIRECTORY_FILE = 0x00000040
_FILE_OPEN_FOR_BACKUP_INTENT = 0x00004000
_IMPERSONATION = 2
_FILE_ID_FULL_DIRECTORY_INFORMATION = 38
_SMB2_RESTART_SCANS = 0x01
_INFO_SECURITY = 3
_OWNER_GROUP_DACL = 0x1 | 0x2 | 0x4
_FSCTL_QUERY_ALLOCATED_RANGES = 0x000940CF
_SMB2_0_IOCTL_IS_FSCTL = 0x1
_RELATED = b"\xff" * 16
_SMB2_FLAGS_RELATED = 0x4
_SMB2_FLAGS_SIGNED = 0x8
_SMB2_FLAGS_DFS = 0x10000000
_HEADER = struct.Struct("<4sHHIHHIIQIIQ16s")  # SMB2 sync header, 64 bytes
_TRANSFORM_AAD = struct.Struct("<16sIHHQ")  # transform header after the signature, 32 bytes

ATTR_READONLY = 0x1
ATTR_DIRECTORY = 0x10
ATTR_REPARSE_POINT = 0x400
ATTR_SPARSE = 0x200


# Response bodies (after the 64-byte SMB2 header)
_CREATE = struct.Struct("<HBBIqqqqqqII16sII")  # 88 bytes
_READ = struct.Struct("<HBBII")
_OUT = struct.Struct("<HHI")  # QueryInfo / QueryDirectory: size, offset, length
_IOCTL = struct.Struct("<HHI16sIIIIII")
_ID_FULL = struct.Struct("<IIqqqqqqIIIIq")  # FileIdFullDirectoryInformation, 80 bytes
_RANGE = struct.Struct("<qq")


class SmbError(RuntimeError):
    """The SMB connection failed (lost, timed out, logon refused): the run must stop.

    Not an OSError on purpose: the engine skips files on OSError, and after a
    connection failure every later request would fail the same way."""


#: Nanoseconds since 1970 from a FILETIME; 0 (unknown) stays 0.
filetime_ns = filetime.to_unix_ns


def parse_id_full_directory(buf: bytes | memoryview) -> list[tuple[str, int, int, int, int, int,
                                                                       int, int, int]]:
    """FileIdFullDirectoryInformation entries (MS-FSCC 2.4.18) as tuples:
    (name, creation, access, write, change (FILETIMEs), end_of_file, allocation,
    attributes, file_id).  The FileId is read as a signed 64-bit number: it keys
    the files cache, and SQLite integers are signed."""
    out = []
    off, size = 0, len(buf)
    while off + _ID_FULL.size <= size:
        (next_off, _index, btime, atime, mtime, ctime, eof, alloc, attrs, name_len, _ea,
         _reserved, file_id) = _ID_FULL.unpack_from(buf, off)
        start = off + _ID_FULL.size
        name = bytes(buf[start:start + name_len]).decode("utf-16-le", "replace")
        out.append((name, btime, atime, mtime, ctime, eof, alloc, attrs, file_id))
        if next_off == 0:
            break
        off += next_off
    return out


def synthetic_mode(attributes: int) -> int:
    """Permission bits for an entry that came without any (plain SMB)."""
    if attributes & ATTR_DIRECTORY:
        return 0o755
    return 0o444 if attributes & ATTR_READONLY else 0o644


def _entry(name: str, btime: int, atime: int, mtime: int, ctime: int, eof: int, alloc: int,
           attrs: int, file_id: int) -> SourceEntry:
    is_dir = bool(attrs & ATTR_DIRECTORY)
    return SourceEntry(
        name=name, type=DIR if is_dir else FILE, mode=synthetic_mode(attrs), uid=-1, gid=-1,
        size=0 if is_dir else eof, mtime_ns=filetime_ns(mtime), atime_ns=filetime_ns(atime),
        ctime_ns=filetime_ns(ctime), ino=file_id, dev=0, nlink=1, allocated=alloc,
        attributes=attrs, btime_ns=filetime_ns(btime))


def _body(resp: Any) -> bytes:
    data: bytes = resp["data"].get_value()
    return data


def _out_buffer(body: bytes) -> bytes:
    _size, offset, length = _OUT.unpack_from(body)
    start = offset - 64
    return body[start:start + length] if length else b""


class _Status(Exception):
    """A status answer to one request (mapped to OSError with the path by the caller)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"NTSTATUS 0x{status:08x}")
        self.status = status


#: Statuses smbprotocol has no errno for ("Unknown NtStatus error returned ..."),
#: which a restore onto a share meets: their errno, for a plain message.
_STATUS_ERRNO = {0xC0000022: errno.EACCES,  # STATUS_ACCESS_DENIED
                 0xC000007F: errno.ENOSPC,  # STATUS_DISK_FULL
                 0xC00000A2: errno.EROFS}  # STATUS_MEDIA_WRITE_PROTECTED


class ShareOSError(OSError):
    """An OSError shown as ``strerror: \\\\host\\share\\path`` (a UNC path's
    backslashes are not doubled, as ``repr`` would)."""

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


def _os_error(status: int, path: str) -> OSError:
    err: OSError = SMBOSError(status, path)
    if err.errno == 0:  # a status smbprotocol has no errno for: say what it is
        code = _STATUS_ERRNO.get(status, errno.EIO)
        name = next((k for k, v in vars(NtStatus).items()
                     if k.startswith("STATUS_") and v == status), f"NTSTATUS 0x{status:08x}")
        return ShareOSError(code, f"{os.strerror(code)} ({name})", path)
    return err


class SmbSession:
    r"""One SMB 3 connection and authenticated session to a server, shared by the
    sources of its shares.  Signing is always required (Samba refuses unsigned
    tree connects on 3.1.1); encryption by default."""

    def __init__(self, host: str, *, username: str = "", password: str = "", domain: str = "",
                 nt_hash: str = "", kerberos: bool = False, port: int = 445,
                 encrypt: bool = True, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.broken: str | None = None
        self._lock = threading.Lock()
        self.conn = Connection(uuid.uuid4(), host, port, require_signing=True)
        try:
            self.conn.connect(timeout=int(max(1, connect_timeout)))
        except (OSError, SMBException, ValueError) as exc:
            self.broken = "connect failed"
            self.close()
            raise SmbError(f"{host}: cannot connect to SMB port {port}: {exc}") from exc
        user: Any = f"{domain}\\{username}" if domain and username else username
        secret: str | None = password or None
        protocol = "kerberos" if kerberos else "ntlm"
        if nt_hash and not kerberos:
            import spnego

            user, secret = spnego.NTLMHash(username=user, nt_hash=nt_hash.upper()), None
        if kerberos:
            try:
                import gssapi  # noqa: F401
            except ImportError:
                self.close()
                raise SmbError("Kerberos for the SMB data connection needs python3-gssapi "
                               "(smbprotocol's Kerberos); use a password or an NT hash") from None
        self.session = Session(self.conn, user, secret, require_encryption=encrypt,
                               hostname_override=host, auth_protocol=protocol)
        try:
            self.session.connect()
        except SMBAuthenticationError as exc:
            self.close()
            raise SmbError(f"{host}: SMB logon failed: {exc}") from exc
        except (OSError, SMBException, ValueError) as exc:
            self.close()
            raise SmbError(f"{host}: SMB session setup failed: {exc}") from exc
        try:  # more credits: two 2 MiB reads alone take 64, a listing in parallel 8
            window = self.conn.sequence_window
            if window["high"] - window["low"] < CREDITS_WANTED:
                self.conn.echo(sid=self.session.session_id, timeout=int(connect_timeout),
                               credit_request=CREDITS_WANTED)
        except SMBException as exc:
            log.debug("echo for credits: %s", exc)
        self.encrypted = bool(self.session.encrypt_data)
        self.dialect = self.conn.dialect
        self.read_size = min(READ_SIZE, int(self.conn.max_read_size))
        # Our own packing of what we send (see _send_fast) for SMB 3.x; else smbprotocol's.
        self.fast = self.dialect >= Dialects.SMB_3_0_0
        self._gcm = self.dialect >= Dialects.SMB_3_1_1 and self.conn.cipher_id in (
            Ciphers.AES_128_GCM, Ciphers.AES_256_GCM)
        self._cipher: Any = None
        if self.encrypted:
            key = self.session.encryption_key
            self._cipher = aead.AESGCM(key) if self._gcm else aead.AESCCM(key)

    def tree(self, share: str) -> TreeConnect:
        from remotevss.client.unc import unc_text

        t = TreeConnect(self.session, unc_text(self.host, share))  # IPv6: ipv6-literal.net
        try:
            t.connect()
        except SMBResponseException as exc:
            if exc.status == NtStatus.STATUS_BAD_NETWORK_NAME:
                raise SmbError(rf"\\{self.host}\{share}: no such share") from None
            if exc.status == NtStatus.STATUS_ACCESS_DENIED:
                raise SmbError(rf"\\{self.host}\{share}: access denied") from None
            raise SmbError(rf"\\{self.host}\{share}: tree connect failed: {exc}") from None
        except SMBException as exc:
            raise SmbError(rf"\\{self.host}\{share}: tree connect failed: {exc}") from exc
        return t

    # -- requests ---------------------------------------------------------------------------
    def send(self, tree: TreeConnect, msgs: Sequence[Any], related: bool = False) -> list[Any]:
        """Send one message or a compound; returns the request handles."""
        if self.broken:
            raise SmbError(self.broken)
        try:
            if self.fast:
                return self._send_fast(tree, msgs, related)
            if len(msgs) == 1 and not related:
                return [self.conn.send(msgs[0], self.session.session_id, tree.tree_connect_id)]
            reqs: list[Any] = self.conn.send_compound(list(msgs), self.session.session_id,
                                                      tree.tree_connect_id, related=related)
            return reqs
        except (SMBException, OSError) as exc:
            self.fail(f"{self.host}: SMB send failed: {exc}")

    def _send_fast(self, tree: TreeConnect, msgs: Sequence[Any], related: bool) -> list[Any]:
        """``Connection._send`` with the header, signature, transform header and TCP
        framing packed by ``struct`` (smbprotocol 1.17.0's Structure classes cost
        ~0.1 ms per message).  Same bytes, same bookkeeping: credits under the
        connection's sequence lock, ``Request`` objects in ``outstanding_requests``
        for its receiver thread, signing when the session requires it, then AES
        encryption when the session encrypts."""
        conn, sess = self.conn, self.session
        sign_key = sess.signing_key if sess.signing_required else None
        flags0 = _SMB2_FLAGS_DFS if tree.is_dfs_share else 0
        out = bytearray()
        reqs: list[Any] = []
        last = len(msgs) - 1
        for i, m in enumerate(msgs):
            body = m.pack()
            if i < last:
                length = 64 + len(body)
                pad = -length % 8
                next_command = length + pad
            else:
                pad = next_command = 0
            charge = conn._calculate_credit_charge(m)
            with conn.sequence_lock:
                low, high = conn.sequence_window["low"], conn.sequence_window["high"]
                if charge > high - low:
                    raise SMBException(f"Request requires {charge} credits but only "
                                       f"{high - low} credits are available")
                mid = low
                conn.sequence_window["low"] = low + (charge or 1)
            flags = flags0 | (_SMB2_FLAGS_RELATED if related and i else 0)
            if sign_key:
                flags |= _SMB2_FLAGS_SIGNED
            command = int(m.COMMAND)
            raw = _HEADER.pack(b"\xfeSMB", 64, charge, 0, command, charge, flags, next_command,
                               mid, 0, tree.tree_connect_id, sess.session_id,
                               b"\0" * 16) + body + b"\0" * pad
            if sign_key:
                sig = conn._generate_signature(raw, sign_key, mid, False, command)
                raw = raw[:48] + sig + raw[64:]
            out += raw
            header = _Raw(0, b"", message_id=mid, command=command, reserved=0,
                          tree_id=tree.tree_connect_id, session_id=sess.session_id)
            req = Request(header, type(m), conn, session_id=sess.session_id)
            conn.outstanding_requests[mid] = req
            reqs.append(req)
        if related:
            reqs[0].related_ids = [r.message["message_id"].get_value() for r in reqs[1:]]
        data = bytes(out)
        if sess.encrypt_data or tree.encrypt_data:
            data = self._encrypt(data)
        conn._check_worker_running()
        transport = conn.transport
        frame = struct.pack(">I", len(data)) + data  # Direct TCP: 0 + 24-bit length
        with transport._sock_lock:
            view = memoryview(frame)
            while view:
                view = view[transport._sock.send(view):]
        return reqs

    def _encrypt(self, data: bytes) -> bytes:
        sess = self.session
        nonce = os.urandom(12 if self._gcm else 11)
        aad = _TRANSFORM_AAD.pack(nonce.ljust(16, b"\0"), len(data), 0, 1, sess.session_id)
        sealed: bytes = self._cipher.encrypt(nonce, data, aad)
        return b"\xfdSMB" + sealed[-16:] + aad + sealed[:-16]

    def recv(self, req: Any) -> bytes:
        """The response body of one request; raises _Status for a failure status."""
        if self.broken:
            raise SmbError(self.broken)
        try:
            resp = self.conn.receive(req, timeout=self.timeout, resolve_symlinks=False)
        except SMBResponseException as exc:
            raise _Status(exc.status) from None
        except SMBException as exc:
            self.fail(f"{self.host}: SMB connection failed: {exc}")
        except OSError as exc:
            self.fail(f"{self.host}: SMB connection failed: {exc}")
        return _body(resp)

    def recv_all(self, reqs: Sequence[Any]) -> list[bytes | _Status]:
        """Every response of a compound, failures as _Status values (all must be received)."""
        out: list[bytes | _Status] = []
        for r in reqs:
            try:
                out.append(self.recv(r))
            except _Status as st:
                out.append(st)
        return out

    def credits(self) -> int:
        w = self.conn.sequence_window
        return int(w["high"] - w["low"])

    def fail(self, why: str) -> NoReturn:
        """Mark the connection unusable and raise SmbError."""
        with self._lock:
            if self.broken is None:
                self.broken = why
        raise SmbError(why)

    def close(self) -> None:
        try:
            self.conn.disconnect(close=self.broken is None, timeout=5)
        except Exception as exc:  # noqa: BLE001 - best effort on a broken connection
            log.debug("SMB disconnect: %s", exc)
            try:
                self.conn.disconnect(close=False)
            except Exception as exc2:  # noqa: BLE001
                log.debug("SMB transport close: %s", exc2)

    def __enter__(self) -> SmbSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- request builders -----------------------------------------------------------------------
class _Value:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def get_value(self) -> Any:
        return self.value

    def __len__(self) -> int:
        return len(self.value)


class _Raw:
    """A request body packed with ``struct``, with as much of smbprotocol's
    Structure interface as ``Connection`` uses (command, length, ``pack()``, the
    fields its credit charge reads).  Why: building and packing the Structure
    classes costs ~40 us per message, a quarter of the Python time per small file."""

    __slots__ = ("COMMAND", "data", "fields")

    def __init__(self, command: int, data: bytes, /, **fields: Any) -> None:
        self.COMMAND = command
        self.data = data
        self.fields = fields

    def pack(self) -> bytes:
        return self.data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: str) -> _Value:
        return _Value(self.fields[key])


_SMB2_CREATE, _SMB2_CLOSE, _SMB2_READ = 0x05, 0x06, 0x08
_SMB2_QUERY_DIRECTORY, _SMB2_QUERY_INFO = 0x0E, 0x10
_CREATE_REQ = struct.Struct("<HBBIQQIIIIIHHII")  # 56 bytes, then the name
_READ_REQ = struct.Struct("<HBBIQ16sIIIHHB")  # 49 bytes
_QUERY_DIR_REQ = struct.Struct("<HBBI16sHHI")  # 32 bytes, then the pattern
_QUERY_INFO_REQ = struct.Struct("<HBBIHHIII16s")  # 40 bytes
_CLOSE_REQ = struct.Struct("<HHI16s")  # 24 bytes
_STAR = "*".encode("utf-16-le")


def _create(path: str, access: int, options: int) -> _Raw:
    name = path.encode("utf-16-le")
    body = _CREATE_REQ.pack(57, 0, 0, _IMPERSONATION, 0, 0, access, 0, _SHARE_ALL, _FILE_OPEN,
                            options | _FILE_OPEN_FOR_BACKUP_INTENT, 120, len(name), 0, 0)
    return _Raw(_SMB2_CREATE, body + (name or b"\0\0"))


def _read(file_id: bytes, offset: int, length: int) -> _Raw:
    body = _READ_REQ.pack(49, 0x50, 0, length, offset, file_id, 0, 0, 0, 0, 0, 0)
    return _Raw(_SMB2_READ, body, length=length, read_channel_info_length=0)


def _query_dir(file_id: bytes, restart: bool) -> _Raw:
    body = _QUERY_DIR_REQ.pack(33, _FILE_ID_FULL_DIRECTORY_INFORMATION,
                               _SMB2_RESTART_SCANS if restart else 0, 0, file_id, 96,
                               len(_STAR), LIST_BUFFER)
    return _Raw(_SMB2_QUERY_DIRECTORY, body + _STAR, buffer=_STAR,
                output_buffer_length=LIST_BUFFER)


def _query_sd(file_id: bytes) -> _Raw:
    body = _QUERY_INFO_REQ.pack(41, _INFO_SECURITY, 0, SD_BUFFER, 0, 0, 0, _OWNER_GROUP_DACL,
                                0, file_id)
    return _Raw(_SMB2_QUERY_INFO, body)


def _close(file_id: bytes) -> _Raw:
    return _Raw(_SMB2_CLOSE, _CLOSE_REQ.pack(24, 0, 0, file_id))


def _ioctl_qar(file_id: bytes, offset: int, length: int) -> SMB2IOCTLRequest:
    r = SMB2IOCTLRequest()
    r["ctl_code"] = _FSCTL_QUERY_ALLOCATED_RANGES
    r["file_id"] = file_id
    r["max_input_response"] = 0
    r["max_output_response"] = 64 << 10
    r["flags"] = _SMB2_0_IOCTL_IS_FSCTL
    r["buffer"] = _RANGE.pack(offset, length)
    return r


class _Created:
    __slots__ = ("btime", "atime", "mtime", "ctime", "alloc", "eof", "attrs", "file_id")
    btime: int
    atime: int
    mtime: int
    ctime: int
    alloc: int
    eof: int
    attrs: int
    file_id: bytes

    def __init__(self, body: bytes) -> None:
        (_size, _oplock, _flags, _action, self.btime, self.atime, self.mtime, self.ctime,
         self.alloc, self.eof, self.attrs, _res, self.file_id, _co, _cl) = _CREATE.unpack_from(body)


class SmbSource:
    r"""A share (normally an exposed snapshot share ``share@{GUID}``) read over SMB.

    ``label`` defaults to the share name without its ``@{...}`` suffix, so
    successive snapshots of one share use one files cache.  ``security``
    stores each entry's security descriptor (``smb.security_descriptor``).
    """

    read_hints = True
    listing_proves_unchanged = False

    def __init__(self, session: SmbSession, share: str, label: str | None = None, *,
                 security: bool = True, excludes: Excludes | None = None) -> None:
        self.session = session
        self.excludes = excludes  # patterns and cache tags (excludes.py); not mounts
        # Small files the engine will read, per directory, in order; and the
        # compounds already sent for some of them (relpath -> requests).
        self._plans: dict[str, deque[tuple[str, SourceEntry]]] = {}
        self._inflight: dict[str, list[Any]] = {}
        self.share = share
        self.label = label or share.split("@{", 1)[0]
        if not self.label or "/" in self.label or self.label in (".", ".."):
            raise ValueError(f"bad source label {self.label!r}")
        self.cache_key = f"{self.label}\0smb"
        self.security = security
        self.tree = session.tree(share)
        self.unc = rf"\\{session.host}\{share}"

    @staticmethod
    def _smb_path(relpath: str) -> str:
        return relpath.replace("/", "\\")

    def _err(self, st: _Status, relpath: str) -> OSError:
        return _os_error(st.status, f"{self.unc}\\{self._smb_path(relpath)}".rstrip("\\"))

    def stat_root(self) -> SourceEntry:
        reqs = self.session.send(self.tree, [
            _create("", _FILE_READ_ATTRIBUTES | _SYNCHRONIZE, _FILE_DIRECTORY_FILE),
            _close(_RELATED)], related=True)
        created, _closed = self.session.recv_all(reqs)
        if isinstance(created, _Status):
            raise self._err(created, "")
        c = _Created(created)
        return _entry(self.label, c.btime, c.atime, c.mtime, c.ctime, 0, c.alloc,
                      c.attrs | ATTR_DIRECTORY, 0)

    def scandir(self, relpath: str) -> list[SourceEntry]:
        """One related compound: Create, QueryDirectory x2, Close.  A directory
        whose listing does not fit in two buffers is listed again on its own handle."""
        path = self._smb_path(relpath)
        create = _create(path, _FILE_READ_DATA | _FILE_READ_ATTRIBUTES | _SYNCHRONIZE,
                         _FILE_DIRECTORY_FILE)
        try:
            reqs = self.session.send(self.tree, [create, _query_dir(_RELATED, True),
                                                 _query_dir(_RELATED, False), _close(_RELATED)],
                                     related=True)
            created, first, second, _closed = self.session.recv_all(reqs)
        except SmbError as exc:
            raise self._listing_failed(exc, relpath) from None
        if isinstance(created, _Status):
            raise self._err(created, relpath)
        rows: list[tuple[str, int, int, int, int, int, int, int, int]] = []
        for part in (first, second):
            if isinstance(part, _Status):
                if part.status == NtStatus.STATUS_NO_MORE_FILES:
                    break
                raise self._err(part, relpath)
            rows += parse_id_full_directory(_out_buffer(part))
        else:  # both buffers full: more entries remain; list everything on one handle
            rows = self._list_long(relpath)
        out = [_entry(*row) for row in rows if row[0] not in (".", "..")]
        ex = self.excludes
        if ex is not None and ex.by_name:
            out = [e for e in out
                   if not ex.excluded(f"{relpath}/{e.name}" if relpath else e.name, e.name)]
        if ex is not None and ex.caches:
            out = self._cache_tagged(relpath, out)
        out.sort(key=lambda e: e.name)
        return out

    def _listing_failed(self, exc: SmbError, relpath: str) -> SmbError:
        """The connection failure, naming the directory being listed: a server that
        stalls on one directory's listing (Samba on one holding a FIFO) otherwise
        leaves only a message id to go on."""
        where = f"{self.label}/{relpath}" if relpath else self.label
        return SmbError(f"{exc} (while listing {where})")

    def _cache_tagged(self, relpath: str, listing: list[SourceEntry]) -> list[SourceEntry]:
        """Only the tag file of a directory marked as a cache (``--exclude-caches``),
        as for a local directory: the tag is read (one small compound) only where
        a directory has one."""
        tag = next((e for e in listing if e.name == CACHEDIR_TAG and e.type == FILE), None)
        if tag is None:
            return listing
        f = SmbFile(self, f"{relpath}/{tag.name}" if relpath else tag.name, tag, None)
        try:
            head = f.pread(0, len(CACHEDIR_SIGNATURE))
        except OSError:
            return listing
        finally:
            f.close()
        return [tag] if head == CACHEDIR_SIGNATURE else listing

    def _list_long(self, relpath: str) -> list[tuple[str, int, int, int, int, int, int, int, int]]:
        path = self._smb_path(relpath)
        try:
            created, = self.session.recv_all(self.session.send(self.tree, [
                _create(path, _FILE_READ_DATA | _FILE_READ_ATTRIBUTES | _SYNCHRONIZE,
                        _FILE_DIRECTORY_FILE)]))
        except SmbError as exc:
            raise self._listing_failed(exc, relpath) from None
        if isinstance(created, _Status):
            raise self._err(created, relpath)
        fid = _Created(created).file_id
        rows: list[tuple[str, int, int, int, int, int, int, int, int]] = []
        try:
            restart = True
            while True:
                try:
                    (part,) = self.session.recv_all(self.session.send(
                        self.tree, [_query_dir(fid, restart)]))
                except SmbError as exc:
                    raise self._listing_failed(exc, relpath) from None
                restart = False
                if isinstance(part, _Status):
                    if part.status == NtStatus.STATUS_NO_MORE_FILES:
                        break
                    raise self._err(part, relpath)
                rows += parse_id_full_directory(_out_buffer(part))
        finally:
            self.session.recv_all(self.session.send(self.tree, [_close(fid)]))
        return rows

    def xattrs(self, relpath: str, entry: SourceEntry) -> dict[str, bytes]:
        """Directories: the security descriptor (one compound).  Files get theirs
        from the open that reads them (:meth:`SmbFile.xattrs`)."""
        if not self.security or entry.type != DIR:
            return {}
        path = self._smb_path(relpath)
        reqs = self.session.send(self.tree, [
            _create(path, _READ_CONTROL | _FILE_READ_ATTRIBUTES, _FILE_DIRECTORY_FILE),
            _query_sd(_RELATED), _close(_RELATED)], related=True)
        _created, sd, _closed = self.session.recv_all(reqs)
        if isinstance(sd, _Status):
            return {}
        return {SD_XATTR: _out_buffer(sd)}

    def owner(self, entry: SourceEntry) -> tuple[str | None, str | None]:
        return None, None  # owner and group SIDs are in the security descriptor

    def open(self, relpath: str, entry: SourceEntry) -> SmbFile:
        reldir = relpath.rpartition("/")[0]
        sent = self._inflight.pop(relpath, None)
        plan = self._plans.get(reldir)
        if sent is None and plan and plan[0][0] == relpath:
            plan.popleft()
        try:
            return SmbFile(self, relpath, entry, sent)
        finally:
            self._top_up(reldir)

    def will_read(self, reldir: str, entries: list[SourceEntry]) -> None:
        """Why: one small file costs a round trip plus ~1 ms of Python and server
        work; keeping ``PREFETCH`` of them in flight overlaps the two."""
        plan = deque((f"{reldir}/{e.name}" if reldir else e.name, e) for e in entries
                     if 0 <= e.size <= SMALL_FILE)
        if plan:
            self._plans[reldir] = plan
            self._top_up(reldir)

    def _top_up(self, reldir: str) -> None:
        plan = self._plans.get(reldir)
        while plan and len(self._inflight) < PREFETCH:
            rel, e = plan[0]
            if self.session.credits() < CREDIT_RESERVE + 4 + e.size // 65536:
                return
            plan.popleft()
            if rel not in self._inflight:
                self._inflight[rel] = self.session.send(
                    self.tree, small_file_compound(self, rel, e.size), related=True)
        if plan is not None and not plan:
            del self._plans[reldir]

    def close(self) -> None:
        """Receive what was prefetched and never opened (every request needs its answer)."""
        self._plans.clear()
        inflight, self._inflight = self._inflight, {}
        if self.session.broken:
            return
        for reqs in inflight.values():
            self.session.recv_all(reqs)


def small_file_compound(src: SmbSource, relpath: str, size: int) -> list[Any]:
    """Create + Read + QueryInfo(security) + Close of one file."""
    access = _FILE_READ_DATA | _FILE_READ_ATTRIBUTES | _SYNCHRONIZE
    if src.security:
        access |= _READ_CONTROL
    msgs: list[Any] = [_create(src._smb_path(relpath), access,
                               _FILE_NON_DIRECTORY_FILE | _FILE_SEQUENTIAL_ONLY)]
    if size:
        msgs.append(_read(_RELATED, 0, size))
    if src.security:
        msgs.append(_query_sd(_RELATED))
    msgs.append(_close(_RELATED))
    return msgs


class SmbFile:
    """An open file of an SmbSource: small files arrive whole with the open;
    larger ones are read through a pipeline of ``READ_DEPTH`` requests."""

    def __init__(self, src: SmbSource, relpath: str, entry: SourceEntry,
                 sent: list[Any] | None = None) -> None:
        self.src = src
        self.session = src.session
        self.relpath = relpath
        self._sd: bytes | None = None
        self._data: bytes | None = None
        self._fid: bytes | None = None
        self._queue: deque[tuple[int, int, Any]] = deque()  # offset, length, request
        self._next = 0  # next offset to request
        self._limit = 0  # request up to here
        self._buf = b""
        self._buf_off = 0
        self._extents: list[tuple[int, int]] = []
        self.size = 0
        self._attrs = 0
        self._alloc = -1
        if 0 <= entry.size <= SMALL_FILE:
            if not self._open_small(entry.size, sent):
                self._open_large()
        else:
            self._open_large()

    def _create(self) -> _Raw:
        access = _FILE_READ_DATA | _FILE_READ_ATTRIBUTES | _SYNCHRONIZE
        if self.src.security:
            access |= _READ_CONTROL
        return _create(self.src._smb_path(self.relpath), access,
                       _FILE_NON_DIRECTORY_FILE | _FILE_SEQUENTIAL_ONLY)

    def _open_small(self, size: int, sent: list[Any] | None) -> bool:
        """Create + Read + QueryInfo + Close in one compound (perhaps sent ahead by
        the source); False if the file turned out larger than listed (then it is
        opened again the long way)."""
        if sent is None:
            sent = self.session.send(self.src.tree,
                                     small_file_compound(self.src, self.relpath, size),
                                     related=True)
        results = self.session.recv_all(sent)
        created = results[0]
        if isinstance(created, _Status):
            raise self.src._err(created, self.relpath)
        c = _Created(created)
        data = b""
        if size:
            got = results[1]
            if isinstance(got, _Status):
                if got.status != NtStatus.STATUS_END_OF_FILE:
                    raise self.src._err(got, self.relpath)
            else:
                _s, offset, _r, length, _rem = _READ.unpack_from(got)
                data = got[offset - 64:offset - 64 + length]
        if self.src.security:
            sd = results[-2]
            self._sd = None if isinstance(sd, _Status) else _out_buffer(sd)
        if c.eof > len(data):
            return False
        self._data = data[:c.eof]
        self.size = c.eof
        return True

    def _open_large(self) -> None:
        msgs: list[Any] = [self._create()]
        if self.src.security:
            msgs.append(_query_sd(_RELATED))
        results = self.session.recv_all(self.session.send(self.src.tree, msgs, related=True))
        created = results[0]
        if isinstance(created, _Status):
            raise self.src._err(created, self.relpath)
        c = _Created(created)
        self._fid = c.file_id
        self.size = c.eof
        self._attrs = c.attrs
        self._alloc = c.alloc
        if self.src.security:
            sd = results[1]
            self._sd = None if isinstance(sd, _Status) else _out_buffer(sd)

    # -- FileReader --------------------------------------------------------------------------
    def xattrs(self) -> dict[str, bytes] | None:
        return {SD_XATTR: self._sd} if self._sd is not None else None

    def changed(self) -> bool:
        return False  # read from a shadow copy, which nothing writes

    def extents(self) -> list[tuple[int, int]]:
        if self.size == 0:
            return []
        whole = [(0, self.size)]
        if self._fid is None or not (self._attrs & ATTR_SPARSE or 0 <= self._alloc < self.size):
            self._extents = whole
            return whole
        (body,) = self.session.recv_all(self.session.send(
            self.src.tree, [_ioctl_qar(self._fid, 0, self.size)]))
        if isinstance(body, _Status):  # not supported, or more ranges than one buffer holds
            self._extents = whole
            return whole
        _s, _r, _ctl, _fid, _io, _ic, out_off, out_cnt, _f, _r2 = _IOCTL.unpack_from(body)
        raw = body[out_off - 64:out_off - 64 + out_cnt]
        ranges = []
        for i in range(0, len(raw) - len(raw) % _RANGE.size, _RANGE.size):
            off, length = _RANGE.unpack_from(raw, i)
            end = min(off + length, self.size)
            if length > 0 and end > off >= 0:
                ranges.append((off, end - off))
        self._extents = ranges
        return ranges

    def _extent_end(self, offset: int) -> int:
        for off, length in self._extents:
            if off <= offset < off + length:
                return off + length
        return self.size

    def _pump(self) -> None:
        assert self._fid is not None
        while len(self._queue) < READ_DEPTH and self._next < self._limit:
            n = min(self.session.read_size, self._limit - self._next)
            (req,) = self.session.send(self.src.tree, [_read(self._fid, self._next, n)])
            self._queue.append((self._next, n, req))
            self._next += n

    def _drain(self) -> None:
        while self._queue:
            _off, _n, req = self._queue.popleft()
            with contextlib.suppress(_Status):
                self.session.recv(req)

    def _at(self, offset: int, end: int) -> memoryview:
        """Data starting at ``offset`` (empty at end of file), reading ahead up to ``end``."""
        if self._data is not None:
            return memoryview(self._data)[offset:]
        if not self._buf_off <= offset < self._buf_off + len(self._buf):
            while self._queue and self._queue[0][0] + self._queue[0][1] <= offset:
                _o, _n, req = self._queue.popleft()  # skipped over: receive and drop
                with contextlib.suppress(_Status):
                    self.session.recv(req)
            if not self._queue or self._queue[0][0] > offset:
                self._drain()
                self._next, self._limit = offset, max(end, offset + 1)
            self._pump()
            off, n, req = self._queue.popleft()
            try:
                body = self.session.recv(req)
            except _Status as st:
                if st.status == NtStatus.STATUS_END_OF_FILE:
                    self._drain()
                    return memoryview(b"")
                raise self.src._err(st, self.relpath) from None
            self._pump()
            _s, data_off, _r, length, _rem = _READ.unpack_from(body)
            self._buf = body[data_off - 64:data_off - 64 + length]
            self._buf_off = off
            if length < n:  # short read: end of file
                self._drain()
                self._next = self._limit = off + length
            if offset >= off + length:
                return memoryview(b"")
        return memoryview(self._buf)[offset - self._buf_off:]

    def pread(self, offset: int, n: int) -> bytes:
        if self._data is not None:
            return self._data[offset:offset + n]
        end = offset + n
        first = self._at(offset, end)
        if len(first) >= n:
            return bytes(first[:n])
        out = bytearray(first)
        while len(out) < n:
            more = self._at(offset + len(out), end)
            if not more:
                break
            out += more[:n - len(out)]
        return bytes(out)

    def readinto(self, offset: int, buf: memoryview) -> int:
        data = self._at(offset, self._extent_end(offset))
        k = min(len(buf), len(data))
        buf[:k] = data[:k]
        return k

    def close(self) -> None:
        if self._fid is None:
            return
        fid, self._fid = self._fid, None
        if self.session.broken:
            return
        self._drain()
        self.session.recv_all(self.session.send(self.src.tree, [_close(fid)]))
