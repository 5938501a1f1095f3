"""Units, money and time, once for every package: money is integer micro-units of the currency,
energy is joules (a kWh is ``J_PER_KWH`` of them), times are Unix seconds in the code and
ISO-8601 UTC with a ``Z`` on the wire and on screen. Pure; imports nothing of ours."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache

#: Micro-units per currency unit: every amount of money is an integer of these.
MICRO = 1_000_000
#: Joules per kilowatt-hour.
J_PER_KWH = 3_600_000
#: Seconds per minute, hour, day and week (UTC: no leap seconds, no daylight saving).
MINUTE, HOUR, DAY, WEEK = 60, 3600, 86400, 7 * 86400


def to_micro(amount: float | int | str | Decimal) -> int:
    """Currency units to integer micro-units, exactly for decimal literals."""
    return int((Decimal(str(amount)) * MICRO).to_integral_value())


@lru_cache(maxsize=65_536)
def iso(ts: float) -> str:
    """UTC ISO-8601 with a Z, to the millisecond when the time has a fraction
    (``2026-11-27T12:00:00Z``, ``2026-11-27T12:00:00.250Z``)."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    spec = "seconds" if dt.microsecond == 0 else "milliseconds"
    return dt.isoformat(timespec=spec).replace("+00:00", "Z")


def parse_iso(text: str, *, naive_is_utc: bool = True) -> float:
    """Unix seconds from an ISO-8601 date or time (``Z`` or an offset). A time without an
    offset is UTC, or a ValueError where ``naive_is_utc`` is false (the wire format names its
    offsets)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(f"{text!r} names no UTC offset")
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
