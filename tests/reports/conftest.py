"""A small fleet whose every figure is known by hand, committed through the agent's own store
(agent.store.Store.commit_windows, which also builds the rollups)."""

from __future__ import annotations

from typing import Any

import pytest

from meterd.agent.events import event_id
from meterd.agent.store import Store

MON = 1_795_392_000.0  # Monday 2026-11-23T00:00:00Z
HOUR, DAY, WEEK = 3600.0, 86400.0, 7 * 86400.0


def window(node: str, device: str, start: float, *, capex: int, energy: int, opex: int,
           prompt_cost: int = 0, energy_j: float | None = 0.0, util: float | None = 0.0,
           usage: tuple = (), currency: str = "USD") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A window row and its usage rows. ``usage``: (model, tenant, prompt, completion,
    cost_prompt, cost_completion, capex, energy, opex) per row; the window's tokens are theirs."""
    total = capex + energy + opex
    rows = []
    for model, tenant, p, c, cp, cc, ux, ue, uo in usage:
        assert ux + ue + uo == cp + cc
        rows.append({"model": model, "tenant": tenant, "prompt_tokens": p, "completion_tokens": c,
                     "cost_micro": cp + cc, "cost_prompt_micro": cp, "cost_completion_micro": cc,
                     "cost_capex_micro": ux, "cost_energy_micro": ue, "cost_opex_micro": uo,
                     "energy_j": energy_j * (cp + cc) / total if energy_j and total else None})
    prompt = sum(u["prompt_tokens"] for u in rows)
    completion = sum(u["completion_tokens"] for u in rows)
    tokens = prompt + completion
    if rows:
        assert sum(u["cost_micro"] for u in rows) == total
    w = {
        "node": node, "device": device, "device_name": "NVIDIA H100 80GB HBM3", "start": start,
        "end": start + 60, "energy_j": energy_j, "energy_source": "counter", "avg_power_w":
        None if energy_j is None else energy_j / 60, "util_pct": util, "prompt_tokens": prompt,
        "completion_tokens": completion, "cost_capex_micro": capex, "cost_energy_micro": energy,
        "cost_opex_micro": opex, "cost_micro": total,
        "cost_prompt_micro": sum(u["cost_prompt_micro"] for u in rows) if tokens else 0,
        "cost_completion_micro": sum(u["cost_completion_micro"] for u in rows) if tokens else 0,
        "currency": currency, "partial": 0, "gap_s": 0.0, "flags": "[]", "config_hash": "sha256:t",
        "agent_version": "0.1.0", "event_id": event_id(node, device, start),
    }
    return w, rows


def fleet_windows() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Five windows on two nodes over two weeks; totals: cost 9,300 micro, 4,000 prompt and 7,500
    completion tokens, 32,000 J. By model: a 3,700 (4,000 + 2,500 tokens), b 4,800 (0 + 5,000),
    idle 800."""
    return [
        window("n1", "GPU-0", MON, capex=600, energy=300, opex=100, energy_j=6000.0, util=50.0,
               usage=[("a", "", 1000, 500, 400, 600, 600, 300, 100)]),
        window("n1", "GPU-0", MON + 60, capex=600, energy=100, opex=100, energy_j=2000.0, util=0.0),
        window("n1", "GPU-1", MON + HOUR, capex=1200, energy=600, opex=200, energy_j=12000.0, util=80.0,
               usage=[("a", "acme", 2000, 1000, 500, 700, 720, 360, 120),
                      ("b", "", 0, 1000, 0, 800, 480, 240, 80)]),
        window("n2", "GPU-0", MON + DAY, capex=3000, energy=800, opex=200, energy_j=9000.0, util=100.0,
               usage=[("b", "", 0, 4000, 0, 4000, 3000, 800, 200)]),
        window("n2", "GPU-0", MON + WEEK + 120, capex=1000, energy=400, opex=100, energy_j=3000.0,
               util=30.0, usage=[("a", "", 1000, 1000, 500, 1000, 1000, 400, 100)]),
    ]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "meterd.db")
    yield s
    s.close()


@pytest.fixture
def fleet(store):
    assert store.commit_windows(fleet_windows()) == 5
    return store
