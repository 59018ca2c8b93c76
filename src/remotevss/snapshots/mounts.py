"""The mount table: what is mounted where, and the read-only bind mounts we add.

Why a module of its own: every backend must refuse shares with mount points
below them (a snapshot would silently miss those trees), and the tree backends
(reflink, copy) make snapshots read-only for root too with a read-only bind
mount of the snapshot onto itself.  Both need the same exact view of
``/proc/self/mountinfo``; ``os.path.ismount`` cannot see a bind mount of a
directory onto itself (same device, different inode than the parent).

Mounting uses the syscalls through ctypes, not mount(8): the new mount API
(open_tree + mount_setattr + move_mount, Linux >= 5.12) attaches a bind mount
that is read-only from birth, so no instant exists where it is writable and
copies propagated to other mount namespaces (e.g. smbd's) are read-only too;
the classic bind + remount would leave those copies writable.  Errors come
back as errno, not as localised text on stderr.  Older kernels fall back to
mount(2) bind + remount.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import stat
from dataclasses import dataclass

from remotevss.snapshots.base import SnapshotError, Usage

BTRFS_SUPER_MAGIC = 0x9123683E

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo (paths unescaped)."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    options: frozenset[str]
    fstype: str
    source: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10:
            continue
        sep = fields.index("-", 6)
        mounts.append(
            Mount(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=frozenset(fields[5].split(",")),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
            )
        )
    return mounts


_last: tuple[str, tuple[Mount, ...]] = ("", ())


def read_mounts() -> list[Mount]:
    """The current mount table.  Always read afresh; parsed again only when the
    text changed (parsing costs ~10x the read and runs on every share lookup)."""
    global _last
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    cached_text, cached = _last
    if text != cached_text:
        cached = tuple(parse_mountinfo(text))
        _last = (text, cached)
    return list(cached)


def _inside(path: str, top: str) -> bool:
    """True if ``path`` is ``top`` or below it (both normalised absolute paths)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def mounts_below(
    path: str, exclude: tuple[str, ...] = (), table: list[Mount] | None = None
) -> list[str]:
    """Mount points strictly below ``path``, except those at or inside ``exclude``
    (a backend's own snapshot directory holds its read-only bind mounts).
    ``table``: a :func:`read_mounts` the caller just made (one read for many paths)."""
    path = os.path.realpath(path)
    found = []
    for m in read_mounts() if table is None else table:
        mp = m.mount_point
        if mp != path and _inside(mp, path) and not any(_inside(mp, e) for e in exclude):
            found.append(mp)
    return found


def mount_at(path: str) -> Mount | None:
    """The topmost mount whose mount point is exactly ``path`` (None if none)."""
    path = os.path.normpath(path)
    top = None
    for m in read_mounts():
        if m.mount_point == path:
            top = m
    return top


def fs_magic(path: str) -> int:
    """statfs(2) f_type of the filesystem holding ``path`` (os.statvfs lacks it)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def check_private_dir(path: str) -> None:
    """A snapshot directory must be a real directory that only its owner (root,
    or the agent's user) can change: share users could otherwise swap a
    snapshot, or plant a symlink that redirects our writes."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SnapshotError(f"{path} is not a directory (symlink?)", errno.ENOTDIR)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise SnapshotError(
            f"{path} must be owned by root and not group/world-writable", errno.EPERM
        )


def statvfs_usage(path: str, used: int | None) -> Usage:
    """Size and space available to unprivileged writers, as a share user sees it."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise SnapshotError(f"statvfs {path}: {exc}", exc.errno) from exc
    return Usage(used, st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


# ------------------------------------------------------------------ syscalls

libc = ctypes.CDLL(None, use_errno=True)  # the C library (also btrfs.py's snapshot ioctl)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
libc.syscall.restype = ctypes.c_long

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_RELATIME = 1 << 21
MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8
# statvfs f_flag bit -> mount flag that a bind remount must repeat (EPERM otherwise
# when locked, and silently dropped otherwise)
_KEEP_FLAGS = {
    os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME,
}

# Syscalls numbered >= 424 share one number on all architectures except
# alpha, ia64 and mips, which keep the classic fallback.
_NEW_API_ARCHES = {"x86_64", "aarch64", "i686", "i386", "armv7l", "riscv64", "ppc64le", "s390x"}
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH, MOUNT_ATTR_RDONLY = 1, 4, 1


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, path: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ret


def _syscall(nr: int, *args: object) -> int:
    return int(libc.syscall(ctypes.c_long(nr), *args))


class _NoNewApi(Exception):
    """The kernel (or a seccomp filter) refuses the new mount API; nothing was attached."""


def _bind_readonly_new(path: str) -> None:
    p = os.fsencode(path)
    fd = _syscall(SYS_OPEN_TREE, ctypes.c_long(AT_FDCWD), p,
                  ctypes.c_long(OPEN_TREE_CLONE | os.O_CLOEXEC))
    if fd < 0 and ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
        raise _NoNewApi
    _check(fd, path)
    try:  # the detached clone is freed with its fd if anything below fails
        attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
        ret = _syscall(SYS_MOUNT_SETATTR, ctypes.c_long(fd), b"",
                       ctypes.c_long(AT_EMPTY_PATH), ctypes.pointer(attr),
                       ctypes.c_long(ctypes.sizeof(attr)))
        if ret < 0 and ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
            raise _NoNewApi
        _check(ret, path)
        _check(_syscall(SYS_MOVE_MOUNT, ctypes.c_long(fd), b"",
                        ctypes.c_long(AT_FDCWD), p, ctypes.c_long(MOVE_MOUNT_F_EMPTY_PATH)), path)
    finally:
        os.close(fd)


def remount_readonly(path: str) -> None:
    """Make the existing mount at ``path`` read-only (keeps nosuid, nodev, ...)."""
    keep = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for st_bit, ms_bit in _KEEP_FLAGS.items():
        if keep & st_bit:
            flags |= ms_bit
    _check(libc.mount(None, os.fsencode(path), None, flags, None), path)


def bind_readonly(path: str) -> None:
    """Bind-mount ``path`` onto itself read-only: EROFS for every writer, root too."""
    if platform.machine() in _NEW_API_ARCHES:
        try:
            _bind_readonly_new(path)
            return
        except _NoNewApi:
            pass
    p = os.fsencode(path)
    _check(libc.mount(p, p, None, MS_BIND, None), path)
    try:
        remount_readonly(path)
    except OSError:
        libc.umount2(p, MNT_DETACH | UMOUNT_NOFOLLOW)
        raise


def try_unmount(path: str) -> bool:
    """Remove the top mount at ``path`` unless it is busy (False then; nothing changed)."""
    if libc.umount2(os.fsencode(path), UMOUNT_NOFOLLOW) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EBUSY:
        return False
    if err == errno.EINVAL:  # not a mount point (any more)
        return True
    raise OSError(err, os.strerror(err), path)


def unmount_all(path: str) -> None:
    """Remove every mount stacked on ``path``; a busy one is detached lazily
    (it vanishes from the namespace now, the kernel frees it when unused)."""
    p = os.fsencode(path)
    for _ in range(64):
        if mount_at(path) is None:
            return
        if libc.umount2(p, UMOUNT_NOFOLLOW) != 0:
            err = ctypes.get_errno()
            if err == errno.EBUSY:
                _check(libc.umount2(p, MNT_DETACH | UMOUNT_NOFOLLOW), path)
            elif err != errno.EINVAL:  # EINVAL: not a mount point (any more)
                raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EBUSY, "mounts keep reappearing", path)
