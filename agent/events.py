"""The wire format (docs/wire-format.md): one CloudEvents 1.0 event per device-window.

Pure: builds events from stored window rows. The id is derived from (node, device, window start)
so a resend is the same event and any sink can deduplicate it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from meterd.units import iso

EVENT_TYPE = "meterd.window.v1"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
METERD_NAMESPACE = uuid.UUID("5b0a3f52-9a6c-4c8e-8f0e-6d1f0e3b7a21")


def event_id(node: str, device: str, start: float) -> str:
    """Deterministic id of a device-window. Milliseconds, because a partial window (the agent
    restarted mid-window) starts where the agent started, not on a boundary."""
    return str(uuid.uuid5(METERD_NAMESPACE, f"{node}|{device}|{int(round(start * 1000))}"))


def window_event(window: dict[str, Any], usage: list[dict[str, Any]]) -> dict[str, Any]:
    """A CloudEvent (structured mode, as a dict) for one stored window row and its usage rows."""
    flags = window.get("flags") or "[]"
    event = {
        "specversion": "1.0",
        "id": window["event_id"],
        "source": window["node"],
        "type": EVENT_TYPE,
        "time": iso(window["start"]),
        "subject": window["device"],
        "datacontenttype": "application/json",
        "data": {
            "node": window["node"],
            "device": window["device"],
            "device_name": window.get("device_name"),
            "start": iso(window["start"]),
            "end": iso(window["end"]),
            "duration_s": round(window["end"] - window["start"], 6),
            "energy_j": window.get("energy_j"),
            "energy_source": window.get("energy_source"),
            "avg_power_w": window.get("avg_power_w"),
            "util_pct": window.get("util_pct"),
            "prompt_tokens": int(window["prompt_tokens"]),
            "completion_tokens": int(window["completion_tokens"]),
            "cached_prompt_tokens": int(window.get("cached_prompt_tokens") or 0),
            "token_source": window.get("token_source"),
            "token_error_bound": int(window.get("token_error_bound") or 0),
            "token_gap_s": float(window.get("token_gap_s") or 0.0),
            "backfill_s": float(window.get("backfill_s") or 0.0),
            "usage": [
                {**{k: u[k] for k in ("model", "tenant", "prompt_tokens", "completion_tokens",
                                      "cost_micro", "cost_prompt_micro", "cost_completion_micro")},
                 "cached_prompt_tokens": int(u.get("cached_prompt_tokens") or 0)}
                for u in usage
            ],
            "cost": {
                "capex_micro": int(window["cost_capex_micro"]),
                "energy_micro": int(window["cost_energy_micro"]),
                "opex_micro": int(window["cost_opex_micro"]),
                "total_micro": int(window["cost_micro"]),
                "prompt_micro": int(window["cost_prompt_micro"]),
                "completion_micro": int(window["cost_completion_micro"]),
                "currency": window["currency"],
            },
            "partial": bool(window["partial"]),
            "gap_s": float(window["gap_s"]),
            "flags": json.loads(flags) if isinstance(flags, str) else list(flags),
            "config_hash": window.get("config_hash"),
            "agent_version": window.get("agent_version"),
        },
    }
    for row, u in zip(event["data"]["usage"], usage):
        if u.get("owner"):
            row["owner"] = u["owner"]
    if window.get("owners"):  # a shared GPU's window split by who used it (agent/attribution.py)
        event["data"]["owners"] = [
            {"owner": o["owner"], "share": o["share"], "energy_j": o["energy_j"], "provenance": o["provenance"],
             "cost": {"capex_micro": int(o["cost_capex_micro"]), "energy_micro": int(o["cost_energy_micro"]),
                      "opex_micro": int(o["cost_opex_micro"]), "total_micro": int(o["cost_micro"])}}
            for o in window["owners"]
        ]
    return event
