"""The HTML report: one self-contained page (inline SVG, nothing fetched), and a headless
Chromium screenshot of it with every network path closed (skipped without chromium)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meterd.reports.aggregate import aggregate
from meterd.reports.html import _time_ticks, render_html
from meterd.reports.query import Filters, read_store
from tests.reports.conftest import DAY, HOUR, MON


def test_page_is_self_contained_with_three_charts_and_the_table(fleet):
    def rep(*by):
        return aggregate(read_store(fleet, list(by), Filters()), list(by))

    main = rep("model", "device")
    page = render_html(main, rep("day"), rep("device", "hour"), rep("device", "model"), [],
                       title="t <&>", since="2026-11-23T00:00:00Z")
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3
    assert "t &lt;&amp;&gt;" in page  # escaped
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page) + re.findall(r"url\(([^)]*)\)", page)
    assert refs == [] and "<script" not in page
    assert "no bench results" in page  # the roofline says why it is empty
    assert page.count("<circle") >= 4  # cost points and device-hours
    assert '<td class="n">0.0093</td>' in page  # the total cost, 9,300 micro-units, in USD
    for model in ("a", "b", "(idle)"):
        assert f"<td>{model}</td>" in page


def test_the_power_chart_tells_two_nodes_gpu_0_apart():
    """In a fleet every node has a GPU-0: the chart's points are by node and device, each its own
    colour and legend entry, named by node; with one node the legend names the device alone."""
    from meterd.reports.aggregate import Report
    from meterd.reports.html import COLOURS, power_chart

    def row(node, watts, tps):
        return {"node": node, "device": "GPU-0", "hour": "2026-11-23T00:00:00Z", "avg_power_w": watts,
                "tokens_per_s": tps}

    two = power_chart(Report(by=["node", "device", "hour"], rows=[row("n1", 300.0, 10.0), row("n2", 600.0, 40.0)],
                             totals={}, currency="USD", per_model=False))
    assert "n1 GPU-0" in two and "n2 GPU-0" in two
    assert f'fill="{COLOURS[0]}" fill-opacity' in two and f'fill="{COLOURS[1]}" fill-opacity' in two
    one = power_chart(Report(by=["node", "device", "hour"], rows=[row("n1", 300.0, 10.0)], totals={},
                             currency="USD", per_model=False))
    assert "</i>GPU-0</span>" in one and "n1 GPU-0" not in one


def test_time_ticks_fall_on_whole_hours_and_days():
    assert _time_ticks(MON + 10, MON + 5 * HOUR) == [MON + HOUR * i for i in range(1, 6)]
    ticks = _time_ticks(MON, MON + 30 * DAY)
    assert all(t % DAY == 0 for t in ticks) and len(ticks) <= 6


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="chromium is not installed (Debian: apt-get install chromium)")
def test_headless_chromium_renders_the_page_offline(tmp_path):
    script = Path(__file__).parents[2] / "bench" / "report_screenshot.py"
    r = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1400, 1800)
    assert len(png) > 50_000  # charts and a table, not a blank page


def test_roofline_points_outside_the_plot_are_noted():
    from meterd.reports.aggregate import Report
    from meterd.reports.html import roofline_chart

    cap = [{"device": "GPU-0", "model": "llama-3.1-8b", "flops_per_s": 1e15, "bytes_per_s": 3e12,
            "decode_intensity": 50.0, "active_params": 8e9}]

    def points(tokens_per_s):
        return Report(by=["device", "model"], currency="USD", per_model=True, totals={}, rows=[
            {"device": "GPU-0", "model": "llama-3.1-8b", "tokens": tokens_per_s * 100, "seconds": 100.0}])

    inside = roofline_chart(cap, points(10_000))  # 1.6e14 FLOP/s: under the roof
    assert "Outside the plot" not in inside
    # 1e6 tokens/s of an 8B model: 1.6e16 FLOP/s, 16x the measured peak (a wrong profile or count)
    page = roofline_chart(cap, points(1_000_000))
    assert "Outside the plot, drawn at its top edge: llama-3.1-8b on GPU-0 at 16PFLOP/s" in page
    (cy,) = re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', page)
    top = min(float(v) for v in re.findall(r'<rect x="\d+" y="(\d+)"', page))
    assert float(cy) >= top  # drawn on the plot, at its edge, not above it
