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

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from meterd.agent.events import EVENT_TYPE, METERD_NAMESPACE, event_id
from meterd.errors import first_line
from meterd.limits import InputError, check_strings, has_lone_surrogate_escape, nesting_depth
from meterd.units import parse_iso

MAX_INT = 2**63 - 1  # SQLite INTEGER
ENERGY_SOURCES = ("counter", "integrated", "estimated")
TOKEN_SOURCES = ("counter", "push", "histogram", "rounded")
# The wire carries times to the millisecond (agent.events.iso truncates) while event_id rounds
# the unrounded start: allow the ids of the neighbouring milliseconds, and a duration that is off
# by the truncation of both ends.
TIME_TOLERANCE_S = 0.01
#: A batch is an array of events whose data holds arrays of objects: a few levels.
MAX_BODY_NESTING = 16
#: A window divides an hour (the agent's window_s), so none is longer; a longer one is refused.
MAX_WINDOW_S = 3600.0
#: No meter ran before this; a start before it is a broken clock or a forged event.
EARLIEST_START = 1_577_836_800.0  # 2020-01-01T00:00:00Z
#: How far ahead of the collector's clock a window may start.
MAX_FUTURE_S = 86400.0
#: The collector's clock, for the future-date check (a seam for tests).
now = __import__("time").time

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
    #: The millisecond the id was derived from (``event_id(node, device, key_ms / 1000)``): the
    #: id fixes it, so a unique key that adds it to (source, id) is as strict as (source, id).
    key_ms: int = 0


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
        return parse_iso(text, naive_is_utc=False)
    except ValueError:
        return None


def _time(errs: _Errors, obj: dict, key: str, where: str) -> float | None:
    if key not in obj:
        errs.add(where + key, "missing")
        return None
    t = parse_time(obj[key])
    if t is None:
        errs.add(where + key, "must be an ISO-8601 time with a UTC offset, e.g. 2026-11-27T22:41:00Z")
    return t


def check_event(ev: Any, index: int, raw: str | None = None) -> tuple[Parsed | None, list[dict[str, Any]]]:
    """Validate one event; returns (the parsed event or None, its errors). ``raw`` is the
    event's JSON as received (re-serialized from ``ev`` when not given).

    This is the reporting path: it names every problem of the event. Valid batches take the
    typed fast path (:func:`check_body`) and come here only when that path finds something off.
    """
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
    if not _content_type_ok(ev.get("datacontenttype", "application/json")):
        errs.add("datacontenttype", "must be \"application/json\" (or absent)")
    data = ev.get("data")
    if not isinstance(data, dict):
        errs.add("data", "missing" if "data" not in ev else f"must be an object, not {_tname(data)}")
        return None, errs.items

    d = "data."
    node = _text(errs, data, "node", d)
    device = _text(errs, data, "device", d)
    device_name = _text(errs, data, "device_name", d, optional=True, empty_ok=True)
    start = _time(errs, data, "start", d)
    end = _time(errs, data, "end", d)
    duration = _number(errs, data, "duration_s", d, optional=False)
    energy = _number(errs, data, "energy_j", d, optional=True)
    if "energy_j" not in data:
        errs.add("data.energy_j", "missing (null when unknown)")
    energy_source = data.get("energy_source")
    _relations(errs, source=source, subject=subject, node=node, device=device,
               start=start, end=end, ce_time=ce_time, duration=duration, energy=energy,
               energy_source=energy_source)
    avg_power = _number(errs, data, "avg_power_w", d, optional=True)
    util = _number(errs, data, "util_pct", d, optional=True)
    prompt = _count(errs, data, "prompt_tokens", d)
    completion = _count(errs, data, "completion_tokens", d)
    # Since agent schema 5; absent from older agents' events (then 0 / null).
    cached = _count(errs, data, "cached_prompt_tokens", d) if "cached_prompt_tokens" in data else 0
    token_source = data.get("token_source")
    if token_source is not None and token_source not in TOKEN_SOURCES:
        errs.add("data.token_source", f"must be one of {', '.join(TOKEN_SOURCES)} or null, "
                                      f"not {json.dumps(token_source)}")
    error_bound = _count(errs, data, "token_error_bound", d) if "token_error_bound" in data else 0
    token_gap = _number(errs, data, "token_gap_s", d, optional=True) or 0.0
    backfill = _number(errs, data, "backfill_s", d, optional=True) or 0.0
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
    window = {
        "node": node, "device": device, "device_name": device_name, "start": start, "end": end,
        "duration_s": duration, "energy_j": energy, "energy_source": energy_source,
        "avg_power_w": avg_power, "util_pct": util,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "cached_prompt_tokens": cached, "token_source": token_source, "token_error_bound": error_bound,
        "token_gap_s": token_gap, "backfill_s": backfill,
        "cost_capex_micro": c["capex_micro"], "cost_energy_micro": c["energy_micro"],
        "cost_opex_micro": c["opex_micro"], "cost_micro": c["total_micro"],
        "cost_prompt_micro": c["prompt_micro"], "cost_completion_micro": c["completion_micro"],
        "currency": c["currency"], "partial": int(partial), "gap_s": gap,
        "flags": json.dumps(flags) if flags else "[]", "config_hash": config_hash,
        "agent_version": agent_version,
    }
    if raw is None:
        raw = json.dumps(ev, separators=(",", ":"))
    parsed = _finish(errs, source, eid, raw, window, usage_rows)
    return parsed, errs.items


