"""Reports summed in SQL (read_store's default: agent/store_queries.py grouped_cells) equal the
reports aggregated in Python from the finest cells (grouped=False), key for key, row for row."""

import itertools
import math

import pytest

from meterd.reports.aggregate import aggregate
from meterd.reports.query import Filters, read_store
from tests.reports.conftest import DAY, HOUR, MON, WEEK
from tests.reports.test_query import busy  # noqa: F401 - the fixture

BYS = [["model"], ["device"], ["hour", "device"], ["day"], ["week"], ["model", "hour"], ["tenant", "node"],
       ["model", "tenant", "day"], ["node", "device", "model"], ["hour"], ["week", "model"], ["day", "hour"]]
RANGES = [(None, None), (MON, MON + 3 * DAY), (MON + 37, MON + 2 * DAY + 5 * HOUR + 420),
          (MON + HOUR, MON + DAY + HOUR), (MON + 61, MON + 7 * HOUR + 1)]


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) or isinstance(b[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-9), k
        else:
            assert a[k] == b[k], k


def both(store, by, f):
    cells = read_store(store, by, f)
    # the whole report in SQL, but where a model or tenant filter leaves no idle rest to compute
    assert (cells.table is not None) == (f.model is None and f.tenant is None), (by, f)
    fast = aggregate(cells, by, model=f.model, tenant=f.tenant)
    ref = aggregate(read_store(store, by, f, grouped=False), by, model=f.model, tenant=f.tenant)
    return fast, ref


@pytest.mark.parametrize("by", BYS, ids=lambda b: ",".join(b))
def test_grouped_in_sql_equals_grouped_in_python(busy, by):  # noqa: F811
    for (lo, hi), extra in itertools.product(RANGES, ({}, {"device": "GPU-1"}, {"model": "m-a"}, {"tenant": "t1"})):
        f = Filters(since=lo, until=hi, **extra)
        fast, ref = both(busy, by, f)
        assert [tuple(r[k] for k in by) for r in fast.rows] == [tuple(r[k] for k in by) for r in ref.rows]
        for a, b in zip(fast.rows, ref.rows):
            same(a, b)
        same(fast.totals, ref.totals)


def test_large_tables_take_the_column_path_and_agree(busy, monkeypatch):  # noqa: F811
    from meterd.reports import aggregate as agg

    for by in (["hour", "device"], ["model", "hour"], ["tenant", "day", "device"]):
        small = both(busy, by, Filters())[0]
        monkeypatch.setattr(agg, "NUMPY_FROM_ROWS", 0)
        big, ref = both(busy, by, Filters())
        monkeypatch.undo()
        assert len(big.rows) == len(ref.rows) == len(small.rows) > 10
        for a, b, c in zip(big.rows, ref.rows, small.rows):
            same(a, b)
            same(a, c)
        same(big.totals, ref.totals)


def test_the_fleet_by_every_key_pair(fleet):
    for by in itertools.permutations(["node", "device", "model", "tenant", "hour", "day", "week"], 2):
        fast, ref = both(fleet, list(by), Filters())
        assert len(fast.rows) == len(ref.rows), by
        for a, b in zip(fast.rows, ref.rows):
            same(a, b)
        same(fast.totals, ref.totals)
        assert fast.totals["cost_micro"] == 9300


def test_weeks_start_on_monday_in_sql(fleet):
    rep = aggregate(read_store(fleet, ["week"], Filters()), ["week"])
    assert [r["week"] for r in rep.rows] == ["2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"]
    assert not math.isnan(rep.totals["energy_j"]) and rep.totals["energy_j"] == 32000.0
    assert WEEK == 7 * DAY


def test_the_html_scatter_is_by_device_hour_for_two_weeks_and_by_device_day_beyond(fleet, tmp_path):
    from click.testing import CliRunner

    from meterd.agent.cli import main

    def page(*args):
        out = tmp_path / "r.html"
        r = CliRunner().invoke(main, ["report", "--db", str(fleet.path), "--format", "html", "--output", str(out),
                                      *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return out.read_text()

    assert "Tokens/s against power (device-hours)" in page()  # the fleet's windows span 8 days
    assert "Tokens/s against power (device-hours)" in page("--since", "2026-11-20", "--until", "2026-12-04")
    long = page("--since", "2026-11-01", "--until", "2027-01-01")
    assert "Tokens/s against power (device-days)" in long and long.count("<circle") >= 4
