"""GPU kernels in CuPy. CuPy is imported lazily, by :func:`import_cupy`, and nowhere else.

- GEMM fp32, tf32, fp16, bf16 and int8 through ``cublasGemmEx`` (CuPy's binding), with the
  compute type chosen explicitly (fp32 without TF32, tf32 with ``CUBLAS_COMPUTE_32F_FAST_TF32``,
  fp16/bf16 accumulating in fp32, int8 accumulating in int32). CuPy has no bfloat16 dtype, so
  bf16 matrices are uint16 arrays of bf16 bit patterns, which cuBLAS reads as ``CUDA_R_16BF``.
- Not reachable through CuPy: **fp8** (e4m3/e5m2) and **fp4** GEMMs, which cuBLAS runs only
  through cublasLt (``cublasLtMatmul`` with per-tensor scale pointers); CuPy does not wrap
  cublasLt, and ``cublasGemmEx`` rejects fp8 types.
- copy and triad: RawKernels with 16-byte (float4) loads and stores, over buffers of at least
  4 × L2 each, bytes counted as read + write.
- gemv_decode: the memory-bound shape of LLM decoding, ``y = x · Wᵀ`` for a small batch of
  rows over bf16 weights of at least 4 × L2, reported as effective bytes/s (weights + x + y).

Every GEMM uses the TN layout (the fastest in cuBLAS): row-major X (m × k) and Y (n × k) give
row-major Z (n × m) = Y · Xᵀ.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from meterd.kernels.base import BOUNDS, Kernel, KernelIncorrect, KernelUnavailable, Timer, check_close

# cudaDataType_t (library_types.h) and cublasComputeType_t (cublas_api.h) values.
CUDA_R_32F, CUDA_R_16F, CUDA_R_8I, CUDA_R_32I, CUDA_R_16BF = 0, 2, 3, 10, 14
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_COMPUTE_32I = 68, 77, 72
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_GEMM_DEFAULT = -1
#: The workspace PyTorch gives cuBLAS on Hopper, so both libraries choose among the same kernels.
CUBLAS_WORKSPACE_BYTES = 32 << 20

#: dtype → (storage dtype name, output storage dtype name, A/B cuda type, C cuda type, compute).
GEMM_TYPES: dict[str, tuple[str, str, int, int, int]] = {
    "fp32": ("float32", "float32", CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F),
    "tf32": ("float32", "float32", CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32),
    "fp16": ("float16", "float16", CUDA_R_16F, CUDA_R_16F, CUBLAS_COMPUTE_32F),
    "bf16": ("uint16", "uint16", CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F),
    "int8": ("int8", "int32", CUDA_R_8I, CUDA_R_32I, CUBLAS_COMPUTE_32I),
}
#: Minimum compute capability (major*10+minor) per dtype: TF32 and BF16 need Ampere.
MIN_CC = {"fp32": 0, "tf32": 80, "fp16": 53, "bf16": 80, "int8": 61}
UNREACHABLE = {
    "fp8": "cuBLAS runs FP8 GEMMs only through cublasLt, which CuPy does not wrap",
    "fp4": "cuBLAS runs FP4 GEMMs only through cublasLt, which CuPy does not wrap",
}

_workspaces: dict[int, Any] = {}


def _cublas(cp: Any) -> Any:
    """CuPy's cuBLAS binding (``cupy_backends.cuda.libs.cublas``, also ``cupy.cuda.cublas``)."""
    try:
        from cupy_backends.cuda.libs import cublas
    except ImportError:
        cublas = cp.cuda.cublas
    return cublas


def import_cupy() -> Any:
    """CuPy with at least one CUDA device, or KernelUnavailable saying why not."""
    try:
        import cupy
    except ImportError as e:
        raise KernelUnavailable("CuPy is not installed (pip install 'meterd[gpu]')") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, no device, wrong CUDA major
        raise KernelUnavailable(f"CUDA is not usable through CuPy: {e}") from e
    if count < 1:
        raise KernelUnavailable("CUDA reports no device")
    return cupy


