"""CPU kernels in NumPy: GEMM through BLAS (fp64, fp32), copy and triad bandwidth.

Bandwidth kernels split each call across the CPUs this process may run on (NumPy releases the
GIL for copies and arithmetic on large arrays), and rotate through enough buffer sets that the
footprint is at least four times the last-level cache, so the cache cannot fake bandwidth.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from meterd.kernels.base import BOUNDS, Kernel, KernelIncorrect, PerfCounterTimer, check_close

_NP_DTYPES = {"fp64": np.float64, "fp32": np.float32}
#: How many rows of a GEMM result the correctness gate recomputes in higher precision.
CHECK_ROWS = 4
MiB = 1 << 20


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


def llc_bytes(root: str | os.PathLike = "/") -> int | None:
    """Size of cpu0's last-level cache in bytes (sysfs), or None when it cannot be read."""
    base = Path(root) / "sys/devices/system/cpu/cpu0/cache"
    best: tuple[int, int] | None = None
    try:
        for d in base.glob("index*"):
            level = int((d / "level").read_text())
            size = _parse_size((d / "size").read_text())
            if best is None or level > best[0]:
                best = (level, size)
    except (OSError, ValueError):
        return None
    return best[1] if best else None


def rotation_sets(set_bytes: int, cache_bytes: int | None, minimum: int = 2) -> int:
    """Buffer sets to rotate through so that they span at least 4 × ``cache_bytes``."""
    if not cache_bytes:
        return minimum
    return max(minimum, -(-4 * cache_bytes // set_bytes))


def to_dtype(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return rng.standard_normal(shape).astype(_NP_DTYPES[dtype])


class CpuGemm(Kernel):
    """``C = A @ B`` for square ``n × n`` matrices through NumPy's BLAS."""

    name = "gemm"
    unit = "flop/s"

    def __init__(self, dtype: str, n: int) -> None:
        if dtype not in _NP_DTYPES:
            raise ValueError(f"CPU GEMM has no dtype {dtype!r}")
        self.dtype, self.n = dtype, n
        self.work_per_call = 2.0 * n**3
        self.timer = PerfCounterTimer()
        self._bufs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def compute(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        """The operation itself (what the correctness gate checks and the timer times)."""
        np.matmul(a, b, out=out)

    def setup(self) -> None:
        rng = np.random.default_rng(0)
        shape = (self.n, self.n)
        self._bufs = [
            (to_dtype(rng, shape, self.dtype), to_dtype(rng, shape, self.dtype),
             np.empty(shape, _NP_DTYPES[self.dtype]))
            for _ in range(self.sets)
        ]

    def run(self, i: int) -> None:
        a, b, c = self._bufs[i % self.sets]
        self.compute(a, b, c)

    def check(self, seed: int) -> float:
        rng = np.random.default_rng(seed)
        shape = (self.n, self.n)
        a, b = to_dtype(rng, shape, self.dtype), to_dtype(rng, shape, self.dtype)
        c = np.empty(shape, _NP_DTYPES[self.dtype])
        self.compute(a, b, c)
        rows = rng.choice(self.n, size=min(CHECK_ROWS, self.n), replace=False)
        # fp64's reference in extended precision (x86's 80-bit long double), fp32's in fp64.
        hi = np.longdouble if self.dtype == "fp64" else np.float64
        ref = a[rows].astype(hi) @ b.astype(hi)
        scale = np.abs(a[rows]).astype(np.float64) @ np.abs(b).astype(np.float64)
        return check_close(f"CPU {self.label}", c[rows], ref, scale, BOUNDS[self.dtype])

    def teardown(self) -> None:
        self._bufs = []


class _CpuStream(Kernel):
    """A STREAM-style fp64 kernel over ``elems`` elements per array, split across threads."""

    unit = "bytes/s"
    dtype = "fp64"
    arrays = 2  # arrays touched per call (read + write count)

    def __init__(self, elems: int, cache_bytes: int | None = None, threads: int | None = None) -> None:
        self.elems = elems
        self.work_per_call = float(self.arrays * elems * 8)
        self.sets = rotation_sets(self.arrays * elems * 8, cache_bytes)
        self.threads = threads or usable_cpus()
        self.timer = PerfCounterTimer()
        self._bufs: list[list[np.ndarray]] = []
        self._pool: ThreadPoolExecutor | None = None
        bounds = np.linspace(0, elems, self.threads + 1).astype(int)
        self._slices = [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]

    def setup(self) -> None:
        self._bufs = []
        for k in range(self.sets):
            arrs = [np.empty(self.elems) for _ in range(self.arrays)]
            for j, arr in enumerate(arrs):
                arr.fill(1.0 + k + j)  # touch every page now, not inside the timed calls
            self._bufs.append(arrs)
        self._pool = ThreadPoolExecutor(self.threads) if len(self._slices) > 1 else None

    def _parallel(self, arrs: list[np.ndarray]) -> None:
        if self._pool is None:
            self.compute(arrs, slice(None))
            return
        for f in [self._pool.submit(self.compute, arrs, s) for s in self._slices]:
            f.result()

    def run(self, i: int) -> None:
        self._parallel(self._bufs[i % self.sets])

    def _with_pool(self, arrs: list[np.ndarray]) -> None:
        own = self._pool is None and len(self._slices) > 1
        if own:
            self._pool = ThreadPoolExecutor(self.threads)
        try:
            self._parallel(arrs)
        finally:
            if own:
                self._pool.shutdown()
                self._pool = None

    def compute(self, arrs: list[np.ndarray], part: slice) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        self._bufs = []
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class CpuCopy(_CpuStream):
    """``b[:] = a``: 16 bytes moved per element (8 read, 8 written)."""

    name = "copy"
    arrays = 2

    def compute(self, arrs: list[np.ndarray], part: slice) -> None:
        src, dst = arrs
        np.copyto(dst[part], src[part])

    def check(self, seed: int) -> float:
        rng = np.random.default_rng(seed)
        arrs = [rng.standard_normal(self.elems), np.zeros(self.elems)]
        self._with_pool(arrs)
        if not np.array_equal(arrs[1], arrs[0]):
            raise KernelIncorrect("CPU copy fp64: the copy differs from its source")
        return 0.0


#: Triad works in blocks small enough to stay in L2, so the temporary ``s · c`` never goes to
#: memory and the traffic is STREAM's three arrays.
TRIAD_BLOCK = 32 * 1024
TRIAD_SCALAR = 3.0


class CpuTriad(_CpuStream):
    """``a = b + s · c``: 24 bytes moved per element (two read, one written)."""

    name = "triad"
    arrays = 3

    def compute(self, arrs: list[np.ndarray], part: slice) -> None:
        a, b, c = arrs[0][part], arrs[1][part], arrs[2][part]
        tmp = np.empty(min(TRIAD_BLOCK, len(a)))
        for lo in range(0, len(a), TRIAD_BLOCK):
            hi = min(lo + TRIAD_BLOCK, len(a))
            t = tmp[: hi - lo]
            np.multiply(c[lo:hi], TRIAD_SCALAR, out=t)
            np.add(b[lo:hi], t, out=a[lo:hi])

    def check(self, seed: int) -> float:
        rng = np.random.default_rng(seed)
        arrs = [np.zeros(self.elems), rng.standard_normal(self.elems), rng.standard_normal(self.elems)]
        self._with_pool(arrs)
        b, c = arrs[1], arrs[2]
        ref = b.astype(np.longdouble) + np.longdouble(TRIAD_SCALAR) * c.astype(np.longdouble)
        scale = np.abs(b) + TRIAD_SCALAR * np.abs(c)
        return check_close("CPU triad fp64", arrs[0], ref, scale, 1e-15)


def cpu_kernels(gemm_n: int, stream_bytes: int, cache_bytes: int | None) -> list[Kernel]:
    """The CPU suite: GEMM fp64 and fp32 at ``gemm_n``, copy and triad over arrays of
    ``stream_bytes`` each."""
    elems = max(1, stream_bytes // 8)
    return [CpuGemm("fp64", gemm_n), CpuGemm("fp32", gemm_n),
            CpuCopy(elems, cache_bytes), CpuTriad(elems, cache_bytes)]
