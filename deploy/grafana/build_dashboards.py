"""Writes the Grafana dashboards of this folder (meterd-node.json, meterd-fleet.json,
meterd-agent.json) from the panel lists below; run it after editing them:

    python deploy/grafana/build_dashboards.py

The JSON files are what Grafana imports (Dashboards > New > Import, or file provisioning); a test
checks they are what this script writes, and evaluates every panel's PromQL on a real Prometheus
scraping a real agent (tests/agent/test_prometheus_dashboards.py). Template variables:
``datasource`` (a Prometheus), ``instance`` (the agents' scrape targets, job "meterd").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job="meterd", instance=~"$instance"'


def _templating(multi_instance: bool) -> dict:
    return {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        {"name": "instance", "label": "Agent", "type": "query", "datasource": DS,
         "query": {"query": 'label_values(meterd_agent_info{job="meterd"}, instance)', "refId": "instance"},
         "definition": 'label_values(meterd_agent_info{job="meterd"}, instance)',
         "refresh": 2, "includeAll": True, "multi": multi_instance, "allValue": ".*",
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "hide": 0, "sort": 1},
    ]}


def panel(title: str, exprs: list[tuple[str, str]], unit: str, kind: str = "timeseries", *,
          desc: str = "", w: int = 12, h: int = 8, decimals: int | None = None,
          thresholds: list[tuple[float | None, str]] | None = None) -> dict:
    defaults: dict = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute",
                                  "steps": [{"value": v, "color": c} for v, c in thresholds]}
    p = {
        "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": legend,
                     "range": kind == "timeseries", "instant": kind != "timeseries"}
                    for i, (e, legend) in enumerate(exprs)],
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "lastNotNull"]},
                        "tooltip": {"mode": "multi"}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "area"}
    return p


def dashboard(uid: str, title: str, desc: str, panels: list[dict], multi_instance: bool) -> dict:
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        gw, gh = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + gw > 24:
            x, y, row_h = 0, y + row_h, 0
        p["gridPos"].update(x=x, y=y)
        x, row_h = x + gw, max(row_h, gh)
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["meterd"],
        "editable": True, "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"}, "timezone": "utc",
        "templating": _templating(multi_instance), "annotations": {"list": []},
        "links": [{"title": "meterd", "type": "dashboards", "tags": ["meterd"], "asDropdown": True}],
        "panels": panels,
    }


R = "$__rate_interval"

NODE = dashboard("meterd-node", "meterd: node", "One node's GPUs: power, energy, utilization, tokens, cost per million tokens, idle share and J/token, as the agent meters them.", [
    panel("Power per GPU (source of the energy figure)",
          [(f"meterd_device_power_watts{{{SEL}}}", "{{device}} {{name}} ({{source}})")], "watt",
          desc="Mean power of each GPU's last committed window. source: counter (NVML energy counter), integrated (power samples integrated), estimated (utilization x TDP; never billed as measured)."),
    panel("Energy per GPU and source",
          [(f"sum by (device, name, source) (increase(meterd_device_energy_joules_total{{{SEL}}}[{R}]))", "{{device}} ({{source}})")], "joule",
          desc="Energy metered in each interval, split by how it was measured."),
    panel("Utilization per GPU",
          [(f"meterd_device_utilization_ratio{{{SEL}}}", "{{device}} {{name}}")], "percentunit"),
    panel("Tokens per second per GPU",
          [(f"sum by (device, type) (rate(meterd_device_tokens_total{{{SEL}}}[{R}]))", "{{device}} {{type}}")], "short",
          desc="Tokens the inference servers reported, attributed to the GPUs behind them."),
    panel("Cost per million tokens (live)",
          [(f"1e6 * sum by (device, currency) (rate(meterd_device_cost_total{{{SEL}}}[{R}])) / on (device) group_left () (sum by (device) (rate(meterd_device_tokens_total{{{SEL}}}[{R}])) > 0)", "{{device}} {{currency}}/Mtok"),
           (f"meterd_device_window_cost_per_mtok{{{SEL}}}", "{{device}} last window")], "currencyUSD",
          desc="Every cost (capital, energy, operations) over the tokens served; idle time is in it. Empty while no token is served."),
    panel("Idle share",
          [(f"sum by (device) (rate(meterd_device_idle_seconds_total{{{SEL}}}[{R}])) / (sum by (device) (rate(meterd_device_metered_seconds_total{{{SEL}}}[{R}])) > 0)", "{{device}}")], "percentunit",
          desc="Share of metered time in windows that served no token."),
    panel("Energy per token",
          [(f"sum by (device) (rate(meterd_device_energy_joules_total{{{SEL}}}[{R}])) / (sum by (device) (rate(meterd_device_tokens_total{{{SEL}}}[{R}])) > 0)", "{{device}}")], "joule",
          desc="J per token (prompt and completion together)."),
    panel("Tokens per second per model",
          [(f"sum by (model, type) (rate(meterd_model_tokens_total{{{SEL}}}[{R}]))", "{{model}} {{type}}")], "short"),
    panel("Cost per hour", [(f"3600 * sum by (currency) (rate(meterd_device_cost_total{{{SEL}}}[{R}]))", "{{currency}}/h")],
          "currencyUSD", "stat", w=6, h=5, decimals=2),
    panel("Power now", [(f"sum(meterd_device_power_watts{{{SEL}}})", "W")], "watt", "stat", w=6, h=5),
    panel("GPUs read", [(f"sum(meterd_device_up{{{SEL}, kind=\"gpu\"}})", "read"),
                        (f"count(meterd_device_up{{{SEL}, kind=\"gpu\"}})", "metered")], "short", "stat", w=6, h=5),
    panel("Energy since the agent started",
          [(f"sum(meterd_device_energy_joules_total{{{SEL}}}) / 3.6e6", "kWh")], "kwatth", "stat", w=6, h=5, decimals=3),
], multi_instance=False)

FLEET = dashboard("meterd-fleet", "meterd: fleet", "Every node metered by meterd: power, tokens, cost per million tokens and idle share, from the recording rules of deploy/prometheus/meterd-rules.yml.", [
    panel("Agents up", [('sum(up{job="meterd", instance=~"$instance"})', "up"),
                        ('count(up{job="meterd", instance=~"$instance"})', "scraped")], "short", "stat", w=6, h=5),
    panel("GPUs read", [(f'sum(meterd_device_up{{{SEL}, kind="gpu"}})', "read"),
                        (f'count(meterd_device_up{{{SEL}, kind="gpu"}})', "metered")], "short", "stat", w=6, h=5),
    panel("Fleet power", [("meterd:fleet_power_watts:sum", "W")], "watt", "stat", w=6, h=5),
    panel("Fleet cost per million tokens", [("meterd:fleet_cost_per_mtok:rate1h", "{{currency}}/Mtok")],
          "currencyUSD", "stat", w=6, h=5, decimals=3),
    panel("Power per node", [('meterd:node_power_watts:sum{instance=~"$instance"}', "{{instance}}")], "watt"),
    panel("Tokens per second per node", [('meterd:node_tokens:rate5m{instance=~"$instance"}', "{{instance}}")], "short"),
    panel("Cost per hour per node", [('meterd:node_cost:rate1h{instance=~"$instance"}', "{{instance}} {{currency}}/h")], "currencyUSD"),
    panel("Cost per million tokens per GPU", [('meterd:device_cost_per_mtok:rate1h{instance=~"$instance"}', "{{instance}} {{device}}")], "currencyUSD"),
    panel("Idle share per GPU", [('meterd:device_idle_ratio:rate1h{instance=~"$instance"}', "{{instance}} {{device}}")], "percentunit"),
    panel("Energy per token per GPU", [('meterd:device_joules_per_token:rate5m{instance=~"$instance"}', "{{instance}} {{device}}")], "joule"),
    panel("Outbox backlog per node", [(f'meterd_outbox_windows{{{SEL}}}', "{{instance}} {{state}}")], "short"),
    panel("Alerts firing", [('sum by (alertname) (ALERTS{alertstate="firing", alertname=~"Meterd.*"}) or vector(0)', "{{alertname}}")],
          "short", "stat", w=12),
], multi_instance=True)

AGENT = dashboard("meterd-agent", "meterd: agent health", "The agent's own health: is it sampling, which probes miss, is the outbox draining, does the store take writes and stay within its budget.", [
    panel("Last sample age", [(f"meterd_last_sample_age_seconds{{{SEL}}}", "{{instance}}")], "s", "stat", w=6, h=5,
          thresholds=[(None, "green"), (10, "orange"), (60, "red")]),
    panel("Windows committed per minute", [(f"60 * rate(meterd_windows_committed_total{{{SEL}}}[{R}])", "{{instance}}")], "short", "stat", w=6, h=5),
    panel("Quarantined windows", [(f'meterd_outbox_windows{{{SEL}, state="quarantined"}}', "{{instance}}")], "short", "stat", w=6, h=5,
          thresholds=[(None, "green"), (1, "red")]),
    panel("Store writable", [(f"meterd_store_writable{{{SEL}}}", "{{instance}}")], "bool_yes_no", "stat", w=6, h=5,
          thresholds=[(None, "red"), (1, "green")]),
    panel("Probe gaps", [(f"sum by (instance, probe) (increase(meterd_probe_gaps_total{{{SEL}}}[{R}]))", "{{instance}} {{probe}}")], "short",
          desc="Sampling rounds in which a probe (a GPU, a token source) gave no reading."),
    panel("Devices read by the last round", [(f"meterd_device_up{{{SEL}}}", "{{instance}} {{device}} {{kind}}")], "bool_yes_no"),
    panel("Outbox backlog", [(f"meterd_outbox_windows{{{SEL}}}", "{{instance}} {{state}}")], "short",
          desc="Committed windows the sink has not acknowledged (pending) or refused for good (quarantined)."),
    panel("Store size and budget", [(f"meterd_store_size_bytes{{{SEL}}}", "{{instance}} size"),
                                    (f"meterd_store_budget_bytes{{{SEL}}}", "{{instance}} budget")], "bytes"),
    panel("Store write errors", [(f"increase(meterd_store_write_errors_total{{{SEL}}}[{R}])", "{{instance}} errors"),
                                 (f"meterd_store_pending_windows{{{SEL}}}", "{{instance}} windows held in memory")], "short"),
    panel("Store use of its budget", [(f"meterd_store_size_bytes{{{SEL}}} / meterd_store_budget_bytes{{{SEL}}}", "{{instance}}")], "percentunit",
          thresholds=[(None, "green"), (0.9, "red")]),
], multi_instance=True)

DASHBOARDS = {"meterd-node.json": NODE, "meterd-fleet.json": FLEET, "meterd-agent.json": AGENT}


def render(d: dict) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    for name, d in DASHBOARDS.items():
        (HERE / name).write_text(render(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
