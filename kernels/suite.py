"""The suite: which kernels run on which device, the result rows, and the capacity table.

I/O at the edge (devices, CuPy); :func:`result_row`, :func:`pick_ceilings` and
:func:`capacity_rows` are pure.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from meterd.kernels import gpu
from meterd.kernels.base import Kernel, KernelUnavailable
from meterd.kernels.cpu import cpu_kernels, llc_bytes
from meterd.kernels.roofline import DEFAULT_BATCH, DEFAULT_CONTEXT_TOKENS, ModelProfile, capacity
from meterd.kernels.runner import Measurement, Runner, RunnerOptions
from meterd.kernels.specs import DeviceSpec, lookup, pct_of_peak
from meterd.probes.device import Device

GPU_WARMUP_S = 0.3
Progress = Callable[[str, int, int], None]  # (label, kernels done, kernels in total)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes. ``tiny`` is for tests only: too small to measure anything real."""

    cpu_gemm_n: int
    cpu_stream_bytes: int
    gpu_gemm_n: int = gpu.GEMM_N
    respect_cache: bool = True
    gpu_min_stream_bytes: int = gpu.MIN_STREAM_BYTES
    gpu_decode_k: int = gpu.DECODE_K
    gpu_decode_min_m: int = 16384

    @classmethod
    def choose(cls, quick: bool, tiny: bool = False) -> Sizes:
        if tiny:
            return cls(cpu_gemm_n=64, cpu_stream_bytes=256 << 10, gpu_gemm_n=128, respect_cache=False,
                       gpu_min_stream_bytes=1 << 16, gpu_decode_k=256, gpu_decode_min_m=256)
        return cls(cpu_gemm_n=1024 if quick else 2048, cpu_stream_bytes=64 << 20)


def runner_options(quick: bool, tiny: bool = False) -> RunnerOptions:
    if tiny:
        return RunnerOptions(min_duration_s=0.01, warmup_s=0.002, min_repeats=3, sample_interval_s=0.005)
    return RunnerOptions.quick() if quick else RunnerOptions()


@dataclass
class DevicePlan:
    """One device's kernels, its datasheet (if known) and facts for the store."""

    device: Device
    kernels: list[Kernel]
    spec: DeviceSpec | None
    skipped: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    activate: Callable[[], None] = lambda: None  # make this device current (CUDA)
    options: RunnerOptions | None = None


def plan_cpu(device: Device, sizes: Sizes) -> DevicePlan:
    cache = llc_bytes() if sizes.respect_cache else None
    return DevicePlan(device, cpu_kernels(sizes.cpu_gemm_n, sizes.cpu_stream_bytes, cache), None,
                      facts={"llc_bytes": cache})


def plan_gpu(device: Device, sizes: Sizes, cp: Any) -> DevicePlan:
    """Raises KernelUnavailable when CUDA cannot see the GPU."""
    ordinal = gpu.cuda_ordinal(cp, getattr(device, "pci_bus_id", None), getattr(device, "index", 0))
    facts = gpu.device_facts(cp, ordinal)
    spec = lookup(device.name)
    l2 = facts["l2_bytes"] or (spec.l2_bytes if spec else 0)
    cp.cuda.Device(ordinal).use()
    kernels, skipped = gpu.gpu_kernels(cp, facts["cc"], l2 if sizes.respect_cache else 0, sizes.gpu_gemm_n,
                                       sizes.gpu_min_stream_bytes, sizes.gpu_decode_k, sizes.gpu_decode_min_m)
    return DevicePlan(device, kernels, spec, skipped, facts, activate=lambda: cp.cuda.Device(ordinal).use())


def plan_devices(devices: list[Device], sizes: Sizes, notes: list[str]) -> list[DevicePlan]:
    """A plan per device; GPUs that cannot be benchmarked are left out with a note."""
    plans = []
    gpus = [d for d in devices if d.kind == "gpu"]
    cp = None
    if gpus:
        try:
            cp = gpu.import_cupy()
        except KernelUnavailable as e:
            notes.append(f"GPU kernels skipped: {e}")
    for d in devices:
        if d.kind == "cpu":
            plans.append(plan_cpu(d, sizes))
        elif cp is not None:
            try:
                plans.append(plan_gpu(d, sizes, cp))
            except KernelUnavailable as e:
                notes.append(f"{d.id}: {e}")
    return plans


