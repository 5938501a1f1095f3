"""The billing wire format (docs/wire-format.md): ``meterd.usage.v1``, flat CloudEvents that a
billing system can meter by model and tenant.

One event per (device-window, model, tenant) that had tokens, plus one per device-window for its
idle remainder (the cost and energy no usage row carries; ``model`` and ``tenant`` empty), so that
the usage events of a window add up exactly to the window's cost. ``data`` holds scalars only:
OpenMeter meters read one value per JSONPath, Lago and Stripe take flat properties.

Pure: builds events from stored window and usage rows. Ids are derived from the window's event id
and the (model, tenant), so a resend is the same event and every sink can deduplicate it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from meterd.units import iso

USAGE_EVENT_TYPE = "meterd.usage.v1"
#: The scalar fields of ``data`` that are whole numbers (what a sum meter can bill exactly).
INTEGER_FIELDS = (
    "prompt_tokens", "cached_prompt_tokens", "completion_tokens", "tokens", "cost_micro",
    "cost_prompt_micro", "cost_completion_micro", "cost_capex_micro", "cost_energy_micro",
    "cost_opex_micro",
)
#: Fields a sink may bill (``[ship.metrics]`` keys): the whole numbers, and energy in joules.
BILLABLE_FIELDS = (*INTEGER_FIELDS, "energy_j")


def usage_event_id(window_event_id: str, model: str | None, tenant: str | None, idle: bool = False) -> str:
    """Deterministic id of one usage event: uuid5 under the window's event id of the (model,
    tenant) pair, or of ``idle`` for the window's idle remainder. JSON keeps any model or tenant
    text (a ``|`` in a name included) from colliding with another."""
    ns = uuid.UUID(window_event_id)
    name = "idle" if idle else json.dumps(["usage", model or "", tenant or ""], separators=(",", ":"))
    return str(uuid.uuid5(ns, name))


def derived_id(event_id: str, name: str) -> str:
    """A stable id for one of several records a sink makes of one event (a Lago event per billable
    metric, a Stripe meter event per meter): uuid5 under the event's id."""
    return str(uuid.uuid5(uuid.UUID(event_id), name))


def usage_events(window: dict[str, Any], usage: list[dict[str, Any]], subject: str | None = None) -> list[dict[str, Any]]:
    """The ``meterd.usage.v1`` events of one stored window row and its usage rows.

    ``subject``: the billed customer for untenanted and idle usage (default: the node); a
    tenant's usage has the tenant as its subject.
    """
    fallback = subject or window["node"]
    base = {
        "node": window["node"],
        "device": window["device"],
        "start": iso(window["start"]),
        "end": iso(window["end"]),
        "duration_s": round(window["end"] - window["start"], 6),
        "currency": window["currency"],
        "energy_source": window.get("energy_source") or "",
        "partial": bool(window["partial"]),
        "window_id": window["event_id"],
    }
    out = []
    left = {k: int(window[k]) for k in ("cost_micro", "cost_capex_micro", "cost_energy_micro", "cost_opex_micro")}
    energy_left = float(window.get("energy_j") or 0.0)
    for u in usage:
        prompt, completion = int(u["prompt_tokens"]), int(u["completion_tokens"])
        energy = float(u.get("energy_j") or 0.0)
        data = {
            **base, "kind": "tokens", "model": u["model"] or "", "tenant": u["tenant"] or "",
            "owner": u.get("owner") or "",
            "prompt_tokens": prompt,
            "cached_prompt_tokens": int(u.get("cached_prompt_tokens") or 0),
            "completion_tokens": completion, "tokens": prompt + completion,
            "energy_j": energy,
            "cost_micro": int(u["cost_micro"]),
            "cost_prompt_micro": int(u["cost_prompt_micro"]),
            "cost_completion_micro": int(u["cost_completion_micro"]),
            "cost_capex_micro": int(u["cost_capex_micro"]),
            "cost_energy_micro": int(u["cost_energy_micro"]),
            "cost_opex_micro": int(u["cost_opex_micro"]),
        }
        for k in left:
            left[k] -= data[k]
        energy_left -= energy
        out.append(_event(window, usage_event_id(window["event_id"], u["model"], u["tenant"]),
                          data["tenant"] or fallback, data))
    # Usage rows carry the window's energy in float shares: a sum that differs by rounding
    # (relative 1e-9) is not an idle remainder.
    tolerance = 1e-9 * abs(float(window.get("energy_j") or 0.0)) + 1e-6
    energy_left = round(energy_left, 6) if abs(energy_left) > tolerance else 0.0
    if not out or any(left.values()) or energy_left:
        data = {
            **base, "kind": "idle", "model": "", "tenant": "", "owner": "",
            "prompt_tokens": 0, "cached_prompt_tokens": 0, "completion_tokens": 0, "tokens": 0,
            "energy_j": energy_left,
            "cost_micro": left["cost_micro"], "cost_prompt_micro": 0, "cost_completion_micro": 0,
            "cost_capex_micro": left["cost_capex_micro"], "cost_energy_micro": left["cost_energy_micro"],
            "cost_opex_micro": left["cost_opex_micro"],
        }
        out.append(_event(window, usage_event_id(window["event_id"], None, None, idle=True), fallback, data))
    return out


def _event(window: dict[str, Any], eid: str, subject: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": eid,
        "source": window["node"],
        "type": USAGE_EVENT_TYPE,
        "time": iso(window["start"]),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }
