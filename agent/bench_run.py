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
from typing import Any, Callable, Mapping

from meterd import __version__
from meterd.agent.config import Config, Prices, default_config, load_config
from meterd.errors import InputError
from meterd.units import MICRO
from meterd.sqlite_store import store_error
from meterd.agent.costmodel import DeviceShare, capacity_rate_micro_per_s, cost_per_mtok_micro, node_shares
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


def price_capacity(capacity: list[dict[str, Any]], prices: Prices, shares: Mapping[str, DeviceShare]) -> list[dict[str, Any]]:
    """The roofline's capacity rows (kernels.suite.capacity_rows) with their cost per million
    tokens at full use, from the agent's cost model: the same prices and the same per-device
    share as billing (a CPU on a GPU node: energy only), energy at the row's full-use watts."""
    out = []
    for row in capacity:
        rate = capacity_rate_micro_per_s(prices, shares[row["device"]], row["watts"])
        prefill = cost_per_mtok_micro(rate, row["prefill_tokens_per_s"])
        decode = cost_per_mtok_micro(rate, row["decode_tokens_per_s"])
        out.append({**row, "currency": prices.currency, "cost_rate_micro_per_s": float(rate),
                    "cost_per_mtok_prefill_micro": prefill, "cost_per_mtok_decode_micro": decode,
                    "cost_per_mtok_prefill": None if prefill is None else prefill / MICRO,
                    "cost_per_mtok_decode": None if decode is None else decode / MICRO})
    return out


def gpu_rows_note(reason: str | None) -> str:
    """Why a bench on this node has no GPU rows (there is no GPU to measure)."""
    import importlib.util

    why = reason or "no GPU found"
    if importlib.util.find_spec("cupy") is None:
        why += "; CuPy is not installed either (pip install 'meterd[gpu]' on a GPU node)"
    return f"GPU rows left out: {why}"


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
        shares = node_shares(node.devices)
        notes: list[str] = []
        plans = plan_devices(select_devices(node.devices, device), Sizes.choose(quick, tiny), notes)
        if not any(d.kind == "gpu" for d in node.devices) and device is None:
            notes.append(gpu_rows_note(node.gpus.reason))
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
        run_id=run_id, rows=rows,
        capacity=price_capacity(capacity_rows(rows, profiles, batch, context_tokens), config.prices, shares),
        notes=notes, skipped={dt: why for p in plans for dt, why in p.skipped.items()},
        versions=versions, currency=config.prices.currency)
