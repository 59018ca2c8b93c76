"""The backup progress line's ETA: never 0:00:00 while work remains (bytes or files),
none once everything is done, and the files left count as well as the bytes."""

from __future__ import annotations

import io
import re

import pytest

from remotevss.backup.progress import Progress

MB = 1_000_000


def _eta(p: Progress, now: float) -> str | None:
    m = re.search(r"ETA (\d+:\d\d:\d\d)", p.line(now))
    return m.group(1) if m else None


def _progress(files: int, nbytes: int, total_files: int, total_bytes: int) -> Progress:
    p = Progress("backup", stream=io.StringIO(), enabled=False)
    p.start = 1000.0
    p.set_total(total_files, total_bytes)
    p.files, p.bytes = files, nbytes
    return p


@pytest.mark.parametrize("left", [1, 1000, 99_999])  # bytes left at 10 MB/s: < 10 ms
def test_last_moments_of_a_run_never_read_zero(left: int) -> None:
    p = _progress(999, 100 * MB - left, 1000, 100 * MB)
    assert _eta(p, 1010.0) == "0:00:01", p.line(1010.0)


def test_files_left_count_when_the_bytes_are_done() -> None:
    """500 of 1000 files in 10 s, every byte already read (the rest are empty files):
    another 10 s, not 0:00:00."""
    p = _progress(500, 100 * MB, 1000, 100 * MB)
    assert _eta(p, 1010.0) == "0:00:10", p.line(1010.0)


def test_the_slower_of_bytes_and_files_decides() -> None:
    p = _progress(900, 50 * MB, 1000, 100 * MB)  # files say ~1 s, bytes say 10 s
    assert _eta(p, 1010.0) == "0:00:10", p.line(1010.0)


def test_no_eta_when_everything_is_done_or_nothing_is_known() -> None:
    assert _eta(_progress(10, 100 * MB, 10, 100 * MB), 1010.0) is None
    assert _eta(_progress(0, 0, 10, 100 * MB), 1010.0) is None  # no rate yet
    p = Progress("x", stream=io.StringIO(), enabled=False)
    p.start, p.files, p.bytes = 1000.0, 3, 3 * MB
    assert _eta(p, 1010.0) is None  # no totals
