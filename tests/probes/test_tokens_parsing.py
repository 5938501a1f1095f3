"""Reading token counters out of each server's Prometheus text: pure, no network."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meterd.probes.counters import Counts
from meterd.probes.prometheus_servers import (
    KINDS,
    SPECS,
    BadCounter,
    GenericMetrics,
    MetricsMissing,
    NotPrometheusText,
    detect_kind,
    parse_exposition,
    read_totals,
    totals_from_text,
)
from tests.fakes.servers import GENERIC, FakeInferenceServer

SERVER_KINDS = [k for k in KINDS if k != "generic"]


def _page(kind, models=None, **kw) -> FakeInferenceServer:
    """A fake's page without starting its HTTP server."""
    fake = FakeInferenceServer(kind, models, **kw)
    for i, m in enumerate(fake.totals()):
        fake.add(m, prompt=100 + i, completion=20 + i, prefill_s=0.5, decode_s=1.25, cached=7)
        fake.add(m, prompt=900, completion=80, prefill_s=0.25, decode_s=0.75)
    return fake


# --- what we rely on in prometheus_client's parser -----------------------------------------

def test_the_parser_strips_total_from_counter_families_but_not_from_samples():
    text = ("# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            'vllm:prompt_tokens_total{model_name="m"} 5.0\n'
            'sglang:prompt_tokens_total{model_name="m"} 7\n')  # no TYPE line
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["vllm:prompt_tokens"].type == "counter"
    assert [s.name for s in fams["vllm:prompt_tokens"].samples] == ["vllm:prompt_tokens_total"]
    assert fams["sglang:prompt_tokens_total"].type == "unknown"
    assert fams["sglang:prompt_tokens_total"].samples[0].name == "sglang:prompt_tokens_total"
    # So matching on sample names finds both, TYPE line or not.
    assert parse_exposition(text).names() == {"vllm:prompt_tokens_total", "sglang:prompt_tokens_total"}


def test_the_parser_keeps_colons_and_histogram_suffixes_in_sample_names():
    text = ("# TYPE vllm:request_prefill_time_seconds histogram\n"
            'vllm:request_prefill_time_seconds_bucket{le="+Inf",model_name="m"} 2\n'
            'vllm:request_prefill_time_seconds_sum{model_name="m"} 0.75\n'
            'vllm:request_prefill_time_seconds_count{model_name="m"} 2\n')
    s = parse_exposition(text)
    assert s.by_name["vllm:request_prefill_time_seconds_sum"] == [({"model_name": "m"}, 0.75)]


