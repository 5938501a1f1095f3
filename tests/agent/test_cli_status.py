import json
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from meterd import __version__
from meterd.agent.cli import main
from tests.fakes.nvml import a100, h100


def run(*args):
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return r


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_status_json_lists_gpus_and_cpu_with_sources(fake_nvml, clock):
    fake = fake_nvml([h100(curve=[(0, 300.0)]), a100(curve=[(0, 200.0)])])
    fake.lose(1)
    r = run("status", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert set(doc) >= {"node", "time", "devices"}
    assert doc["time"].endswith("Z")
    gpu0, gpu1, cpu = doc["devices"]
    assert gpu0["id"] == fake.gpus[0].uuid and gpu0["kind"] == "gpu" and gpu0["state"] == "ok"
    assert gpu0["power_w"] == 300.0 and gpu0["power_source"] == "instant"
    assert gpu0["energy_source"] == "counter"
    assert gpu0["mem_total_bytes"] == fake.gpus[0].mem_total_bytes
    assert gpu1["state"] == "lost" and gpu1["power_w"] is None
    assert cpu["kind"] == "cpu" and isinstance(cpu["util_pct"], float)
    assert cpu["power_source"] in ("counter", "estimated")
    for key in ("power_w", "power_source", "energy_j", "energy_source", "util_pct",
                "mem_used_bytes", "mem_total_bytes", "state", "name", "id", "kind"):
        assert key in cpu


def test_status_without_nvml_lists_the_cpu_and_says_why(no_nvml):
    r = run("status", "--json")
    doc = json.loads(r.output)
    assert [d["kind"] for d in doc["devices"]] == ["cpu"]
    assert "NVML not available" in doc["gpu_note"]
    cpu = doc["devices"][0]
    assert isinstance(cpu["power_w"], float)
    assert cpu["power_source"] in ("counter", "estimated")


def test_status_table_shows_every_device(fake_nvml):
    fake_nvml([h100(curve=[(0, 321.0)])])
    r = run("status")
    assert r.exit_code == 0
    assert "H100" in r.output and "321.0" in r.output and "cpu" in r.output


def test_status_watch_json_refreshes_until_interrupted():
    """A real process: --watch prints a JSON line per refresh and exits cleanly on Ctrl-C.

    The child gets SIGINT's default disposition back: a pytest started as a background job of a
    non-interactive shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    (as for any process a terminal's Ctrl-C could not reach)."""
    with subprocess.Popen([sys.executable, "-m", "meterd.agent.cli", "status", "--json", "--watch", "0.2"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as p:
        try:
            lines = [p.stdout.readline() for _ in range(3)]
            p.send_signal(signal.SIGINT)
            p.wait(timeout=10)
        finally:
            p.kill()
    assert all(json.loads(l)["devices"] for l in lines)
    assert p.returncode == 0


def test_every_command_has_help_and_is_in_the_readme():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    import click
    ctx = click.Context(main)
    names = main.list_commands(ctx)
    assert {"status", "agent", "windows", "config", "bench", "probe", "report", "collector"} <= set(names)
    for name in names:
        cmd = main.get_command(ctx, name)
        assert cmd.help, f"meter {name} has no help text"
        assert f"meter {name}" in readme, f"meter {name} is not documented in README.md"
