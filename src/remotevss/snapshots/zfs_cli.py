"""The ``zfs`` command line, as argument lists, with errors turned into errno.

Why the command line and not libzfs: libzfs has no stable ABI (OpenZFS
changes it between releases, and zfs-fuse's is Sun's older one), while
``zfs``/``zpool`` with ``-H -p`` print tab-separated, unscaled values on
every ZFS we meet.  Rules: never a shell, never a string-built command; every
name is checked before it goes on an argument list (a name starting with "-"
would be read as an option); a failure becomes ZfsError carrying the errno
that best matches ZFS's message, and the message itself, so the agent can log
exactly what ZFS said.

What the running ZFS can do is probed, not assumed from a version string:
several snapshot names in one ``zfs snapshot`` (OpenZFS;
atomic within one pool) and the ``.zfs`` directory are missing from zfs-fuse.
"""

from __future__ import annotations

import errno
import re
import subprocess
import threading
from collections.abc import Mapping, Sequence

from remotevss.snapshots.base import SnapshotError

ZFS = "zfs"
TIMEOUT = 120.0  # seconds: a txg sync on a busy pool takes seconds, never minutes
MAXNAMELEN = 255  # ZFS_MAX_DATASET_NAME_LEN - 1 (the NUL)
USAGE_EXIT = 2  # zfs(8) exits 2 when it does not understand its arguments

# zfs_namecheck: letters, digits and "_-.:" everywhere (OpenZFS adds " ",
# zfs-fuse does not; we never make names with spaces).
_COMPONENT = re.compile(r"[A-Za-z0-9_.:-]+")
_PROPERTY = re.compile(r"[a-z0-9_.:-]+")

# ZFS's messages (libzfs_error_description and command-specific text) -> errno.
_MESSAGES: tuple[tuple[str, int], ...] = (
    ("already exists", errno.EEXIST),
    ("does not exist", errno.ENOENT),
    ("no such pool", errno.ENOENT),
    ("dataset is busy", errno.EBUSY),
    ("pool or dataset is busy", errno.EBUSY),
    ("has dependent clones", errno.EBUSY),
    ("tag already exists", errno.EEXIST),
    ("no such tag", errno.ESRCH),
    ("out of space", errno.ENOSPC),
    ("quota exceeded", errno.EDQUOT),
    ("permission denied", errno.EPERM),
    ("name is too long", errno.ENAMETOOLONG),
    ("invalid character", errno.EINVAL),
    ("invalid property", errno.EINVAL),
    ("read-only", errno.EROFS),
    ("unsupported version", errno.EOPNOTSUPP),
    ("operation not supported", errno.EOPNOTSUPP),
)


class ZfsError(SnapshotError):
    """``zfs`` failed; ``zfs_message`` is its stderr, ``errno`` our best match."""

    def __init__(self, message: str, errno: int | None, zfs_message: str = "",
                 usage: bool = False) -> None:
        super().__init__(message, errno)
        self.zfs_message = zfs_message
        self.usage = usage


def errno_of(message: str) -> int:
    low = message.lower()
    for text, code in _MESSAGES:
        if text in low:
            return code
    return errno.EIO


def check_component(name: str) -> None:
    """One dataset or snapshot name component, as zfs_namecheck accepts it."""
    if not _COMPONENT.fullmatch(name) or name in (".", ".."):
        raise SnapshotError(f"{name!r} is not a valid ZFS name component", errno.EINVAL)


def check_dataset(name: str) -> None:
    """A full dataset name ``pool/a/b`` (no snapshot part)."""
    if len(name) > MAXNAMELEN:
        raise SnapshotError(f"ZFS name too long ({len(name)} > {MAXNAMELEN}): {name}",
                            errno.ENAMETOOLONG)
    for part in name.split("/"):
        check_component(part)
    if name.startswith("-"):
        raise SnapshotError(f"{name!r} is not a valid ZFS name", errno.EINVAL)


def check_snapshot(name: str) -> None:
    """``dataset@snap``."""
    dataset, sep, snap = name.partition("@")
    if not sep:
        raise SnapshotError(f"{name!r} is not a ZFS snapshot name", errno.EINVAL)
    check_dataset(dataset)
    check_component(snap)
    if len(name) > MAXNAMELEN:
        raise SnapshotError(f"ZFS name too long ({len(name)} > {MAXNAMELEN}): {name}",
                            errno.ENAMETOOLONG)


def _check_props(props: Mapping[str, str]) -> list[str]:
    args = []
    for key, value in props.items():
        if not _PROPERTY.fullmatch(key) or "\0" in value or "\n" in value or len(value) > 1024:
            raise SnapshotError(f"invalid ZFS property {key}={value!r}", errno.EINVAL)
        args += ["-o", f"{key}={value}"]
    return args


