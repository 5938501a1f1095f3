"""The query API (GET /api/v1/windows, GET /api/v1/usage) on the real server on loopback.

(Not starlette's TestClient: starlette 1.x deprecates it over httpx in favour of another
package, and a loopback server costs a tenth of a second.)"""

import pytest

from meterd.units import iso
from meterd.collector.auth import create_token
from meterd.collector.validation import check_batch
from tests.collector.conftest import T0, make_event


def ingest(store, events):
    parsed, errors = check_batch(events)
    assert errors == []
    return store.ingest(parsed)


@pytest.fixture
def fleet(store):
    """Two nodes over two days: busy windows of two models, idle windows, a second currency."""
    events = [
        make_event("n1", "GPU-0", T0, prompt=1000, completion=0, models=[("a", "")]),
        make_event("n1", "GPU-0", T0 + 60, prompt=10, completion=0, models=[("a", "")],
                   capex=1_000_000, energy_micro=0, opex=0),
        make_event("n1", "GPU-1", T0 + 3600, prompt=300, completion=100,
                   models=[("a", "acme"), ("b", "")]),
        make_event("n1", "GPU-0", T0 + 120, prompt=0, completion=0),  # idle
        make_event("n2", "GPU-0", T0 + 86_400, prompt=500, completion=500, models=[("b", "")],
                   energy_j=None),
        make_event("n3", "GPU-0", T0, prompt=100, completion=0, models=[("a", "")], currency="EUR"),
    ]
    for e in events:
        ingest(store, [e])
    return events


@pytest.fixture
def api(client):
    return client


def get(api, path, token, **params):
    return api.get(path, params=params, headers={"authorization": f"Bearer {token}"})


def test_windows_filters_and_pages(api, fleet, read_token):
    r = get(api, "/api/v1/windows", read_token, node="n1")
    assert r.status_code == 200
    ws = r.json()["windows"]
    assert [(w["device"], w["start"]) for w in ws] == [
        ("GPU-0", iso(T0)), ("GPU-0", iso(T0 + 60)), ("GPU-0", iso(T0 + 120)), ("GPU-1", iso(T0 + 3600))]
    assert ws[0]["event_id"] == fleet[0]["id"] and ws[0]["partial"] is False and ws[0]["flags"] == []
    assert ws[3]["usage"][0]["model"] == "a" and ws[3]["usage"][0]["tenant"] == "acme"
    assert ws[2]["usage"] == [{"model": None, "tenant": None, "prompt_tokens": 0, "completion_tokens": 0, "cached_prompt_tokens": 0,
                               "cost_micro": 61_234, "cost_prompt_micro": 0, "cost_completion_micro": 0,
                               "energy_j": 31_250.5, "seconds": 60.0}]
    by_model = get(api, "/api/v1/windows", read_token, model="b").json()["windows"]
    assert [(w["node"], w["device"]) for w in by_model] == [("n1", "GPU-1"), ("n2", "GPU-0")]
    ranged = get(api, "/api/v1/windows", read_token, since=iso(T0 + 60), until="2026-11-28T01:00:00Z")
    assert [w["start"] for w in ranged.json()["windows"]] == [iso(T0 + 60), iso(T0 + 120)]
    # pages of 2 walk every window once, in (start, seq) order
    seen, after = [], None
    for _ in range(10):
        params = {"limit": 2, **({"after": after} if after else {})}
        page = get(api, "/api/v1/windows", read_token, **params).json()
        seen += [w["event_id"] for w in page["windows"]]
        after = page["next"]
        if after is None:
            break
    assert sorted(seen) == sorted(e["id"] for e in fleet) and len(seen) == len(set(seen))


def test_a_node_token_reads_only_its_own_node(api, fleet, store):
    tok = create_token(store, "n2")
    ws = get(api, "/api/v1/windows", tok).json()["windows"]
    assert {w["node"] for w in ws} == {"n2"}
    assert get(api, "/api/v1/windows", tok, node="n1").status_code == 403
    groups = get(api, "/api/v1/usage", tok, group_by="node").json()["groups"]
    assert [g["node"] for g in groups] == ["n2"]


