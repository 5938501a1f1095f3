"""The bench/ scripts run (a smoke run: they print ratios, these tests assert only that they work)."""

import importlib.util
import sys
from pathlib import Path


BENCH = Path(__file__).parents[2] / "bench"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_without_a_gpu_says_so_and_succeeds(monkeypatch, capsys, no_nvml):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert load("gpu_check").main([]) == 0
    assert "GPU check skipped (smoke run only): CuPy is not installed" in capsys.readouterr().out


def test_cpu_check_prints_ratios(capsys):
    assert load("cpu_check").main(["--seconds", "0.01", "--rounds", "1", "--n", "64", "--stream-mib", "1",
                                      "--cache-mib", "0"]) == 0
    out = capsys.readouterr().out
    assert "gemm fp64" in out and "gemm fp32" in out and "ratio(median)" in out and "copy fp64" in out
