"""Shared pieces for the collector's tests: window-shaped rows turned into events by
agent.events.window_event (the agent's own builder), a store on each backend (SQLite in a temp
dir; PostgreSQL in a fresh database of the server $METERD_TEST_PG_URL names), and a real
uvicorn server on 127.0.0.1 with an ephemeral port.

The ``store`` fixture runs every test that uses it on both backends. Without a PostgreSQL the
PostgreSQL half skips, with a line saying how to get one, except in CI (CI=true), where .ci/run
starts one and a missing one fails the test."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse
import uuid
from typing import Any

import httpx
import pytest
import uvicorn

from meterd.agent.events import BATCH_CONTENT_TYPE, event_id, window_event
from meterd.collector.app import create_app
from meterd.collector.auth import create_token
from meterd.collector.store import CollectorStore, SQLiteStore, open_store

T0 = 1_795_824_000.0  # 2026-11-28T00:00:00Z


def make_window(node: str = "n1", device: str = "GPU-0", start: float = T0, *,
                prompt: int = 1200, completion: int = 450, models=(("llama-3.1-8b", ""),),
                capex: int = 50_000, energy_micro: int = 6_234, opex: int = 5_000,
                energy_j: float | None = 31_250.5, duration: float = 60.0,
                currency: str = "USD") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A consistent window row and its usage rows, as agent/store.py keeps them."""
    total = capex + energy_micro + opex
    tokens = prompt + completion
    c_prompt = total * prompt // tokens if tokens else 0
    c_completion = total - c_prompt if tokens else 0
    window = {
        "event_id": event_id(node, device, start), "node": node, "device": device,
        "device_name": "NVIDIA H100 80GB HBM3", "start": start, "end": start + duration,
        "energy_j": energy_j, "energy_source": "counter" if energy_j is not None else None,
        "avg_power_w": None if energy_j is None else energy_j / duration, "util_pct": 87.5,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "cost_capex_micro": capex, "cost_energy_micro": energy_micro, "cost_opex_micro": opex,
        "cost_micro": total, "cost_prompt_micro": c_prompt, "cost_completion_micro": c_completion,
        "currency": currency, "partial": 0, "gap_s": 0.0, "flags": "[]",
        "config_hash": "sha256:test", "agent_version": "0.1.0",
    }
    usage = []
    if tokens and models:
        n = len(models)
        for i, (model, tenant) in enumerate(models):
            last = i == n - 1
            p = prompt - (n - 1) * (prompt // n) if last else prompt // n
            c = completion - (n - 1) * (completion // n) if last else completion // n
            cp = c_prompt - (n - 1) * (c_prompt // n) if last else c_prompt // n
            cc = c_completion - (n - 1) * (c_completion // n) if last else c_completion // n
            usage.append({"model": model, "tenant": tenant, "prompt_tokens": p,
                          "completion_tokens": c, "cost_micro": cp + cc,
                          "cost_prompt_micro": cp, "cost_completion_micro": cc})
    return window, usage


def make_event(*args, **kw) -> dict[str, Any]:
    return window_event(*make_window(*args, **kw))


def minutes(n: int, node: str = "n1", device: str = "GPU-0", start: float = T0, **kw) -> list[dict]:
    """n consecutive one-minute events of one device."""
    return [make_event(node, device, start + 60 * i, **kw) for i in range(n)]


PG_URL_ENV = "METERD_TEST_PG_URL"


def wait_healthy(client: httpx.Client, proc, timeout_s: float = 15.0) -> None:
    """Until a ``meter collector serve`` subprocess answers ``/healthz``; fails if it exits or
    does not come up within ``timeout_s`` (a bounded loop)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "serve did not come up"
        time.sleep(0.05)


def pg_server_url() -> str:
    """The test PostgreSQL's URL; skips without one, fails in CI."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the PostgreSQL tests: ${PG_URL_ENV} is unset (.ci/run starts a server)")
        pytest.skip(f"no PostgreSQL: set ${PG_URL_ENV} or run under .ci/with-postgres")
    return url


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
def pg_url():
    """A fresh, empty database on the test PostgreSQL (dropped afterwards)."""
    import psycopg

    server = pg_server_url()
    name = f"meterd_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    """What ``--db`` takes, on each backend: a file path, a postgresql:// URL."""
    if request.param == "sqlite":
        return str(tmp_path / "collector.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db):
    s = open_store(db)
    yield s
    s.close()


def sql(store: CollectorStore, query: str, args=()) -> list[tuple]:
    """Rows of a query (``?`` placeholders) run on the store's own database, on either backend."""
    if isinstance(store, SQLiteStore):
        return store.conn.execute(query, args).fetchall()
    with store.pool.connection() as c:
        return [tuple(r) for r in c.execute(query.replace("?", "%s"), args).fetchall()]


@pytest.fixture
def token_n1(store) -> str:
    return create_token(store, "n1")


@pytest.fixture
def read_token(store) -> str:
    return create_token(store, "finance", scope="read")


class LiveServer:
    """uvicorn serving the collector on 127.0.0.1:<ephemeral> from a background thread."""

    def __init__(self, store: CollectorStore, wrap=None, **app_kw) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(store, **app_kw)
        config = uvicorn.Config(wrap(app) if wrap else app, lifespan="off", ws="none",
                                log_level="warning", server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the collector did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        assert not self.thread.is_alive(), "the collector did not stop"


@pytest.fixture
def live(store):
    with LiveServer(store, max_body_bytes=16 * 1024 * 1024) as srv:
        yield srv


@pytest.fixture
def client(live):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


def post_batch(client: httpx.Client, events: Any, token: str | None, *,
               content_type: str = BATCH_CONTENT_TYPE, content: bytes | None = None) -> httpx.Response:
    import json

    headers = {"content-type": content_type}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    body = content if content is not None else json.dumps(events).encode()
    return client.post("/api/v1/events", content=body, headers=headers)
