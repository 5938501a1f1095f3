"""Two `meter collector serve` replicas on one real PostgreSQL, as real processes on loopback.

Both start at the same moment on an empty database (one migrates, the other waits for it). The
same batches go to both at once; one replica is killed with SIGKILL in the middle of a request,
restarted, and everything is sent again to both. In the end every event is stored exactly once,
the accepted counts the replicas answered never exceed that, every resend is all duplicates, and
both replicas answer the same bill, which adds up to the events sent. A token revoked through the
CLI is refused by both replicas at their next request.
"""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.agent.events import BATCH_CONTENT_TYPE
from meterd.collector.store import open_store
from tests.collector.conftest import make_event, pg_url  # noqa: F401 (the fixture)

ROOT = Path(__file__).parents[2]
NOV_30_18H = 1_796_061_600.0  # 2026-11-30T18:00Z: the windows run into December (two partitions)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    def __init__(self, db: str, port: int | None = None) -> None:
        self.db, self.port = db, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Replica":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meterd.agent.cli", "collector", "serve", "--db", self.db,
             "--listen", f"127.0.0.1:{self.port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"replica exited: {self.proc.stderr.read()[-2000:]}"
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("replica did not come up")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc.stderr.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self.proc.stderr.close()


def meter(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_two_replicas_store_every_event_once_through_a_kill_9_and_bill_alike(pg_url):  # noqa: F811
    a, b = Replica(pg_url), Replica(pg_url)
    try:
        a.start(), b.start()  # at once, on an empty database
        a.wait_ready(), b.wait_ready()
        token = meter("collector", "token", "create", "n1", "--db", pg_url).stdout.strip()
        reader = meter("collector", "token", "create", "--read", "finance", "--db", pg_url).stdout.strip()

        # 2,400 windows of 4 devices (600 minutes, across midnight into December), 48 batches
        # of 50; batch i+1 repeats half of batch i, so batches overlap as resends do.
        events = [make_event("n1", f"GPU-{i % 4}", NOV_30_18H + 60 * (i // 4),
                             prompt=1000 + i % 7, completion=300 + i % 5,
                             models=[("llama", "acme"), ("qwen", "")] if i % 3 else [("llama", "")])
                  for i in range(2400)]
        batches = [events[i:i + 50] for i in range(0, 2400, 25)]
        bodies = [json.dumps(batch).encode() for batch in batches]
        headers = {"content-type": BATCH_CONTENT_TYPE, "authorization": f"Bearer {token}"}
        replies: dict[str, list[dict]] = {"a": [], "b": []}
        in_flight = threading.Event()

        def send(name: str, replica: Replica, kill_at: int | None = None) -> None:
            with httpx.Client(base_url=replica.url, timeout=30, headers=headers) as c:
                for i, body in enumerate(bodies):
                    if i == kill_at:
                        in_flight.set()
                    try:
                        r = c.post("/api/v1/events", content=body)
                    except httpx.TransportError:
                        return  # killed: the rest is sent again after the restart
                    assert r.status_code == 200, r.text
                    replies[name].append(r.json())

        threads = [threading.Thread(target=send, args=("a", a, len(bodies) // 2)),
                   threading.Thread(target=send, args=("b", b))]
        for t in threads:
            t.start()
        assert in_flight.wait(60), "replica a never reached the middle of the batches"
        time.sleep(0.01)
        a.kill9()  # SIGKILL while a request to it is in flight
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive()
        assert len(replies["a"]) < len(bodies), "replica a answered every batch before the kill"

        a = Replica(pg_url, a.port).start()  # restarted on the same address
        a.wait_ready()
        replies = {"a": [], "b": []}
        threads = [threading.Thread(target=send, args=("a", a)), threading.Thread(target=send, args=("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive()
        # resent to both after everything was held: every event of every batch is a duplicate
        for name in ("a", "b"):
            assert len(replies[name]) == len(bodies)
            assert all(r["accepted"] == 0 and r["duplicates"] == r["received"] for r in replies[name]), name

        store = open_store(pg_url, readonly=True)
        try:
            counts = store.counts()
            with store.pool.connection() as c:
                dup_keys = c.execute("SELECT count(*) FROM (SELECT source, id FROM events "
                                     "GROUP BY 1, 2 HAVING count(*) > 1) d").fetchone()[0]
                partitions = {r[0] for r in c.execute("SELECT DISTINCT tableoid::regclass::text FROM windows")}
        finally:
            store.close()
        usage_rows = sum(2 if i % 3 else 1 for i in range(2400))
        assert counts == {"events": 2400, "windows": 2400, "usage": usage_rows, "tokens": 2}
        assert dup_keys == 0
        assert partitions == {"windows_y2026m11", "windows_y2026m12"}

        bills = []
        for replica in (a, b):
            r = httpx.get(replica.url + "/api/v1/usage", params={"group_by": "day,node,model,tenant"},
                          headers={"authorization": f"Bearer {reader}"}, timeout=30)
            assert r.status_code == 200
            bills.append(r.json()["groups"])
        assert bills[0] == bills[1]
        assert sum(g["cost_micro"] for g in bills[0]) == sum(e["data"]["cost"]["total_micro"] for e in events)
        assert sum(g["prompt_tokens"] for g in bills[0]) == sum(e["data"]["prompt_tokens"] for e in events)
        exported = meter("collector", "export", "--db", pg_url, "--since", "2026-11-30", "--until", "2026-12-02",
                         "--format", "json")
        assert json.loads(exported.stdout)["totals"][0]["cost_micro"] == sum(
            e["data"]["cost"]["total_micro"] for e in events)

        # a revoked token is refused by every replica at its next request
        key_id = token.split("_")[1]
        assert meter("collector", "token", "revoke", key_id, "--db", pg_url).exit_code == 0
        for replica in (a, b):
            r = httpx.post(replica.url + "/api/v1/events", content=bodies[0], headers=headers, timeout=30)
            assert r.status_code == 401, replica.url
    finally:
        a.stop()
        b.stop()


def test_a_replica_started_on_an_unreachable_database_exits_with_one_line():
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "meterd.agent.cli", "collector", "serve", "--db",
                        f"postgresql://meterd@127.0.0.1:{port}/x", "--listen", f"127.0.0.1:{free_port()}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"Error: cannot connect to PostgreSQL at postgresql://meterd@127.0.0.1:{port}/x")
