"""A shared GPU end to end: two real server processes (a fake vLLM and a fake SGLang, each its
own PID on its own loopback port) hold GPU 0 at 30 % and 50 % SM, GPU 1 holds nothing. The
fake NVML reports those PIDs and their utilization samples; the agent names them by their
ports and splits each window's energy and cost 30/50/20 (idle), exactly; `meter report --by
owner` shows both servers and the idle share."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.agent.config import Prices, SourceConfig, default_config, to_micro
from meterd.agent.daemon import Agent
from meterd.agent.sampler import Clocks
from meterd.agent.store import Store
from meterd.probes.devices import get_devices
from meterd.agent.usage_events import usage_events
from tests.fakes.nvml import GiB, FakeMig, h100
from tests.fakes.servers import ServerProcess

T0 = 1_800_000_000.0
PRICES = Prices(rental_per_gpu_hour_micro=to_micro("3.6"),  # 1000 micro/s per GPU
                energy_per_kwh_micro=to_micro("0.36"), pue=1.0,  # 0.1 micro per joule
                opex_per_node_month_micro=0)


class World:
    def __init__(self, clock):
        self.clock = clock

    def mono(self):
        return self.clock() - T0 + 5_000.0

    def sleep(self, seconds):
        self.clock.advance(seconds)


@pytest.fixture
def servers():
    with ServerProcess("vllm", "llama-3-8b") as vllm, ServerProcess("sglang", "qwen-7b") as sglang:
        yield vllm, sglang


def _run(tmp_path, clock, sources, seconds=5.0):
    config = default_config(node="node-a", interval_s=0.5, window_s=1, prices=PRICES, sources=sources)
    node = get_devices(clock=clock)
    store = Store(tmp_path / "m.db")
    world = World(clock)
    try:
        Agent(config, store, node, clocks=Clocks(wall=clock, mono=world.mono, boot=world.mono,
                                                 sleep=world.sleep)).run(duration_s=seconds)
    finally:
        node.close()
    return store


def test_two_servers_on_one_gpu_split_30_50_20_and_the_idle_gpu(fake_nvml, clock, servers, tmp_path):
    vllm, sglang = servers
    clock.t = T0
    fake = fake_nvml([
        h100(curve=[(0.0, 500.0)], processes=[(vllm.pid, 20 * GiB), (sglang.pid, 30 * GiB)],
             proc_sm={vllm.pid: 30, sglang.pid: 50}, sample_period_s=1 / 6),
        h100(curve=[(0.0, 100.0)]),
    ])
    store = _run(tmp_path, clock, (SourceConfig(kind="vllm", url=vllm.url, name="vllm-a", devices=("0",)),
                                   SourceConfig(kind="sglang", url=sglang.url, name="sglang-b", devices=("0",))))
    gpu0, gpu1 = (fake.gpus[i].uuid for i in range(2))
    whole = [w for w in store.windows() if not w["partial"]]
    shared = [w for w in whole if w["device"] == gpu0]
    idle_gpu = [w for w in whole if w["device"] == gpu1]
    assert len(shared) == 5 and len(idle_gpu) == 5
    for w in shared:
        # capex 1000 micro + 500 J x 0.1 micro/J = 1050 micro a window
        assert (w["cost_capex_micro"], w["cost_energy_micro"], w["energy_j"]) == (1000, 50, pytest.approx(500.0))
        owners = store.owners_of(w["id"])
        assert [(o["owner"], o["share"], o["provenance"]) for o in owners] == [
            ("source:sglang-b", 0.5, "apportioned"), ("source:vllm-a", 0.3, "apportioned"), ("idle", 0.2, "apportioned")]
        assert [(o["cost_capex_micro"], o["cost_energy_micro"], o["cost_opex_micro"], o["cost_micro"])
                for o in owners] == [(500, 25, 0, 525), (300, 15, 0, 315), (200, 10, 0, 210)]
        assert [o["energy_j"] for o in owners] == [250.0, 150.0, 100.0]
    for w in idle_gpu:  # a GPU nobody holds: all of it is idle
        assert [(o["owner"], o["share"], o["cost_micro"]) for o in store.owners_of(w["id"])] == [("idle", 1.0, 1010)]

    r = CliRunner().invoke(main, ["report", "--db", str(store.path), "--by", "owner", "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = {row["owner"]: row for row in json.loads(r.output)["rows"]}
    assert {"source:vllm-a", "source:sglang-b", "idle"} <= set(rows)
    assert rows["source:vllm-a"]["cost_micro"] >= 5 * 315 and rows["source:sglang-b"]["cost_micro"] >= 5 * 525
    table = CliRunner().invoke(main, ["report", "--db", str(store.path), "--by", "device,owner"])
    assert table.exit_code == 0, table.output
    assert "source:vllm-a" in table.output and "source:sglang-b" in table.output and "idle" in table.output


def test_usage_events_carry_the_owner_of_their_tokens():
    window = {"node": "n", "device": "GPU-1", "start": T0, "end": T0 + 60, "currency": "USD", "partial": 0,
              "energy_source": "counter", "event_id": "6f0c2c1e-1d3b-5c7e-9a51-0d8f1b2a3c4d", "energy_j": 10.0,
              "cost_micro": 10, "cost_capex_micro": 10, "cost_energy_micro": 0, "cost_opex_micro": 0}
    usage = [{"model": "m", "tenant": "", "owner": "source:vllm-a", "prompt_tokens": 1, "completion_tokens": 1,
              "energy_j": 10.0, "cost_micro": 10, "cost_prompt_micro": 5, "cost_completion_micro": 5,
              "cost_capex_micro": 10, "cost_energy_micro": 0, "cost_opex_micro": 0}]
    (e,) = usage_events(window, usage)
    assert e["data"]["owner"] == "source:vllm-a"
    idle = usage_events({**window}, [])
    assert idle[0]["data"]["owner"] == ""


def test_mig_instances_split_by_gpm_activity_then_by_slices(fake_nvml, clock, tmp_path):
    clock.t = T0
    migs = [FakeMig(1, 0, 10 * GiB, slices=1, activity=[(0.0, 60.0)]),
            FakeMig(2, 0, 40 * GiB, slices=3, activity=[(0.0, 80.0)])]
    fake = fake_nvml([h100(curve=[(0.0, 500.0)], mig=migs)])
    store = _run(tmp_path, clock, ())
    (gpu,) = [w for w in store.windows() if w["device"] == fake.gpus[0].uuid and not w["partial"]][-1:]
    owners = store.owners_of(gpu["id"])
    # weights activity x slices: 60 x 1 and 80 x 3 of a span of 100 x 4 slices -> 15 % and 60 %
    assert [(o["owner"], o["share"], o["provenance"]) for o in owners] == [
        (f"mig:{migs[0].uuid}", 0.15, "apportioned"), (f"mig:{migs[1].uuid}", 0.6, "apportioned"),
        ("idle", 0.25, "apportioned")]
    assert sum(o["cost_micro"] for o in owners) == gpu["cost_micro"]


def test_mig_without_gpm_splits_by_compute_slices(fake_nvml, clock, tmp_path):
    from tests.fakes.nvml import a100

    clock.t = T0
    migs = [FakeMig(1, 0, 10 * GiB, slices=2), FakeMig(2, 0, 40 * GiB, slices=3)]
    fake = fake_nvml([a100(curve=[(0.0, 300.0)], mig=migs)])
    store = _run(tmp_path, clock, ())
    wins = [w for w in store.windows() if w["device"] == fake.gpus[0].uuid and not w["partial"]]
    assert wins
    for w in wins:
        owners = store.owners_of(w["id"])
        assert [(o["owner"], o["share"], o["provenance"]) for o in owners] == [
            (f"mig:{migs[0].uuid}", 0.4, "apportioned (slices)"), (f"mig:{migs[1].uuid}", 0.6, "apportioned (slices)")]
        assert [o["cost_capex_micro"] for o in owners] == [400, 600]


def test_window_events_carry_the_split_and_the_collector_takes_them(fake_nvml, clock, servers, tmp_path):
    from meterd.agent.events import window_event
    from meterd.collector.validation import check_body

    vllm, sglang = servers
    clock.t = T0
    fake = fake_nvml([h100(curve=[(0.0, 500.0)], processes=[(vllm.pid, GiB), (sglang.pid, GiB)],
                           proc_sm={vllm.pid: 30, sglang.pid: 50}, sample_period_s=0.5)])
    store = _run(tmp_path, clock, (SourceConfig(kind="vllm", url=vllm.url, name="vllm-a", devices=("0",)),
                                   SourceConfig(kind="sglang", url=sglang.url, name="sglang-b", devices=("0",))),
                 seconds=2.0)
    w = next(w for w in store.windows() if w["device"] == fake.gpus[0].uuid and not w["partial"])
    ev = window_event({**w, "owners": store.owners_of(w["id"])}, store.usage_of(w["id"]))
    owners = ev["data"]["owners"]
    assert [(o["owner"], o["share"], o["cost"]["total_micro"]) for o in owners] == [
        ("source:sglang-b", 0.5, 525), ("source:vllm-a", 0.3, 315), ("idle", 0.2, 210)]
    body = json.dumps([ev]).encode()
    checked = check_body(body, node="node-a")
    assert not checked.errors and len(checked.parsed) == 1
    assert json.loads(checked.parsed[0].raw)["data"]["owners"] == owners  # kept as received
    plain = window_event(w, store.usage_of(w["id"]))
    assert "owners" not in plain["data"]  # unsplit: the event is as before


def test_the_shipper_sends_the_split(fake_nvml, clock, servers, tmp_path):
    import httpx

    from meterd.agent.shipper import Shipper

    vllm, sglang = servers
    clock.t = T0
    fake_nvml([h100(curve=[(0.0, 500.0)], processes=[(vllm.pid, GiB)], proc_sm={vllm.pid: 40}, sample_period_s=0.5)])
    store = _run(tmp_path, clock, (SourceConfig(kind="vllm", url=vllm.url, name="vllm-a", devices=("0",)),), seconds=2.0)
    sent = []

    def collector(request: httpx.Request) -> httpx.Response:
        sent.extend(json.loads(request.content))
        return httpx.Response(200, json={"accepted": len(sent)})

    shipper = Shipper(store, "http://127.0.0.1:1/api/v1/events", "tok", transport=httpx.MockTransport(collector))
    try:
        shipper.ship_once()
    finally:
        shipper.close()
    split = [e for e in sent if "owners" in e["data"]]
    assert split and all([o["owner"] for o in e["data"]["owners"]] == ["source:vllm-a", "idle"] for e in split)
    assert all(o["cost"]["total_micro"] for e in split for o in e["data"]["owners"])
