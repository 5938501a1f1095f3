"""End to end on loopback with real processes: agent -> (a relay the test controls) -> collector.

The collector is stopped for a while and restarted: the backlog drains. The agent is killed with
SIGKILL after the collector stored a batch but before the agent heard back: the restarted agent
sends it again and the collector counts it as duplicates. In the end every window the agent
committed is held by the collector exactly once, and the totals agree.
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.fakes.servers import FakeInferenceServer

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout_s=60.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Relay:
    """Forwards POSTs to the collector. In ``hold`` mode it forwards one batch, keeps the
    collector's answer from the agent and parks the connection until released."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.mode = "pass"
        self.duplicates = 0
        self.held = threading.Event()
        self.release = threading.Event()
        self.held_ids: list[str] = []
        relay = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                try:
                    r = httpx.post(relay.upstream + self.path, content=body, headers=headers, timeout=10)
                except httpx.HTTPError:
                    self.send_response(502)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if r.status_code == 200:
                    relay.duplicates += r.json().get("duplicates", 0)
                if relay.mode == "hold" and r.status_code == 200 and not relay.held.is_set():
                    relay.held_ids = [e["id"] for e in json.loads(body)]
                    relay.held.set()
                    relay.release.wait(30)
                    self.close_connection = True
                    return  # the agent never hears that the collector stored the batch
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v1/events"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def start_collector(db, port):
    return subprocess.Popen([sys.executable, "-m", "meterd.agent.cli", "collector", "serve", "--db", str(db),
                             "--listen", f"127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def collector_up(port):
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_agent(cfg, extra=()):
    env = dict(os.environ, METERD_FAKE_GPUS="2", METERD_FAKE_WATTS="300")
    return subprocess.Popen([sys.executable, "-m", "tests.fakes.run_meter", "agent", "--config", str(cfg), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def q(db, sql):
    c = sqlite3.connect(db)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


def stop(p, sig=signal.SIGTERM):
    try:
        p.send_signal(sig)
        return p.wait(timeout=20)
    finally:
        p.kill()
        if p.stderr:
            p.stderr.close()


def test_every_window_reaches_the_collector_exactly_once(tmp_path):
    cdb, adb = tmp_path / "collector.db", tmp_path / "agent.db"
    from click.testing import CliRunner
    from meterd.agent.cli import main

    r = CliRunner().invoke(main, ["collector", "token", "create", "n1", "--db", str(cdb)])
    assert r.exit_code == 0, r.output
    token_file = tmp_path / "token"
    token_file.write_text(r.output.strip().splitlines()[-1] + "\n")
    token_file.chmod(0o600)

    port = free_port()
    collector = start_collector(cdb, port)
    relay = Relay(f"http://127.0.0.1:{port}")
    with FakeInferenceServer("vllm", models=["llama-3-8b"]) as vllm:
        cfg = tmp_path / "meterd.toml"
        cfg.write_text(f'''node = "n1"
store = "{adb}"
interval_s = 0.25
window_s = 1
[[sources]]
kind = "vllm"
url = "{vllm.url}"
[ship]
url = "{relay.url}"
token_file = "{token_file}"
backoff_cap_s = 1.0
''')
        stop_tokens = threading.Event()

        def traffic():
            while not stop_tokens.is_set():
                vllm.add("llama-3-8b", 120, 40, prefill_s=0.05, decode_s=0.2)
                time.sleep(0.1)

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        try:
            wait_for(lambda: collector_up(port), what="the collector")
            agent = start_agent(cfg)
            held = lambda: q(cdb, "SELECT count(*) FROM windows")[0][0] if cdb.exists() else 0  # noqa: E731
            wait_for(lambda: held() >= 9, what="first windows at the collector")

            # the collector goes away for a while: windows pile up in the outbox
            stop(collector)
            time.sleep(3)
            backlog = q(adb, "SELECT count(*) FROM windows WHERE shipped_at IS NULL")[0][0]
            assert backlog >= 6
            collector = start_collector(cdb, port)
            wait_for(lambda: collector_up(port), what="the collector again")
            wait_for(lambda: q(adb, "SELECT count(*) FROM windows WHERE shipped_at IS NULL")[0][0] <= 3,
                     what="the backlog to drain")

            # killed between send and acknowledgement
            relay.mode = "hold"
            assert relay.held.wait(30), "no batch went out"
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=10)
            agent.stderr.close()
            relay.release.set()
            relay.mode = "pass"
            unacked = q(adb, "SELECT count(*) FROM windows WHERE event_id IN (%s) AND shipped_at IS NULL"
                        % ",".join("'%s'" % i for i in relay.held_ids))[0][0]
            assert unacked == len(relay.held_ids)  # stored by the collector, not known to the agent

            dup_before = relay.duplicates
            agent = start_agent(cfg, ["--duration", "4"])
            _, err = agent.communicate(timeout=60)
            assert agent.returncode == 0, err
            assert relay.duplicates - dup_before >= len(relay.held_ids)  # the resend was deduplicated
        finally:
            stop_tokens.set()
            t.join(5)
            relay.close()
            if agent.poll() is None:
                stop(agent, signal.SIGKILL)

        wait_for(lambda: q(adb, "SELECT count(*) FROM windows WHERE shipped_at IS NULL")[0][0] == 0,
                 timeout_s=5, what="everything shipped")
        stop(collector)

    ours = q(adb, "SELECT event_id, cost_micro, prompt_tokens, completion_tokens FROM windows ORDER BY event_id")
    theirs = q(cdb, "SELECT e.id, w.cost_micro, w.prompt_tokens, w.completion_tokens"
                    " FROM windows w JOIN events e ON e.seq = w.seq ORDER BY e.id")
    assert len(theirs) == len({r[0] for r in theirs})  # nothing twice
    assert ours == theirs  # every window, once, with the same figures
    assert sum(r[2] for r in ours) > 0  # tokens made it through too
