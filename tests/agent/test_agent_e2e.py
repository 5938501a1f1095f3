"""The agent end to end, in process and deterministic: the fake NVML with 8 GPUs, a real fake
vLLM server on loopback whose counters advance by known amounts, 1-second windows, a manual
clock. Stored energy, tokens and cost must equal hand-computed values."""

import json

import pytest

from meterd.agent.config import Prices, SourceConfig, default_config, to_micro
from meterd.agent.daemon import Agent
from meterd.agent.sampler import Clocks
from meterd.agent.store import Store
from meterd.probes.devices import get_devices
from tests.fakes.nvml import h100
from tests.fakes.servers import FakeInferenceServer

T0 = 1_800_000_000.0  # a whole minute


class World:
    """The manual clock, and a vLLM server that serves one request per GPU-second, mid-second."""

    def __init__(self, clock, server):
        self.clock, self.server = clock, server
        self.mono0 = 5_000.0
        self.next_batch = T0 + 0.25

    def mono(self):
        return self.clock() - T0 + self.mono0

    def sleep(self, seconds):
        self.clock.advance(seconds)
        # every second, at .25, a batch of requests completes: 800 prompt, 400 completion tokens
        while self.next_batch <= self.clock():
            self.server.add("llama-3-8b", 800, 400, prefill_s=0.2, decode_s=0.6)
            self.next_batch += 1.0


@pytest.fixture
def world(fake_nvml, clock):
    clock.t = T0
    fake_nvml([h100(curve=[(0.0, 500.0)]) for _ in range(8)])
    with FakeInferenceServer("vllm", models=["llama-3-8b"]) as server:
        yield World(clock, server)


def test_eight_gpus_and_a_vllm_server_give_hand_computed_windows(world, tmp_path):
    prices = Prices(rental_per_gpu_hour_micro=to_micro("3.6"),  # 1000 micro/s per GPU
                    energy_per_kwh_micro=to_micro("0.36"), pue=1.0,  # 0.1 micro per joule
                    opex_per_node_month_micro=0)
    config = default_config(node="node-a", interval_s=0.5, window_s=1, prices=prices,
                            sources=(SourceConfig(kind="vllm", url=world.server.url, name="vllm"),))
    node = get_devices(clock=world.clock)
    store = Store(tmp_path / "m.db")
    clocks = Clocks(wall=world.clock, mono=world.mono, boot=world.mono, sleep=world.sleep)
    # the first request completes before the agent's first scrape, so it is the baseline
    world.server.add("llama-3-8b", 8, 8, prefill_s=0.1, decode_s=0.1)

    summary = Agent(config, store, node, clocks=clocks).run(duration_s=5.0)
    node.close()

    gpu_windows = [w for w in store.windows() if w["device"].startswith("GPU-")]
    assert len(gpu_windows) == 8 * 5
    assert summary.windows == 9 * 5  # 8 GPUs and the CPU, 5 whole windows each
    for w in gpu_windows:
        assert T0 <= w["start"] < T0 + 5 and w["end"] - w["start"] == 1.0
        assert not w["partial"] and w["gap_s"] == 0
        assert w["energy_j"] == pytest.approx(500.0) and w["energy_source"] == "counter"
        assert w["avg_power_w"] == pytest.approx(500.0)
        # 800 prompt / 400 completion tokens a second over 8 GPUs behind one server
        assert (w["prompt_tokens"], w["completion_tokens"]) == (100, 50)
        # capex 1000 x 1 s + energy 500 J x 0.1 = 1050 micro-USD, exactly
        assert (w["cost_capex_micro"], w["cost_energy_micro"], w["cost_opex_micro"]) == (1000, 50, 0)
        assert w["cost_micro"] == 1050
        # prefill 0.2 s : decode 0.6 s -> prompt carries a quarter: 262.5 rounds half-even to 262
        assert (w["cost_prompt_micro"], w["cost_completion_micro"]) == (262, 788)
        (u,) = store.usage_of(w["id"])
        assert (u["model"], u["tenant"], u["cost_micro"]) == ("llama-3-8b", "", 1050)
    cpu = [w for w in store.windows() if w["device"] == "cpu"]
    assert len(cpu) == 5 and all(w["cost_capex_micro"] == 0 for w in cpu)  # the GPUs carry the node
    assert all(w["prompt_tokens"] == 0 for w in cpu)

    # rollups hold the same totals, exactly
    total = store.conn.execute(
        "SELECT sum(cost_micro), sum(prompt_tokens), sum(energy_j) FROM rollups"
        " WHERE period = 'hour' AND model = '' AND device LIKE 'GPU-%'").fetchone()
    assert total[0] == 8 * 5 * 1050 and total[1] == 8 * 5 * 100
    assert total[2] == pytest.approx(8 * 5 * 500.0)
    by_model = store.conn.execute(
        "SELECT sum(cost_micro), sum(completion_tokens) FROM rollups WHERE period = 'day' AND model = 'llama-3-8b'"
    ).fetchone()
    assert by_model == (8 * 5 * 1050, 5 * 400)
    store.close()


