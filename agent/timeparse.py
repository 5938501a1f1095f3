"""Times on the command line: absolute ISO-8601 (``2026-11-27``, ``2026-11-27T12:00Z``) or
relative to now (``90s``, ``15m``, ``24h``, ``7d``, ``2w``), and ``now``. Pure."""

from __future__ import annotations

import re

from meterd.units import DAY, HOUR, MINUTE, WEEK, parse_iso
from meterd.errors import TimeParseError

_UNITS = {"s": 1, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}


def parse_when(text: str, now: float) -> float:
    """Unix seconds for ``text``; relative times count back from ``now``."""
    t = text.strip()
    if t == "now":
        return now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", t)
    if m:
        return now - float(m[1]) * _UNITS[m[2]]
    try:
        return parse_iso(t)
    except ValueError:
        raise TimeParseError(
            f"{text!r} is not a time: use ISO-8601 (2026-11-27 or 2026-11-27T12:00Z) or a span back "
            "from now (30m, 24h, 7d)") from None
