"""`meter report` through click's CliRunner over a real SQLite store: every format's shape, the
default grouping, and one clear line for each error."""

import csv
import io
import json

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.reports.render import FIELDS


def meter(*args):
    return CliRunner().invoke(main, ["report", *args], catch_exceptions=False)


@pytest.fixture
def db(fleet):
    return str(fleet.path)


def test_json_shape_and_totals(db):
    r = meter("--db", db, "--format", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["by"] == ["model", "device"] and out["currency"] == "USD"
    assert set(out["totals"]) >= {"prompt_tokens", "completion_tokens", "energy_j", "cost_micro", "cost_per_mtok"}
    t = out["totals"]
    assert (t["prompt_tokens"], t["completion_tokens"], t["cost_micro"]) == (4000, 7500, 9300)
    assert t["energy_j"] == pytest.approx(32_000.0)
    assert t["cost_per_mtok"] == pytest.approx(9300 / 11_500)
    assert [(row["model"], row["device"]) for row in out["rows"]] == [
        ("a", "GPU-0"), ("a", "GPU-1"), ("b", "GPU-0"), ("b", "GPU-1"), ("(idle)", "GPU-0")]
    assert all(list(row) == ["model", "device", *FIELDS] for row in out["rows"])
    assert sum(row["cost_micro"] for row in out["rows"]) == t["cost_micro"]
    assert "efficiency" in out["notes"]["realized_over_capacity"]


def test_csv_has_one_line_per_row_and_sums_to_the_json_totals(db):
    r = meter("--db", db, "--format", "csv", "--by", "node", "--by", "week")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == ["node", "week", *FIELDS]
    assert [(x["node"], x["week"], x["cost_micro"]) for x in rows] == [
        ("n1", "2026-11-23T00:00:00Z", "3800"), ("n2", "2026-11-23T00:00:00Z", "4000"),
        ("n2", "2026-11-30T00:00:00Z", "1500")]
    assert rows[0]["cost_per_mtok_prompt"] and rows[0]["capacity_cost_per_mtok"] == ""  # unknown: empty


def test_table_is_the_default_view(db):
    r = meter("--db", db, "--since", "2026-11-23", "--until", "2026-11-24")
    assert r.exit_code == 0, r.output
    for text in ("model", "device", "(idle)", "GPU-1", "total", "real÷cap", "money in USD"):
        assert text in r.stdout
    assert "2026-11-30" not in r.stdout


def test_output_file_and_html(db, tmp_path):
    out = tmp_path / "r.json"
    assert meter("--db", db, "--format", "json", "--by", "day", "-o", str(out)).exit_code == 0
    assert json.loads(out.read_text())["totals"]["cost_micro"] == 9300
    table = tmp_path / "r.txt"
    assert meter("--db", db, "--by", "tenant", "-o", str(table)).exit_code == 0
    lines = table.read_text().splitlines()
    assert any(line.split()[:1] == ["(none)"] for line in lines)  # the requests that named no tenant
    assert any(line.split()[:2] == ["total", "4,000"] for line in lines)
    page = tmp_path / "r.html"
    r = meter("--db", db, "--format", "html", "--output", str(page))
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert text.count("<svg") >= 3 and "Cost per Mtok over time" in text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "<script" not in text and "<link" not in text
    assert meter("--db", db, "--format", "html").output.strip().endswith("--format html needs --output FILE")


@pytest.mark.parametrize("args,message", [
    (["--by", "month"], "--by month: choose from node, device, model, tenant, owner, hour, day, week"),
    (["--since", "yesterday"], "'yesterday' is not a time"),
    (["--since", "2026-11-24", "--until", "2026-11-23"], "--since must be before --until"),
    (["--since", "2027-01-01"], "no windows from 2027-01-01T00:00:00Z until now"),
    (["--model", "nope"], "no windows for model 'nope'"),
    (["--token-file", "t"], "--token-file goes with --collector URL"),
])
def test_clear_errors(db, args, message):
    r = meter("--db", db, *args)
    assert r.exit_code != 0
    assert r.output.strip().startswith(f"Error: {message}") and "\n" not in r.output.strip()


def test_empty_and_missing_store(tmp_path):
    from meterd.agent.store import Store

    Store(tmp_path / "empty.db").close()
    r = meter("--db", str(tmp_path / "empty.db"))
    assert r.exit_code == 1 and r.output.strip() == "Error: no windows yet: run `meter agent`"
    r = meter("--db", str(tmp_path / "nope.db"))
    assert r.exit_code == 1 and "no agent store at" in r.output and not (tmp_path / "nope.db").exists()


def test_relative_times(db):
    r = meter("--db", db, "--format", "json", "--since", "100000d", "--by", "week")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["totals"]["cost_micro"] == 9300


def test_a_node_that_served_no_tokens_reports_its_idle_cost(tmp_path):
    """The main job on a machine with no inference server: windows with cost and no tokens."""
    import json as _json

    from click.testing import CliRunner as _Runner

    from meterd.agent.cli import main as _main
    from meterd.agent.config import Prices, to_micro
    from meterd.agent.costmodel import DeviceShare
    from meterd.agent.ledger import price_window
    from meterd.agent.store import Store
    from meterd.agent.windows import Window

    db = tmp_path / "idle.db"
    s = Store(db)
    prices = Prices(rental_per_gpu_hour_micro=to_micro("3.6"), energy_per_kwh_micro=0, opex_per_node_month_micro=0)
    s.commit_windows([price_window(Window("cpu", 1_800_000_000.0 + 5 * i, 1_800_000_005.0 + 5 * i, energy_j=10.0,
                                          energy_source="estimated", covered_s=5.0),
                                   "n", "CPU", prices, DeviceShare.for_node(False, 0), "h") for i in range(3)])
    s.close()
    r = _Runner().invoke(_main, ["report", "--db", str(db), "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = _json.loads(r.output)
    (row,) = doc["rows"]
    assert row["model"] == "(idle)" and row["cost_micro"] == 3 * 5000 and row["idle_cost_share"] == 1.0
    assert doc["totals"]["cost_micro"] == 15000 and doc["totals"]["cost_per_mtok"] is None
    r = _Runner().invoke(_main, ["report", "--db", str(db), "--model", "llama"])
    assert r.exit_code != 0 and "no windows" in r.output
