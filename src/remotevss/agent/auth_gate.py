"""At most ``size`` connections authenticate at once; the others wait on the event loop.

Why: each authenticating connection holds one ``ntlm_auth`` helper (~16 MB)
from its NEGOTIATE to its AUTHENTICATE, so the helper count is the agent's
busy memory (issue 13).  Waiting must not hold a thread: the legs run in the
event loop's default executor (a handful of threads), and legs blocked on a
helper there would starve the legs that would free one.  So the wait is here,
before a leg goes to a thread, and a slot is held per connection until its
authentication ends (established, anonymous, failed or gone).

Single event loop, no locks: acquire and release run on it.
"""

from __future__ import annotations

import asyncio
import collections


class AuthGate:
    def __init__(self, size: int, timeout: float) -> None:
        if size < 1:
            raise ValueError("the auth gate needs at least one slot")
        self.size = size
        #: Seconds a slot holder may wait for its client's next leg: a stalled
        #: client costs others at most this long.  A connection waits for a slot
        #: up to twice as long: with the same limit, the holder's timer (started
        #: first) and the waiter's expire together and a loaded machine closes
        #: the waiter before the stalled holder frees the slot.
        self.timeout = timeout
        self.held = 0
        self.waited = 0  # connections that found every slot taken (for tests, status)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def resize(self, size: int) -> None:
        """A reload: more slots wake waiters now; fewer take effect as holders leave."""
        self.size = size
        self._wake()

    async def acquire(self) -> None:
        """One slot; TimeoutError after ``2 * timeout`` seconds of waiting."""
        if self.held < self.size and not self._waiters:
            self.held += 1
            return
        self.waited += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), 2 * self.timeout)
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot as we gave up: pass it on
            else:
                fut.cancel()
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.held -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held < self.size:
            fut = self._waiters.popleft()
            if not fut.done():
                self.held += 1  # handed over: the waiter owns it from here
                fut.set_result(None)
