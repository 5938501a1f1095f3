"""One cost model: `meter bench`'s capacity (ceiling) cost is the agent's own cost model
(agent/costmodel.py) with the same prices and the same per-device share as billing. On a node
with GPUs the CPU is billed energy only, so its capacity is priced at energy only too."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from meterd.agent.bench_run import price_capacity
from meterd.agent.cli import main
from meterd.agent.config import default_config
from meterd.agent.costmodel import DeviceShare, capacity_rate_micro_per_s, node_shares
from meterd.agent.ledger import price_window
from meterd.agent.windows import Window
from meterd.units import J_PER_KWH
from tests.fakes.nvml import h100

HOURS_1000 = 3_600_000.0  # a long window, so the billed integer micro-units pin the rate down


@pytest.fixture(autouse=True)
def _no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)


def billed_rate(prices, share: DeviceShare, watts: float) -> tuple[dict, float]:
    """What the agent bills a device drawing ``watts`` for HOURS_1000: its window row, and the
    micro-units per second that makes."""
    w, _ = price_window(Window("cpu", 0.0, HOURS_1000, energy_j=watts * HOURS_1000, energy_source="counter",
                               covered_s=HOURS_1000), "n", "CPU", prices, share, "h")
    return w, w["cost_micro"] / HOURS_1000


def bench_cpu(tmp_path) -> list[dict]:
    r = CliRunner().invoke(main, ["bench", "--tiny", "--json", "--device", "cpu", "--db", str(tmp_path / "m.db")])
    assert r.exit_code == 0, r.output
    cap = json.loads(r.output)["capacity"]
    assert cap and all(c["device"] == "cpu" and c["watts"] for c in cap)
    return cap


def test_on_a_gpu_node_the_cpus_capacity_cost_is_what_the_agent_bills_it(tmp_path, fake_nvml):
    fake_nvml([h100(), h100()])
    from meterd.probes.devices import get_devices

    node = get_devices()
    try:
        share = node_shares(node.devices)["cpu"]  # the share the daemon bills the CPU with
    finally:
        node.close()
    assert share == DeviceShare(is_gpu=False, billable=False, billable_devices=2)
    prices = default_config().prices
    for c in bench_cpu(tmp_path):
        w, rate = billed_rate(prices, share, c["watts"])
        assert w["cost_capex_micro"] == 0 and w["cost_opex_micro"] == 0  # energy only
        assert c["cost_rate_micro_per_s"] == pytest.approx(rate, rel=1e-9, abs=1 / HOURS_1000)  # one micro-unit of rounding
        assert c["cost_rate_micro_per_s"] == pytest.approx(c["watts"] * prices.pue / J_PER_KWH
                                                          * prices.energy_per_kwh_micro, rel=1e-12)
        assert c["cost_per_mtok_decode_micro"] == pytest.approx(rate * 1e6 / c["decode_tokens_per_s"], abs=1)
        assert c["cost_per_mtok_prefill_micro"] == pytest.approx(rate * 1e6 / c["prefill_tokens_per_s"], abs=1)


def test_on_a_cpu_only_node_the_cpu_carries_the_node_in_capacity_as_in_billing(tmp_path, no_nvml):
    prices = default_config().prices
    share = DeviceShare.for_node(False, 0)
    for c in bench_cpu(tmp_path):
        w, rate = billed_rate(prices, share, c["watts"])
        assert w["cost_capex_micro"] > 0 and w["cost_opex_micro"] > 0
        # the billed window rounds once to a micro-unit over HOURS_1000: that is the tolerance
        assert c["cost_rate_micro_per_s"] == pytest.approx(rate, rel=1e-9, abs=1 / HOURS_1000)


def test_a_gpus_capacity_carries_its_capex_and_its_share_of_the_node():
    prices = default_config().prices
    shares = {"GPU-0": DeviceShare.for_node(True, 4), "cpu": DeviceShare.for_node(False, 4)}
    rows = [{"device": d, "model": "m", "watts": 700.0, "prefill_tokens_per_s": 50_000.0,
             "decode_tokens_per_s": 5_000.0} for d in shares]
    gpu, cpu = price_capacity(rows, prices, shares)
    for row, share in ((gpu, shares["GPU-0"]), (cpu, shares["cpu"])):
        _, rate = billed_rate(prices, share, 700.0)
        assert row["cost_rate_micro_per_s"] == pytest.approx(rate, rel=1e-9)
        assert row["currency"] == prices.currency and isinstance(row["cost_per_mtok_decode_micro"], int)
    assert gpu["cost_rate_micro_per_s"] > cpu["cost_rate_micro_per_s"]
    # unknown watts: no energy; tokens/s 0: no cost per Mtok, never a division by zero
    (none,) = price_capacity([{**rows[1], "watts": None, "decode_tokens_per_s": 0.0}], prices, shares)
    assert none["cost_rate_micro_per_s"] == 0 and none["cost_per_mtok_decode_micro"] is None
    assert capacity_rate_micro_per_s(prices, shares["cpu"], None) == 0
