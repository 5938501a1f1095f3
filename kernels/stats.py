"""Pure statistics and energy arithmetic for the runner: plain values in, plain values out.

No clock, no device: the runner turns device samples into :class:`PowerPoint` values and
timings into lists of floats, and these functions do the rest, so tests use plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (mean of the two middle values for an even count)."""
    if not values:
        raise ValueError("median of no values")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def relative_spread(values: Sequence[float]) -> float:
    """Interquartile range over the median (dimensionless; 0.02 means the middle half of the
    repeats lies within 2 % of the median)."""
    m = median(values)
    if m == 0:
        return 0.0
    return (percentile(values, 75) - percentile(values, 25)) / abs(m)


@dataclass(frozen=True)
class Throughput:
    """A kernel's rate: the median over repeats, in work units per second, its spread, and the
    best repeat (what the device did when nothing else got in the way)."""

    median_per_s: float
    spread: float
    repeats: int
    best_per_s: float = 0.0


def throughput(batches: Sequence[tuple[int, float]], work_per_call: float) -> Throughput:
    """Rates from timed batches: each ``(calls, seconds)`` gives ``calls × work / seconds``.

    ``work_per_call`` is in FLOP (or bytes) per call, so the result is FLOP/s (or bytes/s).
    """
    rates = [calls * work_per_call / seconds for calls, seconds in batches if seconds > 0]
    if not rates:
        raise ValueError("no timed batch with a positive duration")
    return Throughput(median(rates), relative_spread(rates), len(rates), max(rates))


# -- energy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerPoint:
    """One device sample reduced to what energy needs.

    ``t_s`` is seconds on the runner's monotonic clock; ``power_w`` watts; ``energy_j`` the
    device's cumulative energy counter in joules (None where it has none); sources as in
    :mod:`probes.readings`.
    """

    t_s: float
    power_w: float | None = None
    power_source: str | None = None
    energy_j: float | None = None
    energy_source: str | None = None


@dataclass(frozen=True)
class Energy:
    """Energy over a kernel's timed run: joules, mean watts, and where the figure came from
    (``counter``, ``integrated`` or ``estimated``)."""

    energy_j: float
    watts: float
    source: str


def counter_delta_j(first: PowerPoint, last: PowerPoint) -> float | None:
    """Joules between two readings of a hardware energy counter; None when either reading has
    no counter or the counter went backwards (a reset: the delta is unknown)."""
    if first.energy_j is None or last.energy_j is None:
        return None
    if first.energy_source != "counter" or last.energy_source != "counter":
        return None
    delta = last.energy_j - first.energy_j
    return delta if delta >= 0 else None


def trapezoid_j(points: Sequence[tuple[float, float]]) -> float:
    """Integral in joules of ``(t_s, watts)`` points by the trapezoid rule (sorted by time)."""
    return sum((w0 + w1) / 2 * (t1 - t0) for (t0, w0), (t1, w1) in zip(points, points[1:]))


def counter_span_j(points: Sequence[PowerPoint]) -> float | None:
    """Joules the counter advanced over ``points``; None unless every point has a counter
    reading and none went backwards (a reset between the ends can leave the last reading above
    the first, so each step is checked)."""
    total = 0.0
    for a, b in zip(points, points[1:]):
        delta = counter_delta_j(a, b)
        if delta is None:
            return None
        total += delta
    return total if len(points) >= 2 else None


def kernel_energy(points: Sequence[PowerPoint]) -> Energy | None:
    """Energy over the span of ``points`` (the first sample taken just before the timed run, the
    last just after).

    The counter's advance where the device has an energy counter (source ``counter``); else power
    integrated by the trapezoid rule (``integrated``; ``estimated`` when any power figure was
    itself an estimate); with a single power figure, that power times the span. None when the
    span is empty or nothing was measured.
    """
    if len(points) < 2:
        return None
    first, last = points[0], points[-1]
    span_s = last.t_s - first.t_s
    if span_s <= 0:
        return None
    delta = counter_span_j(points)
    if delta is not None:
        return Energy(delta, delta / span_s, "counter")
    powered = [p for p in points if p.power_w is not None]
    if not powered:
        return None
    source = "estimated" if any(p.power_source == "estimated" for p in powered) else "integrated"
    if len(powered) == 1:
        watts = powered[0].power_w
        return Energy(watts * span_s, watts, source)
    # Hold the first and last known power out to the ends of the span.
    curve = [(p.t_s, p.power_w) for p in powered]
    if curve[0][0] > first.t_s:
        curve.insert(0, (first.t_s, curve[0][1]))
    if curve[-1][0] < last.t_s:
        curve.append((last.t_s, curve[-1][1]))
    joules = trapezoid_j(curve)
    return Energy(joules, joules / span_s, source)


def per_joule(work: float, energy: Energy | None) -> float | None:
    """Work per joule (FLOP/J or bytes/J) for ``work`` done over ``energy``; None if unknown."""
    if energy is None or energy.energy_j <= 0:
        return None
    return work / energy.energy_j
