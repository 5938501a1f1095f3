"""The agent's Prometheus endpoint (off by default): a custom Collector that reads the agent's
state at scrape time, on its own registry, served by prometheus_client's WSGI server.

Per device (label ``device``, plus ``name``): power (with the ``source`` of its energy figure),
utilization and cost of the last committed window; energy (per source), tokens, cost, metered and
idle seconds since the agent started (counters); whether the last round read the device. Per
model: tokens and cost. Agent health: last sample age, gaps per probe, windows committed, store
size and budget, store write errors, outbox depth (pending, quarantined).

The dashboards and alert rules in deploy/grafana/ and deploy/prometheus/ are written against
these names (tests/agent/test_prometheus_dashboards.py runs them on a real Prometheus).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meterd import __version__
from meterd.net import parse_listen
from meterd.units import MICRO


@dataclass
class DeviceTotals:
    name: str = ""
    energy_j: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro: int = 0
    energy_by_source: dict[str, float] = field(default_factory=dict)  # counter / integrated / estimated
    seconds: float = 0.0  # window time metered
    idle_seconds: float = 0.0  # of which windows served no token
    last: dict[str, Any] | None = None  # the last committed window row


@dataclass
class ModelTotals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro: int = 0


@dataclass
class AgentState:
    """What the agent tells the endpoint; updated by the agent's thread, read at scrape time."""

    currency: str = "USD"
    node: str = ""
    devices: dict[str, DeviceTotals] = field(default_factory=dict)
    models: dict[str, ModelTotals] = field(default_factory=dict)
    device_up: dict[str, bool] = field(default_factory=dict)  # did the last round read it?
    device_kinds: dict[str, str] = field(default_factory=dict)  # device id -> gpu / cpu
    store_budget_bytes: int | None = None
    last_sample_wall: float | None = None
    gaps: dict[str, int] = field(default_factory=dict)
    windows_committed: int = 0
    store_path: str | None = None
    outbox_depth: Callable[[], tuple[int, int]] | None = None  # (pending, quarantined)
    store_writer: Any = None  # agent.store_writer.WriterStatus, when the agent runs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_windows(self, rows: list[dict[str, Any]], usage: list[list[dict[str, Any]]] | None = None) -> None:
        """Committed window rows, and (optional, one list per row) their usage rows by model."""
        with self.lock:
            for w in rows:
                d = self.devices.setdefault(w["device"], DeviceTotals(name=w.get("device_name") or ""))
                d.energy_j += w["energy_j"] or 0.0
                if w["energy_j"] is not None:
                    src = w.get("energy_source") or "unknown"
                    d.energy_by_source[src] = d.energy_by_source.get(src, 0.0) + w["energy_j"]
                if w.get("start") is not None and w.get("end") is not None:
                    secs = max(0.0, w["end"] - w["start"])
                    d.seconds += secs
                    if not (w["prompt_tokens"] or w["completion_tokens"]):
                        d.idle_seconds += secs
                d.prompt_tokens += w["prompt_tokens"]
                d.completion_tokens += w["completion_tokens"]
                d.cost_micro += w["cost_micro"]
                d.last = w
                self.windows_committed += 1
            for rows_of_window in usage or ():
                for u in rows_of_window:
                    m = self.models.setdefault(u["model"], ModelTotals())
                    m.prompt_tokens += u["prompt_tokens"]
                    m.completion_tokens += u["completion_tokens"]
                    m.cost_micro += u["cost_micro"]


