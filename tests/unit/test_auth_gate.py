"""AuthGate: at most ``size`` connections authenticate at once, the rest wait on the loop."""

from __future__ import annotations

import asyncio

import pytest

from remotevss.agent.auth_gate import AuthGate


def test_slots_are_handed_over_in_arrival_order() -> None:
    async def run() -> list[str]:
        gate = AuthGate(2, timeout=5)
        order: list[str] = []

        async def conn(name: str, hold: float) -> None:
            await gate.acquire()
            order.append(name)
            assert gate.held <= 2
            await asyncio.sleep(hold)
            gate.release()

        await asyncio.gather(*(conn(n, 0.02) for n in "abcdef"))
        assert gate.held == 0 and gate.waited == 4
        return order

    assert asyncio.run(run()) == list("abcdef")


def test_a_waiter_gives_up_after_the_timeout_and_takes_nothing() -> None:
    async def run() -> None:
        gate = AuthGate(1, timeout=0.05)
        await gate.acquire()
        with pytest.raises(TimeoutError):
            await gate.acquire()
        assert gate.held == 1
        gate.release()
        await gate.acquire()  # the slot is free again, not lost to the one who left
        assert gate.held == 1

    asyncio.run(run())


def test_a_waiter_outlasts_a_holder_that_stalls_for_the_whole_timeout() -> None:
    """The holder's leg timer starts before the waiter's wait: the waiter must
    still be there when the stalled holder is closed and its slot freed."""
    async def run() -> bool:
        gate = AuthGate(1, timeout=0.1)
        await gate.acquire()
        asyncio.get_running_loop().call_later(0.15, gate.release)  # closed a bit late
        await gate.acquire()
        return gate.held == 1

    assert asyncio.run(run())


def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    async def run() -> None:
        gate = AuthGate(1, timeout=5)
        await gate.acquire()
        first = asyncio.create_task(gate.acquire())
        second = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        first.cancel()
        gate.release()
        await asyncio.wait_for(second, 1)
        assert gate.held == 1

    asyncio.run(run())


def test_growing_the_gate_wakes_waiters_at_once() -> None:
    async def run() -> None:
        gate = AuthGate(1, timeout=5)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        gate.resize(2)
        await asyncio.wait_for(waiter, 1)
        assert gate.held == 2

    asyncio.run(run())


def test_an_empty_gate_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AuthGate(0, timeout=1)
