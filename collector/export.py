"""Billing export and the ratios the query API shows. Pure: sums in, rows and text out.

Money stays in integer micro-units until it is rendered; a currency amount is rendered from
the integer with Decimal, never through a float. Ratios over a period are ratios of sums.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Iterable, Sequence

from meterd.units import J_PER_KWH, MICRO, iso, parse_iso

PERIODS = ("hour", "day", "month")
EXPORT_COLUMNS = (
    "period", "period_start", "node", "model", "currency", "windows", "prompt_tokens",
    "cached_prompt_tokens", "completion_tokens", "tokens", "energy_j", "energy_kwh", "cost_micro", "cost",
    "idle_cost_micro", "unavailable_cost_micro", "cost_per_mtok_micro", "cost_per_mtok",
)
#: What an export can be broken down by (``--by``), beside the period.
EXPORT_KEYS = ("node", "device", "model", "tenant")
DEFAULT_BY = ("node", "model")
#: The invoice columns after the keys, for any ``--by`` other than the default.
INVOICE_COLUMNS = (
    "currency", "windows", "prompt_tokens", "cached_prompt_tokens", "completion_tokens", "tokens",
    "energy_j", "energy_kwh", "cost_micro", "cost", "cost_prompt_micro", "cost_completion_micro",
    "idle_cost_micro", "cost_per_mtok_micro", "cost_per_mtok",
)
IDLE = "(idle)"


def parse_by(text: str) -> tuple[str, ...]:
    """``tenant,model`` -> ("tenant", "model"); ValueError naming a key that is not one."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in keys if k not in EXPORT_KEYS]
    if bad or not keys:
        raise ValueError(f"--by {text!r}: expected a comma-separated list of {', '.join(EXPORT_KEYS)}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"--by {text!r}: a key is named twice")
    return keys


def export_columns(by: Sequence[str] = DEFAULT_BY) -> tuple[str, ...]:
    """The CSV columns of an export broken down by ``by`` (the default keeps today's columns)."""
    if tuple(by) == DEFAULT_BY:
        return EXPORT_COLUMNS
    return ("period", "period_start", *by, *INVOICE_COLUMNS)


def parse_bound(text: str) -> float:
    """Unix seconds from an ISO-8601 date or time; a time without an offset is UTC."""
    try:
        return parse_iso(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO-8601 date or time: {text!r} (e.g. 2026-11-01 or "
                         f"2026-11-01T00:00:00Z)") from None


def money(micro: int | None) -> str | None:
    """Integer micro-units as an exact decimal string in currency units: 61234 -> "0.061234"."""
    if micro is None:
        return None
    return str(Decimal(micro).scaleb(-6).quantize(Decimal("0.000001")))


def per_mtok_micro(cost_micro: int, tokens: int) -> int | None:
    """Micro-units per million tokens (a ratio of sums, rounded half-even); None without tokens."""
    if not tokens:
        return None
    q = (Decimal(cost_micro) * MICRO / Decimal(tokens)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return int(q)


def ratios(row: dict[str, Any]) -> dict[str, Any]:
    """A usage group with its ratios added (all ratios of the group's sums)."""
    tokens = (row.get("prompt_tokens") or 0) + (row.get("completion_tokens") or 0)
    energy = row.get("energy_j")
    seconds = row.get("seconds") or 0.0
    cpm = per_mtok_micro(row.get("cost_micro") or 0, tokens)
    return {
        **row,
        "tokens": tokens,
        "cost_per_mtok_micro": cpm,
        "cost_per_mtok": money(cpm),
        "tokens_per_j": tokens / energy if tokens and energy else None,
        "j_per_token": energy / tokens if tokens and energy is not None else None,
        "avg_power_w": energy / seconds if energy is not None and seconds else None,
    }


def billing_rows(groups: Iterable[dict[str, Any]], period: str,
                 by: Sequence[str] = DEFAULT_BY) -> list[dict[str, Any]]:
    """Export rows from usage groups keyed by (period bucket, *by, currency).

    A model (or, grouped by tenant, a tenant) of None is the cost no usage took (idle windows):
    it is exported as ``(idle)`` so a bill shows it instead of hiding it. These are the same
    groups as the ``meterd.usage.v1`` events' (their idle remainder is model and tenant ""), so
    an invoice's money equals the sum of those events exactly.
    """
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    out = []
    for g in groups:
        tokens = g["prompt_tokens"] + g["completion_tokens"]
        cpm = per_mtok_micro(g["cost_micro"], tokens)
        energy = g["energy_j"]
        keys = {}
        for k in by:
            v = g[k]
            keys[k] = IDLE if v is None and k in ("model", "tenant") else v
        out.append({
            "period": period,
            "period_start": g[period],
            **keys,
            "currency": g["currency"],
            "windows": g["windows"],
            "prompt_tokens": g["prompt_tokens"],
            "cached_prompt_tokens": g.get("cached_prompt_tokens") or 0,
            "completion_tokens": g["completion_tokens"],
            "tokens": tokens,
            "energy_j": None if energy is None else round(energy, 3),
            "energy_kwh": None if energy is None else round(energy / J_PER_KWH, 9),
            "cost_micro": g["cost_micro"],
            "cost": money(g["cost_micro"]),
            "cost_prompt_micro": g.get("cost_prompt_micro") or 0,
            "cost_completion_micro": g.get("cost_completion_micro") or 0,
            "idle_cost_micro": g["idle_cost_micro"],
            "unavailable_cost_micro": g.get("unavailable_cost_micro") or 0,
            "cost_per_mtok_micro": cpm,
            "cost_per_mtok": money(cpm),
        })
    return out


def totals(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exact totals per currency (integer sums of the rows)."""
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = by.setdefault(r["currency"], {"currency": r["currency"], "prompt_tokens": 0,
                                          "cached_prompt_tokens": 0, "completion_tokens": 0, "energy_j": 0.0,
                                          "cost_micro": 0, "idle_cost_micro": 0, "unavailable_cost_micro": 0})
        for k in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "cost_micro", "idle_cost_micro",
                  "unavailable_cost_micro"):
            t[k] += r.get(k) or 0
        t["energy_j"] += r["energy_j"] or 0.0
    out = []
    for cur in sorted(by):
        t = by[cur]
        tokens = t["prompt_tokens"] + t["completion_tokens"]
        cpm = per_mtok_micro(t["cost_micro"], tokens)
        out.append({**t, "tokens": tokens, "energy_j": round(t["energy_j"], 3),
                    "energy_kwh": round(t["energy_j"] / J_PER_KWH, 9), "cost": money(t["cost_micro"]),
                    "cost_per_mtok_micro": cpm, "cost_per_mtok": money(cpm)})
    return out


def render_json(rows: Sequence[dict[str, Any]], *, since: float, until: float, period: str) -> str:
    return json.dumps({"since": iso(since), "until": iso(until), "period": period,
                       "rows": list(rows), "totals": totals(rows)}, indent=2)


def render_csv(rows: Sequence[dict[str, Any]], by: Sequence[str] = DEFAULT_BY) -> str:
    """One line per (period, *by, currency); empty cells for nulls. Totals are left out so that
    summing a column in a spreadsheet gives the total."""
    columns = export_columns(by)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in columns})
    return buf.getvalue()