def parse_pci_bus_id(bus_id: str | None) -> tuple[int, int, int, int] | None:
    """(domain, bus, device, function) of an NVML (``00000000:3B:00.0``) or CUDA
    (``0000:3b:00.0``) PCI bus id."""
    if not bus_id:
        return None
    try:
        domain, bus, rest = bus_id.strip().split(":")
        dev, fn = rest.split(".")
        return int(domain, 16), int(bus, 16), int(dev, 16), int(fn, 16)
    except ValueError:
        return None


def cuda_ordinal(cp: Any, pci_bus_id: str | None, fallback: int) -> int:
    """The CUDA device ordinal of the GPU NVML knows by ``pci_bus_id``: CUDA orders devices
    fastest-first and honours CUDA_VISIBLE_DEVICES, NVML does neither."""
    want = parse_pci_bus_id(pci_bus_id)
    if want is not None:
        for i in range(cp.cuda.runtime.getDeviceCount()):
            if parse_pci_bus_id(cp.cuda.runtime.deviceGetPCIBusId(i)) == want:
                return i
        raise KernelUnavailable(f"GPU {pci_bus_id} is not visible to CUDA (CUDA_VISIBLE_DEVICES?)")
    return fallback


def device_facts(cp: Any, ordinal: int) -> dict[str, Any]:
    """Name, compute capability, L2 bytes and library versions of a CUDA device."""
    props = cp.cuda.runtime.getDeviceProperties(ordinal)
    name = props.get("name", b"")
    with cp.cuda.Device(ordinal):
        handle = cp.cuda.device.get_cublas_handle()
        cublas_version = _cublas(cp).getVersion(handle)
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "cc": int(props["major"]) * 10 + int(props["minor"]),
        "l2_bytes": int(props.get("l2CacheSize", 0)),
        "sms": int(props.get("multiProcessorCount", 0)),
        "cupy": cp.__version__,
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cp.cuda.runtime.driverGetVersion(),
        "cublas": cublas_version,
    }


