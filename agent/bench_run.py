"""``bench(...)``: the microkernel suite as a library call (``meter bench`` is a shell over it).

Picks the devices, runs their kernels, saves the run to the store and computes the capacity
table from the config's prices and model profiles; returns everything as a :class:`BenchResult`.
The node's devices and the store are closed on every path. Every expected failure is a
:class:`meterd.errors.MeterError` (a bad device or model name, an unusable store, a kernel that
computed a wrong answer).
"""

from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from typing import Any, Callable

from meterd import __version__
from meterd.agent.config import Config, default_config, load_config
from meterd.errors import InputError
from meterd.sqlite_store import store_error
from meterd.kernels.prices import YEAR_S, Prices
from meterd.kernels.roofline import DEFAULT_BATCH, DEFAULT_CONTEXT_TOKENS, all_profiles
from meterd.kernels.suite import Progress, Sizes, capacity_rows, library_versions, plan_devices, run_plans, runner_options
from meterd.probes.device import Device
from meterd.probes.devices import Node


@dataclass
class BenchResult:
    """One run: result rows per device and kernel, the capacity table, what was left out and why."""

    run_id: str
    rows: list[dict[str, Any]]
    capacity: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    currency: str = "USD"

    def to_json(self) -> dict[str, Any]:
        """What ``meter bench --json`` prints."""
        return {"results": self.rows, "capacity": self.capacity, "notes": self.notes,
                "skipped": self.skipped, "versions": self.versions}


def select_devices(devices: list[Device], wanted: str | None) -> list[Device]:
    """All devices, or the one named by its id, ``cpu``, a GPU's NVML index or ``gpuN``."""
    if wanted is None:
        return devices
    for d in devices:
        names = {d.id}
        if d.kind == "gpu" and hasattr(d, "index"):
            names |= {str(d.index), f"gpu{d.index}"}
        if wanted in names:
            return [d]
    known = ", ".join(d.id for d in devices)
    raise InputError(f"no device {wanted!r} on this node (devices: {known})")


def capacity_prices(p, gpus_on_node: int) -> Prices:
    """One device's prices for the capacity table, from the agent's config prices: a GPU's
    purchase price plus its share of the node (the whole node on a CPU-only machine), the base
    energy price (time-of-use periods left out: capacity is a ceiling, not a bill)."""
    share = p.capex_per_node_micro // max(1, gpus_on_node)
    purchase = (p.capex_per_gpu_micro if gpus_on_node else 0) + share
    return Prices(
        currency=p.currency,
        purchase_micro=purchase,
        residual_micro=round(purchase * p.residual_fraction),
        depreciation_s=p.depreciation_years * YEAR_S,
        rental_per_hour_micro=p.rental_per_gpu_hour_micro or None,
        energy_per_kwh_micro=p.energy_per_kwh_micro,
        pue=p.pue,
        opex_per_month_micro=p.opex_per_node_month_micro // max(1, gpus_on_node),
    )


def bench(*, device: str | None = None, quick: bool = False, tiny: bool = False, db: str | None = None,
          config: Config | None = None, config_path: str | None = None, model: str | None = None,
          batch: int = DEFAULT_BATCH, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
          progress: Progress | None = None, get_devices: Callable[[], Node] | None = None) -> BenchResult:
    """Run the suite on the node's devices (or ``device`` alone), save it to the store at ``db``
    (default: the config's store) and return the results with the capacity table priced from
    ``config`` (or the file ``config_path``, or the built-in defaults). ``tiny`` is for tests:
    tiny sizes, meaningless figures."""
    from meterd.agent.store import open_store

    if config is None:
        config = load_config(config_path) if config_path else default_config()
    profiles = all_profiles(config.models)
    if model is not None:
        if model not in profiles:
            raise InputError(f"unknown model {model!r} (known: {', '.join(profiles)})")
        profiles = {model: profiles[model]}
    if get_devices is None:
        from meterd.probes.devices import get_devices
    with ExitStack() as stack:
        store = open_store(db or config.store)
        stack.callback(store.close)
        node = stack.enter_context(closing(get_devices()))
        gpus_on_node = sum(1 for d in node.devices if d.kind == "gpu")
        prices = capacity_prices(config.prices, gpus_on_node)
        notes: list[str] = []
        plans = plan_devices(select_devices(node.devices, device), Sizes.choose(quick, tiny), notes)
        if not plans:
            raise InputError("nothing to benchmark: " + "; ".join(notes))
        at = time.time()
        rows = run_plans(plans, runner_options(quick, tiny), progress)
        versions = {"meterd": __version__, **library_versions([p.facts for p in plans], node.gpus.driver_version())}
        run_id = uuid.uuid4().hex
        try:
            store.save_bench(run_id, socket.gethostname(), at, rows, versions)
        except sqlite3.Error as e:
            raise store_error(e, store.path) from e
    return BenchResult(
        run_id=run_id, rows=rows, capacity=capacity_rows(rows, profiles, prices, batch, context_tokens),
        notes=notes, skipped={dt: why for p in plans for dt, why in p.skipped.items()},
        versions=versions, currency=prices.currency)
