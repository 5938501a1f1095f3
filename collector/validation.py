"""Schema validation of ``meterd.window.v1`` events (docs/wire-format.md), and their flattening
into store rows.

Pure: values in, values out; no clock, no file, no network. ``check_batch`` returns the parsed
events and a per-event error list (``index``, ``id``, ``field``, ``problem``); a batch with any
error is refused whole by the collector, so the checks here decide what a bill may contain.

Beyond types, the checks hold the contract's arithmetic (``total = capex + energy + opex``, the
prompt/completion split, the usage rows' costs summing to the total) and the id derivation: the
id must be ``event_id(node, device, start)``. That last check is what makes "unique on (source,
id)" mean "a device-window is billed once": with a free-form id, the same minute resent under a
new id would be billed twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from meterd.agent.events import EVENT_TYPE, event_id

MAX_INT = 2**63 - 1  # SQLite INTEGER
ENERGY_SOURCES = ("counter", "integrated", "estimated")
# The wire carries times to the millisecond (agent.events.iso truncates) while event_id rounds
# the unrounded start: allow the ids of the neighbouring milliseconds, and a duration that is off
# by the truncation of both ends.
TIME_TOLERANCE_S = 0.01

_USAGE_INTS = ("prompt_tokens", "completion_tokens", "cost_micro", "cost_prompt_micro",
               "cost_completion_micro")
_COST_INTS = ("capex_micro", "energy_micro", "opex_micro", "total_micro", "prompt_micro",
              "completion_micro")


@dataclass
class Parsed:
    """One valid event, ready for the store: its raw JSON, a window row and its usage rows."""

    source: str
    id: str
    raw: str
    window: dict[str, Any]
    usage: list[dict[str, Any]] = field(default_factory=list)


class _Errors:
    def __init__(self, index: int, event_id_: str | None) -> None:
        self.index, self.id, self.items = index, event_id_, []

    def add(self, fld: str, problem: str) -> None:
        self.items.append({"index": self.index, "id": self.id, "field": fld, "problem": problem})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _count(errs: _Errors, obj: dict, key: str, where: str) -> int | None:
    """A non-negative integer that fits SQLite, or None after recording why not."""
    v = obj.get(key)
    if type(v) is int and 0 <= v <= MAX_INT:  # the common case, checked first
        return v
    if not _is_int(v):
        errs.add(where + key, "missing" if key not in obj else f"must be an integer, not {_tname(v)}")
        return None
    if v < 0 or v > MAX_INT:
        errs.add(where + key, f"must be between 0 and {MAX_INT}, not {v}")
        return None
    return v


def _number(errs: _Errors, obj: dict, key: str, where: str, *, optional: bool, minimum: float | None = 0.0):
    if key not in obj:
        if not optional:
            errs.add(where + key, "missing")
        return None
    v = obj[key]
    if v is None and optional:
        return None
    if not _is_num(v):
        errs.add(where + key, f"must be a finite number, not {_tname(v)}")
        return None
    if minimum is not None and v < minimum:
        errs.add(where + key, f"must be >= {minimum:g}, not {v}")
        return None
    return float(v)


def _text(errs: _Errors, obj: dict, key: str, where: str, *, optional: bool = False,
          empty_ok: bool = False) -> str | None:
    if key not in obj or (optional and obj[key] is None):
        if not optional:
            errs.add(where + key, "missing")
        return None
    v = obj[key]
    if not isinstance(v, str):
        errs.add(where + key, f"must be a string, not {_tname(v)}")
        return None
    if not v and not empty_ok:
        errs.add(where + key, "must not be empty")
        return None
    return v


def _tname(v: Any) -> str:
    return "null" if v is None else {dict: "object", list: "array", str: "string", bool: "boolean",
                                     int: "integer", float: "number"}.get(type(v), type(v).__name__)


def parse_time(text: Any) -> float | None:
    """Unix seconds from an ISO-8601 time that names its offset (``Z`` or ``+hh:mm``), or None."""
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt.timestamp()


def _time(errs: _Errors, obj: dict, key: str, where: str) -> float | None:
    if key not in obj:
        errs.add(where + key, "missing")
        return None
    t = parse_time(obj[key])
    if t is None:
        errs.add(where + key, "must be an ISO-8601 time with a UTC offset, e.g. 2026-11-27T22:41:00Z")
    return t


def check_event(ev: Any, index: int) -> tuple[Parsed | None, list[dict[str, Any]]]:
    """Validate one event; returns (the parsed event or None, its errors)."""
    if not isinstance(ev, dict):
        errs = _Errors(index, None)
        errs.add("", f"an event must be a JSON object, not {_tname(ev)}")
        return None, errs.items
    errs = _Errors(index, ev["id"] if isinstance(ev.get("id"), str) else None)

    if ev.get("specversion") != "1.0":
        errs.add("specversion", f"must be \"1.0\", not {json.dumps(ev.get('specversion'))}")
    eid = _text(errs, ev, "id", "")
    source = _text(errs, ev, "source", "")
    if ev.get("type") != EVENT_TYPE:
        errs.add("type", f"must be \"{EVENT_TYPE}\", not {json.dumps(ev.get('type'))}")
    subject = _text(errs, ev, "subject", "")
    ce_time = _time(errs, ev, "time", "")
    dct = ev.get("datacontenttype", "application/json")
    if not isinstance(dct, str) or dct.split(";")[0].strip().lower() != "application/json":
        errs.add("datacontenttype", "must be \"application/json\" (or absent)")
    data = ev.get("data")
    if not isinstance(data, dict):
        errs.add("data", "missing" if "data" not in ev else f"must be an object, not {_tname(data)}")
        return None, errs.items

    d = "data."
    node = _text(errs, data, "node", d)
    device = _text(errs, data, "device", d)
    if node is not None and source is not None and node != source:
        errs.add("data.node", f"must equal the event's source {source!r}, not {node!r}")
    if device is not None and subject is not None and device != subject:
        errs.add("data.device", f"must equal the event's subject {subject!r}, not {device!r}")
    device_name = _text(errs, data, "device_name", d, optional=True, empty_ok=True)
    start = _time(errs, data, "start", d)
    end = _time(errs, data, "end", d)
    if start is not None and end is not None and end <= start:
        errs.add("data.end", "must be after data.start")
    if start is not None and ce_time is not None and abs(ce_time - start) > TIME_TOLERANCE_S:
        errs.add("time", "must be the window's start (data.start)")
    duration = _number(errs, data, "duration_s", d, optional=False)
    if duration is not None and start is not None and end is not None and end > start \
            and abs(duration - (end - start)) > TIME_TOLERANCE_S:
        errs.add("data.duration_s", f"must be end - start ({end - start:g} s), not {duration:g}")
    energy = _number(errs, data, "energy_j", d, optional=True)
    if "energy_j" not in data:
        errs.add("data.energy_j", "missing (null when unknown)")
    energy_source = data.get("energy_source")
    if energy_source not in ENERGY_SOURCES and not (energy_source is None and energy is None):
        errs.add("data.energy_source", f"must be one of {', '.join(ENERGY_SOURCES)}, "
                                       f"not {json.dumps(energy_source)}")
    avg_power = _number(errs, data, "avg_power_w", d, optional=True)
    util = _number(errs, data, "util_pct", d, optional=True)
    prompt = _count(errs, data, "prompt_tokens", d)
    completion = _count(errs, data, "completion_tokens", d)
    partial = data.get("partial", False)
    if not isinstance(partial, bool):
        errs.add("data.partial", f"must be a boolean, not {_tname(partial)}")
    gap = _number(errs, data, "gap_s", d, optional=True) or 0.0
    flags = data.get("flags", [])
    if flags is None:
        flags = []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        errs.add("data.flags", "must be an array of strings")
    config_hash = _text(errs, data, "config_hash", d, optional=True, empty_ok=True)
    agent_version = _text(errs, data, "agent_version", d, optional=True, empty_ok=True)

    cost = data.get("cost")
    c: dict[str, Any] = {}
    if not isinstance(cost, dict):
        errs.add("data.cost", "missing" if "cost" not in data else f"must be an object, not {_tname(cost)}")
    else:
        for k in _COST_INTS:
            c[k] = _count(errs, cost, k, "data.cost.")
        c["currency"] = _text(errs, cost, "currency", "data.cost.")
        if c["currency"] is not None and len(c["currency"]) > 16:
            errs.add("data.cost.currency", "must be a currency code (at most 16 characters)")

    usage_rows = _check_usage(errs, data)

    if errs.items:
        return None, errs.items

    # Types are right: now the contract's arithmetic and the id.
    tokens = prompt + completion
    if c["total_micro"] != c["capex_micro"] + c["energy_micro"] + c["opex_micro"]:
        errs.add("data.cost.total_micro", "must equal capex_micro + energy_micro + opex_micro")
    if tokens > 0 and c["prompt_micro"] + c["completion_micro"] != c["total_micro"]:
        errs.add("data.cost.prompt_micro", "prompt_micro + completion_micro must equal total_micro "
                                           "when the window has tokens")
    if tokens == 0 and (c["prompt_micro"] or c["completion_micro"]):
        errs.add("data.cost.prompt_micro", "prompt_micro and completion_micro must be 0 without tokens")
    usage_cost = sum(u["cost_micro"] for u in usage_rows)
    if tokens > 0 and usage_cost != c["total_micro"]:
        errs.add("data.usage", f"the usage rows' cost_micro sum to {usage_cost}, "
                               f"not total_micro {c['total_micro']}")
    if tokens == 0 and usage_cost:
        errs.add("data.usage", "usage rows carry cost but the window has no tokens")
    if sum(u["prompt_tokens"] for u in usage_rows) > prompt:
        errs.add("data.usage", "the usage rows' prompt_tokens exceed the window's")
    if sum(u["completion_tokens"] for u in usage_rows) > completion:
        errs.add("data.usage", "the usage rows' completion_tokens exceed the window's")
    expected = event_id(node, device, start)
    if eid != expected and eid not in (event_id(node, device, start + d) for d in (-0.001, 0.001)):
        errs.add("id", f"must be derived from (node, device, start): {expected}")
    if errs.items:
        return None, errs.items

    window = {
        "node": node, "device": device, "device_name": device_name, "start": start, "end": end,
        "duration_s": duration, "energy_j": energy, "energy_source": energy_source,
        "avg_power_w": avg_power, "util_pct": util,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "cost_capex_micro": c["capex_micro"], "cost_energy_micro": c["energy_micro"],
        "cost_opex_micro": c["opex_micro"], "cost_micro": c["total_micro"],
        "cost_prompt_micro": c["prompt_micro"], "cost_completion_micro": c["completion_micro"],
        "currency": c["currency"], "partial": int(partial), "gap_s": gap,
        "flags": json.dumps(flags) if flags else "[]", "config_hash": config_hash, "agent_version": agent_version,
    }
    raw = json.dumps(ev, separators=(",", ":"))
    return Parsed(source, eid, raw, window, allocate(window, usage_rows)), []


def _check_usage(errs: _Errors, data: dict) -> list[dict[str, Any]]:
    usage = data.get("usage")
    if not isinstance(usage, list):
        errs.add("data.usage", "missing" if "usage" not in data else f"must be an array, not {_tname(usage)}")
        return []
    rows, seen = [], set()
    for j, u in enumerate(usage):
        where = f"data.usage[{j}]."
        if not isinstance(u, dict):
            errs.add(f"data.usage[{j}]", f"must be an object, not {_tname(u)}")
            continue
        model = _text(errs, u, "model", where, empty_ok=True)
        tenant = _text(errs, u, "tenant", where, empty_ok=True)
        row: dict[str, Any] = {"model": model, "tenant": tenant}
        for k in _USAGE_INTS:
            row[k] = _count(errs, u, k, where)
        if (model, tenant) in seen and model is not None and tenant is not None:
            errs.add(f"data.usage[{j}]", f"(model, tenant) = ({model!r}, {tenant!r}) appears twice")
        seen.add((model, tenant))
        rows.append(row)
    return rows


def allocate(window: dict[str, Any], usage: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The usage rows as stored: each with its share of the window's energy and seconds, plus one
    ``attributed = 0`` row (model None) for what no model took (the idle cost of a window
    without tokens, tokens the agent could not map to a model).

    The rows partition the window: their integer costs and tokens sum to the window's exactly,
    so grouping by model never hides idle cost. Energy and seconds split in proportion to cost
    (the cost model already priced the window's energy into each row), by tokens when the window
    cost nothing.
    """
    total = window["cost_micro"]
    tokens = window["prompt_tokens"] + window["completion_tokens"]
    out = []
    for u in usage:
        if total > 0:
            share = u["cost_micro"] / total
        elif tokens > 0:
            share = (u["prompt_tokens"] + u["completion_tokens"]) / tokens
        else:
            share = 0.0
        out.append({**u, "attributed": 1, "share": share})
    rest = {
        "model": None, "tenant": None, "attributed": 0,
        "prompt_tokens": window["prompt_tokens"] - sum(u["prompt_tokens"] for u in usage),
        "completion_tokens": window["completion_tokens"] - sum(u["completion_tokens"] for u in usage),
        "cost_micro": total - sum(u["cost_micro"] for u in usage),
        "cost_prompt_micro": window["cost_prompt_micro"] - sum(u["cost_prompt_micro"] for u in usage),
        "cost_completion_micro": window["cost_completion_micro"]
        - sum(u["cost_completion_micro"] for u in usage),
        "share": max(0.0, 1.0 - sum(u["share"] for u in out)),
    }
    if not usage or rest["share"] > 1e-9 or any(
            rest[k] for k in ("prompt_tokens", "completion_tokens", "cost_micro")):
        out.append(rest)
    for u in out:
        share = u.pop("share")
        u["energy_j"] = None if window["energy_j"] is None else window["energy_j"] * share
        u["seconds"] = window["duration_s"] * share
    return out


def check_batch(payload: Any, max_errors: int = 1000) -> tuple[list[Parsed], list[dict[str, Any]]]:
    """Validate a batch (a list of events). Returns (parsed events, errors); errors are capped
    at ``max_errors`` so a hostile batch cannot make an unbounded reply."""
    if not isinstance(payload, list):
        return [], [{"index": None, "id": None, "field": "",
                     "problem": f"a batch must be a JSON array of events, not {_tname(payload)}"}]
    parsed, errors = [], []
    for i, ev in enumerate(payload):
        p, e = check_event(ev, i)
        if p is not None:
            parsed.append(p)
        if len(errors) < max_errors:
            errors.extend(e[: max_errors - len(errors)])
    return parsed, errors


def foreign_sources(payload: list[Any], node: str) -> list[dict[str, Any]]:
    """The events in a batch whose ``source`` is a string other than ``node`` (a 403)."""
    out = []
    for i, ev in enumerate(payload):
        if isinstance(ev, dict) and isinstance(ev.get("source"), str) and ev["source"] != node:
            out.append({"index": i, "id": ev.get("id") if isinstance(ev.get("id"), str) else None,
                        "field": "source",
                        "problem": f"a token for node {node!r} may not send events from {ev['source']!r}"})
    return out
