"""The agent's Prometheus endpoint (off by default): a custom Collector that reads the agent's
state at scrape time, on its own registry, served by prometheus_client's WSGI server.

Per device (label ``device``, plus ``name``): power, utilization and cost of the last committed
window; energy, tokens and cost metered since the agent started (counters). Agent health: last
sample age, gaps per probe, windows committed, store size, outbox depth.
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

from meterd.net import parse_listen
from meterd.units import MICRO


@dataclass
class DeviceTotals:
    name: str = ""
    energy_j: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro: int = 0
    last: dict[str, Any] | None = None  # the last committed window row


@dataclass
class AgentState:
    """What the agent tells the endpoint; updated by the agent's thread, read at scrape time."""

    currency: str = "USD"
    devices: dict[str, DeviceTotals] = field(default_factory=dict)
    last_sample_wall: float | None = None
    gaps: dict[str, int] = field(default_factory=dict)
    windows_committed: int = 0
    store_path: str | None = None
    outbox_depth: Callable[[], tuple[int, int]] | None = None  # (pending, quarantined)
    store_writer: Any = None  # agent.store_writer.WriterStatus, when the agent runs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_windows(self, rows: list[dict[str, Any]]) -> None:
        with self.lock:
            for w in rows:
                d = self.devices.setdefault(w["device"], DeviceTotals(name=w.get("device_name") or ""))
                d.energy_j += w["energy_j"] or 0.0
                d.prompt_tokens += w["prompt_tokens"]
                d.completion_tokens += w["completion_tokens"]
                d.cost_micro += w["cost_micro"]
                d.last = w
                self.windows_committed += 1


class AgentCollector(Collector):
    def __init__(self, state: AgentState, wall: Callable[[], float] = time.time) -> None:
        self.state = state
        self.wall = wall

    def collect(self) -> Iterator:
        s = self.state
        cur = s.currency
        power = GaugeMetricFamily("meterd_device_power_watts", "Mean power over the last committed window.", labels=["device", "name"])
        util = GaugeMetricFamily("meterd_device_utilization_ratio", "Mean utilization (0-1) over the last committed window.", labels=["device", "name"])
        energy = CounterMetricFamily("meterd_device_energy_joules", "Energy metered since the agent started.", labels=["device", "name"])
        tokens = CounterMetricFamily("meterd_device_tokens", "Tokens attributed to the device since the agent started.", labels=["device", "name", "type"])
        cost = CounterMetricFamily("meterd_device_cost", f"Cost accrued since the agent started, in {cur}.", labels=["device", "name", "currency"])
        wcost = GaugeMetricFamily("meterd_device_window_cost", "Cost of the last committed window.", labels=["device", "name", "currency"])
        per_mtok = GaugeMetricFamily("meterd_device_window_cost_per_mtok", "Cost per million tokens of the last window (absent without tokens).", labels=["device", "name", "currency"])
        with s.lock:
            for dev, d in sorted(s.devices.items()):
                lab = [dev, d.name]
                energy.add_metric(lab, d.energy_j)
                tokens.add_metric(lab + ["prompt"], d.prompt_tokens)
                tokens.add_metric(lab + ["completion"], d.completion_tokens)
                cost.add_metric(lab + [cur], d.cost_micro / MICRO)
                w = d.last
                if w is None:
                    continue
                if w["avg_power_w"] is not None:
                    power.add_metric(lab, w["avg_power_w"])
                if w["util_pct"] is not None:
                    util.add_metric(lab, w["util_pct"] / 100.0)
                wcost.add_metric(lab + [cur], w["cost_micro"] / MICRO)
                toks = w["prompt_tokens"] + w["completion_tokens"]
                if toks:
                    per_mtok.add_metric(lab + [cur], w["cost_micro"] / toks)
            gaps = dict(s.gaps)
            committed = s.windows_committed
            last = s.last_sample_wall
        yield from (power, util, energy, tokens, cost, wcost, per_mtok)

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
