"""``signals.stop_at_safe_points``: a first signal only asks the work to stop (at its
next ``check``), a second acts at once, and afterwards the signal has its usual
effect; a signal the process ignores stays ignored.  Real signals, sent to this
process."""

from __future__ import annotations

import os
import signal

import pytest

from remotevss.backup import signals


class Terminated(Exception):
    pass


def test_first_signal_waits_for_a_safe_point_then_acts() -> None:
    notes: list[str] = []
    steps: list[int] = []
    with pytest.raises(KeyboardInterrupt), signals.stop_at_safe_points(notes.append):
        for i in range(5):
            signals.check()
            steps.append(i)
            if i == 1:
                os.kill(os.getpid(), signal.SIGINT)
                steps.append(-1)  # the handler returned: the work went on to its check
    assert steps == [0, 1, -1]
    assert len(notes) == 1 and "again to stop at once" in notes[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signals.check()  # nothing pending any more


def test_second_signal_acts_at_once() -> None:
    steps: list[int] = []
    with pytest.raises(KeyboardInterrupt), signals.stop_at_safe_points(lambda _t: None):
        os.kill(os.getpid(), signal.SIGINT)
        steps.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        steps.append(2)
    assert steps == [1]
    signals.check()


def test_sigterm_keeps_the_earlier_handlers_effect() -> None:
    def terminate(signum: int, frame: object) -> None:
        raise Terminated(signum)

    old = signal.signal(signal.SIGTERM, terminate)
    try:
        with pytest.raises(Terminated), signals.stop_at_safe_points(lambda _t: None):
            os.kill(os.getpid(), signal.SIGTERM)
            signals.check()
        assert signal.getsignal(signal.SIGTERM) is terminate
    finally:
        signal.signal(signal.SIGTERM, old)


def test_work_that_ends_before_its_next_check_still_reports_the_signal() -> None:
    with pytest.raises(KeyboardInterrupt), signals.stop_at_safe_points(lambda _t: None):
        os.kill(os.getpid(), signal.SIGINT)


def test_an_ignored_signal_stays_ignored() -> None:
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals.stop_at_safe_points(lambda _t: None):
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            signals.check()  # nothing asked to stop
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)
