"""Just enough of CuPy, on NumPy, to run kernels/gpu.py without a GPU.

``cublas.gemmEx`` follows cuBLAS's column-major contract (op(A) is m × k, op(B) k × n, C m × n,
each stored column-major with its leading dimension), so the TN mapping in kernels/gpu.py and
its correctness gate are exercised for real; the two RawKernels are played by NumPy. Timing is
host wall time. Arrays are NumPy arrays with a ``.data.ptr``, found again by pointer.
"""

from __future__ import annotations

import time
import types
import weakref

import numpy as np

CUDA_R_32F, CUDA_R_16F, CUDA_R_8I, CUDA_R_32I, CUDA_R_16BF = 0, 2, 3, 10, 14

_by_ptr: "weakref.WeakValueDictionary[int, FakeArray]" = weakref.WeakValueDictionary()


class _Data:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


class FakeArray(np.ndarray):
    @property
    def data(self):  # CuPy: a MemoryPointer with .ptr
        ptr = self.ctypes.data
        _by_ptr[ptr] = self
        return _Data(ptr)


def _wrap(a) -> FakeArray:
    return np.ascontiguousarray(a).view(FakeArray)


def _decode(flat: np.ndarray, cuda_type: int) -> np.ndarray:
    if cuda_type == CUDA_R_16BF:
        return (flat.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return flat.astype(np.float64)


def _encode(values: np.ndarray, cuda_type: int, like: np.ndarray) -> np.ndarray:
    if cuda_type == CUDA_R_16BF:
        bits = values.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    if cuda_type == CUDA_R_32I:
        return np.rint(values).astype(np.int32)
    return values.astype(like.dtype)


class FakeCupy(types.SimpleNamespace):
    """A module-like namespace. ``wrong_gemm`` plants a layout bug in gemmEx."""

    def __init__(self, device_count: int = 1, name: str = "NVIDIA H100 80GB HBM3", cc=(9, 0),
                 pci_bus_id: str = "0000:00:00.0", l2_bytes: int = 50 << 20) -> None:
        super().__init__()
        self.__version__ = "13.0.0-fake"
        self.wrong_gemm = False
        self.gemm_calls = 0
        for t in ("float16", "float32", "float64", "uint16", "uint32", "int8", "int32", "uint8"):
            setattr(self, t, getattr(np, t))
        cp = self

        def gemm_ex(handle, transa, transb, m, n, k, alpha, A, atype, lda, B, btype, ldb, beta, C, ctype,
                    ldc, compute, algo):
            cp.gemm_calls += 1
            a, b, c = _by_ptr[A].reshape(-1), _by_ptr[B].reshape(-1), _by_ptr[C].reshape(-1)
            a_cols = k if transa == 0 else m
            a_store = _decode(a, atype)[: lda * a_cols].reshape(a_cols, lda).T  # column-major lda × cols
            op_a = a_store[:m, :k] if transa == 0 else a_store[:k, :m].T
            b_cols = n if transb == 0 else k
            b_store = _decode(b, btype)[: ldb * b_cols].reshape(b_cols, ldb).T
            op_b = b_store[:k, :n] if transb == 0 else b_store[:n, :k].T
            # the planted bug: B's rows taken in the wrong order, as a layout mistake would
            result = op_a @ (op_b[::-1] if cp.wrong_gemm else op_b)
            out = c[: ldc * n].reshape(n, ldc).T
            out[:m, :] = _encode(result, ctype, c)

        def copy_kernel(grid, block, args):
            src, dst, n4 = args
            dst.reshape(-1)[: int(n4) * 4] = src.reshape(-1)[: int(n4) * 4]

        def triad_kernel(grid, block, args):
            a, b, c, s, n4 = args
            n = int(n4) * 4
            a.reshape(-1)[:n] = b.reshape(-1)[:n] + np.float32(s) * c.reshape(-1)[:n]

        class RawModule:
            def __init__(self, code):
                assert "meterd_copy" in code and "float4" in code

            def get_function(self, name):
                return {"meterd_copy": copy_kernel, "meterd_triad": triad_kernel}[name]

        self.RawModule = RawModule

        class Event:
            def record(self, stream=None):
                self.t = time.perf_counter()

            def synchronize(self):
                pass

        class Stream:
            def synchronize(self):
                pass

        class Device:
            current = 0

            def __init__(self, i=None):
                self.id = Device.current if i is None else i

            def use(self):
                Device.current = self.id

            def __enter__(self):
                self._prev = Device.current
                Device.current = self.id
                return self

            def __exit__(self, *exc):
                Device.current = self._prev

        class RandomState:
            def __init__(self, seed):
                self.rng = np.random.default_rng(seed)

            def standard_normal(self, size, dtype=np.float64):
                return _wrap(self.rng.standard_normal(size).astype(dtype))

            def randint(self, low, high, size):
                return _wrap(self.rng.integers(low, high, size=size))

        props = {"name": name.encode(), "major": cc[0], "minor": cc[1], "l2CacheSize": l2_bytes,
                 "multiProcessorCount": 132}
        runtime = types.SimpleNamespace(
            getDeviceCount=lambda: device_count, getDeviceProperties=lambda i: dict(props),
            deviceGetPCIBusId=lambda i: pci_bus_id, runtimeGetVersion=lambda: 12080,
            driverGetVersion=lambda: 12080,
        )
        cublas = types.SimpleNamespace(
            gemmEx=gemm_ex, setPointerMode=lambda h, mode: None, CUBLAS_POINTER_MODE_HOST=0,
            setWorkspace=lambda h, ptr, size: None, getVersion=lambda h: 120805,
        )
        self.cuda = types.SimpleNamespace(
            runtime=runtime, cublas=cublas, Event=Event, Device=Device,
            device=types.SimpleNamespace(get_cublas_handle=lambda: 1),
            get_current_stream=lambda: Stream(),
            get_elapsed_time=lambda start, end: (end.t - start.t) * 1e3,
        )
        self.random = types.SimpleNamespace(RandomState=RandomState)

    # -- array functions ---------------------------------------------------------------------------
    def empty(self, shape, dtype=np.float64):
        return _wrap(np.empty(shape, dtype))

    def zeros(self, shape, dtype=np.float64):
        return _wrap(np.zeros(shape, dtype))

    def full(self, shape, value, dtype=np.float64):
        return _wrap(np.full(shape, value, dtype))

    def asnumpy(self, a):
        return np.asarray(a).view(np.ndarray).copy()

    def array_equal(self, a, b):
        return np.array_equal(a, b)

    def max(self, a):
        return np.max(a)

    def abs(self, a):
        return np.abs(a)

    def get_default_memory_pool(self):
        return types.SimpleNamespace(free_all_blocks=lambda: None)
