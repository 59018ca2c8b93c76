"""SIGTERM and SIGHUP as an exception in the main thread, held back while a
shadow copy set is being released; and signals that stop a restore only
where stopping leaves nothing half-written.

Why a module of its own: ``backup run`` of local paths needs this and nothing
else of the requestor, whose SMB and RPC imports cost ~0.2 s of start-up.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

_HELD: dict[str, Any] = {"depth": 0, "pending": None}


def _hold_sigterm() -> Callable[[], None]:
    """Defer what :func:`terminate_as` raises, and Ctrl-C's KeyboardInterrupt, until
    the returned function is called (a flag, not a signal mask: the mask of one
    thread does not stop the signal from arriving through another, and Python
    runs handlers in the main thread).  Why SIGINT too: a KeyboardInterrupt in
    the middle of releasing a shadow copy set would leave it on the server."""
    _HELD["depth"] += 1
    old_int = None
    if _HELD["depth"] == 1 and threading.current_thread() is threading.main_thread():
        def hold_int(signum: int, frame: object) -> None:
            _HELD["pending"] = signum

        old_int = signal.signal(signal.SIGINT, hold_int)

    def release() -> None:
        _HELD["depth"] -= 1
        if old_int is not None:
            signal.signal(signal.SIGINT, old_int)
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


class Stopped(Exception):
    """Raised by :func:`check` at a safe point once a stop was asked for."""


_STOP: dict[str, Any] = {"signal": None}
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def check() -> None:
    """Raise :class:`Stopped` if a signal asked the work to stop (see ``stop_at_safe_points``)."""
    if _STOP["signal"] is not None:
        raise Stopped


def _act(old: Any, signum: int) -> None:
    """What ``signum`` would have done without us: the earlier handler's effect."""
    if callable(old):
        old(signum, None)
    elif old == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


@contextlib.contextmanager
def stop_at_safe_points(note: Callable[[str], None]) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP only ask the work to stop: it calls :func:`check`
    where stopping leaves nothing half-made (between files; a file being written
    is removed first) and raises :class:`Stopped`, which ends the block; then the
    signal has its usual effect (KeyboardInterrupt, ``terminate_as``'s exception).
    A second signal acts at once.  Why: an exception raised anywhere could stop
    a restore with a truncated file under its real name, or in the middle of an
    SMB message.  ``note`` tells the user (once).  Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        if _STOP["signal"] is not None:  # asked again: at once
            _STOP["signal"] = None
            _act(old[signum], signum)
            return
        _STOP["signal"] = signum
        note("stopping once the file being written is finished or removed "
             "(again to stop at once)")

    for sig in _STOP_SIGNALS:
        if signal.getsignal(sig) != signal.SIG_IGN:  # e.g. SIGINT of a background job
            old[sig] = signal.signal(sig, handler)
    stopped = False
    try:
        yield
    except Stopped:
        stopped = True
    finally:
        for signum, h in old.items():
            signal.signal(signum, h)
        pending, _STOP["signal"] = _STOP["signal"], None
    if pending is not None:
        _act(old[pending], pending)
    if stopped:  # the earlier handler did not end the work (held back): never return
        raise KeyboardInterrupt
