"""Report figures from a fleet whose every sum is known (tests/reports/conftest.py), for each
--by and combinations, read from the real store; and the pure pieces with plain values."""

import pytest

from meterd.reports.aggregate import (IDLE, Ceiling, Cells, ReportError, aggregate, bucket, device_rates,
                               match_profile, parse_by)
from meterd.reports.query import Filters, read_store
from tests.reports.conftest import DAY, HOUR, MON, WEEK

INTS = ("prompt_tokens", "completion_tokens", "tokens", "cost_capex_micro", "cost_energy_micro",
        "cost_opex_micro", "cost_micro", "cost_prompt_micro", "cost_completion_micro", "idle_cost_micro")


def report(store, *by, **filters):
    f = Filters(**filters)
    return aggregate(read_store(store, list(by), f), list(by), model=f.model, tenant=f.tenant)


def table(rep, *fields):
    return {tuple(r[k] for k in rep.by): tuple(r[f] for f in fields) for r in rep.rows}


def assert_totals_are_sums(rep):
    for k in INTS:
        assert rep.totals[k] == sum(r[k] for r in rep.rows), k
    assert rep.totals["energy_j"] == pytest.approx(sum(r["energy_j"] for r in rep.rows))
    t = rep.totals
    assert t["cost_per_mtok"] == t["cost_micro"] / t["tokens"]  # a ratio of sums


FLEET_TOTALS = {"cost_micro": 9300, "prompt_tokens": 4000, "completion_tokens": 7500,
                "idle_cost_micro": 800, "cost_capex_micro": 6400, "cost_energy_micro": 2200,
                "cost_opex_micro": 700}


@pytest.mark.parametrize("by", [["model"], ["device"], ["node"], ["tenant"], ["hour"], ["day"],
                                ["week"], ["model", "device"], ["node", "day"], ["tenant", "week"],
                                ["model", "hour", "node"]])
def test_every_grouping_adds_up_to_the_fleet(fleet, by):
    rep = report(fleet, *by)
    assert_totals_are_sums(rep)
    for k, v in FLEET_TOTALS.items():
        assert rep.totals[k] == v, k
    assert rep.totals["energy_j"] == pytest.approx(32_000.0)
    assert rep.totals["cost_per_mtok"] == pytest.approx(9300 / 11_500)
    assert rep.totals["j_per_token"] == pytest.approx(32_000 / 11_500)
    assert rep.totals["idle_cost_share"] == pytest.approx(800 / 9300)


def test_by_model_shows_idle_cost_as_its_own_row(fleet):
    rep = report(fleet, "model")
    assert table(rep, "prompt_tokens", "completion_tokens", "cost_micro", "idle_cost_micro") == {
        ("a",): (4000, 2500, 3700, 0), ("b",): (0, 5000, 4800, 0), (IDLE,): (0, 0, 800, 800)}
    a, b, idle = rep.rows
    assert a["cost_per_mtok"] == pytest.approx(3700 / 6500)
    assert a["cost_per_mtok_prompt"] == pytest.approx((400 + 500 + 500) / 4000)
    assert a["cost_per_mtok_completion"] == pytest.approx((600 + 700 + 1000) / 2500)
    assert b["cost_per_mtok_prompt"] is None  # no prompt tokens: undefined, never 0
    assert (a["cost_capex_micro"], a["cost_energy_micro"], a["cost_opex_micro"]) == (2320, 1060, 320)
    assert idle["cost_per_mtok"] is None and idle["idle_cost_share"] == 1.0
    assert idle["energy_j"] == pytest.approx(2000.0)
    # utilization weighted by time: a ran in windows at 50, 80 and 30 %
    assert a["util_pct"] == pytest.approx((50 + 80 + 30) / 3)


