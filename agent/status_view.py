"""`meter status`: device samples as JSON for scripts and as a table for people (pure)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from meterd.agent.ui import ALWAYS, Column, fit_table
from meterd.units import iso
from meterd.probes.readings import DeviceSample, Reading


def _val(r: Reading | None) -> float | None:
    return None if r is None else round(r.value, 3)


def _src(r: Reading | None) -> str | None:
    return None if r is None else r.source


def sample_json(s: DeviceSample) -> dict[str, Any]:
    return {
        "id": s.id,
        "kind": s.kind,
        "name": s.name,
        "state": s.state,
        "power_w": _val(s.power_w),
        "power_source": _src(s.power_w),
        "energy_j": _val(s.energy_j),
        "energy_source": _src(s.energy_j),
        "util_pct": _val(s.util_pct),
        "mem_used_bytes": s.mem_used_bytes,
        "mem_total_bytes": s.mem_total_bytes,
        "reason": s.reason,
        **s.extra,
    }


def status_json(node: str, at: float, samples: list[DeviceSample], gpu_note: str | None = None) -> dict[str, Any]:
    """``gpu_note`` says why there is no GPU, when there is none."""
    out: dict[str, Any] = {"node": node, "time": iso(at), "devices": [sample_json(s) for s in samples]}
    if gpu_note:
        out["gpu_note"] = gpu_note
    return out


def _gib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**30:.1f}"


#: `meter status`, most needed first when a terminal is narrow.
STATUS_COLUMNS = (
    Column("#", "right", ALWAYS), Column("device", keep=ALWAYS), Column("state", keep=ALWAYS),
    Column("power W", "right", ALWAYS), Column("source", keep=ALWAYS), Column("energy kJ", "right", 6),
    Column("util %", "right", 7), Column("mem GiB", "right", 5), Column("temp °C", "right", 3),
    Column("clock MHz", "right", 2),
)


def status_table(node: str, at: float, samples: list[DeviceSample], gpu_note: str | None = None,
                 width: int | None = None) -> Table | str:
    """One row per device, like nvidia-smi: every figure shows its source beside it. With
    ``width``, the columns that fit it (see meterd.agent.ui.fit_table)."""
    rows = []
    for s in samples:
        x = s.extra
        idx = str(x.get("index", "")) if s.kind == "gpu" else s.kind
        state = s.state if s.state == "ok" else f"[bold red]{s.state}[/]"
        power = "—" if s.power_w is None else f"{s.power_w.value:.1f}"
        src = s.power_w.source if s.power_w else "—"
        if src == "estimated":
            src = "[yellow]estimated[/]"
        energy = "—" if s.energy_j is None else f"{s.energy_j.value / 1000:.1f} ({s.energy_j.source})"
        util = "—" if s.util_pct is None else f"{s.util_pct.value:.0f}"
        mem = f"{_gib(s.mem_used_bytes)} / {_gib(s.mem_total_bytes)}"
        temp = x.get("temperature_c")
        clock = x.get("sm_clock_mhz") if s.kind == "gpu" else x.get("freq_mhz")
        rows.append([idx, s.name, state, power, src, energy, util, mem,
                     "—" if temp is None else str(temp), "—" if clock is None else f"{clock:.0f}"])
    notes = [f"{s.id}: {s.reason}" for s in samples if s.reason]
    if gpu_note:
        notes.insert(0, f"gpu: {gpu_note}")
    return fit_table(STATUS_COLUMNS, rows, width, caption="\n".join(notes) or None,
                     title=f"{node}  {iso(at)}", title_justify="left")
