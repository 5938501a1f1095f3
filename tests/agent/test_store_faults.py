"""The store's faults don't stop the meter: the real agent in a subprocess, its store on a small
tmpfs that fills up while it runs, or held by another process's BEGIN EXCLUSIVE. The agent
stays up, holds its windows in memory, says so (log, metrics), and commits every one of them,
in order, once the store takes writes again; the store's integrity check is ok.

The tmpfs test mounts a filesystem, so it needs root: it is skipped otherwise, except in CI
(``CI`` set), where it must run."""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from meterd.agent.store import Store
from meterd.agent.store_writer import StoreWriter
from tests.agent.test_agent_restart import ROOT, meter, windows
from tests.agent.test_push_durable import free_port


def metric(port, name):
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_until(cond, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def assert_tiled(ws, devices):
    """Per device: consecutive windows, each starting where the last ended: no time lost,
    none doubled."""
    for dev in devices:
        mine = sorted((w for w in ws if w["device"] == dev), key=lambda w: w["start"])
        assert len(mine) >= 5
        for a, b in zip(mine, mine[1:]):
            assert b["start"] == pytest.approx(a["end"], abs=1e-6), (dev, a["start"], a["end"], b["start"])


def integrity(db):
    c = sqlite3.connect(db)
    try:
        return c.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        c.close()


def run_agent(db, mport):
    return meter("agent", "--db", str(db), "--window", "1", "--interval", "0.2",
                 "--metrics", f"127.0.0.1:{mport}", gpus=2)


def n_windows(db):
    try:
        return len(windows(db))
    except sqlite3.Error:
        return 0


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    why = None
    if os.geteuid() != 0:
        why = "needs root to mount a tmpfs"
    else:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            why = f"mount -t tmpfs failed: {r.stderr.strip()}"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the full-disk test: {why}")
        pytest.skip(why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(directory):
    """Fill the filesystem: a file grown until the disk says no, down to the last byte."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * size) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    return path


def meter_status(state_dir):
    env = dict(os.environ, STATE_DIRECTORY=str(state_dir), METERD_FAKE_GPUS="2")
    r = subprocess.run([sys.executable, "-m", "tests.fakes.run_meter", "status", "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["agent"]


def test_a_store_on_a_full_disk_keeps_the_meter_running_and_loses_nothing(small_tmpfs):
    db = small_tmpfs / "meterd.db"  # the default store under STATE_DIRECTORY, as `meter status` reads it
    mport = free_port()
    with run_agent(db, mport) as agent:
        try:
            wait_until(lambda: n_windows(db) >= 9, 60, "first windows")
            filler = fill(small_tmpfs)
            wait_until(lambda: (metric(mport, "meterd_store_pending_windows") or 0) >= 6, 30,
                       "windows held in memory while the disk is full")
            assert agent.poll() is None
            assert metric(mport, "meterd_store_write_errors_total") >= 1
            assert metric(mport, "meterd_store_writable") == 0
            agent_state = meter_status(small_tmpfs)
            assert agent_state["store"] == "failing" and "disk holding the store is full" in agent_state["reason"]
            assert agent_state["pending_windows"] >= 6 and agent_state["pid"] == agent.pid
            held = n_windows(db)
            time.sleep(2)
            assert agent.poll() is None, "the agent died on a full disk"
            filler.unlink()  # space again
            wait_until(lambda: metric(mport, "meterd_store_pending_windows") == 0, 90,
                       "held windows committed after space came back")
            assert metric(mport, "meterd_store_writable") == 1
            assert n_windows(db) > held + 6
            assert meter_status(small_tmpfs)["store"] == "ok"
        finally:
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert "the store refuses writes: the disk holding the store is full" in err
    assert "the store takes writes again" in err
    assert err.count("the store refuses writes") <= 3  # once per change, not every round
    assert "Traceback" not in err
    assert_tiled(windows(db), {w["device"] for w in windows(db)})
    assert integrity(db) == "ok"


def test_a_store_locked_by_another_process_for_15_s_keeps_the_meter_running(tmp_path):
    db = tmp_path / "m.db"
    mport = free_port()
    with run_agent(db, mport) as agent:
        try:
            wait_until(lambda: n_windows(db) >= 9, 60, "first windows")
            locker = subprocess.Popen(
                [sys.executable, "-c",
                 "import sqlite3, sys, time\n"
                 "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                 "c.execute('BEGIN EXCLUSIVE')\n"
                 "print('locked', flush=True)\n"
                 "time.sleep(15)\n"
                 "c.execute('COMMIT')\n", str(db)],
                stdout=subprocess.PIPE, text=True)
            assert locker.stdout.readline().strip() == "locked"
            t0 = time.monotonic()
            wait_until(lambda: (metric(mport, "meterd_store_pending_windows") or 0) >= 6, 14,
                       "windows held while the store is locked")
            assert metric(mport, "meterd_store_writable") == 0
            locker.wait(timeout=30)
            locker.stdout.close()
            assert time.monotonic() - t0 >= 10 and agent.poll() is None
            wait_until(lambda: metric(mport, "meterd_store_pending_windows") == 0, 90,
                       "held windows committed after the lock went")
        finally:
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert "another process holds the store locked" in err and "Traceback" not in err
    ws = windows(db)
    assert_tiled(ws, {w["device"] for w in ws})
    assert integrity(db) == "ok"


# -- the writer alone, on a real store held by a real lock ------------------------------------


def _row(start, device="g"):
    w = {"node": "n", "device": device, "device_name": "G", "start": start, "end": start + 1.0,
         "energy_j": 10.0, "energy_source": "counter", "avg_power_w": 10.0, "util_pct": None,
         "prompt_tokens": 0, "completion_tokens": 0, "cost_capex_micro": 1, "cost_energy_micro": 0,
         "cost_opex_micro": 0, "cost_micro": 1, "cost_prompt_micro": 0, "cost_completion_micro": 0,
         "currency": "USD", "partial": 0, "gap_s": 0.0, "flags": "[]", "config_hash": "h",
         "agent_version": "t", "event_id": f"e{start}"}
    return w, []


def test_the_writer_holds_windows_while_locked_and_commits_them_in_order(tmp_path, caplog):
    store = Store(tmp_path / "m.db")
    store.conn.execute("PRAGMA busy_timeout = 50")
    now = {"t": 0.0}
    changes = []
    writer = StoreWriter(store, max_pending=100, mono=lambda: now["t"], on_change=lambda s: changes.append(s.state))
    other = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            writer.put([_row(float(i))])
            now["t"] += 100.0  # past any backoff
            assert writer.flush() == 0
    assert writer.status.pending_windows == 5 and writer.status.state == "failing"
    assert writer.status.write_errors_total == 5
    assert sum("refuses writes" in r.message for r in caplog.records) == 1  # once per change
    other.execute("COMMIT")
    other.close()
    now["t"] += 120.0
    writer.put([_row(5.0)])
    assert writer.flush() == 6
    assert writer.status.pending_windows == 0 and changes == ["failing", "ok"]
    assert [w["start"] for w in store.windows()] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    store.close()


def test_the_writer_backs_off_and_drops_the_oldest_at_its_bound(tmp_path, caplog):
    store = Store(tmp_path / "m.db")
    store.conn.execute("PRAGMA busy_timeout = 10")
    now = {"t": 0.0}
    writer = StoreWriter(store, max_pending=3, mono=lambda: now["t"])
    other = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    writer.put([_row(0.0)])
    writer.flush()
    errors = writer.status.write_errors_total
    writer.flush()  # within the backoff: not even tried
    assert writer.status.write_errors_total == errors
    with caplog.at_level(logging.ERROR):
        for i in range(1, 6):
            writer.put([_row(float(i))])
    assert writer.status.pending_windows == 3 and writer.status.dropped_windows_total == 3
    assert sum("store_max_pending_windows" in r.message for r in caplog.records) == 1
    other.execute("COMMIT")
    other.close()
    now["t"] += 1000
    writer.flush()
    assert [w["start"] for w in store.windows()] == [3.0, 4.0, 5.0]
    store.close()


def test_the_store_state_reaches_systemd_status(tmp_path, no_nvml):
    import socket

    from meterd.agent.config import default_config
    from meterd.agent.daemon import Agent
    from meterd.agent.systemd import Notifier
    from meterd.probes.devices import get_devices

    sock_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(5)
    node = get_devices()
    store = Store(tmp_path / "m.db")
    agent = Agent(default_config(node="n"), store, node, notifier=Notifier(env={"NOTIFY_SOCKET": sock_path}))
    agent.writer.note_failure("the disk holding the store is full (database or disk is full)")
    assert sock.recv(4096).decode().startswith("STATUS=store refuses writes: the disk holding the store is full")
    agent.writer.put([_row(0.0, "cpu")])
    agent.writer.flush(force=True)
    assert sock.recv(4096).decode() == "STATUS=metering 1 device(s)"
    agent.shutdown()
    agent.notifier.close()
    sock.close()
    node.close()
    store.close()
