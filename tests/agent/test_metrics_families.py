"""The agent's Prometheus families the dashboards and alert rules of deploy/ are written against."""

import dataclasses
import socket
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from meterd import __version__
from meterd.agent import runtime
from meterd.agent.metrics import AgentCollector, AgentState
from tests.fakes.nvml import h100


def samples(state: AgentState) -> dict:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    reg.register(AgentCollector(state))
    text = generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def window(device="GPU-1", start=0.0, end=60.0, energy=600.0, source="counter", prompt=0, completion=0, cost=100):
    return {"device": device, "device_name": "H100", "start": start, "end": end, "energy_j": energy,
            "energy_source": source, "avg_power_w": None if energy is None else energy / (end - start), "util_pct": 10.0,
            "prompt_tokens": prompt, "completion_tokens": completion, "cost_micro": cost}


def test_energy_by_source_idle_seconds_models_budget_and_info():
    state = AgentState(currency="EUR", node="n1", store_budget_bytes=1 << 20)
    state.add_windows(
        [window(energy=600.0, source="counter", prompt=10, completion=5),
         window(start=60, end=120, energy=300.0, source="integrated"),
         window(start=120, end=150, energy=None, source=None)],
        [[{"model": "m1", "tenant": "", "prompt_tokens": 10, "completion_tokens": 5, "cost_micro": 60},
          {"model": "m1", "tenant": "t", "prompt_tokens": 0, "completion_tokens": 0, "cost_micro": 40}], [], []])
    v = samples(state)
    dev = (("device", "GPU-1"), ("name", "H100"))
    assert v[("meterd_device_energy_joules_total", dev + (("source", "counter"),))] == 600.0
    assert v[("meterd_device_energy_joules_total", dev + (("source", "integrated"),))] == 300.0
    assert not any(k[0] == "meterd_device_energy_joules_total" and ("source", "unknown") in k[1] for k in v)
    assert v[("meterd_device_metered_seconds_total", dev)] == 150.0
    assert v[("meterd_device_idle_seconds_total", dev)] == 90.0  # the two windows without tokens
    assert v[("meterd_model_tokens_total", (("model", "m1"), ("type", "prompt")))] == 10
    assert v[("meterd_model_cost_total", (("currency", "EUR"), ("model", "m1")))] == 100 / 1e6
    assert v[("meterd_store_budget_bytes", ())] == 1 << 20
    assert v[("meterd_agent_info", (("node", "n1"), ("version", __version__)))] == 1
    # the last window had no energy: its power is absent, never 0
    assert not any(k[0] == "meterd_device_power_watts" for k in v)


def test_no_budget_no_budget_gauge():
    assert not any(k[0] == "meterd_store_budget_bytes" for k in samples(AgentState()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_running_agent_reports_a_lost_gpu_every_probe_and_power_with_its_source(fake_nvml, tmp_path):
    nvml = fake_nvml([h100(), h100()], clock=time.time)
    nvml.lose(1, after_s=0.6)
    port = _free_port()
    config = runtime.load(None, runtime.Overrides(store=str(tmp_path / "m.db"), interval_s=0.25, window_s=1,
                                                   metrics_listen=f"127.0.0.1:{port}"))
    config = dataclasses.replace(config, node="n1", store_budget_mb=8)
    seen = {}

    def scrape(stop):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        seen.update({(s.name, tuple(sorted(s.labels.items()))): s.value
                     for f in text_string_to_metric_families(text) for s in f.samples})
        stop.set()

    stop = threading.Event()
    timer = threading.Timer(3.0, scrape, args=(stop,))
    timer.start()
    runtime.run_agent(config=config, stop=stop, duration_s=15)
    timer.join()
    ok, lost = nvml.gpus[0].uuid, nvml.gpus[1].uuid
    up = {dict(k[1])["device"]: (dict(k[1])["kind"], val) for k, val in seen.items() if k[0] == "meterd_device_up"}
    assert up[ok] == ("gpu", 1) and up[lost] == ("gpu", 0)
    assert up["cpu"][0] == "cpu"  # (its value: whether psutil answered within the round, on a busy machine)
    gaps = {dict(k[1])["probe"]: val for k, val in seen.items() if k[0] == "meterd_probe_gaps_total"}
    assert gaps[f"device:{ok}"] == 0 and gaps["device:cpu"] == 0  # every probe, before its first gap
    # (the GPUs' sharing probes, share:<gpu>, are every-round probes too)
    assert {p for p in gaps if p.startswith("device:")} == {f"device:{ok}", f"device:{lost}", "device:cpu"}
    power = {dict(k[1])["device"]: dict(k[1])["source"] for k in seen if k[0] == "meterd_device_power_watts"}
    assert power[ok] == "counter"
    assert seen[("meterd_store_budget_bytes", ())] == 8 * 1024 * 1024
    assert seen[("meterd_agent_info", (("node", "n1"), ("version", __version__)))] == 1
    # no token source: every metered second is idle
    metered = seen[("meterd_device_metered_seconds_total", (("device", ok), ("name", "NVIDIA H100 80GB HBM3")))]
    assert metered >= 1 and seen[("meterd_device_idle_seconds_total", (("device", ok), ("name", "NVIDIA H100 80GB HBM3")))] == metered