def _content_type_ok(dct: Any) -> bool:
    return isinstance(dct, str) and (dct == "application/json"
                                     or dct.split(";")[0].strip().lower() == "application/json")


def _relations(errs: _Errors, *, source: str | None = None, subject: str | None = None,
               node: str | None = None, device: str | None = None, start: float | None = None,
               end: float | None = None, ce_time: float | None = None, duration: float | None = None,
               energy: float | None = None, energy_source: Any = None) -> None:
    """The checks between fields whose types are right (a None is a value already refused)."""
    if node is not None and source is not None and node != source:
        errs.add("data.node", f"must equal the event's source {source!r}, not {node!r}")
    if device is not None and subject is not None and device != subject:
        errs.add("data.device", f"must equal the event's subject {subject!r}, not {device!r}")
    if start is not None and end is not None and end <= start:
        errs.add("data.end", "must be after data.start")
    if start is not None and end is not None and end - start > MAX_WINDOW_S + TIME_TOLERANCE_S:
        errs.add("data.end", f"the window is {end - start:g} s long; a window is at most {MAX_WINDOW_S:g} s "
                             "(window_s divides an hour)")
    if start is not None and start < EARLIEST_START:
        errs.add("data.start", "is before 2020-01-01: a broken clock, not a metered window")
    if start is not None and start > now() + MAX_FUTURE_S:
        errs.add("data.start", "is more than a day ahead of the collector's clock")
    if start is not None and ce_time is not None and abs(ce_time - start) > TIME_TOLERANCE_S:
        errs.add("time", "must be the window's start (data.start)")
    if duration is not None and start is not None and end is not None and end > start \
            and abs(duration - (end - start)) > TIME_TOLERANCE_S:
        errs.add("data.duration_s", f"must be end - start ({end - start:g} s), not {duration:g}")
    if energy_source not in ENERGY_SOURCES and not (energy_source is None and energy is None):
        errs.add("data.energy_source", f"must be one of {', '.join(ENERGY_SOURCES)}, "
                                       f"not {json.dumps(energy_source)}")


def _finish(errs: _Errors, source: str, eid: str, raw: str, window: dict[str, Any],
            usage_rows: list[dict[str, Any]]) -> Parsed | None:
    """Types are right: the contract's arithmetic and the id, then the parsed event."""
    prompt, completion = window["prompt_tokens"], window["completion_tokens"]
    total = window["cost_micro"]
    tokens = prompt + completion
    if total != window["cost_capex_micro"] + window["cost_energy_micro"] + window["cost_opex_micro"]:
        errs.add("data.cost.total_micro", "must equal capex_micro + energy_micro + opex_micro")
    split = window["cost_prompt_micro"] + window["cost_completion_micro"]
    if tokens > 0 and split != total:
        errs.add("data.cost.prompt_micro", "prompt_micro + completion_micro must equal total_micro "
                                           "when the window has tokens")
    if tokens == 0 and (window["cost_prompt_micro"] or window["cost_completion_micro"]):
        errs.add("data.cost.prompt_micro", "prompt_micro and completion_micro must be 0 without tokens")
    usage_cost = usage_prompt = usage_completion = usage_cached = 0
    for u in usage_rows:
        usage_cost += u["cost_micro"]
        usage_prompt += u["prompt_tokens"]
        usage_completion += u["completion_tokens"]
        usage_cached += u["cached_prompt_tokens"]
    if tokens > 0 and usage_cost != total:
        errs.add("data.usage", f"the usage rows' cost_micro sum to {usage_cost}, "
                               f"not total_micro {total}")
    if tokens == 0 and usage_cost:
        errs.add("data.usage", "usage rows carry cost but the window has no tokens")
    if usage_prompt > prompt:
        errs.add("data.usage", "the usage rows' prompt_tokens exceed the window's")
    if usage_completion > completion:
        errs.add("data.usage", "the usage rows' completion_tokens exceed the window's")
    if usage_cached > window["cached_prompt_tokens"]:
        errs.add("data.usage", "the usage rows' cached_prompt_tokens exceed the window's")
    node, device, start = window["node"], window["device"], window["start"]
    key_ms = id_ms(eid, node, device, start)
    if key_ms is None:
        errs.add("id", f"must be derived from (node, device, start): {event_id(node, device, start)}")
    if errs.items:
        return None
    return Parsed(source, eid, raw, window, allocate(window, usage_rows), key_ms)