def test_no_token_source_still_meters_cost(no_nvml, tmp_path, clock):
    clock.t = T0 + 0.3
    mono = {"t": 100.0}

    def sleep(s):
        clock.advance(s)
        mono["t"] += s

    prices = Prices(capex_per_node_micro=to_micro(31557.6), capex_per_gpu_micro=0, residual_fraction=0,
                    depreciation_years=1, opex_per_node_month_micro=0)  # 1000 micro/s for the CPU node
    config = default_config(node="cpu-box", interval_s=0.5, window_s=1, prices=prices)
    node = get_devices(clock=clock)
    store = Store(tmp_path / "m.db")
    Agent(config, store, node, clocks=Clocks(wall=clock, mono=lambda: mono["t"], boot=lambda: mono["t"],
                                            sleep=sleep)).run(duration_s=2.0)
    ws = store.windows()
    assert [w["device"] for w in ws] == ["cpu"] * len(ws) and len(ws) == 3
    first, *_, last = ws
    assert first["partial"] and json.loads(first["flags"]) == ["startup"]
    assert first["start"] == T0 + 0.3 and first["cost_capex_micro"] == 700  # 0.7 s of 1000/s
    assert last["partial"] and "shutdown" in json.loads(last["flags"])
    assert all(w["prompt_tokens"] == 0 and w["energy_source"] == "estimated" for w in ws)
    store.close()


def test_pushed_usage_is_billed_per_tenant(fake_nvml, clock, tmp_path):
    import httpx

    from meterd.probes.push import PushEndpoint

    clock.t = T0
    fake_nvml([h100(curve=[(0.0, 360.0)])])
    prices = Prices(rental_per_gpu_hour_micro=to_micro("3.6"), energy_per_kwh_micro=0, opex_per_node_month_micro=0,
                    prompt_token_weight=1.0)
    config = default_config(node="node-a", interval_s=1.0, window_s=2, prices=prices,
                            sources=(SourceConfig(kind="push", name="push"),))
    node = get_devices(clock=clock)
    store = Store(tmp_path / "m.db")
    mono = {"t": 0.0}
    with PushEndpoint() as push, httpx.Client(base_url=push.url) as client:
        def sleep(s):
            clock.advance(s)
            mono["t"] += s
            if abs(clock() - (T0 + 1.0)) < 1e-9:  # mid first window: two tenants' requests arrive
                r = client.post("/v1/usage", json=[
                    {"model": "m", "prompt_tokens": 300, "completion_tokens": 100, "tenant": "acme", "request_id": "a1"},
                    {"model": "m", "prompt_tokens": 100, "completion_tokens": 100, "tenant": "zeta", "request_id": "z1"},
                ])
                assert r.status_code == 200
                # a client retry of the same request is not billed twice
                assert client.post("/v1/usage", json={"model": "m", "prompt_tokens": 300, "completion_tokens": 100,
                                                      "tenant": "acme", "request_id": "a1"}).json()["duplicates"] == 1

        Agent(config, store, node, clocks=Clocks(wall=clock, mono=lambda: mono["t"], boot=lambda: mono["t"],
                                                sleep=sleep), push=push).run(duration_s=2.0)
    node.close()
    gpu = [w for w in store.windows() if w["device"].startswith("GPU-")]
    first = gpu[0]
    assert (first["start"], first["end"]) == (T0, T0 + 2)
    assert (first["prompt_tokens"], first["completion_tokens"]) == (400, 200)
    assert first["cost_micro"] == 2000  # 1000 micro/s for 2 s, no energy price
    rows = {u["tenant"]: u for u in store.usage_of(first["id"])}
    # weight 1: prompt carries 400/600 of 2000 = 1333 (rounded), completion 667;
    # acme has 3/4 of the prompt tokens and 1/2 of the completion tokens
    assert (rows["acme"]["cost_prompt_micro"], rows["zeta"]["cost_prompt_micro"]) == (1000, 333)
    # 667 over two equal halves: the largest-remainder tie goes to the first row
    assert (rows["acme"]["cost_completion_micro"], rows["zeta"]["cost_completion_micro"]) == (334, 333)
    assert rows["acme"]["cost_micro"] + rows["zeta"]["cost_micro"] == 2000
    store.close()


def test_a_source_removed_by_a_reload_and_added_back_bills_nothing_of_the_time_between(no_nvml, clock, tmp_path):
    """CounterTracker.forget, wired to SIGHUP reloads: tokens counted while a source was out of
    the config are not billed to the first window after it comes back."""
    clock.t = T0
    mono = {"t": 0.0}
    with FakeInferenceServer("vllm", models=["m"]) as server:
        with_source = default_config(node="n", interval_s=0.5, window_s=1,
                                     sources=(SourceConfig(kind="vllm", url=server.url, name="vllm"),))
        without = default_config(node="n", interval_s=0.5, window_s=1)
        wanted = {"config": with_source}
        agent_box = []
        events = {  # seconds after T0 -> what happens then
            0.25: lambda: server.add("m", 100, 10),
            1.25: lambda: (wanted.update(config=without), agent_box[0].request_reload()),
            2.25: lambda: server.add("m", 1000, 1000),  # not metered: the source is out of the config
            3.25: lambda: server.add("m", 1000, 1000),
            4.25: lambda: (wanted.update(config=with_source), agent_box[0].request_reload()),
            5.75: lambda: server.add("m", 7, 3),
        }

        def sleep(s):
            end = clock() + s
            for at in sorted(events):
                if clock() < T0 + at <= end:
                    clock.t = T0 + at
                    events[at]()
            clock.t = end
            mono["t"] += s

        node = get_devices(clock=clock)
        store = Store(tmp_path / "m.db")
        agent = Agent(with_source, store, node, reload_config=lambda: wanted["config"],
                      clocks=Clocks(wall=clock, mono=lambda: mono["t"], boot=lambda: mono["t"], sleep=sleep))
        agent_box.append(agent)
        agent.run(duration_s=7.0)
        node.close()
    ws = store.windows()
    assert sum(w["prompt_tokens"] for w in ws) == 107
    assert sum(w["completion_tokens"] for w in ws) == 13
    store.close()
