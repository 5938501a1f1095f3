"""The lago sink against a faithful Lago events API on loopback: batches of at most 100, all or
nothing, and a duplicate transaction_id (422 value_already_exist) counted as delivered."""

import random

import pytest

from meterd.agent.shipper import Shipper
from meterd.agent.sinks.lago import LagoSink
from meterd.agent.usage_events import usage_events
from tests.agent.billing_seed import drain, seed, store  # noqa: F401 - store is a fixture
from tests.fakes.billing import FakeLago

T0 = 1_800_000_000.0
SUBS = {"team-a": "sub_a", "team-b": "sub_b", "n1": "sub_internal"}


@pytest.fixture
def lago():
    with FakeLago() as f:
        yield f


def lago_shipper(store, fake, **kw):
    kw.setdefault("subscriptions", SUBS)
    return Shipper(store, fake.base, fake.token, sink=LagoSink(**kw), rng=random.Random(1), backoff_cap_s=0.01)


def batches(fake):
    import json
    return [json.loads(r["body"])["events"] for r in fake.requests]


def test_usage_reaches_lago_in_batches_of_at_most_100(store, lago):
    seed(store, 40, T0)  # 80 windows, more than 100 usage events
    s = lago_shipper(store, lago)
    try:
        assert s.url == lago.base + "/api/v1/events/batch"
        drain(s)
    finally:
        s.close()
    assert store.outbox_counts() == (0, 0)
    sizes = [len(b) for b in batches(lago)]
    assert max(sizes) == 100 and len(sizes) >= 2
    expected = [e for w in store.windows() for e in usage_events(w, store.usage_of(w["id"]))]
    assert lago.created == len(lago.events) == len(expected)
    assert sorted(t for _, t in lago.events) == sorted(e["id"] for e in expected)  # transaction_id = event id
    ev = next(iter(lago.events.values()))
    assert ev["code"] == "meterd_cost" and isinstance(ev["timestamp"], float)
    assert all(not isinstance(v, (dict, list)) for v in ev["properties"].values())
    by_sub = lago.sum("meterd_cost", "cost_micro", by=("tenant",))
    assert sum(by_sub.values()) == sum(w["cost_micro"] for w in store.windows())
    assert {s for s, _ in lago.events} == {"sub_a", "sub_b", "sub_internal"}


def test_a_batch_lago_stored_but_answered_500_is_delivered_on_retry_not_quarantined(store, lago):
    seed(store, 5, T0)
    lago.fail_after_store = 1
    s = lago_shipper(store, lago)
    try:
        o = s.ship_once()
        assert o.wait_s > 0 and o.acked == 0  # a 500: the events are held, the agent does not know
        held = lago.created
        assert held > 0
        o = s.ship_once()  # the retry: every event answered value_already_exist
        assert o.acked == held and o.quarantined == 0 and lago.already_held == held
        drain(s)
    finally:
        s.close()
    assert store.outbox_counts() == (0, 0) and store.quarantined() == []
    assert lago.created == held  # nothing sent twice as new
    assert [r["body"] for r in lago.requests[:1]] == [r["body"] for r in lago.requests[1:2]]


def test_a_partly_held_batch_delivers_the_rest_and_quarantines_only_bad_events(store, lago):
    seed(store, 4, T0)
    # Lago already holds the events of the first window (sent before, by a previous run).
    first = store.windows()[0]
    s = lago_shipper(store, lago)
    try:
        held = [e["id"] for e in usage_events(first, store.usage_of(first["id"]))]
        for tid, ev in zip(held, usage_events(first, store.usage_of(first["id"]))):
            lago.events[(SUBS[ev["subject"]], tid)] = {"code": "meterd_cost", "transaction_id": tid,
                                                        "properties": ev["data"]}
        drain(s)
    finally:
        s.close()
    assert store.outbox_counts() == (0, 0)
    expected = [e for w in store.windows() for e in usage_events(w, store.usage_of(w["id"]))]
    assert len(lago.events) == len(expected)
    assert lago.created == len(expected) - len(held)


def test_other_422s_quarantine_the_windows_named(store, lago):
    seed(store, 4, T0)
    bad = {"team-a": "sub_a", "team-b": "", "n1": "sub_internal"}
    # team-b's subscription is unknown to the mapping: those windows are refused before sending
    s = lago_shipper(store, lago, subscriptions={k: v for k, v in bad.items() if v})
    try:
        drain(s)
    finally:
        s.close()
    q = store.quarantined()
    assert q and all("no subscription for subject 'team-b'" in r["quarantine_reason"] for r in q)
    assert all(r["quarantine_reason"].startswith("lago: ") for r in q)
    assert all(s != "" for s, _ in lago.events)


def test_lago_validation_errors_name_the_events_refused(store, lago):
    seed(store, 3, T0)
    s = lago_shipper(store, lago)
    # an event Lago refuses for a reason other than a duplicate: a timestamp it cannot parse
    orig = s.sink.items

    def items(w, usage):
        out = orig(w, usage)
        if w["id"] == 2:
            out[0].payload = dict(out[0].payload, timestamp="yesterday")
        return out

    s.sink.items = items
    try:
        drain(s)
    finally:
        s.close()
    q = store.quarantined()
    assert [r["id"] for r in q] == [2]
    assert q[0]["quarantine_reason"] == 'lago: HTTP 422: {"timestamp":["invalid_format"]}'
    others = [w for w in store.windows() if w["id"] != 2]
    assert all(w["shipped_at"] for w in others)
    assert lago.created == sum(len(usage_events(w, store.usage_of(w["id"]))) for w in others)


def test_several_metrics_make_one_lago_event_each_with_stable_transaction_ids(store, lago):
    seed(store, 2, T0)
    metrics = {"cost_micro": "meterd_cost", "prompt_tokens": "meterd_prompt_tokens"}
    s = lago_shipper(store, lago, metrics=metrics)
    try:
        drain(s)
    finally:
        s.close()
    n = sum(len(usage_events(w, store.usage_of(w["id"]))) for w in store.windows())
    assert len(lago.events) == 2 * n
    again = [it.key for w in store.windows() for it in LagoSink(metrics=metrics, subscriptions=SUBS)
             .items(w, store.usage_of(w["id"]))]
    assert sorted(again) == sorted(t for _, t in lago.events)
    assert sum(lago.sum("meterd_prompt_tokens", "prompt_tokens").values()) == sum(w["prompt_tokens"] for w in store.windows())
