"""Pure schema validation of meterd.window.v1 events: plain values in, parsed rows or errors out."""

import copy
import json

import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from meterd.collector.validation import MalformedJSON, WrongShape, check_batch, check_body, check_event, foreign_sources
from tests.collector.conftest import T0, make_event


def test_an_event_from_the_agent_builder_is_valid_and_flattened():
    ev = make_event(prompt=1200, completion=450)
    # The CloudEvents SDK agrees that this is a CloudEvent 1.0 (it validates the attributes).
    sdk = JSONFormat().read(None, json.dumps(ev).encode())
    assert isinstance(sdk, CloudEvent)
    assert sdk.get_id() == ev["id"] and sdk.get_source() == "n1" and sdk.get_type() == "meterd.window.v1"
    parsed, errors = check_event(ev, 0)
    assert errors == []
    w = parsed.window
    assert (w["node"], w["device"], w["start"], w["end"]) == ("n1", "GPU-0", T0, T0 + 60)
    assert w["cost_micro"] == 61_234 and w["prompt_tokens"] == 1200
    assert json.loads(parsed.raw) == ev
    assert [u["model"] for u in parsed.usage] == ["llama-3.1-8b"]
    assert parsed.usage[0]["energy_j"] == pytest.approx(31_250.5)


def test_an_idle_window_gets_one_unattributed_row_with_all_its_cost_and_energy():
    parsed, errors = check_event(make_event(prompt=0, completion=0), 0)
    assert errors == []
    [rest] = parsed.usage
    assert rest["model"] is None and rest["attributed"] == 0
    assert rest["cost_micro"] == 61_234 and rest["energy_j"] == pytest.approx(31_250.5)
    assert rest["seconds"] == pytest.approx(60.0)


def test_usage_rows_partition_the_window_exactly():
    parsed, _ = check_event(make_event(models=[("a", "t1"), ("b", "t1"), ("a", "t2")], prompt=1001,
                                       completion=333), 0)
    rows = parsed.usage
    assert len(rows) == 3
    assert sum(r["cost_micro"] for r in rows) == parsed.window["cost_micro"]
    assert sum(r["prompt_tokens"] for r in rows) == 1001
    assert sum(r["energy_j"] for r in rows) == pytest.approx(31_250.5)
    assert sum(r["seconds"] for r in rows) == pytest.approx(60.0)


def _broken(mutate):
    ev = make_event()
    mutate(ev)
    parsed, errors = check_event(ev, 7)
    assert parsed is None and errors
    for e in errors:
        assert e["index"] == 7 and set(e) == {"index", "id", "field", "problem"}
    return {e["field"]: e["problem"] for e in errors}


@pytest.mark.parametrize("mutate, field, words", [
    (lambda e: e.update(specversion="0.3"), "specversion", "1.0"),
    (lambda e: e.pop("id"), "id", "missing"),
    (lambda e: e.update(type="com.example.other"), "type", "meterd.window.v1"),
    (lambda e: e.update(data="nope"), "data", "object"),
    (lambda e: e["data"].update(prompt_tokens="1200"), "data.prompt_tokens", "integer"),
    (lambda e: e["data"].update(prompt_tokens=True), "data.prompt_tokens", "integer"),
    (lambda e: e["data"].update(completion_tokens=-1), "data.completion_tokens", "between"),
    (lambda e: e["data"].update(completion_tokens=2**63), "data.completion_tokens", "between"),
    (lambda e: e["data"].update(energy_j="lots"), "data.energy_j", "number"),
    (lambda e: e["data"].update(energy_j=float("nan")), "data.energy_j", "finite"),
    (lambda e: e["data"].update(energy_source="guess"), "data.energy_source", "counter"),
    (lambda e: e["data"].update(start="2026-11-28 00:00:00"), "data.start", "offset"),
    (lambda e: e["data"].update(end=e["data"]["start"]), "data.end", "after"),
    (lambda e: e["data"].update(duration_s=59.0), "data.duration_s", "end - start"),
    (lambda e: e["data"]["cost"].update(capex_micro=1.5), "data.cost.capex_micro", "integer"),
    (lambda e: e["data"]["cost"].pop("currency"), "data.cost.currency", "missing"),
    (lambda e: e["data"]["usage"][0].update(model=None), "data.usage[0].model", "string"),
    (lambda e: e["data"]["usage"].append(dict(e["data"]["usage"][0])), "data.usage[1]", "twice"),
    (lambda e: e["data"].update(node="n2"), "data.node", "source"),
    (lambda e: e["data"].update(device="GPU-9"), "data.device", "subject"),
    (lambda e: e["data"].update(flags=[1]), "data.flags", "strings"),
])
def test_each_schema_break_names_its_field(mutate, field, words):
    problems = _broken(mutate)
    assert field in problems, problems
    assert words in problems[field]


