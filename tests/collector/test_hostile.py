"""The collector stays up and honest: text no store takes and deep nesting are 400s (never a
500), windows that overlap a stored window of their device, last longer than any window, or are
dated before 2020 or more than a day ahead are refused per event with the reason; a slow client
is cut off (header and body timeouts); /readyz fails while the database cannot take writes."""

import json
import socket
import sqlite3
import threading
import time

import pytest
import uvicorn

from meterd.collector import validation
from meterd.collector.app import create_app, timed_h11
from meterd.collector.auth import create_token
from meterd.collector.store import SQLiteStore
from tests.collector.conftest import T0, make_event, minutes, post_batch, sql


def stored(store):
    return sql(store, "SELECT count(*) FROM events")[0][0]


@pytest.mark.parametrize("mangle, detail", [
    (lambda b: b.replace(b'"llama-3.1-8b"', b'"\\ud800"'), "lone surrogate"),
    (lambda b: b.replace(b'"GPU-0"', b'"\\udfff"', 1), "lone surrogate"),
    (lambda b: b[:-1] + b"," + b"[" * 5000 + b"]" * 5000 + b"]", "nested 5001 levels deep"),
    (lambda b: b.replace(b'"currency": "USD"', b'"currency": "\xed\xa0\x80"'), "Unicode"),
])
def test_text_no_store_takes_and_deep_nesting_are_400s(client, store, token_n1, mangle, detail):
    body = mangle(json.dumps(minutes(3)).encode())
    r = post_batch(client, None, token_n1, content=body)
    assert r.status_code == 400, r.text
    assert detail.lower() in (r.json().get("detail") or r.json()["error"]).lower() or detail == "Unicode"
    assert stored(store) == 0
    # and the collector goes on
    assert post_batch(client, minutes(2), token_n1).status_code == 200


