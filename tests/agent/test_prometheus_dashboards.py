"""The Grafana dashboards and Prometheus rules of deploy/ on a real Prometheus.

A real agent (subprocess, fake GPUs at the NVML edge) meters tokens from a fake vLLM and ships to
a sink that is down (so its outbox fills); a real Prometheus (Debian's `prometheus`) scrapes it
every 0.5 s and evaluates deploy/prometheus/meterd-rules.yml. `promtool` checks and unit-tests the
rules; every panel query of every dashboard is evaluated through the HTTP API and must return data.

Skipped without `prometheus`/`promtool` locally; CI (CI=true) installs them (.ci/run) and fails
without them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.servers import FakeInferenceServer

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy/prometheus/meterd-rules.yml"
GRAFANA = ROOT / "deploy/grafana"
WATTS = 250.0
GPUS = 2


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed (.ci/run installs Debian's prometheus package)")
        pytest.skip(f"{tool} not installed (Debian: apt-get install prometheus)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({proc.returncode}): "
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:] if log else ''}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every target of every panel."""
    out = []
    for f in sorted(GRAFANA.glob("*.json")):
        for p in json.loads(f.read_text())["panels"]:
            for t in p.get("targets", []):
                out.append((f.name, p["title"], t["expr"]))
    return out


def as_query(expr: str) -> str:
    """A panel's expression as Grafana sends it: the variables replaced by what "All" and a
    0.5 s scrape interval give."""
    return expr.replace('=~"$instance"', '=~".*"').replace("$__rate_interval", "5s")


def test_dashboards_are_what_the_generator_writes_and_well_formed():
    sys.path.insert(0, str(GRAFANA))
    try:
        import build_dashboards as gen
    finally:
        sys.path.remove(str(GRAFANA))
    assert sorted(p.name for p in GRAFANA.glob("*.json")) == sorted(gen.DASHBOARDS)
    for name, d in gen.DASHBOARDS.items():
        assert (GRAFANA / name).read_text() == gen.render(d), f"{name}: run deploy/grafana/build_dashboards.py"
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        for p in d["panels"]:
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"])
    # what the issue asks each view to show
    titles = {name: " | ".join(p["title"] for p in d["panels"]).lower() for name, d in gen.DASHBOARDS.items()}
    for word in ("power", "energy", "utilization", "tokens per second", "cost per million tokens", "idle share",
                 "energy per token"):
        assert word in titles["meterd-node.json"], word
    for word in ("last sample age", "probe gaps", "outbox backlog", "quarantined", "store size", "write errors"):
        assert word in titles["meterd-agent.json"], word
    assert "source" in json.dumps(gen.NODE["panels"][0]["targets"])  # power carries its source


def test_rules_pass_promtool_check_and_unit_tests():
    promtool = _need("promtool")
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", "meterd-rules.test.yml"], cwd=RULES.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([promtool, "check", "config", "prometheus.example.yml"], cwd=RULES.parent,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    assert {"MeterdAgentDown", "MeterdSamplingStalled", "MeterdOutboxGrowing", "MeterdQuarantineNotEmpty",
            "MeterdGpuLost", "MeterdStoreNearBudget"} <= alerts
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "meterd-rules.test.yml").read_text()))
    assert alerts - {"MeterdProbeGaps"} <= tested


