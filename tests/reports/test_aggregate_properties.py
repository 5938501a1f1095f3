"""Report aggregation (reports/aggregate.py), property-based, over cells made from windows the
real cost model split: for every grouping the totals are the sums of the rows, the same whole
fleet whatever the grouping (the (idle) row holds what no model took), and nothing is negative."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterd.agent.costmodel import Cost, split_cost
from meterd.reports.aggregate import GROUP_KEYS, IDLE, INT_SUMS, Cells, aggregate
from tests.strategies import BOUNDED

MON = 1_795_392_000.0  # 2026-11-23T00:00:00Z, a Monday
USAGE_KEYS = [(m, t) for m in ("a", "b", "c") for t in ("", "acme")]
small_money = st.one_of(st.just(0), st.integers(0, 10**7))


@st.composite
def windows(draw):
    out = []
    for _ in range(draw(st.integers(1, 15))):
        cost = Cost(draw(small_money), draw(small_money), draw(small_money))
        keys = draw(st.lists(st.sampled_from(USAGE_KEYS), unique=True, max_size=3))
        usage = [(k, draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))) for k in keys]
        out.append({
            "node": draw(st.sampled_from(["n1", "n2"])),
            "device": draw(st.sampled_from(["GPU-0", "GPU-1", "cpu"])),
            "t": MON + 60 * draw(st.integers(0, 14 * 24 * 60)),  # two weeks of minutes
            "energy_j": draw(st.one_of(st.just(0.0), st.floats(0, 1e6))),
            "util": draw(st.floats(0, 100)),
            "cost": cost, "usage": usage,
        })
    return out


def cells_of(ws) -> Cells:
    """The cells a store query gives for these windows: one whole cell per window and one usage
    cell per (model, tenant) that served tokens, their cost split by agent/costmodel.py."""
    cells = Cells(currency="USD")
    for w in ws:
        cost: Cost = w["cost"]
        prompt, completion, rows = split_cost(cost, w["usage"], None, None, 0.25)
        tokens = sum(p + c for _, p, c in w["usage"])
        idle = tokens == 0
        base = {"node": w["node"], "device": w["device"], "t": w["t"], "seconds": 60.0,
                "util_pct_s": w["util"] * 60}
        cells.whole.append({
            **base, "energy_j": w["energy_j"],
            "prompt_tokens": sum(p for _, p, _ in w["usage"]),
            "completion_tokens": sum(c for _, _, c in w["usage"]),
            "cost_capex_micro": cost.capex_micro, "cost_energy_micro": cost.energy_micro,
            "cost_opex_micro": cost.opex_micro, "cost_micro": cost.total_micro,
            "cost_prompt_micro": prompt, "cost_completion_micro": completion,
            "idle_cost_micro": cost.total_micro if idle else 0,
            "idle_seconds": 60.0 if idle else 0.0, "idle_util_pct_s": base["util_pct_s"] if idle else 0.0})
        for r in rows:
            if not (r.prompt_tokens or r.completion_tokens):
                continue
            share = r.cost_micro / cost.total_micro if cost.total_micro else 0.0
            cells.usage.append({
                **base, "model": r.key[0], "tenant": r.key[1], "energy_j": w["energy_j"] * share,
                "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "cost_capex_micro": r.capex_micro, "cost_energy_micro": r.energy_micro,
                "cost_opex_micro": r.opex_micro, "cost_micro": r.cost_micro,
                "cost_prompt_micro": r.cost_prompt_micro, "cost_completion_micro": r.cost_completion_micro,
                "idle_cost_micro": 0})
    return cells


groupings = st.lists(st.sampled_from(GROUP_KEYS), min_size=1, max_size=3, unique=True)


@BOUNDED
@given(windows(), groupings)
def test_totals_are_the_rows_sums_and_the_whole_fleet_for_any_grouping(ws, by):
    cells = cells_of(ws)
    rep = aggregate(cells, by)
    for k in INT_SUMS:
        assert rep.totals[k] == sum(r[k] for r in rep.rows), k
    assert rep.totals["energy_j"] == pytest.approx(sum(r["energy_j"] for r in rep.rows), abs=1e-6)
    # The whole fleet, whatever the grouping: per model the (idle) row holds what no model took.
    fleet = {k: sum(c.get(k, 0) for c in cells.whole) for k in INT_SUMS}
    for k in ("cost_micro", "cost_capex_micro", "cost_energy_micro", "cost_opex_micro",
              "prompt_tokens", "completion_tokens", "idle_cost_micro"):
        assert rep.totals[k] == fleet[k], (k, by)
    assert rep.totals["energy_j"] == pytest.approx(sum(w["energy_j"] for w in ws), rel=1e-9, abs=1e-3)
    tokens = fleet["prompt_tokens"] + fleet["completion_tokens"]
    assert rep.totals["cost_per_mtok"] == (fleet["cost_micro"] / tokens if tokens else None)
    for r in rep.rows:
        for k in INT_SUMS:
            assert r[k] >= 0, (k, r)
        assert r["energy_j"] >= -1e-6 and r["seconds"] >= 0
        assert r["idle_cost_micro"] <= r["cost_micro"]
        if rep.per_model and IDLE not in (r.get("model"), r.get("tenant")):
            assert r["idle_cost_micro"] == 0  # a model's row is never idle cost


@BOUNDED
@given(windows())
def test_a_row_per_model_is_the_sum_of_that_models_usage(ws):
    cells = cells_of(ws)
    rep = aggregate(cells, ["model"])
    got = {r["model"]: r["cost_micro"] for r in rep.rows}
    want: dict[str, int] = {}
    for c in cells.usage:
        want[c["model"]] = want.get(c["model"], 0) + c["cost_micro"]
    idle = got.pop(IDLE, 0)
    assert got == {m: v for m, v in want.items()}
    assert idle == sum(c["cost_micro"] for c in cells.whole) - sum(want.values())
