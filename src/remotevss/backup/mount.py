"""``remotevss backup mount REPO MOUNTPOINT``: every recovery point as a read-only tree.

Layout of the mount::

    points/<id>/LABEL/...            one directory per recovery point (its number)
    by-time/<YYYY-MM-DDTHHMMSS>      -> ../points/<id>   (UTC; "-<id>" added to a repeated second)
    latest                           -> points/<newest id>

Why FUSE through mfusepy: it is a maintained ctypes binding of Debian's
libfuse3 (``libfuse3-3``), pure Python, so it installs from PyPI without a
compiler or libfuse headers; pyfuse3 needs both (and trio) to build, and
fusepy is unmaintained and speaks only libfuse 2.  mfusepy speaks both and,
left alone, loads ``libfuse.so.2`` first when it is installed too (zfs-fuse
pulls it in): :func:`_mfusepy` points it at libfuse 3.  The high-level
(path-based) API suffices: points never change, so the file system is a
pure function of the repository.

Rules: the repository is opened like ``restore`` does (shared lock only):
``list``, ``restore``, ``check`` and ``backup run`` work meanwhile, and new
points show up (the point list is re-read at most once a second); ``prune``
waits for the unmount (it needs the exclusive lock).  The mount is read-only
(``-o ro``: the kernel answers EROFS to every change).  One thread serves all
requests (``-s``): SQLite and the blob cache need no locks, and a read costs
one chunk decompression at most (the last chunks read are cached).  Ctrl-C,
SIGTERM and SIGHUP end the loop through libfuse's own handlers, which
unmount before the command returns; so does ``umount MOUNTPOINT``.

Entries show what the point kept: type, permission bits, owner ids (unknown
ones, from SMB sources, as the mounting user, with the group and other bits
cleared: their modes are synthesised and the real ACL is in the security
descriptor, so ``--allow-other`` must not open them to every local user),
size, mtime/atime/ctime in ns,
symlink targets, device numbers; hardlinks show their first name's data;
xattrs are readable (``smb.security_descriptor`` as
``user.remotevss.smb.security_descriptor``, Linux has no ``smb.`` namespace).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from remotevss.backup.index import PointRow
from remotevss.backup.repo import Passphrase, RepoError, Repository
from remotevss.backup.snapshot_source import BLOCK, CHAR, DIR, FIFO, FILE, SOCKET, SYMLINK
from remotevss.backup.tree import Entry, decode_tree, xattrs_of

TREE_CACHE = 4096  # decoded trees kept
CHUNK_CACHE = 8  # decompressed chunks kept (up to 4 MiB each)
REFRESH_S = 1.0  # how often the point list is re-read
SMB_XATTR_PREFIX = "user.remotevss."  # how foreign (smb.*) xattrs are shown

_TYPE_BITS = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK,
              FIFO: stat.S_IFIFO, CHAR: stat.S_IFCHR, BLOCK: stat.S_IFBLK,
              SOCKET: stat.S_IFSOCK}


def time_name(time_ns: int) -> str:
    """The by-time name of a point: its UTC time to the second."""
    return time.strftime("%Y-%m-%dT%H%M%S", time.gmtime(time_ns // 1_000_000_000))


def _enoent() -> OSError:
    return OSError(errno.ENOENT, os.strerror(errno.ENOENT))


class PointsView:
    """The mount's file system: path -> attributes, listings, data.  No FUSE here, so
    it can be used (and is tested) on its own; :func:`_ops` adapts it to mfusepy."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._points: dict[str, PointRow] = {}
        self._by_time: dict[str, str] = {}
        self._latest: str | None = None
        self._loaded = -REFRESH_S
        self._trees: OrderedDict[bytes, list[Entry]] = OrderedDict()
        self._names: dict[bytes, dict[str, Entry]] = {}  # the same trees by entry name
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()
        self._open: dict[int, tuple[list[int], list[Any]]] = {}
        self._next_fh = 1
        self.refresh(force=True)

    # -- points ------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._loaded < REFRESH_S:
            return
        self._loaded = now
        points = self.repo.points()
        self._points = {str(p.id): p for p in points}
        by_time: dict[str, str] = {}
        for p in points:
            name = time_name(p.time_ns)
            by_time[name if name not in by_time else f"{name}-{p.id}"] = str(p.id)
        self._by_time = by_time
        self._latest = str(points[-1].id) if points else None

    def _newest_ns(self) -> int:
        return max((p.time_ns for p in self._points.values()), default=0)

    # -- trees ------------------------------------------------------------------------
    def tree(self, tree_id: str | bytes) -> list[Entry]:
        tid = bytes.fromhex(tree_id) if isinstance(tree_id, str) else tree_id
        entries = self._trees.get(tid)
        if entries is None:
            entries = decode_tree(self.repo.read_blob(tid))
            self._trees[tid] = entries
            self._names[tid] = {e["name"]: e for e in entries}
            if len(self._trees) > TREE_CACHE:
                self._names.pop(self._trees.popitem(last=False)[0], None)
        else:
            self._trees.move_to_end(tid)
        return entries

    def _walk(self, point: PointRow, parts: list[str]) -> Entry | None:
        """The entry at ``parts`` inside a point (None: the point's root)."""
        tid = point.root
        found: Entry | None = None
        for i, part in enumerate(parts):
            self.tree(tid)
            found = self._names[tid].get(part)
            if found is None:
                raise _enoent()
            if i < len(parts) - 1:
                if "subtree" not in found:
                    raise _enoent()
                tid = bytes.fromhex(found["subtree"])
        return found

    def resolve(self, path: str) -> tuple[str, PointRow | None, Entry | None]:
        """What ``path`` names: ("root"|"points"|"by-time"|"latest"|"timelink", None, None)
        for the synthetic parts, ("point", point, entry) inside a point (entry None: its root)."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return "root", None, None
        top = parts[0]
        if top in ("points", "by-time", "latest") and len(parts) == 1:
            self.refresh()
            if top == "latest" and self._latest is None:
                raise _enoent()
            return top, None, None
        if top == "by-time" and len(parts) == 2:
            if parts[1] not in self._by_time:
                self.refresh(force=True)
                if parts[1] not in self._by_time:
                    raise _enoent()
            return "timelink", None, None
        if top != "points":
            raise _enoent()
        point = self._points.get(parts[1])
        if point is None:
            self.refresh(force=True)
            point = self._points.get(parts[1])
            if point is None:
                raise _enoent()
        return "point", point, self._walk(point, parts[2:]) if len(parts) > 2 else None

    def _data_entry(self, point: PointRow, e: Entry) -> Entry:
        """A hardlink's data lives with the first name of its inode."""
        if "link" not in e:
            return e
        first = self._walk(point, [p for p in e["link"].split("/") if p])
        if first is None or first.get("type") != FILE:
            raise OSError(errno.EIO, "hardlink target missing from the point")
        return first

    # -- attributes -------------------------------------------------------------------
    def _dir_attrs(self, time_ns: int, nlink: int = 2) -> dict[str, Any]:
        return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": nlink, "st_uid": self.uid,
                "st_gid": self.gid, "st_size": 0, "st_mtime": time_ns, "st_atime": time_ns,
                "st_ctime": time_ns}

    def _link_attrs(self, target: str, time_ns: int) -> dict[str, Any]:
        return {"st_mode": stat.S_IFLNK | 0o777, "st_nlink": 1, "st_uid": self.uid,
                "st_gid": self.gid, "st_size": len(os.fsencode(target)), "st_mtime": time_ns,
                "st_atime": time_ns, "st_ctime": time_ns}

    def getattr(self, path: str) -> dict[str, Any]:
        kind, point, e = self.resolve(path)
        if kind in ("root", "points", "by-time"):
            return self._dir_attrs(self._newest_ns())
        if kind == "latest":
            return self._link_attrs(self.readlink(path), self._newest_ns())
        if kind == "timelink":
            return self._link_attrs(self.readlink(path), self._newest_ns())
        assert point is not None
        if e is None:
            return self._dir_attrs(point.time_ns)
        data = self._data_entry(point, e) if e["type"] == FILE else e
        uid, gid = e.get("uid", -1), e.get("gid", -1)
        size = int(data.get("size", 0))
        if e["type"] == SYMLINK:
            size = len(os.fsencode(e.get("target", "")))
        mode = int(e.get("mode", 0)) & 0o7777
        if uid == -1:  # SMB source: synthesised bits, the real ACL is in the descriptor
            mode &= 0o700
        return {
            "st_mode": _TYPE_BITS.get(e["type"], stat.S_IFREG) | mode,
            "st_nlink": 2 if e["type"] == DIR else 1,
            "st_uid": self.uid if uid == -1 else uid,
            "st_gid": self.gid if gid == -1 else gid,
            "st_size": size,
            "st_blocks": (sum(int(c[1]) for c in data.get("content", ())) + 511) // 512,
            "st_rdev": int(e.get("rdev", 0)),
            "st_mtime": int(e.get("mtime", 0)),
            "st_atime": int(e.get("atime", 0)),
            "st_ctime": int(e.get("ctime", 0)),
        }

    def readdir(self, path: str) -> list[str]:
        kind, point, e = self.resolve(path)
        if kind == "root":
            return ["points", "by-time", *(["latest"] if self._latest else [])]
        if kind == "points":
            return list(self._points)
        if kind == "by-time":
            return list(self._by_time)
        if kind != "point":
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        assert point is not None
        if e is None:
            return [x["name"] for x in self.tree(point.root)]
        if e["type"] != DIR:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return [x["name"] for x in self.tree(e["subtree"])]

    def readlink(self, path: str) -> str:
        kind, _point, e = self.resolve(path)
        if kind == "latest":
            return f"points/{self._latest}"
        if kind == "timelink":
            return f"../points/{self._by_time[path.rstrip('/').rsplit('/', 1)[1]]}"
        if e is None or e["type"] != SYMLINK:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return str(e["target"])

    # -- xattrs ------------------------------------------------------------------------
    def _xattrs(self, path: str) -> dict[str, bytes]:
        kind, _point, e = self.resolve(path)
        if kind != "point" or e is None:
            return {}
        return {(SMB_XATTR_PREFIX + k if k.startswith("smb.") else k): v
                for k, v in xattrs_of(e).items()}

    def listxattr(self, path: str) -> list[str]:
        return list(self._xattrs(path))

    def getxattr(self, path: str, name: str) -> bytes:
        value = self._xattrs(path).get(name)
        if value is None:
            raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))
        return value

    # -- data ----------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        kind, point, e = self.resolve(path)
        if kind != "point" or point is None or e is None or e["type"] != FILE:
            raise OSError(errno.EISDIR if kind != "point" or e is None or e["type"] == DIR
                          else errno.EINVAL, "not a regular file")
        content = [(int(o), int(n), c) for o, n, c in self._data_entry(point, e).get("content", ())]
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = ([o for o, _n, _c in content], content)
        return fh

    def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    def chunk(self, cid: str) -> bytes:
        key = bytes.fromhex(cid)
        data = self._chunks.get(key)
        if data is None:
            data = self.repo.read_blob(key)
            self._chunks[key] = data
            if len(self._chunks) > CHUNK_CACHE:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(key)
        return data

    def read(self, fh: int, size: int, offset: int, file_size: int) -> bytes:
        """``size`` bytes at ``offset``; holes (gaps between data segments, and after
        the last one up to ``file_size``) read as zeros."""
        starts, content = self._open[fh]
        limit = min(offset + size, file_size)
        out = bytearray()
        pos = offset
        i = max(0, bisect_right(starts, offset) - 1)
        while pos < limit and i < len(content):
            seg_off, seg_len, cid = content[i]
            if pos < seg_off:  # a hole before this segment
                gap = min(seg_off, limit) - pos
                out += bytes(gap)
                pos += gap
                continue
            if pos < seg_off + seg_len:
                data = self.chunk(cid)
                take = min(seg_off + seg_len, limit) - pos
                out += data[pos - seg_off:pos - seg_off + take]
                pos += take
            i += 1
        if pos < limit:  # a trailing hole
            out += bytes(limit - pos)
        return bytes(out)