def test_by_device_merges_same_ids_across_nodes_and_by_node(fleet):
    dev = report(fleet, "device")
    assert table(dev, "cost_micro", "tokens") == {("GPU-0",): (7300, 7500), ("GPU-1",): (2000, 4000)}
    node = report(fleet, "node")
    assert table(node, "cost_micro", "idle_cost_micro", "energy_j") == {
        ("n1",): (3800, 800, 20_000.0), ("n2",): (5500, 0, 12_000.0)}
    n1 = node.rows[0]
    assert n1["util_pct"] == pytest.approx((50 + 0 + 80) * 60 / 180)
    assert n1["idle_cost_share"] == pytest.approx(800 / 3800)
    assert n1["j_per_token"] == pytest.approx(20_000 / 5500)


def test_by_tenant(fleet):
    assert table(report(fleet, "tenant"), "cost_micro", "tokens") == {
        ("",): (7300, 8500), ("acme",): (1200, 3000), (IDLE,): (800, 0)}


def test_by_hour_day_week_use_utc_buckets_and_monday_weeks(fleet):
    assert table(report(fleet, "hour"), "cost_micro") == {
        ("2026-11-23T00:00:00Z",): (1800,), ("2026-11-23T01:00:00Z",): (2000,),
        ("2026-11-24T00:00:00Z",): (4000,), ("2026-11-30T00:00:00Z",): (1500,)}
    assert table(report(fleet, "day"), "cost_micro") == {
        ("2026-11-23T00:00:00Z",): (3800,), ("2026-11-24T00:00:00Z",): (4000,),
        ("2026-11-30T00:00:00Z",): (1500,)}
    assert table(report(fleet, "week"), "cost_micro", "idle_cost_share") == {
        ("2026-11-23T00:00:00Z",): (7800, pytest.approx(800 / 7800)), ("2026-11-30T00:00:00Z",): (1500, 0.0)}


def test_combined_model_device_day(fleet):
    rep = report(fleet, "model", "device", "day")
    assert table(rep, "cost_micro") == {
        ("a", "GPU-0", "2026-11-23T00:00:00Z"): (1000,), ("a", "GPU-0", "2026-11-30T00:00:00Z"): (1500,),
        ("a", "GPU-1", "2026-11-23T00:00:00Z"): (1200,), ("b", "GPU-0", "2026-11-24T00:00:00Z"): (4000,),
        ("b", "GPU-1", "2026-11-23T00:00:00Z"): (800,), (IDLE, "GPU-0", "2026-11-23T00:00:00Z"): (800,)}
    assert_totals_are_sums(rep)


def test_filters_narrow_the_rows_and_the_totals(fleet):
    rep = report(fleet, "device", model="a")
    assert table(rep, "cost_micro") == {("GPU-0",): (2500,), ("GPU-1",): (1200,)}
    assert rep.totals["cost_micro"] == 3700  # a filtered report has no idle row
    assert table(report(fleet, "model", node="n2"), "cost_micro") == {("a",): (1500,), ("b",): (4000,)}
    assert table(report(fleet, "model", tenant="acme"), "cost_micro") == {("a",): (1200,)}
    assert table(report(fleet, "node", device="GPU-1"), "cost_micro") == {("n1",): (2000,)}


def test_a_range_counts_windows_by_their_start(fleet):
    # [00:00:30, 25:00) holds the idle minute at 00:01, the hour-1 window and Tuesday's window.
    rep = report(fleet, "model", since=MON + 30, until=MON + DAY + HOUR)
    assert table(rep, "cost_micro") == {("a",): (1200,), ("b",): (4800,), (IDLE,): (800,)}
    assert_totals_are_sums(rep)