class CudaEventTimer(Timer):
    """CUDA events on the current stream around a batch of launches."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp

    def time_calls(self, run: Callable[[int], None], first: int, calls: int) -> float:
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record()
        for i in range(first, first + calls):
            run(i)
        end.record()
        end.synchronize()
        return self.cp.cuda.get_elapsed_time(start, end) / 1e3

    def synchronize(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()


# -- host-side conversions for the reference ----------------------------------------------------


def bf16_bits_to_f64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _to_f64(host: np.ndarray, dtype: str) -> np.ndarray:
    return bf16_bits_to_f64(host) if dtype == "bf16" else host.astype(np.float64)


def _random_operand(cp: Any, rs: Any, shape: tuple[int, int], dtype: str) -> Any:
    """Random values stored in ``dtype``'s storage, each exactly representable in ``dtype`` (so
    the reference sees the very inputs the tensor cores see)."""
    if dtype == "int8":
        return rs.randint(-127, 128, size=shape).astype(cp.int8)
    x = rs.standard_normal(shape, dtype=cp.float32)
    bits = x.view(cp.uint32)
    if dtype == "tf32":  # round to 10 mantissa bits, as the tensor cores would
        return ((bits + cp.uint32(0x1000)) & cp.uint32(0xFFFFE000)).view(cp.float32)
    if dtype == "bf16":  # round to nearest even on the upper 16 bits
        return ((bits + cp.uint32(0x7FFF) + ((bits >> 16) & cp.uint32(1))) >> 16).astype(cp.uint16)
    if dtype == "fp16":
        return x.astype(cp.float16)
    return x


class CupyGemm(Kernel):
    """``Z = Y · Xᵀ`` through cublasGemmEx: X is m × k, Y is n × k, Z is n × m (row-major).

    As ``gemm`` (square, FLOP/s or op/s) or ``gemv_decode`` (n = the decode batch, bf16,
    effective bytes/s over weights X, activations Y and outputs Z).
    """

    def __init__(self, cp: Any, dtype: str, m: int, n: int, k: int, decode: bool = False) -> None:
        if dtype not in GEMM_TYPES:
            raise KernelUnavailable(f"GPU GEMM {dtype}: {UNREACHABLE.get(dtype, 'unknown dtype')}")
        self.cp, self.dtype, self.m, self.n, self.k = cp, dtype, m, n, k
        self.name = "gemv_decode" if decode else "gemm"
        storage, out, self._atype, self._ctype, self._compute = GEMM_TYPES[dtype]
        self._storage, self._out = getattr(cp, storage), getattr(cp, out)
        if decode:
            elem = np.dtype(storage).itemsize
            self.unit = "bytes/s"
            self.work_per_call = float((m * k + n * k) * elem + n * m * np.dtype(out).itemsize)
        else:
            self.unit = "op/s" if dtype == "int8" else "flop/s"
            self.work_per_call = 2.0 * m * n * k
        scalar = np.int32 if dtype == "int8" else np.float32
        self._alpha, self._beta = np.array(1, dtype=scalar), np.array(0, dtype=scalar)
        self.timer = CudaEventTimer(cp)
        self._bufs: list[tuple[Any, Any, Any]] = []
        self._handle = 0
        self._gemm_ex = _cublas(cp).gemmEx

    def _prepare_handle(self) -> None:
        cublas = _cublas(self.cp)
        self._handle = self.cp.cuda.device.get_cublas_handle()
        cublas.setPointerMode(self._handle, cublas.CUBLAS_POINTER_MODE_HOST)
        dev = self.cp.cuda.Device().id
        if dev not in _workspaces and hasattr(cublas, "setWorkspace"):
            ws = self.cp.empty(CUBLAS_WORKSPACE_BYTES, dtype=self.cp.uint8)
            cublas.setWorkspace(self._handle, ws.data.ptr, CUBLAS_WORKSPACE_BYTES)
            _workspaces[dev] = ws  # cuBLAS keeps the pointer: keep the memory alive

    def compute(self, x: Any, y: Any, z: Any) -> None:
        """One cublasGemmEx call (asynchronous on the current stream)."""
        self._gemm_ex(
            self._handle, CUBLAS_OP_T, CUBLAS_OP_N, self.m, self.n, self.k,
            self._alpha.ctypes.data, x.data.ptr, self._atype, self.k,
            y.data.ptr, self._atype, self.k,
            self._beta.ctypes.data, z.data.ptr, self._ctype, self.m,
            self._compute, CUBLAS_GEMM_DEFAULT,
        )

    def setup(self) -> None:
        self._prepare_handle()
        rs = self.cp.random.RandomState(0)
        self._bufs = [
            (_random_operand(self.cp, rs, (self.m, self.k), self.dtype),
             _random_operand(self.cp, rs, (self.n, self.k), self.dtype),
             self.cp.empty((self.n, self.m), dtype=self._out))
            for _ in range(self.sets)
        ]

    def run(self, i: int) -> None:
        self.compute(*self._bufs[i % self.sets])

    def check(self, seed: int) -> float:
        cp = self.cp
        self._prepare_handle()
        rs = cp.random.RandomState(seed)
        x = _random_operand(cp, rs, (self.m, self.k), self.dtype)
        y = _random_operand(cp, rs, (self.n, self.k), self.dtype)
        z = cp.full((self.n, self.m), 7, dtype=self._out)  # stale values must not pass
        self.compute(x, y, z)
        cp.cuda.get_current_stream().synchronize()
        rows = np.random.default_rng(seed).choice(self.n, size=min(4, self.n), replace=False)
        xh = _to_f64(cp.asnumpy(x), self.dtype)
        yr = _to_f64(cp.asnumpy(y[rows]), self.dtype)
        got = _to_f64(cp.asnumpy(z[rows]), self.dtype)
        del x, y, z
        ref = yr @ xh.T
        scale = np.abs(yr) @ np.abs(xh).T
        return check_close(f"GPU {self.name} {self.dtype}", got, ref, scale, BOUNDS[self.dtype])

    def teardown(self) -> None:
        self._bufs = []
        self.cp.get_default_memory_pool().free_all_blocks()


STREAM_SOURCE = r"""
#define UNROLL 4
extern "C" __global__ void meterd_copy(const float4* __restrict__ src, float4* __restrict__ dst,
                                       unsigned long long n4) {
    unsigned long long base = (unsigned long long)blockIdx.x * blockDim.x * UNROLL + threadIdx.x;
    float4 v[UNROLL];
    #pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        unsigned long long j = base + (unsigned long long)u * blockDim.x;
        if (j < n4) v[u] = src[j];
    }
    #pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        unsigned long long j = base + (unsigned long long)u * blockDim.x;
        if (j < n4) dst[j] = v[u];
    }
}

