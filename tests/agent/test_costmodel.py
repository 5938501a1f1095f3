from fractions import Fraction

import pytest

from meterd.agent.config import Prices, TariffPeriod, to_micro
from meterd.agent.costmodel import (
    Cost, DeviceShare, SECONDS_PER_YEAR, allocate, capex_micro_per_s, cost_per_mtok,
    energy_cost_micro, opex_micro_per_s, price_micro_per_kwh_at, split_cost, tariff_segments, window_cost,
)

GPU_OF_8 = DeviceShare.for_node(device_is_gpu=True, gpus_on_node=8)
MIDNIGHT = 1_800_000_000 - 1_800_000_000 % 86400  # a UTC midnight (a Friday)


def test_capex_rate_by_hand():
    p = Prices(capex_per_gpu_micro=to_micro(30000), capex_per_node_micro=to_micro(80000),
               residual_fraction=0.1, depreciation_years=4)
    # (30,000 + 80,000/8) x 0.9 = 36,000 USD over 4 x 365.25 days
    expected = Fraction(36_000 * 10**6) / (4 * SECONDS_PER_YEAR)
    assert capex_micro_per_s(p, GPU_OF_8) == expected
    assert float(expected) == pytest.approx(285.192848, rel=1e-6)
    # the CPU on a GPU node carries no capex, on a CPU-only node it carries the node
    assert capex_micro_per_s(p, DeviceShare.for_node(False, 8)) == 0
    assert capex_micro_per_s(p, DeviceShare.for_node(False, 0)) == Fraction(72_000 * 10**6, 1) / (4 * SECONDS_PER_YEAR)


def test_rental_replaces_capex():
    p = Prices(rental_per_gpu_hour_micro=to_micro("3.60"))
    assert capex_micro_per_s(p, GPU_OF_8) == 1000  # 3.6 USD/h = 1000 micro-USD/s


def test_opex_shared_by_gpus():
    p = Prices(opex_per_node_month_micro=to_micro(2629.8))  # one month = 2,629,800 s
    assert opex_micro_per_s(p, GPU_OF_8) == Fraction(1000, 8)


def test_window_cost_by_hand():
    p = Prices(rental_per_gpu_hour_micro=to_micro("3.6"), energy_per_kwh_micro=to_micro("0.36"), pue=1.5,
               opex_per_node_month_micro=0)
    c = window_cost(MIDNIGHT, MIDNIGHT + 60, 36_000.0, p, GPU_OF_8)
    # capex 1000/s x 60; energy 36,000 J x 1.5 / 3.6e6 kWh x 360,000 micro/kWh = 5,400
    assert c == Cost(capex_micro=60_000, energy_micro=5_400, opex_micro=0)
    assert c.total_micro == 65_400


def test_unknown_energy_costs_nothing_but_time_still_costs():
    p = Prices(rental_per_gpu_hour_micro=to_micro("3.6"))
    c = window_cost(MIDNIGHT, MIDNIGHT + 10, None, p, GPU_OF_8)
    assert c.energy_micro == 0 and c.capex_micro == 10_000


def test_time_of_use_boundary_inside_a_window():
    p = Prices(energy_per_kwh_micro=to_micro("0.10"), pue=1.0,
               tariff=(TariffPeriod(17 * 60, 21 * 60, to_micro("0.30")),))
    start = MIDNIGHT + 17 * 3600 - 30  # 16:59:30 -> 17:00:30
    segs = tariff_segments(start, start + 60, p)
    assert segs == [(start, start + 30, 100_000), (start + 30, start + 60, 300_000)]
    # 3.6e6 J = 1 kWh spread evenly: half at 0.10, half at 0.30
    assert energy_cost_micro(3_600_000, start, start + 60, p) == 200_000


def test_tariff_wrapping_midnight_and_days():
    night = TariffPeriod(22 * 60, 6 * 60, to_micro("0.05"), days=("fri",))
    p = Prices(energy_per_kwh_micro=to_micro("0.20"), tariff=(night,))
    fri = MIDNIGHT  # 1_800_000_000 is a Friday in UTC
    assert price_micro_per_kwh_at(fri + 23 * 3600, p) == 50_000  # Friday 23:00
    assert price_micro_per_kwh_at(fri + 86400 + 3 * 3600, p) == 50_000  # Saturday 03:00, Friday's night
    assert price_micro_per_kwh_at(fri + 3 * 3600, p) == 200_000  # Friday 03:00 belongs to Thursday's night
    assert price_micro_per_kwh_at(fri + 12 * 3600, p) == 200_000


