"""The reads `meter report` makes over the agent's tables (``windows``, ``window_usage``,
``rollups``), next to the store that owns them (agent/store.py); reports/query.py calls these
and knows no SQL.

A range [lo, hi) is cut into the pieces each table answers best (:func:`plan`): the whole days
inside it from the daily rollups, the whole hours at its ragged ends from the hourly rollups,
and the minutes before the first whole hour and after the last from the raw windows. A window
belongs to the hour and day that hold its start, exactly as the rollups count it, so every path
gives the same sums.

A cell is one row of sums per (node, device, time bucket) -- and (model, tenant) for usage cells
-- with the keys of ``SUMS`` (and ``IDLE_TIME`` when asked).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from meterd.agent.store import PERIODS
from meterd.units import DAY, HOUR

if TYPE_CHECKING:
    from meterd.agent.store import Store


#: Integer sums of a window (and of its usage rows), kept as they are.
COUNTED = ("prompt_tokens", "completion_tokens", "cost_capex_micro", "cost_energy_micro",
           "cost_opex_micro", "cost_micro", "cost_prompt_micro", "cost_completion_micro")
#: The idle windows' time and utilization x time, on the device's whole rows only.
IDLE_TIME = ("idle_seconds", "idle_util_pct_s")
#: Every sum a cell carries.
SUMS = ("seconds", "energy_j", "util_pct_s", *COUNTED, "idle_cost_micro", *IDLE_TIME)

_IDLE_WINDOW = "w.prompt_tokens + w.completion_tokens = 0"
_RAW_WHOLE = {
    "seconds": "w.end - w.start", "energy_j": "coalesce(w.energy_j, 0)",
    "util_pct_s": "coalesce(w.util_pct, 0) * (w.end - w.start)",
    **{k: f"w.{k}" for k in COUNTED},
    "idle_cost_micro": f"CASE WHEN {_IDLE_WINDOW} THEN w.cost_micro ELSE 0 END",
    "idle_seconds": f"CASE WHEN {_IDLE_WINDOW} THEN w.end - w.start ELSE 0.0 END",
    "idle_util_pct_s": f"CASE WHEN {_IDLE_WINDOW} THEN coalesce(w.util_pct, 0) * (w.end - w.start) ELSE 0.0 END",
}
_RAW_USAGE = {
    "seconds": "w.end - w.start", "energy_j": "coalesce(u.energy_j, 0)",
    "util_pct_s": "coalesce(w.util_pct, 0) * (w.end - w.start)",
    **{k: f"u.{k}" for k in COUNTED}, "idle_cost_micro": "0",
}


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


def window_span(store: Store) -> tuple[tuple[float, str], tuple[float, str]] | None:
    """``((start, currency), (start, currency))`` of the first and the last window by start, or
    None for a store with no windows."""
    c = store.conn
    first = c.execute("SELECT start, currency FROM windows ORDER BY start LIMIT 1").fetchone()
    if first is None:
        return None
    last = c.execute("SELECT start, currency FROM windows ORDER BY start DESC LIMIT 1").fetchone()
    return tuple(first), tuple(last)


def range_cells(store: Store, lo: float, hi: float, *, bucket: int | None, usage: bool,
                idle_time: bool = False, node: str | None = None, device: str | None = None,
                model: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
    """The cells of the windows whose start is in [lo, hi), by (node, device, ``t``) -- ``t``
    the start of the window's ``bucket`` (seconds: an hour or a day; None: one bucket) -- and by
    (model, tenant) where ``usage``. ``idle_time`` adds the idle windows' time to whole cells."""
    out: list[dict[str, Any]] = []
    for source, a, b in plan(lo, hi, HOUR if bucket == HOUR else DAY):
        out += _cells(store, source, a, b, bucket, usage, idle_time,
                      {"node": node, "device": device, "model": model, "tenant": tenant})
    return out


