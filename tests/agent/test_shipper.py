"""The shipper against sinks played by httpx.MockTransport (status codes, Retry-After) and against
the real collector on loopback (acceptance, deduplication, CloudEvents SDK)."""

import json
import os
import random

import httpx
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat

from meterd.agent.config import Prices, to_micro
from meterd.agent.costmodel import DeviceShare
from meterd.agent.events import BATCH_CONTENT_TYPE
from meterd.agent.ledger import price_window
from meterd.agent.shipper import (
    ShipError, Shipper, backoff_s, check_url, read_token_file, retry_after_s,
)
from meterd.agent.windows import Usage, Window
from tests.agent.billing_seed import store  # noqa: F401 - the store fixture

T0 = 1_800_000_000.0
PRICES = Prices(rental_per_gpu_hour_micro=to_micro("3.6"), energy_per_kwh_micro=to_micro("0.36"), pue=1.0,
                opex_per_node_month_micro=0)


def seed(store, n, node="n1", device="GPU-0", start=T0):
    rows = []
    for i in range(n):
        w = Window(device, start + 60 * i, start + 60 * (i + 1), energy_j=30_000.0, energy_source="counter",
                   covered_s=60.0, usage={("llama", ""): Usage(1000 + i, 500)} if i % 3 else {})
        rows.append(price_window(w, node, "H100", PRICES, DeviceShare.for_node(True, 8), "sha256:t"))
    store.commit_windows(rows)
    return rows


def test_url_rules():
    assert check_url("https://c.example/api/v1/events")
    assert check_url("http://127.0.0.1:8650/api/v1/events")
    assert check_url("http://[::1]:8650/api/v1/events")
    with pytest.raises(ShipError, match="plain http to a non-loopback host is refused"):
        check_url("http://10.1.2.3/api/v1/events")
    assert check_url("http://10.1.2.3/api/v1/events", allow_insecure=True)
    with pytest.raises(ShipError, match="expected https"):
        check_url("ftp://x/")


def test_token_file_must_be_private(tmp_path, monkeypatch):
    p = tmp_path / "token"
    p.write_text("mtk_abc_secret\n")
    p.chmod(0o644)
    with pytest.raises(ShipError, match=r"accessible to group or others \(mode 0644\): run chmod 600"):
        read_token_file(str(p))
    p.chmod(0o600)
    assert read_token_file(str(p)) == "mtk_abc_secret"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_token_file("${CREDENTIALS_DIRECTORY}/token") == "mtk_abc_secret"
    with pytest.raises(ShipError, match="not found"):
        read_token_file(str(tmp_path / "nope"))


@pytest.mark.parametrize("mode", [0o640, 0o620, 0o610, 0o604, 0o602, 0o601, 0o660, 0o700 | 0o040],
                         ids=oct)
def test_a_token_file_with_any_group_or_other_bit_is_refused(tmp_path, mode):
    # Every one of the six group/other bits on its own: a group-readable token is as exposed as a
    # world-readable one.
    p = tmp_path / "token"
    p.write_text("mtk_abc_secret\n")
    p.chmod(mode)
    with pytest.raises(ShipError, match=rf"accessible to group or others \(mode {mode:04o}\)"):
        read_token_file(str(p))


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700], ids=oct)
def test_a_token_file_private_to_its_owner_is_read(tmp_path, mode):
    p = tmp_path / "token"
    p.write_text("mtk_abc_secret\n")
    p.chmod(mode)
    assert read_token_file(str(p)) == "mtk_abc_secret"


def test_backoff_and_retry_after():
    rng = random.Random(7)
    waits = [backoff_s(a, rng) for a in range(12)]
    assert all(0 <= w <= min(300, 2 ** a) for a, w in enumerate(waits))
    assert retry_after_s("120", 0) == 120
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert retry_after_s("soon", 0) is None and retry_after_s(None, 0) is None


class Sink:
    """A sink played by a function of the request; records what it received."""

    def __init__(self, answer):
        self.answer = answer
        self.batches = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)
        self.batches.append(events)
        assert request.headers["content-type"] == BATCH_CONTENT_TYPE
        assert request.headers["authorization"] == "Bearer tok"
        return self.answer(events, len(self.batches))


def shipper(store, sink, **kw):
    return Shipper(store, "http://127.0.0.1:1/api/v1/events", "tok", transport=httpx.MockTransport(sink),
                   rng=random.Random(1), **kw)


def test_batches_are_bounded_and_acknowledged_windows_leave_the_outbox(store):
    seed(store, 7)
    sink = Sink(lambda ev, n: httpx.Response(200, json={"accepted": len(ev), "duplicates": 0}))
    s = shipper(store, sink, max_events=3)
    outcomes = [s.ship_once() for _ in range(4)]
    assert [len(b) for b in sink.batches] == [3, 3, 1]
    assert outcomes[-1].idle and store.outbox_counts() == (0, 0)
    ids = [e["id"] for b in sink.batches for e in b]
    assert ids == [w["event_id"] for w in store.windows()]  # the ids fixed at commit time
    s.close()


def test_byte_bound_splits_batches(store):
    seed(store, 4)
    sink = Sink(lambda ev, n: httpx.Response(204))  # OpenMeter answers 204 No Content
    s = shipper(store, sink, max_bytes=3000)
    while not s.ship_once().idle:
        pass
    assert all(len(json.dumps(b)) <= 3000 for b in sink.batches) and sum(map(len, sink.batches)) == 4
    s.close()


