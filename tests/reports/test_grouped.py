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


CLEAN = [
    {},  # every sum 0: every ratio None
    {"prompt_tokens": 3, "completion_tokens": 7, "cost_micro": 10, "seconds": 60.0, "energy_j": 7.5,
     "util_pct_s": 3000.0, "cost_prompt_micro": 4, "cost_completion_micro": 6, "idle_cost_micro": 1},
    {"cost_micro": 5, "idle_cost_micro": 5, "seconds": 30.0, "energy_j": 100.0},  # no tokens
    {"prompt_tokens": 2**53 - 9, "completion_tokens": 8, "cost_micro": 2**53 - 1, "seconds": 0.1,
     "energy_j": 1e-300, "cost_prompt_micro": 2**52 + 3, "cost_energy_micro": -7},
]
EDGE = [
    {"prompt_tokens": 2**53 + 1, "completion_tokens": 3, "cost_micro": 2**60 + 7, "cost_prompt_micro": 2**55 + 3},
    {"prompt_tokens": 1, "cost_micro": None, "cost_prompt_micro": None, "energy_j": 2.0},  # unknown
    {"prompt_tokens": 1, "energy_j": None, "seconds": 1.0},  # unknown energy
]


@pytest.mark.parametrize("numpy_from", [10**9, 0], ids=["python", "numpy"])
@pytest.mark.parametrize("cases", [CLEAN, CLEAN + EDGE], ids=["clean", "edge"])
def test_the_column_figures_are_figures_of_each_row_to_the_bit(monkeypatch, numpy_from, cases):
    """reports/aggregate.py computes a table's figures column by column (in Python, or through
    NumPy for large tables); each row's equal what figures() makes of its sums, exactly: zero
    denominators, None numerators, integers near and past 2**53 (NumPy hands those back)."""
    from meterd.reports import aggregate as agg
    from meterd.units import iso

    monkeypatch.setattr(agg, "NUMPY_FROM_ROWS", numpy_from)
    names = ["model", "hour", *(k for k in agg.SUMS if k not in agg.CAPACITY)]
    base = {k: 0.0 if k in agg.FLOAT_SUMS else 0 for k in names[2:]}  # as SQLite sums them
    rows = [(m, 1_764_547_200 + 3600 * i, *({**base, **c}[k] for k in names[2:]))
            for i, c in enumerate(cases) for m in ("a", None)]
    assert (agg._numpy_columns(names, rows) is None) == (cases is not CLEAN)
    got, total = agg._table_rows((names, rows), ["model", "hour"])
    assert len(got) == len(rows)
    for r, t in zip(got, rows):
        want = agg.figures({**dict(zip(names, t)), "capacity_cost_per_mtok": 0.0, "capacity_tokens": 0.0,
                            "capacity_cost_micro": 0.0})
        want.update(model=agg.IDLE if t[0] is None else t[0], hour=iso(t[1]))
        assert r == want  # == on floats: the same divisions, bit for bit
        assert list(r) == list(want) and all(type(r[k]) is type(want[k]) for k in r)
    i = names.index("prompt_tokens")
    assert total["prompt_tokens"] == sum(t[i] for t in rows) and type(total["prompt_tokens"]) is int
    assert (total["cost_micro"] is None) == (cases is not CLEAN)


def test_rows_are_a_read_only_sequence_of_row_dicts_held_as_columns():
    from meterd.reports.aggregate import Report, Rows

    rows = Rows({"a": [1, 2, 3], "b": ["x", "y", "z"]}, 3)
    assert len(rows) == 3 and rows[0] == {"a": 1, "b": "x"} and rows[-1] == {"a": 3, "b": "z"}
    assert rows[1:] == [{"a": 2, "b": "y"}, {"a": 3, "b": "z"}] and rows[:1] + rows[-1:] == [rows[0], rows[2]]
    assert list(rows) == [rows[0], rows[1], rows[2]] and rows == list(rows) and rows != list(rows)[:2]
    with pytest.raises(IndexError):
        rows[3]
    with pytest.raises(IndexError):
        rows[-4]
    rep = Report(by=["b"], rows=rows, totals={}, currency="USD", per_model=False)
    assert rep.column("a") == [1, 2, 3] and rep.column("a") is rows.columns["a"]  # no row built
    assert Report(by=["b"], rows=list(rows), totals={}, currency="USD", per_model=False).column("b") == ["x", "y", "z"]


@pytest.mark.parametrize("numpy_from", [10**9, 0], ids=["python", "numpy"])
def test_large_reports_come_as_columns_and_agree(busy, monkeypatch, numpy_from):  # noqa: F811
    from meterd.reports import aggregate as agg
    from meterd.reports.aggregate import Rows

    monkeypatch.setattr(agg, "NUMPY_FROM_ROWS", numpy_from)
    for by in (["hour", "device"], ["model", "hour"], ["tenant", "day", "device"]):
        fast, ref = both(busy, by, Filters())
        assert isinstance(fast.rows, Rows) and len(fast.rows) == len(ref.rows) > 10
        for a, b in zip(fast.rows, ref.rows):
            same(a, b)
        same(fast.totals, ref.totals)


def test_a_report_reads_one_snapshot_while_the_agent_commits(busy, monkeypatch):  # noqa: F811
    """A report by model reads its models and its idle rest in two statements; a commit landing
    between them (here more usage cost in the hourly rollups, through another connection) must
    not show: the totals are those of one state of the store, the one before the commit."""
    import sqlite3

    import meterd.agent.store_queries as queries

    by = ["model", "hour"]
    before = aggregate(read_store(busy, by, Filters()), by).totals
    rows, calls = queries._rows, []

    def commit_between(store, sql, args, table=False):
        out = rows(store, sql, args, table)
        calls.append(sql)
        if len(calls) == 1:
            other = sqlite3.connect(busy.path, isolation_level=None, timeout=5)
            other.execute("UPDATE rollups SET cost_micro = cost_micro + 1000 WHERE model != ''")
            other.close()
        return out

    monkeypatch.setattr(queries, "_rows", commit_between)
    got = aggregate(read_store(busy, by, Filters()), by).totals
    assert len(calls) == 2  # the models, then the rest: two statements
    assert got["cost_micro"] == before["cost_micro"]
    monkeypatch.undo()
    assert aggregate(read_store(busy, by, Filters()), by).totals["cost_micro"] == before["cost_micro"]


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
