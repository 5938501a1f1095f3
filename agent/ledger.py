"""From a closed window to the rows the store keeps (pure): the cost model applied, the cost
split into prompt and completion and across (model, tenant), the event id fixed."""

from __future__ import annotations

import json
from typing import Any

from meterd import __version__
from meterd.agent.config import Prices
from meterd.agent.attribution import APPORTIONED, split_by_owner
from meterd.agent.costmodel import DeviceShare, split_cost, window_cost
from meterd.agent.events import event_id
from meterd.agent.windows import Window


def _sum_if_all(values: list[float | None]) -> float | None:
    """Prefill/decode time is used only when every usage row reports it."""
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))  # type: ignore[arg-type]


def price_window(w: Window, node: str, device_name: str | None, prices: Prices, share: DeviceShare,
                 config_hash: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(window row, usage rows) for :meth:`agent.store.Store.commit_windows`."""
    cost = window_cost(w.start, w.end, w.energy_j, prices, share)
    keys = sorted(w.usage)
    usage_in = [(k, w.usage[k].prompt_tokens, w.usage[k].completion_tokens, w.usage[k].cached_prompt_tokens)
                for k in keys]
    usage_in = [u for u in usage_in if u[1] or u[2]]
    prefill = _sum_if_all([w.usage[k].prefill_s for k in keys])
    decode = _sum_if_all([w.usage[k].decode_s for k in keys])
    prompt_micro, completion_micro, rows = split_cost(cost, usage_in, prefill, decode, prices.prompt_token_weight,
                                                      prices.cached_prompt_token_weight)
    total_cost = cost.total_micro
    window = {
        "node": node,
        "device": w.device,
        "device_name": device_name,
        "start": w.start,
        "end": w.end,
        "energy_j": w.energy_j,
        "energy_source": w.energy_source,
        "avg_power_w": w.avg_power_w,
        "util_pct": w.util_pct,
        "prompt_tokens": w.prompt_tokens,
        "completion_tokens": w.completion_tokens,
        "cached_prompt_tokens": w.cached_prompt_tokens,
        "token_source": w.token_source,
        "token_error_bound": w.token_error_bound,
        "token_gap_s": round(w.token_gap_s, 6),
        "backfill_s": w.backfill_s,
        "cost_capex_micro": cost.capex_micro,
        "cost_energy_micro": cost.energy_micro,
        "cost_opex_micro": cost.opex_micro,
        "cost_micro": total_cost,
        "cost_prompt_micro": prompt_micro,
        "cost_completion_micro": completion_micro,
        "currency": prices.currency,
        "partial": int(w.partial),
        "gap_s": w.gap_s,
        "flags": json.dumps(w.flags),
        "config_hash": config_hash,
        "agent_version": __version__,
        "event_id": event_id(node, w.device, w.start),
    }
    # A shared GPU's window split by who used it (agent/attribution.py); [] when not measured.
    window["owners"] = [
        {"owner": o.owner, "share": o.share, "energy_j": o.energy_j, "cost_capex_micro": o.capex_micro,
         "cost_energy_micro": o.energy_micro, "cost_opex_micro": o.opex_micro, "cost_micro": o.cost_micro,
         "provenance": o.provenance}
        for o in split_by_owner(cost, w.energy_j, w.busy, w.busy_span, w.busy_provenance or APPORTIONED)
    ]
    usage = [
        {
            "model": r.key[0], "tenant": r.key[1], "owner": w.usage[r.key].owner,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "cached_prompt_tokens": r.cached_prompt_tokens,
            "token_source": w.usage[r.key].token_source,
            "cost_micro": r.cost_micro, "cost_prompt_micro": r.cost_prompt_micro,
            "cost_completion_micro": r.cost_completion_micro, "cost_capex_micro": r.capex_micro,
            "cost_energy_micro": r.energy_micro, "cost_opex_micro": r.opex_micro,
            "energy_j": (w.energy_j * r.cost_micro / total_cost) if (w.energy_j and total_cost) else None,
        }
        for r in rows
    ]
    return window, usage
