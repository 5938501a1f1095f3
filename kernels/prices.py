"""The prices the capacity cost uses, in integer micro-units of the currency (1 USD = 1,000,000).

These are documented defaults until the agent's TOML config supplies its own (it builds a
:class:`Prices` from its ``[prices]`` table). The defaults describe one H100-class GPU bought
outright:

- purchase price 30,000, residual value 3,000 (10 %) after 4 years of straight-line
  depreciation (4 × 365.25 days);
- no rental price (set ``rental_per_hour_micro`` for rented GPUs: it replaces the capital part);
- electricity 0.12 per kWh, PUE 1.3 (the facility's overhead over the IT load);
- operations 0 per device-month (site-specific: staff, space, network, support contracts).
"""

from __future__ import annotations

from dataclasses import dataclass

MICRO = 1_000_000
YEAR_S = 365.25 * 86400
MONTH_S = YEAR_S / 12


@dataclass(frozen=True)
class Prices:
    """What one device costs to own and run. Money in integer micro-units of ``currency``."""

    currency: str = "USD"
    purchase_micro: int = 30_000 * MICRO
    residual_micro: int = 3_000 * MICRO
    depreciation_s: float = 4 * YEAR_S
    rental_per_hour_micro: int | None = None
    energy_per_kwh_micro: int = 120_000
    pue: float = 1.3
    opex_per_month_micro: int = 0

    def __post_init__(self) -> None:
        if self.depreciation_s <= 0:
            raise ValueError("depreciation_s must be positive")
        if self.pue < 1:
            raise ValueError("pue must be at least 1")


DEFAULT_PRICES = Prices()
