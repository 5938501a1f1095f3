"""End to end with real processes: `meter agent --sink openmeter|lago|stripe` meters fake GPUs
while workloads push usage for several tenants and models, and ships usage events to a faithful
stand-in on loopback (tests/fakes/billing.py).

- openmeter: every event received has a subject; summing data.cost_micro grouped by data.model
  and data.tenant through JSONPath, as an OpenMeter meter does, gives exactly what `meter report
  --by model,tenant` shows; the sum over all events is the windows' cost.
- lago: batches Lago stored but answered 500 for are sent again, answered value_already_exist,
  and counted delivered: nothing quarantined, nothing stored twice as new.
- stripe: events Stripe held but answered 500 for go again with the same identifier."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml
from click.testing import CliRunner

from meterd.agent.cli import main
from tests.e2e.test_ship_exactly_once import free_port, wait_for
from tests.fakes.billing import FakeOpenMeter

ROOT = Path(__file__).parents[2]
TRAFFIC = [("llama-3-8b", "team-a", 120, 40), ("llama-3-8b", "team-b", 300, 90), ("qwen-7b", "team-a", 50, 10),
           ("qwen-7b", None, 700, 5)]


def test_openmeter_meters_equal_the_report_by_model_and_tenant(tmp_path):
    adb = tmp_path / "agent.db"
    token = tmp_path / "om-token"
    token.write_text("om_secret\n")
    token.chmod(0o600)
    push_port = free_port()
    with FakeOpenMeter(token="om_secret", dedupe=False) as om:  # no dedupe: a resend would show
        cfg = tmp_path / "meterd.toml"
        cfg.write_text(f'''node = "n1"
store = "{adb}"
interval_s = 0.25
window_s = 1
[[sources]]
kind = "push"
[push]
listen = "127.0.0.1:{push_port}"
[ship]
url = "{om.base}"
token_file = "{token}"
backoff_cap_s = 1.0
''')
        env = dict(os.environ, METERD_FAKE_GPUS="2", METERD_FAKE_WATTS="300")
        agent = subprocess.Popen([sys.executable, "-m", "tests.fakes.run_meter", "agent", "--config", str(cfg),
                                  "--sink", "openmeter", "--duration", "6"], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stop = threading.Event()
        pushed = []

        def traffic():
            n = 0
            while not stop.is_set():
                for model, tenant, p, c in TRAFFIC:
                    rec = {"model": model, "prompt_tokens": p, "completion_tokens": c, "request_id": f"r{n}"}
                    if tenant:
                        rec["tenant"] = tenant
                    n += 1
                    try:
                        if httpx.post(f"http://127.0.0.1:{push_port}/v1/usage", json=rec, timeout=2).status_code == 200:
                            pushed.append(rec)
                    except httpx.HTTPError:
                        pass
                time.sleep(0.3)

        def push_up():
            try:
                return httpx.get(f"http://127.0.0.1:{push_port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(push_up, timeout_s=30, what="the push endpoint")
            t = threading.Thread(target=traffic, daemon=True)
            t.start()
            time.sleep(3)
            stop.set()
            t.join(5)
            _, err = agent.communicate(timeout=60)
            assert agent.returncode == 0, err
        finally:
            stop.set()
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        assert pushed

        outbox = json.loads(CliRunner().invoke(main, ["outbox", "--db", str(adb), "--json"]).output)
        assert outbox["sink"] == "openmeter" and outbox["url"] == om.base + "/api/v1/events"
        assert outbox["pending"] == 0 and outbox["quarantined"] == []

        events = list(om.events)
        assert events and all(e.get("subject") for e in events)
        assert len({e["id"] for e in events}) == len(events)
        assert {e["subject"] for e in events} == {"team-a", "team-b", "n1"}  # untenanted and idle: the node

        meter = {"eventType": "meterd.usage.v1", "aggregation": "SUM", "valueProperty": "$.cost_micro",
                 "groupBy": {"model": "$.model", "tenant": "$.tenant"}}
        got = {(dict(k)["model"], dict(k)["tenant"]): v for k, v in om.meter(meter).items()}
        # the ready-made meter gives the same sums (it groups finer: kind and currency too)
        shipped = yaml.safe_load((ROOT / "deploy" / "openmeter" / "meters.yaml").read_text())["meters"]
        cost_meter = next(m for m in shipped if m["slug"] == "meterd_cost_micro")
        assert sum(om.meter(cost_meter).values()) == sum(got.values())

    r = CliRunner().invoke(main, ["report", "--db", str(adb), "--by", "model,tenant", "--format", "json"])
    assert r.exit_code == 0, r.output
    report = {}
    for row in json.loads(r.stdout)["rows"]:
        model = "" if row["model"] == "(idle)" else row["model"]
        tenant = "" if row["tenant"] in ("(idle)", "(none)", None) else row["tenant"]
        report[(model, tenant)] = row["cost_micro"]
    assert got == report
    assert {("llama-3-8b", "team-a"), ("llama-3-8b", "team-b"), ("qwen-7b", "team-a"), ("qwen-7b", "")} <= set(got)

    c = sqlite3.connect(adb)
    try:
        windows_cost = c.execute("SELECT sum(cost_micro) FROM windows").fetchone()[0]
    finally:
        c.close()
    assert sum(e["data"]["cost_micro"] for e in events) == windows_cost == sum(got.values())


def _run_agent_with_traffic(tmp_path, sink: str, url: str, token_text: str, extra_toml: str) -> Path:
    """`meter agent --sink SINK` for a few seconds with pushed usage for two tenants and an
    untenanted model; returns the agent's store."""
    adb = tmp_path / "agent.db"
    token = tmp_path / "token"
    token.write_text(token_text + "\n")
    token.chmod(0o600)
    push_port = free_port()
    cfg = tmp_path / "meterd.toml"
    cfg.write_text(f'''node = "n1"
store = "{adb}"
interval_s = 0.25
window_s = 1
[[sources]]
kind = "push"
[push]
listen = "127.0.0.1:{push_port}"
[ship]
url = "{url}"
token_file = "{token}"
backoff_cap_s = 0.5
{extra_toml}
''')
    env = dict(os.environ, METERD_FAKE_GPUS="1", METERD_FAKE_WATTS="300")
    agent = subprocess.Popen([sys.executable, "-m", "tests.fakes.run_meter", "agent", "--config", str(cfg),
                              "--sink", sink, "--duration", "5"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def push_up():
        try:
            return httpx.get(f"http://127.0.0.1:{push_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(push_up, timeout_s=30, what="the push endpoint")
        for i in range(6):
            for model, tenant, p, c in TRAFFIC:
                rec = {"model": model, "prompt_tokens": p, "completion_tokens": c, "request_id": f"{sink}{i}{model}{tenant}"}
                if tenant:
                    rec["tenant"] = tenant
                httpx.post(f"http://127.0.0.1:{push_port}/v1/usage", json=rec, timeout=2)
            time.sleep(0.4)
        _, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    return adb


def _expected_usage(adb):
    from meterd.agent.store import open_store
    from meterd.agent.usage_events import usage_events

    s = open_store(adb, readonly=True)
    try:
        return [e for w in s.windows() for e in usage_events(w, s.usage_of(w["id"]))], \
            sum(w["cost_micro"] for w in s.windows())
    finally:
        s.close()


def test_sink_lago_a_retried_batch_lago_holds_is_delivered_not_quarantined(tmp_path):
    from tests.fakes.billing import FakeLago

    with FakeLago(token="lago_key") as lago:
        lago.fail_after_store = 2  # the first two batches are stored, and answered 500
        adb = _run_agent_with_traffic(tmp_path, "lago", lago.base, "lago_key", '''
[ship.subscriptions]
"team-a" = "sub_a"
"team-b" = "sub_b"
"n1" = "sub_internal"
''')
        outbox = json.loads(CliRunner().invoke(main, ["outbox", "--db", str(adb), "--json"]).output)
        assert outbox["sink"] == "lago" and outbox["quarantined"] == [] and outbox["pending"] == 0
        expected, cost = _expected_usage(adb)
        assert lago.created == len(lago.events) == len(expected)  # nothing stored twice as new
        assert sorted(t for _, t in lago.events) == sorted(e["id"] for e in expected)
        assert sum(lago.sum("meterd_cost", "cost_micro").values()) == cost
        assert lago.already_held > 0  # the retried batches were answered 422 value_already_exist


def test_sink_stripe_identifiers_are_stable_across_resends(tmp_path):
    from tests.fakes.billing import FakeStripe

    with FakeStripe(token="sk_test_fake", rate_per_s=100) as stripe:
        stripe.fail_after_store = 3
        adb = _run_agent_with_traffic(tmp_path, "stripe", stripe.base, "sk_test_fake", '''rate_per_s = 50
[ship.customers]
"team-a" = "cus_a"
"team-b" = "cus_b"
"n1" = "cus_internal"
''')
        outbox = json.loads(CliRunner().invoke(main, ["outbox", "--db", str(adb), "--json"]).output)
        assert outbox["sink"] == "stripe" and outbox["quarantined"] == [] and outbox["pending"] == 0
        expected, cost = _expected_usage(adb)
        sent = stripe.identifiers_sent
        resent = {i for i in sent if sent.count(i) > 1}
        assert len(resent) == 3  # each event Stripe held but answered 500 for went again, same identifier
        assert sorted(stripe.meter_events) == sorted(e["id"] for e in expected if e["data"]["cost_micro"])
        assert sum(stripe.total("meterd_cost").values()) == cost
