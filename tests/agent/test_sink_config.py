"""[ship] sink and its tables, `meter agent --sink`, and `meter outbox` naming the sink."""

import json
import re

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.agent.config import ConfigError, parse_config
from meterd.agent.shipper import ShipperThread
from meterd.agent.sinks import sink_for
from meterd.agent.sinks.base import Sink
from meterd.agent.store import Store


def test_sink_defaults_to_meterd():
    c = parse_config({})
    assert c.ship_sink == "meterd" and sink_for(c).kind == "meterd"


@pytest.mark.parametrize("doc, message", [
    ({"ship": {"sink": "kafka"}}, "ship.sink: expected one of meterd, openmeter, lago, stripe, got 'kafka'"),
    ({"ship": {"sink": "lago", "metrics": {"cost": "x"}}}, "ship.metrics.cost: not a billable field"),
    ({"ship": {"sink": "lago", "metrics": {}}}, "ship.metrics: name at least one field"),
    ({"ship": {"sink": "stripe", "metrics": {"cost_micro": "m" * 101}}}, "ship.metrics.cost_micro: at most 100"),
    ({"ship": {"sink": "lago", "window_events": True}}, "ship.window_events: only the openmeter sink"),
    ({"ship": {"subscriptions": {"a": 3}}}, "ship.subscriptions.a: expected a non-empty string"),
    ({"ship": {"customer": {}}}, "ship.customer: unknown key (did you mean 'customers'?)"),
    ({"ship": {"rate_per_s": 0}}, "ship.rate_per_s: must be at least 0.1"),
])
def test_bad_sink_config_names_the_key(doc, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(doc)


def test_sink_tables_reach_the_sink():
    c = parse_config({"ship": {"sink": "stripe", "subject": "acme", "rate_per_s": 5,
                               "metrics": {"prompt_tokens": "p"}, "customers": {"team-a": "cus_1"}}})
    s = sink_for(c)
    assert (s.kind, s.subject, s.metrics, s.customers, s.min_interval_s) == ("stripe", "acme", {"prompt_tokens": "p"},
                                                                             {"team-a": "cus_1"}, 0.2)
    c = parse_config({"ship": {"sink": "openmeter", "window_events": True}})
    assert sink_for(c).window_events is True


def test_example_config_documents_the_sink_keys():
    r = CliRunner().invoke(main, ["config", "init"])
    assert "sink = \"meterd\"" in r.output and "[ship.customers]" in r.output and "[ship.subscriptions]" in r.output


@pytest.mark.parametrize("url, want", [
    ("https://api.getlago.com", "https://api.getlago.com/api/v1/events/batch"),
    ("https://api.getlago.com/", "https://api.getlago.com/api/v1/events/batch"),
    ("https://api.getlago.com/api/v1", "https://api.getlago.com/api/v1/events/batch"),
    ("https://lago.internal/api/v1/events/batch", "https://lago.internal/api/v1/events/batch"),
    ("https://x.example/billing", "https://x.example/billing/api/v1/events/batch"),
])
def test_a_base_url_gets_the_sinks_path(url, want):
    s = Sink()
    s.path = "/api/v1/events/batch"
    assert s.endpoint(url) == want


def test_agent_sink_flag_is_checked(tmp_path):
    r = CliRunner().invoke(main, ["agent", "--sink", "kafka", "--duration", "0.1", "--db", str(tmp_path / "a.db")])
    assert r.exit_code == 2 and "'kafka' is not one of" in r.output


def test_outbox_names_the_sink(tmp_path):
    db = tmp_path / "m.db"
    Store(db).close()
    r = CliRunner().invoke(main, ["outbox", "--db", str(db)])
    assert r.exit_code == 0 and "sink: none yet" in r.output
    from meterd.agent.sinks.lago import LagoSink

    t = ShipperThread(db, "https://api.getlago.com", "tok", sink=LagoSink())
    assert t.endpoint == "https://api.getlago.com/api/v1/events/batch"
    r = CliRunner().invoke(main, ["outbox", "--db", str(db)])
    assert "sink: lago at https://api.getlago.com/api/v1/events/batch" in r.output, r.output
    doc = json.loads(CliRunner().invoke(main, ["outbox", "--db", str(db), "--json"]).output)
    assert doc["sink"] == "lago" and doc["url"].endswith("/api/v1/events/batch")


def test_a_reload_that_changes_the_sink_says_it_needs_a_restart(no_nvml, tmp_path, caplog):
    import dataclasses
    import logging

    from meterd.agent.config import default_config
    from meterd.agent.daemon import Agent
    from meterd.probes.devices import get_devices

    running = default_config(node="n", window_s=1, interval_s=0.5)
    new = dataclasses.replace(running, ship_sink="lago", ship_subscriptions={"t": "sub_t"},
                              ship_metrics={"prompt_tokens": "p"})
    node = get_devices()
    store = Store(tmp_path / "m.db")
    try:
        agent = Agent(running, store, node, reload_config=lambda: new)
        agent.request_reload()
        with caplog.at_level(logging.WARNING):
            agent._maybe_reload()
        assert agent._pending.ship_sink == "meterd" and agent._pending.ship_metrics == {}
        assert "ship_metrics, ship_sink, ship_subscriptions changed; these take effect after a restart" in caplog.text
    finally:
        node.close()
        store.close()
