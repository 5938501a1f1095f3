"""Does the runner distort? Our CPU GEMM (through kernels.runner) against NumPy's matmul timed
directly, side by side in one process, plus the bandwidth figures.

    python bench/cpu_check.py [--seconds S] [--rounds R] [--n N] [--stream-mib M] [--cache-mib C]

Prints, per dtype, the median rate of each and the ratios ours / numpy of the medians and of the
best repeats (each the median over rounds, which alternate the two so that load from elsewhere
on the machine hits both alike), then copy and triad bandwidth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


from meterd.kernels.cpu import CpuCopy, CpuGemm, CpuTriad, llc_bytes  # noqa: E402
from meterd.kernels.runner import Runner, RunnerOptions  # noqa: E402
from meterd.kernels.stats import median  # noqa: E402


def numpy_matmul_flops_per_s(dtype: str, n: int, seconds: float) -> tuple[float, float]:
    """NumPy ``a @ b`` timed call by call with perf_counter, for ``seconds``: (median, best) FLOP/s."""
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
    return 2.0 * n**3 / median(times), 2.0 * n**3 / min(times)


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
    ap.add_argument("--seconds", type=float, default=0.3, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=1024, help="GEMM size (meter bench --quick uses 1024)")
    ap.add_argument("--stream-mib", type=int, default=64, help="MiB per bandwidth array (meter bench: 64)")
    ap.add_argument("--cache-mib", type=int, default=None,
                    help="last-level cache size to defeat (default: read from sysfs; 0: no rotation)")
    args = ap.parse_args(argv)
    runner = Runner(RunnerOptions(min_duration_s=args.seconds, warmup_s=0.05, min_repeats=3))
    print("ours: kernels.runner; numpy: a @ b timed directly; rounds alternate the two.\n"
          "median: each side's median repeat; best: each side's fastest (the least disturbed when\n"
          "other work shares the CPUs). Ratios are medians over rounds.")
    print(f"{'kernel':<12}{'ours':>14}{'numpy':>14}{'ratio(median)':>15}{'ratio(best)':>13}")
    for dtype in ("fp64", "fp32"):
        med_ratios, best_ratios, ours_v, np_v = [], [], [], []
        for _ in range(args.rounds):
            m = runner.measure(CpuGemm(dtype, args.n))
            theirs, theirs_best = numpy_matmul_flops_per_s(dtype, args.n, args.seconds)
            ours_v.append(m.value)
            np_v.append(theirs)
            med_ratios.append(m.value / theirs)
            best_ratios.append(m.best / theirs_best)
        print(f"{'gemm ' + dtype:<12}{median(ours_v) / 1e9:>9.1f} GF/s{median(np_v) / 1e9:>9.1f} GF/s"
              f"{median(med_ratios):>15.3f}{median(best_ratios):>13.3f}")
    cache = llc_bytes() if args.cache_mib is None else (args.cache_mib << 20) or None
    elems = (args.stream_mib << 20) // 8
    copy = runner.measure(CpuCopy(elems, cache)).value
    triad = runner.measure(CpuTriad(elems, cache)).value
    base = numpy_copy_bytes_per_s(args.stream_mib << 20, args.seconds)
    print(f"{'copy fp64':<12}{copy / 1e9:>9.1f} GB/s{base / 1e9:>9.1f} GB/s{copy / base:>15.3f}"
          "   (numpy: np.copyto on one thread, no rotation)")
    print(f"{'triad fp64':<12}{triad / 1e9:>9.1f} GB/s")
    print(f"last-level cache: {cache} bytes; CPUs: {CpuCopy(1).threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
