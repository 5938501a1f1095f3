"""Billing export: the pure aggregation and rendering, then over a real store."""

import csv
import io
import json

import pytest

from meterd.collector.export import billing_rows, money, parse_bound, per_mtok_micro, render_csv, render_json, totals
from meterd.collector.store import Query
from meterd.collector.validation import check_batch
from tests.collector.conftest import T0, make_event


def group(**kw):
    g = {"day": "2026-11-28T00:00:00Z", "node": "n1", "model": "a", "currency": "USD", "windows": 2,
         "prompt_tokens": 1_000_000, "completion_tokens": 500_000, "energy_j": 7.2e6,
         "cost_micro": 3_000_001, "idle_cost_micro": 0}
    g.update(kw)
    return g


def test_money_is_exact_decimal_from_integer_micro_units():
    assert money(61_234) == "0.061234"
    assert money(3_000_001) == "3.000001"
    assert money(10**18 + 1) == "1000000000000.000001"
    assert money(None) is None


def test_cost_per_mtok_is_a_rounded_ratio_of_sums_and_null_without_tokens():
    assert per_mtok_micro(3_000_001, 1_500_000) == 2_000_001  # 2000000.67 -> 2000001
    assert per_mtok_micro(5, 2_000_000) == 2  # 2.5 -> 2 (half-even)
    assert per_mtok_micro(123, 0) is None


def test_billing_rows_carry_energy_in_j_and_kwh_and_cost_in_both_units():
    [row] = billing_rows([group()], "day")
    assert row["period_start"] == "2026-11-28T00:00:00Z" and row["period"] == "day"
    assert row["tokens"] == 1_500_000 and row["energy_kwh"] == 2.0
    assert row["cost_micro"] == 3_000_001 and row["cost"] == "3.000001"
    assert row["cost_per_mtok_micro"] == 2_000_001 and row["cost_per_mtok"] == "2.000001"
    [idle] = billing_rows([group(model=None, prompt_tokens=0, completion_tokens=0, idle_cost_micro=5)], "day")
    assert idle["model"] == "(idle)" and idle["cost_per_mtok"] is None
    with pytest.raises(ValueError):
        billing_rows([group()], "week")


def test_totals_are_integer_sums_per_currency():
    rows = billing_rows([group(cost_micro=1), group(cost_micro=2, model="b"),
                         group(currency="EUR", cost_micro=7)], "day")
    t = {x["currency"]: x for x in totals(rows)}
    assert t["USD"]["cost_micro"] == 3 and t["EUR"]["cost_micro"] == 7
    assert t["USD"]["prompt_tokens"] == 2_000_000 and isinstance(t["USD"]["cost_micro"], int)


def test_renderers():
    rows = billing_rows([group(), group(model=None, energy_j=None)], "day")
    lines = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert lines[0]["cost"] == "3.000001" and lines[1]["energy_kwh"] == ""
    doc = json.loads(render_json(rows, since=T0, until=T0 + 86_400, period="day"))
    assert doc["since"] == "2026-11-28T00:00:00Z" and doc["rows"] == rows and doc["totals"]


def test_parse_bound_takes_dates_and_times_utc_by_default():
    assert parse_bound("2026-11-28") == T0
    assert parse_bound("2026-11-28T01:00:00+01:00") == T0
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_bound("last week")


def test_export_over_a_store_matches_the_raw_windows_exactly(store):
    events = [make_event("n1", "GPU-0", T0 + 60 * i, prompt=1000 + i, completion=7 * i,
                         models=[("a", ""), ("b", "t")] if i % 3 else [("a", "")],
                         capex=50_000 + i) for i in range(200)]
    events += [make_event("n1", "GPU-1", T0 + 60 * i, prompt=0, completion=0) for i in range(50)]
    parsed, errors = check_batch(events)
    assert errors == []
    store.ingest(parsed)
    groups = store.usage(["hour", "node", "model"], Query(since=T0, until=T0 + 86_400))
    rows = billing_rows(groups, "hour")
    [t] = totals(rows)
    assert t["cost_micro"] == sum(e["data"]["cost"]["total_micro"] for e in events)
    assert t["prompt_tokens"] == sum(e["data"]["prompt_tokens"] for e in events)
    assert t["completion_tokens"] == sum(e["data"]["completion_tokens"] for e in events)
    assert t["energy_j"] == pytest.approx(sum(e["data"]["energy_j"] for e in events))
    assert t["idle_cost_micro"] == 50 * 61_234
    assert {r["model"] for r in rows} == {"a", "b", "(idle)"}
    assert {r["period_start"] for r in rows} == {"2026-11-28T00:00:00Z", "2026-11-28T01:00:00Z",
                                                 "2026-11-28T02:00:00Z", "2026-11-28T03:00:00Z"}
    # the window range is half-open on start
    assert store.usage(["node"], Query(since=T0 + 60, until=T0 + 120))[0]["windows"] == 2
