"""The sampler: every probe read each interval, on a monotonic schedule that does not drift.

Probes run concurrently on a small thread pool with a deadline per round, so a slow or hung
probe never delays the others: it misses the round (a gap) and is not started again until its
previous read returns. Failures are logged when a probe's state changes (ok → failing → ok),
not every second.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from meterd.agent.windows import Tick
from meterd.errors import TimedOut

log = logging.getLogger(__name__)


def boottime() -> float:
    """CLOCK_BOOTTIME: like the monotonic clock, but it keeps counting while suspended."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


@dataclass(frozen=True)
class Clocks:
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    boot: Callable[[], float] = boottime
    sleep: Callable[[float], None] = time.sleep

    def tick(self) -> Tick:
        return Tick(self.wall(), self.mono(), self.boot())


class Schedule:
    """Deadlines at start + k × interval on the monotonic clock. A round that overran skips the
    deadlines it missed instead of bursting to catch up (the missed time is a gap)."""

    def __init__(self, interval_s: float, clocks: Clocks) -> None:
        self.interval_s = interval_s
        self.clocks = clocks
        self.origin = clocks.mono()
        self.k = 0

    def wait_next(self, should_stop: Callable[[], bool]) -> bool:
        """Sleep until the next deadline; False if asked to stop meanwhile."""
        self.k += 1
        now = self.clocks.mono()
        due = self.origin + self.k * self.interval_s
        if now > due:  # overran: jump to the next deadline still ahead
            self.k = int((now - self.origin) // self.interval_s) + 1
            due = self.origin + self.k * self.interval_s
        while not should_stop():
            left = due - self.clocks.mono()
            if left <= 0:
                return True
            self.clocks.sleep(min(left, 0.25))
        return False


class ProbeHealth:
    """Logs a probe's failures once when they start and once when they end."""

    def __init__(self) -> None:
        self.failing: dict[str, str] = {}

    def ok(self, name: str) -> None:
        if name in self.failing:
            log.info("probe %s recovered (was: %s)", name, self.failing.pop(name))

    def fail(self, name: str, reason: str) -> None:
        if self.failing.get(name) != reason:
            if name in self.failing:
                log.warning("probe %s still failing, now: %s", name, reason)
            else:
                log.warning("probe %s failing: %s", name, reason)
            self.failing[name] = reason


class ConcurrentReader:
    """Runs named probes concurrently each round, each at most once at a time."""

    def __init__(self, max_workers: int = 8) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="probe")
        self.pending: dict[str, Future] = {}

    def read(self, probes: dict[str, Callable[[], Any]], timeout_s: float) -> dict[str, Any]:
        """name -> result, or the exception it raised, or TimedOut."""
        futures: dict[str, Future] = {}
        for name, fn in probes.items():
            previous = self.pending.get(name)
            if previous is not None and not previous.done():
                continue  # still stuck in an earlier round: do not pile up
            futures[name] = self.pool.submit(fn)
            self.pending[name] = futures[name]
        deadline = time.monotonic() + timeout_s
        out: dict[str, Any] = {}
        for name in probes:
            f = futures.get(name)
            if f is None:
                out[name] = TimedOut(f"{name}: previous read still running")
                continue
            try:
                out[name] = f.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                out[name] = TimedOut(f"{name}: no answer within {timeout_s:.2f} s")
            except Exception as e:  # a probe's failure is data for this round, not a crash
                out[name] = e
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def ticks(schedule: Schedule, should_stop: Callable[[], bool]) -> Iterator[Tick]:
    yield schedule.clocks.tick()
    while schedule.wait_next(should_stop):
        yield schedule.clocks.tick()
