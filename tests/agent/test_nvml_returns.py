"""NVML that is not there when the agent starts (no driver yet, a driver being reloaded) and
comes later: the agent meters the CPU meanwhile, looks again with backoff, and brings the GPUs
in when they appear; their windows start then (no window before: the gap shows)."""

import logging

from meterd.agent.config import default_config
from meterd.agent.daemon import Agent
from meterd.agent.sampler import Clocks
from meterd.agent.store import Store
from meterd.probes.devices import get_devices
from tests.fakes.nvml import h100

T0 = 1_800_000_000.0


def test_gpus_that_appear_after_start_are_brought_in(fake_nvml, clock, tmp_path, caplog):
    clock.t = T0
    fake_nvml(missing="library")
    node = get_devices(clock=clock)
    assert [d.kind for d in node.devices] == ["cpu"]
    mono0 = clock()
    state = {"installed": False}

    def sleep(s):
        clock.advance(s)
        if clock() - T0 >= 8 and not state["installed"]:  # the driver comes up after 8 s
            state["installed"] = True
            fake_nvml([h100(curve=[(0.0, 400.0)]), h100(curve=[(0.0, 400.0)])])

    clocks = Clocks(wall=clock, mono=lambda: clock() - mono0 + 10, boot=lambda: clock() - mono0 + 20, sleep=sleep)
    store = Store(tmp_path / "m.db")
    with caplog.at_level(logging.WARNING):
        Agent(default_config(node="n", interval_s=0.5, window_s=1), store, node, clocks=clocks).run(duration_s=30.0)
    node.close()
    ws = store.windows()
    gpus = {w["device"] for w in ws if w["device"].startswith("GPU-")}
    assert len(gpus) == 2
    first_gpu = min(w["start"] for w in ws if w["device"] in gpus)
    # tried at 5 s (no GPU yet), then 10 s later: found at 15 s
    assert T0 + 8 <= first_gpu <= T0 + 16
    cpu = [w for w in ws if w["device"] == "cpu"]
    assert sum(w["end"] - w["start"] for w in cpu) >= 29.9  # the CPU was metered throughout
    gpu_energy = sum(w["energy_j"] or 0 for w in ws if w["device"] in gpus)
    assert gpu_energy > 0
    assert sum("GPUs appeared" in r.message for r in caplog.records) == 1
    store.close()


def test_looking_again_for_gpus_that_are_not_there_logs_the_reason_once(fake_nvml, clock, tmp_path, caplog):
    """The start says why there is no GPU (info); each backoff retry with the same answer is
    debug only, so a GPU-less node's log does not repeat the line every few seconds."""
    clock.t = T0
    fake_nvml(missing="library")
    mono0 = clock()
    clocks = Clocks(wall=clock, mono=lambda: clock() - mono0 + 10, boot=lambda: clock() - mono0 + 20,
                    sleep=clock.advance)
    store = Store(tmp_path / "m.db")
    with caplog.at_level(logging.DEBUG, logger="meterd"):
        node = get_devices(clock=clock)
        Agent(default_config(node="n", interval_s=0.5, window_s=1), store, node, clocks=clocks).run(duration_s=40.0)
    node.close()
    store.close()
    said = [r for r in caplog.records if "NVML not available" in r.getMessage()]
    assert [r.levelno for r in said if r.levelno >= logging.INFO] == [logging.INFO]
    assert len(said) >= 3  # the retries (5, 15, 35 s) did happen, at debug level
