"""Reading a report's cells (reports/aggregate.py) from a local store or from a collector.

Local store: the range [since, until) is cut into the pieces each source answers best. The
whole days inside it come from the daily rollups, the whole hours at its ragged ends from the
hourly rollups, and the minutes before the first whole hour and after the last from the raw
windows. A report by hour uses no daily rollups; a week is seven daily buckets from a Monday
00:00 UTC, put together by the aggregation. A window belongs to the hour, day, week and range
that hold its start, exactly as the rollups count it, so every path gives the same sums.

Collector: its query API (``GET /api/v1/usage``, docs/collector-api.md) over httpx with a bearer
token. A collector keeps no bench results, so reports over it show no capacity figures, and it
does not split a model's cost into capex, energy and opex, nor keep utilization.

Errors (all :class:`QueryError`, in :mod:`meterd.errors`):

    QueryError
    ├── EmptyStore        no windows at all
    ├── NoData            none in the range (or for the filters)
    ├── CollectorDown     the collector cannot be reached
    └── CollectorRefused  the collector refused the token (401, 403)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from meterd.agent.events import parse_iso
from meterd.agent.store import Store
from meterd.errors import CollectorDown, CollectorRefused, EmptyStore, NoData, QueryError
from meterd.reports.aggregate import IDLE, IDLE_TIME, Ceiling, Cells, ReportError, iso, per_model

if TYPE_CHECKING:
    import httpx

HOUR, DAY = 3600, 86400
PERIOD_S = {"hour": HOUR, "day": DAY}


@dataclass(frozen=True)
class Filters:
    """What a report reads: windows whose start is in [since, until) (Unix seconds; None:
    unbounded), of one node, device, model or tenant where given."""

    since: float | None = None
    until: float | None = None
    node: str | None = None
    device: str | None = None
    model: str | None = None
    tenant: str | None = None

    def describe(self) -> str:
        """``from ... until ... for model 'x', node 'y'``: what a NoData message names."""
        text = ""
        if self.since is not None or self.until is not None:
            text = (f"from {iso(self.since) if self.since is not None else 'the start'} "
                    f"until {iso(self.until) if self.until is not None else 'now'}")
        which = [f"{k} {getattr(self, k)!r}" for k in ("node", "device", "model", "tenant")
                 if getattr(self, k) is not None]
        if which:
            text += (" " if text else "") + "for " + ", ".join(which)
        return text or "at all"


def finest(by: Sequence[str]) -> int | None:
    """The time bucket (seconds) cells must carry: an hour for --by hour, a day for day or week."""
    if "hour" in by:
        return HOUR
    if "day" in by or "week" in by:
        return DAY
    return None


# -- the local store ------------------------------------------------------------------------------


def plan(lo: float, hi: float, max_period: int) -> list[tuple[str, float, float]]:
    """Pieces ``(source, from, to)`` covering [lo, hi): ``day`` and ``hour`` rollups where the
    piece is whole days or hours (``max_period`` caps it), ``raw`` windows elsewhere. Pure."""
    out: list[tuple[str, float, float]] = []

    def hours(a: float, b: float) -> None:
        h0, h1 = math.ceil(a / HOUR) * HOUR, math.floor(b / HOUR) * HOUR
        if h0 < h1:
            out.extend(p for p in (("raw", a, h0), ("hour", h0, h1), ("raw", h1, b)) if p[1] < p[2])
        elif a < b:
            out.append(("raw", a, b))

    if max_period >= DAY:
        d0, d1 = math.ceil(lo / DAY) * DAY, math.floor(hi / DAY) * DAY
        if d0 < d1:
            hours(lo, d0)
            out.append(("day", d0, d1))
            hours(d1, hi)
            return out
    hours(lo, hi)
    return out


_COUNTED = ("prompt_tokens", "completion_tokens", "cost_capex_micro", "cost_energy_micro",
            "cost_opex_micro", "cost_micro", "cost_prompt_micro", "cost_completion_micro")
_ROLLUP_SUMS = ("seconds", "energy_j", "util_pct_s", *_COUNTED, "idle_cost_micro", *IDLE_TIME)
_IDLE_WINDOW = "w.prompt_tokens + w.completion_tokens = 0"
_RAW_WHOLE = {
    "seconds": "w.end - w.start", "energy_j": "coalesce(w.energy_j, 0)",
    "util_pct_s": "coalesce(w.util_pct, 0) * (w.end - w.start)",
    **{k: f"w.{k}" for k in _COUNTED},
    "idle_cost_micro": f"CASE WHEN {_IDLE_WINDOW} THEN w.cost_micro ELSE 0 END",
    "idle_seconds": f"CASE WHEN {_IDLE_WINDOW} THEN w.end - w.start ELSE 0.0 END",
    "idle_util_pct_s": f"CASE WHEN {_IDLE_WINDOW} THEN coalesce(w.util_pct, 0) * (w.end - w.start) ELSE 0.0 END",
}
_RAW_USAGE = {
    "seconds": "w.end - w.start", "energy_j": "coalesce(u.energy_j, 0)",
    "util_pct_s": "coalesce(w.util_pct, 0) * (w.end - w.start)",
    **{k: f"u.{k}" for k in _COUNTED}, "idle_cost_micro": "0",
}


def _bucket_sql(col: str, size: int | None) -> str:
    return "NULL" if size is None else f"(CAST({col} AS INTEGER) / {size}) * {size}"


def _cells(store: Store, source: str, lo: float, hi: float, f: Filters, size: int | None,
           usage: bool, idle_time: bool = False) -> list[dict[str, Any]]:
    where, args = [], []
    if source == "raw":
        t = "w."
        where += ["w.start >= ?", "w.start < ?"]
        sums = dict(_RAW_USAGE if usage else _RAW_WHOLE)
        # Windows by their start first, then their usage rows: without statistics SQLite would
        # scan every usage row (or every window, to save a sort for the GROUP BY).
        frm = "windows w INDEXED BY windows_start" + (
            " CROSS JOIN window_usage u ON u.window_id = w.id" if usage else "")
        time_col, m = "w.start", "u."
    else:
        t = ""
        where += ["period = ?", "bucket >= ?", "bucket < ?"]
        args.append(source)
        sums = {k: k for k in _ROLLUP_SUMS}
        frm = "rollups"
        time_col, m = "bucket", ""
        where.append("model != ''" if usage else "model = '' AND tenant = ''")
    if usage or not idle_time:  # read only for the (idle) row of a report by model or tenant
        for k in IDLE_TIME:
            sums.pop(k, None)
    args += [lo, hi]
    for col in ("node", "device"):
        if getattr(f, col) is not None:
            where.append(f"{t}{col} = ?")
            args.append(getattr(f, col))
    keys = [f"{t}node AS node", f"{t}device AS device", f"{_bucket_sql(time_col, size)} AS t"]
    group = ["node", "device", "t"]
    if usage:
        for col in ("model", "tenant"):
            if getattr(f, col) is not None:
                where.append(f"{m}{col} = ?")
                args.append(getattr(f, col))
        keys += [f"{m}model AS model", f"{m}tenant AS tenant"]
        group += ["model", "tenant"]
    if source != "raw" and size == PERIOD_S[source]:
        # Rollup rows are already the cells (one per key: the table's primary key), so no
        # GROUP BY: SQLite's sorter was most of a year by hour. The ORDER BY gives the cells in
        # the order the GROUP BY did, so every float sum adds in the same order as before.
        keys[2] = "CAST(bucket AS INTEGER) AS t"
        sql = (f"SELECT {', '.join(keys)}, {', '.join(f'{e} AS {k}' for k, e in sums.items())} "
               f"FROM {frm} WHERE {' AND '.join(where)} ORDER BY {', '.join(group)}")
    else:
        sql = (f"SELECT {', '.join(keys)}, {', '.join(f'sum({e}) AS {k}' for k, e in sums.items())} "
               f"FROM {frm} WHERE {' AND '.join(where)} GROUP BY {', '.join(group)}")
    cur = store.conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur]


def read_store(store: Store, by: Sequence[str], f: Filters, *, with_bench: bool = True) -> Cells:
    """The cells of a report over a local store. Raises EmptyStore, NoData, ReportError."""
    c = store.conn
    first = c.execute("SELECT start, currency FROM windows ORDER BY start LIMIT 1").fetchone()
    if first is None:
        raise EmptyStore("no windows yet: run `meter agent`")
    last = c.execute("SELECT start, currency FROM windows ORDER BY start DESC LIMIT 1").fetchone()
    if first[1] != last[1]:
        raise ReportError(f"the store holds windows in {first[1]} and {last[1]}: report one "
                          "currency at a time with --since/--until")
    size = finest(by)
    lo = f.since if f.since is not None else math.floor(first[0] / DAY) * DAY
    hi = f.until if f.until is not None else (math.floor(last[0] / DAY) + 1) * DAY
    pm = per_model(by, f.model, f.tenant)
    cells = Cells(currency=first[1])
    if lo < hi:
        for source, a, b in plan(lo, hi, HOUR if size == HOUR else DAY):
            cells.whole += _cells(store, source, a, b, f, size, usage=False, idle_time=pm)
        if with_bench:
            devices = sorted({w["device"] for w in cells.whole})
            cells.ceilings, cells.capacity = read_ceilings(store, devices)
        if pm or cells.ceilings:
            for source, a, b in plan(lo, hi, HOUR if size == HOUR else DAY):
                cells.usage += _cells(store, source, a, b, f, size, usage=True)
    # Idle windows are data too: a node that served no tokens still shows its cost, as (idle).
    if not cells.whole or (pm and (f.model is not None or f.tenant is not None) and not cells.usage):
        raise NoData(f"no windows {f.describe()}")
    return cells


def read_ceilings(store: Store, devices: Sequence[str]) -> tuple[dict[str, dict[str, Ceiling]], list[dict]]:
    """From each device's latest bench: the roofline's tokens/s per model profile at full use."""
    runs = {d: store.latest_bench(d) for d in devices}
    if not any(runs.values()):
        return {}, []
    # Imported only when there is a bench: kernels/ brings NumPy.
    from meterd.kernels.prices import DEFAULT_PRICES
    from meterd.kernels.roofline import all_profiles
    from meterd.kernels.suite import capacity_rows

    profiles = all_profiles()
    ceilings: dict[str, dict[str, Ceiling]] = {}
    rows: list[dict] = []
    for device, bench in runs.items():
        for r in capacity_rows(bench, profiles, DEFAULT_PRICES) if bench else []:
            prof = profiles[r["model"]]
            b, ctx = r["batch"], r["context_tokens"]
            # FLOP per byte of a decode step at the bench's batch and context: where the model
            # sits on the roofline's x axis.
            intensity = 2 * b * prof.active_params / (
                b * prof.kv_bytes_per_token * ctx + prof.weight_bytes_per_step(b))
            r = {**r, "device": device, "active_params": prof.active_params,
                 "decode_intensity": intensity}
            rows.append(r)
            ceilings.setdefault(device, {})[r["model"]] = Ceiling(
                r["prefill_tokens_per_s"], r["decode_tokens_per_s"], r["watts"])
    return ceilings, rows


# -- a collector ----------------------------------------------------------------------------------


def read_collector(url: str, token: str, by: Sequence[str], f: Filters, *,
                   transport: httpx.BaseTransport | None = None, timeout: float = 30.0) -> Cells:
    """The cells of a report from a collector's ``GET /api/v1/usage``."""
    import httpx  # here: a report over the local store does not pay its import (~60 ms)

    pm = per_model(by, f.model, f.tenant)
    size = finest(by)
    grain = {HOUR: ["hour"], DAY: ["day"], None: []}[size]
    group_by = ["node", "device", *(["model", "tenant"] if pm else []), *grain]
    params: dict[str, str] = {"group_by": ",".join(group_by)}
    if f.since is not None:
        params["since"] = iso(f.since)
    if f.until is not None:
        params["until"] = iso(f.until)
    for k in ("node", "device", "model", "tenant"):
        if getattr(f, k) is not None:
            params[k] = getattr(f, k)
    base = url.rstrip("/")
    try:
        with httpx.Client(base_url=base, transport=transport, timeout=timeout) as client:
            r = client.get("/api/v1/usage", params=params, headers={"authorization": f"Bearer {token}"})
    except httpx.TransportError as e:
        raise CollectorDown(f"cannot reach the collector at {base}: {e or type(e).__name__}") from e
    if r.status_code in (401, 403):
        raise CollectorRefused(f"the collector at {base} refused the token ({r.status_code}): "
                               f"{_error_of(r)}")
    if r.status_code != 200:
        raise QueryError(f"the collector at {base} answered {r.status_code}: {_error_of(r)}")
    try:
        groups = r.json()["groups"]
    except (ValueError, KeyError, TypeError) as e:
        raise QueryError(f"the collector at {base} did not answer with usage groups: {e}") from e
    if not groups:
        raise NoData(f"the collector has no windows {f.describe()}")
    currencies = sorted({g["currency"] for g in groups})
    if len(currencies) > 1:
        raise ReportError(f"the windows are in several currencies ({', '.join(currencies)}): "
                          "report one at a time with --node")
    cells = Cells(currency=currencies[0], idle_in_usage=True)
    for g in groups:
        cell = {k: g.get(k) for k in ("node", "device", "prompt_tokens", "completion_tokens",
                                       "cost_capex_micro", "cost_energy_micro", "cost_opex_micro",
                                       "cost_micro", "cost_prompt_micro", "cost_completion_micro",
                                       "idle_cost_micro", "seconds")}
        cell["energy_j"] = g.get("energy_j") or 0.0
        cell["util_pct_s"] = None  # a collector keeps no utilization
        cell["t"] = parse_iso(g[grain[0]]) if grain else None
        if pm:
            cell["model"] = g.get("model") if g.get("model") is not None else IDLE
            cell["tenant"] = g.get("tenant") if g.get("model") is not None else IDLE
            cells.usage.append(cell)
        else:
            cells.whole.append(cell)
    return cells


def _error_of(r: httpx.Response) -> str:
    """The ``error`` of a JSON error body, else the first line of the body, else the reason."""
    try:
        body = r.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except ValueError:
        pass
    text = r.text.strip()
    return text.splitlines()[0][:200] if text else r.reason_phrase
