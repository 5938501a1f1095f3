"""Windows for the billing tests: several models and tenants, untenanted usage and idle windows,
priced by the agent's own ledger code and committed to a real store."""

from __future__ import annotations

import pytest

from meterd.agent.store import Store
from meterd.agent.config import Prices, to_micro
from meterd.agent.costmodel import DeviceShare
from meterd.agent.ledger import price_window
from meterd.agent.windows import Usage, Window

PRICES = Prices(rental_per_gpu_hour_micro=to_micro("3.6"), energy_per_kwh_micro=to_micro("0.36"), pue=1.2,
                opex_per_node_month_micro=to_micro(300))
MIX = [
    {("llama-3-8b", "team-a"): Usage(1200, 300, cached_prompt_tokens=400), ("llama-3-8b", "team-b"): Usage(700, 450),
     ("qwen-7b", "team-a"): Usage(90, 33)},
    {},  # idle
    {("qwen-7b", ""): Usage(5000, 1, cached_prompt_tokens=4096)},  # untenanted
    {("llama-3-8b", "team-b"): Usage(1, 0)},
]


def seed(store, n: int, start: float, node: str = "n1", devices=("GPU-0", "GPU-1"), step: float = 60.0) -> list:
    rows = []
    for i in range(n):
        for d, dev in enumerate(devices):
            usage = MIX[(i + d) % len(MIX)]
            w = Window(dev, start + step * i, start + step * (i + 1), energy_j=30_000.0 + 17.3 * i + d,
                       energy_source="counter", covered_s=step,
                       usage={k: Usage(u.prompt_tokens, u.completion_tokens,
                                       cached_prompt_tokens=u.cached_prompt_tokens) for k, u in usage.items()})
            rows.append(price_window(w, node, "H100", PRICES, DeviceShare.for_node(True, 8), "sha256:t"))
    store.commit_windows(rows)
    return rows


@pytest.fixture
def store(tmp_path):
    """A real agent store for a sink test (import it into the test module to use it)."""
    s = Store(tmp_path / "m.db")
    yield s
    s.close()


def drain(shipper, max_rounds: int = 500) -> None:
    """Ship until the outbox is idle; a bounded loop that fails if it never drains."""
    for _ in range(max_rounds):
        if shipper.ship_once().idle:
            return
    raise AssertionError("the outbox did not drain")
