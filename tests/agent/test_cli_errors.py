"""The one error boundary: the `meter` group turns every MeterError into one line on stderr and
exit 1, any other exception into one line pointing to --debug, and never prints a traceback;
`meter status --json` survives every NVML error code on every NVML call."""

import importlib
import json

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.errors import MeterError
from tests.fakes.nvml import ERROR_CODES, FakeMig, FakeNvml, GiB, h100


def meter(*args):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(r, *needles):
    assert r.exit_code == 1, r.output
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    for n in needles:
        assert n in lines[0]


# Every error the code raises on purpose, where its callers import it from.
RAISED_WHERE_USED = [
    ("meterd.reports.query", "QueryError"), ("meterd.reports.query", "EmptyStore"),
    ("meterd.reports.query", "NoData"), ("meterd.reports.query", "CollectorDown"),
    ("meterd.reports.query", "CollectorRefused"), ("meterd.reports.aggregate", "ReportError"),
    ("meterd.agent.timeparse", "TimeParseError"), ("meterd.probes.push", "InvalidUsage"),
    ("meterd.agent.sampler", "TimedOut"), ("meterd.agent.pidlock", "AlreadyRunning"),
    ("meterd.kernels.base", "KernelError"), ("meterd.kernels.base", "KernelUnavailable"),
    ("meterd.kernels.base", "KernelIncorrect"), ("meterd.agent.config", "ConfigError"),
    ("meterd.agent.shipper", "ShipError"), ("meterd.probes.prometheus_servers", "TokenProbeError"),
]


@pytest.mark.parametrize("module,name", RAISED_WHERE_USED)
def test_every_expected_error_is_in_the_one_tree(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, MeterError)
    errors = importlib.import_module("meterd.errors")
    if hasattr(errors, name):
        assert getattr(errors, name) is cls  # one class, re-exported, not a second copy
    assert name in errors.__doc__  # and drawn in the tree


def test_a_meter_error_is_one_line_and_exit_1(no_nvml, tmp_path):
    r = meter("windows", "--db", str(tmp_path / "m.db"), "--since", "last tuesday")
    # --db names a file that does not exist yet: the first error found wins
    assert r.exit_code == 1
    (tmp_path / "m.db").touch()
    r = meter("windows", "--db", str(tmp_path / "m.db"), "--since", "last tuesday")
    assert_one_line_error(r, "'last tuesday' is not a time")
    r = meter("report", "--db", str(tmp_path / "m.db"), "--by", "colour")
    assert_one_line_error(r, "--by colour")
    r = meter("bench", "--tiny", "--db", str(tmp_path / "b.db"), "--model", "nope")
    assert_one_line_error(r, "unknown model 'nope'")


def test_a_store_of_a_newer_schema_is_one_line_for_every_command(no_nvml, tmp_path):
    import sqlite3

    db = tmp_path / "new.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    for args in (("windows",), ("bench", "--tiny"), ("report",), ("outbox",), ("agent", "--duration", "1")):
        r = meter(*args, "--db", str(db))
        assert_one_line_error(r, str(db))


def test_an_unexpected_exception_is_one_line_pointing_to_debug(no_nvml, monkeypatch):
    def broken():
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("meterd.agent.cli.get_devices", broken)
    r = meter("status", "--json")
    assert_one_line_error(r, "ZeroDivisionError", "division by zero", "--debug")
    r = meter("--debug", "status")
    assert isinstance(r.exception, ZeroDivisionError)  # the traceback, for whoever asked


def test_debug_shows_the_traceback_behind_a_meter_error(no_nvml, tmp_path):
    (tmp_path / "m.db").touch()
    r = meter("--debug", "windows", "--db", str(tmp_path / "m.db"), "--since", "soon")
    assert r.exit_code == 1 and "Traceback" in r.stderr and r.stderr.rstrip().splitlines()[-1].startswith("Error: ")


def test_usage_errors_stay_exit_2(no_nvml):
    r = meter("status", "--no-such-flag")
    assert r.exit_code == 2 and "No such option" in r.output and "Traceback" not in r.output
    r = meter("no-such-command")
    assert r.exit_code == 2


