"""OTLP export (`[otlp] endpoint`): a real agent (fake GPUs at the NVML edge, a fake vLLM) exports
through the OpenTelemetry SDK to a loopback OTLP/HTTP receiver that decodes the protobuf
(opentelemetry-proto); names, units, attributes and values are checked against the store."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meterd.agent import runtime
from meterd.agent.config import ConfigError, SourceConfig
from tests.fakes.nvml import h100
from tests.fakes.servers import FakeInferenceServer

pb = pytest.importorskip("opentelemetry.proto.collector.metrics.v1.metrics_service_pb2")


class Receiver:
    """POST /v1/metrics: ExportMetricsServiceRequest in, an empty response out."""

    def __init__(self) -> None:
        self.requests: list = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = pb.ExportMetricsServiceRequest()
                req.ParseFromString(body)
                outer.requests.append((self.path, self.headers.get("Content-Type"), req))
                out = pb.ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _attrs(kv) -> dict:
    out = {}
    for a in kv:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.double_value if v.HasField(
            "double_value") else v.int_value
    return out


def _points(req) -> dict:
    """name -> (unit, kind, [(attributes, value)]) over the request's resource metrics."""
    out = {}
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                pts = [(_attrs(p.attributes), p.as_double if p.HasField("as_double") else p.as_int)
                       for p in data.data_points]
                out[m.name] = (m.unit, kind, pts, getattr(data, "is_monotonic", None))
    return out


def test_the_agent_exports_hardware_tokens_and_cost_that_match_the_store(fake_nvml, tmp_path):
    nvml = fake_nvml([h100(curve=[(0.0, 300.0)]), h100(curve=[(0.0, 500.0)])], clock=time.time)
    rx = Receiver()
    vllm = FakeInferenceServer("vllm", models=("llama-3-8b", "mistral-7b")).start()
    stop = threading.Event()

    def serve():
        while not stop.wait(0.1):
            vllm.add("llama-3-8b", prompt=300, completion=60)
            vllm.add("mistral-7b", prompt=100, completion=40)

    feeder = threading.Thread(target=serve, daemon=True)
    db = tmp_path / "m.db"
    try:
        config = runtime.load(None, runtime.Overrides(store=str(db), interval_s=0.25, window_s=1))
        config = dataclasses.replace(config, node="otlp-node", otlp_endpoint=rx.url, otlp_interval_s=0.5,
                                     sources=(SourceConfig(name="vllm", kind="vllm", url=vllm.url),))
        feeder.start()
        runtime.run_agent(config=config, duration_s=3.5)
    finally:
        stop.set()
        feeder.join(timeout=5)
        vllm.stop()
        rx.close()
    assert len(rx.requests) >= 3  # periodic exports, and the last on shutdown
    path, ctype, last = rx.requests[-1]
    assert path == "/v1/metrics" and ctype == "application/x-protobuf"
    res = _attrs(last.resource_metrics[0].resource.attributes)
    assert res["service.name"] == "meterd" and res["host.name"] == "otlp-node"
    got = _points(last)

    c = sqlite3.connect(db)
    energy = dict(c.execute("SELECT device, sum(energy_j) FROM windows GROUP BY device"))
    cost = dict(c.execute("SELECT device, sum(cost_micro) FROM windows GROUP BY device"))
    tokens = {m: (p, q) for m, p, q in c.execute(
        "SELECT model, sum(prompt_tokens), sum(completion_tokens) FROM window_usage GROUP BY model")}
    last_w = {d: (p, u) for d, p, u in c.execute(
        "SELECT device, avg_power_w, util_pct FROM windows w WHERE end = (SELECT max(end) FROM windows v"
        " WHERE v.device = w.device)")}
    currency = c.execute("SELECT DISTINCT currency FROM windows").fetchone()[0]
    c.close()
    gpus = {g.uuid for g in nvml.gpus}

    unit, kind, pts, monotonic = got["hw.energy"]
    assert (unit, kind, monotonic) == ("J", "sum", True)
    per_dev: dict = {}
    for a, v in pts:
        per_dev[a["hw.id"]] = per_dev.get(a["hw.id"], 0.0) + v
        assert a["hw.type"] == ("gpu" if a["hw.id"] in gpus else "cpu")
        assert a["meterd.energy.source"] in ("counter", "integrated", "estimated")
    assert {a["meterd.energy.source"] for a, _ in pts if a["hw.id"] in gpus} == {"counter"}
    assert per_dev.keys() == energy.keys() and gpus <= per_dev.keys()
    for dev, j in energy.items():
        assert per_dev[dev] == pytest.approx(j)

    unit, kind, pts, _ = got["hw.power"]
    assert (unit, kind) == ("W", "gauge")
    power = {a["hw.id"]: v for a, v in pts}
    for dev in gpus:
        assert power[dev] == pytest.approx(last_w[dev][0])
    assert sorted(round(power[d]) for d in gpus) == [300, 500]

    unit, kind, pts, _ = got["hw.gpu.utilization"]
    assert (unit, kind) == ("1", "gauge")
    assert {a["hw.id"] for a, _ in pts} == gpus and all(a["hw.type"] == "gpu" for a, _ in pts)
    for a, v in pts:
        assert v == pytest.approx(last_w[a["hw.id"]][1] / 100) and 0 <= v <= 1

    unit, kind, pts, monotonic = got["meterd.tokens"]
    assert (unit, kind, monotonic) == ("{token}", "sum", True)
    seen = {(a["gen_ai.request.model"], a["gen_ai.token.type"]): v for a, v in pts}
    assert set(tokens) == {"llama-3-8b", "mistral-7b"}
    for model, (p, q) in tokens.items():
        assert seen[(model, "input")] == p and seen[(model, "output")] == q
    assert all(v > 0 for v in seen.values())

    unit, kind, pts, monotonic = got["meterd.cost"]
    assert (kind, monotonic) == ("sum", True)
    for a, v in pts:
        assert a["meterd.currency"] == currency
        assert v == pytest.approx(cost[a["hw.id"]] / 1e6)


def test_a_bad_endpoint_is_one_line(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('[otlp]\nendpoint = "127.0.0.1:4318"\n')
    with pytest.raises(ConfigError, match=r"otlp.endpoint: expected an OTLP/HTTP endpoint like http://127.0.0.1:4318"):
        runtime.load(str(cfg), runtime.Overrides())
    cfg.write_text('[otlp]\nendpoint = "http://127.0.0.1:4318"\ninterval_s = 0\n')
    with pytest.raises(ConfigError, match="otlp.interval_s"):
        runtime.load(str(cfg), runtime.Overrides())


def test_an_agent_without_otlp_imports_no_opentelemetry(tmp_path):
    """Without an endpoint the SDK is never imported: the agent's RSS is what it was."""
    code = (
        "import sys, dataclasses, threading\n"
        "from meterd.agent import runtime\n"
        f"c = runtime.load(None, runtime.Overrides(store={str(tmp_path / 'm.db')!r}, interval_s=0.1, window_s=1))\n"
        "runtime.run_agent(config=c, duration_s=0.5)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'google.protobuf', 'requests'))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
