"""Child processes the agent talks to: one reply line at a time, and a bounded stop.

Why: the agent talks line protocols to two kinds of helper children (Samba's
``ntlm_auth``, the Samba worker) from blocking code paths; a child that hangs
or floods must cost a clear error, never a stuck agent or unbounded memory,
and stopping one must not wait for ever.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM (a graceful stop), SIGKILL after ``timeout``; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class LinePipe:
    """Reads ``\\n``-terminated lines from a non-blocking file descriptor."""

    def __init__(self, fd: int, max_line: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.max_line = max_line
        self._buf = bytearray()

    def read_line(self, timeout: float) -> bytes:
        """The next line without its ``\\n``.  Raises TimeoutError, EOFError (the child
        closed its end) or ValueError (a line longer than ``max_line``)."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"no answer within {timeout:g} s")
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise EOFError("the child exited")
                self._buf += chunk
                if len(self._buf) > self.max_line:
                    raise ValueError("over-long line")
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        return line

    @property
    def pending(self) -> bool:
        """Bytes already read beyond the last line (a child out of step)."""
        return bool(self._buf)