class AgentCollector(Collector):
    def __init__(self, state: AgentState, wall: Callable[[], float] = time.time) -> None:
        self.state = state
        self.wall = wall

    def collect(self) -> Iterator:
        s = self.state
        cur = s.currency
        power = GaugeMetricFamily("meterd_device_power_watts", "Mean power over the last committed window (source: how its energy was measured).", labels=["device", "name", "source"])
        util = GaugeMetricFamily("meterd_device_utilization_ratio", "Mean utilization (0-1) over the last committed window.", labels=["device", "name"])
        energy = CounterMetricFamily("meterd_device_energy_joules", "Energy metered since the agent started, by source (counter, integrated, estimated).", labels=["device", "name", "source"])
        seconds = CounterMetricFamily("meterd_device_metered_seconds", "Window time metered since the agent started.", labels=["device", "name"])
        idle = CounterMetricFamily("meterd_device_idle_seconds", "Window time that served no token, since the agent started.", labels=["device", "name"])
        up = GaugeMetricFamily("meterd_device_up", "1 if the last sampling round read the device, 0 if it failed (a lost GPU, a probe error).", labels=["device", "name", "kind"])
        mtok = CounterMetricFamily("meterd_model_tokens", "Tokens served per model since the agent started.", labels=["model", "type"])
        mcost = CounterMetricFamily("meterd_model_cost", f"Cost attributed to each model since the agent started, in {cur}.", labels=["model", "currency"])
        tokens = CounterMetricFamily("meterd_device_tokens", "Tokens attributed to the device since the agent started.", labels=["device", "name", "type"])
        cost = CounterMetricFamily("meterd_device_cost", f"Cost accrued since the agent started, in {cur}.", labels=["device", "name", "currency"])
        wcost = GaugeMetricFamily("meterd_device_window_cost", "Cost of the last committed window.", labels=["device", "name", "currency"])
        per_mtok = GaugeMetricFamily("meterd_device_window_cost_per_mtok", "Cost per million tokens of the last window (absent without tokens).", labels=["device", "name", "currency"])
        with s.lock:
            for dev, d in sorted(s.devices.items()):
                lab = [dev, d.name]
                for src, j in sorted(d.energy_by_source.items()):
                    energy.add_metric(lab + [src], j)
                seconds.add_metric(lab, d.seconds)
                idle.add_metric(lab, d.idle_seconds)
                tokens.add_metric(lab + ["prompt"], d.prompt_tokens)
                tokens.add_metric(lab + ["completion"], d.completion_tokens)
                cost.add_metric(lab + [cur], d.cost_micro / MICRO)
                w = d.last
                if w is None:
                    continue
                if w["avg_power_w"] is not None:
                    power.add_metric(lab + [w.get("energy_source") or "unknown"], w["avg_power_w"])
                if w["util_pct"] is not None:
                    util.add_metric(lab, w["util_pct"] / 100.0)
                wcost.add_metric(lab + [cur], w["cost_micro"] / MICRO)
                toks = w["prompt_tokens"] + w["completion_tokens"]
                if toks:
                    per_mtok.add_metric(lab + [cur], w["cost_micro"] / toks)
            for dev, ok in sorted(s.device_up.items()):
                d = s.devices.get(dev)
                up.add_metric([dev, d.name if d else "", s.device_kinds.get(dev, "")], 1 if ok else 0)
            for model, m in sorted(s.models.items()):
                mtok.add_metric([model, "prompt"], m.prompt_tokens)
                mtok.add_metric([model, "completion"], m.completion_tokens)
                mcost.add_metric([model, cur], m.cost_micro / MICRO)
            gaps = dict(s.gaps)
            committed = s.windows_committed
            last = s.last_sample_wall
        yield from (power, util, energy, tokens, cost, wcost, per_mtok, seconds, idle, up, mtok, mcost)
        info = GaugeMetricFamily("meterd_agent_info", "The agent's node name and version (always 1).", labels=["node", "version"])
        info.add_metric([s.node, __version__], 1)
        yield info

        age = GaugeMetricFamily("meterd_last_sample_age_seconds", "Seconds since the last sampling round.")
        if last is not None:
            age.add_metric([], max(0.0, self.wall() - last))
        yield age
        g = CounterMetricFamily("meterd_probe_gaps", "Sampling rounds in which a probe gave no reading.", labels=["probe"])
        for probe, n in sorted(gaps.items()):
            g.add_metric([probe], n)
        yield g
        yield CounterMetricFamily("meterd_windows_committed", "Windows committed since the agent started.", value=committed)
        size = 0
        if s.store_path:
            for suffix in ("", "-wal", "-shm"):
                try:
                    size += os.path.getsize(s.store_path + suffix)
                except OSError:
                    pass
        yield GaugeMetricFamily("meterd_store_size_bytes", "Size of the SQLite store (with its WAL).", value=size)
        if s.store_budget_bytes:
            yield GaugeMetricFamily("meterd_store_budget_bytes", "The store's budget (store_budget_mb).", value=s.store_budget_bytes)
        w = s.store_writer
        if w is not None:
            yield CounterMetricFamily("meterd_store_write_errors", "Store writes that failed (disk full, locked, I/O error); each is retried.", value=w.write_errors_total)
            yield GaugeMetricFamily("meterd_store_pending_windows", "Closed windows held in memory because the store refused them.", value=w.pending_windows)
            yield CounterMetricFamily("meterd_store_dropped_windows", "Held windows dropped at the store_max_pending_windows bound.", value=w.dropped_windows_total)
            yield GaugeMetricFamily("meterd_store_writable", "1 while the store takes writes, 0 while it refuses them.", value=0 if w.state != "ok" else 1)
        if s.outbox_depth is not None:
            pending, quarantined = s.outbox_depth()
            depth = GaugeMetricFamily("meterd_outbox_windows", "Committed windows not yet acknowledged by the sink.", labels=["state"])
            depth.add_metric(["pending"], pending)
            depth.add_metric(["quarantined"], quarantined)
            yield depth


class MetricsServer:
    def __init__(self, state: AgentState, listen: str) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(state))
        host, port = parse_listen(listen)
        self.httpd, self.thread = start_http_server(port, addr=host, registry=self.registry)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
