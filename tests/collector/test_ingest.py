"""POST /api/v1/events on a real uvicorn server on 127.0.0.1: the happy path, deduplication,
and hostile requests, each leaving the store as it was."""

import json
import socket

import httpx
from cloudevents.core.bindings.http import HTTPMessage, from_http, to_structured
from cloudevents.core.formats.json import JSONFormat

from meterd.collector.auth import create_token
from meterd.collector.store import open_store
from meterd.collector.validation import check_event
from tests.collector.conftest import T0, LiveServer, make_event, minutes, post_batch, sql


def test_a_batch_is_stored_once_and_a_resend_is_all_duplicates(client, store, token_n1):
    events = minutes(5)
    r = post_batch(client, events, token_n1)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 5, "accepted": 5, "duplicates": 0}
    r = post_batch(client, events, token_n1)
    assert r.json() == {"received": 5, "accepted": 0, "duplicates": 5}
    assert store.counts()["events"] == store.counts()["windows"] == 5
    # what is stored is the event as sent, which the CloudEvents SDK reads back
    raws = dict(sql(store, "SELECT id, raw FROM events"))
    assert raws == {e["id"]: json.dumps(e) for e in events}  # the bytes each event arrived as
    for sent in events:
        raw = raws[sent["id"]]
        ce = from_http(HTTPMessage({"content-type": "application/cloudevents+json"}, raw.encode()),
                       JSONFormat())
        assert ce.get_id() == sent["id"] and ce.get_data() == sent["data"]


def test_dedupe_is_forever_across_restarts(db):
    events = minutes(3)
    for expected in ({"accepted": 3, "duplicates": 0}, {"accepted": 0, "duplicates": 3}):
        store = open_store(db)
        try:
            tok = create_token(store, "n1")
            with LiveServer(store) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
                body = post_batch(c, events, tok).json()
            assert {k: body[k] for k in expected} == expected
        finally:
            store.close()