_NAMESPACE_SHA1 = hashlib.sha1(METERD_NAMESPACE.bytes)


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(METERD_NAMESPACE, name))`` without the UUID object (a test holds them
    equal): the namespace's hash state is computed once, the digest formatted directly."""
    h = _NAMESPACE_SHA1.copy()
    h.update(name.encode())
    d = bytearray(h.digest()[:16])
    d[6] = (d[6] & 0x0F) | 0x50
    d[8] = (d[8] & 0x3F) | 0x80
    x = d.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def id_ms(eid: str, node: str, device: str, start: float) -> int | None:
    """The millisecond ``eid`` was derived from, or None when it is not the id of this window.

    The wire carries times to the millisecond (truncated) while the agent's id rounds the exact
    start, so the neighbouring milliseconds' ids are accepted too; the common case hashes once."""
    ms = int(round(start * 1000))
    prefix = f"{node}|{device}|"
    for m in (ms, ms - 1, ms + 1):
        if _uuid5(f"{prefix}{m}") == eid:
            return m
    return None

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
        row["cached_prompt_tokens"] = _count(errs, u, "cached_prompt_tokens", where) \
            if "cached_prompt_tokens" in u else 0
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
    energy, duration = window["energy_j"], window["duration_s"]
    out = []
    prompt = completion = cached = cost = cost_prompt = cost_completion = 0
    gap = window["token_gap_s"]  # copied to every row, so a model's rows tell outage from idle
    shares = 0.0
    for u in usage:  # one pass: this runs for every event of every batch
        if total > 0:
            share = u["cost_micro"] / total
        elif tokens > 0:
            share = (u["prompt_tokens"] + u["completion_tokens"]) / tokens
        else:
            share = 0.0
        shares += share
        prompt += u["prompt_tokens"]
        completion += u["completion_tokens"]
        cached += u["cached_prompt_tokens"]
        cost += u["cost_micro"]
        cost_prompt += u["cost_prompt_micro"]
        cost_completion += u["cost_completion_micro"]
        out.append({**u, "attributed": 1, "energy_j": None if energy is None else energy * share,
                    "seconds": duration * share, "token_gap_s": gap})
    share = max(0.0, 1.0 - shares)
    rest = {
        "model": None, "tenant": None, "attributed": 0,
        "prompt_tokens": window["prompt_tokens"] - prompt,
        "completion_tokens": window["completion_tokens"] - completion,
        "cached_prompt_tokens": window["cached_prompt_tokens"] - cached,
        "token_gap_s": gap,
        "cost_micro": total - cost,
        "cost_prompt_micro": window["cost_prompt_micro"] - cost_prompt,
        "cost_completion_micro": window["cost_completion_micro"] - cost_completion,
    }
    if not usage or share > 1e-9 or rest["prompt_tokens"] or rest["completion_tokens"] or rest["cost_micro"]:
        rest["energy_j"] = None if energy is None else energy * share
        rest["seconds"] = duration * share
        out.append(rest)
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


def _foreign(index: int, eid: Any, source: str, node: str) -> dict[str, Any]:
    return {"index": index, "id": eid if isinstance(eid, str) else None, "field": "source",
            "problem": f"a token for node {node!r} may not send events from {source!r}"}


def foreign_sources(payload: list[Any], node: str) -> list[dict[str, Any]]:
    """The events in a batch whose ``source`` is a string other than ``node`` (a 403)."""
    return [_foreign(i, ev.get("id"), ev["source"], node) for i, ev in enumerate(payload)
            if isinstance(ev, dict) and isinstance(ev.get("source"), str) and ev["source"] != node]