def test_capacity_beside_realized(store):
    from tests.reports.conftest import window

    # 2,000,000 prompt and 1,000,000 completion tokens of Llama 3.1 8B on one GPU in a minute.
    store.commit_windows([window("n1", "GPU-0", MON, capex=60_000, energy=24_000, opex=6_000,
                                 energy_j=40_000.0, util=90.0,
                                 usage=[("meta-llama/Llama-3.1-8B-Instruct", "", 2_000_000, 1_000_000,
                                         30_000, 60_000, 60_000, 24_000, 6_000)])])
    bench = [{"device": "GPU-0", "device_name": None, "kernel": "gemm", "dtype": "bf16", "value": 8e14,
              "unit": "flop/s", "watts": 650.0},
             {"device": "GPU-0", "device_name": None, "kernel": "copy", "dtype": "fp32", "value": 3e12,
              "unit": "bytes/s", "watts": 500.0}]
    store.save_bench("run", "n1", MON - 10, bench, {})
    from meterd.kernels.roofline import BUILTIN_PROFILES, decode_tokens_per_s, prefill_tokens_per_s

    prof = BUILTIN_PROFILES["llama-3.1-8b"]
    prefill = prefill_tokens_per_s(prof, 8e14)
    decode = decode_tokens_per_s(prof, 64, 2048, 8e14, 3e12)
    rate = (60_000 + 6_000) / 60 + 650.0 * 24_000 / 40_000  # micro/s: fixed + full-use watts × price/J
    capacity = rate * (2_000_000 / prefill + 1_000_000 / decode) / 3_000_000
    for by in (["model", "device"], ["device"], ["day"]):
        row = report(store, *by).rows[0]
        assert row["capacity_cost_per_mtok"] == pytest.approx(capacity)
        assert row["cost_per_mtok"] == pytest.approx(90_000 / 3_000_000)
        assert row["realized_over_capacity"] == pytest.approx(row["cost_per_mtok"] / capacity)


def test_parse_by_takes_repeats_and_commas():
    assert parse_by(()) == ["model", "device"]
    assert parse_by(["model,day", "node", "day"]) == ["model", "day", "node"]
    with pytest.raises(ReportError, match="--by month: choose from"):
        parse_by(["month"])


def test_weeks_start_on_monday_utc():
    assert bucket(MON + 3 * DAY + 5, "week") == MON
    assert bucket(MON - 1, "week") == MON - WEEK
    assert bucket(MON + HOUR + 59, "hour") == MON + HOUR


def test_match_profile_and_rates_are_plain_functions():
    names = ["llama-3.1-8b", "llama-3.1-70b", "gpt-oss-120b"]
    assert match_profile("meta-llama/Meta-Llama-3.1-70B-Instruct", names) == "llama-3.1-70b"
    assert match_profile("llama-3.1-8b", names) == "llama-3.1-8b"
    assert match_profile("mistral-7b", names) is None
    assert device_rates([{"device": "d", "cost_capex_micro": 50, "cost_opex_micro": 10,
                          "seconds": 60.0, "cost_energy_micro": 30, "energy_j": 600.0}]) == {"d": (1.0, 0.05)}


def test_unknown_cost_split_stays_unknown_and_uncovered_tokens_get_no_capacity():
    cells = Cells(usage=[
        {"model": "m", "tenant": "", "device": "d", "prompt_tokens": 10, "completion_tokens": 0,
         "cost_micro": 100, "cost_prompt_micro": 100, "cost_completion_micro": 0, "cost_capex_micro": None,
         "cost_energy_micro": None, "cost_opex_micro": None, "idle_cost_micro": 0, "seconds": 60.0,
         "energy_j": 5.0, "util_pct_s": None}], currency="USD", idle_in_usage=True,
        ceilings={"other": {"m": Ceiling(1.0, 1.0, None)}})
    rep = aggregate(cells, ["model"])
    assert rep.rows[0]["cost_capex_micro"] is None and rep.rows[0]["util_pct"] is None
    assert rep.rows[0]["cost_per_mtok"] == 10.0 and rep.rows[0]["capacity_cost_per_mtok"] is None


def test_aggregate_reads_its_cells_and_never_changes_them(fleet):
    import copy

    for by in (["model", "hour"], ["hour", "device"], ["tenant"]):
        cells = read_store(fleet, by, Filters())
        before = copy.deepcopy(cells)
        first = aggregate(cells, by)
        assert cells == before, by
        assert aggregate(cells, by) == first, by  # the same cells give the same report


