"""What the agent costs to run: CPU seconds per minute and peak RSS of `meter agent` sampling
8 fake GPUs (the fake NVML of tests/fakes) and the CPU at 1 Hz, beside CodeCarbon's process
tracker at the same 1 s interval in CPU mode, measured the same way in the same run.

    python bench/agent_overhead.py [--seconds 120] [--warmup 15] [--codecarbon-python PYTHON]

CodeCarbon is not a dependency of meterd: install it in any environment (`pip install
codecarbon`) and pass that interpreter with --codecarbon-python (default: this one, if it can
import codecarbon). CPU time is counted over the steady state only (after --warmup seconds), so
that interpreter start-up and imports are left out for both; peak RSS is the kernel's high-water
mark (VmHWM) at the end. Note the fake NVML runs inside the agent's process, so the agent's
figure includes the fake's own Python work: an upper bound for real NVML.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

CODECARBON_SCRIPT = """
import sys, time, logging
from codecarbon import OfflineEmissionsTracker
t = OfflineEmissionsTracker(country_iso_code="USA", measure_power_secs=1, tracking_mode="process",
                            force_mode_cpu_load=True, gpu_ids=[], save_to_file=False, log_level="error")
t.start()
time.sleep(float(sys.argv[1]))
t.stop()
"""


def measure(cmd: list[str], seconds: float, warmup: float, env: dict | None = None, cwd: Path = ROOT) -> dict:
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(p.pid)
    try:
        time.sleep(warmup)
        c0 = proc.cpu_times()
        t0 = time.monotonic()
        time.sleep(seconds)
        c1 = proc.cpu_times()
        t1 = time.monotonic()
        hwm_kb = 0
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm_kb = int(line.split()[1])
        threads = proc.num_threads()
    finally:
        p.terminate()
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
    cpu_s = (c1.user - c0.user) + (c1.system - c0.system)
    return {"cpu_s_per_min": cpu_s / (t1 - t0) * 60, "core_pct": cpu_s / (t1 - t0) * 100,
            "peak_rss_mb": hwm_kb / 1024, "threads": threads, "stderr_tail": err[-500:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="steady-state measurement length")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--codecarbon-python", default=sys.executable)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, METERD_FAKE_GPUS=str(a.gpus), METERD_FAKE_WATTS="450")
        agent_cmd = [sys.executable, "-m", "tests.fakes.run_meter", "agent", "--db", f"{tmp}/m.db",
                     "--interval", "1", "--window", "60", "--duration", str(a.warmup + a.seconds + 30)]
        ours = measure(agent_cmd, a.seconds, a.warmup, env=env)
        total = a.warmup + a.seconds + 30
        cc_cmd = [a.codecarbon_python, "-c", CODECARBON_SCRIPT, str(total)]
        cc = measure(cc_cmd, a.seconds, a.warmup, cwd=Path(tmp))

    print(f"steady state {a.seconds:.0f} s after {a.warmup:.0f} s warm-up; agent: {a.gpus} fake GPUs + CPU at 1 Hz")
    print(f"{'':12} {'CPU s/min':>10} {'% of a core':>12} {'peak RSS MB':>12} {'threads':>8}")
    for name, m in (("meterd", ours), ("codecarbon", cc)):
        print(f"{name:12} {m['cpu_s_per_min']:10.3f} {m['core_pct']:12.3f} {m['peak_rss_mb']:12.1f} {m['threads']:8d}")
    if cc["cpu_s_per_min"] > 0:
        print(f"ratio meterd/codecarbon: CPU {ours['cpu_s_per_min'] / cc['cpu_s_per_min']:.2f}x, "
              f"RSS {ours['peak_rss_mb'] / cc['peak_rss_mb']:.2f}x")
    budget_ok = ours["core_pct"] <= 0.5 and ours["peak_rss_mb"] <= 60
    print(f"budget (<= 0.5% of a core, <= 60 MB RSS): {'met' if budget_ok else 'NOT met'}")
    if cc["peak_rss_mb"] == 0 or "Error" in cc["stderr_tail"]:
        print("codecarbon run looked broken:", cc["stderr_tail"], file=sys.stderr)


if __name__ == "__main__":
    main()
