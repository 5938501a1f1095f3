import pytest

from meterd.agent.windows import Tick, Usage, WindowBuilder, split_evenly, window_start
from meterd.probes.readings import DeviceSample, Reading

T0 = 1_800_000_000.0  # a multiple of 60


def tick(t, mono_offset=0.0, boot_offset=0.0):
    return Tick(wall=t, mono=t - T0 + 1000 + mono_offset, boot=t - T0 + 5000 + boot_offset)


def sample(t, power=None, energy=None, util=None, psrc="instant", esrc="counter", state="ok"):
    return DeviceSample(
        id="gpu0", kind="gpu", name="g", at=t, state=state,
        power_w=Reading(power, psrc, t) if power is not None else None,
        energy_j=Reading(energy, esrc, t) if energy is not None else None,
        util_pct=Reading(util, "average", t) if util is not None else None,
    )


def test_counter_deltas_fill_aligned_windows():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=3)
    out = []
    for i in range(21):  # 1 Hz for 20 s, 100 W, counter advances 100 J/s
        out += b.add_sample(tick(T0 + i), sample(T0 + i, 100.0, 5000.0 + 100 * i, util=50))
    assert [(w.start, w.end) for w in out] == [(T0, T0 + 10), (T0 + 10, T0 + 20)]
    for w in out:
        assert w.energy_j == pytest.approx(1000.0)
        assert w.energy_source == "counter"
        assert w.avg_power_w == pytest.approx(100.0)
        assert w.util_pct == pytest.approx(50.0)
        assert w.gap_s == 0 and not w.partial


def test_interval_straddling_a_boundary_is_split_by_time():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=5)
    b.add_sample(tick(T0 + 8), sample(T0 + 8, energy=0.0, power=100))
    (w,) = b.add_sample(tick(T0 + 12), sample(T0 + 12, energy=400.0, power=100))
    # 4 s interval, 400 J: 2 s of it in the first window
    assert w.energy_j == pytest.approx(200.0)
    assert b.current.energy_j == pytest.approx(200.0)


def test_trapezoid_without_counter_is_exact_for_a_ramp_and_says_integrated():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=5)
    b.add_sample(tick(T0 + 8), sample(T0 + 8, power=100.0))
    (w,) = b.add_sample(tick(T0 + 12), sample(T0 + 12, power=300.0))
    # power ramps 100 -> 300 W over 4 s; at the boundary (2 s in) it is 200 W
    assert w.energy_j == pytest.approx((100 + 200) / 2 * 2)  # 300 J
    assert b.current.energy_j == pytest.approx((200 + 300) / 2 * 2)  # 500 J
    assert w.energy_source == "integrated"


def test_estimated_power_makes_the_window_estimated():
    b = WindowBuilder("cpu", 10, T0, max_gap_s=5)
    b.add_sample(tick(T0), sample(T0, power=10.0, psrc="estimated"))
    b.add_sample(tick(T0 + 1), sample(T0 + 1, power=10.0, psrc="estimated"))
    assert b.current.energy_source == "estimated"


def test_counter_reset_inside_a_window_falls_back_to_power_for_that_interval():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=3)
    b.add_sample(tick(T0), sample(T0, 200.0, 9000.0))
    b.add_sample(tick(T0 + 1), sample(T0 + 1, 200.0, 9200.0))  # +200 J counter
    b.add_sample(tick(T0 + 2), sample(T0 + 2, 200.0, 150.0))  # driver reload: counter went down
    b.add_sample(tick(T0 + 3), sample(T0 + 3, 200.0, 350.0))  # +200 J counter again
    w = b.current
    assert w.energy_j == pytest.approx(600.0)  # 200 + 200 (trapezoid) + 200, never negative
    assert w.energy_source == "integrated"  # one interval was not from the counter


def test_gaps_are_counted_and_a_long_gap_closes_empty_windows():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=3)
    b.add_sample(tick(T0), sample(T0, 100.0, 0.0))
    b.add_sample(tick(T0 + 1), None)  # probe failed
    b.add_sample(tick(T0 + 2), sample(T0 + 2, 100.0, 200.0))
    b.add_sample(tick(T0 + 3), sample(T0 + 3, 100.0, 300.0))
    out = b.add_sample(tick(T0 + 25), sample(T0 + 25, 100.0, 2500.0))  # 22 s silence
    assert len(out) == 2
    first, second = out
    assert first.energy_j == pytest.approx(100.0)  # only 2..3 s was a good pair
    assert first.gap_s == pytest.approx(9.0)
    assert second.energy_j is None and second.gap_s == pytest.approx(10.0)


def test_lost_gpu_sample_is_a_gap():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=3)
    b.add_sample(tick(T0), sample(T0, 100.0, 0.0))
    b.add_sample(tick(T0 + 1), sample(T0 + 1, state="lost"))
    b.add_sample(tick(T0 + 2), sample(T0 + 2, state="lost"))
    assert b.current.covered_s == 0 and b.current.energy_j is None


