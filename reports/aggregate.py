"""Report aggregation (pure: cells in, report rows and totals out; no clock, no file, no network).

A query (reports/query.py) hands over *cells*: sums at the finest grain it read (node, device,
model, tenant, and a time bucket when the report is by time), in two kinds:

- ``whole`` cells: a device's whole windows, idle ones included (the store's rollup rows with
  model '' and tenant '', or raw windows);
- ``usage`` cells: one model's and tenant's share of those windows (their parts add up to the
  whole of every window that served tokens).

A report grouped by model or tenant (or filtered by one) is made of usage cells, plus one
``(idle)`` row per group for what no model took (the whole minus the usage), so that idle cost is
shown, never hidden, and the totals stay the whole fleet's. Its seconds and utilization are those
of the windows that served no tokens (whole cells' ``idle_seconds`` and ``idle_util_pct_s``).
Any other report is made of whole cells.

Exactness: money is summed as integer micro-units, tokens as integers; every ratio is a ratio of
sums (never a mean of ratios); the totals are sums of the rows' sums, so a report's totals equal
the sum of its rows.

Capacity: for a (device, model) the bench's roofline predicts prefill and decode tokens/s at full
use (kernels/suite.py). What the realized tokens of a row would have cost at that ceiling is the
device's own cost rate, read from its windows (capex + opex per second, and the energy price per
joule its windows paid, PUE and tariff included) at the bench's full-use watts, times the
seconds the ceiling needs: prompt / prefill tokens/s + completion / decode tokens/s.
``realized_over_capacity`` = realized cost per Mtok / capacity cost per Mtok: the fleet's
*efficiency* as docs/architecture.md defines it (1.0 means at the ceiling; 4.0 means paying four
times the ceiling's price per token). Lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import add, itemgetter
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from meterd.agent.store_queries import IDLE_TIME
from meterd.units import DAY, HOUR, J_PER_KWH, WEEK, iso
from meterd.errors import ReportError

GROUP_KEYS = ("node", "device", "model", "tenant", "owner", "hour", "day", "week")
TIME_KEYS = {"hour": HOUR, "day": DAY, "week": WEEK}
DEFAULT_BY = ("model", "device")
IDLE = "(idle)"
#: The cost of windows left without tokens because their token source could not be read: an
#: outage of the meter, not an idle device.
UNAVAILABLE = "(unavailable)"
#: ``--by owner``: the windows of a device that was not split by process or MIG instance.
NOT_SPLIT = "(not split)"
#: Monday 1970-01-05T00:00:00Z: weeks start on Mondays, 00:00 UTC (ISO weeks).
WEEK_EPOCH = 4 * DAY

#: Integer sums (exact) and float sums of a cell. None in a cell means "unknown" (a collector
#: does not split a model's cost into capex/energy/opex), and makes the row's sum unknown.
INT_SUMS = ("prompt_tokens", "completion_tokens", "cost_capex_micro", "cost_energy_micro",
            "cost_opex_micro", "cost_micro", "cost_prompt_micro", "cost_completion_micro",
            "idle_cost_micro", "cached_prompt_tokens", "unavailable_cost_micro", "rounded_tokens")
FLOAT_SUMS = ("seconds", "energy_j", "util_pct_s", "capacity_cost_micro", "capacity_tokens",
              "unavailable_seconds")
SUMS = INT_SUMS + FLOAT_SUMS
#: Sums only a bench gives (absent from cells without one: 0).
CAPACITY = ("capacity_cost_micro", "capacity_tokens")
#: Whole cells' time and utilization x time of their windows with no tokens (IDLE_TIME, from the
#: store's queries): read only for the (idle) rest of a report by model or tenant (a cell
#: without them counts 0).


def parse_by(values: Iterable[str]) -> list[str]:
    """``--by`` values (repeatable, comma-separated) to a list of distinct keys, in order."""
    out: list[str] = []
    for v in values:
        for k in (p.strip().lower() for p in v.split(",")):
            if not k:
                continue
            if k not in GROUP_KEYS:
                raise ReportError(f"--by {k}: choose from {', '.join(GROUP_KEYS)}")
            if k not in out:
                out.append(k)
    return out or list(DEFAULT_BY)


def bucket(t: float, key: str) -> float:
    """The start (Unix seconds, UTC) of the hour, day or week that holds ``t``."""
    size = TIME_KEYS[key]
    offset = WEEK_EPOCH if key == "week" else 0
    return t - ((t - offset) % size)


def per_model(by: Sequence[str], model: str | None = None, tenant: str | None = None) -> bool:
    """Whether a report is made of usage cells (by or for a model or tenant)."""
    return "model" in by or "tenant" in by or model is not None or tenant is not None


@dataclass(frozen=True)
class Ceiling:
    """What the bench's roofline predicts for one model on one device at full use."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    watts: float | None


