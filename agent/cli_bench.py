"""``meter bench``: a shell over :func:`meterd.agent.bench_run.bench` that shows its progress
and prints its results and capacity tables (or JSON).

Kept out of :mod:`agent.cli` (which registers it) so that the two do not import each other.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meterd.agent.bench_run import bench as run_bench
from meterd.kernels.roofline import DEFAULT_BATCH, DEFAULT_CONTEXT_TOKENS

_SCALE = {"flop/s": ("TFLOP/s", 1e12), "op/s": ("TOP/s", 1e12), "bytes/s": ("GB/s", 1e9)}


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
    # The bar starts with the first kernel, so an error before it (a bad name, the store) is
    # one line on stderr and nothing else.
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = None

    def on_progress(label: str, done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("bench", total=total)
        bar.update(task, description=label, completed=done, total=total)

    try:
        result = run_bench(device=device_id, quick=quick, tiny=tiny, db=db, config_path=config_path,
                           model=model_name, batch=batch, context_tokens=context_tokens, progress=on_progress)
    finally:
        if task is not None:
            bar.stop()
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    out = Console()
    rows, capacity = result.rows, result.capacity
    for dev in dict.fromkeys(r["device"] for r in rows):
        out.print(results_table([r for r in rows if r["device"] == dev]))
        cap = [c for c in capacity if c["device"] == dev]
        if cap:
            out.print(capacity_table(cap))
    for dt, why in result.skipped.items():
        out.print(f"not measured: {dt}: {why}", markup=False)
    for note in result.notes:
        out.print(note, markup=False)  # a note may hold brackets: pip install 'meterd[gpu]'
    out.print(f"W: ctr = energy counter, int = integrated power, est = estimated. Money in "
              f"{result.currency}, {'prices of ' + config_path if config_path else 'default prices (meter config init)'}; "
              f"decode at batch {batch}, context {context_tokens} tokens.")
