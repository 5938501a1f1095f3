"""Render `meter report --format html` in headless Chromium with no network, and screenshot it.

    python bench/report_screenshot.py [--out DIR]

Builds a demo store (three days of minute windows on 8 GPUs, three models, a bench run for the
roofline), writes the HTML report through the real CLI, and has Debian's ``chromium`` take a
1400×1800 screenshot of the file with every network path closed (no proxy reachable, every host
unresolvable, background networking off). Prints the paths of the HTML and the PNG. Exits 2 with
a reason when chromium is not installed (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from click.testing import CliRunner  # noqa: E402

from meterd.agent.cli import main as meter  # noqa: E402
from meterd.agent.store import Store  # noqa: E402
from report_scale import GPUS, START, build_rollups, load  # noqa: E402

DAYS = 3


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def demo_store(path: Path) -> None:
    store = Store(path)
    try:
        load(store, DAYS * 1440)
        build_rollups(store)
        store.conn.execute("PRAGMA synchronous = FULL")
        rows = []
        for g in range(GPUS):
            dev = f"GPU-{g}"
            rows += [
                {"device": dev, "device_name": "NVIDIA H100 80GB HBM3", "kernel": "gemm", "dtype": "bf16",
                 "value": 6.9e14 - g * 1e13, "unit": "flop/s", "watts": 680.0, "energy_source": "counter"},
                {"device": dev, "device_name": "NVIDIA H100 80GB HBM3", "kernel": "gemv_decode",
                 "dtype": "bf16", "value": 2.9e12 - g * 3e10, "unit": "bytes/s", "watts": 520.0},
            ]
        store.save_bench("demo", "node-1", START - 3600, rows, {"demo": True})
    finally:
        store.close()


def render(out: Path) -> tuple[Path, Path]:
    db = out / "demo.db"
    for f in out.glob("demo.db*"):
        f.unlink()
    demo_store(db)
    html = out / "report.html"
    since, until = "2025-12-01T00:00Z", "2025-12-04T00:00Z"
    r = CliRunner().invoke(meter, ["report", "--db", str(db), "--since", since, "--until", until,
                                   "--format", "html", "--output", str(html)])
    if r.exit_code != 0:
        raise SystemExit(f"meter report failed: {r.output}")
    png = out / "report.png"
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-default-apps", "--disable-extensions",
               # Nothing can be fetched: every name fails to resolve, every proxy is a closed port.
               "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
               f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1400,1800",
               "--hide-scrollbars", html.as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return html, png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="directory for demo.db, report.html, report.png")
    args = ap.parse_args()
    if chromium() is None:
        print("chromium is not installed (Debian: apt-get install chromium): no screenshot", file=sys.stderr)
        raise SystemExit(2)
    out = args.out or Path(tempfile.mkdtemp(prefix="report-html-"))
    out.mkdir(parents=True, exist_ok=True)
    html, png = render(out)
    print(f"html: {html} ({html.stat().st_size:,} bytes)\npng: {png} ({png.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
