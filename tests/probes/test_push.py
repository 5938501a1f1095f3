"""The push endpoint: validation and the ledger (pure), then the real endpoint over loopback
TCP and a Unix socket."""

import json
import socket
import threading

import httpx
import pytest

from meterd.probes.push import (
    InvalidUsage,
    PushedUsage,
    PushEndpoint,
    UsageLedger,
    UsageRecord,
    parse_body,
)


def body(doc) -> bytes:
    return json.dumps(doc).encode()


REC = {"model": "llama-3-8b", "prompt_tokens": 120, "completion_tokens": 30}


# --- validation, pure ----------------------------------------------------------------------

def test_one_record_or_a_list():
    assert parse_body(body(REC)) == [UsageRecord("llama-3-8b", 120, 30)]
    full = {**REC, "tenant": "team-a", "request_id": "r1"}
    assert parse_body(body([REC, full])) == [UsageRecord("llama-3-8b", 120, 30),
                                             UsageRecord("llama-3-8b", 120, 30, "team-a", "r1")]
    assert parse_body(b"[]") == []
    assert parse_body(body({**REC, "tenant": None, "request_id": None})) == [UsageRecord("llama-3-8b", 120, 30)]


@pytest.mark.parametrize("raw, message", [
    (b"", "not JSON"),
    (b"{\"model\": ", "not JSON"),                                    # truncated
    (b"\xff\xfe\x00junk", "not UTF-8"),                               # binary
    (b"[" * 100_000 + b"]" * 100_000, "nested 100000 levels deep"),   # nested too deep
    (b"[" * 5 + b"]" * 5, "nested 5 levels deep"),
    (b'{"model": "\\ud800", "prompt_tokens": 1, "completion_tokens": 1}', "lone surrogate"),
    (b'{"model": "m", "tenant": "\\udfff", "prompt_tokens": 1, "completion_tokens": 1}', "lone surrogate"),
    (b'{"model": "\xed\xa0\x80", "prompt_tokens": 1, "completion_tokens": 1}', "not UTF-8"),
    (b'{"model": "m", "prompt_tokens": ' + b"9" * 5000 + b', "completion_tokens": 1}', "not acceptable JSON"),
    (b'{"model": "m\\u0000", "prompt_tokens": 1, "completion_tokens": 1}', "NUL character"),
    (body("hello"), "a JSON object"),
    (body(42), "a JSON object"),
    (body([REC, 5]), "record 2 of 2: must be a JSON object"),
    (body({"prompt_tokens": 1, "completion_tokens": 1}), "model is required"),
    (body({**REC, "completion_tokens": None}), "completion_tokens must be a whole number"),
    (body({**REC, "prompt_tokens": "120"}), "prompt_tokens must be a whole number"),
    (body({**REC, "prompt_tokens": 1.5}), "prompt_tokens must be a whole number"),
    (body({**REC, "prompt_tokens": 120.0}), "prompt_tokens must be a whole number"),
    (body({**REC, "prompt_tokens": True}), "prompt_tokens must be a whole number"),
    (body({**REC, "prompt_tokens": -1}), "between 0 and"),
    (body({**REC, "completion_tokens": 10**12}), "between 0 and"),
    (b'{"model": "m", "prompt_tokens": NaN, "completion_tokens": 1}', "whole number"),
    (body({**REC, "model": ""}), "model must be a non-empty string"),
    (body({**REC, "model": 7}), "model must be a non-empty string"),
    (body({**REC, "model": "x" * 300}), "longer than 256"),
    (body({**REC, "tenant": "a\nb"}), "control characters"),
    (body({**REC, "request_id": 42}), "request_id must be a non-empty string"),
    (body({**REC, "prompt_token": 5}), "unknown field 'prompt_token'"),
    (body([REC, REC, {**REC, "prompt_tokens": -5}]), "record 3 of 3: prompt_tokens"),  # counted from 1
])
def test_invalid_bodies_are_named(raw, message):
    with pytest.raises(InvalidUsage, match=message) as e:
        parse_body(raw)
    assert "\n" not in str(e.value)


def test_too_many_records():
    with pytest.raises(InvalidUsage, match="at most 3"):
        parse_body(body([REC] * 4), max_records=3)


# --- the ledger, pure ----------------------------------------------------------------------

def test_ledger_sums_per_model_and_tenant_and_drains():
    ledger = UsageLedger()
    assert ledger.add([UsageRecord("a", 10, 1, "t1"), UsageRecord("a", 5, 2, "t1"),
                       UsageRecord("a", 1, 1), UsageRecord("b", 7, 7, "t1")]) == (4, 0)
    assert ledger.drain() == {("a", "t1"): PushedUsage(15, 3, 2), ("a", ""): PushedUsage(1, 1, 1),
                              ("b", "t1"): PushedUsage(7, 7, 1)}
    assert ledger.drain() == {}


def test_ledger_is_idempotent_by_request_id_even_across_drains():
    ledger = UsageLedger()
    assert ledger.add([UsageRecord("a", 10, 1, request_id="r1"), UsageRecord("a", 10, 1, request_id="r1")]) == (1, 1)
    ledger.drain()
    assert ledger.add([UsageRecord("a", 10, 1, request_id="r1")]) == (0, 1)
    assert ledger.drain() == {}
    # Without a request id nothing can be recognised: each record counts.
    assert ledger.add([UsageRecord("a", 1, 1), UsageRecord("a", 1, 1)]) == (2, 0)