def test_a_page_made_by_prometheus_client_counters_as_vllm_makes_it():
    """Real Counter objects, as vLLM declares them: the page also carries ``_created``
    samples, which are timestamps, not tokens, and must not be read as counts."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    registry = CollectorRegistry()
    prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", ["model_name"], registry=registry)
    gen = Counter("vllm:generation_tokens", "Number of generation tokens processed.", ["model_name"],
                  registry=registry)
    prefill = Histogram("vllm:request_prefill_time_seconds", "Prefill time.", ["model_name"], registry=registry)
    prompt.labels("m").inc(42)
    gen.labels("m").inc(8)
    prefill.labels("m").observe(0.25)
    text = generate_latest(registry).decode()
    assert "vllm:prompt_tokens_created" in text
    assert totals_from_text(text).models == {"m": Counts(42, 8, prefill_s=0.25)}


def test_a_counter_without_total_in_the_text_format_is_read():
    text = ('# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens{model_name="m"} 12\n'
            '# TYPE vllm:generation_tokens counter\nvllm:generation_tokens{model_name="m"} 3\n')
    assert totals_from_text(text).models == {"m": Counts(12, 3)}


# --- each server's page --------------------------------------------------------------------

@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_each_kind_reads_the_right_totals_and_auto_names_it(kind):
    fake = _page(kind)
    text = fake.exposition()
    assert "# HELP" in text and "# TYPE" in text
    auto = totals_from_text(text)
    named = totals_from_text(text, kind)
    assert auto.kind == kind and named == auto
    assert {m: (c.prompt_tokens, c.completion_tokens) for m, c in auto.models.items()} == fake.totals()
    assert all(type(c.prompt_tokens) is int and type(c.completion_tokens) is int for c in auto.models.values())


@pytest.mark.parametrize("kind", ["vllm", "tgi", "llamacpp", "trtllm"])
def test_prefill_and_decode_seconds_where_the_server_reports_them(kind):
    c = next(iter(totals_from_text(_page(kind).exposition()).models.values()))
    assert c.prefill_s == pytest.approx(0.75) and c.decode_s == pytest.approx(2.0)


@pytest.mark.parametrize("kind", ["sglang", "triton", "dynamo"])
def test_no_seconds_where_the_server_has_none(kind):
    c = next(iter(totals_from_text(_page(kind).exposition()).models.values()))
    assert c.prefill_s is None and c.decode_s is None


@pytest.mark.parametrize("kind", ["vllm", "sglang", "llamacpp", "trtllm", "dynamo"])
def test_cached_tokens(kind):
    t = totals_from_text(_page(kind).exposition())
    assert {c.cached_tokens for c in t.models.values()} == {7}


def test_several_models_each_with_its_own_counts():
    fake = FakeInferenceServer("vllm", ["a", "b", "c"])
    fake.add("a", 1, 2)
    fake.add("b", 30, 40)
    fake.add("b", 5, 6)
    t = totals_from_text(fake.exposition())
    assert {m: (c.prompt_tokens, c.completion_tokens) for m, c in t.models.items()} == {
        "a": (1, 2), "b": (35, 46), "c": (0, 0)}


def test_one_model_servers_take_the_configured_name():
    text = _page("tgi").exposition()
    assert list(totals_from_text(text, model="bigcode/starcoder2").models) == ["bigcode/starcoder2"]
    assert list(totals_from_text(text).models) == ["default"]


def test_a_model_is_summed_over_its_other_labels():
    """vLLM v1 with data parallelism: one series per engine."""
    text = ('vllm:prompt_tokens_total{engine="0",model_name="m"} 100\n'
            'vllm:prompt_tokens_total{engine="1",model_name="m"} 50\n'
            'vllm:generation_tokens_total{engine="0",model_name="m"} 10\n'
            'vllm:generation_tokens_total{engine="1",model_name="m"} 5\n')
    assert totals_from_text(text).models == {"m": Counts(150, 15)}


def test_older_vllm_without_token_counters_falls_back_to_the_request_histograms():
    fake = _page("vllm", omit=("vllm:prompt_tokens", "vllm:generation_tokens"))
    t = totals_from_text(fake.exposition())
    assert t.kind == "vllm"
    assert {m: (c.prompt_tokens, c.completion_tokens) for m, c in t.models.items()} == fake.totals()


def test_dynamo_style_trtllm_names():
    text = ('trtllm:prompt_tokens_total{model_name="q"} 9\n'
            'trtllm:generation_tokens_total{model_name="q"} 4\n')
    assert totals_from_text(text).models == {"q": Counts(9, 4)} and totals_from_text(text).kind == "trtllm"


def test_generic_reads_the_configured_names():
    fake = _page("generic")
    g = GenericMetrics(**GENERIC)
    t = totals_from_text(fake.exposition(), "generic", generic=g)
    assert t.kind == "generic"
    assert {m: (c.prompt_tokens, c.completion_tokens) for m, c in t.models.items()} == fake.totals()
    assert next(iter(t.models.values())).prefill_s == pytest.approx(0.75)


def test_generic_by_family_name_and_without_a_model_label():
    text = "# TYPE in_tok counter\nin_tok_total 10\n# TYPE out_tok counter\nout_tok_total 4\n"
    t = totals_from_text(text, "generic", generic=GenericMetrics("in_tok", "out_tok"), model="m1")
    assert t.models == {"m1": Counts(10, 4)}


def test_generic_without_its_names_is_a_programming_error():
    with pytest.raises(ValueError, match="generic"):
        totals_from_text("x 1\n", "generic")


def test_a_sample_without_the_model_label_goes_to_the_default_model():
    text = "vllm:prompt_tokens_total 4\nvllm:generation_tokens_total 2\n"
    assert totals_from_text(text, model="solo").models == {"solo": Counts(4, 2)}


def test_openmetrics_is_parsed_with_its_own_parser():
    text = ("# TYPE vllm:prompt_tokens counter\n"
            'vllm:prompt_tokens_total{model_name="m"} 8.0 # {trace_id="abc"} 1.0\n'
            "# TYPE vllm:generation_tokens counter\n"
            'vllm:generation_tokens_total{model_name="m"} 2.0\n# EOF\n')
    assert totals_from_text(text, openmetrics=True).models == {"m": Counts(8, 2)}


# --- what is missing is named --------------------------------------------------------------

def test_the_missing_metric_is_named():
    text = _page("vllm", omit=("vllm:generation_tokens", "vllm:request_generation_tokens")).exposition()
    with pytest.raises(MetricsMissing, match=r"vllm:generation_tokens_total is missing"):
        totals_from_text(text, "vllm")
    with pytest.raises(MetricsMissing, match=r"looks like vllm, but vllm:generation_tokens_total is missing"):
        totals_from_text(text)


def test_triton_without_the_trtllm_backend_says_what_is_missing():
    text = _page("triton", omit=("nv_llm_input_token_len", "nv_llm_output_token_len")).exposition()
    with pytest.raises(MetricsMissing, match=r"looks like triton, but nv_llm_input_token_len_sum is missing"):
        totals_from_text(text)


def test_a_page_of_other_metrics_lists_what_was_looked_for():
    with pytest.raises(MetricsMissing, match=r"no known token metrics .*vllm, sglang, tgi"):
        totals_from_text("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.5\n")


def test_an_empty_page_says_so():
    with pytest.raises(MetricsMissing, match="no metrics at all"):
        totals_from_text("")


def test_a_page_matching_two_kinds_asks_for_one():
    text = _page("vllm").exposition() + _page("sglang").exposition()
    with pytest.raises(MetricsMissing, match="several kinds"):
        detect_kind(parse_exposition(text))
    assert totals_from_text(text, "sglang").kind == "sglang"


def test_a_model_with_one_token_metric_but_not_the_other_is_named():
    text = ('vllm:prompt_tokens_total{model_name="a"} 1\nvllm:prompt_tokens_total{model_name="b"} 1\n'
            'vllm:generation_tokens_total{model_name="a"} 1\n')
    with pytest.raises(MetricsMissing, match="model 'b' has no completion_tokens"):
        totals_from_text(text)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown server kind"):
        read_totals(parse_exposition("x 1\n"), "ollama")


# --- hostile text --------------------------------------------------------------------------

def _vllm_line(value: str) -> str:
    return f'vllm:prompt_tokens_total{{model_name="m"}} {value}\nvllm:generation_tokens_total{{model_name="m"}} 1\n'


@pytest.mark.parametrize("value, reason", [
    ("NaN", "is NaN"),
    ("+Inf", "is infinite"),
    ("-Inf", "is infinite"),
    ("-5", "is negative"),
    ("12.5", "not a whole number"),
])
def test_bad_counter_values_are_a_bad_scrape_that_names_the_sample(value, reason):
    with pytest.raises(BadCounter, match=reason) as e:
        totals_from_text(_vllm_line(value))
    assert 'vllm:prompt_tokens_total{model_name="m"}' in str(e.value)
    assert e.value.gap().cause == "bad_counter"


def test_a_bad_histogram_sum_is_caught_too():
    text = _page("tgi").exposition().replace("tgi_request_generated_tokens_sum 100", "tgi_request_generated_tokens_sum NaN")
    with pytest.raises(BadCounter, match="tgi_request_generated_tokens_sum is NaN"):
        totals_from_text(text)


def test_seconds_may_be_fractional_but_not_negative():
    text = _vllm_line("4") + 'vllm:request_prefill_time_seconds_sum{model_name="m"} -0.5\n'
    with pytest.raises(BadCounter, match="negative"):
        totals_from_text(text)


@pytest.mark.parametrize("text, reason", [
    ('vllm:prompt_tokens_total{model_name="m"} many\n', "could not convert"),            # wrong type
    ('vllm:prompt_tokens_total{model_name="m" 5\n', "not Prometheus text"),               # broken labels
    ('vllm:prompt_tokens_total{model_name="m"} 12', "does not end with a newline"),       # cut short
    ("\x00\x01\x02binary\n", "binary"),
    ("<html><body>Login</body></html>\n", "HTML"),
    ('{"prompt_tokens": 5}\n', "JSON"),
    ("just some words on a line\n", "not Prometheus text"),
    ('vllm:prompt_tokens_total{model_name=m} 5\n', "Invalid labels"),                   # unquoted label
    ("vllm:prompt_tokens_total 5 yesterday\n", "not Prometheus text"),                   # bad timestamp
])
def test_text_that_is_not_prometheus_is_a_clear_error(text, reason):
    with pytest.raises(NotPrometheusText, match=reason) as e:
        totals_from_text(text)
    assert "\n" not in str(e.value)
    assert e.value.gap().cause == "not_prometheus"


def test_truncated_real_pages_never_parse_into_wrong_numbers():
    """Cut a real page at many places: either an error, or (cut at a line end) counts that were
    really on the page, with later optional fields simply not there yet. (A cut between two
    series of one model would undercount it; a short body is caught by HTTP's framing then.)"""
    fake = _page("vllm")
    text = fake.exposition()
    full = totals_from_text(text)
    for cut in range(1, len(text) - 1, 7):
        try:
            t = totals_from_text(text[:cut])
        except (NotPrometheusText, MetricsMissing):
            continue
        for m, c in t.models.items():
            want = full.models[m]
            assert (c.prompt_tokens, c.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
            for name in ("prefill_s", "decode_s", "cached_tokens"):
                assert getattr(c, name) in (None, getattr(want, name))


def test_every_spec_has_both_token_fields_required():
    for spec in SPECS.values():
        required = {f.name for f in spec.fields if f.required}
        assert required == {"prompt_tokens", "completion_tokens"}, spec.kind
