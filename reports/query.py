"""Reading a report's cells (reports/aggregate.py) from a local store or from a collector.

Local store: the cells come from the agent's own queries over its tables
(agent/store_queries.py: the daily and hourly rollups for the whole days and hours of the range,
the raw windows at its ragged ends). A report by hour uses no daily rollups; a week is seven
daily buckets from a Monday 00:00 UTC, put together by the aggregation.

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
from typing import TYPE_CHECKING, Sequence

from meterd.agent.store import Store
from meterd.agent.store_queries import (grouped_cells, grouped_usage_with_rest, has_unavailable, owner_cells,
                                        range_cells, window_span)
from meterd.errors import CollectorDown, CollectorRefused, EmptyStore, NoData, QueryError
from meterd.reports.aggregate import IDLE, Ceiling, Cells, ReportError, per_model
from meterd.sqlite_store import Snapshot
from meterd.units import DAY, HOUR, iso, parse_iso

if TYPE_CHECKING:
    import httpx


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


def read_store(store: Store, by: Sequence[str], f: Filters, *, with_bench: bool = True,
               grouped: bool = True) -> Cells:
    """:func:`_read_store` from one snapshot of the store: its several statements (whole and
    usage cells, a report by model's models and idle rest) see the same windows while the
    agent goes on committing."""
    with Snapshot(store.conn):
        return _read_store(store, by, f, with_bench=with_bench, grouped=grouped)


def _read_store(store: Store, by: Sequence[str], f: Filters, *, with_bench: bool,
                grouped: bool) -> Cells:
    """The cells of a report over a local store. Raises EmptyStore, NoData, ReportError.

    ``grouped`` (the default): the store sums the cells to the report's keys in SQL
    (agent/store_queries.py: :func:`grouped_cells`), so the aggregation has one cell per row to
    turn into figures; with a bench, cells keep their device (and model) for the capacity
    figures. ``grouped=False`` reads the finest cells (node, device, bucket), as the reference
    the grouped path is tested against."""
    span = window_span(store)
    if span is None:
        raise EmptyStore("no windows yet: run `meter agent`")
    first, last = span
    if first[1] != last[1]:
        raise ReportError(f"the store holds windows in {first[1]} and {last[1]}: report one "
                          "currency at a time with --since/--until")
    size = finest(by)
    if "owner" in by:
        if per_model(by, f.model, f.tenant):
            raise ReportError("--by owner splits devices by who used them; it does not combine with "
                              "model or tenant (their costs are split by tokens)")
    lo = f.since if f.since is not None else math.floor(first[0] / DAY) * DAY
    hi = f.until if f.until is not None else (math.floor(last[0] / DAY) + 1) * DAY
    pm = per_model(by, f.model, f.tenant)
    cells = Cells(currency=first[1])
    keys = {"node": f.node, "device": f.device, "model": f.model, "tenant": f.tenant}
    bench = with_bench and "owner" not in by and bool(store.latest_bench())
    table = None
    # A report by model whose range holds an outage of a token source splits its no-model rest
    # into (idle) and (unavailable) in reports/aggregate.py, not in the SQL.
    outage = pm and lo < hi and has_unavailable(store, lo, hi)
    if lo < hi and grouped and "owner" not in by and not bench and not outage \
            and (not pm or (f.model is None and f.tenant is None)):
        # The whole report in SQL: each row's sums (and a report by model or tenant's idle
        # rest) as one table, turned into figures column by column (reports/aggregate.py).
        if pm:
            table = grouped_usage_with_rest(store, lo, hi, keys=list(by), node=f.node, device=f.device, table=True)
        else:
            table = grouped_cells(store, lo, hi, keys=list(by), usage=False, table=True, **keys)
    if table is not None and table[1]:
        cells.table, cells.grouped, cells.idle_in_usage = table, tuple(by), pm
        return cells
    if lo < hi and "owner" in by:
        cells.whole += owner_cells(store, lo, hi, bucket=size, node=f.node, device=f.device)
    elif lo < hi and grouped:
        # A bench's capacity is per device and model: keep those apart where there is one.
        extra = ["device", "model"] if bench else []
        whole_keys = list(dict.fromkeys([*by, *extra[:1]]))
        cells.whole += grouped_cells(store, lo, hi, keys=whole_keys, usage=False, idle_time=pm, **keys)
        if bench:
            devices = sorted({w["device"] for w in cells.whole})
            cells.ceilings, cells.capacity = read_ceilings(store, devices)
        if pm and not bench and not outage and f.model is None and f.tenant is None:
            # The usage and the idle rest no model took, both summed in SQL.
            cells.usage += grouped_usage_with_rest(store, lo, hi, keys=list(by), node=f.node, device=f.device)
            cells.idle_in_usage = True
        elif pm or cells.ceilings:
            cells.usage += grouped_cells(store, lo, hi, keys=list(dict.fromkeys([*by, *extra])), usage=True, **keys)
        cells.grouped = tuple(by) if not bench else None
    elif lo < hi:
        cells.whole += range_cells(store, lo, hi, bucket=size, usage=False, idle_time=pm, **keys)
        if with_bench:
            devices = sorted({w["device"] for w in cells.whole})
            cells.ceilings, cells.capacity = read_ceilings(store, devices)
        if pm or cells.ceilings:
            cells.usage += range_cells(store, lo, hi, bucket=size, usage=True, **keys)
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
    from meterd.kernels.roofline import all_profiles
    from meterd.kernels.suite import capacity_rows

    profiles = all_profiles()
    ceilings: dict[str, dict[str, Ceiling]] = {}
    rows: list[dict] = []
    for device, bench in runs.items():
        for r in capacity_rows(bench, profiles) if bench else []:
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


def collector_params(by: Sequence[str], f: Filters) -> dict[str, str]:
    """The query parameters of ``GET /api/v1/usage`` that a report by ``by`` over ``f`` reads
    (the collector's own web report, collector/web.py, asks its store the same question)."""
    if "owner" in by:
        raise ReportError("--by owner reads a node's store (--db): the collector does not keep "
                          "the split by owner yet")
    pm = per_model(by, f.model, f.tenant)
    grain = {HOUR: ["hour"], DAY: ["day"], None: []}[finest(by)]
    group_by = ["node", "device", *(["model", "tenant"] if pm else []), *grain]
    params: dict[str, str] = {"group_by": ",".join(group_by)}
    if f.since is not None:
        params["since"] = iso(f.since)
    if f.until is not None:
        params["until"] = iso(f.until)
    for k in ("node", "device", "model", "tenant"):
        if getattr(f, k) is not None:
            params[k] = getattr(f, k)
    return params


def read_collector(url: str, token: str, by: Sequence[str], f: Filters, *,
                   transport: httpx.BaseTransport | None = None, timeout: float = 30.0,
                   verify: "ssl.SSLContext | bool" = True) -> Cells:
    """The cells of a report from a collector's ``GET /api/v1/usage``."""
    import httpx  # here: a report over the local store does not pay its import (~60 ms)

    params = collector_params(by, f)
    base = url.rstrip("/")
    try:
        with httpx.Client(base_url=base, transport=transport, timeout=timeout, verify=verify) as client:
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
    return cells_of_groups(groups, by, f)


def cells_of_groups(groups: Sequence[dict], by: Sequence[str], f: Filters) -> Cells:
    """A report's cells from the usage groups the query API answers for
    :func:`collector_params`. Raises NoData, ReportError."""
    if not groups:
        raise NoData(f"the collector has no windows {f.describe()}")
    pm = per_model(by, f.model, f.tenant)
    grain = {HOUR: ["hour"], DAY: ["day"], None: []}[finest(by)]
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