@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_retryable_status_backs_off_honouring_retry_after_then_succeeds(store, status):
    seed(store, 2)
    sink = Sink(lambda ev, n: httpx.Response(status, headers={"Retry-After": "7"}) if n == 1
                else httpx.Response(200, json={}))
    s = shipper(store, sink)
    o = s.ship_once()
    assert o.wait_s >= 7 and o.acked == 0 and store.outbox_counts() == (2, 0)
    o = s.ship_once()
    assert o.acked == 2 and store.outbox_counts() == (0, 0)
    s.close()


def test_network_error_is_retried_not_lost(store):
    seed(store, 1)
    state = {"n": 0}

    def sink(request):
        state["n"] += 1
        if state["n"] < 3:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={})

    s = Shipper(store, "http://127.0.0.1:1/x", "tok", transport=httpx.MockTransport(sink), rng=random.Random(1))
    assert s.ship_once().wait_s >= 0 and s.ship_once().error and s.ship_once().acked == 1
    assert store.outbox_counts() == (0, 0)
    s.close()


def test_a_400_quarantines_only_the_refused_events_with_the_reason(store):
    rows = seed(store, 4)
    bad_id = rows[2][0]["event_id"]

    def answer(ev, n):
        if any(e["id"] == bad_id for e in ev):
            return httpx.Response(400, json={"error": "schema", "errors": [{"index": 0, "field": "data.cost"}]})
        return httpx.Response(200, json={"accepted": len(ev)})

    s = shipper(store, Sink(answer))
    o = s.ship_once()
    assert (o.acked, o.quarantined) == (3, 1)
    assert store.outbox_counts() == (0, 1)
    (q,) = store.quarantined()
    assert q["event_id"] == bad_id and "HTTP 400" in q["quarantine_reason"] and "schema" in q["quarantine_reason"]
    assert s.ship_once().idle  # never retried on its own
    assert store.retry_quarantined() == 1 and store.outbox_counts() == (1, 0)
    s.close()


def test_401_quarantines_the_batch_and_outbox_retry_sends_it_again(store, tmp_path):
    from click.testing import CliRunner
    from meterd.agent.cli import main

    seed(store, 3)
    s = shipper(store, Sink(lambda ev, n: httpx.Response(401, json={"error": "unknown token"})))
    assert s.ship_once().quarantined == 3
    r = CliRunner().invoke(main, ["outbox", "--db", str(store.path), "--json"])
    doc = json.loads(r.output)
    assert doc["pending"] == 0 and len(doc["quarantined"]) == 3
    assert "HTTP 401" in doc["quarantined"][0]["reason"]
    r = CliRunner().invoke(main, ["outbox", "--db", str(store.path), "retry"])
    assert r.exit_code == 0 and "3 window(s) back in the outbox" in r.output
    assert store.outbox_counts() == (3, 0)
    s.close()


def test_413_halves_the_batch(store):
    seed(store, 8)
    sink = Sink(lambda ev, n: httpx.Response(413) if len(ev) > 2 else httpx.Response(200, json={}))
    s = shipper(store, sink)
    while not s.ship_once().idle:
        pass
    assert [len(b) for b in sink.batches][:3] == [8, 4, 2]
    assert store.outbox_counts() == (0, 0)
    s.close()


def test_real_collector_accepts_the_stream_and_deduplicates_a_resend(store, tmp_path):
    from meterd.collector.auth import create_token
    from meterd.collector.store import SQLiteStore
    from tests.collector.conftest import LiveServer  # a real uvicorn on 127.0.0.1

    seed(store, 5, node="n1")
    cstore = SQLiteStore(tmp_path / "c.db")
    token = create_token(cstore, "n1")
    with LiveServer(cstore) as live:
        url = live.url
        s = Shipper(store, url + "/api/v1/events", token)
        o = s.ship_once()
        assert (o.acked, o.duplicates) == (5, 0)
        # the agent died before recording the acknowledgement: the same events go again
        store.conn.execute("UPDATE windows SET shipped_at = NULL")
        o = s.ship_once()
        assert (o.acked, o.duplicates) == (5, 5)
        s.close()
        got = httpx.get(url + "/api/v1/windows", headers={"Authorization": f"Bearer {token}"}).json()["windows"]
        assert sorted(w["event_id"] for w in got) == sorted(w["event_id"] for w in store.windows())
        assert sum(w["cost_micro"] for w in got) == sum(w["cost_micro"] for w in store.windows())
    cstore.close()


def test_events_are_valid_cloudevents(store):
    seed(store, 2)
    sink = Sink(lambda ev, n: httpx.Response(200, json={}))
    s = shipper(store, sink)
    s.ship_once()
    for e in sink.batches[0]:
        ce = from_http(HTTPMessage({"content-type": "application/cloudevents+json"}, json.dumps(e).encode()),
                       JSONFormat())
        assert ce.get_specversion() == "1.0" and ce.get_type() == "meterd.window.v1"
        assert ce.get_source() == "n1" and ce.get_subject() == "GPU-0" and ce.get_id() == e["id"]
        data = ce.get_data()
        data = json.loads(data) if isinstance(data, (str, bytes)) else data
        assert data["cost"]["currency"] == "USD"
    s.close()