def test_an_unknown_sum_makes_its_row_and_the_total_unknown_and_the_rest_stays_exact():
    def cell(t, capex, cost):
        return {"node": "n", "device": "d", "t": t, "seconds": 60.0, "energy_j": 10.0, "util_pct_s": 600.0,
                "prompt_tokens": 5, "completion_tokens": 5, "cost_capex_micro": capex,
                "cost_energy_micro": 1, "cost_opex_micro": 1, "cost_micro": cost, "cost_prompt_micro": cost // 2,
                "cost_completion_micro": cost - cost // 2, "idle_cost_micro": 0}

    # Two cells in hour 0 (one split unknown), one in hour 1; a node named like the idle rest
    # still sorts after the others.
    cells = Cells(whole=[cell(MON + 60, None, 12), cell(MON + HOUR + 60, 10, 12), cell(MON + 120, 7, 9)],
                  currency="USD")
    rep = aggregate(cells, ["hour"])
    assert table(rep, "cost_capex_micro", "cost_micro", "seconds") == {
        ("2026-11-23T00:00:00Z",): (None, 21, 120.0), ("2026-11-23T01:00:00Z",): (10, 12, 60.0)}
    assert rep.totals["cost_capex_micro"] is None and rep.totals["cost_micro"] == 33
    cells.whole.append({**cell(MON, 1, 1), "node": IDLE})
    assert [r["node"] for r in aggregate(cells, ["node"]).rows] == ["n", IDLE]


def test_the_idle_row_shows_the_idle_windows_time_and_utilization(store):
    from tests.reports.conftest import window

    store.commit_windows([
        window("n1", "GPU-0", MON, capex=600, energy=100, opex=100, energy_j=1200.0, util=20.0),
        window("n1", "GPU-0", MON + 60, capex=600, energy=200, opex=100, energy_j=2400.0, util=40.0),
        window("n1", "GPU-0", MON + 120, capex=600, energy=300, opex=100, energy_j=6000.0, util=90.0,
               usage=[("a", "", 1000, 500, 400, 600, 600, 300, 100)])])
    # Rollups (daily, hourly) and raw windows (a range under an hour) give the same idle row.
    for by, f in ((["model"], {}), (["model", "hour"], {}), (["tenant"], {}),
                  (["model"], {"since": MON, "until": MON + HOUR - 1})):
        rep = report(store, *by, **f)
        idle = rep.rows[-1]
        assert idle[by[0]] == IDLE and idle["cost_micro"] == idle["idle_cost_micro"] == 1700, (by, f)
        assert idle["seconds"] == 120.0 and idle["util_pct"] == pytest.approx(30.0), (by, f)
        assert idle["energy_j"] == pytest.approx(3600.0) and idle["avg_power_w"] == pytest.approx(30.0)
        assert idle["tokens_per_s"] == 0.0 and idle["cost_per_mtok"] is None
        a = rep.rows[0]
        assert (a["seconds"], a["util_pct"]) == (60.0, pytest.approx(90.0)), (by, f)
        assert rep.totals["seconds"] == 180.0 and rep.totals["util_pct"] == pytest.approx(50.0)
        assert_totals_are_sums(rep)


def test_an_idle_device_with_energy_and_no_cost_keeps_its_idle_row(store):
    # The CPU of a GPU node pays only its energy: at a free tariff (or below a micro-unit) its
    # idle windows cost 0 and still drew joules. By model, they are the (idle) row: dropping it
    # would lose energy from the totals.
    from tests.reports.conftest import window

    store.commit_windows([
        window("n1", "cpu", MON, capex=0, energy=0, opex=0, energy_j=900.0, util=10.0),
        window("n1", "GPU-0", MON, capex=600, energy=100, opex=100, energy_j=6000.0, util=90.0,
               usage=[("a", "", 1000, 500, 400, 400, 600, 100, 100)])])
    for by in (["model"], ["model", "device"], ["tenant"]):
        rep = report(store, *by)
        idle = [r for r in rep.rows if r[by[0]] == IDLE]
        assert len(idle) == 1, (by, rep.rows)
        assert idle[0]["energy_j"] == pytest.approx(900.0) and idle[0]["cost_micro"] == 0, by
        assert idle[0]["seconds"] == 60.0 and idle[0]["cost_per_mtok"] is None, by
        assert rep.totals["energy_j"] == pytest.approx(6900.0), by
        assert_totals_are_sums(rep)
