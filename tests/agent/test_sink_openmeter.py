"""The openmeter sink against a faithful OpenMeter ingest on loopback (tests/fakes/billing.py):
usage events as application/cloudevents-batch+json, 204, subject on every event, meters that
group by model and tenant through JSONPath."""

import json
import random

import httpx
import pytest

from meterd.agent.shipper import Shipper
from meterd.agent.sinks.openmeter import OpenMeterSink
from meterd.agent.usage_events import usage_events
from tests.agent.billing_seed import drain, seed, store  # noqa: F401 - store is a fixture
from tests.fakes.billing import OM_BATCH, FakeOpenMeter

T0 = 1_800_000_000.0


@pytest.fixture
def om():
    with FakeOpenMeter(dedupe=True) as f:
        yield f


def shipper_for(store, fake, **kw):
    return Shipper(store, fake.base, fake.token, sink=OpenMeterSink(**kw), rng=random.Random(1), backoff_cap_s=0.01)


def test_the_fake_compares_the_content_type_exactly(om):
    ev = [{"specversion": "1.0", "id": "1", "source": "n", "type": "t", "subject": "s", "data": {}}]
    h = {"Authorization": f"Bearer {om.token}"}
    url = om.base + "/api/v1/events"
    r = httpx.post(url, content=json.dumps(ev), headers=h | {"Content-Type": OM_BATCH + "; charset=utf-8"})
    assert r.status_code == 400 and "invalid content type" in r.json()["detail"]
    r = httpx.post(url, content=json.dumps(ev), headers=h | {"Content-Type": "application/json"})
    assert r.status_code == 400
    bad = [dict(ev[0], subject="")]
    r = httpx.post(url, content=json.dumps(bad), headers=h | {"Content-Type": OM_BATCH})
    assert r.status_code == 400 and "subject is required" in r.text
    r = httpx.post(url, content=json.dumps(ev), headers=h | {"Content-Type": OM_BATCH})
    assert r.status_code == 204 and r.content == b""
    assert len(om.events) == 1


def test_usage_events_reach_openmeter_with_subject_and_exact_content_type(store, om):
    seed(store, 10, T0)
    s = shipper_for(store, om)
    try:
        assert s.url == om.base + "/api/v1/events"  # a base URL gets the ingest path
        drain(s, max_rounds=200)
    finally:
        s.close()
    assert store.outbox_counts() == (0, 0)
    assert set(om.content_types) == {OM_BATCH}
    assert om.events and all(e["subject"] for e in om.events)
    assert {e["type"] for e in om.events} == {"meterd.usage.v1"}
    expected = [e for w in store.windows() for e in usage_events(w, store.usage_of(w["id"]))]
    assert sorted(e["id"] for e in om.events) == sorted(e["id"] for e in expected)
    total = sum(e["data"]["cost_micro"] for e in om.events)
    assert total == sum(w["cost_micro"] for w in store.windows())


def test_window_events_go_too_when_asked(store, om):
    seed(store, 3, T0)
    s = shipper_for(store, om, window_events=True)
    try:
        drain(s, max_rounds=200)
    finally:
        s.close()
    types = [e["type"] for e in om.events]
    assert types.count("meterd.window.v1") == len(store.windows())
    assert all(e["subject"] for e in om.events)


def test_a_batch_stored_then_answered_500_is_resent_and_deduplicated(store, om):
    seed(store, 6, T0)
    om.fail_after_store = 1
    s = shipper_for(store, om)
    try:
        o = s.ship_once()
        assert o.wait_s > 0 and o.acked == 0  # a 500: retried, not quarantined
        drain(s, max_rounds=200)
    finally:
        s.close()
    assert store.outbox_counts() == (0, 0)
    ids = [e["id"] for e in om.events]
    assert len(ids) == len(set(ids))  # the resend was a duplicate OpenMeter dropped
    assert sum(e["data"]["cost_micro"] for e in om.events) == sum(w["cost_micro"] for w in store.windows())


def test_a_window_split_across_batches_ships_when_every_event_is_acked(store, om):
    seed(store, 2, T0)
    s = Shipper(store, om.base, om.token, sink=OpenMeterSink(), max_events=2, rng=random.Random(1))
    try:
        o = s.ship_once()  # the first window has 3 usage events: 2 go, the window stays pending
        assert o.acked == 2
        assert store.windows()[0]["shipped_at"] is None
        assert len(store.acked_keys([store.windows()[0]["id"]])[store.windows()[0]["id"]]) == 2
        drain(s, max_rounds=200)
    finally:
        s.close()
    assert store.outbox_counts() == (0, 0)
    assert store.acked_keys([w["id"] for w in store.windows()]) == {}
    ids = [e["id"] for e in om.events]
    assert len(ids) == len(set(ids)) == sum(len(usage_events(w, store.usage_of(w["id"]))) for w in store.windows())


def test_a_refused_batch_quarantines_with_the_sinks_name(store, om):
    seed(store, 1, T0)
    s = Shipper(store, om.base, "wrong-token", sink=OpenMeterSink(), rng=random.Random(1))
    try:
        o = s.ship_once()
    finally:
        s.close()
    assert o.quarantined == 2
    assert all(q["quarantine_reason"].startswith("openmeter: HTTP 401") for q in store.quarantined())
