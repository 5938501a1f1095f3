"""The wall clock stepped under a running agent, through its clock seam: +6 h and -30 s. Window
durations, capex and opex follow elapsed (boot-clock) time: no phantom windows for the 6 hours
that never passed, no window held open or unbilled for the 30 s; the windows at the step are
flagged clock_step, and after a step forward the windows are aligned to the new wall clock."""

import json

import pytest

from meterd.agent.config import Prices, default_config, to_micro
from meterd.agent.daemon import Agent
from meterd.agent.sampler import Clocks
from meterd.agent.store import Store
from meterd.probes.devices import get_devices
from tests.fakes.nvml import h100

T0 = 1_800_000_000.0
# 1000 micro-units a second per GPU, energy free: a window's capex is its billed seconds
PRICES = Prices(rental_per_gpu_hour_micro=to_micro("3.6"), energy_per_kwh_micro=0, opex_per_node_month_micro=0)


def run_with_step(fake_nvml, clock, tmp_path, step_s, seconds=10.0, step_after=5.0):
    clock.t = T0
    fake_nvml([h100(curve=[(0.0, 500.0)])])
    mono0 = clock()
    offset = {"s": 0.0}

    def sleep(s):
        clock.advance(s)
        if clock() - T0 >= step_after:
            offset["s"] = step_s

    clocks = Clocks(wall=lambda: clock() + offset["s"], mono=lambda: clock() - mono0 + 100.0,
                    boot=lambda: clock() - mono0 + 200.0, sleep=sleep)
    node = get_devices(clock=clock)
    store = Store(tmp_path / "m.db")
    config = default_config(node="n", interval_s=0.5, window_s=1, prices=PRICES)
    Agent(config, store, node, clocks=clocks).run(duration_s=seconds)
    node.close()
    ws = [w for w in store.windows() if w["device"].startswith("GPU-")]
    store.close()
    return ws


def test_six_hours_forward_bills_the_ten_seconds_that_passed(fake_nvml, clock, tmp_path):
    ws = run_with_step(fake_nvml, clock, tmp_path, 6 * 3600.0)
    assert len(ws) <= 12  # not 21,600 windows for the step
    billed = sum(w["end"] - w["start"] for w in ws)
    assert billed == pytest.approx(10.0, abs=0.01)
    assert sum(w["cost_capex_micro"] for w in ws) == pytest.approx(10_000, abs=10)
    assert sum(w["energy_j"] or 0 for w in ws) == pytest.approx(500.0 * 10, rel=0.02)
    stepped = [w for w in ws if "clock_step" in json.loads(w["flags"])]
    assert len(stepped) == 2 and stepped[1]["start"] >= T0 + 6 * 3600
    after = [w for w in ws if w["start"] >= T0 + 6 * 3600]
    assert all(w["end"] == int(w["end"]) for w in after[:-1])  # aligned to the new wall clock


def test_thirty_seconds_back_holds_nothing_open_and_hides_no_time(fake_nvml, clock, tmp_path):
    ws = run_with_step(fake_nvml, clock, tmp_path, -30.0)
    starts = [w["start"] for w in ws]
    assert starts == sorted(set(starts))
    for a, b in zip(ws, ws[1:]):
        assert b["start"] == pytest.approx(a["end"])  # no overlap, no hole
        assert a["end"] - a["start"] <= 1.0 + 1e-9  # no 1 s window held open for 30 s
    billed = sum(w["end"] - w["start"] for w in ws)
    assert billed == pytest.approx(10.0, abs=0.01)
    assert sum(w["gap_s"] for w in ws) <= 0.01
    assert sum(w["energy_j"] or 0 for w in ws) == pytest.approx(500.0 * 10, rel=0.02)
    assert sum(w["cost_capex_micro"] for w in ws) == pytest.approx(10_000, abs=10)
    assert sum("clock_step" in json.loads(w["flags"]) for w in ws) == 1
