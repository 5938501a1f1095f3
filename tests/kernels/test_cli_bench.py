import json
import sys

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.agent.store import Store
from meterd.kernels.roofline import BUILTIN_PROFILES
from tests.fakes.nvml import h100

KEYS = {"device", "kernel", "dtype", "value", "unit", "pct_of_peak", "watts", "energy_j", "energy_source"}


def run(*args):
    return CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def _no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)


def test_cpu_path_end_to_end_json_and_store(tmp_path, no_nvml):
    db = tmp_path / "m.db"
    r = run("--quick", "--json", "--db", str(db), "--tiny")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    rows = doc["results"]
    assert [(x["kernel"], x["dtype"]) for x in rows] == [("gemm", "fp64"), ("gemm", "fp32"), ("copy", "fp64"),
                                                        ("triad", "fp64")]
    for x in rows:
        assert KEYS <= set(x)
        assert x["device"] == "cpu" and x["value"] > 0 and x["pct_of_peak"] is None
        assert x["unit"] == ("flop/s" if x["kernel"] == "gemm" else "bytes/s")
        assert x["energy_source"] in ("counter", "integrated", "estimated")
        assert x["watts"] > 0 and x["energy_j"] > 0
    assert {c["model"] for c in doc["capacity"]} == set(BUILTIN_PROFILES)
    for c in doc["capacity"]:
        assert c["device"] == "cpu" and c["flops_dtype"] == "fp32" and c["bytes_kernel"] == "copy"
        assert c["decode_tokens_per_s"] > 0 and isinstance(c["cost_per_mtok_decode_micro"], int)
    store = Store(db)
    saved = store.latest_bench()
    store.close()
    assert len(saved) == 4 and saved[0]["device"] == "cpu" and saved[0]["spread"] is not None
    versions = json.loads(saved[0]["versions"])
    assert versions["numpy"] and "python" in versions and "meterd" in versions


def test_table_output_and_one_model(tmp_path, no_nvml):
    r = run("--tiny", "--db", str(tmp_path / "m.db"), "--model", "gpt-oss-120b", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "gemm" in r.output and "triad" in r.output and "capacity" in r.output
    assert "gpt-oss-120b" in r.output and "llama-3.1-8b" not in r.output


def test_gpu_node_without_cupy_benchmarks_the_cpu_and_says_why(tmp_path, fake_nvml):
    fake_nvml([h100()])
    r = run("--tiny", "--json", "--db", str(tmp_path / "m.db"))
    doc = json.loads(r.output)
    assert {x["device"] for x in doc["results"]} == {"cpu"}
    assert any("CuPy is not installed" in n for n in doc["notes"])


def test_a_gpu_alone_without_cupy_is_an_error_not_an_empty_table(tmp_path, fake_nvml):
    fake_nvml([h100()])
    r = CliRunner().invoke(main, ["bench", "--tiny", "--db", str(tmp_path / "m.db"), "--device", "0"])
    assert r.exit_code != 0 and "nothing to benchmark: GPU kernels skipped: CuPy is not installed" in r.output


def test_clear_errors(tmp_path, no_nvml):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = CliRunner().invoke(main, ["bench", "--tiny", "--db", str(blocker / "m.db")])
    assert r.exit_code != 0 and f"cannot create the directory {blocker} for the agent store" in r.output
    r = CliRunner().invoke(main, ["bench", "--tiny", "--db", str(tmp_path / "m.db"), "--model", "nope"])
    assert r.exit_code != 0 and "unknown model 'nope'" in r.output
    r = CliRunner().invoke(main, ["bench", "--tiny", "--db", str(tmp_path / "m.db"), "--device", "gpu7"])
    assert r.exit_code != 0 and "no device 'gpu7'" in r.output
