"""python3-samba and python3-tdb, imported on first use, behind one process-wide lock.

Why one lock: smbd's (source3) loadparm and registry code behind
``samba.samba3`` keep their state in C globals (one loaded smb.conf, one open
``registry.tdb`` per process).  The agent looks shares up on its event-loop
thread and exposes them from worker threads; a multi-call registry
transaction must not interleave with a config reload from another thread.

Why importlib: the bindings ship no type information; importing them here as
``Any`` keeps mypy strict elsewhere without per-line ignores, and a missing
python3-samba becomes one clear error instead of an ImportError at import time
of the agent.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

#: Held around every call into samba.samba3 / samba.smbconf / samba.messaging / tdb.
LOCK = threading.RLock()


class SambaUnavailable(RuntimeError):
    """python3-samba (or python3-tdb) cannot be imported."""


def module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pkg = "python3-tdb" if name == "tdb" else "python3-samba"
        raise SambaUnavailable(f"cannot import {name} ({exc}); install {pkg}") from exc
