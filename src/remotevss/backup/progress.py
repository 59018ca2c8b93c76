"""Progress for long operations: bytes, files, rate and ETA on a terminal, silence elsewhere.

Why throttled and terminal-only: progress goes to stderr at most five times a
second so it costs nothing measurable, and logs or cron mails get only the
final summary (``--json`` prints that as JSON on stdout for scripts).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import TextIO


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Counters the engine bumps; a terminal line redrawn at most every 0.2 s."""

    def __init__(self, label: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.files = 0
        self.bytes = 0
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        self.errors = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()
        self._drawn = False

    def set_total(self, files: int, nbytes: int) -> None:
        self.total_files, self.total_bytes = files, nbytes

    def file_done(self, nbytes: int = 0) -> None:
        self.files += 1
        self.bytes += nbytes
        self.tick()

    def files_done(self, count: int, nbytes: int) -> None:
        """Several files at once (a directory found unchanged)."""
        self.files += count
        self.bytes += nbytes
        self.tick()

    def add_bytes(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.tick()

    def tick(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-6)
        rate = self.bytes / elapsed
        files = f"{self.files}" + (f"/{self.total_files}" if self.total_files is not None else "")
        done = human(self.bytes) + (f"/{human(self.total_bytes)}" if self.total_bytes else "")
        text = f"{self.label} {files} files, {done}, {human(rate)}/s, {_duration(elapsed)}"
        eta = self.eta(elapsed)
        if eta is not None:
            text += f", ETA {_duration(eta)}"
        if self.errors:
            text += f", {self.errors} errors"
        return text

    def eta(self, elapsed: float) -> float | None:
        """Seconds left: the slower of the bytes and the files still to go at the rates
        so far, rounded up to a whole second (never 0 while work remains); None when
        nothing is left or nothing can be estimated yet."""
        guesses = []
        for done, total in ((self.bytes, self.total_bytes), (self.files, self.total_files)):
            if total is not None and 0 < done < total:
                guesses.append((total - done) * elapsed / done)
        if not guesses:
            return None
        return float(max(1, math.ceil(max(guesses))))

    def _draw(self, now: float) -> None:
        with self._lock:
            self.stream.write("\r\x1b[K" + self.line(now))
            self.stream.flush()
            self._drawn = True

    def message(self, text: str) -> None:
        """A line that must be seen (errors): clears the progress line first."""
        with self._lock:
            if self._drawn:
                self.stream.write("\r\x1b[K")
            self.stream.write(text + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
