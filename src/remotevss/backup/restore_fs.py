"""File system steps of a local restore, relative to directory descriptors.

Why: a restore usually runs as root into a directory other users can write (a
live share, a home directory).  Checking a name and then using it (``lstat``
then ``open``, ``mkdir`` then ``chmod``) leaves a moment in which a local user
can put a symlink to, say, ``/etc`` in place of a directory, and root then
writes, chowns or chmods outside the target.  So nothing below the target is
ever looked up by a path from the root: every directory is opened from its
parent's descriptor with ``O_NOFOLLOW`` (a symlink there is an error, not a
way elsewhere), files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative
to it, and metadata is set on what was opened (``fchown``, ``fchmod``,
``futimens``, ``fsetxattr``); for symlinks and special files, which cannot be
opened for writing, on an ``O_PATH`` descriptor of the very inode made,
through ``/proc/self/fd/N`` (a magic link that leads to that inode, not to a
name).  What a racing user can still do is make a step fail (reported like any
other error) or move a directory the restore holds elsewhere on its file
system (it keeps receiving its contents where it is, as with ``tar`` or
``rsync``).

The target the user named (``--to``) is resolved here too, one name at a
time: a symlink in it is followed only when root or the user running the
restore owns it and it lies in a directory no one else can write, so a
symlink another user planted there (or moved there) is refused, not followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import deque
from dataclasses import dataclass

#: A directory below the target: opened for reading (fchmod, fsetxattr and the
#: ``*at`` calls need a real descriptor), never through a symlink.
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A file to write: made here, never an existing one (nor through a symlink).
O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_LOOK = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: Attempts at a name that someone keeps putting something into: each attempt
#: removes what stands there (never a directory) and makes ours.
TRIES = 5
MAX_SYMLINKS = 40  # as the kernel's path walk


class UnsafeTarget(PermissionError):
    """The named target passes through a symlink that is not trusted (see
    ``open_target``): following it could lead a root restore anywhere."""


@dataclass
class Target:
    """The opened target: its descriptor, whether this restore made it, and (if so)
    whether its parent has a default ACL (it then inherited one)."""

    fd: int
    made: bool
    inherited: bool


def has_default_acl(fd: int) -> bool:
    """Whether new entries of the open directory take their mode from a default
    ACL (an error other than "no such attribute" counts as yes: the fchmod stays)."""
    try:
        os.getxattr(fd, "system.posix_acl_default")
    except OSError as exc:
        return exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP)
    return True


def _untrusted_link(link: os.stat_result, holder: os.stat_result) -> str | None:
    """Why root may not follow a symlink (None: it may): it must be made by root or
    by us, in a directory only root or we can write (else another user could have
    moved a root-owned link there)."""
    mine = (0, os.geteuid())
    if link.st_uid not in mine:
        return f"is owned by uid {link.st_uid}"
    if holder.st_uid not in mine or holder.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "lies in a directory others can write"
    return None


def open_target(path: str, mode: int) -> Target:
    """Open (making it, and its missing parents with mode 0o777 less the umask, as
    ``os.makedirs``) the directory the user named, one name at a time, following
    only trusted symlinks (``_untrusted_link``).  ``mode``: for the last directory,
    if made.  NotADirectoryError if it is something else; UnsafeTarget for an
    untrusted symlink on the way."""
    names = deque(n for n in path.split("/") if n and n != ".")
    cur = os.open("/" if path.startswith("/") else ".", _O_LOOK | os.O_DIRECTORY)
    made = inherited = False
    links = 0
    try:
        while names:
            name = names.popleft()
            if name == "..":  # the real parent: no symlink can stand for ".."
                cur = _step(cur, os.open("..", _O_LOOK | os.O_DIRECTORY, dir_fd=cur))
                continue
            last = not names
            try:
                nxt = os.open(name, _O_LOOK, dir_fd=cur)
            except FileNotFoundError:
                try:
                    os.mkdir(name, mode if last else 0o777, dir_fd=cur)
                except FileExistsError:
                    pass  # made meanwhile by someone else: looked at again
                else:
                    if last:
                        made = True
                        inherited = _reopen_has_default_acl(cur)
                names.appendleft(name)
                continue
            st = os.fstat(nxt)
            if stat.S_ISDIR(st.st_mode):
                cur = _step(cur, nxt)
                continue
            if not stat.S_ISLNK(st.st_mode):
                os.close(nxt)
                raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory",
                                         path)
            try:
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many symbolic links", path)
                why = _untrusted_link(st, os.fstat(cur))
                if why:
                    raise UnsafeTarget(errno.EPERM, f"the symlink {name!r} on the way {why}; "
                                       "not followed (name the real directory)", path)
                made = False
                dest = os.readlink("", dir_fd=nxt)
            finally:
                os.close(nxt)
            names.extendleft(reversed([n for n in dest.split("/") if n and n != "."]))
            if dest.startswith("/"):
                cur = _step(cur, os.open("/", _O_LOOK | os.O_DIRECTORY))
        fd = os.open(".", O_DIR, dir_fd=cur)
    except UnsafeTarget:
        raise
    except OSError as exc:
        if exc.filename == path:
            raise
        # Named by the whole target: a bare component ('sub') says nothing of where.
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        os.close(cur)
    return Target(fd, made, inherited)


def _step(old: int, new: int) -> int:
    os.close(old)
    return new


def _reopen_has_default_acl(look_fd: int) -> bool:
    fd = os.open(".", O_DIR, dir_fd=look_fd)
    try:
        return has_default_acl(fd)
    finally:
        os.close(fd)


def open_dir(parent: int, name: str, mode: int) -> tuple[int, bool]:
    """The directory ``name`` of ``parent``, opened; made (with ``mode``) if missing.
    What stands there and is not a directory (a file, or a symlink, which is never
    followed) is replaced, as files replace files.  Returns (descriptor, made
    here: new, empty and ours)."""
    for _ in range(TRIES):
        try:
            os.mkdir(name, mode, dir_fd=parent)
            made = True
        except FileExistsError:
            made = False
        try:
            fd = os.open(name, O_DIR, dir_fd=parent)
        except NotADirectoryError:  # a file or a symlink (O_NOFOLLOW): replaced
            with contextlib.suppress(IsADirectoryError):  # a directory by now: opened
                remove_nondir(parent, name)
            continue
        except FileNotFoundError:  # removed meanwhile: again
            continue
        if made:  # ours unless swapped since the mkdir (then: someone else's directory)
            st = os.fstat(fd)
            made = st.st_uid == os.geteuid() and st.st_nlink == 2
        return fd, made
    raise OSError(errno.EAGAIN, "kept changing while it was restored")


def walk(root: int, parts: tuple[str, ...]) -> int:
    """A new descriptor of the directory ``parts`` below ``root``, no symlink followed."""
    fd = os.dup(root)
    try:
        for name in parts:
            fd = _step(fd, os.open(name, O_DIR, dir_fd=fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_nondir(parent: int, name: str) -> None:
    """Remove what stands at ``name`` (never followed; missing is fine); a directory
    there is an error: restore does not delete trees."""
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise IsADirectoryError(errno.EISDIR, "a directory is in the way", name) from None


def create_file(parent: int, name: str, mode: int) -> int:
    """A new file at ``name``, opened for writing; what stands there (a file, a
    symlink, a hardlink of someone else's file) is replaced, never written
    through."""
    for _ in range(TRIES):
        try:
            return os.open(name, O_NEW_FILE, mode, dir_fd=parent)
        except FileExistsError:
            remove_nondir(parent, name)
    raise OSError(errno.EAGAIN, "kept changing while it was restored")


def link(src_dir: int, src: str, parent: int, name: str) -> None:
    """``name`` in ``parent`` as a hardlink of ``src`` in ``src_dir`` (a symlink at
    ``src`` is linked itself, not followed); what stands at ``name`` is replaced."""
    for _ in range(TRIES):
        try:
            os.link(src, name, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False)
            return
        except FileExistsError:
            remove_nondir(parent, name)
    raise OSError(errno.EAGAIN, "kept changing while it was restored")


def open_made(parent: int, name: str, fmt: int) -> int:
    """An ``O_PATH`` descriptor of what this restore just made at ``name`` (a symlink,
    FIFO, device node or socket: ``fmt`` is its ``S_IFMT``), checked to be of that
    type and to have one name, so its metadata is set on it and not on a
    hardlink of another file that a racing user swapped in.  (Not checked: the
    owner, which an NFS server's root squashing changes.)"""
    fd = os.open(name, _O_LOOK, dir_fd=parent)
    st = os.fstat(fd)
    if stat.S_IFMT(st.st_mode) != fmt or st.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EAGAIN, "replaced while it was restored", name)
    return fd


def fd_path(fd: int) -> str:
    """A path that leads to the inode ``fd`` refers to, whatever its names are now
    (for the calls that take no descriptor, on ``O_PATH`` ones)."""
    return f"/proc/self/fd/{fd}"


def open_parent_dir(ppid: int, fd: int, dev: int, ino: int) -> int:
    """In a worker: the directory the parent process holds open as ``fd``, opened
    through its ``/proc/PID/fd/N`` (that very directory, not a name), checked to be
    (``dev``, ``ino``)."""
    mine = os.open(f"/proc/{ppid}/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    st = os.fstat(mine)
    if (st.st_dev, st.st_ino) != (dev, ino):
        os.close(mine)
        raise OSError(errno.ESTALE, "the parent's directory is not there any more")
    return mine