def owner_cells(store: Store, lo: float, hi: float, *, bucket: int | None, node: str | None = None,
                device: str | None = None) -> list[dict[str, Any]]:
    """Whole cells by (node, device, ``t``, owner) for ``--by owner``: a shared GPU's windows by
    their ``window_owners`` rows (energy and cost apportioned; the time is the window's times the
    owner's share; the tokens those of the usage rows the owner's token source served), and
    every other window whole, with owner None. From raw windows: the rollups keep no owners."""
    where, args = ["w.start >= ?", "w.start < ?"], [lo, hi]
    for col, v in (("node", node), ("device", device)):
        if v is not None:
            where.append(f"w.{col} = ?")
            args.append(v)
    t = _bucket_sql("w.start", bucket)
    cond = " AND ".join(where)
    tokens = ("(SELECT coalesce(sum(u.{0}), 0) FROM window_usage u WHERE u.window_id = w.id AND u.owner = o.owner)")
    split = f"""
        SELECT w.node AS node, w.device AS device, {t} AS t, o.owner AS owner,
               sum((w.end - w.start) * o.share) AS seconds, sum(coalesce(o.energy_j, 0)) AS energy_j,
               NULL AS util_pct_s,
               sum({tokens.format("prompt_tokens")}) AS prompt_tokens,
               sum({tokens.format("completion_tokens")}) AS completion_tokens,
               sum(o.cost_capex_micro) AS cost_capex_micro, sum(o.cost_energy_micro) AS cost_energy_micro,
               sum(o.cost_opex_micro) AS cost_opex_micro, sum(o.cost_micro) AS cost_micro,
               NULL AS cost_prompt_micro, NULL AS cost_completion_micro,
               sum(CASE WHEN o.owner = 'idle' THEN o.cost_micro ELSE 0 END) AS idle_cost_micro
        FROM windows w INDEXED BY windows_start JOIN window_owners o ON o.window_id = w.id
        WHERE {cond} GROUP BY node, device, t, owner"""
    whole = {k: v for k, v in _RAW_WHOLE.items() if k not in IDLE_TIME}
    rest = (f"SELECT w.node AS node, w.device AS device, {t} AS t, NULL AS owner, "
            f"{', '.join(f'sum({e}) AS {k}' for k, e in whole.items())} FROM windows w INDEXED BY windows_start "
            f"WHERE {cond} AND NOT EXISTS (SELECT 1 FROM window_owners o WHERE o.window_id = w.id) "
            f"GROUP BY node, device, t")
    out: list[dict[str, Any]] = []
    for sql in (split, rest):
        cur = store.conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        out += [dict(zip(names, r)) for r in cur]
    return out


def _bucket_sql(col: str, size: int | None) -> str:
    return "NULL" if size is None else f"(CAST({col} AS INTEGER) / {size}) * {size}"


def _cells(store: Store, source: str, lo: float, hi: float, size: int | None, usage: bool,
           idle_time: bool, f: dict[str, str | None]) -> list[dict[str, Any]]:
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
        sums = {k: k for k in SUMS}
        frm = "rollups"
        time_col, m = "bucket", ""
        where.append("model != ''" if usage else "model = '' AND tenant = ''")
    if usage or not idle_time:  # read only for the (idle) row of a report by model or tenant
        for k in IDLE_TIME:
            sums.pop(k, None)
    args += [lo, hi]
    for col in ("node", "device"):
        if f[col] is not None:
            where.append(f"{t}{col} = ?")
            args.append(f[col])
    keys = [f"{t}node AS node", f"{t}device AS device", f"{_bucket_sql(time_col, size)} AS t"]
    group = ["node", "device", "t"]
    if usage:
        for col in ("model", "tenant"):
            if f[col] is not None:
                where.append(f"{m}{col} = ?")
                args.append(f[col])
        keys += [f"{m}model AS model", f"{m}tenant AS tenant"]
        group += ["model", "tenant"]
    if source != "raw" and size == PERIODS[source]:
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
