"""Shadow storage sizes as administrators write them: ``10G``, ``512MiB``, ``20%``, ``unbounded``.

Why a module of its own: the configuration file, ``remotevss storage resize``
and the agent's limit check must read the same text the same way (as
``vssadmin resize shadowstorage /MaxSize=`` does: bytes with a unit, a
percentage of the volume, or UNBOUNDED).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
_PCT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class SizeLimit:
    """A maximum: ``size`` bytes, or ``percent`` of the filesystem, or neither (unbounded)."""

    size: int | None = None
    percent: float | None = None

    @property
    def unbounded(self) -> bool:
        return self.size is None and self.percent is None

    def resolve(self, filesystem_size: int) -> int | None:
        """Bytes, given the filesystem's size; None = no limit."""
        if self.size is not None:
            return self.size
        if self.percent is not None:
            return int(filesystem_size * self.percent / 100)
        return None

    def __str__(self) -> str:
        if self.size is not None:
            return str(self.size)
        if self.percent is not None:
            return f"{self.percent:g}%"
        return "unbounded"


def parse_limit(text: str | int) -> SizeLimit:
    """``"10G"`` (binary units: K, M, G, T, with or without ``B``/``iB``), ``"20%"``,
    ``"unbounded"``, or a plain number of bytes.  ValueError names the problem."""
    if isinstance(text, bool):
        raise ValueError("a size must be a number of bytes, SIZE[KMGT], PERCENT% or unbounded")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return SizeLimit(size=text)
    t = text.strip().lower()
    if t in ("unbounded", "none", "unlimited", ""):
        return SizeLimit()
    if m := _PCT_RE.match(t):
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise ValueError(f"{text!r}: a percentage must be in (0, 100]")
        return SizeLimit(percent=pct)
    if (m := _SIZE_RE.match(t)) and m.group(2) in _UNITS:
        return SizeLimit(size=int(float(m.group(1)) * _UNITS[m.group(2)]))
    raise ValueError(f"{text!r} is not a size (e.g. 10G, 512MiB, 20%, unbounded)")


def human(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover
