"""The GPU code without a GPU: the import guard, device mapping and the suite's plan. The
kernels themselves need CuPy and a CUDA device (bench/gpu_check.py runs them)."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from meterd.kernels import gpu
from meterd.kernels.base import KernelUnavailable
from meterd.kernels.suite import Sizes, plan_devices
from meterd.probes.nvml import NvidiaGpus
from tests.fakes.nvml import h100


def test_no_cupy_is_a_clear_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy → ImportError
    with pytest.raises(KernelUnavailable, match=r"CuPy is not installed"):
        gpu.import_cupy()


def test_gpus_without_cupy_are_skipped_with_a_note(monkeypatch, fake_nvml, clock):
    monkeypatch.setitem(sys.modules, "cupy", None)
    fake_nvml([h100()])
    notes = []
    plans = plan_devices(NvidiaGpus(clock).devices(), Sizes.choose(quick=True), notes)
    assert plans == [] and "GPU kernels skipped: CuPy is not installed" in notes[0]


def test_pci_bus_ids_of_nvml_and_cuda_compare_equal():
    assert gpu.parse_pci_bus_id("00000000:3B:00.0") == gpu.parse_pci_bus_id("0000:3b:00.0") == (0, 0x3B, 0, 0)
    assert gpu.parse_pci_bus_id("garbage") is None and gpu.parse_pci_bus_id(None) is None


def test_stream_buffers_are_at_least_four_times_l2():
    assert gpu.stream_bytes(50_000_000) == 256 << 20  # 4 × 50 MB = 200 MB < 256 MiB floor
    assert gpu.stream_bytes(126_000_000) == 504_000_000  # B200: 4 × 126 MB, 16-byte aligned
    assert gpu.stream_bytes(126_000_001) % 16 == 0


def _stub_cupy():
    """Just enough of CuPy's namespace for kernels to be constructed (nothing runs)."""
    return SimpleNamespace(float32=np.float32, float16=np.float16, uint16=np.uint16, int8=np.int8,
                           int32=np.int32, cuda=SimpleNamespace(cublas=SimpleNamespace(gemmEx=None)))


def test_hopper_plan_and_what_is_unreachable():
    kernels, skipped = gpu.gpu_kernels(_stub_cupy(), cc=90, l2_bytes=50 << 20)
    labels = [k.label for k in kernels]
    assert labels == ["gemm fp32", "gemm tf32", "gemm fp16", "gemm bf16", "gemm int8", "copy fp32",
                      "triad fp32", "gemv_decode bf16"]
    assert set(skipped) == {"fp8", "fp4"} and "cublasLt" in skipped["fp8"]
    gemm = kernels[0]
    assert gemm.work_per_call == 2 * 8192**3 and gemm.unit == "flop/s"
    assert kernels[4].unit == "op/s"
    copy, triad, decode = kernels[5:]
    assert copy.work_per_call == 2 * (256 << 20) and triad.work_per_call == 3 * (256 << 20)
    # decode: m × 8192 bf16 weights of at least 4 × L2, plus x (8 × 8192) and y (8 × m) in bf16
    weights = decode.m * decode.k * 2
    assert weights >= 4 * (50 << 20) and decode.n == 8
    assert decode.work_per_call == weights + 8 * 8192 * 2 + 8 * decode.m * 2
    assert decode.unit == "bytes/s"


def test_turing_plan_leaves_out_tf32_and_bf16():
    kernels, skipped = gpu.gpu_kernels(_stub_cupy(), cc=75, l2_bytes=4 << 20)
    assert [k.label for k in kernels] == ["gemm fp32", "gemm fp16", "gemm int8", "copy fp32", "triad fp32"]
    assert "8.0" in skipped["bf16"] and "8.0" in skipped["tf32"]


def test_fp8_gemm_is_refused_with_the_reason():
    with pytest.raises(KernelUnavailable, match="cublasLt"):
        gpu.CupyGemm(_stub_cupy(), "fp8", 64, 64, 64)
