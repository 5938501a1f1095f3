"""Fuzz suites (hypothesis, bounded in examples and time) for every surface that takes input
from outside: push bodies, collector batches and query strings, configs, Prometheus
expositions. Each asserts the one refusal its surface has (or an answer), never another
exception, never a 5xx, and stored state unchanged on refusal."""

import json
import sqlite3

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.agent.config import ConfigError, parse_config, parse_toml
from meterd.collector.validation import MalformedJSON, WrongShape, check_body
from meterd.errors import InvalidUsage
from meterd.probes.prometheus_servers import TokenProbeError, totals_from_text
from meterd.probes.push import parse_body
from tests.collector.conftest import minutes, post_batch

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

# Text with everything JSON can carry: lone surrogates (as \\u escapes), NUL, controls.
any_text = st.text(st.characters(codec=None, categories=None), max_size=40) | st.sampled_from(
    ["\ud800", "\udfff", "a\x00b", "x" * 300, "", " "])
any_int = st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([2**53, 2**53 + 1, 2**64])
scalars = st.none() | st.booleans() | any_int | st.floats(allow_nan=True, allow_infinity=True) | any_text
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(any_text, kids, max_size=4),
                           max_leaves=20)
ATOMS = [b'"\\ud800"', b"1e400", b"9" * 5000, b"-1", b"NaN", b"null", b'"\xed\xa0\x80"', b"\xff",
         b"[" * 200, b"{" * 50, b'"\\u0000"', b"18446744073709551616", b",", b"}", b"]"]


def dumps(v) -> bytes:
    try:
        return json.dumps(v).encode()
    except (ValueError, OverflowError):
        return b"[]"


def mutated(base: bytes):
    @st.composite
    def strategy(draw):
        b = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(b)))
            j = min(len(b), i + draw(st.integers(0, 12)))
            b[i:j] = draw(st.sampled_from(ATOMS) | st.binary(max_size=6))
        return bytes(b)
    return strategy()


def _storable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# -- push bodies --------------------------------------------------------------------------------

PUSH = json.dumps([{"model": "m", "prompt_tokens": 10, "completion_tokens": 2, "tenant": "t", "request_id": "r"}]).encode()


@FUZZ
@given(st.one_of(json_values.map(dumps), mutated(PUSH), st.binary(max_size=200),
                 st.dictionaries(st.sampled_from(["model", "prompt_tokens", "completion_tokens", "tenant", "request_id"]),
                                 scalars, max_size=5).map(dumps)))
def test_push_bodies_are_records_or_one_refusal(body):
    try:
        records = parse_body(body)
    except InvalidUsage as e:
        assert "\n" not in str(e)
        return
    for r in records:
        assert _storable(r.model) and (r.tenant is None or _storable(r.tenant))
        assert 0 <= r.prompt_tokens <= 2**53 and 0 <= r.completion_tokens <= 2**53


@pytest.fixture(scope="module")
def push_journal(tmp_path_factory):
    from meterd.agent.push_journal import StoreJournal
    from meterd.agent.store import Store
    from meterd.probes.push import PushEndpoint

    db = tmp_path_factory.mktemp("push") / "m.db"
    Store(db).close()
    with PushEndpoint(sink=StoreJournal(db)) as ep, httpx.Client(base_url=ep.url, timeout=10) as client:
        yield client, db


@FUZZ
@given(st.one_of(mutated(PUSH), json_values.map(dumps)))
def test_the_push_endpoint_never_answers_5xx_and_a_refusal_stores_nothing(push_journal, body):
    client, db = push_journal
    c = sqlite3.connect(db)
    before = c.execute("SELECT count(*) FROM push_journal").fetchone()[0]
    r = client.post("/v1/usage", content=body)
    after = c.execute("SELECT count(*) FROM push_journal").fetchone()[0]
    c.close()
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert after == before and "error" in r.json()


# -- collector batches and query strings -------------------------------------------------------

BATCH = json.dumps(minutes(2)).encode()


@FUZZ
@given(st.one_of(mutated(BATCH), json_values.map(dumps)))
def test_collector_batches_are_checked_or_one_refusal(body):
    try:
        checked = check_body(body, node="n1")
    except (MalformedJSON, WrongShape):
        return
    for p in checked.parsed:
        for v in p.window.values():
            assert not isinstance(v, str) or _storable(v)
            assert not isinstance(v, int) or abs(v) < 2**63


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    from meterd.collector.auth import create_token
    from meterd.collector.store import SQLiteStore
    from tests.collector.conftest import LiveServer

    store = SQLiteStore(tmp_path_factory.mktemp("collector") / "c.db")
    node, read = create_token(store, "n1"), create_token(store, "finance", scope="read")
    with LiveServer(store) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client, store, node, read
    store.close()


@FUZZ
@given(mutated(BATCH))
def test_the_collector_never_answers_5xx_and_a_refused_batch_stores_nothing(collector, body):
    client, store, node, _ = collector
    before = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    r = post_batch(client, None, node, content=body)
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == before


@FUZZ
@given(st.dictionaries(st.sampled_from(["since", "until", "limit", "after", "node", "device", "model", "tenant",
                                        "group_by"]), any_text | any_int.map(str), max_size=5))
def test_query_strings_never_give_5xx(collector, params):
    client, _, _, read = collector
    for path in ("/api/v1/windows", "/api/v1/usage"):
        try:
            r = client.get(path, params=params, headers={"authorization": f"Bearer {read}"})
        except (UnicodeEncodeError, httpx.InvalidURL):
            continue  # the client cannot even send it
        assert r.status_code < 500, (path, params, r.text)


# -- configs -------------------------------------------------------------------------------------

CONFIG = (b'node = "n"\nwindow_s = 60\n[prices]\ncapex_per_gpu = 25000.0\npue = 1.3\ncurrency = "USD"\n'
          b'[[sources]]\nkind = "vllm"\nurl = "http://127.0.0.1:8000/metrics"\ndevices = ["all"]\n')
TOML_ATOMS = st.sampled_from(["1e300", "1e-300", "-1", "nan", "inf", '"\\ud800"', "[" * 100, "{a = " * 40, "[[x]]",
                              "[prices]", "= =", '"usd"', "0", "99999999999999999999"])


@FUZZ
@given(st.one_of(mutated(CONFIG), st.lists(TOML_ATOMS, max_size=6).map(lambda xs: CONFIG + " ".join(xs).encode())))
def test_configs_are_a_config_or_one_config_error(raw):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return  # load_config says so in one line (tests/agent/test_config.py)
    try:
        parse_config(parse_toml(text, "fuzz.toml"))
    except ConfigError as e:
        assert "\n" not in str(e)


# -- Prometheus expositions ------------------------------------------------------------------------

PAGE = ('# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{model_name="m"} 120\n'
        '# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{model_name="m"} 30\n').encode()


@FUZZ
@given(st.one_of(mutated(PAGE), st.text(max_size=200).map(str.encode)))
def test_expositions_are_totals_or_a_token_probe_error(raw):
    text = raw.decode("utf-8", "replace")
    try:
        totals = totals_from_text(text, "vllm")
    except TokenProbeError:
        return
    for c in totals.models.values():
        assert 0 <= c.prompt_tokens <= 2**53 and 0 <= c.completion_tokens <= 2**53
