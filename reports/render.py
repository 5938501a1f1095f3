"""Renderers of a report: a rich table for people, JSON and CSV for scripts. Pure: a Report in,
a table or text out. Money stays integer micro-units in JSON and CSV (``*_micro``); the
per-Mtok figures are currency units (floats, for display and ratios)."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich import box
from rich.table import Table

from meterd.reports.aggregate import Report
from meterd.units import MICRO

#: Row fields after the group keys, in the order JSON and CSV give them.
FIELDS = (
    "prompt_tokens", "cached_prompt_tokens", "completion_tokens", "tokens", "rounded_tokens", "seconds",
    "energy_j", "energy_kwh", "cost_capex_micro", "cost_energy_micro", "cost_opex_micro", "cost_micro",
    "cost_prompt_micro", "cost_completion_micro", "idle_cost_micro", "unavailable_cost_micro",
    "unavailable_seconds", "cost_per_mtok", "cost_per_mtok_prompt",
    "cost_per_mtok_completion", "j_per_token", "tokens_per_s", "avg_power_w", "util_pct",
    "idle_cost_share", "capacity_cost_per_mtok", "realized_over_capacity",
)
EFFICIENCY_NOTE = ("real÷cap = realized cost per Mtok ÷ capacity cost per Mtok (the roofline "
                   "ceiling at full use, from the latest bench): the efficiency; 1.0 is the ceiling, "
                   "higher costs more")


def _round(v: Any) -> Any:
    return round(v, 9) if isinstance(v, float) else v


def _columns(report: Report, blank: Any = None) -> list[list[Any]]:
    """The keys' and FIELDS' columns of every row, floats rounded to 9 decimals and unknown
    figures as ``blank``: column by column (a year by hour and device is 70,080 rows), from the
    report's own columns where it holds them (reports/aggregate.Rows)."""
    out = [list(report.column(k)) for k in report.by]
    # _round, written out: a year by hour and device is two million values
    for k in FIELDS:
        out.append([blank if v is None else round(v, 9) if type(v) is float else v for v in report.column(k)])
    return out


def report_json(report: Report, *, since: str | None = None, until: str | None = None,
                source: str | None = None) -> dict[str, Any]:
    """``{"rows": [...], "totals": {...}}`` plus the report's context (currency, grouping,
    range, source, what the efficiency means)."""
    names = [*report.by, *FIELDS]
    return {
        "currency": report.currency,
        "by": report.by,
        "since": since,
        "until": until,
        "source": source,
        "rows": [dict(zip(names, values)) for values in zip(*_columns(report))],
        "totals": {k: _round(report.totals[k]) for k in FIELDS},
        "notes": {"realized_over_capacity": EFFICIENCY_NOTE.replace("real÷cap", "realized_over_capacity"),
                  "money": "*_micro fields are integer micro-units of the currency; cost_per_mtok"
                           " fields are currency units per million tokens"},
    }


def render_json(report: Report, **context: Any) -> str:
    """:func:`report_json` as indented JSON, UTF-8 as it is (msgspec: a year by hour and device
    encodes in a tenth of the time json's indenting encoder, written in Python, takes)."""
    import msgspec

    return msgspec.json.format(msgspec.json.encode(report_json(report, **context)), indent=2).decode()


def render_csv(report: Report) -> str:
    """One line per row, empty cells for unknown figures. The totals are left out so that a
    spreadsheet's column sums are the totals."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*report.by, *FIELDS])
    w.writerows(zip(*_columns(report, blank="")))
    return buf.getvalue()


def _money(micro: int | None) -> str:
    """Currency units: cents from one unit up, four decimals below (a minute costs fractions)."""
    if micro is None:
        return "—"
    return f"{micro / MICRO:,.2f}" if abs(micro) >= MICRO else f"{micro / MICRO:,.4f}"


def _num(v: float | None, digits: int, scale: float = 1.0) -> str:
    return "—" if v is None else f"{v * scale:,.{digits}f}"


def _count(n: int) -> str:
    """Token counts for people: exact below ten thousand, else k, M, B with four figures."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e4, "k")):
        if abs(n) >= div:
            v = n / div if suffix != "k" else n / 1e3
            return f"{v:,.4g}{suffix}" if v < 1000 else f"{v:,.0f}{suffix}"
    return f"{n:,}"


