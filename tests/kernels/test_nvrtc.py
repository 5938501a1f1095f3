"""Every CUDA source in kernels/ compiles with NVRTC, without a GPU, for compute capabilities
8.0 (A100), 9.0 (H100/H200) and 10.0 (B200), with no error and no warning.

NVRTC comes from the ``nvidia-cuda-nvrtc-cu12`` wheel (the test extra), loaded through ctypes.
Without it the tests skip locally; with ``CI`` set they fail, so CI never passes by skipping.
Compiling for ``sm_XX`` runs the front end and ptxas to a cubin: what would fail on the GPU
fails here.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest

import meterd.kernels
from meterd.kernels import gpu
from meterd.kernels.nvrtc import Nvrtc, NvrtcError, NvrtcUnavailable

ARCHS = ("sm_80", "sm_90", "sm_100")


@pytest.fixture(scope="module")
def nvrtc() -> Nvrtc:
    try:
        return Nvrtc.load()
    except NvrtcUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"{e} (CI is set: this test must run)")
        pytest.skip(str(e))


def _cuda_strings_in_kernels() -> dict[str, str]:
    """Every module-level string in meterd.kernels.* that holds a CUDA kernel."""
    found = {}
    for info in pkgutil.iter_modules(meterd.kernels.__path__):
        mod = importlib.import_module(f"meterd.kernels.{info.name}")
        for attr, value in vars(mod).items():
            if isinstance(value, str) and "__global__" in value:
                found[f"{info.name}.{attr}"] = value
    return found


def test_every_cuda_source_in_kernels_is_listed():
    listed = set(gpu.CUDA_SOURCES.values())
    missing = [name for name, src in _cuda_strings_in_kernels().items() if src not in listed]
    assert not missing, f"CUDA sources not in meterd.kernels.gpu.CUDA_SOURCES (so never compiled): {missing}"
    assert gpu.CUDA_SOURCES, "no CUDA source found: the test would check nothing"


def test_this_nvrtc_targets_every_checked_architecture(nvrtc):
    major, minor = nvrtc.version()
    supported = nvrtc.supported_archs()
    for arch in ARCHS:
        assert int(arch[3:]) in supported, f"NVRTC {major}.{minor} cannot compile for {arch} (supports {supported})"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(gpu.CUDA_SOURCES))
def test_cuda_source_compiles_cleanly(nvrtc, name, arch):
    result = nvrtc.check(gpu.CUDA_SOURCES[name], name, arch)
    assert result.ok and result.size > 0 and result.log == ""


def test_the_kernels_named_by_the_runner_are_in_the_compiled_source(nvrtc):
    # CupyStream looks up meterd_copy and meterd_triad by name; NVRTC keeps extern "C" names, so
    # both must appear in the PTX it emits.
    import ctypes

    lib, prog = nvrtc.lib, ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), gpu.STREAM_SOURCE.encode(), b"s.cu", 0, None, None) == 0
    try:
        opts = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_90")
        assert lib.nvrtcCompileProgram(prog, 1, opts) == 0
        size = ctypes.c_size_t()
        assert lib.nvrtcGetPTXSize(prog, ctypes.byref(size)) == 0
        buf = ctypes.create_string_buffer(size.value)
        assert lib.nvrtcGetPTX(prog, buf) == 0
        ptx = buf.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    for kernel in ("copy", "triad"):
        assert f".entry meterd_{kernel}(" in ptx


def test_a_broken_kernel_source_fails(nvrtc):
    broken = gpu.STREAM_SOURCE.replace("fmaf(s, y[u].x", "fmaf(s, y[u].q", 1)
    assert broken != gpu.STREAM_SOURCE
    with pytest.raises(NvrtcError, match=r"meterd_stream\.cu does not compile for sm_90: .*no member.*\"q\""):
        nvrtc.check(broken, "meterd_stream.cu", "sm_90")


def test_a_kernel_source_with_a_warning_fails(nvrtc):
    warned = gpu.STREAM_SOURCE.replace("float4 v[UNROLL];", "float4 v[UNROLL]; int unused = 0;", 1)
    assert warned != gpu.STREAM_SOURCE
    with pytest.raises(NvrtcError, match=r"compiles for sm_100 with warnings: .*\"unused\" was declared but never"):
        nvrtc.check(warned, "meterd_stream.cu", "sm_100")


def test_an_unknown_architecture_is_an_error_not_a_pass(nvrtc):
    with pytest.raises(NvrtcError, match="does not compile for sm_1"):
        nvrtc.check(gpu.STREAM_SOURCE, "meterd_stream.cu", "sm_1")
