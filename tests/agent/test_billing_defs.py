"""The ready-made billing definitions in deploy/: OpenMeter's meters (YAML parsed, every JSONPath
resolving on a real usage event, summed as OpenMeter would), Lago's billable metrics and
Stripe's meters matching the agent config snippets beside them."""

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from meterd.agent.config import parse_config
from meterd.agent.sinks import sink_for
from meterd.agent.store import Store
from meterd.agent.usage_events import BILLABLE_FIELDS, usage_events
from tests.agent.billing_seed import seed
from tests.fakes.billing import FakeOpenMeter, jsonpath

DEPLOY = Path(__file__).parents[2] / "deploy"
T0 = 1_800_000_000.0


@pytest.fixture
def events(tmp_path):
    s = Store(tmp_path / "m.db")
    try:
        seed(s, 4, T0)
        yield [e for w in s.windows() for e in usage_events(w, s.usage_of(w["id"]))]
    finally:
        s.close()


def meters():
    doc = yaml.safe_load((DEPLOY / "openmeter" / "meters.yaml").read_text())
    return doc["meters"]


def test_every_openmeter_jsonpath_resolves_on_real_usage_events(events):
    ms = meters()
    slugs = {m["slug"] for m in ms}
    for want in ("meterd_prompt_tokens", "meterd_completion_tokens", "meterd_cached_prompt_tokens",
                 "meterd_cost_micro", "meterd_energy_j"):
        assert want in slugs
    for m in ms:
        assert m["eventType"] == "meterd.usage.v1"
        assert m["aggregation"] in ("SUM", "COUNT", "MAX")
        assert {"model", "tenant"} <= set(m["groupBy"])
        for e in events:
            v = jsonpath(e["data"], m["valueProperty"])
            assert isinstance(v, (int, float)) and not isinstance(v, bool), (m["slug"], v)
            for p in m["groupBy"].values():
                assert isinstance(jsonpath(e["data"], p), str), (m["slug"], p)


def test_the_meters_sum_to_the_events_totals(events):
    with FakeOpenMeter() as om:
        om.events.extend(events)
        for m in meters():
            field = m["valueProperty"][2:]
            got = om.meter(m)
            assert sum(got.values()) == pytest.approx(sum(e["data"][field] for e in events), rel=1e-12)
        cost = next(m for m in meters() if m["slug"] == "meterd_cost_micro")
        total = sum(om.meter(cost).values())
        assert isinstance(total, int) and total == sum(e["data"]["cost_micro"] for e in events)


@pytest.mark.parametrize("sink, defs, key", [("lago", "billable_metrics.json", "code"),
                                              ("stripe", "meters.json", "event_name")])
def test_lago_and_stripe_definitions_match_the_agent_snippets(sink, defs, key, events):
    made = json.loads((DEPLOY / sink / defs).read_text())
    names = {d[key] for d in made}
    snippet = tomllib.loads((DEPLOY / sink / "meterd.toml").read_text())
    config = parse_config(snippet)
    assert config.ship_sink == sink
    assert set(config.ship_metrics.values()) == names  # every metric defined is one the agent sends
    assert set(config.ship_metrics) <= set(BILLABLE_FIELDS)
    if sink == "lago":
        for d in made:  # the property each sum_agg metric sums is a field of every usage event
            assert d["aggregation_type"] == "sum_agg" and all(d["field_name"] in e["data"] for e in events)
    else:
        for d in made:
            assert d["default_aggregation[formula]"] == "sum"
            assert d["customer_mapping[event_payload_key]"] == "stripe_customer_id"
            assert d["value_settings[event_payload_key]"] == "value"
    s = sink_for(config)
    assert s.kind == sink and s.metrics == config.ship_metrics


def test_billing_doc_walks_through_each_system_with_files_that_exist():
    import re

    text = (DEPLOY.parent / "docs" / "billing.md").read_text()
    for heading in ("## 3. OpenMeter", "## 4. Lago", "## 5. Stripe", "## 6. The collector's own invoice"):
        assert heading in text
    paths = set(re.findall(r"((?:deploy|docs|tests)/[\w./-]+\w)", text))
    assert {"deploy/openmeter/meters.yaml", "deploy/lago/billable_metrics.json", "deploy/stripe/meters.json"} <= paths
    for p in paths:
        assert (DEPLOY.parent / p).exists(), p
    for block in re.findall(r"```toml\n(.*?)```", text, re.S):  # the config it shows is valid
        snippet = "\n".join(line.strip() for line in block.splitlines())
        assert parse_config(tomllib.loads(snippet)).ship_sink in ("openmeter", "lago", "stripe")
    assert "--by tenant,model --period month" in text
