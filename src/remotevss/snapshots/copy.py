"""copy backend, and the tree snapshot machinery the reflink backend shares.

Why one walker with a per-file data strategy: a reflink snapshot and a copy
snapshot differ only in how a regular file's bytes get there (FICLONE vs a
sparse-aware data copy); directories, owners, modes, times, xattrs, hard
links, symlinks and device nodes are handled once, here.

Safety rules of the walk:
- every source entry is opened relative to its parent's fd with O_NOFOLLOW,
  and metadata comes from fstat of that fd, so a symlink swapped in during the
  walk is copied as a symlink, never followed;
- the tree is built as ``<snapshot_dir>/.<name>.partial`` whose top directory
  stays mode 0700 until the end, then renamed to ``<name>``: whatever carries
  a snapshot's name is complete, and share users cannot touch a tree that is
  still being built;
- read-only snapshots get a read-only bind mount (see mounts.py) *before* the
  top directory gets its real mode, through an fd opened beforehand.

Consistency: every file is read at its own instant.  A clone is atomic per
file; a copy is not even that.  Neither is a point-in-time image across files
(btrfs is); FSRVP callers quiesce writers before Commit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field

from remotevss.snapshots import mounts
from remotevss.snapshots.base import (
    NAME_MAX,
    NotSupported,
    SnapshotError,
    Usage,
    Volume,
    validate_snapshot_name,
)

log = logging.getLogger("remotevss.snapshots")

SNAPSHOT_DIR = ".snapshots"
PARTIAL = ".{}.partial"
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_SRC = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_O_DST = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# xattrs the target cannot hold (namespace unsupported, security.* policy,
# vanished meanwhile) are skipped; anything else (ENOSPC, EIO) fails the snapshot.
_XATTR_SKIP = {errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.EINVAL, errno.ENODATA,
               errno.E2BIG, errno.ERANGE}
# XFS lists its on-disk form of POSIX ACLs too; they are copied as system.posix_acl_*
_XATTR_ALIASES = {"trusted.SGI_ACL_FILE", "trusted.SGI_ACL_DEFAULT"}
_CHUNK = 1 << 20
# an entry replaced by another type between readdir and open (O_NOFOLLOW, O_DIRECTORY)
_RACES = {errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


# ------------------------------------------------------------------ per-file data


def copy_data(src: int, dst: int, st: os.stat_result) -> None:
    """Copy the data extents of ``src`` only, so holes stay holes (SEEK_DATA/SEEK_HOLE)."""
    size, pos = st.st_size, 0
    while pos < size:
        try:
            data = os.lseek(src, pos, os.SEEK_DATA)
            hole = os.lseek(src, data, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to EOF
                break
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            data, hole = pos, size  # no hole support: copy everything
        if data >= size:
            break
        hole = min(hole, size)
        _copy_range(src, dst, data, hole - data)
        pos = hole
    os.ftruncate(dst, size)


def _copy_range(src: int, dst: int, off: int, count: int) -> None:
    """copy_file_range (in-kernel; may even share extents), pread/pwrite when refused."""
    while count > 0:
        try:
            n = os.copy_file_range(src, dst, min(count, 1 << 30), off, off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            _pread_pwrite(src, dst, off, count)
            return
        if n == 0:  # the source shrank meanwhile
            return
        off, count = off + n, count - n


def _pread_pwrite(src: int, dst: int, off: int, count: int) -> None:
    while count > 0:
        buf = os.pread(src, min(count, _CHUNK), off)
        if not buf:
            return
        view = memoryview(buf)
        while view:
            n = os.pwrite(dst, view, off)
            view, off, count = view[n:], off + n, count - n


# ------------------------------------------------------------------ metadata


def _copy_xattrs(src: int | str, dst: int | str) -> None:
    """fds or (for symlinks and special files) /proc/self/fd paths, never followed."""
    follow = isinstance(src, int)  # fds: the flag must stay at its default
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _XATTR_SKIP:
            return
        raise
    for n in names:
        if n in _XATTR_ALIASES:
            continue
        try:
            value = os.getxattr(src, n, follow_symlinks=follow)
            os.setxattr(dst, n, value, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in _XATTR_SKIP:
                raise
            log.debug("xattr %s not copied: %s", n, exc)


def _meta_fd(src: int, dst: int, st: os.stat_result) -> None:
    """Owner first (chown clears setuid), xattrs (ACLs set mode bits), mode, times last."""
    os.fchown(dst, st.st_uid, st.st_gid)
    _copy_xattrs(src, dst)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _meta_at(src_dir: int, dst_dir: int, name: str, st: os.stat_result) -> None:
    """Same for entries we must not open: symlinks, devices, fifos, sockets."""
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dst_dir, follow_symlinks=False)
    _copy_xattrs(f"/proc/self/fd/{src_dir}/{name}", f"/proc/self/fd/{dst_dir}/{name}")
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dst_dir)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dir, follow_symlinks=False)


def _drop_inherited_acls(fd: int) -> None:
    """A default ACL on the snapshot directory would be inherited by the whole
    copy; below the top, a directory gets its default ACL only after its
    children exist, so clearing the top is enough."""
    for name in ("system.posix_acl_default", "system.posix_acl_access"):
        try:
            os.removexattr(fd, name)
        except OSError as exc:
            if exc.errno not in _XATTR_SKIP:
                raise


def _open_src(name: str, flags: int, dir_fd: int) -> int:
    """O_NOATIME so snapshotting does not touch the share's atimes (needs ownership
    or CAP_FOWNER; without it we still copy)."""
    try:
        return os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, flags, dir_fd=dir_fd)


# ------------------------------------------------------------------ the walk


@dataclass
class _Dir:
    src: int
    dst: int
    st: os.stat_result
    entries: list[os.DirEntry[str]]
    rel: str
    next: int = 0


@dataclass
class TreeCopy:
    """Copies one directory tree, iteratively (deep trees need no recursion).

    ``skip`` holds (st_dev, st_ino) of directories left out: the snapshot
    directory itself.  The top directory's own metadata is left to
    ``finish_top`` so the caller decides when share users may enter it.
    """

    backend: TreeBackend
    skip: set[tuple[int, int]]
    links: dict[tuple[int, int], str] = field(default_factory=dict)
    top_src: int = -1
    top_dst: int = -1
    top_st: os.stat_result | None = None

    def build(self, src_root: str, dst_parent: int, dst_name: str) -> None:
        self.top_src = os.open(src_root, _O_DIR)
        self.top_st = os.fstat(self.top_src)
        os.mkdir(dst_name, 0o700, dir_fd=dst_parent)
        self.top_dst = os.open(dst_name, _O_DIR, dir_fd=dst_parent)
        _drop_inherited_acls(self.top_dst)
        stack = [_Dir(self.top_src, self.top_dst, self.top_st, self._list(self.top_src), "")]
        try:
            while stack:
                d = stack[-1]
                if d.next == len(d.entries):
                    stack.pop()
                    if stack:  # not the top
                        self._finish(d)
                    continue
                e = d.entries[d.next]
                d.next += 1
                rel = f"{d.rel}/{e.name}" if d.rel else e.name
                try:
                    sub = self._entry(d, e, rel)
                except FileNotFoundError:
                    continue  # deleted while we walked: absent at our instant
                except OSError as exc:
                    if exc.errno not in _RACES:
                        raise SnapshotError(f"{rel}: {exc.strerror}", exc.errno) from exc
                    log.warning("snapshot: %s changed type during the walk, skipped", rel)
                    continue
                if sub is not None:
                    stack.append(sub)
        finally:
            for d in stack[1:]:
                os.close(d.src)
                os.close(d.dst)

    def finish_top(self) -> None:
        assert self.top_st is not None
        _meta_fd(self.top_src, self.top_dst, self.top_st)

    def close(self) -> None:
        for fd in (self.top_src, self.top_dst):
            if fd >= 0:
                os.close(fd)
        self.top_src = self.top_dst = -1

    @staticmethod
    def _list(fd: int) -> list[os.DirEntry[str]]:
        with os.scandir(fd) as it:
            return list(it)

    def _finish(self, d: _Dir) -> None:
        """Directory metadata after its children, or their creation would bump mtime."""
        try:
            _meta_fd(d.src, d.dst, d.st)
        except OSError as exc:
            raise SnapshotError(f"{d.rel}: {exc.strerror}", exc.errno) from exc
        finally:
            os.close(d.src)
            os.close(d.dst)

    def _entry(self, d: _Dir, e: os.DirEntry[str], rel: str) -> _Dir | None:
        if e.is_dir(follow_symlinks=False):
            return self._dir(d, e.name, rel)
        if e.is_file(follow_symlinks=False):
            self._file(d, e.name, rel)
            return None
        st = e.stat(follow_symlinks=False)
        if self._linked(d, e.name, rel, st):
            return None
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(e.name, dir_fd=d.src), e.name, dir_fd=d.dst)
        elif stat.S_IFMT(st.st_mode) in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            os.mknod(e.name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=d.dst)
        else:
            log.warning("snapshot: %s has an unknown file type, skipped", rel)
            return None
        _meta_at(d.src, d.dst, e.name, st)
        return None

    def _dir(self, d: _Dir, name: str, rel: str) -> _Dir | None:
        src = _open_src(name, _O_DIR, d.src)
        try:
            st = os.fstat(src)
            if (st.st_dev, st.st_ino) in self.skip:
                os.close(src)
                return None
            os.mkdir(name, 0o700, dir_fd=d.dst)
            dst = os.open(name, _O_DIR, dir_fd=d.dst)
        except BaseException:
            os.close(src)
            raise
        try:
            return _Dir(src, dst, st, self._list(src), rel)
        except BaseException:
            os.close(src)
            os.close(dst)
            raise

    def _file(self, d: _Dir, name: str, rel: str) -> None:
        src = _open_src(name, _O_SRC, d.src)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                log.warning("snapshot: %s changed type during the walk, skipped", rel)
                return
            if self._linked(d, name, rel, st):
                return
            dst = os.open(name, _O_DST, 0o600, dir_fd=d.dst)
            try:
                self.backend.clone_file(src, dst, st)
                _meta_fd(src, dst, st)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _linked(self, d: _Dir, name: str, rel: str, st: os.stat_result) -> bool:
        """Hard links stay hard links: later names link to the first copy."""
        if st.st_nlink < 2:
            return False
        key = (st.st_dev, st.st_ino)
        first = self.links.get(key)
        if first is None:
            self.links[key] = rel
            return False
        os.link(first, name, src_dir_fd=self.top_dst, dst_dir_fd=d.dst, follow_symlinks=False)
        return True


# ------------------------------------------------------------------ the backend


class TreeBackend:
    """A snapshot is a tree under ``<share>/<snapshot_dirname>/<name>``; subclasses
    say how file data is copied (``clone_file``) and what the filesystem must do
    (``probe``)."""

    name = "tree"

    def __init__(self, snapshot_dirname: str = SNAPSHOT_DIR) -> None:
        parts = snapshot_dirname.split("/")
        if os.path.isabs(snapshot_dirname) or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"snapshot_dirname must be a relative path: {snapshot_dirname!r}")
        self.snapshot_dirname = snapshot_dirname

    # --- strategy
    def clone_file(self, src: int, dst: int, st: os.stat_result) -> None:
        raise NotImplementedError

    def probe(self, path: str) -> None:
        """Raise NotSupported if this filesystem cannot host the backend."""

    # --- Backend protocol
    def check(self, share_path: str) -> Volume:
        path = os.path.realpath(share_path)
        if not os.path.isdir(path):
            raise NotSupported(f"{share_path}: not an existing directory", errno.ENOENT)
        self.probe(path)
        snapdir = os.path.join(path, self.snapshot_dirname)
        self._refuse_mounts_below(path, snapdir)
        if os.path.lexists(snapdir):
            try:
                mounts.check_private_dir(snapdir)
            except SnapshotError as exc:
                raise NotSupported(str(exc), exc.errno) from exc
        return Volume(self.name, path, snapdir, "")

    def create(self, volume: Volume, snap_name: str, writable: bool) -> str:
        validate_snapshot_name(snap_name)
        partial = PARTIAL.format(snap_name)
        if len(os.fsencode(partial)) > NAME_MAX:
            raise SnapshotError(f"snapshot name too long: {snap_name!r}", errno.ENAMETOOLONG)
        target = os.path.join(volume.snapshot_dir, snap_name)
        self._refuse_mounts_below(volume.root, volume.snapshot_dir)
        try:
            sd = self._open_snapshot_dir(volume.snapshot_dir)
        except OSError as exc:
            raise SnapshotError(f"{volume.snapshot_dir}: {exc.strerror}", exc.errno) from exc
        try:
            self._build(volume, snap_name, partial, sd, writable)
        finally:
            os.close(sd)
        return target

    def seal(self, snap_path: str) -> None:
        self.restore_protection(snap_path, read_only=True)

    def delete(self, snap_path: str) -> None:
        path = self._guarded(snap_path)
        half = os.path.join(os.path.dirname(path), PARTIAL.format(os.path.basename(path)))
        try:
            mounts.unmount_all(path)
            for p in (path, half):
                if os.path.lexists(p):
                    shutil.rmtree(p)
        except OSError as exc:
            raise SnapshotError(f"deleting {snap_path}: {exc.strerror}", exc.errno) from exc

    def exists(self, snap_path: str) -> bool:
        return os.path.isdir(snap_path)

    def restore_protection(self, snap_path: str, read_only: bool) -> None:
        """The read-only bind mount lives in the mount table only: re-add it.
        Never weakens: a writable snapshot that is mounted read-only stays so."""
        if not read_only:
            return
        path = self._guarded(snap_path)
        try:
            if not os.path.isdir(path):
                raise SnapshotError(f"{snap_path}: no such snapshot", errno.ENOENT)
            m = mounts.mount_at(path)
            if m is None:
                mounts.bind_readonly(path)
            elif not m.read_only:
                mounts.remount_readonly(path)
        except OSError as exc:
            raise SnapshotError(f"protecting {snap_path}: {exc.strerror}", exc.errno) from exc

    def usage(self, volume: Volume) -> Usage:
        """``used`` stays unknown: summing st_blocks is O(files) and wrong for clones."""
        return mounts.statvfs_usage(volume.root, used=None)

    # --- helpers
    def _refuse_mounts_below(self, root: str, snapdir: str) -> None:
        if below := mounts.mounts_below(root, exclude=(snapdir,)):
            raise NotSupported(f"{root}: mount points below the share: {below}")

    def _guarded(self, snap_path: str) -> str:
        """Only ``.../<snapshot_dirname>/<valid name>``: a corrupt journal entry
        must never make us unmount or delete a share."""
        path = os.path.abspath(snap_path)
        validate_snapshot_name(os.path.basename(path))
        if not os.path.dirname(path).endswith("/" + self.snapshot_dirname):
            raise SnapshotError(f"{snap_path}: not inside {self.snapshot_dirname}", errno.EINVAL)
        return path

    @staticmethod
    def _open_snapshot_dir(snapdir: str) -> int:
        with contextlib.suppress(FileExistsError):
            os.makedirs(snapdir, mode=0o755)
        mounts.check_private_dir(snapdir)
        return os.open(snapdir, _O_DIR)

    def _build(self, volume: Volume, name: str, partial: str, sd: int, writable: bool) -> None:
        target = os.path.join(volume.snapshot_dir, name)
        if os.path.lexists(target):
            raise SnapshotError(f"{target} already exists", errno.EEXIST)
        sdst = os.fstat(sd)
        tree = TreeCopy(self, skip={(sdst.st_dev, sdst.st_ino)})
        renamed = False
        try:
            if os.path.lexists(os.path.join(volume.snapshot_dir, partial)):
                shutil.rmtree(partial, dir_fd=sd)  # an earlier crash; never a snapshot
            tree.build(volume.root, sd, partial)
            os.rename(partial, name, src_dir_fd=sd, dst_dir_fd=sd)
            renamed = True
            if not writable:
                mounts.bind_readonly(target)
            tree.finish_top()
        except BaseException as exc:
            tree.close()
            self._discard(target if renamed else os.path.join(volume.snapshot_dir, partial))
            if isinstance(exc, OSError):
                msg = f"snapshot of {volume.root}: {exc.strerror}"
                raise SnapshotError(msg, exc.errno) from exc
            raise
        tree.close()

    @staticmethod
    def _discard(path: str) -> None:
        """All-or-nothing: a failed build leaves nothing behind (best effort; the
        caller's journaled intent re-runs ``delete`` if this fails too)."""
        try:
            mounts.unmount_all(path)
            if os.path.lexists(path):
                shutil.rmtree(path)
        except OSError as exc:
            log.error("cleaning up %s failed: %s", path, exc)


class CopyBackend(TreeBackend):
    """Works on any filesystem, at the price of copying every byte."""

    name = "copy"

    def create(self, volume: Volume, snap_name: str, writable: bool) -> str:
        log.warning("copy backend: snapshot %s of %s copies all data (O(data))",
                    snap_name, volume.root)
        return super().create(volume, snap_name, writable)

    def clone_file(self, src: int, dst: int, st: os.stat_result) -> None:
        copy_data(src, dst, st)
