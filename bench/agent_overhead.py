"""What the agent costs to run: CPU seconds per minute and peak RSS of `meter agent` sampling
8 fake GPUs (the fake NVML of tests/fakes) and the CPU at 1 Hz, alone and with one vLLM-sized
token source (two models, vLLM's histogram families with their buckets, as prometheus_client
writes them: about 100 kB a scrape, served by a separate process so its work is not counted),
scraped on its own interval (a quarter of the window, and at each window's close) and, for
comparison, every round, beside CodeCarbon's process tracker at the
same 1 s interval in CPU mode, all measured the same way in the same run.

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


# vLLM's histogram families (vllm/v1/metrics/loggers.py) and their bucket bounds, per model.
_VLLM_HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                                         2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0],
    "vllm:time_per_output_token_seconds": [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                                           2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0],
    "vllm:inter_token_latency_seconds": [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                                         2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0],
    **{f"vllm:{n}_seconds": [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                             120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
       for n in ("e2e_request_latency", "request_queue_time", "request_inference_time",
                 "request_prefill_time", "request_decode_time")},
    **{f"vllm:{n}": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 131072]
       for n in ("request_prompt_tokens", "request_generation_tokens", "request_params_max_tokens",
                 "iteration_tokens_total", "request_max_num_generation_tokens")},
    "vllm:request_params_n": [1, 2, 5, 10, 20],
    **{f"vllm:{n}": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]
       for n in ("request_prefill_kv_computed_tokens", "request_max_num_generation_tokens_requested")},
    **{f"vllm:{n}_seconds": [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0,
                             30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0]
       for n in ("kv_block_lifetime", "kv_block_idle_before_evict", "kv_block_reuse_gap")},
}


def vllm_page(models=("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct")) -> str:
    """A vLLM metrics page with two models, as prometheus_client writes it."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    counters = {n: Counter(n, n, labels, registry=reg) for n in (
        "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:prompt_tokens_cached", "vllm:prefix_cache_hits",
        "vllm:prefix_cache_queries", "vllm:num_preemptions", "vllm:request_success")}
    gauges = [Gauge(n, n, labels, registry=reg) for n in (
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc", "vllm:lora_requests_info")]
    hists = {n: Histogram(n, n, labels, buckets=b, registry=reg) for n, b in _VLLM_HISTOGRAMS.items()}
    for i, m in enumerate(models):
        for k, c in enumerate(counters.values()):
            c.labels(m, "0").inc(123_456 * (i + 1) + k)
        for g in gauges:
            g.labels(m, "0").set(0.5)
        for h in hists.values():
            for v in (0.02, 0.3, 4.0, 250.0, 3000.0):
                h.labels(m, "0").observe(v)
    return generate_latest(reg).decode()


SERVE_SCRIPT = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
body = open(sys.argv[1], "rb").read()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


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
        page = Path(tmp) / "vllm.txt"
        page.write_text(vllm_page())
        server = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(page)], stdout=subprocess.PIPE, text=True)
        try:
            port = int(server.stdout.readline())
            src_cmd = [sys.executable, "-m", "tests.fakes.run_meter", "agent", "--db", f"{tmp}/s.db",
                       "--interval", "1", "--window", "60", "--duration", str(a.warmup + a.seconds + 30),
                       "--source", f"vllm=http://127.0.0.1:{port}/metrics"]
            with_src = measure(src_cmd, a.seconds, a.warmup, env=env)
            every = [*src_cmd[:-2], "--config", str(_every_round_config(Path(tmp))), *src_cmd[-2:]]
            every_round = measure(every, a.seconds, a.warmup, env=env)
        finally:
            server.terminate()
            server.wait(timeout=10)
        total = a.warmup + a.seconds + 30
        cc_cmd = [a.codecarbon_python, "-c", CODECARBON_SCRIPT, str(total)]
        cc = measure(cc_cmd, a.seconds, a.warmup, cwd=Path(tmp))

    print(f"steady state {a.seconds:.0f} s after {a.warmup:.0f} s warm-up; agent: {a.gpus} fake GPUs + CPU at 1 Hz; "
          f"vLLM-sized page: {len(page_text := vllm_page()):,} bytes, {page_text.count(chr(10)):,} lines")
    print(f"{'':28} {'CPU s/min':>10} {'% of a core':>12} {'peak RSS MB':>12} {'threads':>8}")
    rows = (("meterd", ours), ("meterd + vLLM source", with_src), ("  (scraped every round)", every_round),
            ("codecarbon", cc))
    for name, m in rows:
        print(f"{name:28} {m['cpu_s_per_min']:10.3f} {m['core_pct']:12.3f} {m['peak_rss_mb']:12.1f} {m['threads']:8d}")
    if cc["cpu_s_per_min"] > 0:
        for name, m in rows[:3]:
            print(f"ratio {name.strip()}/codecarbon: CPU {m['cpu_s_per_min'] / cc['cpu_s_per_min']:.2f}x, "
                  f"RSS {m['peak_rss_mb'] / cc['peak_rss_mb']:.2f}x")
    for name, m in rows[:2]:
        ok = m["core_pct"] <= 0.5 and m["peak_rss_mb"] <= 60
        print(f"budget (<= 0.5% of a core, <= 60 MB RSS), {name}: {'met' if ok else 'NOT met'}")
    if cc["peak_rss_mb"] == 0 or "Error" in cc["stderr_tail"]:
        print("codecarbon run looked broken:", cc["stderr_tail"], file=sys.stderr)


def _every_round_config(tmp: Path) -> Path:
    """The same agent scraping its token source every round (tokens_interval_s = the interval)."""
    p = tmp / "every.toml"
    p.write_text("tokens_interval_s = 1.0\n")
    return p


if __name__ == "__main__":
    main()
