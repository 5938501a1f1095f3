"""Window integration (pure): device samples and token deltas in, closed windows out.

A :class:`WindowBuilder` follows one device. Windows are aligned to wall-clock boundaries
(``window_s``); the first window after start-up, and the last at shutdown, are partial and start
or end where the agent did. Between two consecutive good samples (no more than ``max_gap_s``
apart) the builder integrates:

- energy: the energy-counter delta where both samples carry a counter; otherwise (no counter,
  or the counter went down: a driver reload) power integrated by the trapezoid rule;
- utilization × time, for a time-weighted mean.

An interval that straddles a window boundary is split by time (linear power, so the trapezoid
split is exact). Time without a good pair of samples is a gap. A wall-clock step (NTP) or a
suspend is flagged, and that interval is treated as a gap, since its wall-clock length is
not to be trusted.

Tokens are attributed to the window that holds the scrape (or push) time: the delta since the
previous scrape ends there. Each usage row carries its cached prompt tokens (a subset of its
prompt tokens) and where its tokens come from (``token_source``: counter, push, histogram,
rounded, with ``error_bound`` tokens of possible error for rounded counts). Time a token source
mapped to the device could not be read is the window's ``token_gap_s`` (flag
``tokens_unavailable``): such a window's tokens are unknown, not zero. Tokens served while the
agent was down reach the first window after it restarts, flagged ``backfill`` with the span
they cover (``backfill_s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from meterd.probes.readings import DeviceSample, Reading

CLOCK_STEP_TOLERANCE_S = 1.0
#: No single device draws more: an energy counter or power reading beyond it is a reading error
#: (a counter that jumped), and that interval is a gap rather than a bill.
MAX_DEVICE_POWER_W = 100_000.0
_SOURCE_RANK = {"counter": 0, "integrated": 1, "estimated": 2}


@dataclass(frozen=True)
class Tick:
    """When a sampling round happened: wall clock, monotonic, and boot time (which, unlike the
    monotonic clock, counts time suspended)."""

    wall: float
    mono: float
    boot: float


_TOKEN_SOURCE_RANK = {"counter": 0, "push": 1, "histogram": 2, "rounded": 3}


def worst_token_source(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if _TOKEN_SOURCE_RANK.get(a, 9) >= _TOKEN_SOURCE_RANK.get(b, 9) else b


@dataclass
class Usage:
    prompt_tokens: int = 0  # every prompt token, cached or not (what usage.prompt_tokens counts)
    completion_tokens: int = 0
    prefill_s: float | None = None
    decode_s: float | None = None
    cached_prompt_tokens: int = 0  # of prompt_tokens, those a prefix cache served
    token_source: str | None = None
    error_bound: int = 0
    owner: str | None = None  # the process owner its tokens came from (``source:<name>``)

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_prompt_tokens += other.cached_prompt_tokens
        self.prefill_s = _add_opt(self.prefill_s, other.prefill_s)
        self.decode_s = _add_opt(self.decode_s, other.decode_s)
        self.token_source = worst_token_source(self.token_source, other.token_source)
        self.error_bound += other.error_bound
        if other.owner is not None and self.owner != other.owner:
            self.owner = other.owner if self.owner is None else "(several)"


def _add_opt(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else a + b


@dataclass
class Window:
    """One device over [start, end). ``energy_j`` is None when no interval could be integrated."""

    device: str
    start: float
    end: float
    energy_j: float | None = None
    energy_source: str | None = None
    covered_s: float = 0.0
    util_pct_s: float = 0.0
    util_covered_s: float = 0.0
    partial: bool = False
    flags: list[str] = field(default_factory=list)
    usage: dict[tuple[str, str], Usage] = field(default_factory=dict)  # (model, tenant) -> Usage
    journal_id: int | None = None  # the last push journal row whose share this window holds
    token_gap_s: float = 0.0  # time a token source of this device could not be read
    backfill_s: float = 0.0  # the agent's downtime whose tokens this window carries
    # Who used the device (agent/attribution.py): {owner: weight} and the span those weights
    # could fill; span 0 means nothing to split by (not a shared-GPU reading)
    busy: dict[str, int] = field(default_factory=dict)
    busy_span: int = 0
    busy_provenance: str | None = None

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    @property
    def gap_s(self) -> float:
        return max(0.0, round(self.duration_s - self.covered_s, 6))

    @property
    def avg_power_w(self) -> float | None:
        if self.energy_j is None or self.covered_s <= 0:
            return None
        return self.energy_j / self.covered_s

    @property
    def util_pct(self) -> float | None:
        return self.util_pct_s / self.util_covered_s if self.util_covered_s > 0 else None

    @property
    def prompt_tokens(self) -> int:
        return sum(u.prompt_tokens for u in self.usage.values())

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens for u in self.usage.values())

    @property
    def cached_prompt_tokens(self) -> int:
        return sum(u.cached_prompt_tokens for u in self.usage.values())

    @property
    def token_source(self) -> str | None:
        out = None
        for u in self.usage.values():
            if u.prompt_tokens or u.completion_tokens:
                out = worst_token_source(out, u.token_source)
        return out

    @property
    def token_error_bound(self) -> int:
        return sum(u.error_bound for u in self.usage.values())

    def flag(self, name: str) -> None:
        if name not in self.flags:
            self.flags.append(name)

    def add_energy(self, joules: float, source: str) -> None:
        self.energy_j = (self.energy_j or 0.0) + joules
        if self.energy_source is None or _SOURCE_RANK[source] > _SOURCE_RANK[self.energy_source]:
            self.energy_source = source


def window_start(t: float, window_s: int) -> float:
    return math.floor(t / window_s) * window_s


@dataclass
class _Point:
    t: float
    tick: Tick
    power: Reading | None
    energy: Reading | None
    util: Reading | None


class WindowBuilder:
    """Integrates one device's samples into windows. Feed it in time order."""

    def __init__(self, device: str, window_s: int, start: float, max_gap_s: float) -> None:
        self.device = device
        self.window_s = window_s
        self.max_gap_s = max_gap_s
        # Milliseconds: the wire carries times to the millisecond and the event id is derived
        # from the start, so the two must agree.
        start = round(start, 3)
        aligned = window_start(start, window_s)
        self.current = Window(device, start, aligned + window_s, partial=start > aligned)
        if start > aligned:
            self.current.flag("startup")
        self._prev: _Point | None = None
        self._t = start  # effective time: never goes backwards
        # Time runs on the boot clock (monotonic, and counting a suspend): effective time is
        # ``tick.boot + self._off``; ``self._drift`` is how far the wall clock is accepted to be
        # from it (0, or behind it after a backward step that could not be followed).
        self._off: float | None = None
        self._drift = 0.0

    def add_usage(self, at: float, usage: dict[tuple[str, str], Usage], journal_id: int | None = None,
                  backfill_s: float = 0.0, lost: bool = False) -> None:
        """Token deltas observed at ``at``: they belong to the open window (``journal_id``: the
        last push journal row they include, consumed when this window commits). ``backfill_s``:
        they include what a server served during this long while the agent was down; ``lost``: a
        server restarted meanwhile, so some of what it served then is lost."""
        for key, u in usage.items():
            self.current.usage.setdefault(key, Usage()).add(u)
        if journal_id is not None:
            self.current.journal_id = max(self.current.journal_id or 0, journal_id)
        if backfill_s > 0:
            self.current.backfill_s = max(self.current.backfill_s, round(backfill_s, 3))
            self.current.flag("backfill")
        if lost:
            self.current.flag("tokens_lost")

    def add_token_gap(self, seconds: float) -> None:
        """A token source of this device could not be read for ``seconds`` up to now."""
        if seconds <= 0:
            return
        w = self.current
        w.token_gap_s = min(w.duration_s, round(w.token_gap_s + seconds, 6))
        w.flag("tokens_unavailable")

    def add_busy(self, at: float, weights: dict[str, int], span_per_us: int, provenance: str) -> None:
        """Who used the device since the previous call: ``weights`` per µs ({owner: SM %, or
        slices}) and ``span_per_us`` (100 %, or the GPU's slices), over the time since then,
        into the open window. A first call, or one after more than ``max_gap_s``, only sets the
        origin: nothing is known of the time before it."""
        prev = getattr(self, "_busy_at", None)
        self._busy_at = at
        if prev is None or not 0 < at - prev <= self.max_gap_s:
            return
        dt_us = int(round((at - prev) * 1e6))
        w = self.current
        for owner, x in weights.items():
            if x > 0:
                w.busy[owner] = w.busy.get(owner, 0) + x * dt_us
        w.busy_span += span_per_us * dt_us
        w.busy_provenance = provenance

    def add_sample(self, tick: Tick, sample: DeviceSample | None) -> list[Window]:
        """One sampling round; ``sample`` None (or not ok) means no reading this round.

        Time is elapsed boot-clock time, not the wall clock: a wall-clock step (NTP, an
        operator) is told apart from a suspend (the boot clock advanced, the monotonic one did
        not). A step closes the open window at the true elapsed time, flagged ``clock_step``; a
        step forward re-aligns the next window to the new wall clock (no windows for time that
        did not pass); a step back cannot be followed without windows overlapping the ones
        already stored, so time goes on from where it was, ahead of the wall clock by the step
        (logged with the flag), until a later step forward closes the difference."""
        closed: list[Window] = []
        prev = self._prev
        ok = sample is not None and sample.state == "ok"
        if self._off is None:
            self._off = max(tick.wall, self._t) - tick.boot
        expected = tick.boot + self._off
        drift = tick.wall - expected
        step = abs(drift - self._drift) > CLOCK_STEP_TOLERANCE_S
        realign = step and drift > CLOCK_STEP_TOLERANCE_S  # the wall clock is ahead: follow it
        if step and not realign:
            self._drift = drift  # behind (or still behind): time stays elapsed time
        # The reading's own time, not the round's: a probe answering late must not stretch or
        # squeeze the interval its counter delta covers.
        read_at = sample.at if ok and sample.at else tick.wall
        lag = read_at - tick.wall
        if abs(lag) > self.max_gap_s:  # a reading stamped across a step: the round's time
            lag = 0.0
        t = max(expected + lag, self._t)
        trusted = True
        if prev is not None:
            d_boot, d_mono = tick.boot - prev.tick.boot, tick.mono - prev.tick.mono
            if d_boot - d_mono > CLOCK_STEP_TOLERANCE_S:
                self.current.flag("suspend")
                trusted = False
        if step:
            self.current.flag("clock_step")
        point = _Point(t, tick, sample.power_w, sample.energy_j, sample.util_pct) if ok else None
        if prev is not None and point is not None and trusted and 0 < t - prev.t <= self.max_gap_s:
            closed += self._integrate(prev, point)
        else:
            closed += self._advance_to(t)
        if realign:
            closed += self._realign(t, tick, drift)
            if point is not None:
                point.t = self._t
        else:
            self._t = t
        self._prev = point
        return closed

    def _realign(self, t: float, tick: Tick, drift: float) -> list[Window]:
        """The wall clock stepped ahead of elapsed time: the open window ends at ``t`` (the
        true time), and the next starts at the new wall-clock time, partial up to the next
        boundary; the time stepped over is in no window."""
        w = self.current
        closed = []
        end = round(t, 3)
        if end > w.start:
            w.end = end
            w.partial = True
            closed.append(w)
        start = round(max(tick.wall, end), 3)
        self.current = Window(self.device, start, window_start(start, self.window_s) + self.window_s, partial=True)
        self.current.flag("clock_step")
        self._off = tick.wall - tick.boot
        self._drift = 0.0
        self._t = start
        return closed

    def close(self, at: float) -> list[Window]:
        """Shutdown at wall time ``at``: windows that ended since the last sample close (their
        tail is a gap), and the open one ends at ``at`` (on the agent's elapsed time), partial.
        A zero-length last window is dropped."""
        at = at - self._drift
        closed = self._advance_to(max(at, self._t))
        w = self.current
        w.end = max(w.start, round(at, 3))
        w.partial = True
        w.flag("shutdown")
        return closed + ([w] if w.end > w.start else [])

    # -- integration ----------------------------------------------------------------------------

    def _advance_to(self, t: float) -> list[Window]:
        closed = []
        while t >= self.current.end:
            closed.append(self._roll())
        return closed

    def _roll(self) -> Window:
        done = self.current
        self.current = Window(self.device, done.end, done.end + self.window_s)
        return done

    def _integrate(self, a: _Point, b: _Point) -> list[Window]:
        dt = b.t - a.t
        energy, source = _interval_energy(a, b, dt)
        p_a = a.power.value if a.power else None
        p_b = b.power.value if b.power else None
        u_a = a.util.value if a.util else None
        u_b = b.util.value if b.util else None
        closed = []
        lo = a.t
        while lo < b.t:
            hi = min(b.t, self.current.end)
            w = self.current
            frac = (hi - lo) / dt
            if energy is not None:
                if source == "counter" or p_a is None or p_b is None:
                    w.add_energy(energy * frac, source)
                else:  # exact trapezoid of linearly interpolated power over [lo, hi]
                    w.add_energy(_lin_integral(a.t, p_a, b.t, p_b, lo, hi), source)
            if u_a is not None and u_b is not None:
                w.util_pct_s += _lin_integral(a.t, u_a, b.t, u_b, lo, hi)
                w.util_covered_s += hi - lo
            w.covered_s += hi - lo
            lo = hi
            if hi >= w.end:
                closed.append(self._roll())
        return closed


def _lin_integral(t0: float, v0: float, t1: float, v1: float, lo: float, hi: float) -> float:
    def at(t: float) -> float:
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return (at(lo) + at(hi)) / 2 * (hi - lo)


def _interval_energy(a: _Point, b: _Point, dt: float) -> tuple[float | None, str]:
    """Energy between two points and its source."""
    if (a.energy is not None and b.energy is not None and a.energy.source == "counter"
            and b.energy.source == "counter" and b.energy.value >= a.energy.value
            and b.energy.value - a.energy.value <= MAX_DEVICE_POWER_W * dt):
        return b.energy.value - a.energy.value, "counter"
    if (a.power is not None and b.power is not None and 0 <= a.power.value <= MAX_DEVICE_POWER_W
            and 0 <= b.power.value <= MAX_DEVICE_POWER_W):
        estimated = "estimated" in (a.power.source, b.power.source)
        return (a.power.value + b.power.value) / 2 * dt, "estimated" if estimated else "integrated"
    return None, "integrated"


def split_evenly(n: int, k: int) -> list[int]:
    """``n`` tokens over ``k`` devices behind one server: integers that sum to ``n``."""
    base, rest = divmod(n, k)
    return [base + (1 if i < rest else 0) for i in range(k)]