@pytest.fixture
def agent_and_prometheus(tmp_path):
    prometheus = _need("prometheus")
    metrics_port, prom_port, dead_sink_port = _free_port(), _free_port(), _free_port()
    token = tmp_path / "ship-token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    vllm = FakeInferenceServer("vllm", models=("llama-3-8b", "mistral-7b")).start()
    stop = threading.Event()

    def serve_tokens():
        while not stop.wait(0.1):
            vllm.add("llama-3-8b", prompt=200, completion=50, prefill_s=0.01, decode_s=0.05)
            vllm.add("mistral-7b", prompt=100, completion=20, prefill_s=0.01, decode_s=0.03)

    feeder = threading.Thread(target=serve_tokens, daemon=True)
    feeder.start()
    cfg = tmp_path / "meterd.toml"
    cfg.write_text(f"""
node = "prom-test"
interval_s = 0.25
window_s = 1
store_budget_mb = 64
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[sources]]
name = "vllm"
kind = "vllm"
url = "{vllm.url}"
[ship]
url = "http://127.0.0.1:{dead_sink_port}/api/v1/events"
token_file = "{token}"
backoff_cap_s = 1
""")
    agent_log = tmp_path / "agent.log"
    env = dict(os.environ, METERD_FAKE_GPUS=str(GPUS), METERD_FAKE_WATTS=str(WATTS), PYTHONUNBUFFERED="1")
    with agent_log.open("w") as log:
        agent = subprocess.Popen([sys.executable, "-m", "tests.fakes.run_meter", "agent", "--config", str(cfg),
                                  "--db", str(tmp_path / "m.db")], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=log)
    prom_cfg = tmp_path / "prometheus.yml"
    prom_cfg.write_text(f"""
global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
  evaluation_interval: 500ms
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: meterd
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
""")
    prom_log = tmp_path / "prometheus.log"
    with prom_log.open("w") as log:
        prom = subprocess.Popen([prometheus, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h",
                                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=10)
    try:
        _wait(lambda: _ready(client), 60, "Prometheus ready", prom, prom_log)
        yield client, agent, agent_log, prom_log
    finally:
        client.close()
        _stop(prom)
        _stop(agent)
        stop.set()
        feeder.join(timeout=5)
        vllm.stop()


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.HTTPError:
        return False


def query(client: httpx.Client, expr: str) -> list[dict]:
    r = client.get("/api/v1/query", params={"query": expr})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_every_dashboard_panel_returns_data_from_a_real_agent(agent_and_prometheus):
    client, agent, agent_log, prom_log = agent_and_prometheus
    # enough scrapes for rates, windows with tokens, the outbox backing up, the rules evaluated
    _wait(lambda: query(client, 'count_over_time(meterd_windows_committed_total{job="meterd"}[1m]) >= 8'),
          60, "eight scrapes of the agent", agent, agent_log)
    _wait(lambda: query(client, "meterd:fleet_cost_per_mtok:rate1h") and query(client, "meterd:device_idle_ratio:rate1h"),
          30, "the recording rules", agent, agent_log)

    empty = []
    for dash, title, expr in panel_queries():
        result = query(client, as_query(expr))
        if not result:
            empty.append(f"{dash} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # the figures are the agent's: two GPUs at the fake's power, measured by NVML's energy counter
    power = query(client, 'meterd_device_power_watts{job="meterd", device=~"GPU-.*"}')
    assert len(power) == GPUS  # (and the host's CPU, metered beside them)
    for s in power:
        assert s["metric"]["source"] == "counter"
        assert float(s["value"][1]) == pytest.approx(WATTS, rel=0.05)
    assert float(query(client, 'sum(meterd_device_up{kind="gpu"})')[0]["value"][1]) == GPUS
    per_mtok = query(client, as_query(json.loads((GRAFANA / "meterd-node.json").read_text())["panels"][4]["targets"][0]["expr"]))
    assert all(math.isfinite(float(s["value"][1])) and float(s["value"][1]) > 0 for s in per_mtok)
    models = {s["metric"]["model"] for s in query(client, "meterd_model_tokens_total")}
    assert models == {"llama-3-8b", "mistral-7b"}
    # the sink is down: the outbox backs up, nothing is quarantined, the budget gauge is the config's
    assert float(query(client, 'meterd_outbox_windows{state="pending"}')[0]["value"][1]) > 0
    assert float(query(client, 'meterd_outbox_windows{state="quarantined"}')[0]["value"][1]) == 0
    assert float(query(client, "meterd_store_budget_bytes")[0]["value"][1]) == 64 * 1024 * 1024

    # every rule evaluates without error on the real series
    rules = client.get("/api/v1/rules").json()["data"]["groups"]
    bad = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert not bad, bad
    assert sum(len(g["rules"]) for g in rules) == len(re.findall(r"^\s*- (?:record|alert):", RULES.read_text(), re.M))
    assert agent.poll() is None, agent_log.read_text()[-3000:]
