"""meterd.usage.v1: flat events per (window, model, tenant) plus the idle remainder, adding up
exactly to each window's cost, with deterministic ids and scalar data."""

import json

import pytest

from meterd.agent.store import Store
from meterd.agent.usage_events import USAGE_EVENT_TYPE, usage_event_id, usage_events
from tests.agent.billing_seed import seed

T0 = 1_800_000_000.0
REQUIRED = ("node", "device", "model", "tenant", "start", "end", "prompt_tokens", "cached_prompt_tokens",
            "completion_tokens", "energy_j", "cost_micro", "cost_prompt_micro", "cost_completion_micro", "currency")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "m.db")
    seed(s, 8, T0)
    yield s
    s.close()


def all_events(store, subject=None):
    out = []
    for w in store.windows():
        out.append((w, usage_events(w, store.usage_of(w["id"]), subject)))
    return out


def test_events_add_up_exactly_to_each_window(store):
    for w, evs in all_events(store):
        assert evs, "every window has at least one usage event"
        for k in ("cost_micro", "cost_capex_micro", "cost_energy_micro", "cost_opex_micro",
                  "cost_prompt_micro", "cost_completion_micro", "prompt_tokens", "completion_tokens",
                  "cached_prompt_tokens"):
            assert sum(e["data"][k] for e in evs) == w[k], k
        assert sum(e["data"]["energy_j"] for e in evs) == pytest.approx(w["energy_j"], rel=1e-12)
        for e in evs:
            d = e["data"]
            assert d["cost_micro"] == d["cost_capex_micro"] + d["cost_energy_micro"] + d["cost_opex_micro"]


def test_one_event_per_model_and_tenant_plus_idle_remainder(store):
    kinds = {}
    for w, evs in all_events(store):
        usage = store.usage_of(w["id"])
        tokens = [e for e in evs if e["data"]["kind"] == "tokens"]
        assert [(e["data"]["model"], e["data"]["tenant"]) for e in tokens] == [(u["model"], u["tenant"]) for u in usage]
        idle = [e for e in evs if e["data"]["kind"] == "idle"]
        if not usage:
            assert len(idle) == 1 and idle[0]["data"]["cost_micro"] == w["cost_micro"] > 0
            assert idle[0]["data"]["model"] == idle[0]["data"]["tenant"] == ""
            assert idle[0]["data"]["tokens"] == 0
        else:
            assert idle == []  # the usage rows carry the whole cost: no remainder to send
        for e in evs:
            kinds[e["data"]["kind"]] = kinds.get(e["data"]["kind"], 0) + 1
    assert kinds["idle"] >= 2 and kinds["tokens"] >= 8


def test_a_remainder_the_rows_do_not_carry_is_its_own_event(store):
    w = store.windows()[0]
    usage = store.usage_of(w["id"])
    assert usage
    w = dict(w, cost_micro=w["cost_micro"] + 7, cost_opex_micro=w["cost_opex_micro"] + 7)
    evs = usage_events(w, usage)
    assert evs[-1]["data"]["kind"] == "idle" and evs[-1]["data"]["cost_micro"] == 7
    assert sum(e["data"]["cost_micro"] for e in evs) == w["cost_micro"]


def test_ids_are_deterministic_and_unique(store, tmp_path):
    first = [e["id"] for _, evs in all_events(store) for e in evs]
    again = [e["id"] for _, evs in all_events(store) for e in evs]
    assert first == again and len(set(first)) == len(first)
    other = Store(tmp_path / "other.db")  # the same windows metered into another store
    try:
        seed(other, 8, T0)
        assert [e["id"] for _, evs in all_events(other) for e in evs] == first
    finally:
        other.close()
    wid = "6f0c2c1e-1d3b-5c7e-9a51-0d8f1b2a3c4d"
    assert usage_event_id(wid, "a|b", "c") != usage_event_id(wid, "a", "b|c")
    assert usage_event_id(wid, "", "", idle=True) != usage_event_id(wid, "", "")


def test_subject_is_the_tenant_else_the_configured_subject_else_the_node(store):
    for subject in (None, "acme-internal"):
        for w, evs in all_events(store, subject):
            for e in evs:
                t = e["data"]["tenant"]
                assert e["subject"] == (t or subject or w["node"])


def test_data_is_flat_scalars_with_the_documented_fields(store):
    for w, evs in all_events(store):
        for e in evs:
            assert e["type"] == USAGE_EVENT_TYPE and e["specversion"] == "1.0"
            assert e["source"] == w["node"] and e["time"] == e["data"]["start"]
            assert set(REQUIRED) <= set(e["data"])
            assert all(isinstance(v, (str, int, float, bool)) for v in e["data"].values()), e["data"]
            for k in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "cost_micro"):
                assert type(e["data"][k]) is int
            assert e["data"]["window_id"] == w["event_id"]
            json.dumps(e)


def test_cached_prompt_tokens_are_carried(store):
    assert sum(w["cached_prompt_tokens"] for w in store.windows()) > 0


def test_cached_prompt_tokens_come_from_the_usage_row(store):
    w = next(w for w in store.windows() if store.usage_of(w["id"]))
    usage = [dict(u, cached_prompt_tokens=11) for u in store.usage_of(w["id"])]
    assert all(e["data"]["cached_prompt_tokens"] == 11 for e in usage_events(w, usage) if e["data"]["kind"] == "tokens")
