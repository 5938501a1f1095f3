"""Datasheet figures of known accelerators, matched by the NVML device name.

Peaks are the vendors' DENSE tensor-core figures (datasheets print sparsity figures, twice as
high, with an asterisk: those are halved here), in FLOP/s (int8: op/s). ``fp32`` is the
non-tensor-core FP32 rate. Memory bandwidth in bytes/s, TDP (max board power) in watts, L2 in
bytes (a fallback only: the suite sizes its buffers from the L2 size CUDA reports). A device
not in the table has no spec: results show no percentage of peak rather than a
guess, and a name that could be several products (a bare "NVIDIA H100") matches none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

T = 1e12
GBps = 1e9
MB = 1_000_000


@dataclass(frozen=True)
class DeviceSpec:
    """One product's datasheet. ``peak_flops_per_s`` maps dtype → dense peak (FLOP/s)."""

    name: str
    peak_flops_per_s: dict[str, float] = field(default_factory=dict)
    mem_bytes_per_s: float = 0.0
    tdp_w: float = 0.0
    l2_bytes: int = 0

    def peak_for(self, kernel: str, dtype: str) -> float | None:
        """The datasheet peak that a kernel's figure compares with (FLOP/s, op/s or bytes/s)."""
        if kernel in ("copy", "triad", "gemv_decode"):
            return self.mem_bytes_per_s or None
        return self.peak_flops_per_s.get(dtype)


def _hopper(name: str, fp32: float, tf32: float, bf16: float, fp8: float, bw: float, tdp: float) -> DeviceSpec:
    return DeviceSpec(
        name,
        {"fp64": fp32 / 2 * T, "fp32": fp32 * T, "tf32": tf32 * T, "fp16": bf16 * T,
         "bf16": bf16 * T, "fp8": fp8 * T, "int8": fp8 * T},
        bw * GBps, tdp, 50 * MB,
    )


def _ampere(name: str, bw: float, tdp: float) -> DeviceSpec:
    return DeviceSpec(
        name,
        {"fp64": 9.7 * T, "fp32": 19.5 * T, "tf32": 156 * T, "fp16": 312 * T, "bf16": 312 * T,
         "int8": 624 * T},
        bw * GBps, tdp, 40 * MB,
    )


#: (regular expression on the NVML name, spec), most specific first.
SPECS: tuple[tuple[str, DeviceSpec], ...] = (
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5 / PCIe / NVL columns).
    (r"H100 NVL", _hopper("H100 NVL", 60, 417.5, 835.5, 1670.5, 3900, 400)),
    (r"H100.*PCIe", _hopper("H100 PCIe", 51.2, 378, 756, 1513, 2000, 350)),
    (r"H100.*(SXM|HBM3)", _hopper("H100 SXM", 67, 494.7, 989.4, 1978.9, 3350, 700)),
    # NVIDIA H200 datasheet: the same compute as H100 SXM, HBM3e.
    (r"H200 NVL", _hopper("H200 NVL", 60, 417.5, 835.5, 1670.5, 4800, 600)),
    (r"\bH200\b", _hopper("H200 SXM", 67, 494.7, 989.4, 1978.9, 4800, 700)),
    # NVIDIA HGX B200 figures over its 8 GPUs, halved where sparse (TF32 18 PF, FP8 72 PF); FP4
    # not listed: nothing here can run it.
    (r"\bB200\b", DeviceSpec(
        "B200",
        {"fp64": 37 * T, "fp32": 75 * T, "tf32": 1125 * T, "fp16": 2250 * T, "bf16": 2250 * T,
         "fp8": 4500 * T, "int8": 4500 * T},
        8000 * GBps, 1000, 126 * MB)),
    # NVIDIA A100 datasheet (40 GB HBM2 / 80 GB HBM2e; SXM4 400 W, PCIe 250/300 W).
    (r"A100.*SXM.*40GB", _ampere("A100 SXM4 40GB", 1555, 400)),
    (r"A100.*SXM.*80GB", _ampere("A100 SXM4 80GB", 2039, 400)),
    (r"A100.*PCIE.*40GB", _ampere("A100 PCIe 40GB", 1555, 250)),
    (r"A100.*80GB.*PCIE", _ampere("A100 PCIe 80GB", 1935, 300)),
    # NVIDIA L40S, L4 and A10 datasheets (Ada: FP8 on tensor cores; Ampere GA102: none).
    (r"\bL40S\b", DeviceSpec(
        "L40S",
        {"fp32": 91.6 * T, "tf32": 183 * T, "fp16": 362.05 * T, "bf16": 362.05 * T,
         "fp8": 733 * T, "int8": 733 * T},
        864 * GBps, 350, 96 * MB)),
    (r"\bL4\b", DeviceSpec(
        "L4",
        {"fp32": 30.3 * T, "tf32": 60 * T, "fp16": 121 * T, "bf16": 121 * T,
         "fp8": 242.5 * T, "int8": 242.5 * T},
        300 * GBps, 72, 48 * MB)),
    # AWS's A10G: the A10 datasheet's tensor figures (same GA102 configuration), 300 W board.
    (r"\bA10G\b", DeviceSpec(
        "A10G",
        {"fp32": 31.2 * T, "tf32": 62.5 * T, "fp16": 125 * T, "bf16": 125 * T, "int8": 250 * T},
        600 * GBps, 300, 6 * MB)),
    (r"\bA10\b", DeviceSpec(
        "A10",
        {"fp32": 31.2 * T, "tf32": 62.5 * T, "fp16": 125 * T, "bf16": 125 * T, "int8": 250 * T},
        600 * GBps, 150, 6 * MB)),
)


def lookup(nvml_name: str | None) -> DeviceSpec | None:
    """The spec of the device NVML calls ``nvml_name``, or None when it is not known."""
    if not nvml_name:
        return None
    for pattern, spec in SPECS:
        if re.search(pattern, nvml_name, re.IGNORECASE):
            return spec
    return None


def pct_of_peak(value: float, spec: DeviceSpec | None, kernel: str, dtype: str) -> float | None:
    """``value`` as a percentage of the datasheet peak; None for an unknown device or dtype."""
    if spec is None:
        return None
    peak = spec.peak_for(kernel, dtype)
    return 100.0 * value / peak if peak else None
