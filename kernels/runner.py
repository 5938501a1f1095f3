"""The one runner: correctness gate, warm-up, timed repeats until a minimum duration, median
and spread, and energy per kernel.

The clock and the device sampler are injected (a monotonic clock in seconds; a callable that
returns a :class:`probes.readings.DeviceSample` or None), so tests drive it with plain values.
The arithmetic lives in :mod:`kernels.stats`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from meterd.kernels.base import Kernel
from meterd.kernels.stats import Energy, PowerPoint, kernel_energy, per_joule, throughput
from meterd.probes.readings import DeviceSample

Sampler = Callable[[], "DeviceSample | None"]


@dataclass(frozen=True)
class RunnerOptions:
    """How long to run each kernel (seconds).

    ``min_duration_s`` defaults to 1 s: NVML samples power for only part of each 100 ms on
    A100/H100, so a kernel's energy needs about a second to settle. ``batch_s`` is the time
    one timed repeat aims at (default a tenth of the minimum duration, at least 1 ms), so short
    kernels run several calls per repeat and the timer's own overhead stays small.
    """

    min_duration_s: float = 1.0
    warmup_s: float = 0.2
    min_repeats: int = 5
    batch_s: float | None = None
    sample_interval_s: float = 0.1
    seed: int = 12345

    @classmethod
    def quick(cls) -> RunnerOptions:
        """``--quick``: 0.15 s per kernel. Enough for a stable median; energy is rougher."""
        return cls(min_duration_s=0.15, warmup_s=0.05, min_repeats=3)

    def target_batch_s(self) -> float:
        return self.batch_s if self.batch_s is not None else max(1e-3, self.min_duration_s / 10)


@dataclass(frozen=True)
class Measurement:
    """One kernel's result. ``value`` is the median rate in ``unit`` (FLOP/s, op/s or bytes/s),
    ``spread`` its relative interquartile range, ``work`` the FLOP (or bytes) done while energy
    was measured, over ``duration_s`` seconds."""

    kernel: str
    dtype: str
    unit: str
    value: float
    spread: float
    repeats: int
    calls: int
    duration_s: float
    work: float
    energy: Energy | None
    check_error: float
    best: float = 0.0

    @property
    def per_joule(self) -> float | None:
        """FLOP/J (or bytes/J) over the timed run."""
        return per_joule(self.work, self.energy)

    @property
    def per_joule_unit(self) -> str:
        return self.unit.replace("/s", "/J")


def to_point(t_s: float, sample: DeviceSample | None) -> PowerPoint:
    """Reduce a device sample to the figures energy needs (a lost device gives none)."""
    if sample is None or sample.state != "ok":
        return PowerPoint(t_s)
    p, e = sample.power_w, sample.energy_j
    return PowerPoint(
        t_s,
        power_w=p.value if p is not None else None,
        power_source=p.source if p is not None else None,
        energy_j=e.value if e is not None else None,
        energy_source=e.source if e is not None else None,
    )


class Runner:
    """Measures kernels one at a time. ``clock`` is monotonic seconds; ``sampler`` reads the
    kernel's device (None: no energy figures)."""

    def __init__(self, options: RunnerOptions | None = None, clock: Callable[[], float] = time.monotonic,
                 sampler: Sampler | None = None) -> None:
        self.options = options or RunnerOptions()
        self.clock = clock
        self.sampler = sampler

    def _point(self) -> PowerPoint:
        if self.sampler is None:
            return to_point(self.clock(), None)
        # Stamped when the sample returns: both NVML's energy counter and RAPL are read last
        # (and a CPU sample may first sleep until its utilization interval has passed).
        sample = self.sampler()
        return to_point(self.clock(), sample)

    def measure(self, kernel: Kernel) -> Measurement:
        """Check, warm up and time ``kernel``. Raises KernelIncorrect (and reports nothing) when
        its result on fresh random inputs is wrong."""
        check_error = kernel.check(self.options.seed)
        kernel.setup()
        try:
            return self._timed(kernel, check_error)
        finally:
            kernel.teardown()

    def _warm_up(self, kernel: Kernel) -> tuple[int, int]:
        """Run until ``warmup_s`` has passed; returns (next call index, calls per repeat)."""
        opts = self.options
        timer = kernel.timer
        i, calls = 0, 1
        start = self.clock()
        per_call_s = 0.0
        while True:
            seconds = timer.time_calls(kernel.run, i, calls)
            i += calls
            per_call_s = seconds / calls
            if self.clock() - start >= opts.warmup_s and i >= 2:
                break
            calls = min(calls * 2, 1 << 16)
        if per_call_s <= 0:
            return i, 1
        return i, max(1, round(opts.target_batch_s() / per_call_s))

    def _timed(self, kernel: Kernel, check_error: float) -> Measurement:
        opts = self.options
        i, calls = self._warm_up(kernel)
        kernel.timer.synchronize()
        points = [self._point()]
        # With an energy counter the ends carry the figure and samples in between only catch a
        # counter reset: take them five times less often (each leaves the device idle a moment).
        interval_s = opts.sample_interval_s * (5 if points[0].energy_source == "counter" else 1)
        batches: list[tuple[int, float]] = []
        start = last_sample = self.clock()
        while self.clock() - start < opts.min_duration_s or len(batches) < opts.min_repeats:
            batches.append((calls, kernel.timer.time_calls(kernel.run, i, calls)))
            i += calls
            elapsed = self.clock() - start
            # No sample in the last interval: the final one must not wait on it (a CPU sample
            # sleeps until 0.1 s after the previous one), or idle time would enter the energy.
            if (self.sampler is not None and self.clock() - last_sample >= interval_s
                    and elapsed + interval_s <= opts.min_duration_s):
                points.append(self._point())
                last_sample = self.clock()
        points.append(self._point())
        total_calls = sum(c for c, _ in batches)
        rate = throughput(batches, kernel.work_per_call)
        return Measurement(
            kernel=kernel.name, dtype=kernel.dtype, unit=kernel.unit, value=rate.median_per_s,
            spread=rate.spread, repeats=rate.repeats, calls=total_calls,
            duration_s=points[-1].t_s - points[0].t_s, work=total_calls * kernel.work_per_call,
            energy=kernel_energy(points) if self.sampler is not None else None,
            check_error=check_error, best=rate.best_per_s,
        )