def test_the_contract_arithmetic_is_checked():
    assert "capex_micro + energy_micro" in _broken(
        lambda e: e["data"]["cost"].update(total_micro=e["data"]["cost"]["total_micro"] + 1)
    )["data.cost.total_micro"]
    assert "total_micro" in _broken(
        lambda e: e["data"]["cost"].update(prompt_micro=e["data"]["cost"]["prompt_micro"] + 1)
    )["data.cost.prompt_micro"]
    assert "sum to" in _broken(
        lambda e: e["data"]["usage"][0].update(cost_micro=1))["data.usage"]
    assert "exceed" in _broken(
        lambda e: e["data"]["usage"][0].update(prompt_tokens=10**9))["data.usage"]


def test_the_id_must_be_derived_from_the_window():
    problems = _broken(lambda e: e.update(id="not-the-derived-id"))
    assert "derived" in problems["id"]
    problems = _broken(lambda e: e.update(time="2026-11-28T00:05:00Z"))
    assert "start" in problems["time"]


def test_a_batch_collects_errors_per_event_and_caps_them():
    good = make_event()
    bad = copy.deepcopy(good)
    bad["data"]["prompt_tokens"] = "x"
    parsed, errors = check_batch([good, bad, 42])
    assert len(parsed) == 1
    assert [(e["index"], e["field"]) for e in errors] == [(1, "data.prompt_tokens"), (2, "")]
    assert errors[0]["id"] == good["id"] and errors[1]["id"] is None
    _, errors = check_batch([bad] * 50, max_errors=10)
    assert len(errors) == 10
    _, errors = check_batch({"not": "a list"})
    assert "array" in errors[0]["problem"]


def test_foreign_sources_name_the_events():
    evs = [make_event("n1"), make_event("n2", start=T0 + 60)]
    assert foreign_sources(evs, "n1") == [{
        "index": 1, "id": evs[1]["id"], "field": "source",
        "problem": "a token for node 'n1' may not send events from 'n2'"}]
    assert foreign_sources(evs[:1], "n1") == []


def test_an_event_written_by_the_sdk_is_accepted():
    """The SDK's own structured writer (time as a datetime, re-serialized) round-trips."""
    ev = make_event()
    attrs = {k: v for k, v in ev.items() if k != "data"}
    sdk_event = JSONFormat().read(None, json.dumps(ev).encode())
    again = json.loads(JSONFormat().write(sdk_event))
    assert {k: again[k] for k in attrs} == attrs | {"time": again["time"]}
    parsed, errors = check_event(again, 0)
    assert errors == [] and parsed.id == ev["id"]


def test_a_partial_window_starting_between_milliseconds_is_accepted():
    """The agent's id rounds the start to the millisecond; the wire's time truncates it."""
    for frac in (0.1234, 0.1236, 0.9996):
        ev = make_event(start=T0 + frac, duration=60 - frac)
        parsed, errors = check_event(ev, 0)
        assert errors == [], (frac, errors)
        assert parsed.window["start"] == pytest.approx(T0 + frac, abs=1e-3)


# -- the typed fast path (check_body) against the reporting path (check_event) ------------------