def test_a_single_structured_event_from_the_sdk_is_accepted(client, store, token_n1):
    ev = make_event()
    sdk_event = JSONFormat().read(None, json.dumps(ev).encode())
    msg = to_structured(sdk_event, JSONFormat())
    assert msg.headers["content-type"] == "application/cloudevents+json"
    r = client.post("/api/v1/events", content=msg.body,
                    headers={**msg.headers, "authorization": f"Bearer {token_n1}"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    assert store.counts()["windows"] == 1


def test_ten_thousand_events_with_duplicates_inside_count_once(client, store, token_n1):
    unique = minutes(7_000)
    batch = unique + unique[:3_000]  # 3,000 in-batch duplicates
    r = post_batch(client, batch, token_n1)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 10_000, "accepted": 7_000, "duplicates": 3_000}
    c = store.counts()
    assert c["events"] == c["windows"] == 7_000 and c["usage"] == 7_000
    [(total,)] = sql(store, "SELECT SUM(cost_micro) FROM windows")
    assert total == sum(e["data"]["cost"]["total_micro"] for e in unique)


def test_no_token_or_a_wrong_token_is_401(client, store, token_n1):
    events = minutes(2)
    before = store.counts()
    r = post_batch(client, events, None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    wrong = token_n1[:-4] + ("AAAA" if not token_n1.endswith("AAAA") else "BBBB")
    for tok in (wrong, "mtk_000000000000_" + "x" * 43, "garbage"):
        assert post_batch(client, events, tok).status_code == 401
    r = client.post("/api/v1/events", content=b"[]", headers={"authorization": f"Basic {token_n1}"})
    assert r.status_code == 401
    assert store.counts() == before


def test_another_nodes_source_is_403_naming_the_event(client, store, token_n1):
    events = minutes(3) + [make_event("n2", start=T0)]
    before = store.counts()
    r = post_batch(client, events, token_n1)
    assert r.status_code == 403
    [err] = r.json()["errors"]
    assert err["index"] == 3 and err["id"] == events[3]["id"] and err["field"] == "source"
    assert store.counts() == before


def test_a_read_token_may_not_send(client, store, read_token):
    assert post_batch(client, minutes(1), read_token).status_code == 403
    assert store.counts()["events"] == 0


def test_wrong_content_type_is_415(client, store, token_n1):
    for ctype in ("application/json", "text/plain", ""):
        r = post_batch(client, minutes(1), token_n1, content_type=ctype)
        assert r.status_code == 415, ctype
    assert store.counts()["events"] == 0


def test_malformed_json_is_400(client, store, token_n1):
    for body in (b"[{", b"\xff\xfe", b"", b"NaNx"):
        r = post_batch(client, None, token_n1, content=body)
        assert r.status_code == 400 and r.json()["error"] == "malformed JSON"
    r = post_batch(client, {"an": "object"}, token_n1)
    assert r.status_code == 400 and "array" in r.json()["error"]
    assert store.counts()["events"] == 0


def test_one_bad_event_refuses_the_whole_batch(client, store, token_n1):
    events = minutes(4)
    events[2]["data"]["prompt_tokens"] = "1200"
    events[3]["data"]["cost"]["total_micro"] = 1.5
    r = post_batch(client, events, token_n1)
    assert r.status_code == 400
    body = r.json()
    assert body["received"] == 4
    assert [(e["index"], e["id"], e["field"]) for e in body["errors"]] == [
        (2, events[2]["id"], "data.prompt_tokens"), (3, events[3]["id"], "data.cost.total_micro")]
    assert store.counts() == {"events": 0, "windows": 0, "usage": 0, "tokens": 1}
    # the good ones go in when sent alone
    assert post_batch(client, events[:2], token_n1).json()["accepted"] == 2


def test_a_50_mb_body_is_413_from_its_content_length(client, store, token_n1):
    body = b"[" + b" " * (50 * 1024 * 1024) + b"]"
    r = post_batch(client, None, token_n1, content=body)
    assert r.status_code == 413
    assert store.counts()["events"] == 0
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_chunked_body_over_the_limit_is_413_while_streaming(store, token_n1):
    """No Content-Length: the limit holds on the bytes as they arrive; the app stops reading
    soon after the limit, so 64 MiB sent never sit in the collector's memory."""
    app_read = []

    def count_reads(app):
        async def wrapped(scope, receive, send):
            async def counting():
                message = await receive()
                app_read.append(len(message.get("body", b"")))
                return message
            await app(scope, counting, send)
        return wrapped

    def chunks():
        for _ in range(64):
            yield b" " * (1024 * 1024)

    with LiveServer(store, max_body_bytes=1024 * 1024, wrap=count_reads) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/api/v1/events", content=chunks(), headers={
            "content-type": "application/cloudevents-batch+json",
            "authorization": f"Bearer {token_n1}"})
        assert r.status_code == 413
        assert c.get("/healthz").status_code == 200
    assert 1024 * 1024 < sum(app_read) < 3 * 1024 * 1024
    assert store.counts()["events"] == 0


def test_a_lying_content_length_reads_only_the_declared_bytes(store, token_n1):
    """A raw socket: Content-Length 100, then 5,000 bytes. The body is the first 100 bytes
    (malformed JSON here): 400, and nothing stored."""
    with LiveServer(store, max_body_bytes=1024) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/cloudevents-batch+json\r\n"
                      b"Authorization: Bearer " + token_n1.encode() + b"\r\n"
                      b"Content-Length: 100\r\n\r\n[" + b" " * 5000)
            head = s.recv(64)
    assert head.startswith(b"HTTP/1.1 400")
    assert store.counts()["events"] == 0


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_events_sent_are_what_the_validator_parses(token_n1, client, store):
    """The store's flattened row matches the event's data, field by field."""
    ev = make_event(models=[("m1", "acme"), ("m2", "")], prompt=900, completion=300)
    assert post_batch(client, [ev], token_n1).status_code == 200
    parsed, _ = check_event(ev, 0)
    [row] = sql(store,
        'SELECT node, device, start, "end", energy_j, prompt_tokens, completion_tokens, cost_micro, '
        "currency FROM windows")
    w = parsed.window
    assert row == (w["node"], w["device"], w["start"], w["end"], w["energy_j"], 900, 300,
                   w["cost_micro"], "USD")
    models = sql(store, f"SELECT model, tenant FROM usage ORDER BY {store.dialect.usage_order}")
    assert models == [("m1", "acme"), ("m2", "")]