def result_row(device: Device, m: Measurement, spec: DeviceSpec | None) -> dict[str, Any]:
    """One result as ``meter bench --json`` prints it (value in base units: FLOP/s, op/s, bytes/s)."""
    e = m.energy
    return {
        "device": device.id, "device_name": device.name, "kernel": m.kernel, "dtype": m.dtype,
        "value": m.value, "unit": m.unit, "pct_of_peak": pct_of_peak(m.value, spec, m.kernel, m.dtype),
        "watts": e.watts if e else None, "energy_j": e.energy_j if e else None,
        "energy_source": e.source if e else None, "per_joule": m.per_joule,
        "per_joule_unit": m.per_joule_unit, "spread": m.spread, "repeats": m.repeats,
    }


def run_plans(plans: list[DevicePlan], options: RunnerOptions, progress: Progress | None = None,
              clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
    """Measure every kernel of every plan; a wrong kernel raises KernelIncorrect."""
    total = sum(len(p.kernels) for p in plans)
    done = 0
    rows = []
    for plan in plans:
        plan.activate()
        opts = plan.options or options
        if plan.device.kind == "gpu" and opts.min_duration_s >= 0.1:
            # First calls load cuBLAS kernels and let clocks ramp: warm up longer than on a CPU.
            opts = replace(opts, warmup_s=max(opts.warmup_s, GPU_WARMUP_S))
        runner = Runner(opts, clock=clock, sampler=plan.device.sample)
        for k in plan.kernels:
            if progress:
                progress(f"{plan.device.id} {k.label}", done, total)
            rows.append(result_row(plan.device, runner.measure(k), plan.spec))
            done += 1
    if progress:
        progress("done", done, total)
    return rows


# -- the capacity table (pure) ------------------------------------------------------------------

_GEMM_FALLBACK = ("bf16", "fp16", "fp32", "fp64")
_BANDWIDTH_ORDER = ("gemv_decode", "copy", "triad")


def pick_ceilings(rows: list[Mapping[str, Any]], compute_dtype: str,
                  spec: DeviceSpec | None) -> tuple[Mapping[str, Any], Mapping[str, Any], float | None] | None:
    """(the GEMM row, the bandwidth row, watts at full use) a model's roofline uses on one device.

    FLOP/s: the GEMM in the model's compute dtype, else the first of bf16, fp16, fp32, fp64.
    Bytes/s: the decode GEMV, else copy, else triad. Watts: those measured during that GEMM, else
    the datasheet TDP, else None. None when the device has no GEMM or no bandwidth figure.
    """
    gemms = {r["dtype"]: r for r in rows if r["kernel"] == "gemm" and r["unit"] == "flop/s"}
    gemm = next((gemms[d] for d in (compute_dtype, *_GEMM_FALLBACK) if d in gemms), None)
    bw = next((r for k in _BANDWIDTH_ORDER for r in rows if r["kernel"] == k), None)
    if gemm is None or bw is None:
        return None
    watts = gemm.get("watts") or (spec.tdp_w if spec and spec.tdp_w else None)
    return gemm, bw, watts


def capacity_rows(rows: list[Mapping[str, Any]], profiles: Mapping[str, ModelProfile],
                  batch: int = DEFAULT_BATCH, context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> list[dict[str, Any]]:
    """The capacity table's throughput: per device and model, prefill and decode tokens/s at
    full use and the watts they assume (measured, or the datasheet TDP). No money: the agent
    prices each row with its cost model (agent/bench_run.py)."""
    out = []
    devices = list(dict.fromkeys(r["device"] for r in rows))
    for dev in devices:
        dev_rows = [r for r in rows if r["device"] == dev]
        spec = lookup(dev_rows[0].get("device_name"))
        for profile in profiles.values():
            picked = pick_ceilings(dev_rows, profile.compute_dtype, spec)
            if picked is None:
                continue
            gemm, bw, watts = picked
            row = asdict(capacity(profile, gemm["value"], bw["value"], watts, batch, context_tokens))
            row.update({
                "device": dev, "flops_dtype": gemm["dtype"], "bytes_kernel": bw["kernel"],
                "watts_source": "measured" if gemm.get("watts") else ("tdp" if watts else None),
            })
            out.append(row)
    return out


def library_versions(facts: list[Mapping[str, Any]], driver: str | None) -> dict[str, Any]:
    """Versions stored with a run: Python, NumPy and its BLAS, CuPy/CUDA/cuBLAS, the driver
    (the caller adds its own version)."""
    blas: dict[str, Any] = {}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # older NumPy or an unusual build: the version string is enough
        pass
    out: dict[str, Any] = {
        "python": platform.python_version(), "numpy": np.__version__,
        "blas": " ".join(str(blas.get(k, "")) for k in ("name", "version")).strip() or None,
        "nvidia_driver": driver,
    }
    for f in facts:
        for key in ("cupy", "cuda_runtime", "cuda_driver", "cublas"):
            if key in f:
                out[key] = f[key]
    return out

