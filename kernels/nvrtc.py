"""Compile CUDA C++ with NVRTC through ctypes: no GPU, no driver and no CuPy needed.

NVRTC (the runtime compiler CuPy's ``RawModule`` uses) is a plain shared library; NVIDIA ships it
on its own in the ``nvidia-cuda-nvrtc-cu12`` wheel (``nvidia/cuda_nvrtc/lib/libnvrtc.so.12``).
Compiling for a real architecture (``sm_90``) runs the whole pipeline, front end and ptxas, to a
cubin, so a source that would fail on a GPU fails here, on any machine.

:func:`compile_cuda` returns the program log and the compiled size; :func:`check_cuda` raises
:class:`NvrtcError` on an error *or* a warning (any log at all), naming the source and the
architecture. Used by ``tests/kernels/test_nvrtc.py`` on every source in :data:`meterd.kernels.gpu.CUDA_SOURCES`.
"""

from __future__ import annotations

import ctypes
import glob
import os
from dataclasses import dataclass

from meterd.errors import KernelError, KernelUnavailable

NVRTC_SUCCESS = 0


class NvrtcUnavailable(KernelUnavailable):
    """No NVRTC library could be loaded (the wheel is not installed)."""


class NvrtcError(KernelError):
    """A CUDA source did not compile cleanly: an error, or a warning."""


@dataclass(frozen=True)
class Compiled:
    arch: str
    ok: bool
    log: str
    size: int  # bytes of cubin (sm_XX) or PTX (compute_XX); 0 when it failed


def library_candidates() -> list[str]:
    """Where libnvrtc may be: the wheel's folder inside every ``nvidia`` package on sys.path,
    then the names the dynamic linker resolves by itself."""
    import sys

    found: list[str] = []
    for entry in sys.path:
        found += sorted(glob.glob(os.path.join(entry, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*")))
    return [p for p in found if ".alt." not in p] + ["libnvrtc.so.12", "libnvrtc.so"]


class Nvrtc:
    """One loaded libnvrtc. ``Nvrtc.load()`` finds it or raises :class:`NvrtcUnavailable`."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.lib, self.path = lib, path
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]

    @classmethod
    def load(cls) -> "Nvrtc":
        reasons = []
        for path in library_candidates():
            try:
                return cls(ctypes.CDLL(path), path)
            except OSError as e:
                reasons.append(str(e))
        raise NvrtcUnavailable("no NVRTC library: install the nvidia-cuda-nvrtc-cu12 wheel "
                               f"(pip install 'meterd[test]'); tried {reasons[-1] if reasons else 'nothing'}")

    def _check(self, code: int, what: str) -> None:
        if code != NVRTC_SUCCESS:
            raise NvrtcError(f"{what}: {self.lib.nvrtcGetErrorString(code).decode()}")

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def supported_archs(self) -> list[int]:
        """The real architectures this NVRTC compiles for, as compute capabilities (80, 90, 100)."""
        n = ctypes.c_int()
        self._check(self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
        archs = (ctypes.c_int * n.value)()
        self._check(self.lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
        return list(archs)

    def compile(self, source: str, name: str, arch: str, options: tuple[str, ...] = ()) -> Compiled:
        """Compile ``source`` for ``arch`` (``sm_90`` for a cubin, ``compute_90`` for PTX)."""
        lib = self.lib
        prog = ctypes.c_void_p()
        self._check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
                    f"{name}: nvrtcCreateProgram")
        try:
            opts = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in options)]
            argv = (ctypes.c_char_p * len(opts))(*opts)
            code = lib.nvrtcCompileProgram(prog, len(opts), argv)
            size = ctypes.c_size_t()
            self._check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), f"{name}: nvrtcGetProgramLogSize")
            buf = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetProgramLog(prog, buf), f"{name}: nvrtcGetProgramLog")
            log = buf.value.decode(errors="replace").strip()
            if code != NVRTC_SUCCESS:
                return Compiled(arch, False, log or lib.nvrtcGetErrorString(code).decode(), 0)
            out = ctypes.c_size_t()
            getter = lib.nvrtcGetCUBINSize if arch.startswith("sm_") else lib.nvrtcGetPTXSize
            self._check(getter(prog, ctypes.byref(out)), f"{name}: output size")
            return Compiled(arch, True, log, out.value)
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))

    def check(self, source: str, name: str, arch: str, options: tuple[str, ...] = ()) -> Compiled:
        """:meth:`compile`, raising :class:`NvrtcError` on an error or any warning in the log."""
        result = self.compile(source, name, arch, options)
        if not result.ok:
            raise NvrtcError(f"{name} does not compile for {arch}: {result.log}")
        if result.log:
            raise NvrtcError(f"{name} compiles for {arch} with warnings: {result.log}")
        if result.size == 0:
            raise NvrtcError(f"{name} compiled for {arch} to nothing")
        return result