def test_ledger_remembers_a_bounded_number_of_request_ids():
    ledger = UsageLedger(max_request_ids=2)
    ledger.add([UsageRecord("a", 1, 0, request_id=r) for r in ("r1", "r2", "r3")])
    assert ledger.add([UsageRecord("a", 1, 0, request_id="r3")]) == (0, 1)
    assert ledger.add([UsageRecord("a", 1, 0, request_id="r1")]) == (1, 0)  # forgotten: counted again
    assert len(ledger._seen) == 2


def test_ledger_drain_is_thread_safe():
    ledger = UsageLedger()
    drained = []
    stop = threading.Event()

    def drainer():
        while not stop.is_set():
            drained.append(ledger.drain())

    def pusher(n):
        for i in range(2_000):
            ledger.add([UsageRecord("m", 1, 2, request_id=f"{n}-{i}")])

    d = threading.Thread(target=drainer)
    d.start()
    pushers = [threading.Thread(target=pusher, args=(n,)) for n in range(4)]
    for t in pushers:
        t.start()
    for t in pushers:
        t.join()
    stop.set()
    d.join()
    drained.append(ledger.drain())
    total = sum((u.get(("m", ""), PushedUsage()).prompt_tokens for u in drained))
    assert total == 8_000


# --- the endpoint over loopback ------------------------------------------------------------

@pytest.fixture
def endpoint():
    with PushEndpoint(max_bytes=64 * 1024) as ep:
        yield ep


@pytest.fixture
def client(endpoint):
    with httpx.Client(base_url=endpoint.url, timeout=5) as c:
        yield c


def test_push_one_and_a_batch_then_drain(endpoint, client):
    r = client.post("/v1/usage", json={**REC, "tenant": "team-a", "request_id": "r1"})
    assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 0}
    r = client.post("/v1/usage", json=[{**REC, "request_id": "r2"}, {**REC, "model": "mistral-7b"}])
    assert r.json() == {"accepted": 2, "duplicates": 0}
    assert endpoint.drain() == {("llama-3-8b", "team-a"): PushedUsage(120, 30, 1),
                                ("llama-3-8b", ""): PushedUsage(120, 30, 1),
                                ("mistral-7b", ""): PushedUsage(120, 30, 1)}
    assert endpoint.drain() == {}


def test_push_retries_count_once(endpoint, client):
    batch = [{**REC, "request_id": f"r{i}"} for i in range(3)]
    assert client.post("/v1/usage", json=batch).json() == {"accepted": 3, "duplicates": 0}
    assert client.post("/v1/usage", json=batch).json() == {"accepted": 0, "duplicates": 3}
    assert client.post("/v1/usage", json=batch[:1] + [{**REC, "request_id": "r9"}]).json() == {
        "accepted": 1, "duplicates": 1}
    assert endpoint.drain() == {("llama-3-8b", ""): PushedUsage(4 * 120, 4 * 30, 4)}


def test_a_bad_batch_is_refused_whole_with_a_clear_error(endpoint, client):
    r = client.post("/v1/usage", json=[{**REC, "request_id": "ok-1"}, {**REC, "prompt_tokens": -3}])
    assert r.status_code == 400
    assert r.json() == {"error": "record 2 of 2: prompt_tokens must be between 0 and 1,000,000,000, not -3"}
    assert endpoint.drain() == {}
    # the good record was not remembered either: the fixed batch counts it
    assert client.post("/v1/usage", json=[{**REC, "request_id": "ok-1"}]).json()["accepted"] == 1


@pytest.mark.parametrize("raw", [b"\x00\x01\x02\xff" * 1000, b"{not json", b"", b"null"])
def test_junk_is_a_400(endpoint, client, raw):
    r = client.post("/v1/usage", content=raw)
    assert r.status_code == 400 and r.json()["error"]
    assert endpoint.drain() == {}


def test_a_10_mb_body_is_a_413_and_the_endpoint_goes_on(endpoint, client):
    r = client.post("/v1/usage", content=b"[" + b" " * (10 * 1000 * 1000) + b"]")
    assert r.status_code == 413 and "at most 65,536" in r.json()["error"]

    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(160):
            yield b" " * 65536

    r = client.post("/v1/usage", content=chunks())
    assert r.status_code == 413
    assert client.post("/v1/usage", json=REC).json() == {"accepted": 1, "duplicates": 0}


def test_other_paths_and_methods(client):
    assert client.get("/healthz").json() == {"ok": True}
    assert client.get("/v1/usage").status_code == 405
    assert client.post("/v1/other", json=REC).status_code == 404


def test_only_loopback_or_a_unix_socket():
    with pytest.raises(ValueError, match="loopback"):
        PushEndpoint(host="0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        PushEndpoint(host="192.168.1.10")


def test_unix_socket(tmp_path):
    path = str(tmp_path / "push.sock")
    with PushEndpoint(uds=path) as ep:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url=ep.url, timeout=5) as c:
            assert c.post("/v1/usage", json={**REC, "tenant": "t"}).json()["accepted"] == 1
        assert ep.drain() == {("llama-3-8b", "t"): PushedUsage(120, 30, 1)}
    assert not (tmp_path / "push.sock").exists()


def test_stop_closes_the_port():
    ep = PushEndpoint().start()
    url = ep.url
    ep.stop()
    with httpx.Client(timeout=1) as c, pytest.raises(httpx.ConnectError):
        c.get(url + "/healthz")
    ep.stop()  # twice is harmless


def test_a_client_that_stops_half_way_through_its_body_gets_a_408():
    with PushEndpoint(body_timeout_s=0.3) as ep:
        host, port = ep.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"POST /v1/usage HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mo")
            answer = b""
            for _ in range(100):  # until the server closes (it says Connection: close)
                part = s.recv(4096)
                if not part:
                    break
                answer += part
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.3 s" in answer
        assert ep.drain() == {}