def _guard(fn: Any) -> Any:
    """Repository trouble (a damaged blob) becomes EIO for the caller, not a crash."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError:
            raise
        except (RepoError, ValueError, KeyError) as exc:
            raise OSError(errno.EIO, f"repository: {exc}") from exc

    return wrapped


def _mfusepy() -> Any:
    """The mfusepy module, bound to libfuse 3 when it is installed.

    Why: mfusepy picks its library once, at import: ``$FUSE_LIBRARY_PATH``, else
    ``find_library('fuse')`` (libfuse 2) before ``'fuse3'``.  The variable is set
    only for that import and removed again, so no child process sees it; one the
    user set is left as it is."""
    import sys

    if "mfusepy" not in sys.modules and not os.environ.get("FUSE_LIBRARY_PATH"):
        from ctypes.util import find_library

        lib = find_library("fuse3")
        if lib:
            os.environ["FUSE_LIBRARY_PATH"] = lib
            try:
                import mfusepy
            finally:
                os.environ.pop("FUSE_LIBRARY_PATH", None)
    import mfusepy

    return mfusepy


def _ops(view: PointsView, on_ready: Callable[[], None] | None = None) -> Any:
    """The mfusepy Operations object over ``view``; ``on_ready`` is called once the
    kernel has the mount (FUSE init)."""
    base: Any = _mfusepy().Operations

    class Ops(base):  # type: ignore[misc]
        use_ns = True

        def __init__(self) -> None:
            self.sizes: dict[int, int] = {}

        def init(self, path: str) -> None:
            if on_ready is not None:
                on_ready()

        @_guard
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            return view.getattr(path)

        @_guard
        def readdir(self, path: str, fh: int) -> Iterable[str]:
            return [".", "..", *view.readdir(path)]

        @_guard
        def readlink(self, path: str) -> str:
            return view.readlink(path)

        @_guard
        def open(self, path: str, flags: int) -> int:
            fh = view.open(path, flags)
            self.sizes[fh] = int(view.getattr(path)["st_size"])
            return fh

        @_guard
        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return view.read(fh, size, offset, self.sizes[fh])

        def release(self, path: str, fh: int) -> int:
            view.release(fh)
            self.sizes.pop(fh, None)
            return 0

        @_guard
        def listxattr(self, path: str) -> Iterable[str]:
            return view.listxattr(path)

        @_guard
        def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
            return view.getxattr(path, name)

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    return Ops()


def check_mountpoint(mountpoint: Path) -> None:
    """RepoError unless ``mountpoint`` is a directory with nothing mounted on it.

    A mount whose process was killed answers ENOTCONN to everything until it is
    unmounted: said in those words, not as a bare errno."""
    try:
        is_dir = stat.S_ISDIR(os.stat(mountpoint).st_mode)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise RepoError(f"{mountpoint} is a stale FUSE mount (its process ended); run "
                            f"`umount {mountpoint}` (or `fusermount3 -u {mountpoint}`) "
                            "first") from None
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise RepoError(f"{mountpoint}: {exc.strerror}") from None
        is_dir = False
    if not is_dir:
        raise RepoError(f"{mountpoint}: the mount point must be an existing directory")
    if os.path.ismount(mountpoint):
        raise RepoError(f"{mountpoint}: something is already mounted there")


def mount(repo_path: Path, mountpoint: Path, allow_other: bool = False,
          debug: bool = False, passphrase: Passphrase = None,
          on_ready: Callable[[], None] | None = None) -> None:
    """Serve the points of ``repo_path`` at ``mountpoint`` until unmounted (Ctrl-C,
    SIGTERM, SIGHUP or ``umount``).  Raises RepoError for a bad repository or mount
    point, RuntimeError if libfuse cannot mount.  ``on_ready``: called once mounted."""
    import signal

    check_mountpoint(mountpoint)
    # Absolute: libfuse moves the serving process to "/", after which a relative
    # path would name no pack (every read failed with EIO).
    repo_path = Path(repo_path).absolute()
    with Repository(repo_path, "read", command="backup mount", passphrase=passphrase) as repo:
        view = PointsView(repo)
        mfusepy = _mfusepy()

        # libfuse installs its unmount-and-exit handlers only over default ones.
        old = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            options: dict[str, Any] = {"ro": True, "default_permissions": True,
                                       "fsname": "remotevss",
                                       "subtype": "remotevss", "kernel_cache": True}
            if allow_other:
                options["allow_other"] = True
            up: list[bool] = []

            def ready() -> None:
                up.append(True)
                if on_ready is not None:
                    on_ready()

            try:
                mfusepy.FUSE(_ops(view, ready), str(mountpoint), foreground=True,
                             nothreads=True, debug=debug, **options)
            except RuntimeError:
                # libfuse 3 ends its loop with the number of the signal that stopped
                # it (Ctrl-C, SIGTERM, SIGHUP), and fuse_main_real turns any such end
                # into a non-zero result; a mount that failed never came up (FUSE
                # init is answered inside the loop), so only that is an error.
                if not up:
                    raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
