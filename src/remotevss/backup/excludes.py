"""What a backup of a directory leaves out.

Why each rule:
- ``--exclude PATTERN`` / ``--exclude-file FILE``: caches, build output, VM
  images and the like are not worth keeping.  A pattern without a ``/``
  matches an entry's name at any depth (``*.tmp``, ``node_modules``); one
  with a ``/`` matches its path below the source's root (``build/*.o``,
  ``/var/cache``: a leading ``/`` means the same).  Shell wildcards
  (``*``, ``?``, ``[...]``), case-sensitive; an excluded directory is left
  out with everything below it.
- ``--exclude-caches``: a directory holding a ``CACHEDIR.TAG`` with the
  standard signature (https://bford.info/cachedir/) keeps only that file.
- ``--one-file-system``: a directory on another file system than the
  source's root (a mount point) is kept, empty.  btrfs subvolumes count as
  file systems of their own here, as they do for ``tar`` and ``restic``.
- Always: the contents of pseudo file systems (``/proc``, ``/sys``,
  cgroups, ``/dev/pts``...) are left out, their mount points kept empty:
  they hold no data, reading some of them blocks (``/proc/kmsg``), and
  their sizes are not their contents.  The repository itself, when it lies
  inside a source, is left out too (a backup of its own growing packs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from fnmatch import translate

#: Linux file system types that hold no data worth backing up.
PSEUDO_FS = frozenset({
    "proc", "sysfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs",
    "pstore", "bpf", "configfs", "fusectl", "mqueue", "efivarfs", "binfmt_misc",
    "rpc_pipefs", "nsfs", "hugetlbfs", "selinuxfs",
})  # not autofs: its directories lead to real (automounted) file systems
CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


class Excludes:
    """The rules of one backup run (shared by its local sources)."""

    def __init__(self, patterns: Sequence[str] = (), caches: bool = False,
                 one_file_system: bool = False, skip_dirs: Iterable[str] = ()) -> None:
        names, paths = [], []
        for raw in patterns:
            pattern = raw.strip()
            if not pattern:
                raise ValueError("an empty exclude pattern")
            if "/" in pattern.strip("/") or pattern.startswith("/"):  # ("/tmp": the root's)
                paths.append(translate(pattern.strip("/")))
            else:
                names.append(translate(pattern.rstrip("/")))
        self.patterns = [p.strip() for p in patterns]
        self._names = re.compile("|".join(names)) if names else None
        self._paths = re.compile("|".join(paths)) if paths else None
        self.caches = caches
        self.one_file_system = one_file_system
        # (st_dev, st_ino) of directories never entered (the repository).
        self.skip_ids: set[tuple[int, int]] = set()
        self._fstypes: dict[int, str | None] = {}
        for d in skip_dirs:
            self.skip_dir(d)

    def skip_dir(self, path: str | os.PathLike[str]) -> None:
        """Never enter the directory ``path`` (the repository), wherever it is found."""
        try:
            st = os.stat(path)
        except OSError:
            return
        self.skip_ids.add((st.st_dev, st.st_ino))

    @property
    def by_name(self) -> bool:
        return self._names is not None or self._paths is not None

    def excluded(self, relpath: str, name: str) -> bool:
        """Whether the entry ``name`` at ``relpath`` (below the source root) matches."""
        if self._names is not None and self._names.match(name):
            return True
        return self._paths is not None and self._paths.match(relpath) is not None

    def enters(self, dev: int, root_dev: int) -> bool:
        """Whether a directory on device ``dev`` (of a source whose root is on
        ``root_dev``) is listed, or kept empty (another or a pseudo file system)."""
        if dev == root_dev:
            return True
        if self.one_file_system:
            return False
        return self.fstype(dev) not in PSEUDO_FS

    def fstype(self, dev: int) -> str | None:
        """The type of the file system mounted from ``dev`` (None: not in the mount
        table, e.g. a btrfs subvolume)."""
        if dev not in self._fstypes:
            self._fstypes[dev] = _mount_types().get(dev)
        return self._fstypes[dev]

    def describe(self) -> dict[str, object]:
        """For the point's metadata: what this run left out, by rule."""
        out: dict[str, object] = {}
        if self.patterns:
            out["exclude"] = list(self.patterns)
        if self.caches:
            out["exclude_caches"] = True
        if self.one_file_system:
            out["one_file_system"] = True
        return out


def read_patterns(path: str) -> list[str]:
    """An exclude file: one pattern per line; blank lines and ``#`` comments skipped."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f
                if line.strip() and not line.lstrip().startswith("#")]


def _mount_types() -> dict[int, str]:
    """st_dev -> file system type, from this process's mount table."""
    out: dict[int, str] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                try:
                    major, minor = (int(x) for x in fields[2].split(":"))
                    fstype = fields[fields.index("-") + 1]
                except (ValueError, IndexError):
                    continue
                out[os.makedev(major, minor)] = fstype
    except OSError:
        pass
    return out
