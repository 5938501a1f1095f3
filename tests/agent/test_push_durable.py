"""Acknowledged means durable: the real agent in a subprocess, usage pushed to it, killed with
SIGKILL mid-stream and restarted; every record it answered 200 is billed exactly once, and a
retry of an acknowledged request id after a restart is a duplicate. Hostile bodies are 400s
that leave the agent running."""

import random
import signal
import socket
import sqlite3
import threading
import time

import httpx

from tests.agent.test_agent_restart import meter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, port, *extra):
    cfg = tmp_path / "meterd.toml"
    cfg.write_text(f'[push]\nlisten = "127.0.0.1:{port}"\n')
    return meter("agent", "--config", str(cfg), "--db", str(tmp_path / "m.db"), "--window", "1",
                 "--interval", "0.2", *extra, gpus=2)


def wait_listening(url, proc, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("the push endpoint did not come up")


def stored_tokens(db):
    c = sqlite3.connect(db)
    try:
        p, cpl = c.execute("SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)"
                           " FROM window_usage").fetchone()
        w = c.execute("SELECT coalesce(sum(prompt_tokens), 0) FROM windows").fetchone()[0]
        return p, cpl, w
    finally:
        c.close()


def test_a_hostile_push_is_a_400_and_the_agent_meters_on(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with start(tmp_path, port) as agent:
        try:
            wait_listening(url, agent)
            hostile = [
                b'{"model": "\\ud800", "prompt_tokens": 1, "completion_tokens": 1}',
                b'{"model": "m", "tenant": "\\udc00x", "prompt_tokens": 1, "completion_tokens": 1}',
                b'{"model": "m", "prompt_tokens": ' + b"7" * 5000 + b', "completion_tokens": 1}',
                b'{"model": "m", "prompt_tokens": 18446744073709551616, "completion_tokens": 1}',
                b"[" * 50_000 + b"]" * 50_000,
                b'{"model": "\xed\xa0\x80", "prompt_tokens": 1, "completion_tokens": 1}',
            ]
            for body in hostile:
                r = httpx.post(url + "/v1/usage", content=body, timeout=10)
                assert r.status_code == 400, (body[:60], r.status_code, r.text)
                assert "error" in r.json()
            r = httpx.post(url + "/v1/usage", json={"model": "m", "prompt_tokens": 100, "completion_tokens": 7},
                           timeout=10)
            assert r.status_code == 200
            time.sleep(1.5)  # windows close after the hostile bodies
            assert agent.poll() is None
        finally:
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert "refused a body (400)" in err and "Traceback" not in err
    assert stored_tokens(tmp_path / "m.db") == (100, 7, 100)


class Pusher(threading.Thread):
    """Pushes numbered records; each one is retried (same request id) until acknowledged."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.acked: dict[str, tuple[int, int]] = {}
        self.sent = 0
        self.stop = threading.Event()
        self.rng = random.Random(7)

    def run(self):
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self.stop.is_set():
                rid = f"r{i}"
                rec = {"model": "m", "prompt_tokens": self.rng.randint(1, 1000),
                       "completion_tokens": self.rng.randint(1, 100), "request_id": rid}
                self.sent += 1
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:  # a record is finished before stopping
                    try:
                        r = client.post(self.url + "/v1/usage", json=rec)
                    except httpx.TransportError:
                        time.sleep(0.02)  # the agent is down: retry the same record
                        continue
                    if r.status_code == 200:
                        self.acked[rid] = (rec["prompt_tokens"], rec["completion_tokens"])
                        break
                    time.sleep(0.02)
                i += 1


def journal_rows(db):
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT count(*) FROM push_journal").fetchone()[0]
    finally:
        c.close()


def test_push_under_kill_9_every_acknowledged_token_is_stored_once(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "m.db"
    pusher = Pusher(url)
    rng = random.Random(3)
    kills = 0
    try:
        for _ in range(4):
            with start(tmp_path, port) as agent:
                try:
                    wait_listening(url, agent)
                    if not pusher.is_alive():
                        pusher.start()
                    time.sleep(rng.uniform(0.8, 2.0))
                    agent.send_signal(signal.SIGKILL)
                    agent.wait(timeout=10)
                    kills += 1
                finally:
                    agent.kill()
                agent.stderr.close()
        # SIGTERM while the pusher pushes: in-flight requests finish, then the last windows
        # commit with every record acknowledged so far; nothing is left in the journal
        with start(tmp_path, port) as agent:
            wait_listening(url, agent)
            time.sleep(1.5)
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=30)
        assert agent.returncode == 0, err
        time.sleep(0.3)
        acked_then = dict(pusher.acked)
        assert journal_rows(db) == 0
        assert stored_tokens(db)[0] == sum(p for p, _ in acked_then.values())

        # a last run: the pusher finishes its record (retried across the stop), then stops
        with start(tmp_path, port) as agent:
            wait_listening(url, agent)
            time.sleep(0.5)
            pusher.stop.set()
            pusher.join(30)
            assert not pusher.is_alive()
            # a retry of an acknowledged id, after all those restarts, is still a duplicate
            r = httpx.post(url + "/v1/usage", json={"model": "m", "prompt_tokens": 5, "completion_tokens": 5,
                                                    "request_id": "r0"}, timeout=10)
            assert r.json() == {"accepted": 0, "duplicates": 1}
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=30)
        assert agent.returncode == 0, err
    finally:
        pusher.stop.set()
    assert kills == 4 and len(pusher.acked) > 20
    # every record was retried until acknowledged, so what is stored is exactly what was
    # acknowledged: nothing lost (kill -9 between the 200 and the window), nothing doubled
    prompt, completion, in_windows = stored_tokens(db)
    assert (prompt, completion) == (sum(p for p, _ in pusher.acked.values()),
                                    sum(c for _, c in pusher.acked.values()))
    assert in_windows == prompt
    assert len(pusher.acked) == pusher.sent