def test_a_number_of_5000_digits_in_an_event_is_a_400_naming_it(client, store, token_n1):
    body = json.dumps(minutes(2)).encode().replace(b'"util_pct": 87.5', b'"util_pct": ' + b"9" * 5000, 1)
    r = post_batch(client, None, token_n1, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["index"] == 0 and "4300 digits" in r.json()["errors"][0]["problem"]
    assert stored(store) == 0


def test_an_overlapping_window_of_the_same_device_is_refused_with_the_reason(client, store, token_n1):
    assert post_batch(client, minutes(3), token_n1).status_code == 200
    # the same ids again: duplicates, fine
    r = post_batch(client, minutes(3), token_n1)
    assert r.status_code == 200 and r.json()["duplicates"] == 3
    # another id over [T0 + 30, T0 + 90): it overlaps two stored windows of GPU-0
    shifted = make_event("n1", "GPU-0", T0 + 30)
    r = post_batch(client, [make_event("n1", "GPU-0", T0 + 180), shifted], token_n1)
    assert r.status_code == 400
    (err,) = r.json()["errors"]
    assert err["index"] == 1 and err["id"] == shifted["id"] and "overlaps window" in err["problem"]
    # another device at that time is not an overlap; nor is the next window
    assert post_batch(client, [make_event("n1", "GPU-1", T0 + 30), make_event("n1", "GPU-0", T0 + 180)],
                      token_n1).status_code == 200
    # two of the same batch overlapping each other
    r = post_batch(client, [make_event("n1", "GPU-2", T0), make_event("n1", "GPU-2", T0 + 10)], token_n1)
    assert r.status_code == 400 and [e["index"] for e in r.json()["errors"]] == [1]
    assert stored(store) == 5


def test_windows_too_long_too_old_or_too_far_ahead_are_refused(client, store, token_n1, monkeypatch):
    ten_years = make_event("n1", "GPU-0", T0, duration=10 * 365 * 86400.0)
    year_1 = make_event("n1", "GPU-1", -62135596800.0 + 3600)  # 0001-01-01T01:00:00Z
    r = post_batch(client, [ten_years, year_1], token_n1)
    assert r.status_code == 400
    problems = {e["index"]: e["problem"] for e in r.json()["errors"]}
    assert "a window is at most 3600 s" in problems[0] and "before 2020" in problems[1]
    monkeypatch.setattr(validation, "now", lambda: T0 - 2 * 86400)
    r = post_batch(client, minutes(1), token_n1)
    assert r.status_code == 400 and "more than a day ahead" in r.json()["errors"][0]["problem"]
    assert stored(store) == 0
    # every reader still gets an answer
    read = create_token(store, "finance", scope="read")
    assert client.get("/api/v1/windows", headers={"authorization": f"Bearer {read}"}).status_code == 200


class _Server:
    def __init__(self, app, **config):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="off", ws="none", log_level="warning", **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _read_all(s, timeout):
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out, True
            out += chunk
    except TimeoutError:
        return out, False


def test_readyz_fails_while_the_database_cannot_take_writes(tmp_path):
    import httpx

    store = SQLiteStore(tmp_path / "c.db")
    try:
        with _Server(create_app(store)) as srv, httpx.Client(base_url=f"http://127.0.0.1:{srv.port}") as client:
            assert client.get("/readyz").status_code == 200
            other = sqlite3.connect(tmp_path / "c.db", isolation_level=None, timeout=0.1)
            other.execute("BEGIN EXCLUSIVE")
            store.conn.execute("PRAGMA busy_timeout = 200")
            r = client.get("/readyz")
            assert r.status_code == 503 and "locked" in r.json()["error"]
            assert client.get("/healthz").status_code == 200  # alive, just not ready
            other.execute("COMMIT")
            other.close()
            assert client.get("/readyz").status_code == 200
    finally:
        store.close()


def test_a_database_that_cannot_answer_is_a_one_line_503_on_the_api_and_the_page(tmp_path):
    """A read the database cannot answer (here its usage table gone from under it) is a 503 that
    says why in one line, with Retry-After, on GET /api/v1/usage, /api/v1/windows and /report:
    never a bare 500. Once the table is back, the same requests answer."""
    import httpx

    store = SQLiteStore(tmp_path / "c.db")
    read = create_token(store, "finance", scope="read")
    node = create_token(store, "n1")
    auth = {"authorization": f"Bearer {read}"}
    try:
        with _Server(create_app(store)) as srv, httpx.Client(base_url=f"http://127.0.0.1:{srv.port}") as client:
            assert post_batch(client, minutes(5), node).status_code == 200
            assert client.get("/api/v1/usage", params={"group_by": "model"}, headers=auth).status_code == 200
            other = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
            for a, b in (("usage", "usage_away"), ("windows", "windows_away")):
                other.execute(f"ALTER TABLE {a} RENAME TO {b}")
            for path, params in (("/api/v1/usage", {"group_by": "model"}), ("/api/v1/windows", {})):
                r = client.get(path, params=params, headers=auth)
                assert r.status_code == 503 and r.headers["retry-after"] == "5", (path, r.text)
                body = r.json()
                assert body["error"] == "the collector's database cannot answer now, retry later"
                assert "no such table" in body["detail"] and "\n" not in body["detail"]
            r = client.get("/report", headers=auth)
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert "database cannot answer now, retry later: no such table" in r.text
            assert "Traceback" not in r.text and '<form class="filters"' in r.text
            for a, b in (("usage_away", "usage"), ("windows_away", "windows")):
                other.execute(f"ALTER TABLE {a} RENAME TO {b}")
            other.close()
            assert client.get("/api/v1/usage", params={"group_by": "model"}, headers=auth).status_code == 200
            assert client.get("/report", headers=auth).status_code == 200
    finally:
        store.close()


def test_a_slow_client_is_cut_off_by_the_header_and_body_timeouts(tmp_path):
    store = SQLiteStore(tmp_path / "c.db")
    token = create_token(store, "n1")
    try:
        app = create_app(store, body_timeout_s=0.5)
        with _Server(app, http=timed_h11(0.5)) as srv:
            # headers that never finish: closed after the header timeout
            t0 = time.monotonic()
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n")
                _, closed = _read_all(s, 5)
            assert closed and time.monotonic() - t0 < 4
            # a body that stalls: 408
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents-batch+json\r\n"
                          b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 1000\r\n\r\n[{")
                out, _ = _read_all(s, 5)
            assert out.startswith(b"HTTP/1.1 408"), out[:200]
            # a normal request still works
            import httpx

            assert httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=5).status_code == 200
    finally:
        store.close()
