"""SIGTERM and SIGHUP as an exception in the main thread, held back while a
shadow copy set is being released.

Why a module of its own: ``backup run`` of local paths needs this and nothing
else of the requestor, whose SMB and RPC imports cost ~0.2 s of start-up.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

_HELD: dict[str, Any] = {"depth": 0, "pending": None}


def _hold_sigterm() -> Callable[[], None]:
    """Defer what :func:`terminate_as` raises until the returned function is called
    (a flag, not a signal mask: the mask of one thread does not stop the signal
    from arriving through another, and Python runs handlers in the main thread)."""
    _HELD["depth"] += 1

    def release() -> None:
        _HELD["depth"] -= 1
        pending = _HELD["pending"]
        if _HELD["depth"] == 0 and pending is not None:
            _HELD["pending"] = None
            signal.raise_signal(pending)

    return release


@contextlib.contextmanager
def terminate_as(exc_type: type[BaseException]) -> Iterator[None]:
    """Raise ``exc_type`` in the main thread on SIGTERM or SIGHUP (so ``finally``
    blocks run: the shadow copy set is released); restored afterwards."""

    def handler(signum: int, frame: object) -> None:
        if _HELD["depth"]:
            _HELD["pending"] = signum  # while a shadow copy set is being released
            return
        raise exc_type(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