def test_queries_need_a_token_and_good_parameters(api, fleet, read_token):
    assert api.get("/api/v1/windows").status_code == 401
    assert api.get("/api/v1/usage", headers={"authorization": "Bearer nope"}).status_code == 401
    for params in ({"since": "yesterday"}, {"limit": "0"}, {"limit": "x"}, {"limit": "100001"}):
        assert get(api, "/api/v1/windows", read_token, **params).status_code == 400, params
    for group_by in ("node,node", "gpu", "node,week"):
        assert get(api, "/api/v1/usage", read_token, group_by=group_by).status_code == 400


def test_usage_sums_are_exact_and_ratios_are_ratios_of_sums(api, fleet, read_token):
    r = get(api, "/api/v1/usage", read_token, group_by="node,device", node="n1")
    groups = {g["device"]: g for g in r.json()["groups"]}
    g0 = groups["GPU-0"]
    assert g0["windows"] == 3 and g0["seconds"] == 180.0
    assert g0["prompt_tokens"] == 1010 and g0["completion_tokens"] == 0
    assert g0["cost_micro"] == 61_234 + 1_000_000 + 61_234
    assert g0["cost_capex_micro"] == 50_000 + 1_000_000 + 50_000
    assert g0["idle_cost_micro"] == 61_234
    assert g0["energy_j"] == pytest.approx(3 * 31_250.5)
    # cost per Mtok: total cost / total tokens, not the mean of the windows' ratios
    assert g0["cost_per_mtok_micro"] == round(g0["cost_micro"] * 1_000_000 / 1010)
    assert g0["cost_per_mtok"] == f"{g0['cost_per_mtok_micro'] / 1e6:.6f}"
    assert g0["tokens_per_j"] == pytest.approx(1010 / (3 * 31_250.5))
    assert g0["avg_power_w"] == pytest.approx(3 * 31_250.5 / 180)


def test_grouping_by_model_shows_idle_cost_and_keeps_totals(api, fleet, read_token):
    by_node = get(api, "/api/v1/usage", read_token, group_by="node").json()["groups"]
    by_model = get(api, "/api/v1/usage", read_token, group_by="node,model,tenant").json()["groups"]
    for key in ("cost_micro", "prompt_tokens", "completion_tokens", "idle_cost_micro"):
        for node in ("n1", "n2", "n3"):
            assert sum(g[key] for g in by_model if g["node"] == node) == \
                sum(g[key] for g in by_node if g["node"] == node), (key, node)
    idle = [g for g in by_model if g["model"] is None]
    assert len(idle) == 1 and idle[0]["cost_micro"] == 61_234 and idle[0]["prompt_tokens"] == 0
    assert idle[0]["cost_per_mtok_micro"] is None
    n1a = [g for g in by_model if g["node"] == "n1" and g["model"] == "a"]
    assert {g["tenant"] for g in n1a} == {"", "acme"}
    assert by_model[0]["cost_capex_micro"] is None  # not split by model


def test_usage_by_time_bucket_and_currency(api, fleet, read_token):
    days = get(api, "/api/v1/usage", read_token, group_by="day").json()["groups"]
    assert [(g["day"], g["currency"]) for g in days] == [
        ("2026-11-28T00:00:00Z", "EUR"), ("2026-11-28T00:00:00Z", "USD"), ("2026-11-29T00:00:00Z", "USD")]
    assert days[2]["energy_j"] is None and days[2]["tokens_per_j"] is None  # n2 had no energy reading
    hours = get(api, "/api/v1/usage", read_token, group_by="hour", node="n1").json()["groups"]
    assert [g["hour"] for g in hours] == ["2026-11-28T00:00:00Z", "2026-11-28T01:00:00Z"]
    overall = get(api, "/api/v1/usage", read_token).json()
    assert overall["group_by"] == [] and [g["currency"] for g in overall["groups"]] == ["EUR", "USD"]