def test_tariff_in_a_local_timezone():
    p = Prices(energy_per_kwh_micro=1, tariff_timezone="America/New_York",
               tariff=(TariffPeriod(0, 60, 2),))
    # 00:30 in New York on that day is 05:30 UTC (EST, UTC-5)
    assert price_micro_per_kwh_at(MIDNIGHT - 86400 * 0 + 5 * 3600 + 1800, p) == 2


def test_allocate_sums_exactly():
    assert allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert allocate(10, [0, 0]) == [0, 0]
    parts = allocate(1_000_003, [0.1, 0.7, 0.2])
    assert sum(parts) == 1_000_003 and parts == [100_000, 700_002, 200_001]


def test_split_by_prefill_decode_time():
    cost = Cost(60_000, 5_400, 0)
    prompt, completion, rows = split_cost(cost, [(("m", ""), 1000, 500)], prefill_s=1.0, decode_s=3.0,
                                          prompt_token_weight=0.25)
    assert (prompt, completion) == (16_350, 49_050)  # 1/4 of 65,400 by time
    assert rows[0].cost_micro == 65_400


def test_split_by_weight_and_across_tenants():
    cost = Cost(capex_micro=900, energy_micro=90, opex_micro=10)  # 1000 in all
    usage = [(("m", "a"), 300, 100), (("m", "b"), 100, 100)]
    prompt, completion, rows = split_cost(cost, usage, None, None, prompt_token_weight=0.5)
    # weighted prompt 0.5 x 400 = 200 vs 200 completion: half each
    assert (prompt, completion) == (500, 500)
    a, b = rows
    assert (a.cost_prompt_micro, b.cost_prompt_micro) == (375, 125)  # 300:100
    assert (a.cost_completion_micro, b.cost_completion_micro) == (250, 250)
    assert a.cost_micro + b.cost_micro == 1000
    assert a.capex_micro + b.capex_micro == 900 and a.energy_micro + b.energy_micro == 90
    assert a.opex_micro + b.opex_micro == 10


def test_window_with_no_tokens_keeps_its_cost_and_has_no_cost_per_mtok():
    prompt, completion, rows = split_cost(Cost(100, 10, 1), [], None, None, 0.25)
    assert (prompt, completion, rows) == (0, 0, [])
    assert cost_per_mtok(111, 0) is None
    assert cost_per_mtok(2_000_000, 1_000_000) == 2.0  # 2 USD for a million tokens


def test_no_usage_row_gets_a_negative_opex_from_two_roundings():
    # capex 1 and energy 1 over two equal rows: each split alone gives its unit to the first
    # row, which would then hold 2 of its 1 micro-unit and an opex of -1.
    _, _, rows = split_cost(Cost(1, 1, 0), [(("a", ""), 0, 1), (("b", ""), 0, 1)], None, None, 0.25)
    assert [(r.cost_micro, r.capex_micro, r.energy_micro, r.opex_micro) for r in rows] == [
        (1, 1, 0, 0), (1, 0, 1, 0)]


def test_cached_prompt_tokens_weigh_cached_prompt_token_weight_of_a_prompt_token():
    from meterd.agent.costmodel import Cost, prompt_share, split_cost

    # 1000 prompt tokens of which 900 cached at 0.1: 190 prompt-token equivalents, weight 1 : 1
    assert prompt_share(1000, 190, None, None, 1.0, 900, 0.1) == Fraction(1, 2)
    assert prompt_share(1000, 190, None, None, 1.0) == Fraction(1000, 1190)  # no cache: every token
    # time-based splits already leave out what a cache served: the weight does not apply
    assert prompt_share(1000, 190, 0.25, 0.75, 1.0, 900, 0.1) == Fraction(1, 4)
    cost = Cost(capex_micro=10_000, energy_micro=0, opex_micro=0)
    prompt, completion, rows = split_cost(cost, [("a", 1000, 0, 900), ("b", 100, 0, 0)], None, None, 1.0, 0.1)
    assert (prompt, completion) == (10_000, 0)
    # a's 1000 tokens (900 cached) weigh 190, b's 100 weigh 100
    assert [r.cost_prompt_micro for r in rows] == [6552, 3448] and [r.cached_prompt_tokens for r in rows] == [900, 0]
