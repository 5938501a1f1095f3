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


def test_a_report_says_when_its_tokens_rest_on_rounded_counters(tmp_path):
    import json

    from click.testing import CliRunner

    from meterd.agent.cli import main
    from meterd.agent.costmodel import DeviceShare
    from meterd.agent.ledger import price_window
    from meterd.agent.windows import Usage, Window

    w = Window("GPU-0", T0, T0 + 60, energy_j=6000.0, energy_source="counter", covered_s=60.0)
    w.usage[("gemma", "")] = Usage(1_234_570, 10, cached_prompt_tokens=400_000, token_source="rounded",
                                   error_bound=5)
    row = price_window(w, "n", "H100", default_config().prices, DeviceShare.for_node(True, 1), "h")
    assert row[0]["token_source"] == "rounded" and row[0]["token_error_bound"] == 5
    store = Store(tmp_path / "m.db")
    store.commit_windows([row])
    store.close()
    r = CliRunner().invoke(main, ["report", "--db", str(tmp_path / "m.db"), "--format", "json"])
    doc = json.loads(r.stdout)
    assert doc["totals"]["rounded_tokens"] == 1_234_580 and doc["totals"]["cached_prompt_tokens"] == 400_000
    table = CliRunner().invoke(main, ["report", "--db", str(tmp_path / "m.db"), "--wide"])
    text = " ".join(table.stdout.split())  # the caption wraps at the terminal's width
    assert "rest on rounded counters" in text and "400,000 of the prompt tokens" in text
