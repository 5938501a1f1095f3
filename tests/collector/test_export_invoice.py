"""`meter collector export --by tenant,model --period month`: an invoice table whose money equals
the sum of the meterd.usage.v1 events of the same windows exactly."""

import csv
import io
import json

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.agent.events import window_event
from meterd.agent.store import Store
from meterd.agent.usage_events import usage_events
from meterd.collector.export import INVOICE_COLUMNS, parse_by
from meterd.collector.store import open_store
from meterd.collector.validation import check_batch
from tests.agent.billing_seed import seed

T0 = 1_800_000_000.0  # 2027-01-15


@pytest.fixture
def stores(tmp_path, db):
    """The agent's windows, ingested by a collector on each backend (SQLite, PostgreSQL)."""
    agent = Store(tmp_path / "agent.db")
    seed(agent, 30, T0)
    windows = [(w, agent.usage_of(w["id"])) for w in agent.windows()]
    agent.close()
    collector = open_store(db)
    parsed, errors = check_batch([window_event(w, u) for w, u in windows])
    assert errors == []
    collector.ingest(parsed)
    collector.close()
    return db, windows


def export(db, *args):
    r = CliRunner().invoke(main, ["collector", "export", "--db", str(db), "--since", "2027-01-01",
                                  "--until", "2027-02-01", *args])
    assert r.exit_code == 0, r.output
    return r.stdout


def test_invoice_by_tenant_and_model_equals_the_usage_events_exactly(stores):
    db, windows = stores
    doc = json.loads(export(db, "--by", "tenant,model", "--period", "month", "--format", "json"))
    want: dict[tuple, dict] = {}
    for w, u in windows:
        for e in usage_events(w, u):
            d = e["data"]
            key = ("(idle)", "(idle)") if d["kind"] == "idle" else (d["tenant"], d["model"])
            s = want.setdefault(key, {"cost_micro": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                      "cached_prompt_tokens": 0,
                                      "cost_prompt_micro": 0, "cost_completion_micro": 0, "energy_j": 0.0})
            for k in s:
                s[k] += d[k]
    got = {(r["tenant"], r["model"]): r for r in doc["rows"]}
    assert set(got) == set(want)
    for key, s in want.items():
        r = got[key]
        for k in ("cost_micro", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_prompt_micro",
                  "cost_completion_micro"):
            assert r[k] == s[k], (key, k)
        assert r["energy_j"] == pytest.approx(s["energy_j"], abs=0.01)
        assert r["period_start"] == "2027-01-01T00:00:00Z"
    assert doc["totals"][0]["cost_micro"] == sum(w["cost_micro"] for w, _ in windows)
    assert got[("team-a", "llama-3-8b")]["cached_prompt_tokens"] > 0
    untenanted = got[("", "qwen-7b")]
    assert untenanted["cost_per_mtok_micro"] == round(untenanted["cost_micro"] * 1e6 / untenanted["tokens"])
    assert got[("(idle)", "(idle)")]["tokens"] == 0 and got[("(idle)", "(idle)")]["cost_per_mtok"] is None


def test_invoice_csv_has_the_invoice_columns(stores):
    db, windows = stores
    rows = list(csv.DictReader(io.StringIO(export(db, "--by", "tenant,model", "--period", "month"))))
    assert list(rows[0]) == ["period", "period_start", "tenant", "model", *INVOICE_COLUMNS]
    assert sum(int(r["cost_micro"]) for r in rows) == sum(w["cost_micro"] for w, _ in windows)
    assert all(r["energy_kwh"] for r in rows)
    # the default breakdown keeps today's columns
    default = list(csv.DictReader(io.StringIO(export(db))))
    assert list(default[0])[:4] == ["period", "period_start", "node", "model"]


def test_bad_by_is_one_clear_line(stores):
    db, _ = stores
    r = CliRunner().invoke(main, ["collector", "export", "--db", str(db), "--since", "2027-01-01",
                                  "--until", "2027-02-01", "--by", "tenant,gpu"])
    assert r.exit_code == 1 and "--by 'tenant,gpu': expected a comma-separated list of node, device, model, tenant" in r.output
    with pytest.raises(ValueError, match="named twice"):
        parse_by("model,model")
