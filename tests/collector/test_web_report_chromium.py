"""The collector's web report in real headless Chromium (driven over the DevTools protocol,
tests/cdp.py) against a real `meter collector serve` on 127.0.0.1: the report asks for a login,
the login form's cookie is Secure, HttpOnly and SameSite=Strict in the browser's own jar, a
changed filter shows the figures `meter report --collector ... --format json` prints for the
same query, nothing is fetched but the page, and the page runs no script. Skipped without
chromium, except in CI (CI=true), where it must run. METERD_SCREENSHOT_DIR keeps the screenshot."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from meterd.reports.html import _COLS, _cell
from tests.cdp import Browser, chromium
from tests.collector.conftest import T0, minutes, post_batch, wait_healthy
from tests.osenv import _unavailable

DAY = 86400.0


def _meter(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meterd.agent.cli", *args], capture_output=True, text=True,
                          timeout=120, check=check)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def collector(tmp_path):
    """A real collector process with two days of two nodes' windows; (url, read token file)."""
    db = tmp_path / "collector.db"
    n1 = _meter("collector", "token", "create", "n1", "--db", str(db)).stdout.strip().splitlines()[-1]
    n2 = _meter("collector", "token", "create", "n2", "--db", str(db)).stdout.strip().splitlines()[-1]
    reader = _meter("collector", "token", "create", "finance", "--read", "--db", str(db)).stdout.strip().splitlines()[-1]
    token_file = tmp_path / "read.token"
    token_file.write_text(reader + "\n")
    token_file.chmod(0o600)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with subprocess.Popen([sys.executable, "-m", "meterd.agent.cli", "collector", "serve", "--db", str(db),
                           "--listen", f"127.0.0.1:{port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as p:
        try:
            with httpx.Client(base_url=url, timeout=30) as c:
                wait_healthy(c, p, timeout_s=30)
                mix = (("llama-3.1-8b", "acme"), ("qwen-7b", "globex"))
                for day, prompt in ((0, 1200), (1, 3100)):
                    assert post_batch(c, minutes(90, start=T0 + day * DAY, prompt=prompt, models=mix), n1).status_code == 200
                    assert post_batch(c, minutes(60, node="n2", start=T0 + day * DAY + 7200, completion=900 + day,
                                                 models=(("llama-3.1-8b", "acme"),)), n2).status_code == 200
                # a node's token cannot read the page
                assert c.get("/report", headers={"authorization": f"Bearer {n1}"}).status_code == 403
            yield url, token_file, reader
        finally:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def _expected_rows(rep: dict) -> list[list[str]]:
    """The page's table as reports/html.py renders a report: its keys, then the columns."""
    rows = [[(r[k] if r[k] != "" else "(none)") for k in rep["by"]] + [_cell(r[k], f) for k, _, f in _COLS]
            for r in rep["rows"]]
    t = rep["totals"]
    rows.append(["total"] + [""] * (len(rep["by"]) - 1) + [_cell(t[k], f) for k, _, f in _COLS])
    return rows


_TABLE = "[...document.querySelectorAll('table tbody tr')].map(tr => [...tr.cells].map(td => td.textContent))"


def test_log_in_change_a_filter_and_see_the_figures_of_meter_report(collector, tmp_path):
    exe = chromium()
    if exe is None:
        _unavailable("chromium is not installed (Debian: apt-get install chromium)")
    url, token_file, reader = collector
    with Browser(exe) as b:
        b.navigate(f"{url}/report?by=model")
        assert b.js("!!document.querySelector('form[action=\"/login\"] input[name=token]')")
        assert b.js("document.querySelectorAll('table').length") == 0
        b.type_into("input[name=token]", reader)
        b.submit("form[action='/login'] button")
        assert b.js("location.pathname + location.search") == "/report?by=model"
        cookies = {c["name"]: c for c in b.page("Network.getCookies", urls=[url])["cookies"]}
        session = cookies["meterd_session"]
        assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
        assert b.js("document.cookie") == ""  # HttpOnly: no script on the page could read it
        before = b.js(_TABLE)
        assert [r[0] for r in before] [-1] == "total" and len(before) >= 3

        # change the filters in the page's own form: the second day, by tenant and model
        b.type_into("form.filters input[name=by]", "tenant,model")
        b.type_into("form.filters input[name=since]", "2026-11-29")
        b.type_into("form.filters input[name=until]", "2026-11-30")
        b.events.clear()
        b.submit("form.filters[method=get] button")
        assert "by=tenant%2Cmodel" in b.js("location.search")
        page_rows = b.js(_TABLE)
        kpis = b.js("[...document.querySelectorAll('.kpi')].map(k => [k.firstChild.textContent, k.querySelector('b').textContent])")
        scripts = b.js("document.scripts.length")
        requested = [e["params"]["request"]["url"] for e in b.events if e.get("method") == "Network.requestWillBeSent"]
        png = b.screenshot()

    cli = _meter("report", "--collector", url, "--token-file", str(token_file), "--by", "tenant,model",
                 "--since", "2026-11-29", "--until", "2026-11-30", "--format", "json")
    rep = json.loads(cli.stdout)
    assert page_rows == _expected_rows(rep)
    assert page_rows != before
    assert {r["tenant"] for r in rep["rows"]} >= {"acme", "globex"}
    t = rep["totals"]
    kpi = dict(kpis)
    assert kpi["cost"] == _cell(t["cost_micro"], "money") + f" {rep['currency']}"
    assert kpi["tokens"] == f"{t['tokens']:,}"
    assert kpi["cost per Mtok"] == _cell(t["cost_per_mtok"], "{:,.4f}") + f" {rep['currency']}"
    assert scripts == 0
    assert requested and all(u.startswith(url + "/") for u in requested), requested
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    (tmp_path / "report.png").write_bytes(png)
    keep = os.environ.get("METERD_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "report.png", Path(keep) / "collector-report.png")
