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
           "cost_opex_micro", "cost_micro", "cost_prompt_micro", "cost_completion_micro",
           "cached_prompt_tokens")
#: The idle windows' time and utilization x time, on the device's whole rows only.
IDLE_TIME = ("idle_seconds", "idle_util_pct_s")
#: The windows left without tokens because their token source could not be read (never idle),
#: and the tokens that rest on rounded counters (schema 5).
TOKEN_DETAIL = ("unavailable_cost_micro", "unavailable_seconds", "rounded_tokens")
#: Every sum a cell carries.
SUMS = ("seconds", "energy_j", "util_pct_s", *COUNTED, "idle_cost_micro", *TOKEN_DETAIL, *IDLE_TIME)

# As agent/store.py's _roll_up counts them: no tokens and a token source that answered is idle;
# no tokens because the source could not be read is unavailable.
_IDLE_WINDOW = "w.prompt_tokens + w.completion_tokens = 0 AND w.token_gap_s = 0"
_UNAVAILABLE_WINDOW = "w.prompt_tokens + w.completion_tokens = 0 AND w.token_gap_s > 0"
_RAW_WHOLE = {
    "seconds": "w.end - w.start", "energy_j": "coalesce(w.energy_j, 0)",
    "util_pct_s": "coalesce(w.util_pct, 0) * (w.end - w.start)",
    **{k: f"w.{k}" for k in COUNTED},
    "idle_cost_micro": f"CASE WHEN {_IDLE_WINDOW} THEN w.cost_micro ELSE 0 END",
    "unavailable_cost_micro": f"CASE WHEN {_UNAVAILABLE_WINDOW} THEN w.cost_micro ELSE 0 END",
    "unavailable_seconds": f"CASE WHEN {_UNAVAILABLE_WINDOW} THEN w.end - w.start ELSE 0.0 END",
    "rounded_tokens": "CASE WHEN w.token_source = 'rounded' THEN w.prompt_tokens + w.completion_tokens ELSE 0 END",
    "idle_seconds": f"CASE WHEN {_IDLE_WINDOW} THEN w.end - w.start ELSE 0.0 END",
    "idle_util_pct_s": f"CASE WHEN {_IDLE_WINDOW} THEN coalesce(w.util_pct, 0) * (w.end - w.start) ELSE 0.0 END",
}
#: Sums a usage cell holds as 0 by construction (agent/store.py's _roll_up, ``_RAW_USAGE``):
#: idle and unavailable windows have no usage rows. Grouped, they are these constants, not sums.
USAGE_ZERO = {"idle_cost_micro": "0", "unavailable_cost_micro": "0", "unavailable_seconds": "0.0"}
_RAW_USAGE = {
    "seconds": "w.end - w.start", "energy_j": "coalesce(u.energy_j, 0)",
    "util_pct_s": "coalesce(w.util_pct, 0) * (w.end - w.start)",
    **{k: f"u.{k}" for k in COUNTED}, **USAGE_ZERO,
    "rounded_tokens": "CASE WHEN u.token_source = 'rounded' THEN u.prompt_tokens + u.completion_tokens ELSE 0 END",
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


def has_unavailable(store: Store, lo: float, hi: float) -> bool:
    """Whether a day that [lo, hi) touches holds a window left without tokens because its token
    source could not be read (from the daily rollups: a few rows per device and day)."""
    row = store.conn.execute(
        "SELECT 1 FROM rollups WHERE period = 'day' AND model = '' AND unavailable_cost_micro > 0"
        " AND bucket >= ? AND bucket < ? LIMIT 1", [math.floor(lo / DAY) * DAY, hi]).fetchone()
    return row is not None


def _bucket_sql(col: str, size: int | None) -> str:
    return "NULL" if size is None else f"(CAST({col} AS INTEGER) / {size}) * {size}"


def _cells(store: Store, source: str, lo: float, hi: float, size: int | None, usage: bool,
           idle_time: bool, f: dict[str, str | None]) -> list[dict[str, Any]]:
    """One piece's cells (:func:`_piece`'s rows) by (node, device, ``t``) and, for usage cells,
    (model, tenant)."""
    sql, args = _piece(source, lo, hi, usage, idle_time, f)
    # IDLE_TIME: read only for the (idle) row of a report by model or tenant
    sums = [k for k in SUMS if not (k in IDLE_TIME and (usage or not idle_time))]
    group = ["node", "device", "t", *(["model", "tenant"] if usage else [])]
    keys = [f"{_bucket_sql('ts', size)} AS t" if k == "t" else k for k in group]
    if source != "raw" and size == PERIODS[source]:
        # Rollup rows are already the cells (one per key: the table's primary key), so no
        # GROUP BY: SQLite's sorter was most of a year by hour. The ORDER BY gives the cells in
        # the order the GROUP BY did, so every float sum adds in the same order as before.
        keys[2] = "CAST(ts AS INTEGER) AS t"
        return _rows(store, f"SELECT {', '.join(keys + sums)} FROM ({sql}) ORDER BY {', '.join(group)}", args)
    return _rows(store, f"SELECT {', '.join(keys + [f'sum({k}) AS {k}' for k in sums])} FROM ({sql}) "
                        f"GROUP BY {', '.join(group)}", args)


# -- grouped in SQL -----------------------------------------------------------------------------

#: A report key as SQL over a piece's rows (``ts``: a window's start or a rollup's bucket). Weeks
#: start on Mondays 00:00 UTC (1970-01-05 is 345,600 s).
KEY_SQL = {"node": "node", "device": "device", "model": "model", "tenant": "tenant",
           "hour": f"(CAST(ts AS INTEGER) / {HOUR}) * {HOUR}", "day": f"(CAST(ts AS INTEGER) / {DAY}) * {DAY}",
           "week": f"(CAST(ts AS INTEGER) - ((CAST(ts AS INTEGER) - 345600) % {7 * DAY}))"}
TIME_SIZES = {"hour": HOUR, "day": DAY, "week": 7 * DAY}


def grouped_cells(store: Store, lo: float, hi: float, *, keys: list[str], usage: bool,
                  idle_time: bool = False, node: str | None = None, device: str | None = None,
                  model: str | None = None, tenant: str | None = None, table: bool = False) -> Any:
    """The cells of :func:`range_cells` already summed to one per distinct ``keys`` (node,
    device, model, tenant, hour, day, week) by one SQL statement over every piece of the range
    (rollups and raw windows, UNION ALL), in the order of ``keys``. Each cell carries its keys
    (time keys as the bucket's start, in whole seconds) and ``t``, the start of its finest time
    bucket (None without one). Whole cells (``usage`` False) take no model or tenant key.
    ``table``: ``(column names, row tuples)`` instead of one dict per cell."""
    f = {"node": node, "device": device, "model": model, "tenant": tenant}
    direct = _direct_rollup_sql(store, lo, hi, keys, usage, idle_time, f, with_t=not table)
    if direct is not None:
        return _rows(store, *direct, table=table)
    q = _grouped_sql(lo, hi, keys, usage, idle_time, f)
    if q is None:
        return ([], []) if table else []
    sql, args, keys, terms = q
    if terms:
        sql += f" ORDER BY {', '.join(terms)}"
    return _rows(store, sql, args, table=table)


def _direct_rollup_sql(store: Store, lo: float, hi: float, keys: list[str], usage: bool, idle_time: bool,
                       f: dict[str, str | None], *, with_t: bool = True) -> tuple[str, list[Any]] | None:
    """Whole cells by device and one period whose range is whole rollup periods are the rollup
    rows themselves (one node, or by node too): no GROUP BY, so no sorter over a year by hour.
    Ordered as the rollups' primary key where the keys allow (node, one value, put before the
    device), so that SQLite sorts nothing either. ``with_t``: each row carries ``t`` too. None
    where that does not hold."""
    times = [k for k in keys if k in TIME_SIZES and k != "week"]
    if usage or len(times) != 1 or "device" not in keys or not set(keys) <= {"node", "device", *times}:
        return None
    pieces = plan(lo, hi, HOUR if times[0] == "hour" else DAY)
    if len(pieces) != 1 or pieces[0][0] != times[0]:
        return None
    if "node" not in keys and f["node"] is None:
        nodes = store.conn.execute("SELECT min(node), max(node) FROM rollups WHERE period = 'day'").fetchone()
        if nodes[0] != nodes[1]:
            return None
    sql, args = _piece(pieces[0][0], pieces[0][1], pieces[0][2], False, idle_time, f)
    sums = [k for k in SUMS if not (k in IDLE_TIME and not idle_time)]
    cols = {"node": "node", "device": "device", times[0]: "CAST(bucket AS INTEGER)"}
    select = [f"{cols[k]} AS {k}" for k in keys] + (["CAST(bucket AS INTEGER) AS t"] if with_t else []) + sums
    # One node (or by node): ordering by it too changes no order and matches the primary key
    # (period, bucket, node, device, ...), which a year by hour and device reads in order.
    order = ", ".join(("bucket" if k == times[0] else "node, device" if k == "device" and "node" not in keys else k)
                      for k in keys)
    inner = sql.replace("bucket AS ts, ", "bucket, ")
    return f"SELECT {', '.join(select)} FROM ({inner}) ORDER BY {order}", args


def grouped_usage_with_rest(store: Store, lo: float, hi: float, *, keys: list[str], node: str | None = None,
                            device: str | None = None, table: bool = False) -> Any:
    """A report by model or tenant in one SQL statement: the usage cells summed to ``keys`` and,
    per group of the other keys, the rest no model took (the whole windows minus their usage) as
    a cell whose model and tenant are None -- what reports/aggregate.py computes from whole and
    usage cells (its idle rest: the idle windows' time and utilization, the rest's cost as idle
    cost, left out where it is no cost and under a millijoule). In the report's order: by each
    key, the rest after the models (None last)."""
    f = {"node": node, "device": device, "model": None, "tenant": None}
    uq = _grouped_sql(lo, hi, keys, True, False, f)
    wq = _grouped_sql(lo, hi, keys, False, True, f)
    if uq is None or wq is None:
        return ([], []) if table else []
    (usql, uargs, ukeys, uterms), (wsql, wargs, wkeys, _) = uq, wq
    # The usage summed to the other keys, read from the pieces again rather than from u: over
    # rollups in their key order that streams, where regrouping u would sort it.
    ussql, usargs, _, _ = _grouped_sql(lo, hi, wkeys, True, False, f)  # type: ignore[misc]
    tail = [k for k in SUMS if k not in IDLE_TIME]
    on = " AND ".join(f"w.{k} = us.{k}" for k in wkeys) or "1"

    def rest(k: str) -> str:
        if k == "seconds":
            return "w.idle_seconds"
        if k == "util_pct_s":
            return "w.idle_util_pct_s"
        if k == "idle_cost_micro":
            return "w.cost_micro - coalesce(us.cost_micro, 0)"
        return f"w.{k} - coalesce(us.{k}, 0)"

    cols = [*ukeys, "t", *tail]
    rest_cols = [f"NULL AS {k}" if k in ("model", "tenant") else f"w.{k} AS {k}" for k in ukeys]
    rest_cols += ["w.t AS t", *(f"{rest(k)} AS {k}" for k in tail)]
    rest_sql = (f"WITH w AS ({wsql}), us AS ({ussql}) SELECT {', '.join(rest_cols)} FROM w LEFT JOIN us ON {on} "
                f"WHERE {rest('cost_micro')} != 0 OR abs({rest('energy_j')}) > 1e-3")
    if ukeys and ukeys[0] in ("model", "tenant"):
        # Every rest row (model None) sorts after every model's: the models in their group order
        # (no second sort), then the rest by the other keys; two statements, one order.
        names, rows = _rows(store, f"{usql} ORDER BY {', '.join(uterms)}", uargs, table=True)
        rest_order = f" ORDER BY {', '.join(wkeys)}" if wkeys else ""
        rows += _rows(store, rest_sql + rest_order, wargs + usargs, table=True)[1]
        return (names, rows) if table else [dict(zip(names, r)) for r in rows]
    order = ", ".join(f"{k} IS NULL, {k}" for k in ukeys)
    sql = (f"SELECT * FROM (SELECT {', '.join(cols)} FROM ({usql}) UNION ALL SELECT * FROM ({rest_sql}))"
           + (f" ORDER BY {order}" if order else ""))
    return _rows(store, sql, uargs + wargs + usargs, table=table)


def _rows(store: Store, sql: str, args: list[Any], table: bool = False) -> Any:
    cur = store.conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    if table:
        return names, cur.fetchall()
    return [dict(zip(names, r)) for r in cur]


def _grouped_sql(lo: float, hi: float, keys: list[str], usage: bool, idle_time: bool,
                 f: dict[str, str | None]) -> tuple[str, list[Any], list[str], list[str]] | None:
    """``(sql, args, keys, terms)``: the pieces' rows summed to ``keys`` (model and tenant
    dropped from whole cells), and the GROUP BY terms, which an ORDER BY that wants the groups'
    order repeats (SQLite then sorts once). Where the range is one piece of rollups of the
    finest time key's own period, that key groups by the bucket itself, not an expression of
    it, so a group by time (and node, device) reads the rollups in their key order and sorts
    nothing."""
    keys = [k for k in keys if usage or k not in ("model", "tenant")]
    times = [k for k in keys if k in TIME_SIZES]
    finest = min(times, key=TIME_SIZES.__getitem__) if times else None
    pieces, args = [], []
    parts = plan(lo, hi, HOUR if "hour" in times else DAY)
    for source, a, b in parts:
        sql, piece_args = _piece(source, a, b, usage, idle_time, f)
        pieces.append(sql)
        args += piece_args
    if not pieces:
        return None
    own = finest is not None and len(parts) == 1 and parts[0][0] == finest
    sums = [k for k in SUMS if not (k in IDLE_TIME and (usage or not idle_time))]
    select = [f"{'CAST(ts AS INTEGER)' if own and k == finest else KEY_SQL[k]} AS {k}" for k in keys]
    select.append(("CAST(ts AS INTEGER)" if own else KEY_SQL[finest]) + " AS t" if finest else "NULL AS t")
    select += [f"{USAGE_ZERO[k]} AS {k}" if usage and k in USAGE_ZERO else f"sum({k}) AS {k}" for k in sums]
    sql = f"SELECT {', '.join(select)} FROM ({' UNION ALL '.join(pieces)})"
    terms = ["ts" if own and k == finest else k for k in keys]
    if keys:
        sql += f" GROUP BY {', '.join(terms)}"
    return sql, args, keys, terms


def _piece(source: str, lo: float, hi: float, usage: bool, idle_time: bool,
           f: dict[str, str | None]) -> tuple[str, list[Any]]:
    """One piece's rows, not grouped: node, device, (model, tenant), t and the sums."""
    where, args = [], []
    if source == "raw":
        p, m = "w.", "u."
        sums = dict(_RAW_USAGE if usage else _RAW_WHOLE)
        frm = "windows w INDEXED BY windows_start" + (
            " CROSS JOIN window_usage u ON u.window_id = w.id" if usage else "")
        where += ["w.start >= ?", "w.start < ?"]
        t = "w.start"
    else:
        p = m = ""
        sums = {k: k for k in SUMS}
        frm = "rollups"
        where += ["period = ?", "bucket >= ?", "bucket < ?"]
        args.append(source)
        where.append("model != ''" if usage else "model = '' AND tenant = ''")
        t = "bucket"
    args += [lo, hi]
    if usage or not idle_time:
        for k in IDLE_TIME:
            sums.pop(k, None)
    for col in ("node", "device"):
        if f[col] is not None:
            where.append(f"{p}{col} = ?")
            args.append(f[col])
    cols = [f"{p}node AS node", f"{p}device AS device"]
    if usage:
        for col in ("model", "tenant"):
            if f[col] is not None:
                where.append(f"{m}{col} = ?")
                args.append(f[col])
        cols += [f"{m}model AS model", f"{m}tenant AS tenant"]
    cols.append(f"{t} AS ts")
    cols += [f"{sums[k]} AS {k}" for k in SUMS if k in sums]  # one column order for every piece
    return f"SELECT {', '.join(cols)} FROM {frm} WHERE {' AND '.join(where)}", args
