"""Plain typed samples that every probe returns.

Every figure is a :class:`Reading`: a value, the wall-clock time it was taken (Unix seconds)
and its source, so that a bill never shows an estimate as a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Source = Literal["counter", "instant", "average", "integrated", "estimated"]
SOURCES: tuple[str, ...] = ("counter", "instant", "average", "integrated", "estimated")

DeviceKind = Literal["gpu", "cpu"]
DeviceState = Literal["ok", "lost", "unsupported", "error"]


@dataclass(frozen=True)
class Reading:
    """One measured (or estimated) figure.

    ``value`` is in the unit its field name gives (``power_w`` in watts, ``energy_j`` in joules);
    ``at`` is Unix time in seconds; ``source`` is one of :data:`SOURCES`.
    """

    value: float
    source: Source
    at: float

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown reading source {self.source!r}")


@dataclass
class DeviceSample:
    """What one device reported at one moment.

    ``energy_j`` is a cumulative counter (joules since an arbitrary origin that may reset),
    not energy per interval: windows take its deltas.
    """

    id: str
    kind: DeviceKind
    name: str
    at: float
    state: DeviceState = "ok"
    power_w: Reading | None = None
    energy_j: Reading | None = None
    util_pct: Reading | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
