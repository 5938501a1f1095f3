import pytest

from meterd.kernels.specs import SPECS, lookup, pct_of_peak


@pytest.mark.parametrize("nvml_name, spec_name", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA B200", "B200"),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM4 40GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA A10", "A10"),
])
def test_known_devices_match_by_nvml_name(nvml_name, spec_name):
    assert lookup(nvml_name).name == spec_name


@pytest.mark.parametrize("name", ["NVIDIA H100", "NVIDIA GeForce RTX 4090", "Tesla P100-PCIE-16GB",
                                  "Intel(R) Xeon(R) Processor", "", None])
def test_unknown_or_ambiguous_devices_have_no_spec(name):
    assert lookup(name) is None


def test_peaks_are_dense_not_sparse():
    h100 = lookup("NVIDIA H100 80GB HBM3")
    assert h100.peak_flops_per_s["bf16"] == pytest.approx(989.4e12)  # 1979 with sparsity
    assert h100.peak_flops_per_s["tf32"] == pytest.approx(494.7e12)
    assert h100.mem_bytes_per_s == 3.35e12 and h100.tdp_w == 700
    for _, spec in SPECS:
        assert spec.mem_bytes_per_s > 0 and spec.tdp_w > 0 and spec.l2_bytes > 0
        # a dense fp16 tensor peak is never more than 16x the fp32 vector rate on these parts
        assert spec.peak_flops_per_s["bf16"] <= 32 * spec.peak_flops_per_s["fp32"]


def test_pct_of_peak():
    h100 = lookup("NVIDIA H100 80GB HBM3")
    assert pct_of_peak(494.7e12, h100, "gemm", "bf16") == pytest.approx(50.0)
    assert pct_of_peak(3.35e12 * 0.9, h100, "copy", "fp32") == pytest.approx(90.0)
    assert pct_of_peak(1e12, None, "gemm", "bf16") is None
    assert pct_of_peak(1e12, lookup("NVIDIA A100-SXM4-80GB"), "gemm", "fp8") is None  # no FP8 on Ampere
