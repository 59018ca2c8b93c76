"""The backup repository: layout, config, keys, locks, and reading/writing blobs.

Why this shape: packs are written and fsynced before the index transaction
that makes their blobs visible, and a recovery point is one more row in a
later transaction; so at any instant the index only names data that is on
disk, and a killed run leaves at most unreferenced packs (reclaimed by
prune) and tmp files (removed by the next writer).  Several backups may
append at once (each its own packs, SQLite serialising the commits); prune
needs the repository to itself.

Layout::

    config.json        format name and version, repository id, chunker, compression,
                       pack size, encryption (checksummed; format 1: plain JSON)
    keys/<id>.json     the master secret wrapped under one passphrase each (encrypted only)
    index.sqlite       blobs, packs, recovery points, files cache (WAL)
    lock               flock: shared by readers and backups, exclusive for prune
    locks/<id>.lock    one per running backup or prune (flock held), its pid/host/command
    locks/<id>.reader  one per reader that names its command (mount, restore, ...): the
                       same note, so a refused prune can say who holds ``lock``
    locks/source-<h>   flock: one backup per source label at a time
    packs/XX/<id>.pack sealed packs
    tmp/<writer>-<id>.pack  packs being written, named after their writer
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import blake3

from remotevss.backup import keys as keyfiles
from remotevss.backup.chunker import ChunkerParams, compress, decompress
from remotevss.backup.crypto import CIPHER_NAME, Codec, Keys, LegacyCodec, SealError, new_master
from remotevss.backup.index import Index, Location, PointRow
from remotevss.backup.packs import DATA, BlobEntry, PackWriter, fsync_dir, pack_path
from remotevss.backup.packs import blob_aad as blob_aad  # part of this module's API

FORMAT = "remotevss-backup"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_PACK_SIZE = 64 << 20
MAX_PACK_SIZE = 1 << 30  # prune rewrites and verify re-reads packs whole: keep them sane
PASSWORD_ENV = "REMOTEVSS_BACKUP_PASSWORD"  # noqa: S105 - the variable's name

Mode = Literal["read", "write", "exclusive"]
Passphrase = str | Callable[[], str] | None


class RepoError(Exception):
    """The repository is missing, of another format, or damaged."""


class RepoLocked(RepoError):
    """Another process holds the lock this operation needs."""


class WrongPassphrase(RepoError):
    """No key of the repository opens with the passphrase given."""


class RepoDamaged(RepoError):
    """One of the repository's own files (config.json, a key file, index.sqlite) is
    not what was written: ``check`` and ``verify`` report it as damage, not failure."""


class BlobError(RepoError):
    """A blob is missing from the index, unreadable, or fails its hash."""

    def __init__(self, blob_id: bytes, message: str) -> None:
        super().__init__(f"blob {blob_id.hex()[:16]}: {message}")
        self.blob_id = blob_id


@dataclass(frozen=True)
class RepoConfig:
    repo_id: str
    chunker: ChunkerParams
    compression: str
    pack_size: int
    version: int = FORMAT_VERSION
    encryption: str = CIPHER_NAME

    def to_json(self) -> dict[str, Any]:
        out = {"format": FORMAT, "version": self.version, "id": self.repo_id,
               "chunker": self.chunker.to_json(), "compression": self.compression,
               "pack_size": self.pack_size}
        if self.version >= 2:
            out["encryption"] = self.encryption
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepoConfig:
        if data.get("format") != FORMAT:
            raise RepoError("not a remotevss backup repository")
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise RepoError(f"repository format version {version} is not supported "
                            f"(this program reads versions 1 and {FORMAT_VERSION})")
        encryption = str(data.get("encryption", "none"))
        if encryption not in ("none", CIPHER_NAME):
            raise RepoError(f"unknown repository encryption {encryption!r}")
        return cls(str(data["id"]), ChunkerParams.from_json(data["chunker"]),
                   str(data["compression"]), int(data["pack_size"]), int(version), encryption)

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"


def _write_atomic(path: Path, data: bytes) -> None:
    keyfiles.write_atomic(path, data)


def resolve_passphrase(passphrase: Passphrase) -> str | None:
    """An explicit passphrase, else ``$REMOTEVSS_BACKUP_PASSWORD``."""
    if callable(passphrase):
        return passphrase()
    if passphrase is not None:
        return passphrase
    return os.environ.get(PASSWORD_ENV) or None


def init_repo(path: Path, chunker: ChunkerParams | None = None,
              pack_size: int = DEFAULT_PACK_SIZE, passphrase: Passphrase = None,
              encrypted: bool = True, kdf: dict[str, Any] | None = None) -> RepoConfig:
    """Create an empty repository (encrypted unless ``encrypted=False``); refuses a
    non-empty directory, and an encrypted one without a passphrase."""
    path = Path(path)
    if not 0 < pack_size <= MAX_PACK_SIZE:
        raise ValueError(f"pack size {pack_size} is not between 1 byte and {MAX_PACK_SIZE}")
    secret = resolve_passphrase(passphrase) if encrypted else None
    if encrypted and not secret:
        raise RepoError(f"an encrypted repository needs a passphrase (--password-file, "
                        f"${PASSWORD_ENV} or the prompt); --unencrypted makes a plain one")
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise RepoError(f"{path} is not empty")
    for sub in ("packs", "tmp", "locks", "keys"):
        (path / sub).mkdir()
    (path / "lock").touch()
    config = RepoConfig(uuid.uuid4().hex, chunker or ChunkerParams(), "zstd-3", pack_size,
                        FORMAT_VERSION, CIPHER_NAME if encrypted else "none")
    raw = keyfiles.dump_checked(config.to_json())
    Index(path / "index.sqlite", codec=Codec()).close()
    if secret:
        keyfiles.add_key(path, Keys(new_master()), secret, config.repo_id,
                         blake3.blake3(raw).hexdigest(), kdf)
    # config.json last: its presence means "initialized".
    _write_atomic(path / "config.json", raw)
    return config


def read_config(path: Path) -> tuple[RepoConfig, bytes]:
    cfg = path / "config.json"
    try:
        raw = cfg.read_bytes()
    except FileNotFoundError:
        raise RepoError(f"{path}: no repository here (run 'backup init')") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise RepoDamaged(f"{path}: config.json is damaged (not valid JSON)") from None
    if not isinstance(data, dict):
        raise RepoDamaged(f"{path}: config.json is damaged (not an object)")
    version = data.get("version")
    if "checksum" in data or version == FORMAT_VERSION:
        try:  # format 2 carries a checksum: any changed byte is named as damage
            data = keyfiles.load_checked(raw, "config.json")
        except keyfiles.DamagedFile as exc:
            if data.get("format") == FORMAT and version not in READABLE_VERSIONS:
                raise RepoError(f"{path}: repository format version {version} is not "
                                f"supported (this program reads versions 1 and "
                                f"{FORMAT_VERSION}), or {exc}") from None
            raise RepoDamaged(f"{path}: {exc}") from None
    return RepoConfig.from_json(data), raw


def open_codec(path: Path, config: RepoConfig, raw_config: bytes, passphrase: Passphrase
               ) -> tuple[Codec, str | None]:
    """The codec of an existing repository (unlocking its keys); nothing is written."""
    if config.version == 1:
        return LegacyCodec(), None
    if not config.encrypted:
        if keyfiles.key_files(path):
            raise RepoDamaged(f"{path}: config.json says the repository is not encrypted, "
                              f"but {keyfiles.KEYS_DIR}/ holds keys: config.json was altered")
        return Codec(), None
    secret = resolve_passphrase(passphrase)
    if not secret:
        raise RepoError(f"{path}: the repository is encrypted: give its passphrase "
                        f"(--password-file, ${PASSWORD_ENV}, or the prompt)")
    try:
        got = keyfiles.unlock(path, config.repo_id, secret)
    except keyfiles.WrongPassphrase as exc:
        raise WrongPassphrase(f"{path}: {exc}") from None
    except keyfiles.DamagedFile as exc:
        raise RepoDamaged(f"{path}: {exc}") from None
    if got.config_digest != blake3.blake3(raw_config).hexdigest():
        raise RepoDamaged(f"{path}: config.json is not the one the repository was created "
                          "with (altered)")
    return got.keys, got.key_id


class Repository:
    """An open repository holding the locks of ``mode``; use as a context manager.

    read: shared ``lock`` (list, restore, check, verify; concurrent with backups), and
    with a ``command`` a note in ``locks/`` naming it (only to name it to a refused prune);
    write: shared ``lock`` + a note in ``locks/`` (backup: appends only; several at once);
    exclusive: ``lock`` exclusive (prune: deletes packs; no backup can be running).
    ``passphrase``: a string, a callable asked only if the repository is
    encrypted, or None for ``$REMOTEVSS_BACKUP_PASSWORD``.  ``wait``: seconds to
    wait for a lock before giving up (RepoLocked).
    """

    def __init__(self, path: Path, mode: Mode = "read", command: str = "",
                 passphrase: Passphrase = None, wait: float = 0.0,
                 codec: Codec | None = None) -> None:
        self.path = Path(path)
        self.mode = mode
        self.command = command
        self.config, raw_config = read_config(self.path)
        # Keys first: a wrong passphrase must leave no trace (no lock note, no tmp cleanup).
        # ``codec``: already unlocked by this process's parent (a restore worker, which
        # reads only): the parent checked the keys and config.json.
        if codec is not None:
            if mode != "read":
                raise ValueError("a codec from elsewhere only opens a repository for reading")
            self.codec, self.key_id = codec, None
        else:
            self.codec, self.key_id = open_codec(self.path, self.config, raw_config,
                                                 passphrase)
        seed = self.codec.chunker_seed()
        self.chunker = (dataclasses.replace(self.config.chunker, seed=seed) if seed is not None
                        else self.config.chunker)
        self._fds: list[int] = []
        self._sources_held: set[str] = set()  # source labels this object has locked
        self._note: Path | None = None
        self._reader_fd: int | None = None
        self.writer_id = uuid.uuid4().hex[:16]
        self.interrupted: dict[str, Any] | None = None
        try:
            self._lock(self.path / "lock",
                       fcntl.LOCK_EX if mode == "exclusive" else fcntl.LOCK_SH, wait)
            if mode != "read":
                self._register(command)
            elif command:
                self._register_reader(command)
            # Readers open the index read-only: they never wait for a writer's lock.
            try:
                self.index = Index(self.path / "index.sqlite", readonly=mode == "read",
                                   codec=self.codec)
            except ValueError as exc:  # its schema row does not read: damage
                raise RepoDamaged(f"{self.path}: {exc}") from None
        except BaseException:
            self._unlock()
            raise
        self._packs: OrderedDict[str, int] = OrderedDict()
        self._pack_lock = threading.Lock()
        self._locate_lock = threading.Lock()  # read_blob from several threads (restore)
        self._fd_users: dict[int, int] = {}  # pack descriptors being read from
        self._fd_evicted: set[int] = set()  # evicted while read: closed after the read

    # -- locking --------------------------------------------------------------
    def _lock(self, path: Path, op: int, wait: float = 0.0, what: str = "",
              holder: dict[str, Any] | None = None) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            # A shared flock needs no write access: a reader of a repository on a
            # read-only file system (a write-protected disk) takes it read-only.
            if exc.errno != errno.EROFS or op != fcntl.LOCK_SH or self.mode != "read":
                raise
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                os.close(fd)
                holders = ([holder] if holder else
                           [h for h in self.holders() if h.get("id") != self.writer_id])
                who = "; ".join(f"{h.get('command') or 'a process'} (pid {h.get('pid')} on "
                                f"{h.get('host')} since {h.get('started')})" for h in holders)
                raise RepoLocked(f"{self.path}: {what or 'repository'} is locked"
                                 + (f" by {who}" if who else "")
                                 + (f" (waited {wait:g} s)" if wait else "")) from None
        self._fds.append(fd)
        return fd

    def holders(self) -> list[dict[str, Any]]:
        """The notes of running backups, prunes and named readers (a note whose flock is
        free is a dead process's, not yet cleaned up: left out)."""
        out = []
        locks = self.path / "locks"
        for note in sorted([*locks.glob("*.lock"), *locks.glob("*.reader")]):
            try:
                fd = os.open(note, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    continue  # nobody holds it: dead
                except BlockingIOError:
                    pass
                with contextlib.suppress(ValueError):
                    data = json.loads(os.pread(fd, 4096, 0) or b"{}")
                    if isinstance(data, dict) and data:
                        out.append(data)
            finally:
                os.close(fd)
        return out

    def _register(self, command: str) -> None:
        """Leave a note in ``locks/`` (flock held while we run) and clean up after dead
        writers.

        Why a note per writer: flock vanishes with the process, so a killed run
        leaves no lock; what it leaves is its note, which tells the next writer
        which ``tmp/`` files are garbage and lets us say which run was interrupted.
        """
        locks = self.path / "locks"
        locks.mkdir(exist_ok=True)
        tmp_note = locks / f"{self.writer_id}.new"
        fd = os.open(tmp_note, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fds.append(fd)
        note = {"id": self.writer_id, "pid": os.getpid(), "host": socket.gethostname(),
                "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.pwrite(fd, json.dumps(note).encode(), 0)
        os.fsync(fd)
        final = locks / f"{self.writer_id}.lock"
        os.rename(tmp_note, final)  # visible only once locked: scanners never take it
        self._note = final
        fsync_dir(locks)
        self._clean_dead()

    def _register_reader(self, command: str) -> None:
        """Leave a note naming this reader in ``locks/`` while it runs, so that a prune
        refused for the shared ``lock`` can say who holds it.

        Why it cannot disturb anyone: the note is only information (no lock depends
        on it; ``lock`` is already held), its name is this reader's own and matches
        none of the writers' patterns (``*.lock``, ``*.new``, ``source-*``), and any
        failure to write it is ignored.  It is created under a temporary name, locked,
        then renamed, as a writer's note is, so a scanner never finds it unlocked
        while its reader lives; one whose flock is free (a killed reader) is removed
        by the next reader that registers."""
        locks = self.path / "locks"
        tmp_note = locks / f"{self.writer_id}.reader-new"
        fd = -1
        try:
            fd = os.open(tmp_note, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            note = {"id": self.writer_id, "pid": os.getpid(), "host": socket.gethostname(),
                    "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.pwrite(fd, json.dumps(note).encode(), 0)
            os.rename(tmp_note, locks / f"{self.writer_id}.reader")
        except OSError:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                tmp_note.unlink()
            return
        self._reader_fd = fd
        self._clean_dead_readers()

    def _clean_dead_readers(self) -> None:
        """Remove the notes of readers that were killed (their flock is free)."""
        locks = self.path / "locks"
        for note in [*locks.glob("*.reader"), *locks.glob("*.reader-new")]:
            if note.name.startswith(self.writer_id + "."):
                continue
            _unlink_if_unlocked(note, os.O_RDONLY)

    def _clean_dead(self) -> None:
        """Remove the notes and tmp packs of writers that died (their note's flock is free).

        Order matters: list ``tmp/`` before ``locks/``, so every tmp file we look
        at was created after its writer's note became visible."""
        leftovers = list((self.path / "tmp").iterdir())
        live = {self.writer_id}
        for half in (self.path / "locks").glob("*.new"):  # died while registering
            _unlink_if_unlocked(half, os.O_RDWR)
        for note in (self.path / "locks").glob("*.lock"):
            writer = note.name.removesuffix(".lock")
            if writer == self.writer_id:
                continue
            try:
                fd = os.open(note, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    live.add(writer)
                    continue
                with contextlib.suppress(ValueError):
                    data = json.loads(os.pread(fd, 4096, 0) or b"{}")
                    if isinstance(data, dict) and data and self.interrupted is None:
                        self.interrupted = data
                for leftover in leftovers:
                    if leftover.name.startswith(writer + "-"):
                        leftover.unlink(missing_ok=True)
                note.unlink(missing_ok=True)
            finally:
                os.close(fd)
        # A format-1 writer's note (it used one write.lock), and tmp files of writers
        # that are gone: no prefix (format 1) or a prefix whose note is not live.
        legacy = self.path / "write.lock"
        if legacy.exists():
            with contextlib.suppress(OSError, ValueError):
                text = legacy.read_text()
                if text.strip() and self.interrupted is None:
                    self.interrupted = json.loads(text)
                legacy.write_text("")
        for leftover in leftovers:
            owner, sep, _rest = leftover.name.partition("-")
            if not sep or owner not in live:
                leftover.unlink(missing_ok=True)

    def lock_sources(self, labels: Sequence[str]) -> None:
        """One backup per source label at a time (their files-cache rows are shared).
        Labels this repository object holds already are skipped: a run of shares
        takes its shares' labels before it makes a shadow copy set (a second run
        of the same share is then refused before it costs a snapshot)."""
        labels = [label for label in labels if label not in self._sources_held]
        note = {"id": self.writer_id, "pid": os.getpid(), "host": socket.gethostname(),
                "command": self.command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for label in labels:
            path = self.path / "locks" / f"source-{blake3.blake3(label.encode()).hexdigest()[:16]}"
            holder: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                holder = json.loads(path.read_bytes() or b"{}")
            fd = self._lock(path, fcntl.LOCK_EX, what=f"source {label!r}",
                            holder=holder if isinstance(holder, dict) else None)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(note).encode(), 0)  # names us to a second run
            self._sources_held.add(label)

    def _unlock(self) -> None:
        if self._note is not None:
            self._note.unlink(missing_ok=True)  # a clean release leaves no note
            self._note = None
        if self._reader_fd is not None:
            with contextlib.suppress(OSError):
                (self.path / "locks" / f"{self.writer_id}.reader").unlink()
            os.close(self._reader_fd)
            self._reader_fd = None
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds.clear()
        self._sources_held.clear()

    def close(self) -> None:
        with self._pack_lock:
            for fd in self._packs.values():
                os.close(fd)
            self._packs.clear()
        if hasattr(self, "index"):
            self.index.close()
        self._unlock()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------
    def _pack_fd(self, name: str) -> int:
        """An open descriptor of the pack, counted as in use until ``_pack_done``:
        readers in several threads (restore) must not have it closed under them
        when the cache of 32 evicts it (a closed number may be reused at once)."""
        with self._pack_lock:
            fd = self._packs.get(name)
            if fd is not None:
                self._packs.move_to_end(name)
            else:
                fd = os.open(pack_path(self.path, name), os.O_RDONLY | os.O_CLOEXEC)
                self._packs[name] = fd
                if len(self._packs) > 32:
                    old = self._packs.popitem(last=False)[1]
                    if self._fd_users.get(old):
                        self._fd_evicted.add(old)  # closed by its last reader
                    else:
                        os.close(old)
            self._fd_users[fd] = self._fd_users.get(fd, 0) + 1
            return fd

    def _pack_done(self, fd: int) -> None:
        with self._pack_lock:
            left = self._fd_users[fd] - 1
            if left:
                self._fd_users[fd] = left
                return
            del self._fd_users[fd]
            if fd in self._fd_evicted:
                self._fd_evicted.discard(fd)
                os.close(fd)

    def read_stored(self, pack: str, entry: BlobEntry) -> bytes:
        """A blob's stored bytes; safe from several threads."""
        try:
            fd = self._pack_fd(pack)
        except OSError as exc:
            raise BlobError(entry.id, f"pack {pack}: {exc.strerror}") from exc
        try:
            data = os.pread(fd, entry.stored_len, entry.offset)
        except OSError as exc:
            raise BlobError(entry.id, f"pack {pack}: {exc.strerror}") from exc
        finally:
            self._pack_done(fd)
        if len(data) != entry.stored_len:
            raise BlobError(entry.id, f"pack {pack} is truncated")
        return data

    def blob_id(self, data: bytes | memoryview) -> bytes:
        """The repository's content address (keyed blake3 when encrypted)."""
        return self.codec.blob_id(data)

    def encode(self, blob_id: bytes, btype: int, raw: bytes | memoryview) -> tuple[int, bytes]:
        """(compression, stored bytes) of a new blob: compressed, then sealed."""
        comp, data = compress(raw)
        return comp, self.codec.seal(data, blob_aad(blob_id, btype))

    def decode(self, entry: BlobEntry, stored: bytes) -> bytes:
        """Open, decompress and check the content address: the end-to-end integrity check."""
        try:
            data = self.codec.open(stored, blob_aad(entry.id, entry.type))
        except SealError as exc:
            raise BlobError(entry.id, str(exc)) from None
        try:
            raw = decompress(entry.compression, data, entry.raw_len)
        except Exception as exc:  # zstd raises its own error type on corrupt frames
            raise BlobError(entry.id, f"cannot decompress: {exc}") from exc
        if len(raw) != entry.raw_len or self.codec.blob_id(raw) != entry.id:
            raise BlobError(entry.id, "content does not match its id")
        return raw

    def read_blob(self, blob_id: bytes, loc: Location | None = None) -> bytes:
        """A blob's content, checked; safe from several threads (the index query,
        on the one SQLite connection, under a lock; reading and opening outside it).
        ``loc``: its place, if the caller looked it up already (``locate_many``)."""
        if loc is None:
            with self._locate_lock:
                loc = self.index.locate(blob_id)
            if loc is None:
                raise BlobError(blob_id, "not in the index")
        return self.decode(loc.entry, self.read_stored(loc.pack, loc.entry))

    def locate_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, Location]:
        """The places of many blobs in one query per 500 (thread-safe, as ``read_blob``)."""
        with self._locate_lock:
            return self.index.locate_many(blob_ids)

    def load_json(self, blob_id: bytes) -> Any:
        return json.loads(self.read_blob(blob_id))

    def points(self) -> list[PointRow]:
        return self.index.points()

    def find_point(self, spec: str) -> PointRow:
        """A point by number, uuid prefix, or ``latest``."""
        points = self.points()
        if not points:
            raise RepoError("the repository has no recovery points")
        if spec == "latest":
            return points[-1]
        if spec.isdigit():
            for p in points:
                if p.id == int(spec):
                    return p
        matches = [p for p in points if p.uuid.startswith(spec.lower())] if len(spec) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        raise RepoError(f"no single recovery point matches {spec!r}")

    # -- writing --------------------------------------------------------------------
    def read_tree(self, tree_id: bytes) -> list[dict[str, Any]]:
        """A directory's entries (tree.decode_tree of the blob)."""
        from remotevss.backup.tree import decode_tree

        return decode_tree(self.read_blob(tree_id))

    def writer(self) -> BlobWriter:
        if self.mode == "read":
            raise RepoError("repository opened read-only")
        return BlobWriter(self)


# Dedup questions a run asks SQLite before it builds its Bloom filter.
BLOOM_AFTER = 2048


class Bloom:
    """A Bloom filter over blob ids (16 bits per id, 4 probes: ~0.2 % false positives).

    Why: a dedup test per chunk must not cost an SQLite query (27 µs measured)
    when the answer is almost always "new"; only probable hits go to SQLite,
    and memory stays ~2 bytes per blob instead of a set's ~70.
    """

    def __init__(self, expected: int) -> None:
        bits = 1 << max(24, (16 * expected).bit_length())
        self.mask = bits - 1
        self.bits = bytearray(bits >> 3)

    def add(self, blob_id: bytes, _from_bytes: Any = int.from_bytes) -> None:
        v = _from_bytes(blob_id[:16], "little")  # ids are uniform: slice them
        m, b = self.mask, self.bits
        for p in (v & m, (v >> 32) & m, (v >> 64) & m, (v >> 96) & m):
            b[p >> 3] |= 1 << (p & 7)

    def __contains__(self, blob_id: bytes, _from_bytes: Any = int.from_bytes) -> bool:
        # Unrolled, no generator: this runs for every chunk, in three threads
        # that share the GIL with the reading thread.
        v = _from_bytes(blob_id[:16], "little")
        m, b = self.mask, self.bits
        p = v & m
        if not b[p >> 3] & (1 << (p & 7)):
            return False
        p = (v >> 32) & m
        if not b[p >> 3] & (1 << (p & 7)):
            return False
        p = (v >> 64) & m
        if not b[p >> 3] & (1 << (p & 7)):
            return False
        p = (v >> 96) & m
        return bool(b[p >> 3] & (1 << (p & 7)))


class BlobWriter:
    """Appends blobs to packs; each sealed pack is committed to the index at once.

    Why commit per pack: chunks of an interrupted run stay indexed, so the next
    run does not store them again; no recovery point references them until
    the final commit, and prune reclaims them if none ever does.
    """

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.index = repo.index
        self.pack: PackWriter | None = None
        self.pending: dict[bytes, BlobEntry] = {}
        self._tls = threading.local()
        self._bloom: Bloom | None = None
        self._filling: Bloom | None = None  # the filter while ``_filter`` fills it
        self._probes = 0  # dedup questions asked while there is no filter
        self.new_blobs = 0
        self.new_raw = 0
        self.new_stored = 0
        self.packs_written = 0
        # A full pack being finished (trailer, fsync, rename, index commit over its
        # own connection) by a thread while the backup goes on: (thread, the pack,
        # [None] once committed or [the error]).
        self._sealing: tuple[threading.Thread, PackWriter, list[Any]] | None = None
        self._seal_index: Index | None = None

    def _filter(self) -> Bloom | None:
        """The Bloom filter, built here once this run has asked ``BLOOM_AFTER``
        dedup questions (only in the thread that adds blobs: see ``has``).

        Why not at the first question: building it reads every blob id of the
        index (~3 us each, 0.2 s for 60,000 blobs), while a run that reads a
        few changed files asks a few hundred questions of ~20 us each."""
        if self._bloom is None and self._probes >= BLOOM_AFTER:
            # Ids that arrive while the filter is filled: ``add`` puts them in
            # ``_filling`` (set before ``pending`` is copied), those pending now
            # are copied before the index is read, and those committed before
            # the copy are in the index the query reads.
            bloom = self._filling = Bloom(self.index.blob_count() + (1 << 20))
            for bid in list(self.pending):
                bloom.add(bid)
            for (bid,) in self.index.con.execute("SELECT id FROM blobs"):
                bloom.add(bid)
            self._bloom, self._filling = bloom, None
        return self._bloom

    def expect_many_questions(self) -> None:
        """Build the filter at the first dedup question (a source's first backup
        reads everything: its questions will be many)."""
        self._probes = max(self._probes, BLOOM_AFTER)

    def known(self, blob_id: bytes) -> bool:
        """Thread-safe dedup test for the worker threads (own read connection each)."""
        bloom = self._bloom
        if bloom is None:
            self._probes += 1  # an estimate: increments from threads may be lost
        elif blob_id not in bloom:
            return False
        if blob_id in self.pending:
            return True
        idx: Index | None = getattr(self._tls, "index", None)
        if idx is None:
            idx = self._tls.index = self.index.reader()
        return idx.has_blob(blob_id)

    def has(self, blob_id: bytes) -> bool:
        """Dedup test of the thread that adds blobs (the only one that builds the
        filter, so no other thread adds to it while it is filled)."""
        self._probes += 1
        bloom = self._filter()
        if bloom is not None and blob_id not in bloom:
            return False
        return blob_id in self.pending or self.index.has_blob(blob_id)

    def add(self, blob_id: bytes, btype: int, compression: int,
            stored: bytes | bytearray | memoryview, raw_len: int) -> None:
        if self.pack is None:
            self.pack = PackWriter(self.repo.path, self.repo.codec, f"{self.repo.writer_id}-")
        self.pending[blob_id] = self.pack.add(blob_id, btype, compression, stored, raw_len)
        bloom = self._bloom or self._filling
        if bloom is not None:
            bloom.add(blob_id)
        self.new_blobs += 1
        self.new_raw += raw_len
        self.new_stored += len(stored)
        if self.pack.size >= self.repo.config.pack_size:
            self._seal_behind()
        elif self._sealing is not None and not self._sealing[0].is_alive():
            self._index_sealed()

    def add_raw(self, blob_id: bytes, btype: int, raw: bytes) -> bool:
        """Store ``raw`` (compressing here) unless present; True when it was new.

        For trees and point records: an index probe, unless the Bloom filter
        (once built) already says the id is new."""
        bloom = self._bloom
        if blob_id in self.pending or (
                (bloom is None or blob_id in bloom) and self.index.has_blob(blob_id)):
            return False
        comp, stored = self.repo.encode(blob_id, btype, raw)
        self.add(blob_id, btype, comp, stored, len(raw))
        return True

    def seal(self) -> tuple[str, int, list[BlobEntry]] | None:
        """Finish the open pack (fsynced, renamed into packs/) without indexing it."""
        if self.pack is None:
            return None
        name, size = self.pack.finish()
        entries = self.pack.entries
        self.pack = None
        self.packs_written += 1
        return name, size, entries

    def flush(self) -> None:
        """Seal the open pack and commit its blobs to the index."""
        self._index_sealed()
        sealed = self.seal()
        if sealed is None:
            return
        self._commit_pack(*sealed)

    def _commit_pack(self, name: str, size: int, entries: list[BlobEntry]) -> None:
        self.index.begin()
        try:
            self.index.add_pack(name, size, entries)
            self.index.commit()
        except BaseException:
            self.index.rollback()
            raise
        for e in entries:  # now found in the index
            self.pending.pop(e.id, None)

    def _seal_behind(self) -> None:
        """Finish the full pack and commit its blobs in a thread.

        Why: a 64 MiB pack's fsync and index commit took 0.1-0.25 s, during which
        the backup fed no worker.  The order stays: the pack is fsynced and renamed
        before its blobs are committed (over a connection of the thread's own; the
        blob rows go in as one statement, which runs without the GIL), and
        ``pending`` answers for them until the thread is joined."""
        self._index_sealed()
        pack, self.pack = self.pack, None
        assert pack is not None
        self.packs_written += 1
        if self._seal_index is None:
            self._seal_index = self.index.writer()
        idx = self._seal_index
        box: list[Any] = []

        def finish() -> None:
            try:
                name, size = pack.finish()
                idx.begin()
                try:
                    idx.add_pack(name, size, pack.entries)
                    idx.commit()
                except BaseException:
                    idx.rollback()
                    raise
                box.append(None)
            except BaseException as exc:  # re-raised in _index_sealed
                box.append(exc)

        thread = threading.Thread(target=finish, name="rvss-pack-seal")
        self._sealing = (thread, pack, box)
        thread.start()

    def _index_sealed(self) -> None:
        """Wait for the pack being finished, if any: its blobs are in the index now."""
        if self._sealing is None:
            return
        thread, pack, box = self._sealing
        thread.join()
        self._sealing = None
        if box[0] is not None:
            raise box[0]
        for e in pack.entries:
            self.pending.pop(e.id, None)

    @contextlib.contextmanager
    def final(self) -> Iterator[Index]:
        """Seal the last pack and yield inside the transaction that indexes it.

        The caller adds the recovery point in the same transaction, so the point
        and the blobs it needs become visible together.
        """
        self._index_sealed()
        sealed = self.seal()
        self.index.begin()
        try:
            if sealed is not None:
                self.index.add_pack(*sealed)
            yield self.index
            self.index.commit()
        except BaseException:
            self.index.rollback()
            raise
        self.pending.clear()

    def close(self) -> None:
        if self._sealing is not None:  # a failed run: the pack stays unindexed, as if killed
            self._sealing[0].join()
            self._sealing = None
        if self._seal_index is not None:
            self._seal_index.close()
            self._seal_index = None
        if self.pack is not None:
            self.pack.abandon()
            self.pack = None


def store_data(writer: BlobWriter, raw: bytes) -> bytes:
    cid = writer.repo.blob_id(raw)
    writer.add_raw(cid, DATA, raw)
    return cid


def _unlink_if_unlocked(note: Path, flags: int) -> None:
    """Remove a lock note whose owner is gone (its flock is free); keep a held one."""
    with contextlib.suppress(OSError):
        fd = os.open(note, flags | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            note.unlink()
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