def test_startup_and_shutdown_windows_are_partial():
    b = WindowBuilder("gpu0", 10, T0 + 3.5, max_gap_s=10)
    assert b.current.start == T0 + 3.5 and b.current.partial and "startup" in b.current.flags
    b.add_sample(tick(T0 + 4), sample(T0 + 4, 100.0, 0.0))
    (first,) = b.add_sample(tick(T0 + 10), sample(T0 + 10, 100.0, 600.0))
    assert (first.start, first.end, first.partial) == (T0 + 3.5, T0 + 10, True)
    assert first.energy_j == pytest.approx(600.0)
    assert first.gap_s == pytest.approx(0.5)  # 3.5 .. 4 had no reading yet
    assert not b.current.partial and b.current.start == T0 + 10


def test_shutdown_closes_the_open_window_as_partial():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=3)
    b.add_sample(tick(T0), sample(T0, 100.0, 0.0))
    b.add_sample(tick(T0 + 2), sample(T0 + 2, 100.0, 200.0))
    (w,) = b.close(T0 + 2.5)
    assert (w.start, w.end, w.partial) == (T0, T0 + 2.5, True)
    assert "shutdown" in w.flags
    assert w.gap_s == pytest.approx(0.5)


def test_partial_window_times_are_whole_milliseconds():
    b = WindowBuilder("gpu0", 10, T0 + 3.1234567, max_gap_s=3)
    assert b.current.start == round(T0 + 3.123, 3)
    (w,) = b.close(T0 + 5.9876543)
    assert w.end == round(T0 + 5.988, 3)


def test_shutdown_after_a_boundary_closes_the_full_window_first():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=3)
    b.add_sample(tick(T0 + 8), sample(T0 + 8, 100.0, 0.0))
    full, tail = b.close(T0 + 12)
    assert (full.start, full.end, full.partial) == (T0, T0 + 10, False)
    assert (tail.start, tail.end, tail.partial) == (T0 + 10, T0 + 12, True)
    assert b.close(T0 + 12)[-1].end == T0 + 12


def test_a_clock_step_closes_the_window_at_the_true_time_and_a_suspend_is_not_integrated():
    b = WindowBuilder("gpu0", 60, T0, max_gap_s=3)
    b.add_sample(tick(T0), sample(T0, 100.0, 0.0))
    # NTP steps the wall clock 5 s forward while 1 s passed: the window ends at the 1 s that
    # passed, with its energy; the next starts at the new wall clock
    (w,) = b.add_sample(Tick(T0 + 6, 1001, 5001), sample(T0 + 6, 100.0, 100.0))
    assert (w.start, w.end, w.partial, w.flags) == (T0, T0 + 1, True, ["clock_step"])
    assert w.energy_j == pytest.approx(100.0) and w.gap_s == 0
    assert (b.current.start, b.current.end, b.current.flags) == (T0 + 6, T0 + 60, ["clock_step"])
    # suspend: wall and boot time advance 30 s, the monotonic clock 1 s: real time, not a step
    assert b.add_sample(Tick(T0 + 36, 1002, 5031), sample(T0 + 36, 100.0, 200.0)) == []
    assert b.current.flags == ["clock_step", "suspend"]
    assert b.current.energy_j is None


def test_wall_clock_going_backwards_never_reopens_a_closed_window_nor_hides_time():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=3)
    b.add_sample(tick(T0 + 9), sample(T0 + 9, 100.0, 0.0))
    closed = b.add_sample(tick(T0 + 10), sample(T0 + 10, 100.0, 100.0))
    assert len(closed) == 1
    # the wall clock goes back 9 s while 1 s passes: time goes on from where it was
    assert b.add_sample(Tick(T0 + 2, 1011, 5011), sample(T0 + 2, 100.0, 200.0)) == []
    assert b.current.start == T0 + 10 and b.current.flags == ["clock_step"]
    assert b.current.energy_j == pytest.approx(100.0) and b.current.covered_s == pytest.approx(1.0)
    # and on, a second a second, flagged once
    for i in range(1, 10):
        out = b.add_sample(Tick(T0 + 2 + i, 1011 + i, 5011 + i), sample(T0 + 2 + i, 100.0, 200.0 + 100 * i))
    (w,) = out
    assert (w.start, w.end, w.gap_s) == (T0 + 10, T0 + 20, 0)
    assert w.energy_j == pytest.approx(1000.0) and w.flags == ["clock_step"]
    assert b.current.flags == []
    # shut down at a wall time on the old scale: the tail ends on elapsed time, not before it
    (tail,) = b.close(T0 + 12.5)
    assert (tail.start, tail.end) == (T0 + 20, T0 + 21.5)  # 1.5 s after the last sample