@dataclass
class Cells:
    """What a query read. ``idle_in_usage``: the usage cells already hold the unattributed rest as
    model ``(idle)`` (a collector does that), so no residual is computed from the whole cells."""

    whole: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)
    currency: str | None = None
    ceilings: dict[str, dict[str, Ceiling]] = field(default_factory=dict)
    idle_in_usage: bool = False
    #: The bench's capacity rows (kernels.suite.capacity_rows), for the HTML roofline.
    capacity: list[dict[str, Any]] = field(default_factory=list)
    #: The ``by`` keys the cells are already summed to, one cell per key in key order (the
    #: store grouped them in SQL); None: any cells, grouped here.
    grouped: tuple[str, ...] | None = None
    #: The rows' sums as one table, ``(column names, row tuples)``, one row per key of
    #: ``grouped`` in the report's order (the idle rest, model None, among them): the store's
    #: SQL did all the grouping. Replaces ``whole`` and ``usage``.
    table: tuple[list[str], list[tuple]] | None = None


@dataclass
class Report:
    by: list[str]
    #: One mapping per row, the group's keys and its figures: a list, or Rows (the same held as
    #: columns) where the store summed the report in SQL.
    rows: Sequence[dict[str, Any]]
    totals: dict[str, Any]
    currency: str | None
    per_model: bool

    def column(self, k: str) -> Sequence[Any]:
        """One figure or key of every row, in row order (no row dicts built for Rows)."""
        if isinstance(self.rows, Rows):
            return self.rows.columns[k]
        return [r[k] for r in self.rows]


# -- sums -----------------------------------------------------------------------------------------


def _zero() -> dict[str, Any]:
    return {k: (0 if k in INT_SUMS else 0.0) for k in SUMS}


#: A new group starts as a copy of its first cell: absent sums are 0 (a cell's other keys ride
#: along, unread).
_FIRST = {k: 0 for k in SUMS}


def _add(acc: dict[str, Any], cell: Mapping[str, Any], sign: int = 1) -> None:
    """``acc += cell`` (or ``-=``) for every sum; None (unknown) absorbs."""
    get = cell.get
    if sign > 0:
        for k in SUMS:
            try:
                acc[k] += get(k, 0)
            except TypeError:  # None on either side: unknown
                acc[k] = None
    else:
        for k in SUMS:
            try:
                acc[k] -= get(k, 0)
            except TypeError:
                acc[k] = None


def _keyer(by: Sequence[str], idle: Sequence[str] = ()) -> Callable[[Mapping[str, Any]], tuple]:
    """The function cell -> its group's key under ``by``: time buckets for time keys, IDLE for a
    model or tenant that is None (and for every key in ``idle``), "" for other missing values.
    Built once per report: a year by hour is 70,000 cells."""

    def part(k: str) -> Callable[[Mapping[str, Any]], Any]:
        if k in idle:
            return lambda cell: IDLE
        if k in TIME_KEYS:
            size, offset = TIME_KEYS[k], WEEK_EPOCH if k == "week" else 0

            def time_part(cell: Mapping[str, Any]) -> Any:
                t = cell.get("t")
                if t is None:
                    raise ReportError(f"the query did not read time buckets for --by {k}")
                return t - ((t - offset) % size)  # bucket(t, k)
            return time_part
        missing = IDLE if k in ("model", "tenant") else NOT_SPLIT if k == "owner" else ""

        def value(cell: Mapping[str, Any]) -> Any:
            v = cell.get(k)
            return missing if v is None else v
        return value

    parts = [part(k) for k in by]
    if len(parts) == 1:
        (a,) = parts
        return lambda cell: (a(cell),)
    if len(parts) == 2:
        a, b = parts
        return lambda cell: (a(cell), b(cell))
    return lambda cell: tuple(p(cell) for p in parts)


