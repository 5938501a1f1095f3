import pytest

from meterd.kernels.stats import (
    Energy, PowerPoint, counter_delta_j, kernel_energy, median, per_joule, percentile,
    relative_spread, throughput, trapezoid_j,
)


def test_median_odd_and_even():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        median([])


def test_percentile_interpolates_between_ranks():
    vals = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(vals, 0) == 10.0 and percentile(vals, 100) == 50.0
    assert percentile(vals, 25) == 20.0
    # rank (5-1)*0.1 = 0.4 → 10 + 0.4*(20-10) = 14
    assert percentile(vals, 10) == pytest.approx(14.0)


def test_relative_spread_is_iqr_over_median():
    # q25 = 20, q75 = 40, median 30 → (40-20)/30
    assert relative_spread([10.0, 20.0, 30.0, 40.0, 50.0]) == pytest.approx(20 / 30)
    assert relative_spread([5.0, 5.0, 5.0]) == 0.0


def test_throughput_is_the_median_rate_of_the_batches():
    # batches of (calls, seconds) with 1e9 FLOP per call: rates 2e9/1=2e9, 4e9/1=4e9, 3e9/1=3e9
    t = throughput([(2, 1.0), (4, 1.0), (3, 1.0)], 1e9)
    assert t.median_per_s == 3e9 and t.repeats == 3 and t.best_per_s == 4e9
    # q25 = 2.5e9, q75 = 3.5e9 → spread 1e9 / 3e9
    assert t.spread == pytest.approx(1 / 3)


def test_counter_energy_is_the_delta_and_a_reset_is_unknown():
    a = PowerPoint(0.0, energy_j=100.0, energy_source="counter")
    b = PowerPoint(2.0, energy_j=700.0, energy_source="counter")
    assert counter_delta_j(a, b) == 600.0
    assert counter_delta_j(b, a) is None  # went backwards: a driver reload
    assert counter_delta_j(a, PowerPoint(2.0)) is None


def test_kernel_energy_prefers_the_counter():
    pts = [PowerPoint(0.0, 999.0, "instant", 100.0, "counter"),
           PowerPoint(2.0, 999.0, "instant", 700.0, "counter")]
    assert kernel_energy(pts) == Energy(600.0, 300.0, "counter")


def test_a_reset_between_the_ends_is_seen_even_when_the_last_reading_is_higher():
    pts = [PowerPoint(0.0, 100.0, "instant", 50.0, "counter"),
           PowerPoint(1.0, 100.0, "instant", 5.0, "counter"),  # reset
           PowerPoint(2.0, 100.0, "instant", 105.0, "counter")]
    assert kernel_energy(pts) == Energy(200.0, 100.0, "integrated")


def test_kernel_energy_integrates_power_by_trapezoids_when_the_counter_reset():
    # power 100 W → 300 W over 0..2 s then flat to 3 s: (100+300)/2*2 + 300*1 = 700 J
    pts = [PowerPoint(0.0, 100.0, "instant", 50.0, "counter"),
           PowerPoint(2.0, 300.0, "instant", 10.0, "counter"),
           PowerPoint(3.0, 300.0, "instant", 20.0, "counter")]
    e = kernel_energy(pts)
    assert e.source == "integrated"
    assert e.energy_j == pytest.approx(700.0) and e.watts == pytest.approx(700.0 / 3)


def test_kernel_energy_from_estimates_is_marked_estimated():
    # the end points carry no power: the first known power holds from t=0, the last to t=4
    pts = [PowerPoint(0.0), PowerPoint(1.0, 20.0, "estimated"), PowerPoint(3.0, 40.0, "estimated"),
           PowerPoint(4.0)]
    e = kernel_energy(pts)
    # 20*1 + (20+40)/2*2 + 40*1 = 120 J over 4 s
    assert e == Energy(pytest.approx(120.0), pytest.approx(30.0), "estimated")


def test_kernel_energy_single_power_figure_and_nothing_measured():
    e = kernel_energy([PowerPoint(0.0, 50.0, "average"), PowerPoint(2.0)])
    assert e == Energy(100.0, 50.0, "integrated")
    assert kernel_energy([PowerPoint(0.0), PowerPoint(1.0)]) is None
    assert kernel_energy([PowerPoint(0.0, 50.0, "instant")]) is None
    assert kernel_energy([PowerPoint(1.0, 50.0, "instant"), PowerPoint(1.0, 50.0, "instant")]) is None


def test_trapezoid_and_per_joule():
    assert trapezoid_j([(0.0, 10.0), (1.0, 30.0), (3.0, 30.0)]) == 20.0 + 60.0
    assert per_joule(1e12, Energy(500.0, 250.0, "counter")) == 2e9
    assert per_joule(1e12, None) is None
