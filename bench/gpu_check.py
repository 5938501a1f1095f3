"""The GPU check: our suite and the same operations through PyTorch, side by side in one process.

    python bench/gpu_check.py [--quick] [--device INDEX]

Runs ``meter bench``'s GPU kernels (CuPy) with the real runner (1 s per kernel, energy from
NVML), then times PyTorch on the same shapes and dtypes (``torch.matmul`` per dtype,
``torch._int_mm`` for int8, ``Tensor.copy_``, ``torch.add(..., alpha=s)`` for triad, a bf16
``x @ W.T`` for the decode GEMV) with CUDA events over the same duration, and prints ours/torch
per kernel, % of datasheet peak, watts and FLOP/J (bytes/J). Meant to finish well inside 8
minutes on an H100/H200 (about one to two).

Without CuPy, PyTorch, NVML or a CUDA device it says which is missing, skips the GPU parts and
exits 0: a smoke run that checks this script on a CPU-only machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable


from meterd.kernels.stats import median  # noqa: E402

#: The acceptance bar of the issue: ours / torch on the same GPU in the same run.
BAR = {("gemm", "bf16"): 0.9, ("copy", "fp32"): 0.9}


def _gpu_or_reason() -> tuple[Any, Any, Any] | str:
    """(cupy, torch, the NVML device list) or the reason the GPU part cannot run."""
    from meterd.kernels.base import KernelUnavailable
    from meterd.kernels.gpu import import_cupy
    from meterd.probes.nvml import get_gpus

    try:
        cp = import_cupy()
    except KernelUnavailable as e:
        return str(e)
    gpus = get_gpus()
    if not gpus.devices():
        return f"NVML sees no GPU: {gpus.reason}"
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and not torch.cuda.is_available():
        torch = None
    return cp, torch, gpus


class TorchOp:
    """One PyTorch operation on rotated inputs: ``fn(i)`` runs on set ``i % sets``."""

    def __init__(self, label: tuple[str, str], work_per_call: float, fn: Callable[[int], Any],
                 before: Callable[[], None] = lambda: None) -> None:
        self.label, self.work_per_call, self.fn, self.before = label, work_per_call, fn, before


def torch_ops(torch: Any, ours: list[Any], n: int) -> dict[tuple[str, str], TorchOp]:
    """PyTorch twins of our kernels, built lazily (one kernel's buffers alive at a time)."""
    dev = torch.device("cuda")
    ops: dict[tuple[str, str], Callable[[], TorchOp]] = {}
    dtypes = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    def gemm(dtype: str) -> Callable[[], TorchOp]:
        def make() -> TorchOp:
            if dtype == "int8":
                bufs = [(torch.randint(-127, 128, (n, n), dtype=torch.int8, device=dev),
                         torch.randint(-127, 128, (n, n), dtype=torch.int8, device=dev)) for _ in range(2)]
                return TorchOp(("gemm", dtype), 2.0 * n**3, lambda i: torch._int_mm(*bufs[i % 2]))
            t = dtypes[dtype]
            bufs = [(torch.randn(n, n, device=dev, dtype=t), torch.randn(n, n, device=dev, dtype=t),
                     torch.empty(n, n, device=dev, dtype=t)) for _ in range(2)]

            def before() -> None:
                torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"

            return TorchOp(("gemm", dtype), 2.0 * n**3,
                           lambda i: torch.matmul(bufs[i % 2][0], bufs[i % 2][1], out=bufs[i % 2][2]), before)
        return make

    for dtype in ("fp32", "tf32", "fp16", "bf16", "int8"):
        ops[("gemm", dtype)] = gemm(dtype)
    for k in ours:
        if k.name in ("copy", "triad"):
            elems = k.n4 * 4

            def make_stream(name: str = k.name, elems: int = elems, work: float = k.work_per_call) -> TorchOp:
                arrays = 2 if name == "copy" else 3
                bufs = [[torch.ones(elems, device=dev) for _ in range(arrays)] for _ in range(2)]
                if name == "copy":
                    return TorchOp((name, "fp32"), work, lambda i: bufs[i % 2][1].copy_(bufs[i % 2][0]))
                return TorchOp((name, "fp32"), work,
                               lambda i: torch.add(bufs[i % 2][1], bufs[i % 2][2], alpha=3.0, out=bufs[i % 2][0]))
            ops[(k.name, "fp32")] = make_stream
        if k.name == "gemv_decode":
            def make_decode(m: int = k.m, b: int = k.n, kk: int = k.k, work: float = k.work_per_call) -> TorchOp:
                bufs = [(torch.randn(b, kk, device=dev, dtype=torch.bfloat16),
                         torch.randn(m, kk, device=dev, dtype=torch.bfloat16),
                         torch.empty(b, m, device=dev, dtype=torch.bfloat16)) for _ in range(2)]
                return TorchOp(("gemv_decode", "bf16"), work,
                               lambda i: torch.matmul(bufs[i % 2][0], bufs[i % 2][1].t(), out=bufs[i % 2][2]))
            ops[("gemv_decode", "bf16")] = make_decode
    return ops  # type: ignore[return-value]


def time_torch(torch: Any, op: TorchOp, seconds: float, warmup_s: float, sampler: Callable[[], Any]) -> dict:
    """Median rate of ``op`` over ``seconds`` (CUDA events around batches of ~0.1 s), and the
    NVML energy counter's delta over the timed part."""
    op.before()
    i, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < warmup_s or i < 2:
        op.fn(i)
        i += 1
        if i % 8 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    op.fn(i)
    end.record()
    end.synchronize()
    per_call_s = max(start.elapsed_time(end) / 1e3, 1e-7)
    calls = max(1, round(0.1 / per_call_s))
    rates, total_calls = [], 0
    s0, w0 = sampler(), time.monotonic()
    while time.monotonic() - w0 < seconds or len(rates) < 3:
        start.record()
        for j in range(calls):
            op.fn(i + j)
        end.record()
        end.synchronize()
        i += calls
        total_calls += calls
        rates.append(calls * op.work_per_call / (start.elapsed_time(end) / 1e3))
    s1, w1 = sampler(), time.monotonic()
    energy = None
    if s0.energy_j is not None and s1.energy_j is not None and s1.energy_j.value >= s0.energy_j.value:
        energy = s1.energy_j.value - s0.energy_j.value
    torch.backends.cuda.matmul.allow_tf32 = False
    return {"value": median(rates), "watts": energy / (w1 - w0) if energy else None,
            "per_joule": total_calls * op.work_per_call / energy if energy else None}


def _fmt(v: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if v is None else f"{v / scale:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="0.15 s per kernel instead of 1 s")
    ap.add_argument("--device", type=int, default=0, help="NVML index of the GPU")
    args = ap.parse_args(argv)

    got = _gpu_or_reason()
    if isinstance(got, str):
        print(f"GPU check skipped (smoke run only): {got}")
        return 0
    cp, torch, gpus = got
    from meterd.kernels.suite import Sizes, plan_devices, run_plans, runner_options

    device = gpus.devices()[args.device]
    notes: list[str] = []
    plans = plan_devices([device], Sizes.choose(args.quick), notes)
    for note in notes:
        print(note)
    if not plans:
        return 1
    plan = plans[0]
    print(f"GPU {device.name} ({device.id}); driver {gpus.driver_version()}; "
          f"CuPy {plan.facts['cupy']}, CUDA runtime {plan.facts['cuda_runtime']}, cuBLAS {plan.facts['cublas']}"
          + (f"; torch {torch.__version__}" if torch else "; PyTorch not available: ours only"))
    t_start = time.monotonic()
    ops = torch_ops(torch, plan.kernels, Sizes.choose(args.quick).gpu_gemm_n) if torch else {}
    opts = runner_options(args.quick)
    rows = run_plans([plan], opts, lambda label, done, total: print(f"  [{done}/{total}] {label}", flush=True))
    print(f"\n{'kernel':<18}{'ours':>14}{'torch':>14}{'ours/torch':>11}{'% peak':>8}{'W':>7}{'W torch':>8}"
          f"{'per J (G)':>11}{'torch/J (G)':>12}")
    failed = []
    for r in rows:
        key = (r["kernel"], r["dtype"])
        scale, unit = (1e12, "T") if r["unit"] != "bytes/s" else (1e9, "GB")
        theirs = None
        if key in ops:
            try:
                op = ops[key]()
                theirs = time_torch(torch, op, opts.min_duration_s, 0.3, device.sample)
                del op
            except Exception as e:  # a torch build without _int_mm, out of memory, ...
                print(f"  torch {key[0]} {key[1]} failed: {type(e).__name__}: {e}")
            torch.cuda.empty_cache()
        ratio = r["value"] / theirs["value"] if theirs else None
        bar = BAR.get(key)
        mark = ""
        if bar is not None and ratio is not None:
            mark = "  ok" if ratio >= bar else f"  BELOW {bar}"
            if ratio < bar:
                failed.append(key)
        print(f"{r['kernel'] + ' ' + r['dtype']:<18}{_fmt(r['value'], scale, 1) + unit:>14}"
              f"{(_fmt(theirs['value'], scale, 1) + unit) if theirs else '-':>14}{_fmt(ratio, 1, 3):>11}"
              f"{_fmt(r['pct_of_peak']):>8}{_fmt(r['watts'], 1, 0):>7}"
              f"{_fmt(theirs['watts'] if theirs else None, 1, 0):>8}{_fmt(r['per_joule'], 1e9, 1):>11}"
              f"{_fmt(theirs['per_joule'] if theirs else None, 1e9, 1):>12}{mark}")
    for dt, why in plan.skipped.items():
        print(f"not measured: {dt}: {why}")
    print(f"units: T = TFLOP/s (int8: TOP/s), GB = GB/s; per J in GFLOP/J or GB/J; "
          f"took {time.monotonic() - t_start:.0f} s")
    gpus.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
