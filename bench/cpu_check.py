"""Does the runner distort? Our CPU GEMM (through kernels.runner) against NumPy's matmul timed
directly, side by side in one process, plus the bandwidth figures.

    python bench/cpu_check.py [--seconds S] [--rounds R] [--n N]

Prints, per dtype, the median rate of each and the ratio ours / numpy (the median over rounds,
which alternate the two so that load from elsewhere on the machine hits both alike).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from kernels.cpu import CpuCopy, CpuGemm, CpuTriad, llc_bytes  # noqa: E402
from kernels.runner import Runner, RunnerOptions  # noqa: E402
from kernels.stats import median  # noqa: E402


def numpy_matmul_flops_per_s(dtype: str, n: int, seconds: float) -> float:
    """NumPy ``a @ b`` timed call by call with perf_counter, for ``seconds``; median FLOP/s."""
    npdt = np.float64 if dtype == "fp64" else np.float32
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n)).astype(npdt), rng.standard_normal((n, n)).astype(npdt)
    a @ b  # warm-up
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / median(times)


def numpy_copy_bytes_per_s(nbytes: int, seconds: float) -> float:
    """``np.copyto`` on one thread, timed directly: a bandwidth baseline (bytes read + written)."""
    src, dst = np.ones(nbytes // 8), np.zeros(nbytes // 8)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2.0 * src.nbytes / median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1024, help="GEMM size (meter bench --quick uses 1024)")
    ap.add_argument("--stream-mib", type=int, default=64, help="MiB per bandwidth array (meter bench: 64)")
    ap.add_argument("--cache-mib", type=int, default=None,
                    help="last-level cache size to defeat (default: read from sysfs; 0: no rotation)")
    args = ap.parse_args(argv)
    runner = Runner(RunnerOptions(min_duration_s=args.seconds, warmup_s=0.05, min_repeats=3))
    print(f"{'kernel':<12}{'ours':>14}{'numpy':>14}{'ours/numpy':>12}")
    for dtype in ("fp64", "fp32"):
        ratios, ours_v, np_v = [], [], []
        for _ in range(args.rounds):
            ours = runner.measure(CpuGemm(dtype, args.n)).value
            theirs = numpy_matmul_flops_per_s(dtype, args.n, args.seconds)
            ours_v.append(ours)
            np_v.append(theirs)
            ratios.append(ours / theirs)
        print(f"{'gemm ' + dtype:<12}{median(ours_v) / 1e9:>10.1f} GF/s{median(np_v) / 1e9:>9.1f} GF/s"
              f"{median(ratios):>12.3f}")
    cache = llc_bytes() if args.cache_mib is None else (args.cache_mib << 20) or None
    elems = (args.stream_mib << 20) // 8
    copy = runner.measure(CpuCopy(elems, cache)).value
    triad = runner.measure(CpuTriad(elems, cache)).value
    base = numpy_copy_bytes_per_s(args.stream_mib << 20, args.seconds)
    print(f"{'copy fp64':<12}{copy / 1e9:>10.1f} GB/s{base / 1e9:>9.1f} GB/s{copy / base:>12.3f}"
          "   (numpy: one thread, no rotation)")
    print(f"{'triad fp64':<12}{triad / 1e9:>10.1f} GB/s")
    print(f"last-level cache: {cache} bytes; CPUs: {CpuCopy(1).threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
