"""The cost model (pure: values in, values out; no clock, no file, no network).

Formulas (docs/architecture.md, "Cost model"):

- capex rate = (purchase price + share of node price − residual value) / depreciation seconds,
  or the rental price per GPU-hour / 3600 when the hardware is rented;
- opex rate = fixed costs per node per month / billable devices / seconds per month;
- energy cost = energy_J × PUE / J_PER_KWH × price per kWh at that time (time-of-use);
- window cost = (capex rate + opex rate) × Δt + energy cost;
- capacity (ceiling) rate of a device at full use, for ``meter bench``: the same capex and opex
  rates for the same device share, plus its full-use watts × PUE / J_PER_KWH × the base energy
  price (time-of-use left out: a ceiling, not a bill). A CPU on a GPU node is billed energy
  only, so its capacity is priced at energy only too.

Money is integer micro-units. Rates are exact fractions; each window's components are rounded
once (half to even) and the total is their sum, so a period's cost is exactly the sum of its
windows. Splits (prompt/completion, models, tenants) use the largest-remainder method, so the
parts always add up to the whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any, Hashable, Iterable, Sequence
from zoneinfo import ZoneInfo

from meterd.agent.config import DAYS, Prices
from meterd.units import J_PER_KWH, MICRO

SECONDS_PER_YEAR = Fraction(36525 * 864)  # 365.25 days
SECONDS_PER_MONTH = SECONDS_PER_YEAR / 12


def _frac(x: float | int) -> Fraction:
    """Exact fraction of a decimal literal from config (0.1 is 1/10, not the binary float)."""
    return Fraction(Decimal(str(x)))


@dataclass(frozen=True)
class DeviceShare:
    """How the node's fixed costs fall on one device.

    On a GPU node the GPUs carry the node's capex and opex; the CPU carries only its energy. On a
    CPU-only node the CPU is the one billable device and carries the node.
    """

    is_gpu: bool
    billable: bool
    billable_devices: int

    @staticmethod
    def for_node(device_is_gpu: bool, gpus_on_node: int) -> "DeviceShare":
        if gpus_on_node:
            return DeviceShare(device_is_gpu, device_is_gpu, gpus_on_node)
        return DeviceShare(False, True, 1)


def node_shares(devices: Iterable[Any]) -> dict[str, DeviceShare]:
    """Each of the node's devices (anything with ``id`` and ``kind``) with its share: what
    billing and the bench's capacity cost both use."""
    devices = list(devices)
    gpus = sum(1 for d in devices if d.kind == "gpu")
    return {d.id: DeviceShare.for_node(d.kind == "gpu", gpus) for d in devices}


@dataclass(frozen=True)
class Cost:
    capex_micro: int
    energy_micro: int
    opex_micro: int

    @property
    def total_micro(self) -> int:
        return self.capex_micro + self.energy_micro + self.opex_micro


def capex_micro_per_s(prices: Prices, share: DeviceShare) -> Fraction:
    if not share.billable:
        return Fraction(0)
    if prices.rental_per_gpu_hour_micro:
        return Fraction(prices.rental_per_gpu_hour_micro, 3600)
    purchase = (prices.capex_per_gpu_micro if share.is_gpu else 0) + Fraction(
        prices.capex_per_node_micro, share.billable_devices)
    return purchase * (1 - _frac(prices.residual_fraction)) / (_frac(prices.depreciation_years) * SECONDS_PER_YEAR)


def opex_micro_per_s(prices: Prices, share: DeviceShare) -> Fraction:
    if not share.billable:
        return Fraction(0)
    return Fraction(prices.opex_per_node_month_micro, share.billable_devices) / SECONDS_PER_MONTH


def price_micro_per_kwh_at(t: float, prices: Prices) -> int:
    """The energy price in force at Unix time ``t`` (first matching tariff period wins)."""
    if not prices.tariff:
        return prices.energy_per_kwh_micro
    local = datetime.fromtimestamp(t, ZoneInfo(prices.tariff_timezone))
    minute = local.hour * 60 + local.minute + local.second / 60
    today = DAYS[local.weekday()]
    yesterday = DAYS[(local.weekday() - 1) % 7]
    for p in prices.tariff:
        if p.start_min < p.end_min:
            if p.start_min <= minute < p.end_min and (not p.days or today in p.days):
                return p.energy_micro_per_kwh
        else:  # wraps past midnight: the evening part belongs to today, the morning to yesterday
            if minute >= p.start_min and (not p.days or today in p.days):
                return p.energy_micro_per_kwh
            if minute < p.end_min and (not p.days or yesterday in p.days):
                return p.energy_micro_per_kwh
    return prices.energy_per_kwh_micro


