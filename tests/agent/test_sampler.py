import logging
import threading
import time

from meterd.agent.sampler import Clocks, ConcurrentReader, ProbeHealth, Schedule, TimedOut, ticks


class FakeMono:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_schedule_does_not_drift_and_skips_missed_deadlines():
    mono = FakeMono()
    work = {"s": 0.0}

    def sleep(s):
        mono.t += s

    clocks = Clocks(wall=lambda: mono.t + 1e9, mono=mono, boot=mono, sleep=sleep)
    sched = Schedule(1.0, clocks)
    seen = []
    for tick in ticks(sched, lambda: len(seen) >= 6):
        seen.append(tick.mono)
        mono.t += 0.3 if len(seen) != 3 else 2.5  # each round takes 0.3 s; the third overruns
    # deadlines stay on the origin's grid (100, 101, ...) whatever each round cost; the overrun
    # round (102 -> 104.5) skips 103 and 104 instead of bursting
    assert seen == [100.0, 101.0, 102.0, 105.0, 106.0, 107.0]


def test_slow_probe_does_not_block_the_others_and_is_not_piled_up():
    reader = ConcurrentReader()
    release = threading.Event()
    calls = {"slow": 0}

    def slow():
        calls["slow"] += 1
        release.wait(5)
        return "late"

    try:
        t0 = time.monotonic()
        out = reader.read({"fast": lambda: 1, "slow": slow, "bad": lambda: 1 / 0}, timeout_s=0.2)
        assert time.monotonic() - t0 < 1.0
        assert out["fast"] == 1 and isinstance(out["slow"], TimedOut) and isinstance(out["bad"], ZeroDivisionError)
        out = reader.read({"fast": lambda: 2, "slow": slow}, timeout_s=0.1)
        assert out["fast"] == 2 and isinstance(out["slow"], TimedOut)
        assert calls["slow"] == 1  # still running: not started a second time
    finally:
        release.set()
        reader.close()


def test_probe_health_logs_on_state_change_only(caplog):
    h = ProbeHealth()
    with caplog.at_level(logging.INFO, logger="meterd.agent.sampler"):
        for _ in range(5):
            h.fail("tokens:vllm", "connection refused")
        h.ok("tokens:vllm")
        h.ok("tokens:vllm")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["probe tokens:vllm failing: connection refused",
                    "probe tokens:vllm recovered (was: connection refused)"]