HOSTILE = (None, "", "x", "2026-11-28T00:00:00Z", -1, 0, 1, 1.5, 2**63, 2**64, True, False, [], {},
           ["a"], 1e308, "1.0", "meterd.window.v1", "application/json; charset=utf-8")


def _paths(obj, prefix=()):
    """Every key path of a nested event (lists by index)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        yield prefix + (k,)
        if isinstance(v, (dict, list)):
            yield from _paths(v, prefix + (k,))


def _variants():
    base = make_event(models=[("a", "t1"), ("b", "")], prompt=900, completion=300)
    yield "valid", base
    yield "idle", make_event(prompt=0, completion=0)
    for path in _paths(base):
        for value in (*HOSTILE, "<delete>"):
            ev = copy.deepcopy(base)
            target = ev
            for k in path[:-1]:
                target = target[k]
            if value == "<delete>":
                del target[path[-1]]
            else:
                target[path[-1]] = value
            yield f"{'.'.join(map(str, path))}={value!r}", ev


def test_the_fast_path_gives_the_reporting_paths_answer_for_every_hostile_field(monkeypatch):
    """Every field of a valid event set to each hostile value (or deleted): check_body, which
    decodes typed structs, and check_batch, the reporting path, agree on the parsed rows and the
    errors. Both valid events take the fast path without falling back."""
    import meterd.collector.validation as v

    fallbacks = []
    real = v.check_event
    monkeypatch.setattr(v, "check_event", lambda *a: fallbacks.append(a[1]) or real(*a))
    for name, ev in _variants():
        body = json.dumps([ev]).encode()
        fallbacks.clear()
        checked = check_body(body, node="n1")
        fell_back = list(fallbacks)
        parsed, errors = check_batch(json.loads(body))
        assert checked.errors == errors, name
        assert len(checked.parsed) == len(parsed), name
        for fast, slow in zip(checked.parsed, parsed):
            assert json.loads(fast.raw) == json.loads(slow.raw), name
            assert (fast.source, fast.id, fast.window, fast.usage, fast.key_ms) == \
                (slow.source, slow.id, slow.window, slow.usage, slow.key_ms), name
        if name in ("valid", "idle"):
            assert fell_back == [] and len(checked.parsed) == 1, name


def test_check_body_keeps_each_events_bytes_and_reports_shape_and_syntax():
    a, b = make_event(), make_event(start=T0 + 60)
    sent = [json.dumps(a, indent=1).encode(), json.dumps(b, separators=(",", ":")).encode()]
    checked = check_body(b"[ " + b" ,\n".join(sent) + b" ]", node="n1")
    assert [p.raw.encode() for p in checked.parsed] == sent
    assert checked.received == 2 and checked.errors == checked.foreign == []
    one = check_body(sent[0], node="n1", single=True)
    assert [p.raw.encode() for p in one.parsed] == sent[:1]
    foreign = check_body(json.dumps([a, make_event("n2")]).encode(), node="n1")
    assert [f["index"] for f in foreign.foreign] == [1]
    with pytest.raises(MalformedJSON):
        check_body(b"[{", node="n1")
    with pytest.raises(MalformedJSON):
        check_body(b"\xff[]", node="n1")
    with pytest.raises(WrongShape):
        check_body(b'{"an": "object"}', node="n1")
    with pytest.raises(WrongShape):
        check_body(b"[]", node="n1", single=True)
    nan = check_body(json.dumps([a]).replace('"energy_j": 31250.5', '"energy_j": NaN').encode(), node="n1")
    assert [e["field"] for e in nan.errors] == ["data.energy_j"]  # json takes NaN, the check refuses it


def test_the_id_hash_is_uuid5():
    import uuid

    from meterd.agent.events import METERD_NAMESPACE
    from meterd.collector.validation import _uuid5

    for name in ("n1|GPU-0|1795824000000", "ñode|GPU-ü|-5", "", "x" * 1000):
        assert _uuid5(name) == str(uuid.uuid5(METERD_NAMESPACE, name))
