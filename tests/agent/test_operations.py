"""Operating the agent: systemd notify, signals, reload, the Prometheus endpoint, the unit file."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meterd.agent.metrics import AgentCollector, AgentState, MetricsServer
from meterd.agent.systemd import Notifier

ROOT = Path(__file__).parents[2]


def meter(*args, env=None, gpus=2):
    e = dict(os.environ, METERD_FAKE_GPUS=str(gpus), METERD_FAKE_WATTS="250", PYTHONUNBUFFERED="1")
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "tests.fakes.run_meter", *args], cwd=ROOT, env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rows(db, sql):
    try:
        c = sqlite3.connect(db)
        try:
            c.row_factory = sqlite3.Row
            return [dict(r) for r in c.execute(sql)]
        finally:
            c.close()
    except sqlite3.OperationalError:
        return []


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.2)
    yield s, str(path)
    s.close()


def drain(sock, until, timeout_s=30.0):
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(got):
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    return got


def test_notifier_speaks_the_protocol_over_a_real_datagram_socket(notify_socket):
    sock, path = notify_socket
    mono = [0.0]
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, monotonic=lambda: mono[0])
    n.notify_ready("metering 3 device(s)")
    n.notify_ready()  # once only
    n.maybe_ping()
    mono[0] = 0.5
    n.maybe_ping()  # too soon: half of 2 s has not passed
    mono[0] = 1.0
    n.maybe_ping()
    n.stopping()
    n.close()
    got = drain(sock, lambda g: len(g) >= 4, timeout_s=2)
    assert got == ["READY=1\nSTATUS=metering 3 device(s)", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]
    assert Notifier(env={}).send("READY=1") is False  # outside systemd: a no-op


def test_agent_sends_ready_after_first_sample_then_watchdog(notify_socket, tmp_path):
    sock, path = notify_socket
    db = tmp_path / "m.db"
    with meter("agent", "--db", str(db), "--interval", "0.2", "--window", "1",
               env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}) as p:
        try:
            got = drain(sock, lambda g: "READY=1" in "".join(g) and sum("WATCHDOG=1" in m for m in g) >= 3)
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)
        finally:
            p.kill()
            p.stderr.close()
    assert got[0].startswith("READY=1")
    assert sum("WATCHDOG=1" in m for m in got) >= 3
    assert p.returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_window_commits_a_partial_window_and_exits_0(tmp_path, sig):
    db = tmp_path / "m.db"
    with meter("agent", "--db", str(db), "--interval", "0.25", "--window", "3600") as p:
        try:
            wait_for(lambda: rows(db, "SELECT name FROM sqlite_master WHERE name = 'windows'"), what="the store")
            time.sleep(2.0)  # mid-window: the window is an hour long
            t0 = time.monotonic()
            p.send_signal(sig)
            p.wait(timeout=10)
            took = time.monotonic() - t0
        finally:
            p.kill()
            err = p.stderr.read()
            p.stderr.close()
    assert p.returncode == 0, err
    assert took < 10
    ws = rows(db, "SELECT * FROM windows")
    assert len(ws) == 3  # 2 GPUs and the CPU, one partial hour each
    for w in ws:
        assert w["partial"] == 1 and "shutdown" in json.loads(w["flags"])
        assert 1.0 < w["end"] - w["start"] < 3600
    gpu = [w for w in ws if w["device"].startswith("GPU-")]
    assert len(gpu) == 2
    # the GPUs carry the node's capex; the CPU's few joules may cost less than a micro-dollar
    assert all(w["energy_source"] == "counter" and w["energy_j"] > 0 and w["cost_micro"] > 0 for w in gpu)
    assert "stopped by signal" in err


def test_sighup_keeps_the_old_config_when_the_new_one_is_bad_and_applies_a_good_one(tmp_path):
    db, cfg = tmp_path / "m.db", tmp_path / "meterd.toml"
    cfg.write_text('window_s = 1\ninterval_s = 0.25\n[prices]\nenergy_per_kwh = 0.10\n')
    with meter("agent", "--config", str(cfg), "--db", str(db)) as p:
        try:
            wait_for(lambda: len(rows(db, "SELECT 1 FROM windows")) >= 3, what="first windows")
            cfg.write_text('window_s = 1\n[prices]\nenergy_per_kwh = "cheap"\n')
            p.send_signal(signal.SIGHUP)
            time.sleep(1.5)
            assert p.poll() is None  # still running
            hashes_bad = {w["config_hash"] for w in rows(db, "SELECT config_hash FROM windows")}
            assert len(hashes_bad) == 1  # the old config goes on
            cfg.write_text('window_s = 1\ninterval_s = 0.25\n[prices]\nenergy_per_kwh = 0.30\n')
            p.send_signal(signal.SIGHUP)
            wait_for(lambda: len({w["config_hash"] for w in rows(db, "SELECT config_hash FROM windows")}) == 2,
                     what="windows under the new config")
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)
        finally:
            p.kill()
            err = p.stderr.read()
            p.stderr.close()
    assert p.returncode == 0, err
    assert "config reload refused, keeping the running config: prices.energy_per_kwh: expected a number" in err
    assert "takes effect at the next window" in err
    # every window is wholly under one config: the switch happened on a window boundary
    ws = rows(db, "SELECT start, config_hash FROM windows WHERE device = 'cpu' ORDER BY start")
    switch = [i for i in range(1, len(ws)) if ws[i]["config_hash"] != ws[i - 1]["config_hash"]]
    assert len(switch) == 1
    assert float(ws[switch[0]]["start"]).is_integer()  # a whole-second boundary


def test_prometheus_endpoint_parses_and_carries_the_families():
    state = AgentState(currency="EUR", store_path=None, outbox_depth=lambda: (4, 1))
    state.add_windows([{
        "device": "GPU-1", "device_name": "H100", "energy_j": 600.0, "avg_power_w": 600.0, "util_pct": 50.0,
        "prompt_tokens": 1000, "completion_tokens": 500, "cost_micro": 3000,
    }])
    state.last_sample_wall = time.time() - 1
    state.gaps = {"tokens:vllm": 2}
    server = MetricsServer(state, "127.0.0.1:0")
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    finally:
        server.close()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"meterd_device_power_watts", "meterd_device_utilization_ratio", "meterd_device_energy_joules",
            "meterd_device_tokens", "meterd_device_cost", "meterd_device_window_cost",
            "meterd_device_window_cost_per_mtok", "meterd_last_sample_age_seconds", "meterd_probe_gaps",
            "meterd_windows_committed", "meterd_store_size_bytes", "meterd_outbox_windows"} <= set(fams)
    assert fams["meterd_device_energy_joules"].type == "counter"
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert value[("meterd_device_utilization_ratio", (("device", "GPU-1"), ("name", "H100")))] == 0.5
    assert value[("meterd_device_window_cost_per_mtok", (("currency", "EUR"), ("device", "GPU-1"), ("name", "H100")))] == 2.0
    assert value[("meterd_probe_gaps_total", (("probe", "tokens:vllm"),))] == 2
    assert value[("meterd_outbox_windows", (("state", "pending"),))] == 4
    assert 0.5 < value[("meterd_last_sample_age_seconds", ())] < 30


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    unit = (ROOT / "deploy/meterd.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "PrivateDevices=yes" not in unit
    for needed in ("ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
                   "CapabilityBoundingSet=", "LoadCredential=", "DeviceAllow=/dev/nvidiactl",
                   "DeviceAllow=char-nvidia-caps", "StateDirectory=meterd", "Restart=on-failure"):
        assert needed in unit, needed
    # verify checks that ExecStart exists: point it at this installation's `meter`
    meter_bin = shutil.which("meter") or str(Path(sys.executable).parent / "meter")
    local = tmp_path / "meterd.service"
    local.write_text(unit.replace("/usr/local/bin/meter", meter_bin))
    r = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_a_second_agent_on_the_same_store_is_refused_and_kill_9_leaves_no_stale_lock(tmp_path):
    db = tmp_path / "m.db"
    args = ("agent", "--db", str(db), "--interval", "0.25", "--window", "1")
    with meter(*args) as first:
        try:
            wait_for(lambda: len(rows(db, "SELECT 1 FROM windows")) >= 3, what="first windows")
            with meter(*args, "--duration", "2") as second:
                _, err = second.communicate(timeout=30)
            assert second.returncode != 0
            assert f"another agent (pid {first.pid}) is already metering into {db}" in err
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            first.kill()
            first.stderr.close()
    with meter(*args, "--duration", "1") as third:  # the kernel dropped the dead agent's lock
        _, err = third.communicate(timeout=30)
    assert third.returncode == 0, err
