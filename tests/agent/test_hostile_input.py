"""Readings no real device or server gives are reading errors, not crashes: a token counter of
1e20 is a gap with its reason, an energy counter that jumps by an exajoule is not billed."""

import pytest

from meterd.agent.config import SourceConfig, default_config
from meterd.agent.daemon import Agent
from meterd.agent.sampler import Clocks
from meterd.agent.store import Store
from meterd.agent.windows import Tick, WindowBuilder
from meterd.probes.counters import CounterTracker
from meterd.probes.devices import get_devices
from meterd.probes.prometheus_servers import BadCounter, totals_from_text
from meterd.probes.readings import DeviceSample, Reading
from tests.agent.test_agent_e2e import T0, world  # noqa: F401 - the fixture


def test_a_counter_beyond_2_53_is_a_bad_counter_not_a_count():
    page = '# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{model_name="m"} 1e20\n' \
           '# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{model_name="m"} 5\n'
    with pytest.raises(BadCounter, match="beyond any real count"):
        totals_from_text(page, "vllm")
    # many series that each fit but sum past 2^53 are refused too
    lines = ["# TYPE vllm:prompt_tokens_total counter"] + [
        f'vllm:prompt_tokens_total{{model_name="m",engine="{i}"}} {2**52}' for i in range(3)] + [
        "# TYPE vllm:generation_tokens_total counter", 'vllm:generation_tokens_total{model_name="m"} 1']
    with pytest.raises(BadCounter, match="sums to"):
        totals_from_text("\n".join(lines) + "\n", "vllm")


def test_a_scraped_1e20_counter_is_a_gap_with_its_reason_and_the_agent_meters_on(world, tmp_path):  # noqa: F811
    config = default_config(node="n", interval_s=0.5, window_s=1,
                            sources=(SourceConfig(kind="vllm", url=world.server.url, name="vllm"),))
    node = get_devices(clock=world.clock)
    store = Store(tmp_path / "m.db")
    clocks = Clocks(wall=world.clock, mono=world.mono, boot=world.mono, sleep=world.sleep)
    agent = Agent(config, store, node, clocks=clocks)
    real_sleep = world.sleep
    state = {"t": 0.0}

    def sleep(s):  # after 2 s the server's counter reads 1e20
        real_sleep(s)
        state["t"] += s
        if state["t"] >= 2.0 and not state.get("done"):
            state["done"] = True
            world.server.add("llama-3-8b", 10**20, 1)

    agent.clocks = Clocks(wall=world.clock, mono=world.mono, boot=world.mono, sleep=sleep)
    summary = agent.run(duration_s=5.0)
    node.close()
    assert summary.gaps.get(f"tokens:{agent.sources[0][0].key}", 0) >= 4
    assert "beyond any real count" in agent.health.failing[f"tokens:{agent.sources[0][0].key}"]
    ws = store.windows()
    assert len([w for w in ws if w["device"] == "cpu"]) >= 5  # metering went on
    assert max(w["prompt_tokens"] for w in ws) < 10**6
    store.close()


def _sample(at, energy_j, power_w=300.0):
    return DeviceSample(id="g", kind="gpu", name="g", at=at, state="ok",
                        power_w=Reading(power_w, "instant", at), energy_j=Reading(energy_j, "counter", at))


def test_an_energy_counter_that_jumps_beyond_any_device_is_not_billed():
    b = WindowBuilder("g", 10, 100.0, max_gap_s=3.0)
    out = []
    for i, e in enumerate([0.0, 300.0, 1e12, 1e12 + 300.0]):
        out += b.add_sample(Tick(100.0 + i, 50.0 + i, 50.0 + i), _sample(100.0 + i, e))
    out += b.close(104.0)
    (w,) = out
    # the jump is read as instant power instead (300 W), never as 1e12 J
    assert w.energy_j == pytest.approx(3 * 300.0)
