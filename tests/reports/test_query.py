"""Reading cells: the range plan (pure), rollups and raw windows giving the same sums, windows
priced by the agent's own pipeline, and the store's clear errors."""

import random

import pytest

from meterd.agent.config import Prices
from meterd.agent.costmodel import DeviceShare
from meterd.agent.ledger import price_window
from meterd.agent.windows import Usage, Window
from meterd.reports.aggregate import aggregate
from meterd.agent.store_queries import DAY, HOUR, plan
from meterd.reports.query import EmptyStore, Filters, NoData, read_store
from tests.reports.conftest import MON, window


def test_plan_uses_days_then_hours_then_raw_minutes():
    lo, hi = MON + 90, MON + 2 * DAY + 2 * HOUR + 30
    assert plan(lo, hi, DAY) == [
        ("raw", lo, MON + HOUR), ("hour", MON + HOUR, MON + DAY), ("day", MON + DAY, MON + 2 * DAY),
        ("hour", MON + 2 * DAY, MON + 2 * DAY + 2 * HOUR), ("raw", MON + 2 * DAY + 2 * HOUR, hi)]
    assert plan(lo, hi, HOUR) == [("raw", lo, MON + HOUR), ("hour", MON + HOUR, MON + 2 * DAY + 2 * HOUR),
                                  ("raw", MON + 2 * DAY + 2 * HOUR, hi)]
    assert plan(MON, MON + DAY, DAY) == [("day", MON, MON + DAY)]
    assert plan(MON + 10, MON + 20, DAY) == [("raw", MON + 10, MON + 20)]


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """Three days of windows every 7 minutes on two devices, some idle, two models."""
    from meterd.agent.store import Store

    store = Store(tmp_path_factory.mktemp("busy") / "meterd.db")
    rng = random.Random(8)
    rows = []
    for i in range(0, 3 * 24 * 60, 7):
        for dev in ("GPU-0", "GPU-1"):
            capex, energy, opex = rng.randint(500, 900), rng.randint(0, 400), rng.randint(0, 100)
            total = capex + energy + opex
            if rng.random() < 0.2:
                rows.append(window("n1", dev, MON + 60 * i, capex=capex, energy=energy, opex=opex,
                                   energy_j=float(rng.randint(100, 5000)), util=rng.random() * 100))
                continue
            p = rng.randint(0, 5000)
            c = rng.randint(1, 5000)
            ca = total * 2 // 3
            rows.append(window("n1", dev, MON + 60 * i, capex=capex, energy=energy, opex=opex,
                               energy_j=float(rng.randint(100, 5000)), util=rng.random() * 100,
                               usage=[("m-a", "t1", p, c // 2, ca // 3, ca - ca // 3, capex * 2 // 3,
                                       energy * 2 // 3, ca - capex * 2 // 3 - energy * 2 // 3),
                                      ("m-b", "", 0, c - c // 2, 0, total - ca, capex - capex * 2 // 3,
                                       energy - energy * 2 // 3,
                                       total - ca - (capex - capex * 2 // 3) - (energy - energy * 2 // 3))]))
    store.commit_windows(rows)
    yield store
    store.close()


def _direct(store, lo, hi):
    return store.conn.execute(
        "SELECT sum(cost_micro), sum(prompt_tokens), sum(completion_tokens), sum(energy_j) FROM windows "
        "WHERE start >= ? AND start < ?", [lo, hi]).fetchone()


@pytest.mark.parametrize("lo,hi", [(MON, MON + 3 * DAY), (MON + 37, MON + 2 * DAY + 5 * HOUR + 420),
                                   (MON + HOUR, MON + DAY + HOUR), (MON + 61, MON + 3600 * 7 + 1)])
@pytest.mark.parametrize("by", [["model"], ["day", "device"], ["hour"], ["week"], ["tenant", "node"]])
def test_rollups_and_raw_windows_agree_with_a_direct_sum(busy, lo, hi, by):
    rep = aggregate(read_store(busy, by, Filters(since=lo, until=hi)), by)
    cost, prompt, completion, energy = _direct(busy, lo, hi)
    assert (rep.totals["cost_micro"], rep.totals["prompt_tokens"], rep.totals["completion_tokens"]) == (
        cost, prompt, completion)
    assert rep.totals["energy_j"] == pytest.approx(energy)
    assert rep.totals["cost_micro"] == sum(r["cost_micro"] for r in rep.rows)


def test_priced_windows_from_the_agents_pipeline(store):
    prices = Prices()
    share = DeviceShare.for_node(True, 8)
    rows = []
    for i in range(90):
        w = Window("GPU-0", MON + 60 * i, MON + 60 * (i + 1), energy_j=30_000.0 + i, energy_source="counter",
                   covered_s=60.0, util_pct_s=60.0 * 70, util_covered_s=60.0)
        if i % 3:
            w.usage[("llama", "acme")] = Usage(1000 + i, 300, 0.2, 0.8)
            w.usage[("qwen", "")] = Usage(10, 700 + i, None, None)
        rows.append(price_window(w, "n1", "H100", prices, share, "sha256:x"))
    store.commit_windows(rows)
    want_cost = sum(w["cost_micro"] for w, _ in rows)
    want_idle = sum(w["cost_micro"] for w, u in rows if not u)
    for by in (["model"], ["hour"], ["model", "tenant", "hour"]):
        rep = aggregate(read_store(store, by, Filters()), by)
        assert rep.totals["cost_micro"] == want_cost
        assert rep.totals["idle_cost_micro"] == want_idle
        assert rep.totals["tokens"] == sum(w["prompt_tokens"] + w["completion_tokens"] for w, _ in rows)
        assert rep.totals["util_pct"] == pytest.approx(70.0)


def test_empty_store_and_empty_range(store):
    with pytest.raises(EmptyStore, match=r"no windows yet: run `meter agent`"):
        read_store(store, ["model"], Filters())
    store.commit_windows([window("n1", "GPU-0", MON, capex=1, energy=0, opex=0)])
    with pytest.raises(NoData, match="no windows from 2026-11-24T00:00:00Z until now"):
        read_store(store, ["model"], Filters(since=MON + DAY))
    with pytest.raises(NoData, match="model 'x'"):
        read_store(store, ["device"], Filters(model="x"))
