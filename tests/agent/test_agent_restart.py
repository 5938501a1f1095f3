"""The agent killed with SIGKILL mid-run and restarted: no committed window lost or duplicated,
and the time it was down shows."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def meter(*args, gpus=2):
    env = dict(os.environ, METERD_FAKE_GPUS=str(gpus), METERD_FAKE_WATTS="400", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tests.fakes.run_meter", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def windows(db):
    c = sqlite3.connect(db)
    try:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM windows ORDER BY device, start")]
    finally:
        c.close()


def wait_for_windows(db, n, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.exists():
            try:
                if len(windows(db)) >= n:
                    return
            except sqlite3.OperationalError:
                pass  # not created yet
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} windows after {timeout_s} s")


def test_sigkill_then_restart_loses_and_duplicates_nothing(tmp_path):
    db = tmp_path / "m.db"
    args = ("agent", "--db", str(db), "--window", "1", "--interval", "0.25")
    with meter(*args) as first:
        try:
            wait_for_windows(db, 3 * 4)  # 3 devices (2 GPUs + CPU), 4 windows each
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            first.kill()
        first.stderr.close()
    assert first.returncode == -signal.SIGKILL
    before = windows(db)
    time.sleep(1.5)  # the node is unmetered for a while

    with meter(*args, "--duration", "3") as second:
        _, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    after = windows(db)

    # every window committed before the kill is still there, unchanged
    by_key = {(w["device"], w["start"]): w for w in after}
    for w in before:
        assert by_key[(w["device"], w["start"])] == w
    # no duplicates, no overlaps, per device
    keys = [(w["device"], w["start"]) for w in after]
    assert len(keys) == len(set(keys))
    for dev in {w["device"] for w in after}:
        ws = [w for w in after if w["device"] == dev]
        for a, b in zip(ws, ws[1:]):
            assert b["start"] >= a["end"] - 1e-9, (dev, a, b)
        # the downtime shows: a hole between the two runs, and the restart's first window is partial
        last_before = max(w["end"] for w in before if w["device"] == dev)
        first_after = min(w["start"] for w in after if w["device"] == dev and w["start"] >= last_before)
        assert first_after - last_before >= 1.0
        restart_window = next(w for w in ws if w["start"] == first_after)
        assert restart_window["partial"] == 1 and "startup" in restart_window["flags"]
    # and the GPU energy adds up: 400 W over each window's covered time
    for w in after:
        if w["device"].startswith("GPU-") and w["energy_j"] is not None:
            covered = (w["end"] - w["start"]) - w["gap_s"]
            assert w["energy_j"] == pytest.approx(400.0 * covered, rel=0.02, abs=2.0)
