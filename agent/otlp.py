"""OTLP export of the agent's metrics (``[otlp] endpoint = "http://127.0.0.1:4318"``), over
OTLP/HTTP with protobuf, through the OpenTelemetry SDK (the ``meterd[otlp]`` extra; imported only
when an endpoint is configured, so an agent without it pays nothing).

The devices follow OpenTelemetry's hardware semantic conventions: ``hw.energy`` (counter, J),
``hw.power`` (gauge, W) and ``hw.gpu.utilization`` (gauge, 1) with ``hw.type`` (gpu, cpu) and
``hw.id`` (the GPU's UUID); the energy carries ``meterd.energy.source`` (counter, integrated,
estimated: an estimate is never passed off as a measurement). Tokens and cost have no stable
convention (the GenAI token metric is a per-request client histogram), so they are meterd's:
``meterd.tokens`` (counter, ``gen_ai.token.type`` = input / output, ``gen_ai.request.model``) and
``meterd.cost`` (counter, per device, ``meterd.currency``). Counters are cumulative since the
agent started, read from the same state as the Prometheus endpoint (agent/metrics.py). The
resource names ``service.name = meterd``, ``service.version`` and ``host.name`` (the node).
"""

from __future__ import annotations

from typing import Iterable

import requests
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from meterd import __version__
from meterd.agent.metrics import AgentState
from meterd.units import MICRO


class OtlpExporter:
    """Exports every ``interval_s`` and once more on :meth:`close` (the last windows)."""

    def __init__(self, state: AgentState, endpoint: str, interval_s: float, host: str) -> None:
        self.state = state
        session = requests.Session()
        session.trust_env = False  # the endpoint as configured: no proxy from the environment
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/metrics"):
            url += "/v1/metrics"
        exporter = OTLPMetricExporter(endpoint=url, timeout=10, session=session)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_s * 1000,
                                               export_timeout_millis=10_000)
        resource = Resource.create({"service.name": "meterd", "service.version": __version__, "host.name": host})
        self.provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = self.provider.get_meter("meterd", __version__)
        meter.create_observable_counter("hw.energy", [self._energy], unit="J",
                                        description="Energy consumed by the component, metered since the agent started.")
        meter.create_observable_gauge("hw.power", [self._power], unit="W",
                                      description="Mean power of the component over its last committed window.")
        meter.create_observable_gauge("hw.gpu.utilization", [self._util], unit="1",
                                      description="Mean utilization of the GPU over its last committed window.")
        meter.create_observable_counter("meterd.tokens", [self._tokens], unit="{token}",
                                        description="Tokens served per model since the agent started.")
        meter.create_observable_counter("meterd.cost", [self._cost], unit="{currency}",
                                        description="Cost accrued per device since the agent started.")

    def _hw(self, dev: str) -> dict[str, str]:
        kind = self.state.device_kinds.get(dev) or ("cpu" if dev == "cpu" else "gpu")
        d = self.state.devices.get(dev)
        attrs = {"hw.type": kind, "hw.id": dev}
        if d is not None and d.name:
            attrs["hw.name"] = d.name
        return attrs

    def _energy(self, _: CallbackOptions) -> Iterable[Observation]:
        with self.state.lock:
            return [Observation(j, {**self._hw(dev), "meterd.energy.source": src})
                    for dev, d in sorted(self.state.devices.items()) for src, j in sorted(d.energy_by_source.items())]

    def _power(self, _: CallbackOptions) -> Iterable[Observation]:
        with self.state.lock:
            return [Observation(d.last["avg_power_w"], {**self._hw(dev),
                                                        "meterd.energy.source": d.last.get("energy_source") or "unknown"})
                    for dev, d in sorted(self.state.devices.items())
                    if d.last is not None and d.last["avg_power_w"] is not None]

    def _util(self, _: CallbackOptions) -> Iterable[Observation]:
        with self.state.lock:
            return [Observation(d.last["util_pct"] / 100.0, self._hw(dev))
                    for dev, d in sorted(self.state.devices.items())
                    if d.last is not None and d.last["util_pct"] is not None
                    and self.state.device_kinds.get(dev, "gpu") == "gpu"]

    def _tokens(self, _: CallbackOptions) -> Iterable[Observation]:
        with self.state.lock:
            out = []
            for model, m in sorted(self.state.models.items()):
                out.append(Observation(m.prompt_tokens, {"gen_ai.token.type": "input", "gen_ai.request.model": model}))
                out.append(Observation(m.completion_tokens, {"gen_ai.token.type": "output", "gen_ai.request.model": model}))
            return out

    def _cost(self, _: CallbackOptions) -> Iterable[Observation]:
        with self.state.lock:
            cur = self.state.currency
            return [Observation(d.cost_micro / MICRO, {**self._hw(dev), "meterd.currency": cur})
                    for dev, d in sorted(self.state.devices.items())]

    def close(self) -> None:
        """Export what the last windows added, then stop (bounded by the exporter's timeout)."""
        self.provider.shutdown(timeout_millis=15_000)