def _run(b, seconds, wall0, mono0, power=300.0, step_at=None, step_s=0.0):
    """``seconds`` of 1 Hz samples at ``power`` W (an energy counter), the wall clock stepped by
    ``step_s`` after ``step_at`` seconds."""
    out = []
    for i in range(seconds + 1):
        wall = wall0 + i + (step_s if step_at is not None and i >= step_at else 0.0)
        out += b.add_sample(Tick(wall, mono0 + i, mono0 + i), sample(wall, power, power * i))
    return out


def test_six_hours_forward_makes_no_phantom_windows_and_bills_only_elapsed_time():
    b = WindowBuilder("gpu0", 1, T0, max_gap_s=3)
    out = _run(b, 120, T0, 1000.0, step_at=60, step_s=6 * 3600.0)
    out += b.close(T0 + 6 * 3600 + 120)
    assert len(out) == 120  # one per elapsed second: not 21,600 more for the step
    assert sum(w.duration_s for w in out) == pytest.approx(120.0)
    assert sum(w.energy_j for w in out) == pytest.approx(120 * 300.0)
    stepped = [w for w in out if "clock_step" in w.flags]
    assert [w.start for w in stepped] == [T0 + 59, T0 + 6 * 3600 + 60]  # the two sides of the step
    assert all(w.start >= T0 + 6 * 3600 for w in out[60:])  # re-aligned to the new wall clock


def test_thirty_seconds_back_holds_no_window_open_and_hides_no_time():
    b = WindowBuilder("gpu0", 1, T0, max_gap_s=3)
    out = _run(b, 120, T0, 1000.0, step_at=60, step_s=-30.0)
    out += b.close(T0 + 120 - 30)
    assert len(out) == 120
    assert all(w.duration_s == pytest.approx(1.0) and w.gap_s == 0 for w in out)
    assert sum(w.energy_j for w in out) == pytest.approx(120 * 300.0)  # every second billed
    starts = [w.start for w in out]
    assert starts == sorted(set(starts))  # no overlap, no window twice
    assert [w.start for w in out if "clock_step" in w.flags] == [T0 + 59]


def test_tokens_go_to_the_open_window():
    b = WindowBuilder("gpu0", 10, T0, max_gap_s=3)
    b.add_usage(T0 + 1, {("m", ""): Usage(10, 5, 0.1, 0.4)})
    b.add_usage(T0 + 2, {("m", ""): Usage(1, 1), ("m", "acme"): Usage(3, 0)})
    w = b.current
    assert (w.prompt_tokens, w.completion_tokens) == (14, 6)
    assert w.usage[("m", "")].prefill_s == pytest.approx(0.1)


def test_split_evenly_and_window_start():
    assert split_evenly(10, 3) == [4, 3, 3]
    assert sum(split_evenly(7, 8)) == 7
    assert window_start(T0 + 59.9, 60) == T0


def test_an_unchanged_energy_counter_is_zero_joules_from_the_counter():
    # A counter that did not move over an interval (it updates coarser than we sample) is 0 J
    # measured, not a reason to integrate power: the next delta holds that energy, and power
    # integrated here as well would bill it twice.
    b = WindowBuilder("gpu0", 60, T0, max_gap_s=3)
    b.add_sample(tick(T0), sample(T0, 100.0, 1000.0))
    b.add_sample(tick(T0 + 1), sample(T0 + 1, 100.0, 1000.0))
    assert b.current.energy_j == 0.0 and b.current.energy_source == "counter"
    b.add_sample(tick(T0 + 2), sample(T0 + 2, 100.0, 1200.0))
    assert b.current.energy_j == pytest.approx(200.0)  # the counter's 200 J, not 100 J more
    assert b.current.energy_source == "counter"


def test_a_suspend_alone_is_a_suspend_not_a_clock_step():
    # Suspended 30 s: wall and boot time agree (+31 s), the monotonic clock did not count it.
    b = WindowBuilder("gpu0", 60, T0, max_gap_s=3)
    b.add_sample(Tick(T0, 1000, 5000), sample(T0, 100.0, 0.0))
    b.add_sample(Tick(T0 + 1, 1001, 5001), sample(T0 + 1, 100.0, 100.0))
    b.add_sample(Tick(T0 + 32, 1002, 5032), sample(T0 + 32, 100.0, 200.0))
    assert b.current.flags == ["suspend"]
    assert b.current.energy_j == pytest.approx(100.0)  # the suspended interval is not integrated
    # and a wall step without a suspend is a clock step only: 1 s passed, the wall clock says 8
    (w,) = b.add_sample(Tick(T0 + 40, 1003, 5033), sample(T0 + 40, 100.0, 300.0))
    assert w.flags == ["suspend", "clock_step"] and w.end == T0 + 33
    assert b.current.flags == ["clock_step"] and b.current.start == T0 + 40