"""``meter bench``: the microkernel suite, its table, the capacity table, and the store.

Kept out of :mod:`agent.cli` (which registers it) so that the two do not import each other.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import uuid
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meterd import __version__
from meterd.kernels.base import KernelError
from meterd.kernels.prices import YEAR_S, Prices
from meterd.kernels.roofline import DEFAULT_BATCH, DEFAULT_CONTEXT_TOKENS, all_profiles
from meterd.kernels.suite import Sizes, capacity_rows, library_versions, plan_devices, run_plans, runner_options
from meterd.probes.devices import get_devices

_SCALE = {"flop/s": ("TFLOP/s", 1e12), "op/s": ("TOP/s", 1e12), "bytes/s": ("GB/s", 1e9)}


def _select(devices: list, wanted: str | None) -> list:
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
    raise click.ClickException(f"no device {wanted!r} on this node (devices: {known})")


def _open_store(db: str | None):
    from meterd.agent.store import Store

    try:
        return Store(db)
    except (OSError, sqlite3.Error) as e:
        where = db or "the default store path"
        raise click.ClickException(
            f"cannot open the store at {where}: {e} (pass --db PATH to a writable file)"
        ) from e


def _fmt_value(row: dict[str, Any]) -> tuple[str, str]:
    unit, scale = _SCALE.get(row["unit"], (row["unit"], 1.0))
    if row["unit"] == "flop/s" and row["value"] < 1e12:
        unit, scale = "GFLOP/s", 1e9
    return f"{row['value'] / scale:,.2f}", unit


_SRC = {"counter": "ctr", "integrated": "int", "estimated": "est"}


def _per_joule(row: dict[str, Any]) -> str:
    pj = row.get("per_joule")
    if pj is None:
        return "-"
    unit = row.get("per_joule_unit", "").replace("bytes", "B").replace("flop", "FLOP").replace("op/", "OP/")
    return f"{pj / 1e9:,.2f} G{unit}"


def results_table(rows: list[dict[str, Any]]) -> Table:
    """One device's results: kernel, dtype, value, % of datasheet peak, mean watts (and their
    source), work per joule, relative spread of the repeats."""
    t = Table(title=f"meter bench: {rows[0]['device']} ({rows[0].get('device_name') or '?'})")
    for col, right in (("kernel", False), ("dtype", False), ("value", True),
                       ("% peak", True), ("W", True), ("per J", True), ("±", True)):
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    for r in rows:
        value, unit = _fmt_value(r)
        pct = f"{r['pct_of_peak']:.1f}" if r["pct_of_peak"] is not None else "-"
        watts = f"{r['watts']:.0f} {_SRC.get(r['energy_source'], '')}" if r["watts"] is not None else "-"
        t.add_row(r["kernel"], r["dtype"], f"{value} {unit}", pct, watts,
                  _per_joule(r), f"{100 * r['spread']:.0f}%")
    return t


def capacity_table(rows: list[dict[str, Any]]) -> Table:
    """One device's capacity: model, prefill (in) and decode (out) tokens/s, cost per million
    tokens at full use, the watts it assumes."""
    t = Table(title=f"capacity at full use: {rows[0]['device']} (roofline)")
    for col, right in (("model", False), ("tok/s in", True), ("tok/s out", True),
                       ("$/Mtok in", True), ("$/Mtok out", True), ("W", True)):
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    for r in rows:
        money = lambda v: f"{v:,.4f}" if v is not None else "-"  # noqa: E731
        t.add_row(r["model"], f"{r['prefill_tokens_per_s']:,.1f}",
                  f"{r['decode_tokens_per_s']:,.1f}", money(r["cost_per_mtok_prefill"]),
                  money(r["cost_per_mtok_decode"]),
                  f"{r['watts']:.0f}{' tdp' if r['watts_source'] == 'tdp' else ''}" if r["watts"] else "-")
    return t


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


@click.command()
@click.option("--device", "device_id", metavar="ID", help="Only this device: a GPU UUID or index, or 'cpu'.")
@click.option("--quick", is_flag=True, help="About 0.15 s per kernel instead of 1 s (rougher energy figures).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
@click.option("--db", type=click.Path(dir_okay=False), help="The SQLite store (default: the node's store).")
@click.option("--model", "model_name", metavar="NAME", help="Only this model in the capacity table.")
@click.option("--batch", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True,
              help="Decode batch size for the capacity table.")
@click.option("--context", "context_tokens", type=click.IntRange(min=0), default=DEFAULT_CONTEXT_TOKENS,
              show_default=True, help="Context length (tokens) for the capacity table.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="The agent's TOML config: its [prices] and [models.*] for the capacity table (default: built-in).")
@click.option("--tiny", is_flag=True, hidden=True, help="Tests only: tiny sizes, meaningless figures.")
def bench(device_id: str | None, quick: bool, as_json: bool, db: str | None, model_name: str | None,
          batch: int, context_tokens: int, config_path: str | None, tiny: bool) -> None:
    """Microkernels: the node's real ceilings, energy per kernel, and the cost per million tokens.

    Measures GEMM FLOP/s per dtype, memory bandwidth (copy, triad) and a decode-shaped GEMV on
    each GPU (CuPy, the [gpu] extra) and NumPy GEMM and bandwidth on the CPU; each with % of
    datasheet peak, mean watts and FLOP (or bytes) per joule. Then predicts prefill and decode
    tokens/s for model profiles and the cost per million tokens at full use with the default
    prices (--config, or the agent's defaults). Results are saved to the store.
    """
    from meterd.agent.config import ConfigError, default_config, load_config

    try:
        config = load_config(config_path) if config_path else default_config()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    profiles = all_profiles(config.models)
    if model_name is not None:
        if model_name not in profiles:
            raise click.ClickException(f"unknown model {model_name!r} (known: {', '.join(profiles)})")
        profiles = {model_name: profiles[model_name]}
    store = _open_store(db or config.store)
    node = get_devices()
    gpus_on_node = sum(1 for d in node.devices if d.kind == "gpu")
    prices = capacity_prices(config.prices, gpus_on_node)
    err = Console(stderr=True)
    try:
        notes: list[str] = []
        plans = plan_devices(_select(node.devices, device_id), Sizes.choose(quick, tiny), notes)
        if not plans:
            raise click.ClickException("nothing to benchmark: " + "; ".join(notes))
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=err, transient=True) as progress:
            task = progress.add_task("bench", total=sum(len(p.kernels) for p in plans))

            def on_progress(label: str, done: int, total: int) -> None:
                progress.update(task, description=label, completed=done, total=total)

            at = time.time()
            rows = run_plans(plans, runner_options(quick, tiny), on_progress)
        versions = {"meterd": __version__, **library_versions([p.facts for p in plans], node.gpus.driver_version())}
        store.save_bench(uuid.uuid4().hex, socket.gethostname(), at, rows, versions)
    except KernelError as e:
        raise click.ClickException(str(e)) from e
    except sqlite3.Error as e:
        raise click.ClickException(f"cannot save the results to the store {store.path}: {e}") from e
    finally:
        node.close()
        store.close()
    capacity = capacity_rows(rows, profiles, prices, batch, context_tokens)
    skipped = {dt: why for p in plans for dt, why in p.skipped.items()}
    if as_json:
        click.echo(json.dumps({"results": rows, "capacity": capacity, "notes": notes,
                               "skipped": skipped, "versions": versions}))
        return
    out = Console()
    for dev in dict.fromkeys(r["device"] for r in rows):
        out.print(results_table([r for r in rows if r["device"] == dev]))
        cap = [c for c in capacity if c["device"] == dev]
        if cap:
            out.print(capacity_table(cap))
    for dt, why in skipped.items():
        out.print(f"not measured: {dt}: {why}")
    for note in notes:
        out.print(note)
    out.print(f"W: ctr = energy counter, int = integrated power, est = estimated. Money in "
              f"{prices.currency}, {'prices of ' + config_path if config_path else 'default prices (meter config init)'}; "
              f"decode at batch {batch}, context {context_tokens} tokens.")