def tariff_segments(start: float, end: float, prices: Prices) -> list[tuple[float, float, int]]:
    """[(from, to, price micro/kWh)] covering [start, end), split where the tariff changes."""
    if end <= start:
        return []
    cuts = {start, end}
    if prices.tariff:
        tz = ZoneInfo(prices.tariff_timezone)
        day = datetime.fromtimestamp(start, tz).date() - timedelta(days=1)
        last = datetime.fromtimestamp(end, tz).date() + timedelta(days=1)
        while day <= last:
            midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
            for p in prices.tariff:
                for m in (p.start_min, p.end_min):
                    t = (midnight + timedelta(minutes=m)).astimezone(timezone.utc).timestamp()
                    if start < t < end:
                        cuts.add(t)
            day += timedelta(days=1)
    edges = sorted(cuts)
    segs: list[tuple[float, float, int]] = []
    for a, b in zip(edges, edges[1:]):
        price = price_micro_per_kwh_at((a + b) / 2, prices)
        if segs and segs[-1][2] == price:
            segs[-1] = (segs[-1][0], b, price)
        else:
            segs.append((a, b, price))
    return segs


def energy_cost_micro(energy_j: float, start: float, end: float, prices: Prices) -> Fraction:
    """Energy × PUE × price, the energy spread evenly over the window's time across tariff periods."""
    if not energy_j or end <= start:
        return Fraction(0)
    e = _frac(energy_j) * _frac(prices.pue) / J_PER_KWH
    span = _frac(end) - _frac(start)
    return sum((e * (_frac(b) - _frac(a)) / span * price for a, b, price in tariff_segments(start, end, prices)),
               Fraction(0))


def window_cost(start: float, end: float, energy_j: float | None, prices: Prices, share: DeviceShare) -> Cost:
    """The cost of one device over [start, end) that drew ``energy_j`` (None: unknown, no energy cost)."""
    dt = _frac(end) - _frac(start)
    return Cost(
        capex_micro=round(capex_micro_per_s(prices, share) * dt),
        energy_micro=round(energy_cost_micro(energy_j or 0.0, start, end, prices)),
        opex_micro=round(opex_micro_per_s(prices, share) * dt),
    )


