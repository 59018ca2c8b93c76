"""A worker process that writes restored files: a restore's second core.

Why a process: restoring small files is mostly the kernel creating and
writing them (~30 us a file on ext4) and Python's work around each call, all
in one thread; threads would share the GIL for the Python part, a second
interpreter does not.  Two whole restores running at once took about as
long as one (51,283 files: 3.5 s against 3.3-3.9 s), so the files split
between the parent and a worker restore in about half the time.

Rules (the parent's side is in restore.py):
- The worker opens the repository read-only with the codec the parent sends
  over its stdin pipe (the parent unlocked and checked the keys; no
  passphrase, no scrypt here), like a backup worker (``workers.py``: new
  interpreter, signals left to the parent, killed with it).
- It writes whole regular files: created, data written, owner, xattrs, mode
  and times set on the open file, as the parent would.  Directories, links,
  special files and every directory's metadata stay with the parent, which
  sets the metadata of directories only once all their files are written.
- It never looks a directory up by name (another user could have swapped
  one for a symlink by then): a task names the directory the parent holds
  open (descriptor, device, inode), and the worker opens that very
  directory through ``/proc/PARENT/fd/N`` (``ParentDirs``), checked by its
  device and inode, then creates the file relative to it as the parent would.
  The parent keeps every such directory open until the files handed over are
  written.
- Each batch is answered with one result per file (written or not, bytes,
  errors and warnings); a damaged chunk fails only its file, as in the
  parent.  A worker that dies fails the restore.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Any

from remotevss.backup.progress import Progress
from remotevss.backup.repo import Repository
from remotevss.backup.restore import DirRef, FileTask, _Restorer, write_batch
from remotevss.backup.restore_fs import open_parent_dir
from remotevss.backup.workers import become_worker, make_codec, recv_obj, send_obj

#: Parent directories kept open here (a batch's files mostly share a few, and the
#: next batch goes on in the last one).
KEEP_DIRS = 32


class ParentDirs:
    """The directories of the tasks, as descriptors of this process: each opened once
    through the parent's ``/proc/PID/fd/N`` (restore_fs.open_parent_dir)."""

    def __init__(self, ppid: int) -> None:
        self.ppid = ppid
        self.open: dict[DirRef, int] = {}

    def __call__(self, ref: DirRef) -> int:
        fd = self.open.get(ref)
        if fd is None:
            if len(self.open) >= KEEP_DIRS:  # the oldest goes
                oldest = next(iter(self.open))
                os.close(self.open.pop(oldest))
            fd = self.open[ref] = open_parent_dir(self.ppid, *ref)
        return fd

    def close(self) -> None:
        for fd in self.open.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.open.clear()


def main() -> None:
    become_worker()
    init: Any = recv_obj(0)
    if init is None:
        return
    path, kind, master = init
    with Repository(Path(path), "read", codec=make_codec(kind, master)) as repo:
        writer = _Restorer(repo, None, Progress(stream=io.StringIO(), enabled=False))
        dirs = ParentDirs(os.getppid())
        try:
            while True:
                batch: list[FileTask] | None = recv_obj(0)
                if batch is None:
                    return
                send_obj(1, write_batch(writer, batch, dirs))
        finally:
            dirs.close()
            writer.close()


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the parent is gone: nobody wants the rest
        sys.exit(1)