extern "C" __global__ void meterd_triad(float4* __restrict__ a, const float4* __restrict__ b,
                                        const float4* __restrict__ c, float s,
                                        unsigned long long n4) {
    unsigned long long base = (unsigned long long)blockIdx.x * blockDim.x * UNROLL + threadIdx.x;
    float4 x[UNROLL], y[UNROLL];
    #pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        unsigned long long j = base + (unsigned long long)u * blockDim.x;
        if (j < n4) { x[u] = b[j]; y[u] = c[j]; }
    }
    #pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
        unsigned long long j = base + (unsigned long long)u * blockDim.x;
        if (j < n4) a[j] = make_float4(fmaf(s, y[u].x, x[u].x), fmaf(s, y[u].y, x[u].y),
                                       fmaf(s, y[u].z, x[u].z), fmaf(s, y[u].w, x[u].w));
    }
}
"""
THREADS, UNROLL = 256, 4
TRIAD_SCALAR = 3.0

#: Every CUDA C++ source in kernels/, by file name: ``tests/kernels/test_nvrtc.py`` compiles each
#: with NVRTC for compute capabilities 8.0, 9.0 and 10.0 (no GPU needed) and fails on any error or
#: warning; it also fails if a module of kernels/ holds a CUDA source that is not listed here.
CUDA_SOURCES: dict[str, str] = {"meterd_stream.cu": STREAM_SOURCE}


class CupyStream(Kernel):
    """``copy`` (dst = src) or ``triad`` (a = b + s·c) over fp32 arrays of ``nbytes`` each,
    moved 16 bytes per load/store. Bytes per call: 2 (copy) or 3 (triad) × ``nbytes``."""

    dtype = "fp32"
    unit = "bytes/s"

    def __init__(self, cp: Any, name: str, nbytes: int) -> None:
        if name not in ("copy", "triad"):
            raise ValueError(name)
        self.cp, self.name = cp, name
        self.n4 = max(1, nbytes // 16)
        self.arrays = 2 if name == "copy" else 3
        self.work_per_call = float(self.arrays * self.n4 * 16)
        self.timer = CudaEventTimer(cp)
        self._fn: Any = None
        self._bufs: list[list[Any]] = []

    def _kernel(self) -> Any:
        if self._fn is None:
            module = self.cp.RawModule(code=STREAM_SOURCE)
            self._fn = module.get_function(f"meterd_{self.name}")
        return self._fn

    def _blocks(self) -> int:
        return -(-self.n4 // (THREADS * UNROLL))

    def compute(self, arrs: list[Any]) -> None:
        n4 = np.uint64(self.n4)
        if self.name == "copy":
            args = (arrs[0], arrs[1], n4)
        else:
            args = (arrs[0], arrs[1], arrs[2], np.float32(TRIAD_SCALAR), n4)
        self._kernel()((self._blocks(),), (THREADS,), args)

    def _arrays(self, fill: Callable[[int], Any]) -> list[Any]:
        return [fill(j) for j in range(self.arrays)]

    def setup(self) -> None:
        cp = self.cp
        self._bufs = [self._arrays(lambda j, k=k: cp.full(self.n4 * 4, 1.0 + k + j, dtype=cp.float32))
                      for k in range(self.sets)]

    def run(self, i: int) -> None:
        self.compute(self._bufs[i % self.sets])

    def check(self, seed: int) -> float:
        cp = self.cp
        rs = cp.random.RandomState(seed)
        size = self.n4 * 4
        if self.name == "copy":
            arrs = [rs.standard_normal(size, dtype=cp.float32), cp.zeros(size, dtype=cp.float32)]
            self.compute(arrs)
            if not bool(cp.array_equal(arrs[0], arrs[1])):
                raise KernelIncorrect("GPU copy fp32: the copy differs from its source")
            return 0.0
        arrs = [cp.zeros(size, dtype=cp.float32), rs.standard_normal(size, dtype=cp.float32),
                rs.standard_normal(size, dtype=cp.float32)]
        self.compute(arrs)
        a, b, c = (x.astype(cp.float64) for x in arrs)
        err = float(cp.max(cp.abs(a - (b + TRIAD_SCALAR * c)) / (cp.abs(b) + TRIAD_SCALAR * cp.abs(c) + 1e-300)))
        if not err <= 1e-6:  # one fp32 rounding of the fused multiply-add: 2^-24 ≈ 6e-8
            raise KernelIncorrect(f"GPU triad fp32: max relative error {err:.3g} exceeds the bound 1e-06")
        return err

    def teardown(self) -> None:
        self._bufs = []
        self.cp.get_default_memory_pool().free_all_blocks()


#: Sizes of the GPU suite. GEMM n = 8192: about 1.1 TFLOP per call, long enough to time and
#: large enough for cuBLAS's best tiles. The decode GEMV: a batch of 8 rows over 8192-wide weights.
GEMM_N = 8192
DECODE_BATCH, DECODE_K = 8, 8192
MIN_STREAM_BYTES = 256 << 20


def stream_bytes(l2_bytes: int, minimum: int = MIN_STREAM_BYTES) -> int:
    """Bytes per array of the bandwidth kernels: at least 4 × L2 and ``minimum``, 16-byte aligned."""
    return -(-max(4 * l2_bytes, minimum) // 16) * 16


def gpu_kernels(cp: Any, cc: int, l2_bytes: int, gemm_n: int = GEMM_N, min_stream_bytes: int = MIN_STREAM_BYTES,
                decode_k: int = DECODE_K, decode_min_m: int = 16384) -> tuple[list[Kernel], dict[str, str]]:
    """The GPU suite for a device of compute capability ``cc`` (e.g. 90), and the kernels left
    out with the reason. The keyword sizes exist for tests; the defaults are the real suite."""
    kernels: list[Kernel] = []
    skipped = dict(UNREACHABLE)
    for dtype in ("fp32", "tf32", "fp16", "bf16", "int8"):
        if cc < MIN_CC[dtype]:
            skipped[dtype] = f"needs compute capability {MIN_CC[dtype] / 10:.1f}, the device has {cc / 10:.1f}"
            continue
        kernels.append(CupyGemm(cp, dtype, gemm_n, gemm_n, gemm_n))
    nbytes = stream_bytes(l2_bytes, min_stream_bytes)
    kernels += [CupyStream(cp, "copy", nbytes), CupyStream(cp, "triad", nbytes)]
    if cc >= MIN_CC["bf16"]:
        # Weights of at least 4 × L2: m rows of decode_k bf16, m a multiple of 256.
        m = max(decode_min_m, -(-nbytes // (2 * decode_k) // 256) * 256)
        kernels.append(CupyGemm(cp, "bf16", m, DECODE_BATCH, decode_k, decode=True))
    return kernels, skipped
