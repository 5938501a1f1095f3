"""What the optional OTLP export (`meterd[otlp]`) costs the agent in memory: peak RSS (VmHWM) of
`meter agent` over 8 fake GPUs at 1 Hz in three runs of the same length, in the same run of this
script:

- **without the SDK**: the OpenTelemetry packages made unimportable in the agent's process, as
  on a node that installed plain `meterd` (the baseline);
- **SDK installed, no [otlp] endpoint**: what every other node runs; the agent must not import
  OpenTelemetry at all, so this equals the baseline;
- **exporting** to a loopback OTLP/HTTP receiver this script serves (it answers 200 to every
  POST and counts them), every 2 s: what the export itself costs.

    python bench/otlp_rss.py [--seconds 30] [--warmup 10]

Needs the SDK in this interpreter (`pip install -e '.[otlp]'` or the test extra). Prints each
run's peak RSS and CPU, and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_overhead import ROOT, measure  # noqa: E402

# Run the fake-GPU agent with every opentelemetry module unimportable (as if not installed).
WITHOUT_SDK = """
import runpy, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Absent())
sys.argv = ["meter", *sys.argv[1:]]
runpy.run_module("tests.fakes.run_meter", run_name="__main__")
"""

RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
posts = 0
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        global posts
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        posts += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
        sys.stderr.write(f"{posts}\\n")
        sys.stderr.flush()
    def log_message(self, *a):
        pass
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="steady-state measurement length")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--gpus", type=int, default=8)
    a = ap.parse_args()
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        raise SystemExit("bench/otlp_rss.py needs the OpenTelemetry SDK here: pip install -e '.[otlp]'")
    # The baseline's hook works: OpenTelemetry cannot be imported under it.
    probe = WITHOUT_SDK.replace('runpy.run_module("tests.fakes.run_meter", run_name="__main__")', "import opentelemetry")
    if subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True).returncode == 0:
        raise SystemExit("the baseline's hook did not hide the OpenTelemetry SDK")
    total = a.warmup + a.seconds + 30
    env = dict(os.environ, METERD_FAKE_GPUS=str(a.gpus), METERD_FAKE_WATTS="450")
    with tempfile.TemporaryDirectory() as tmp:
        def agent(db: str, *extra: str) -> list[str]:
            return ["agent", "--db", f"{tmp}/{db}", "--interval", "1", "--window", "60",
                    "--duration", str(total), *extra]

        base = measure([sys.executable, "-c", WITHOUT_SDK, *agent("a.db")], a.seconds, a.warmup, env=env)
        idle = measure([sys.executable, "-m", "tests.fakes.run_meter", *agent("b.db")], a.seconds, a.warmup, env=env)
        rx = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        try:
            port = int(rx.stdout.readline())
            cfg = Path(tmp) / "otlp.toml"
            cfg.write_text(f'[otlp]\nendpoint = "http://127.0.0.1:{port}"\ninterval_s = 2\n')
            on = measure([sys.executable, "-m", "tests.fakes.run_meter", *agent("c.db", "--config", str(cfg))],
                         a.seconds, a.warmup, env=env)
        finally:
            rx.terminate()
            _, rx_err = rx.communicate(timeout=10)
        posts = len(rx_err.split())
    print(f"steady state {a.seconds:.0f} s after {a.warmup:.0f} s warm-up; agent: {a.gpus} fake GPUs at 1 Hz")
    print(f"{'':34} {'peak RSS MB':>12} {'% of a core':>12} {'vs baseline':>12}")
    for name, m in (("without the SDK (baseline)", base), ("SDK installed, no endpoint", idle),
                    (f"exporting, interval 2 s ({posts} POSTs)", on)):
        print(f"{name:34} {m['peak_rss_mb']:12.1f} {m['core_pct']:12.3f} {m['peak_rss_mb'] / base['peak_rss_mb']:11.3f}x")
    if posts == 0:
        print("the exporting agent sent nothing:", on["stderr_tail"], file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
