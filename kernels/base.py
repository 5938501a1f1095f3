"""The one kernel interface, the timers, and the correctness gate.

Exceptions: :class:`KernelError` and its subclasses :class:`KernelUnavailable` (the backend is
missing: no CuPy, no CUDA device, a dtype cuBLAS lacks) and :class:`KernelIncorrect` (the
kernel's result is wrong: it reports no number), in :mod:`meterd.errors`.

A kernel owns its buffers and one operation; the runner owns warm-up, timing, repeats and
energy. Kernels are asynchronous where their device is (``run`` may return before the work is
done): the kernel's :class:`Timer` knows how to wait for it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from meterd.errors import KernelError, KernelIncorrect, KernelUnavailable  # noqa: F401 (re-exported)

#: Largest accepted error of a GEMM-like result, relative to ``|A|·|B|`` element by element
#: (the scale of a dot product's rounding error), on inputs exactly representable in the dtype.
#: fp32/fp64: accumulation error only; tf32: inputs pre-rounded to TF32 so products are exact;
#: fp16/bf16: fp32 accumulation plus rounding the output (unit roundoff 2^-11 and 2^-8); int8
#: accumulates exactly in int32.
BOUNDS: dict[str, float] = {
    "fp64": 1e-10,
    "fp32": 1e-4,
    "tf32": 1e-3,
    "fp16": 5e-3,
    "bf16": 2e-2,
    "int8": 0.0,
}


def check_close(what: str, got: np.ndarray, ref: np.ndarray, scale: np.ndarray, bound: float) -> float:
    """Raise :class:`KernelIncorrect` unless ``|got - ref| <= bound · scale`` everywhere.

    Returns the largest relative error seen (dimensionless).
    """
    got64 = np.asarray(got, dtype=np.float64)
    ref64 = np.asarray(ref, dtype=np.float64)
    if got64.shape != ref64.shape:
        raise KernelIncorrect(f"{what}: result shape {got64.shape}, expected {ref64.shape}")
    if not np.all(np.isfinite(got64)):
        raise KernelIncorrect(f"{what}: result has NaN or infinite values")
    scale64 = np.maximum(np.asarray(scale, dtype=np.float64), np.finfo(np.float64).tiny)
    err = float(np.max(np.abs(got64 - ref64) / scale64)) if got64.size else 0.0
    if err > bound:
        raise KernelIncorrect(f"{what}: max relative error {err:.3g} exceeds the bound {bound:.3g}")
    return err


class Timer(ABC):
    """Times a batch of calls of an (asynchronous) kernel."""

    @abstractmethod
    def time_calls(self, run: Callable[[int], None], first: int, calls: int) -> float:
        """Seconds taken by ``run(first) ... run(first + calls - 1)``, all of them finished."""

    def synchronize(self) -> None:
        """Wait until all work submitted so far is done."""


class PerfCounterTimer(Timer):
    """Host wall time (``time.perf_counter``) around synchronous calls: the CPU's timer."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock

    def time_calls(self, run: Callable[[int], None], first: int, calls: int) -> float:
        t0 = self._clock()
        for i in range(first, first + calls):
            run(i)
        return self._clock() - t0


class Kernel(ABC):
    """One benchmarked operation on one device.

    ``unit`` is ``flop/s``, ``op/s`` (integer) or ``bytes/s``; ``work_per_call`` is FLOP, ops or
    bytes (read + write) per call, in that unit's numerator.
    """

    name: str
    dtype: str
    unit: str
    work_per_call: float
    #: How many input sets :meth:`setup` allocates; calls rotate through them.
    sets: int = 2
    timer: Timer

    @abstractmethod
    def setup(self) -> None:
        """Allocate and fill the rotated buffers (:attr:`sets` of them)."""

    @abstractmethod
    def run(self, i: int) -> None:
        """One call on input set ``i % sets``."""

    @abstractmethod
    def check(self, seed: int) -> float:
        """Run on fresh random inputs from ``seed`` and compare with a higher-precision
        reference; raise :class:`KernelIncorrect` beyond the dtype's bound. Returns the error."""

    def teardown(self) -> None:
        """Free the buffers."""

    @property
    def label(self) -> str:
        return f"{self.name} {self.dtype}"
