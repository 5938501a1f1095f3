"""The cost model's splits (agent/costmodel.py), property-based: every split adds up to the
whole exactly, no part is negative, each part is within one micro-unit of its exact share, and
a larger weight never gets less. Window costs add up over time within the rounding."""

from fractions import Fraction

from hypothesis import assume, given
from hypothesis import strategies as st

from meterd.agent.config import Prices, TariffPeriod
from meterd.agent.costmodel import (Cost, DeviceShare, allocate, prompt_share, split_cost,
                                    window_cost)
from tests.strategies import BOUNDED

money = st.one_of(st.integers(0, 20), st.integers(0, 10**12))  # small sums: where rounding bites
weights = st.lists(st.one_of(st.integers(0, 10**9), st.floats(0, 1e9, allow_nan=False)), min_size=1,
                   max_size=12)


@BOUNDED
@given(money, weights)
def test_allocate_adds_up_exactly_and_stays_within_one_of_the_exact_share(total, ws):
    parts = allocate(total, ws)
    assert len(parts) == len(ws)
    exact = [Fraction(w) for w in ws]
    s = sum(exact)
    if s == 0:
        assert parts == [0] * len(ws)
        return
    assert sum(parts) == total
    for part, w in zip(parts, exact):
        assert part >= 0
        assert abs(part - total * w / s) < 1
        if w == 0:
            assert part == 0
    for i in range(len(ws)):  # monotone: more weight, never less money
        for j in range(len(ws)):
            if exact[i] > exact[j]:
                assert parts[i] >= parts[j]


@BOUNDED
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=12), st.data())
def test_a_part_never_exceeds_its_whole_number_weight(ws, data):
    # What split_cost relies on: capex over the row costs leaves every row room for the rest.
    total = data.draw(st.integers(0, sum(ws)))
    parts = allocate(total, ws)
    assert all(0 <= part <= w for part, w in zip(parts, ws))


@BOUNDED
@given(money, st.integers(1, 20))
def test_equal_weights_differ_by_at_most_one(total, n):
    parts = allocate(total, [1] * n)
    assert sum(parts) == total and max(parts) - min(parts) <= 1


usage_rows = st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**7)), min_size=1, max_size=8)
opt_seconds = st.one_of(st.none(), st.floats(0, 1e5, allow_nan=False))


@BOUNDED
@given(money, money, money, usage_rows, opt_seconds, opt_seconds, st.floats(0, 10, allow_nan=False))
def test_a_window_split_adds_up_in_every_direction(capex, energy, opex, rows, prefill, decode, weight):
    cost = Cost(capex, energy, opex)
    usage = [((f"m{i}", ""), p, c) for i, (p, c) in enumerate(rows)]
    prompt, completion, out = split_cost(cost, usage, prefill, decode, weight)
    if sum(p + c for p, c in rows) == 0:
        assert (prompt, completion, out) == (0, 0, [])  # idle: the window keeps its cost
        return
    assert prompt + completion == cost.total_micro
    assert prompt >= 0 and completion >= 0
    assert sum(r.cost_micro for r in out) == cost.total_micro
    assert sum(r.cost_prompt_micro for r in out) == prompt
    assert sum(r.cost_completion_micro for r in out) == completion
    assert sum(r.capex_micro for r in out) == capex
    assert sum(r.energy_micro for r in out) == energy
    assert sum(r.opex_micro for r in out) == opex
    for r in out:
        assert min(r.cost_prompt_micro, r.cost_completion_micro, r.capex_micro, r.energy_micro,
                   r.opex_micro) >= 0
        assert r.capex_micro + r.energy_micro + r.opex_micro == r.cost_micro
        if r.prompt_tokens == 0:
            assert r.cost_prompt_micro == 0
        if r.completion_tokens == 0:
            assert r.cost_completion_micro == 0


@BOUNDED
@given(st.integers(0, 10**9), st.integers(0, 10**9), opt_seconds, opt_seconds, st.floats(0, 10, allow_nan=False))
def test_the_prompt_share_is_a_fraction(p, c, prefill, decode, weight):
    share = prompt_share(p, c, prefill, decode, weight)
    assert 0 <= share <= 1
    if p == 0:
        assert share == 0
    elif c == 0:
        assert share == 1


prices = st.builds(
    Prices,
    capex_per_gpu_micro=st.integers(0, 10**11), capex_per_node_micro=st.integers(0, 10**11),
    residual_fraction=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    depreciation_years=st.sampled_from([1.0, 3.0, 4.0, 5.5]),
    rental_per_gpu_hour_micro=st.sampled_from([0, 0, 2_500_000]),
    energy_per_kwh_micro=st.integers(0, 10**6), pue=st.sampled_from([1.0, 1.3, 1.58]),
    opex_per_node_month_micro=st.integers(0, 10**10),
    tariff=st.sampled_from([(), (TariffPeriod(22 * 60, 6 * 60, 50_000),),
                            (TariffPeriod(9 * 60, 17 * 60, 300_000, ("mon", "tue", "wed")),)]),
)


@BOUNDED
@given(prices, st.booleans(), st.integers(0, 8), st.floats(1.7e9, 1.9e9), st.floats(0.001, 7200),
       st.floats(0, 1), st.floats(0, 1e8))
def test_window_costs_add_up_over_time_within_the_rounding(p, is_gpu, gpus, start, length, cut, energy):
    assume(is_gpu <= (gpus > 0))  # a GPU implies a GPU node
    share = DeviceShare.for_node(is_gpu, gpus)
    mid, end = start + length * cut, start + length
    assume(start < mid < end)
    whole = window_cost(start, end, energy, p, share)
    # the same energy drawn evenly over the two halves
    a = window_cost(start, mid, energy * (mid - start) / (end - start), p, share)
    b = window_cost(mid, end, energy * (end - mid) / (end - start), p, share)
    for k in ("capex_micro", "energy_micro", "opex_micro"):
        assert getattr(whole, k) >= 0
        assert abs(getattr(a, k) + getattr(b, k) - getattr(whole, k)) <= 1, k
    if not share.billable:
        assert whole.capex_micro == whole.opex_micro == 0  # the CPU of a GPU node: energy only