def match_profile(model: str, profiles: Iterable[str]) -> str | None:
    """The roofline profile a served model name stands for: the exact name, else the longest
    profile name inside the served name's last path part (``meta-llama/Llama-3.1-8B-Instruct``
    is ``llama-3.1-8b``)."""
    names = list(profiles)
    if model in names:
        return model
    base = model.rsplit("/", 1)[-1].lower()
    hits = [n for n in names if n.lower() in base]
    return max(hits, key=len) if hits else None


def device_rates(whole: Iterable[Mapping[str, Any]]) -> dict[str, tuple[float, float | None]]:
    """Per device: (capex + opex micro-units per second, energy micro-units per joule or None),
    read from its whole windows over the report's range."""
    acc: dict[str, list[float]] = {}
    for c in whole:
        a = acc.setdefault(c["device"], [0.0, 0.0, 0.0, 0.0])
        fixed = (c.get("cost_capex_micro") or 0) + (c.get("cost_opex_micro") or 0)
        a[0] += fixed
        a[1] += c.get("seconds") or 0.0
        a[2] += c.get("cost_energy_micro") or 0
        a[3] += c.get("energy_j") or 0.0
    return {d: (a[0] / a[1] if a[1] else 0.0, a[2] / a[3] if a[3] else None) for d, a in acc.items()}


def _with_capacity(usage: list[dict[str, Any]], ceilings: Mapping[str, Mapping[str, Ceiling]],
                   rates: Mapping[str, tuple[float, float | None]]) -> list[dict[str, Any]]:
    """Usage cells with what their tokens would have cost at the device's ceiling."""
    out = []
    for c in usage:
        c = dict(c)
        c["capacity_cost_micro"] = 0.0
        c["capacity_tokens"] = 0.0
        dev = ceilings.get(c.get("device") or "")
        name = match_profile(c["model"], dev) if dev and c.get("model") and c["model"] != IDLE else None
        rate = rates.get(c.get("device") or "")
        if name is not None and rate is not None:
            ceil = dev[name]
            fixed, per_j = rate
            if ceil.watts is None or per_j is not None:
                r = fixed + (ceil.watts or 0.0) * (per_j or 0.0)
                p, q = c.get("prompt_tokens") or 0, c.get("completion_tokens") or 0
                full_s = (p / ceil.prefill_tokens_per_s if p else 0.0) + (
                    q / ceil.decode_tokens_per_s if q else 0.0)
                c["capacity_cost_micro"] = r * full_s
                c["capacity_tokens"] = float(p + q)
        out.append(c)
    return out


# -- figures --------------------------------------------------------------------------------------


