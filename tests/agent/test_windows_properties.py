"""Window integration (agent/windows.py), property-based: whatever the samples, windows tile
the time exactly, nothing is negative, and what went in (counter energy, trapezoid energy,
tokens) comes out whole."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterd.agent.windows import Tick, Usage, WindowBuilder
from meterd.probes.readings import DeviceSample, Reading
from tests.strategies import BOUNDED

T0 = 1_800_000_000.0  # a multiple of 3600
MAX_GAP_S = 3.0


def _tick(t):
    return Tick(wall=t, mono=t - T0 + 1000.0, boot=t - T0 + 5000.0)


def _sample(t, power, energy):
    return DeviceSample(id="gpu0", kind="gpu", name="g", at=t,
                        power_w=Reading(power, "instant", t) if power is not None else None,
                        energy_j=Reading(energy, "counter", t) if energy is not None else None)


@st.composite
def runs(draw, *, gaps=True, counter=True, power=True, resets=True, missing=True):
    """(window_s, start, [(t, sample or None)], close_at). Steps stay under MAX_GAP_S unless
    ``gaps``; the counter only climbs unless ``resets``."""
    window_s = draw(st.sampled_from([5, 10, 60]))
    start = T0 + draw(st.floats(0, window_s, allow_nan=False))
    t, e = start, draw(st.floats(0, 1e6))
    points = []
    n = draw(st.integers(1, 40))
    for _ in range(n):
        hi = 8.0 if gaps else MAX_GAP_S
        t += draw(st.floats(0.05, hi))
        if resets and draw(st.integers(0, 19)) == 0:
            e = draw(st.floats(0, 100))  # a driver reload: the counter starts again
        else:
            e += draw(st.floats(0, 2000))
        p = draw(st.floats(0, 1000)) if power else None
        ok = not (missing and draw(st.integers(0, 9)) == 0)
        points.append((t, _sample(t, p, e if counter else None) if ok else None))
    close_at = t + draw(st.floats(0, 2 * window_s))
    return window_s, start, points, close_at


def _run(window_s, start, points, close_at, usage=()):
    b = WindowBuilder("gpu0", window_s, start, max_gap_s=MAX_GAP_S)
    out = []
    pending = sorted(usage)
    for t, s in points:
        while pending and pending[0][0] <= t:
            at, p, c = pending.pop(0)
            b.add_usage(at, {("m", ""): Usage(p, c)})
        out += b.add_sample(_tick(t), s)
    for at, p, c in pending:
        b.add_usage(at, {("m", ""): Usage(p, c)})
    return b, out + b.close(close_at)


@BOUNDED
@given(runs())
def test_windows_tile_the_run_and_nothing_is_negative(run):
    window_s, start, points, close_at = run
    b, windows = _run(window_s, start, points, close_at)
    assert windows[0].start == round(start, 3)
    assert windows[-1].end == round(close_at, 3)
    for w, nxt in zip(windows, windows[1:]):
        assert w.end == nxt.start  # contiguous: no time lost, none counted twice
        assert w.end % window_s == 0  # every inner boundary is on the wall-clock grid
    for w in windows:
        assert 0 < w.duration_s <= window_s
        assert w.energy_j is None or w.energy_j >= 0
        # Partial ends are whole milliseconds (the wire's precision): the last sample may lie
        # up to half of one past a shutdown window's end.
        assert 0 <= w.covered_s <= w.duration_s + 5e-4
        assert 0 <= w.gap_s <= w.duration_s + 1e-6  # gap_s is rounded to the microsecond
        assert w.energy_source in (None, "counter", "integrated")
    assert sum(w.duration_s for w in windows) == pytest.approx(round(close_at, 3) - round(start, 3))


@BOUNDED
@given(runs(gaps=False, resets=False, missing=False))
def test_a_climbing_counter_is_billed_exactly_once(run):
    window_s, start, points, close_at = run
    _, windows = _run(window_s, start, points, close_at)
    counter = [s.energy_j.value for _, s in points]
    total = sum(w.energy_j or 0.0 for w in windows)
    assert total == pytest.approx(counter[-1] - counter[0], rel=1e-9, abs=1e-6)
    assert all(w.energy_source in (None, "counter") for w in windows)


@BOUNDED
@given(runs(gaps=False, counter=False, missing=False))
def test_power_alone_integrates_to_the_trapezoid_of_the_whole_run(run):
    window_s, start, points, close_at = run
    _, windows = _run(window_s, start, points, close_at)
    trapezoid = sum((a.power_w.value + b.power_w.value) / 2 * (tb - ta)
                    for (ta, a), (tb, b) in zip(points, points[1:]))
    total = sum(w.energy_j or 0.0 for w in windows)
    assert total == pytest.approx(trapezoid, rel=1e-9, abs=1e-6)
    covered = sum(w.covered_s for w in windows)
    assert covered == pytest.approx(points[-1][0] - points[0][0])


@BOUNDED
@given(runs(), st.lists(st.tuples(st.floats(0, 200), st.integers(0, 10**6), st.integers(0, 10**6)),
                        max_size=20))
def test_every_token_lands_in_exactly_one_window(run, usage):
    window_s, start, points, close_at = run
    usage = [(start + dt, p, c) for dt, p, c in usage]
    _, windows = _run(window_s, start, points, close_at, usage)
    assert sum(w.prompt_tokens for w in windows) == sum(p for _, p, _ in usage)
    assert sum(w.completion_tokens for w in windows) == sum(c for _, _, c in usage)
