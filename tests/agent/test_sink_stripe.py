"""The stripe sink against a faithful Stripe meter events API on loopback: form-encoded events,
identifiers stable across resends, the 35-day limit, and the rate limit."""

import random
import time
from urllib.parse import parse_qsl

import pytest

from meterd.agent.shipper import Shipper
from meterd.agent.sinks.stripe import StripeSink
from meterd.agent.usage_events import usage_events
from tests.agent.billing_seed import drain, seed, store  # noqa: F401 - store is a fixture
from tests.fakes.billing import FakeStripe

DAY = 86400.0
CUSTOMERS = {"team-a": "cus_a", "team-b": "cus_b", "n1": "cus_internal"}


@pytest.fixture
def stripe():
    with FakeStripe(rate_per_s=1000) as f:
        yield f


def stripe_shipper(store, fake, **kw):
    kw.setdefault("customers", CUSTOMERS)
    kw.setdefault("rate_per_s", 500)
    return Shipper(store, fake.base, fake.token, sink=StripeSink(**kw), rng=random.Random(1), backoff_cap_s=0.01)


def test_meter_events_are_form_encoded_with_the_event_id_as_identifier(store, stripe):
    seed(store, 3, time.time() - 2 * DAY)
    s = stripe_shipper(store, stripe)
    try:
        assert s.url == stripe.base + "/v1/billing/meter_events"
        drain(s, max_rounds=2000)
    finally:
        s.close()
    assert store.outbox_counts() == (0, 0)
    r = stripe.requests[0]
    assert r["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    form = dict(parse_qsl(r["body"].decode()))
    assert set(form) == {"event_name", "identifier", "timestamp", "payload[stripe_customer_id]", "payload[value]"}
    expected = [e for w in store.windows() for e in usage_events(w, store.usage_of(w["id"]))]
    assert sorted(stripe.meter_events) == sorted(e["id"] for e in expected if e["data"]["cost_micro"])
    by_customer = stripe.total("meterd_cost")
    assert sum(by_customer.values()) == sum(w["cost_micro"] for w in store.windows())
    assert set(by_customer) == {"cus_a", "cus_b", "cus_internal"}


def test_identifiers_are_stable_across_resends(store, stripe):
    seed(store, 2, time.time() - DAY)
    stripe.fail_after_store = 3  # Stripe keeps the first three events but answers 500
    s = stripe_shipper(store, stripe)
    try:
        drain(s, max_rounds=2000)
    finally:
        s.close()
    assert store.outbox_counts() == (0, 0) and store.quarantined() == []
    sent = stripe.identifiers_sent
    resent = [i for i in set(sent) if sent.count(i) > 1]
    assert len(resent) == 3  # each resent with the identifier it had, answered "already exists"
    assert len(stripe.meter_events) == len(set(sent))  # held once each
    assert sum(stripe.total("meterd_cost").values()) == sum(w["cost_micro"] for w in store.windows())
    # a second agent run over the same windows (a lost store acknowledgement) sends the same identifiers
    again = [it.key for w in store.windows() for it in StripeSink(customers=CUSTOMERS).items(w, store.usage_of(w["id"]))]
    assert sorted(again) == sorted(stripe.meter_events)


def test_usage_older_than_35_days_is_quarantined_with_the_reason_not_sent(store, stripe):
    now = time.time()
    seed(store, 1, now - 36 * DAY, devices=("GPU-0",))
    seed(store, 1, now - 34 * DAY, devices=("GPU-1",))
    s = stripe_shipper(store, stripe)
    try:
        drain(s, max_rounds=2000)
    finally:
        s.close()
    q = store.quarantined()
    assert [r["device"] for r in q] == ["GPU-0"]
    assert "older than the 35 days Stripe accepts" in q[0]["quarantine_reason"]
    assert q[0]["quarantine_reason"].startswith("stripe: ")
    assert stripe.meter_events and all(int(e["timestamp"]) > now - 35 * DAY for e in stripe.meter_events.values())
    assert store.outbox_counts() == (0, 1)


def test_the_fake_refuses_what_stripe_refuses(stripe):
    import httpx

    h = {"Authorization": f"Bearer {stripe.token}"}
    url = stripe.base + "/v1/billing/meter_events"
    old = str(int(time.time() - 36 * DAY))
    form = {"event_name": "m", "payload[stripe_customer_id]": "cus_1", "payload[value]": "3", "identifier": "x1"}
    r = httpx.post(url, data=dict(form, timestamp=old), headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "timestamp"
    r = httpx.post(url, data={k: v for k, v in form.items() if k != "event_name"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "parameter_missing"
    assert httpx.post(url, data=form, headers=h).status_code == 200
    r = httpx.post(url, data=form, headers=h)
    assert r.status_code == 400 and "already exists with identifier x1" in r.json()["error"]["message"]
    assert httpx.post(url, json=form, headers=h).status_code == 400  # JSON is not what Stripe takes
    assert httpx.post(url, data=form, headers={"Authorization": "Bearer sk_wrong"}).status_code == 401


def test_requests_stay_within_the_rate_limit(store):
    with FakeStripe(rate_per_s=20) as fake:
        seed(store, 4, time.time() - DAY)
        n = sum(1 for w in store.windows() for e in usage_events(w, store.usage_of(w["id"])))
        assert n >= 8
        s = stripe_shipper(store, fake, rate_per_s=15)
        t0 = time.monotonic()
        try:
            drain(s, max_rounds=2000)
        finally:
            s.close()
        elapsed = time.monotonic() - t0
        assert fake.rate_limited == 0
        assert elapsed >= (n - 1) / 15 * 0.9
        assert len(fake.meter_events) == n


def test_a_429_backs_off_and_nothing_is_lost(store):
    with FakeStripe(rate_per_s=3) as fake:
        seed(store, 2, time.time() - DAY)
        s = stripe_shipper(store, fake, rate_per_s=1000)  # a sender faster than the sink's limit
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                o = s.ship_once()
                if o.idle:
                    break
                if o.wait_s:
                    time.sleep(min(o.wait_s, 0.2))
        finally:
            s.close()
        assert fake.rate_limited > 0
        assert store.outbox_counts() == (0, 0) and store.quarantined() == []
        assert sum(fake.total("meterd_cost").values()) == sum(w["cost_micro"] for w in store.windows())


def test_a_subject_without_a_customer_is_quarantined_with_the_key_to_add(store, stripe):
    seed(store, 2, time.time() - DAY)
    s = stripe_shipper(store, stripe, customers={"team-a": "cus_a", "n1": "cus_internal"})
    try:
        drain(s, max_rounds=2000)
    finally:
        s.close()
    q = store.quarantined()
    assert q and all("no customer for subject 'team-b': add it to [ship.customers]" in r["quarantine_reason"] for r in q)