def _ratio(a: float | int | None, b: float | int | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def figures(s: Mapping[str, Any]) -> dict[str, Any]:
    """The report's figures from one set of sums. Cost per Mtok is in currency units
    (micro-units per token × 1e6 / 1e6 = micro-units / tokens). A ratio is None where its
    numerator is unknown or its denominator 0 (``_ratio``, written out: a year by hour is 70,000
    rows)."""
    prompt, completion = s["prompt_tokens"], s["completion_tokens"]
    tokens = prompt + completion
    energy, seconds, cost = s["energy_j"], s["seconds"], s["cost_micro"]
    cost_prompt, cost_completion = s["cost_prompt_micro"], s["cost_completion_micro"]
    idle, util_s, cap_tokens = s["idle_cost_micro"], s["util_pct_s"], s.get("capacity_tokens", 0.0)
    realized = cost / tokens if cost is not None and tokens else None
    covered = tokens > 0 and cap_tokens is not None and abs(cap_tokens - tokens) < 0.5
    capacity = _ratio(s["capacity_cost_micro"], tokens) if covered else None
    return {
        "prompt_tokens": prompt,
        "cached_prompt_tokens": s["cached_prompt_tokens"],
        "completion_tokens": completion,
        "tokens": tokens,
        # tokens that rest on counters printed with fewer digits than they have (llama.cpp
        # past a million): the figure is exact to within the windows' token_error_bound
        "rounded_tokens": s["rounded_tokens"],
        "seconds": seconds,
        "energy_j": energy,
        "energy_kwh": None if energy is None else energy / J_PER_KWH,
        "cost_capex_micro": s["cost_capex_micro"],
        "cost_energy_micro": s["cost_energy_micro"],
        "cost_opex_micro": s["cost_opex_micro"],
        "cost_micro": cost,
        "cost_prompt_micro": cost_prompt,
        "cost_completion_micro": cost_completion,
        "idle_cost_micro": idle,
        "unavailable_cost_micro": s["unavailable_cost_micro"],
        "unavailable_seconds": s["unavailable_seconds"],
        "cost_per_mtok": realized,
        "cost_per_mtok_prompt": cost_prompt / prompt if cost_prompt is not None and prompt else None,
        "cost_per_mtok_completion": (cost_completion / completion
                                     if cost_completion is not None and completion else None),
        "j_per_token": energy / tokens if energy is not None and tokens else None,
        "tokens_per_s": tokens / seconds if seconds else None,
        "avg_power_w": energy / seconds if energy is not None and seconds else None,
        "util_pct": util_s / seconds if util_s is not None and seconds else None,
        "idle_cost_share": idle / cost if idle is not None and cost else None,
        "capacity_cost_per_mtok": capacity,
        "realized_over_capacity": _ratio(realized, capacity) if capacity else None,
    }


# -- the report -----------------------------------------------------------------------------------


def _split_unavailable(rest: dict[str, Any]) -> dict[str, Any] | None:
    """The part of a no-model rest that windows without a readable token source cost, with the
    rest's capex, energy and opex split in the same proportions (exact integers), its energy in
    proportion to cost; None when there is none."""
    u, total = rest.get("unavailable_cost_micro") or 0, rest["cost_micro"]
    if not u or total is None or total <= 0:
        return None
    from meterd.agent.costmodel import allocate

    out = {**_zero(), "cost_micro": u, "unavailable_cost_micro": u,
           "seconds": rest.get("unavailable_seconds") or 0.0,
           "unavailable_seconds": rest.get("unavailable_seconds") or 0.0}
    parts = ("cost_capex_micro", "cost_energy_micro", "cost_opex_micro")
    if all(rest[k] is not None and rest[k] >= 0 for k in parts):
        for k, v in zip(parts, allocate(u, [rest[k] for k in parts])):
            out[k] = v
    else:
        for k in parts:
            out[k] = None
    out["energy_j"] = None if rest["energy_j"] is None else rest["energy_j"] * u / total
    return out


def aggregate(cells: Cells, by: Sequence[str], *, model: str | None = None,
              tenant: str | None = None) -> Report:
    """Group ``cells`` by ``by``: one row per distinct key, sorted by key; totals from the same
    sums as the rows. The cells are read, never changed."""
    by = list(by)
    pm = per_model(by, model, tenant)
    if cells.table is not None and cells.grouped == tuple(by):
        rows, total = _table_rows(cells.table, by)
        return Report(by=by, rows=rows, totals=figures(total), currency=cells.currency, per_model=pm)
    key_of = _keyer(by)
    if cells.ceilings:
        usage = _with_capacity(cells.usage, cells.ceilings, device_rates(cells.whole))
    else:
        usage = cells.usage  # no bench, no capacity: absent sums count as 0
    groups: dict[tuple, dict[str, Any]] = {}
    ordered = False  # groups already in key order

    def into(key: tuple, cell: Mapping[str, Any]) -> None:
        acc = groups.get(key)
        if acc is None:  # most cells start their row: copy, do not add to zeros
            groups[key] = {**_FIRST, **cell}
        else:
            _add(acc, cell)

    if pm and cells.grouped == tuple(by) and cells.idle_in_usage and not cells.ceilings:
        # The store summed the usage and its idle rest to these keys, in the report's order.
        groups = {key_of(c): c for c in usage}
        ordered = len(groups) == len(usage)
        if not ordered:  # a model named like the idle rest: group as below
            groups = {}
            for c in usage:
                into(key_of(c), c)
    elif pm:
        for c in usage:
            into(key_of(c), c)
        if not cells.idle_in_usage and model is None and tenant is None:
            rest_key = _keyer(by, idle=("model", "tenant"))
            rest: dict[tuple, dict[str, Any]] = {}
            for cs, sign in ((cells.whole, 1), (usage, -1)):
                for c in cs:
                    key = rest_key(c)
                    acc = rest.get(key)
                    if acc is None:
                        acc = rest[key] = {**_zero(), **dict.fromkeys(IDLE_TIME, 0.0)}
                    _add(acc, c, sign)
                    if sign > 0:  # the idle windows' time: whole cells only
                        for k in IDLE_TIME:
                            try:
                                acc[k] += c.get(k, 0)
                            except TypeError:  # None: unknown
                                acc[k] = None
            for key, s in rest.items():
                # Usage energy is the window's energy shared by cost (floats): a rest under a
                # millijoule is rounding, not an idle device.
                if s["cost_micro"] or abs(s["energy_j"] or 0.0) > 1e-3:
                    # The rest's time is the idle windows' (whole minus usage would not do: usage
                    # cells repeat a window's seconds for each model that ran in it).
                    out = _split_unavailable(s)
                    s.update(seconds=s["idle_seconds"], util_pct_s=s["idle_util_pct_s"],
                             capacity_cost_micro=0.0, capacity_tokens=0.0, unavailable_seconds=0.0)
                    if out is not None:  # an outage of the meter is its own row, never idle
                        into(tuple(UNAVAILABLE if k == IDLE else k for k in key), out)
                        _add(s, out, -1)
                        s["unavailable_seconds"] = 0.0
                    s["idle_cost_micro"] = s["cost_micro"]
                    if s["cost_micro"] or abs(s["energy_j"] or 0.0) > 1e-3 or out is None:
                        into(key, s)
    elif cells.grouped == tuple(by) and not cells.ceilings:
        # The store summed the cells to these keys (one each, in key order): they are the rows'
        # sums as they are, read and never changed.
        groups = {key_of(c): c for c in cells.whole}
        ordered = True
    else:
        cap_by_key: dict[tuple, list[float]] = {}
        if cells.ceilings:
            for c in usage:
                a = cap_by_key.setdefault(key_of(c), [0.0, 0.0])
                a[0] += c["capacity_cost_micro"]
                a[1] += c["capacity_tokens"]
        for c in cells.whole:  # whole cells carry no capacity: it comes from usage below
            key = key_of(c)
            acc = groups.get(key)
            if acc is None:  # into(), written out: a year by hour is 70,000 cells
                groups[key] = {**_FIRST, **c}
            else:
                _add(acc, c)
        for key, (cost, toks) in cap_by_key.items():
            if key in groups:
                groups[key]["capacity_cost_micro"] += cost
                groups[key]["capacity_tokens"] += toks

    # The totals are the column sums of the rows' sums (unknown if any row's is unknown).
    total = _zero()
    sums = list(groups.values())
    for k in SUMS:
        try:
            total[k] = sum(map(itemgetter(k), sums), total[k])
        except TypeError:  # a None: unknown
            total[k] = None
        except KeyError:  # grouped cells carry no capacity sums (no bench): 0
            total[k] = sum((c.get(k, 0) for c in sums), total[k]) if k not in CAPACITY else total[k]
    if ordered:
        order: Iterable[tuple] = groups
    else:
        # The idle rest sorts after the models: a plain sort where no key holds it.
        names = [i for i, k in enumerate(by) if k not in TIME_KEYS]
        idle_keys = any(key[i] == IDLE for key in groups for i in names)
        order = sorted(groups, key=_sort_key) if idle_keys else sorted(groups)
    labels = [(k, k in TIME_KEYS) for k in by]
    rows = []
    stamps: dict[float, str] = {}  # a year by hour and device names each hour 8 times
    for key in order:
        # The figures, then the group's keys (renderers take columns by name): one dict built
        # once per row, not merged into another.
        row = figures(groups[key])
        for (k, is_time), v in zip(labels, key):
            if is_time:
                text = stamps.get(v)
                if text is None:
                    text = stamps[v] = iso(v)
                row[k] = text
            else:
                row[k] = v
        rows.append(row)
    return Report(by=by, rows=rows, totals=figures(total), currency=cells.currency, per_model=pm)


#: From this many rows a table of sums goes through NumPy (:func:`_numpy_columns`); below it
#: NumPy's import (~100 ms) costs more than it saves.
NUMPY_FROM_ROWS = 2000
#: Integers below this convert to float64 exactly: NumPy's divisions of them equal Python's.
_EXACT_INT = 2**53


def _table_rows(table: tuple[list[str], list[tuple]], by: list[str]) -> tuple["Rows", dict[str, Any]]:
    """:func:`figures` of every row of a table of sums, computed column by column (a year by
    hour and device is 70,080 rows), as :class:`Rows`, and the totals' sums. The same figures
    as ``figures(row)``, to the bit: the same divisions, None where a denominator is 0 or a
    numerator unknown."""
    names, tuples = table
    n = len(tuples)
    got = _numpy_columns(names, tuples) if n >= NUMPY_FROM_ROWS else None
    cols, ratio, tokens, kwh = got if got is not None else _python_columns(names, tuples)
    total = _zero()
    for k in SUMS:
        if k in cols:
            try:
                total[k] = sum(cols[k], total[k])
            except TypeError:  # a None: unknown
                total[k] = None

    def col(k: str, zero: Any = 0) -> Sequence[Any]:
        return cols[k] if k in cols else (zero,) * n

    none = (None,) * n
    fig: dict[str, Sequence[Any]] = {
        "prompt_tokens": cols["prompt_tokens"], "cached_prompt_tokens": col("cached_prompt_tokens"),
        "completion_tokens": cols["completion_tokens"], "tokens": tokens, "rounded_tokens": col("rounded_tokens"),
        "seconds": cols["seconds"], "energy_j": cols["energy_j"], "energy_kwh": kwh,
        **{k: cols[k] for k in ("cost_capex_micro", "cost_energy_micro", "cost_opex_micro", "cost_micro",
                                "cost_prompt_micro", "cost_completion_micro", "idle_cost_micro")},
        "unavailable_cost_micro": col("unavailable_cost_micro"),
        "unavailable_seconds": col("unavailable_seconds", 0.0),
        "cost_per_mtok": ratio("cost_micro", "tokens"),
        "cost_per_mtok_prompt": ratio("cost_prompt_micro", "prompt_tokens"),
        "cost_per_mtok_completion": ratio("cost_completion_micro", "completion_tokens"),
        "j_per_token": ratio("energy_j", "tokens"),
        "tokens_per_s": ratio("tokens", "seconds"),
        "avg_power_w": ratio("energy_j", "seconds"),
        "util_pct": ratio("util_pct_s", "seconds"),
        "idle_cost_share": ratio("idle_cost_micro", "cost_micro"),
        "capacity_cost_per_mtok": none, "realized_over_capacity": none,
    }
    assert list(fig) == list(figures(_zero())), "figures() and _table_rows() name the same figures in the same order"
    stamps: dict[int, str] = {}
    for k in by:
        keys = cols[k]
        if k in TIME_KEYS:
            for t in set(keys):
                stamps[t] = iso(t)
            fig[k] = [stamps[t] for t in keys]
        elif k in ("model", "tenant"):
            fig[k] = [IDLE if v is None else v for v in keys]
        else:
            fig[k] = ["" if v is None else v for v in keys]
    return Rows(fig, n), total


#: A table's columns by name, ``ratio(numerator, denominator)`` of two of them (or of
#: "tokens") as figures() divides them, the tokens and the kWh.
Columns = tuple[dict[str, Sequence[Any]], Callable[[str, str], list[Any]], Sequence[Any], Sequence[Any]]


def _python_columns(names: list[str], tuples: list[tuple]) -> Columns:
    """The table's columns in plain Python: a pass per column (no NumPy import)."""
    n = len(tuples)
    cols: dict[str, Sequence[Any]] = dict(zip(names, zip(*tuples))) if n else {k: () for k in names}
    tokens = list(map(add, cols["prompt_tokens"], cols["completion_tokens"]))
    named = {**cols, "tokens": tokens}

    def ratio(num: str, den: str) -> list[Any]:
        return [a / b if b and a is not None else None
                for a, b in zip(named.get(num, (0,) * n), named[den])]

    return cols, ratio, tokens, [None if e is None else e / J_PER_KWH for e in cols["energy_j"]]


def _numpy_columns(names: list[str], tuples: list[tuple]) -> Columns | None:
    """The table's columns read through one NumPy structured array -- one pass over the row
    tuples in their order, where a Python pass per column over the rows' objects misses the
    cache on every value (a year by hour and device: ~45 ms against ~170 ms) -- as Python
    lists, as :func:`_python_columns` gives them. None (the caller goes column by column in
    Python) where the columns do not convert exactly:
    NumPy missing, an unknown (None) sum, an integer from 2**53 on."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - a dependency; the Python path covers it
        return None
    dtype = [(k, "i8" if k in INT_SUMS else "f8" if k in FLOAT_SUMS else "O") for k in names]
    if "prompt_tokens" not in names or "completion_tokens" not in names:
        return None
    try:
        a = np.array(tuples, dtype=dtype)
    except (TypeError, ValueError, OverflowError):  # None in an integer sum, past int64
        return None
    arrays: dict[str, Any] = {k: a[k] for k in names}
    arrays["tokens"] = arrays["prompt_tokens"] + arrays["completion_tokens"]
    for k, t in dtype:
        if t == "f8" and np.isnan(arrays[k]).any():  # None became NaN: unknown
            return None
    for k in [k for k, t in dtype if t == "i8"] + ["tokens"]:
        if len(arrays[k]) and int(np.abs(arrays[k]).max()) >= _EXACT_INT:
            return None
    # The integer sums are SQLite integers: the store's money and token columns are INTEGER and
    # hold integers only (money is integer micro-units), so "i8" cuts nothing.
    cols = {k: arrays[k].tolist() for k in names}
    n = len(tuples)

    def ratio(num: str, den: str) -> list[Any]:
        d = arrays[den]
        zero = d == 0
        out = np.divide(arrays[num] if num in arrays else np.zeros(n), d, out=np.zeros(n), where=~zero).tolist()
        for i in np.flatnonzero(zero).tolist():
            out[i] = None
        return out

    return cols, ratio, arrays["tokens"].tolist(), (arrays["energy_j"] / J_PER_KWH).tolist()


class Rows(Sequence[dict[str, Any]]):
    """A report's rows held as columns (one list per figure and key, the names in the order a
    row dict from :func:`figures` has them): a year by hour and device is 70,080 rows of 30
    figures, and building 2 million dict entries was most of such a report's time. A row is a
    dict built when it is read; renderers that go column by column read :attr:`columns` (or
    :meth:`Report.column`) and build none."""

    __slots__ = ("columns", "_n")

    def __init__(self, columns: dict[str, Sequence[Any]], n: int) -> None:
        self.columns = columns
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError("report row index out of range")
        return {k: v[i] for k, v in self.columns.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = list(self.columns)
        for values in zip(*self.columns.values()):
            yield dict(zip(names, values))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Rows, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"Rows({self._n} rows: {', '.join(self.columns)})"


def _sort_key(key: tuple) -> tuple:
    # The idle rest sorts after the models; numbers (time buckets) before strings never mix
    # within one position, so plain tuples compare.
    return tuple((1, "") if v == IDLE else (0, v) for v in key)