def allocate(total: int, weights: Sequence[float | int | Fraction]) -> list[int]:
    """Split an integer ``total`` by ``weights`` (largest remainder): the parts sum to ``total``.
    All-zero weights give all-zero parts (the caller keeps the whole)."""
    ws = [Fraction(w) if not isinstance(w, float) else _frac(w) for w in weights]
    s = sum(ws, Fraction(0))
    if not ws or s == 0:
        return [0] * len(ws)
    exact = [total * w / s for w in ws]
    parts = [int(x // 1) for x in exact]
    rest = total - sum(parts)
    order = sorted(range(len(ws)), key=lambda i: (exact[i] - parts[i], -i), reverse=True)
    for i in order[:rest]:
        parts[i] += 1
    return parts


def prompt_units(prompt_tokens: int, cached_prompt_tokens: int, cached_prompt_token_weight: float) -> Fraction:
    """Prompt tokens as computed-token equivalents: a token a prefix cache served counts
    ``cached_prompt_token_weight`` (default 0.1) of one the server computed."""
    cached = min(max(cached_prompt_tokens, 0), prompt_tokens)
    return (prompt_tokens - cached) + _frac(cached_prompt_token_weight) * cached


def prompt_share(prompt_tokens: int, completion_tokens: int, prefill_s: float | None,
                 decode_s: float | None, prompt_token_weight: float, cached_prompt_tokens: int = 0,
                 cached_prompt_token_weight: float = 1.0) -> Fraction:
    """The fraction of a window's cost that prompt tokens carry: by prefill/decode time where the
    server reports it (time already leaves out what a cache served), otherwise by tokens weighted
    ``prompt_token_weight`` : 1, a cached prompt token counting ``cached_prompt_token_weight`` of
    a prompt token."""
    if prompt_tokens <= 0:
        return Fraction(0)
    if completion_tokens <= 0:
        return Fraction(1)
    if prefill_s is not None and decode_s is not None and prefill_s + decode_s > 0:
        # Quantized to the microsecond: seconds come from float counters subtracted, and
        # 0.20000000000000004 s must not tip a half-micro rounding.
        pre, dec = _frac(round(prefill_s, 6)), _frac(round(decode_s, 6))
        if pre + dec > 0:
            return pre / (pre + dec)
    wp = _frac(prompt_token_weight) * prompt_units(prompt_tokens, cached_prompt_tokens, cached_prompt_token_weight)
    if wp <= 0:
        return Fraction(0)
    return wp / (wp + completion_tokens)


@dataclass(frozen=True)
class UsageCost:
    key: Hashable
    prompt_tokens: int
    completion_tokens: int
    cost_prompt_micro: int
    cost_completion_micro: int
    capex_micro: int
    energy_micro: int
    opex_micro: int
    cached_prompt_tokens: int = 0

    @property
    def cost_micro(self) -> int:
        return self.cost_prompt_micro + self.cost_completion_micro


def split_cost(cost: Cost, usage: Sequence[tuple], prefill_s: float | None,
               decode_s: float | None, prompt_token_weight: float,
               cached_prompt_token_weight: float = 1.0) -> tuple[int, int, list[UsageCost]]:
    """Split a window's cost into prompt and completion, then across its usage rows
    ``(key, prompt_tokens, completion_tokens[, cached_prompt_tokens])`` by their tokens (the
    prompt part by prompt tokens, a cached one counting ``cached_prompt_token_weight``).

    Returns (prompt_micro, completion_micro, rows). With no tokens everything is 0 and the
    window's cost stays idle cost.
    """
    cached = [u[3] if len(u) > 3 else 0 for u in usage]
    p_tot = sum(u[1] for u in usage)
    c_tot = sum(u[2] for u in usage)
    if p_tot + c_tot == 0:
        return 0, 0, []
    total = cost.total_micro
    prompt_micro = round(total * prompt_share(p_tot, c_tot, prefill_s, decode_s, prompt_token_weight,
                                              sum(cached), cached_prompt_token_weight))
    completion_micro = total - prompt_micro
    p_weights = [prompt_units(u[1], k, cached_prompt_token_weight) for u, k in zip(usage, cached)]
    if not any(p_weights):  # every prompt token cached at weight 0: by tokens, so none is free
        p_weights = [u[1] for u in usage]
    p_parts = allocate(prompt_micro, p_weights)
    c_parts = allocate(completion_micro, [u[2] for u in usage])
    row_costs = [p + c for p, c in zip(p_parts, c_parts)]
    capex = allocate(cost.capex_micro, row_costs)
    # Energy over what each row has left after its capex, not over the row costs again: two
    # independent roundings could give one row capex + energy over its cost (a negative opex).
    # Each part of a largest-remainder split stays within its weight, so opex is never negative.
    energy = allocate(cost.energy_micro, [r - x for r, x in zip(row_costs, capex)])
    rows = [
        UsageCost(u[0], u[1], u[2], p_parts[i], c_parts[i], capex[i], energy[i],
                  row_costs[i] - capex[i] - energy[i], cached[i])
        for i, u in enumerate(usage)
    ]
    return prompt_micro, completion_micro, rows


def capacity_rate_micro_per_s(prices: Prices, share: DeviceShare, watts: float | None) -> Fraction:
    """What one device costs per second of full use (exact micro-units): the capex and opex
    rates billing charges this device, plus energy at ``watts`` (None: unknown, no energy)."""
    energy = _frac(watts or 0.0) * _frac(prices.pue) / J_PER_KWH * prices.energy_per_kwh_micro
    return capex_micro_per_s(prices, share) + opex_micro_per_s(prices, share) + energy


def cost_per_mtok_micro(rate_micro_per_s: Fraction, tokens_per_s: float) -> int | None:
    """Micro-units per million tokens at ``rate_micro_per_s`` and ``tokens_per_s`` (rounded
    half to even); None at no tokens."""
    if tokens_per_s <= 0:
        return None
    return round(rate_micro_per_s * MICRO / _frac(tokens_per_s))


def cost_per_mtok(cost_micro: int, tokens: int) -> float | None:
    """Currency units per million tokens; None (undefined), never 0 or infinity, without tokens.
    (micro-units per token × 1e6 / 1e6 = micro-units / tokens.)"""
    if tokens <= 0:
        return None
    return cost_micro / tokens