#: The figures' columns, most needed first when a terminal is narrow: cost per Mtok, cost,
#: tokens, energy; the cost split and the capacity comparison go first.
_FIGURES = (("prompt", 6), ("compl.", 6), ("kWh", 5), ("capex", 2), ("energy", 2), ("opex", 2),
            ("cost", 9), ("/Mtok", 10), ("in/Mtok", 3), ("out/Mtok", 3), ("J/tok", 4), ("util%", 4),
            ("idle%", 4), ("cap/Mtok", 3), ("real÷cap", 1))


def render_table(report: Report, *, title: str = "", width: int | None = None) -> Table | str:
    """The terminal view: tokens, energy, the cost split, cost per Mtok (total, prompt,
    completion), J/token, utilization, idle share, and capacity beside realized. With ``width``,
    the columns that fit it (meterd.agent.ui.fit_table: the keys always, then the figures that
    matter most, and a note naming the ones left out)."""
    from meterd.agent.ui import ALWAYS, Column, fit_table

    cur = report.currency or ""
    # Keys are never cut: a truncated model name is a wrong answer.
    columns = [Column(k, keep=ALWAYS) for k in report.by] + [Column(c, "right", keep) for c, keep in _FIGURES]

    def cells(r: dict[str, Any]) -> list[str]:
        return [
            _count(r["prompt_tokens"]), _count(r["completion_tokens"]),
            _num(r["energy_kwh"], 2 if (r["energy_kwh"] or 0) >= 10 else 3),
            _money(r["cost_capex_micro"]), _money(r["cost_energy_micro"]), _money(r["cost_opex_micro"]),
            _money(r["cost_micro"]), _num(r["cost_per_mtok"], 4), _num(r["cost_per_mtok_prompt"], 4),
            _num(r["cost_per_mtok_completion"], 4), _num(r["j_per_token"], 3), _num(r["util_pct"], 1),
            _num(r["idle_cost_share"], 1, 100), _num(r["capacity_cost_per_mtok"], 4),
            _num(r["realized_over_capacity"], 2),
        ]

    rows = [[_label(r[k]) for k in report.by] + cells(r) for r in report.rows]
    total = ["total", *([""] * (len(report.by) - 1)), *cells(report.totals)]
    return fit_table(columns, rows, width, total=total,
                     caption=f"money in {cur}; in/out = prompt/completion tokens; {EFFICIENCY_NOTE}"
                     + token_notes(report.totals),
                     hint="--wide shows them, --format csv or json every figure",
                     title=title or None, box=box.SIMPLE_HEAD, pad_edge=False)


def token_notes(t: dict[str, Any]) -> str:
    """What the table says about its tokens beyond the columns: the cached part of the prompt
    tokens, counts that rest on rounded counters, time the token sources could not be read."""
    out = ""
    if t.get("cached_prompt_tokens"):
        out += f"; {t['cached_prompt_tokens']:,} of the prompt tokens served from a prefix cache"
    if t.get("rounded_tokens"):
        out += (f"; {t['rounded_tokens']:,} tokens rest on rounded counters (printed with fewer digits "
                f"than they have, e.g. llama.cpp past a million), exact to within the windows' token_error_bound")
    if t.get("unavailable_cost_micro") or t.get("unavailable_seconds"):
        out += (f"; (unavailable): {t.get('unavailable_seconds') or 0:,.0f} s without a readable token source, "
                f"costing {_money(t.get('unavailable_cost_micro') or 0)}, is not idle: its tokens are unknown")
    return out


def _label(v: Any) -> str:
    if v == "":
        return "(none)"  # e.g. requests that named no tenant
    return str(v).replace(":00:00Z", ":00Z")
