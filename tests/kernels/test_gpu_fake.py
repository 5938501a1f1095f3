"""kernels/gpu.py end to end on the NumPy stand-in for CuPy and the fake NVML: the TN GEMM
mapping, the correctness gate per dtype, the RawKernel launches, device matching by PCI bus id
and energy from the GPU's counter. Performance needs the real thing (bench/gpu_check.py)."""

import json
import sys
import time

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.kernels import gpu
from meterd.kernels.base import KernelIncorrect
from tests.fakes.nvml import h100
from tests.kernels.fake_cupy import FakeCupy


@pytest.fixture
def fake_cupy(monkeypatch):
    cp = FakeCupy(pci_bus_id="0000:18:00.0")  # the fake NVML's first GPU
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupy_backends", None)
    return cp


@pytest.fixture
def gpu_node(fake_nvml, fake_cupy):
    # a real clock: the benchmark runs in real time and the fake energy counter follows it
    return fake_nvml([h100(curve=[(0.0, 400.0)])], clock=time.time)


def bench(*args):
    return CliRunner().invoke(main, ["bench", "--tiny", *args])


@pytest.mark.parametrize("dtype", ["fp32", "tf32", "fp16", "bf16", "int8"])
def test_each_gemm_passes_its_gate(fake_cupy, dtype):
    k = gpu.CupyGemm(fake_cupy, dtype, 48, 40, 32)
    assert k.check(seed=3) <= gpu.BOUNDS[dtype]
    assert fake_cupy.gemm_calls == 1


def test_a_wrong_gpu_gemm_is_rejected(fake_cupy):
    fake_cupy.wrong_gemm = True
    with pytest.raises(KernelIncorrect, match="GPU gemm bf16: max relative error"):
        gpu.CupyGemm(fake_cupy, "bf16", 64, 64, 64).check(seed=3)


def test_gpu_bench_end_to_end(gpu_node, tmp_path):
    uuid = gpu_node.gpus[0].uuid
    r = bench("--json", "--db", str(tmp_path / "m.db"), "--device", uuid)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    rows = doc["results"]
    assert [(x["kernel"], x["dtype"]) for x in rows] == [
        ("gemm", "fp32"), ("gemm", "tf32"), ("gemm", "fp16"), ("gemm", "bf16"), ("gemm", "int8"),
        ("copy", "fp32"), ("triad", "fp32"), ("gemv_decode", "bf16")]
    for x in rows:
        assert x["device"] == uuid and x["value"] > 0
        assert x["pct_of_peak"] is not None  # an H100 SXM: the spec table knows it
        # spans of ~10 ms in real time: the exact figure is tested with a manual clock in test_runner
        assert x["energy_source"] == "counter" and x["watts"] > 0 and x["energy_j"] > 0
    assert {"fp8", "fp4"} <= set(doc["skipped"])
    assert doc["versions"]["cupy"] == "13.0.0-fake" and doc["versions"]["cublas"] == 120805
    cap = doc["capacity"][0]
    assert cap["flops_dtype"] == "bf16" and cap["bytes_kernel"] == "gemv_decode"
    assert cap["watts_source"] == "measured"


def test_a_wrong_gpu_kernel_stops_the_bench_with_one_clear_line(gpu_node, tmp_path):
    sys.modules["cupy"].wrong_gemm = True
    r = bench("--db", str(tmp_path / "m.db"), "--device", "0")
    assert r.exit_code != 0
    assert "Error: GPU gemm fp32: max relative error" in r.output


def test_a_gpu_cuda_cannot_see_is_left_out_with_a_note(fake_nvml, monkeypatch, tmp_path):
    cp = FakeCupy(pci_bus_id="0000:99:00.0")
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupy_backends", None)
    fake_nvml([h100()])
    doc = json.loads(bench("--json", "--db", str(tmp_path / "m.db")).output)
    assert {x["device"] for x in doc["results"]} == {"cpu"}
    assert any("not visible to CUDA" in n for n in doc["notes"])