def run(*args: str, what: str = "") -> str:
    """Run ``zfs args...``; stdout on success, ZfsError (with ZFS's message) otherwise."""
    argv = [ZFS, *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False, errors="surrogateescape")
    except FileNotFoundError as exc:
        raise ZfsError("zfs is not installed", errno.EOPNOTSUPP) from exc
    except subprocess.TimeoutExpired as exc:
        raise ZfsError(f"zfs {args[0]} did not finish in {TIMEOUT:.0f} s", errno.ETIMEDOUT) from exc
    if proc.returncode:
        msg = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
        usage = proc.returncode == USAGE_EXIT and "usage:" in proc.stderr
        code = errno.EOPNOTSUPP if usage else errno_of(msg)
        raise ZfsError(f"{what or 'zfs ' + args[0]}: {msg}", code, msg, usage)
    return proc.stdout


# ------------------------------------------------------------------ queries


def get(names: Sequence[str], props: Sequence[str],
        recursive: bool = False) -> dict[str, dict[str, str]]:
    """``zfs get -H -p`` -> {name: {property: value}}; "-" (unset) is left out.
    ``recursive``: the names' descendants too (snapshots, child datasets)."""
    for p in props:
        if not _PROPERTY.fullmatch(p):
            raise SnapshotError(f"invalid ZFS property {p!r}", errno.EINVAL)
    out: dict[str, dict[str, str]] = {n: {} for n in names}
    text = run("get", "-H", "-p", *(["-r"] if recursive else []), "-o", "name,property,value",
               ",".join(props), *names)
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2] != "-":
            out.setdefault(parts[0], {})[parts[1]] = parts[2]
    return out


def get_one(name: str, prop: str) -> str | None:
    return get([name], [prop]).get(name, {}).get(prop)


def exists(name: str) -> bool:
    try:
        run("get", "-H", "-o", "value", "type", name)
    except ZfsError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


# ------------------------------------------------------------------ effects


def snapshot(names: Sequence[str], props: Mapping[str, str] | None = None) -> None:
    """One ``zfs snapshot`` of every name: atomic across them (all in one pool)."""
    for n in names:
        check_snapshot(n)
    run("snapshot", *_check_props(props or {}), *names,
        what=f"zfs snapshot {' '.join(names)}")


def clone(snapshot_name: str, target: str, props: Mapping[str, str]) -> None:
    check_snapshot(snapshot_name)
    check_dataset(target)
    run("clone", *_check_props(props), snapshot_name, target,
        what=f"zfs clone {snapshot_name} {target}")


def create(dataset: str, props: Mapping[str, str]) -> None:
    check_dataset(dataset)
    run("create", *_check_props(props), dataset, what=f"zfs create {dataset}")


def set_props(name: str, props: Mapping[str, str]) -> None:
    args = [a for a in _check_props(props) if a != "-o"]
    run("set", *args, name, what=f"zfs set on {name}")


def hold(tag: str, snapshot_name: str) -> None:
    check_component(tag)
    check_snapshot(snapshot_name)
    run("hold", tag, snapshot_name, what=f"zfs hold {tag} {snapshot_name}")


def release(tag: str, snapshot_name: str) -> None:
    check_component(tag)
    check_snapshot(snapshot_name)
    run("release", tag, snapshot_name, what=f"zfs release {tag} {snapshot_name}")


def unmount(dataset: str) -> None:
    check_dataset(dataset)
    run("unmount", dataset, what=f"zfs unmount {dataset}")


def destroy(name: str) -> None:
    """Destroy one dataset or snapshot; never recursive (``-r``/``-R`` could take
    datasets we did not make)."""
    if "@" in name:
        check_snapshot(name)
    else:
        check_dataset(name)
    run("destroy", name, what=f"zfs destroy {name}")


# ------------------------------------------------------------------ capabilities


_probed: dict[str, bool] = {}
_lock = threading.Lock()


def probe_multi_snapshot(pool: str) -> bool:
    """Ask ``zfs snapshot`` for two snapshots of a dataset that does not exist:
    an OpenZFS that takes several names answers "does not exist" (exit 1),
    one that takes a single name answers with its usage (exit 2).  Nothing is
    created either way."""
    check_component(pool)
    with _lock:
        if pool in _probed:
            return _probed[pool]
    missing = f"{pool}/remotevss-capability-probe-does-not-exist"
    try:
        run("snapshot", f"{missing}@a", f"{missing}@b")
        ok = True  # pragma: no cover - the dataset cannot exist
    except ZfsError as exc:
        ok = not exc.usage
    with _lock:
        _probed[pool] = ok
    return ok


def forget_probes() -> None:
    """Forget the cached answers (tests start a new zfs-fuse daemon)."""
    with _lock:
        _probed.clear()


def pool_of(dataset: str) -> str:
    return dataset.split("/", 1)[0]