# -- the typed fast path -----------------------------------------------------------------------
#
# msgspec decodes a batch straight into these structs, checking types, ranges and required keys
# in C as it parses, and hands back each event's bytes as received (``msgspec.Raw``), so nothing
# is re-serialized. The structs are at least as strict as check_event; an event they refuse, or
# whose relations or arithmetic are off, goes to check_event, which names every problem. So the
# reporting path stays the one authority on what is wrong, and a valid batch never pays for it
# (a test holds the two paths to the same answers, event by event).

_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
_Num = Annotated[float, msgspec.Meta(ge=0.0, le=sys.float_info.max)]  # finite: inf is over max
_Name = Annotated[str, msgspec.Meta(min_length=1)]


class _Usage(msgspec.Struct):
    model: str
    tenant: str
    prompt_tokens: _Count
    completion_tokens: _Count
    cost_micro: _Count
    cost_prompt_micro: _Count
    cost_completion_micro: _Count
    cached_prompt_tokens: _Count = 0


class _Cost(msgspec.Struct):
    capex_micro: _Count
    energy_micro: _Count
    opex_micro: _Count
    total_micro: _Count
    prompt_micro: _Count
    completion_micro: _Count
    currency: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]


class _Data(msgspec.Struct, kw_only=True):
    node: _Name
    device: _Name
    device_name: str | None = None
    start: str
    end: str
    duration_s: _Num
    energy_j: _Num | None  # required, null when unknown
    energy_source: str | None = None
    avg_power_w: _Num | None = None
    util_pct: _Num | None = None
    prompt_tokens: _Count
    completion_tokens: _Count
    cached_prompt_tokens: _Count = 0
    token_source: Literal["counter", "push", "histogram", "rounded"] | None = None
    token_error_bound: _Count = 0
    token_gap_s: _Num | None = None
    backfill_s: _Num | None = None
    usage: list[_Usage]
    cost: _Cost
    partial: bool = False
    gap_s: _Num | None = None
    flags: list[str] | None = None
    config_hash: str | None = None
    agent_version: str | None = None


class _Event(msgspec.Struct, kw_only=True):
    specversion: Literal["1.0"]
    id: _Name
    source: _Name
    type: Literal["meterd.window.v1"]
    subject: _Name
    time: str
    datacontenttype: str = "application/json"
    data: _Data


assert EVENT_TYPE == "meterd.window.v1"
_RAWS = msgspec.json.Decoder(list[msgspec.Raw])
_RAW = msgspec.json.Decoder(msgspec.Raw)
_EVENT = msgspec.json.Decoder(_Event)


class MalformedJSON(ValueError):
    """The body is not JSON (the message says where)."""


class WrongShape(ValueError):
    """JSON, but not an array of events (a batch) or one object (a single event)."""


@dataclass
class Checked:
    """A request body, checked: its events parsed (valid ones), the schema errors (capped), and
    the events from a source other than the sender's node (a 403, checked before the schema)."""

    received: int
    parsed: list[Parsed]
    errors: list[dict[str, Any]]
    foreign: list[dict[str, Any]]


def check_body(body: bytes, *, node: str, single: bool = False, max_errors: int = 1000) -> Checked:
    """Decode and validate a request body of events sent by ``node``: a JSON array (a batch), or
    one object with ``single``. Raises MalformedJSON or WrongShape."""
    # Text no store can hold, and nesting no event has, are refused before any parser sees them.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedJSON(f"the body is not UTF-8 text (byte {e.start}): not Unicode text") from None
    if has_lone_surrogate_escape(body):
        raise MalformedJSON("a string holds a lone surrogate escape (such as \\ud800): not Unicode text")
    depth = nesting_depth(body)
    if depth > MAX_BODY_NESTING:
        raise MalformedJSON(f"nested {depth} levels deep; an event batch is at most {MAX_BODY_NESTING}")
    try:
        body.decode("utf-8")  # msgspec skips unknown fields without looking inside them
        if single:
            raws = [_RAW.decode(body)] if body.lstrip()[:1] == b"{" else None
        else:
            raws = _RAWS.decode(body)
    except (UnicodeDecodeError, msgspec.DecodeError):
        raws = None
    if raws is None:
        return _check_slowly(body, node, single, max_errors)
    parsed: list[Parsed] = []
    errors: list[dict[str, Any]] = []
    foreign: list[dict[str, Any]] = []
    times: dict[str, float | None] = {}
    for i, raw in enumerate(raws):
        text = bytes(raw).decode()
        try:
            p = _fast(_EVENT.decode(raw), text, times)
        except msgspec.ValidationError:
            p = None
        if p is not None:
            if p.source != node:
                foreign.append(_foreign(i, p.id, p.source, node))
            parsed.append(p)
            continue
        try:
            ev = json.loads(text)  # msgspec parsed it: only a number of over 4,300 digits fails here
        except (ValueError, RecursionError) as e:
            bad = _Errors(i, None)
            bad.add("", f"not acceptable JSON: {str(e).splitlines()[0][:120]}")
            if len(errors) < max_errors:
                errors.extend(bad.items[: max_errors - len(errors)])
            continue
        if isinstance(ev, dict) and isinstance(ev.get("source"), str) and ev["source"] != node:
            foreign.append(_foreign(i, ev.get("id"), ev["source"], node))
        p, errs = check_event(ev, i, text)
        if p is not None:
            parsed.append(p)
        if len(errors) < max_errors:
            errors.extend(errs[: max_errors - len(errors)])
    return Checked(len(raws), parsed, errors, foreign[:max_errors])


