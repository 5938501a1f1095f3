"""Token sources on their own interval: scraped a few times per window, and always in the round
that closes a window, so a window's tokens are exactly the counters' delta up to its end."""

from meterd.agent.config import Prices, SourceConfig, default_config, to_micro
from meterd.agent.daemon import Agent
from meterd.agent.sampler import Clocks
from meterd.agent.store import Store
from meterd.probes.devices import get_devices
from tests.fakes.nvml import h100
from tests.fakes.servers import FakeInferenceServer

T0 = 1_800_000_000.0


def _run(fake_nvml, clock, tmp_path, **config):
    clock.t = T0
    fake_nvml([h100(curve=[(0.0, 300.0)])])
    mono = {"t": 0.0}
    with FakeInferenceServer("vllm", ["m"]) as srv:
        def sleep(s):
            before = clock()
            clock.advance(s)
            mono["t"] += s
            # one request completes at every x.5 s
            for k in range(int(before - T0 + 0.5) + 1, int(clock() - T0 + 0.5) + 1):
                srv.add("m", 100, 10)

        prices = Prices(rental_per_gpu_hour_micro=to_micro("3.6"), energy_per_kwh_micro=0, opex_per_node_month_micro=0)
        cfg = default_config(node="n", interval_s=1.0, window_s=10, prices=prices,
                             sources=(SourceConfig(kind="vllm", url=srv.url, name="vllm", devices=("0",)),), **config)
        node = get_devices(clock=clock)
        store = Store(tmp_path / "m.db")
        Agent(cfg, store, node, clocks=Clocks(wall=clock, mono=lambda: mono["t"], boot=lambda: mono["t"],
                                             sleep=sleep)).run(duration_s=20.0)
        node.close()
        scrapes = srv.scrapes
    gpu = [w for w in store.windows() if w["device"].startswith("GPU-")]
    store.close()
    return scrapes, gpu


def test_sources_are_scraped_a_few_times_a_window_and_at_its_close(fake_nvml, clock, tmp_path):
    scrapes, gpu = _run(fake_nvml, clock, tmp_path)
    assert scrapes <= 12  # 21 rounds; every 2.5 s and at each window's close
    full = [w for w in gpu if w["end"] - w["start"] == 10]
    assert len(full) == 2
    # the requests that completed inside each window, exactly: ten each
    assert [(w["prompt_tokens"], w["completion_tokens"]) for w in full] == [(1000, 100), (1000, 100)]


def test_a_tokens_interval_of_one_round_scrapes_every_round(fake_nvml, clock, tmp_path):
    scrapes, gpu = _run(fake_nvml, clock, tmp_path, tokens_interval_s=1.0)
    assert scrapes >= 20
    full = [w for w in gpu if w["end"] - w["start"] == 10]
    assert [(w["prompt_tokens"], w["completion_tokens"]) for w in full] == [(1000, 100), (1000, 100)]