# -- NVML: every error code, on every call -----------------------------------------------------


def gpus():
    return [h100(curve=[(0.0, 300.0)], processes=[(4242, GiB)]),
            h100(mig=[FakeMig(1, 0, 10 * GiB, 2 * GiB)])]


def status_json(fake: FakeNvml, monkeypatch) -> dict:
    fake.install(monkeypatch)
    r = meter("status", "--json")
    assert "Traceback" not in r.output
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("code_name", sorted(ERROR_CODES))
def test_status_json_survives_every_nvml_error_code(code_name, monkeypatch, clock):
    code = ERROR_CODES[code_name]

    # 1. every call fails, nvmlInit first: no GPU, and the reason says why
    doc = status_json(FakeNvml(gpus(), clock=clock).fail(code), monkeypatch)
    assert [d["kind"] for d in doc["devices"]] == ["cpu"] and doc.get("gpu_note")

    # 2. NVML starts, then every other call fails: the GPUs (if any could be listed) say why
    doc = status_json(FakeNvml(gpus(), clock=clock).fail(code, except_calls={"nvmlInit", "nvmlShutdown"}),
                      monkeypatch)
    assert doc["devices"][-1]["kind"] == "cpu"
    for d in doc["devices"][:-1]:
        assert d["state"] in ("lost", "error", "unsupported") and d["reason"]

    # 3. the GPUs were found; every call of a sample fails
    fake = FakeNvml(gpus(), clock=clock).fail(code, except_calls=FakeNvml.START_CALLS)
    doc = status_json(fake, monkeypatch)
    states = [d["state"] for d in doc["devices"]]
    assert len(states) == 3 and states[-1] == "ok"
    expected = {"NVML_ERROR_GPU_IS_LOST": "lost", "NVML_ERROR_NOT_SUPPORTED": "unsupported",
                "NVML_ERROR_NO_PERMISSION": "unsupported", "NVML_ERROR_NO_DATA": "unsupported",
                "NVML_ERROR_NOT_FOUND": "unsupported"}.get(code_name, "error")
    if code_name == "NVML_ERROR_FUNCTION_NOT_FOUND":
        expected = "unsupported"  # every function missing: nothing to read, said so
    assert states[:2] == [expected, expected], doc["devices"]
    gpu = doc["devices"][0]
    assert gpu["reason"] and gpu["power_w"] is None
    table = meter("status")  # the table for people says the same, no traceback either
    assert table.exit_code == 0 and "Traceback" not in table.output and expected in table.output


@pytest.mark.parametrize("code_name", ["NVML_ERROR_UNKNOWN", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_TIMEOUT"])
def test_status_json_survives_an_nvml_error_on_any_one_call(code_name, monkeypatch, clock):
    for fn in FakeNvml(gpus()).functions():
        fake = FakeNvml(gpus(), clock=clock).fail(ERROR_CODES[code_name], {fn})
        doc = status_json(fake, monkeypatch)
        assert doc["devices"][-1]["kind"] == "cpu", fn


def test_an_unknown_error_in_a_sample_is_a_reading_with_the_reason(fake_nvml, clock):
    from meterd.probes.devices import get_devices

    fake = fake_nvml(gpus())
    node = get_devices(clock=clock)
    gpu = node.devices[0]
    fake.fail(ERROR_CODES["NVML_ERROR_UNKNOWN"], {"nvmlDeviceGetUtilizationRates"})
    s = gpu.sample()
    assert s.state == "error" and "nvmlDeviceGetUtilizationRates" in s.reason and s.power_w is None
    fake.heal()
    assert gpu.sample().state == "ok"  # not sticky, unlike a GPU that fell off the bus
    node.close()
    assert fake.initialised == 0


def test_a_failed_enumeration_still_shuts_nvml_down(fake_nvml, clock):
    from meterd.probes.nvml import get_gpus

    fake = fake_nvml(gpus())
    fake.fail(ERROR_CODES["NVML_ERROR_UNKNOWN"], {"nvmlDeviceGetCount"})
    gpus_ = get_gpus(clock)
    assert gpus_.devices() == [] and "enumeration failed" in gpus_.reason
    assert fake.initialised == 0