def _check_slowly(body: bytes, node: str, single: bool, max_errors: int) -> Checked:
    """A body msgspec would not split into events: the json module says what is wrong (it also
    takes what msgspec does not, such as NaN, which check_event then refuses)."""
    try:
        payload = json.loads(body)
        check_strings(payload)
    except (ValueError, UnicodeDecodeError, RecursionError, InputError) as e:
        raise MalformedJSON(first_line(e)) from None
    if single:
        if not isinstance(payload, dict):
            raise WrongShape("one JSON object")
        payload = [payload]
    elif not isinstance(payload, list):
        raise WrongShape("a JSON array of events")
    parsed, errors = check_batch(payload, max_errors)
    return Checked(len(payload), parsed, errors, foreign_sources(payload, node)[:max_errors])


def _fast(ev: _Event, raw: str, times: dict[str, float | None]) -> Parsed | None:
    """The parsed event, or None if anything is off (check_event then says what)."""
    d = ev.data
    if not _content_type_ok(ev.datacontenttype):
        return None
    start = times.get(d.start) or times.setdefault(d.start, parse_time(d.start))
    end = times.get(d.end) or times.setdefault(d.end, parse_time(d.end))
    ce_time = start if ev.time == d.start else parse_time(ev.time)
    if start is None or end is None or ce_time is None:
        return None
    errs = _Errors(0, None)
    _relations(errs, source=ev.source, subject=ev.subject, node=d.node, device=d.device, start=start,
               end=end, ce_time=ce_time, duration=d.duration_s, energy=d.energy_j,
               energy_source=d.energy_source)
    if errs.items or (len(d.usage) > 1 and len({(u.model, u.tenant) for u in d.usage}) != len(d.usage)):
        return None
    c = d.cost
    window = {
        "node": d.node, "device": d.device, "device_name": d.device_name, "start": start, "end": end,
        "duration_s": d.duration_s, "energy_j": d.energy_j, "energy_source": d.energy_source,
        "avg_power_w": d.avg_power_w, "util_pct": d.util_pct,
        "prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens,
        "cached_prompt_tokens": d.cached_prompt_tokens, "token_source": d.token_source,
        "token_error_bound": d.token_error_bound, "token_gap_s": d.token_gap_s or 0.0,
        "backfill_s": d.backfill_s or 0.0,
        "cost_capex_micro": c.capex_micro, "cost_energy_micro": c.energy_micro,
        "cost_opex_micro": c.opex_micro, "cost_micro": c.total_micro,
        "cost_prompt_micro": c.prompt_micro, "cost_completion_micro": c.completion_micro,
        "currency": c.currency, "partial": int(d.partial), "gap_s": d.gap_s or 0.0,
        "flags": json.dumps(d.flags) if d.flags else "[]", "config_hash": d.config_hash,
        "agent_version": d.agent_version,
    }
    usage = [{"model": u.model, "tenant": u.tenant, "prompt_tokens": u.prompt_tokens,
              "completion_tokens": u.completion_tokens, "cost_micro": u.cost_micro,
              "cost_prompt_micro": u.cost_prompt_micro, "cost_completion_micro": u.cost_completion_micro,
              "cached_prompt_tokens": u.cached_prompt_tokens}
             for u in d.usage]
    return _finish(errs, ev.source, ev.id, raw, window, usage)
