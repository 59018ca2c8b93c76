"""Registry shares read and written in Samba's ``registry.tdb`` with the small ``tdb`` binding.

Why not libsmbconf (python-samba): its bindings leak ~1.3 KB per share written
or read (RELIABILITY.md §5), and ``import samba.samba3.smbconf`` costs a
process ~25 MB.  The file format is small and stable, so this module writes
the same records libsmbconf writes, in one tdb transaction per batch.

The format (Samba 4.17 ``source3/registry/reg_backend_db.c``, regdb version 3;
every tdb key is a NUL-terminated string, key paths upper-cased):

* ``INFO/version``: int32 little-endian, must be 3.  Anything else is refused
  (:class:`RegdbFormatError`); the caller falls back to libsmbconf.
* ``HKLM\\SOFTWARE\\SAMBA\\SMBCONF``: the list of share keys -- a uint32 count,
  then each name as written (case kept) and NUL-terminated.  A key exists
  exactly when its list record parses; a share key's own list is empty (4
  zero bytes).
* ``SAMBA_REGVAL\\HKLM\\SOFTWARE\\SAMBA\\SMBCONF\\<SHARE>``: the share's values
  -- a uint32 count, then per value its name (NUL-terminated, at most 255
  bytes), type (uint32), data length (uint32) and data.  smbconf stores
  parameters as REG_SZ (UTF-16LE with a terminating NUL) and ``include``
  lines as one REG_MULTI_SZ value named ``includes``.
* ``SAMBA_SECDESC\\...``: a key's security descriptor; deleted with the key.

Version 3 has no sorted-subkeys cache (``SAMBA_SORTED_SUBKEYS\\...``): the
upgrade to version 3 deleted it, so there is nothing to invalidate.  The file
is opened with TDB_SEQNUM as Samba does, so every store bumps the sequence
number that smbd's smbconf cache compares (``regdb_get_seqnum``) and a
reload picks the change up.

What libsmbconf does that this module does not: canonicalize parameter names
(``writeable = yes`` is stored as written, not as ``read only = no``) and refuse
parameters loadparm does not know or global parameters in a share.  smbd
applies synonyms and ignores unknown or global parameters when it loads the
share, as it does for the base share in smb.conf the clone came from.  Names
outside ASCII are refused (:class:`RegdbUnsupported`): Samba upper-cases and
compares them with its own Unicode tables, which Python's do not match exactly.

The handle is opened per operation and closed after it (~15 us): tdb allows
one handle per file and process, and POSIX drops every lock a process holds
on a file when any of its descriptors of it closes, so this handle must never
overlap another one in this process (python-samba's, :mod:`remotevss.samba.conf`).
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Iterable

TYPE_CHECKING = False  # typing itself costs the tiny child ~2 MB
if TYPE_CHECKING:
    from typing import Any

SMBCONF_KEY = "HKLM\\SOFTWARE\\Samba\\smbconf"
VERSION_KEY = b"INFO/version\0"
REGDB_VERSION = 3
VALUE_PREFIX = "SAMBA_REGVAL"
SECDESC_PREFIX = "SAMBA_SECDESC"

REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_MULTI_SZ = 7

INCLUDES_VALUE = "includes"
#: Names smbconf never stores as a share's value (``smbconf_reg_parameter_is_valid``).
FORBIDDEN = frozenset({"statedirectory", "lockdirectory", "lockdir", "configbackend",
                       "include", INCLUDES_VALUE})  # fmt: skip
FSTRING_MAX = 255  # bytes of a name before its NUL (Samba's fstring is 256 bytes)
MAX_DEPTH = 8  # nested keys below a share key (deleted with it)

_U32 = struct.Struct("<I")
#: Held for every operation: one tdb handle per file and process, so two threads
#: must not have registry.tdb open at once (the second open would fail, EBUSY).
_ONE_HANDLE = threading.RLock()


class RegdbError(RuntimeError):
    """A registry operation failed (bad input, missing key, I/O)."""


class RegdbFormatError(RegdbError):
    """registry.tdb is not in a format this module knows: use libsmbconf instead."""


class RegdbBusy(RegdbError):
    """This process has registry.tdb open elsewhere (python-samba): tdb refuses a
    second handle (EBUSY); the light child can do the work instead."""


class RegdbMissing(RegdbError):
    """registry.tdb does not exist yet: smbd creates it when it first starts (and
    libsmbconf on its first use).  Reading finds no shares; a write needs Samba
    to create the file first."""


class RegdbUnsupported(RegdbError):
    """A name this module will not handle itself (non-ASCII): use libsmbconf instead."""


Params = list[tuple[str, str]]


# ---------------------------------------------------------------- records


def key_path(*parts: str) -> bytes:
    """A tdb key as ``normalize_reg_path`` makes it: joined with ``\\``, leading and
    trailing backslashes stripped, upper-cased, NUL-terminated."""
    path = "\\".join(parts).strip("\\")
    _check_ascii(path)
    return path.upper().encode() + b"\0"


def pack_subkeys(names: Iterable[str]) -> bytes:
    items = list(names)
    out = [_U32.pack(len(items))]
    for n in items:
        out.append(_name_bytes(n) + b"\0")
    return b"".join(out)


def unpack_subkeys(data: bytes, what: str) -> list[str]:
    """A subkey list, checked as ``regdb_key_exists`` checks it (exact count, every
    name NUL-terminated, nothing after the last)."""
    if len(data) < 4:
        raise RegdbFormatError(f"{what}: subkey list of {len(data)} bytes")
    (count,) = _U32.unpack_from(data)
    names: list[str] = []
    pos = 4
    for _ in range(count):
        end = data.find(b"\0", pos)
        if end < 0 or end - pos > FSTRING_MAX:
            raise RegdbFormatError(f"{what}: corrupt subkey list ({count} names expected)")
        names.append(_decode_name(data[pos:end], what))
        pos = end + 1
    if pos != len(data):
        raise RegdbFormatError(f"{what}: {len(data) - pos} bytes after the subkey list")
    return names


def pack_values(values: Iterable[tuple[str, int, bytes]]) -> bytes:
    items = list(values)
    out = [_U32.pack(len(items))]
    for name, vtype, data in items:
        out.append(_name_bytes(name) + b"\0" + _U32.pack(vtype) + _U32.pack(len(data)) + data)
    return b"".join(out)


def unpack_values(data: bytes, what: str) -> list[tuple[str, int, bytes]]:
    """A value list (``regdb_unpack_values``), every length checked."""
    if len(data) < 4:
        raise RegdbFormatError(f"{what}: value list of {len(data)} bytes")
    (count,) = _U32.unpack_from(data)
    out: list[tuple[str, int, bytes]] = []
    pos = 4
    for _ in range(count):
        end = data.find(b"\0", pos)
        if end < 0 or end - pos > FSTRING_MAX or end + 9 > len(data):
            raise RegdbFormatError(f"{what}: corrupt value list ({count} values expected)")
        name = _decode_name(data[pos:end], what)
        vtype, size = struct.unpack_from("<II", data, end + 1)
        pos = end + 9
        if pos + size > len(data):
            raise RegdbFormatError(f"{what}: value {name!r} runs past the record")
        out.append((name, vtype, bytes(data[pos : pos + size])))
        pos += size
    if pos != len(data):
        raise RegdbFormatError(f"{what}: {len(data) - pos} bytes after the value list")
    return out


def reg_sz(text: str) -> bytes:
    """REG_SZ data as ``push_reg_sz`` makes it: UTF-16LE with a terminating NUL."""
    if "\0" in text:
        raise RegdbError(f"a registry string cannot hold NUL: {text!r}")
    try:
        return text.encode("utf-16-le") + b"\0\0"
    except UnicodeEncodeError as exc:
        raise RegdbError(f"not a valid string for the registry: {text!r}") from exc


def reg_multi_sz(items: Iterable[str]) -> bytes:
    return b"".join(reg_sz(s) for s in items) + b"\0\0"


def _utf16_strings(data: bytes, what: str) -> list[str]:
    if len(data) % 2:
        raise RegdbFormatError(f"{what}: UTF-16 data of odd length {len(data)}")
    try:
        return data.decode("utf-16-le").split("\0")
    except UnicodeDecodeError as exc:
        raise RegdbFormatError(f"{what}: invalid UTF-16: {exc}") from exc


def format_value(vtype: int, data: bytes, what: str) -> str:
    """A value as a string, as ``smbconf_format_registry_value`` prints it."""
    if vtype in (REG_SZ, REG_EXPAND_SZ):
        return _utf16_strings(data, what)[0]
    if vtype == REG_DWORD and len(data) >= 4:
        return str(struct.unpack_from("<i", data)[0])
    if vtype == REG_MULTI_SZ:
        return "".join(f'"{s}" ' for s in _multi_sz_items(data, what))
    if vtype == REG_BINARY:
        return f"binary ({len(data)} bytes)"
    return "<unprintable>"


def _multi_sz_items(data: bytes, what: str) -> list[str]:
    items: list[str] = []
    for s in _utf16_strings(data, what):
        if not s:
            break
        items.append(s)
    return items


def takes_name(text: str) -> bool:
    """Whether this code reads and writes ``text`` as a registry name (ASCII only:
    others raise RegdbUnsupported, and python-samba's worker takes them)."""
    return text.isascii()


def _check_ascii(text: str) -> None:
    if not takes_name(text):
        raise RegdbUnsupported(f"non-ASCII registry name {text!r}")


def _name_bytes(name: str) -> bytes:
    _check_ascii(name)
    raw = name.encode()
    if not raw or b"\0" in raw or b"\\" in raw or len(raw) > FSTRING_MAX:
        raise RegdbError(f"invalid registry name {name!r}")
    return raw


def _decode_name(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegdbFormatError(f"{what}: a name is not UTF-8: {raw!r}") from exc


def _same(a: str, b: str) -> bool:
    """Samba's ``strequal`` for the names we handle (ASCII, case-insensitive)."""
    return a.isascii() and b.isascii() and a.lower() == b.lower()


def _wkey(name: str) -> str:
    """A parameter name as Samba's ``strwicmp`` compares it (case and blanks ignored)."""
    return "".join(name.lower().split())


def share_values(params: Params) -> list[tuple[str, int, bytes]]:
    """A share's registry values as ``smbconf_create_set_share`` stores them: each
    parameter REG_SZ (a later one of the same name replaces an earlier one and
    moves to the end), ``include`` lines last as one REG_MULTI_SZ ``includes``."""
    values: list[tuple[str, int, bytes]] = []
    includes: list[str] = []
    for name, value in params:
        key = _wkey(name)
        if key == "include":
            includes.append(value)
            continue
        if key in FORBIDDEN:
            raise RegdbError(f"parameter {name!r} is not allowed in a registry share")
        _name_bytes(name)
        values = [v for v in values if not _same(v[0], name)]
        values.append((name, REG_SZ, reg_sz(value)))
    if includes:
        values.append((INCLUDES_VALUE, REG_MULTI_SZ, reg_multi_sz(includes)))
    return values


def share_params(values: list[tuple[str, int, bytes]], what: str) -> Params:
    """Parameters of a share as ``smbconf_reg_get_share`` returns them."""
    params: Params = []
    includes: list[str] = []
    for name, vtype, data in values:
        if _same(name, INCLUDES_VALUE):
            if vtype == REG_MULTI_SZ:
                includes = _multi_sz_items(data, what)
            continue
        if _wkey(name) in FORBIDDEN:
            continue
        params.append((name, format_value(vtype, data, f"{what} value {name!r}")))
    return params + [("include", s) for s in includes]


# ---------------------------------------------------------------- the file


class RegistryDb:
    """smbconf's registry shares in one ``registry.tdb`` (see the module doc)."""

    def __init__(self, path: str, tdb_module: Any = None) -> None:
        self.path = path
        if tdb_module is None:
            import tdb as tdb_module  # type: ignore[import-not-found,no-redef]
        self._tdb = tdb_module
        self.transactions = 0  # registry transactions made (benchmarks, tests)

    # ------------------------------------------------------------ reading

    def share_names(self) -> list[str]:
        """Registry shares as stored (``global`` left out); none while there is no file."""
        try:
            db = self._open()
        except RegdbMissing:
            return []
        try:
            names = self._consistent(db, lambda: self._subkeys(db, SMBCONF_KEY))
        finally:
            self._close(db)
        return [n for n in names if n.lower() != "global"]

    def get_share(self, name: str) -> tuple[str, Params] | None:
        """``(name as stored, parameters)`` of a registry share, or None."""
        _check_ascii(name)
        try:
            db = self._open()
        except RegdbMissing:
            return None
        try:
            found: tuple[str, Params] | None = self._consistent(
                db, lambda: self._read_share(db, name)
            )
        finally:
            self._close(db)
        return found

    def check(self) -> None:
        """Raise RegdbFormatError unless the file is one this module can write."""
        db = self._open()
        try:
            self._check_version(db)
            self._subkeys(db, SMBCONF_KEY)
        finally:
            self._close(db)

    # ------------------------------------------------------------ writing

    def write_shares(self, shares: list[tuple[str, Params]]) -> None:
        """Replace (or create) each share with its parameters: one tdb transaction."""
        prepared = [(name, share_values(params)) for name, params in shares]
        for name, _ in prepared:
            _name_bytes(name)
        self._transaction(lambda db: self._write(db, prepared))

    def delete_shares(self, names: list[str]) -> None:
        """Delete each share that exists: one tdb transaction (none if none exists)."""
        for name in names:
            _check_ascii(name)
        if not os.path.exists(self.path):
            return  # no registry yet: no share to delete
        self._transaction(lambda db: self._delete(db, names))

    def seqnum(self) -> int:
        db = self._open()
        try:
            return int(db.seqnum)
        finally:
            self._close(db)

    # ------------------------------------------------------------ internals

    def _open(self) -> Any:
        """A fresh handle, holding _ONE_HANDLE until :meth:`_close`."""
        t = self._tdb
        _ONE_HANDLE.acquire()
        try:
            return t.Tdb(self.path, 0, t.SEQNUM, os.O_RDWR, 0o600)
        except (RuntimeError, OSError) as exc:
            _ONE_HANDLE.release()
            if isinstance(exc, OSError) and exc.errno == errno.EBUSY:
                raise RegdbBusy(f"{self.path} is already open in this process") from exc
            if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
                raise RegdbMissing(f"{self.path} does not exist yet (smbd creates it when "
                                   "it first starts)") from exc
            raise RegdbError(f"cannot open {self.path}: {exc}") from exc

    @staticmethod
    def _close(db: Any) -> None:
        try:
            db.close()
        finally:
            _ONE_HANDLE.release()

    def _consistent(self, db: Any, read: Any) -> Any:
        """Read until the sequence number is the same before and after (as Samba's
        readers do): a writer in another process may commit in between."""
        for _ in range(20):
            before = db.seqnum
            result = read()
            if db.seqnum == before:
                return result
        raise RegdbError(f"{self.path} kept changing while it was read")

    def _check_version(self, db: Any) -> None:
        raw = db.get(VERSION_KEY)
        if raw is None or len(raw) != 4:
            raise RegdbFormatError(f"{self.path}: no registry version record")
        (version,) = struct.unpack("<i", raw)
        if version != REGDB_VERSION:
            raise RegdbFormatError(
                f"{self.path}: registry version {version}, this code knows {REGDB_VERSION}"
            )

    def _subkeys(self, db: Any, path: str) -> list[str]:
        raw = db.get(key_path(path))
        if raw is None:
            raise RegdbFormatError(f"{self.path}: no key {path}")
        return unpack_subkeys(bytes(raw), f"{self.path} {path}")

    def _read_share(self, db: Any, name: str) -> tuple[str, Params] | None:
        stored = next((n for n in self._subkeys(db, SMBCONF_KEY) if _same(n, name)), None)
        if stored is None:
            return None
        path = f"{SMBCONF_KEY}\\{stored}"
        raw_keys = db.get(key_path(path))
        if raw_keys is None:
            return None  # listed but not there: Samba's reg_openkey says "not found" too
        unpack_subkeys(bytes(raw_keys), f"{self.path} {path}")
        raw = db.get(key_path(VALUE_PREFIX, path))
        values = [] if raw is None else unpack_values(bytes(raw), f"{self.path} {path}")
        return stored, share_params(values, f"{self.path} {path}")

    def _transaction(self, action: Any) -> None:
        db = self._open()
        try:
            db.transaction_start()
            try:
                self._check_version(db)  # inside, as regdb_trans_do_action does
                changed = action(db)
                if changed:
                    db.transaction_commit()
                    self.transactions += 1
                else:
                    db.transaction_cancel()
            except BaseException:
                db.transaction_cancel()
                raise
        except (RuntimeError, OSError) as exc:
            if isinstance(exc, RegdbError):
                raise
            raise RegdbError(f"registry transaction on {self.path} failed: {exc}") from exc
        finally:
            self._close(db)

    def _write(self, db: Any, shares: list[tuple[str, list[tuple[str, int, bytes]]]]) -> bool:
        names = self._subkeys(db, SMBCONF_KEY)
        for name, values in shares:
            names = self._remove(db, names, name)
            names.append(name)
            path = f"{SMBCONF_KEY}\\{name}"
            db.store(key_path(path), pack_subkeys([]), self._tdb.REPLACE)
            if values:
                db.store(key_path(VALUE_PREFIX, path), pack_values(values), self._tdb.REPLACE)
        db.store(key_path(SMBCONF_KEY), pack_subkeys(names), self._tdb.REPLACE)
        return True

    def _delete(self, db: Any, targets: list[str]) -> bool:
        names = self._subkeys(db, SMBCONF_KEY)
        kept = names
        for name in targets:
            kept = self._remove(db, kept, name)
        if kept == names:
            return False
        db.store(key_path(SMBCONF_KEY), pack_subkeys(kept), self._tdb.REPLACE)
        return True

    def _remove(self, db: Any, names: list[str], name: str) -> list[str]:
        """``names`` without ``name``, its records purged (``regdb_delete_key_lists``,
        below it first, as ``reg_deletekey_recursive``)."""
        stored = [n for n in names if _same(n, name)]
        for n in stored:
            self._purge(db, f"{SMBCONF_KEY}\\{n}", 0)
        return [n for n in names if not _same(n, name)]

    def _purge(self, db: Any, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise RegdbFormatError(f"{self.path}: keys nested deeper than {MAX_DEPTH} below {path}")
        raw = db.get(key_path(path))
        if raw is not None:
            for child in unpack_subkeys(bytes(raw), f"{self.path} {path}"):
                self._purge(db, f"{path}\\{child}", depth + 1)
        for key in (key_path(VALUE_PREFIX, path), key_path(SECDESC_PREFIX, path), key_path(path)):
            if db.get(key) is not None:
                db.delete(key)
