import json
import os
import tempfile
from pathlib import Path

import pytest

from meterd.probes.cpu import CpuDevice, busy_pct, cpu_model_name
from meterd.probes.cpu_tdp import DEFAULT_W_PER_CORE, watts_per_core
from meterd.errors import RaplUnavailable
from meterd.probes.rapl import RaplCounter, counter_delta_uj, find_package_domains

MAX_RANGE = 262_143_328_850


def make_rapl(root: Path, packages: dict[int, int], mode: int = 0o444, model="AMD EPYC 9654 96-Core Processor"):
    for n, uj in packages.items():
        d = root / f"sys/class/powercap/intel-rapl:{n}"
        d.mkdir(parents=True)
        (d / "name").write_text(f"package-{n}\n")
        (d / "max_energy_range_uj").write_text(f"{MAX_RANGE}\n")
        (d / "energy_uj").write_text(f"{uj}\n")
        (d / "energy_uj").chmod(mode)
        sub = root / f"sys/class/powercap/intel-rapl:{n}/intel-rapl:{n}:0"
        sub.mkdir()
        (sub / "name").write_text("dram\n")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text(f"processor\t: 0\nmodel name\t: {model}\n")


def set_uj(root: Path, n: int, uj: int) -> None:
    (root / f"sys/class/powercap/intel-rapl:{n}/energy_uj").write_text(f"{uj}\n")


def test_counter_delta_handles_wraparound():
    assert counter_delta_uj(100, 250, 1000) == 150
    assert counter_delta_uj(900, 50, 1000) == 150
    assert counter_delta_uj(5, 5, 1000) == 0


def test_rapl_counter_sums_packages_across_a_wrap(tmp_path):
    make_rapl(tmp_path, {0: MAX_RANGE - 1_000_000, 1: 5_000_000})
    c = RaplCounter(tmp_path)
    assert [d.name for d in c.domains] == ["package-0", "package-1"]  # subdomains are not packages
    set_uj(tmp_path, 0, 2_000_000)  # wrapped: 1 J before the wrap + 2 J after
    set_uj(tmp_path, 1, 9_000_000)  # 4 J
    assert c.read_j() == pytest.approx(7.0)
    set_uj(tmp_path, 0, 3_000_000)
    assert c.read_j() == pytest.approx(8.0)


def test_no_powercap_tree_gives_a_reason(tmp_path):
    with pytest.raises(RaplUnavailable, match="does not exist"):
        find_package_domains(tmp_path)


def test_root_only_energy_file_gives_a_clear_reason():
    """As an unprivileged user, a 0400 root-owned energy_uj must name the cause (CVE-2020-8694)."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        os.chmod(root, 0o755)
        make_rapl(root, {0: 123}, mode=0o400)
        for p in root.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop to nobody if we are root, then probe
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                try:
                    find_package_domains(root)
                    msg = "readable"
                except RaplUnavailable as e:
                    msg = str(e)
                os.write(w, json.dumps(msg).encode())
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        msg = json.loads(os.read(r, 4096))
        os.close(r)
    assert "root only" in msg and "CVE-2020-8694" in msg


def test_cpu_uses_rapl_counter_when_readable(tmp_path, clock):
    make_rapl(tmp_path, {0: 1_000_000})
    mono = [100.0]
    cpu = CpuDevice(tmp_path, clock=clock, monotonic=lambda: mono[0], sleep=lambda s: None)
    assert cpu.name == "AMD EPYC 9654 96-Core Processor"
    set_uj(tmp_path, 0, 51_000_000)  # 50 J
    mono[0] += 2.0
    s = cpu.sample()
    assert s.energy_j.source == "counter" and s.energy_j.value == pytest.approx(50.0)
    assert s.power_w.source == "counter" and s.power_w.value == pytest.approx(25.0)
    assert s.reason is None


def test_cpu_without_rapl_estimates_and_says_so(tmp_path, clock):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("model name\t: Some Unknown CPU\n")
    cpu = CpuDevice(tmp_path, clock=clock)
    s = cpu.sample()
    assert s.energy_j is None
    assert s.power_w.source == "estimated"
    expected = DEFAULT_W_PER_CORE * cpu.logical_cpus * s.util_pct.value / 100
    assert s.power_w.value == pytest.approx(expected)
    assert "does not exist" in s.reason
    assert "default" in s.extra["power_estimate_basis"]
    assert 0 <= s.util_pct.value <= 100
    assert s.mem_total_bytes > 0


def test_tdp_table_and_default():
    w, basis = watts_per_core("AMD EPYC 9654 96-Core Processor")
    assert w == pytest.approx(360 / 96) and "EPYC 9654" in basis
    assert watts_per_core("Mystery CPU")[0] == DEFAULT_W_PER_CORE


def test_busy_pct_and_model_name(tmp_path):
    assert busy_pct((100.0, 50.0), (110.0, 52.0)) == pytest.approx(80.0)
    assert busy_pct((100.0, 50.0), (100.0, 50.0)) is None
    assert cpu_model_name(tmp_path) == "CPU"
