"""Cached prompt tokens per server kind, token provenance (exact, rounded, histogram), and the
line filter in front of the parser."""

import pytest

from meterd.probes.counters import Counts, CounterTracker, Totals
from meterd.probes.prometheus_servers import parse_exposition, print_error_bound, totals_from_text
from tests.fakes.servers import FakeInferenceServer


def test_llamacpp_prompt_is_processed_plus_cached():
    """llama.cpp's prompt_tokens_total leaves out what its cache served: the same 18-token prompt
    twice, the second with 13 cached, is 36 prompt tokens (as both responses' usage says), 13 cached."""
    fake = FakeInferenceServer("llamacpp")
    fake.add("default", prompt=18, completion=4)
    fake.add("default", prompt=18, completion=4, cached=13)
    text = fake.exposition()
    assert "llamacpp:prompt_tokens_total 23\n" in text and "llamacpp:prompt_tokens_cached_total 13\n" in text
    c = totals_from_text(text, "llamacpp").models["default"]
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens) == (36, 13, 8)
    assert c.provenance == "counter" and c.error_bound == 0


def test_llamacpp_without_the_cached_counter_counts_what_it_says():
    fake = FakeInferenceServer("llamacpp", omit=("llamacpp:prompt_tokens_cached_total",))
    fake.add("default", prompt=18, completion=4, cached=13)
    c = totals_from_text(fake.exposition(), "llamacpp").models["default"]
    assert (c.prompt_tokens, c.cached_tokens) == (5, None)


@pytest.mark.parametrize("kind", ["vllm", "sglang", "trtllm"])
def test_cached_is_a_subset_of_prompt_for_the_python_servers(kind):
    fake = FakeInferenceServer(kind, ["m"])
    fake.add("m", prompt=100, completion=10, cached=64)
    fake.add("m", prompt=50, completion=5, cached=30)
    c = totals_from_text(fake.exposition(), kind).models["m"]
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens) == (150, 94, 15)


def test_sglang_cached_tokens_are_summed_over_cache_source():
    fake = FakeInferenceServer("sglang", ["m"])
    fake.add("m", prompt=100, completion=1, cached=90)
    text = fake.exposition()
    assert 'cache_source="host"' in text and 'cache_source="device"' in text
    assert totals_from_text(text, "sglang").models["m"].cached_tokens == 90


def test_vllm_prefers_prompt_tokens_cached_and_falls_back_to_prefix_cache_hits():
    text = ('vllm:prompt_tokens_total{model_name="m"} 100\nvllm:generation_tokens_total{model_name="m"} 9\n'
            'vllm:prompt_tokens_cached_total{model_name="m"} 70\nvllm:prefix_cache_hits_total{model_name="m"} 40\n')
    assert totals_from_text(text, "vllm").models["m"].cached_tokens == 70  # local + external (LMCache)
    older = "\n".join(ln for ln in text.splitlines() if "prompt_tokens_cached" not in ln) + "\n"
    assert totals_from_text(older, "vllm").models["m"].cached_tokens == 40


def test_dynamo_reads_its_frontend_histograms_and_counter():
    fake = FakeInferenceServer("dynamo", ["Qwen/Qwen3-0.6B"])
    fake.add("Qwen/Qwen3-0.6B", prompt=300, completion=20, cached=128)
    fake.add("Qwen/Qwen3-0.6B", prompt=12, completion=3)
    t = totals_from_text(fake.exposition())
    assert t.kind == "dynamo"
    c = t.models["Qwen/Qwen3-0.6B"]
    assert (c.prompt_tokens, c.completion_tokens, c.cached_tokens) == (312, 23, 128)
    assert c.provenance == "histogram"  # input tokens come from the histogram's _sum


def test_lmdeploy_reads_tokens_and_phase_seconds_by_model_name():
    fake = FakeInferenceServer("lmdeploy", ["internlm2_5-7b-chat"])
    fake.add("internlm2_5-7b-chat", prompt=77, completion=11, prefill_s=0.125, decode_s=0.5)
    t = totals_from_text(fake.exposition())
    assert t.kind == "lmdeploy"
    c = t.models["internlm2_5-7b-chat"]
    assert (c.prompt_tokens, c.completion_tokens, c.prefill_s, c.decode_s) == (77, 11, 0.125, 0.5)
    assert c.provenance == "counter"


# --- rounded counters ----------------------------------------------------------------------

def test_llamacpp_past_a_million_prints_six_digits_and_the_count_is_rounded_with_its_bound():
    fake = FakeInferenceServer("llamacpp")
    fake.add("default", prompt=1_234_567, completion=999_999)
    text = fake.exposition()
    assert "llamacpp:prompt_tokens_total 1.23457e+06\n" in text  # what llama.cpp really prints
    c = totals_from_text(text, "llamacpp").models["default"]
    assert c.prompt_tokens == 1_234_570 and c.completion_tokens == 999_999
    assert c.provenance == "rounded" and c.error_bound == 5 + 0  # prompt +-5; cached 0 printed exactly
    assert abs(c.prompt_tokens - 1_234_567) <= c.error_bound


def test_a_delta_of_rounded_readings_is_rounded_with_both_bounds():
    tr = CounterTracker()
    a = Counts(1_234_570, 10, provenance="rounded", error_bound=5)
    b = Counts(1_234_680, 20, provenance="rounded", error_bound=5)
    tr.update("s", Totals("llamacpp", {"m": a}))
    d = tr.update("s", Totals("llamacpp", {"m": b})).deltas["m"]
    assert (d.prompt_tokens, d.provenance, d.error_bound) == (110, "rounded", 10)
    # and once the server prints exact figures again (it restarted), exact again
    d2 = tr.update("s", Totals("llamacpp", {"m": Counts(5, 1)})).deltas["m"]
    assert (d2.provenance, d2.error_bound) == ("counter", 0)


@pytest.mark.parametrize("token, value, bound", [
    ("1.23457e+06", 1_234_570.0, 5),
    ("1.2e+06", 1_200_000.0, 5),           # at least 6 significant digits are assumed
    ("9.99999e+07", 99_999_900.0, 50),
    ("1.234567e+06", 1_234_567.0, 0),      # every digit there (Go prints shortest exact)
    ("1234567", 1_234_567.0, 0),
    ("1e+03", 1000.0, 0),
    ("0.5", 0.5, 0),
])
def test_print_error_bound(token, value, bound):
    assert print_error_bound(token, value) == bound


# --- the filter before the parser ----------------------------------------------------------

def test_only_the_wanted_lines_reach_the_parser_and_the_figures_are_the_same():
    fake = FakeInferenceServer("vllm", ["a", "b"])
    for i in range(50):
        fake.add("a", 100 + i, 10, prefill_s=0.01, decode_s=0.1, cached=i)
        fake.add("b", 3, 2)
    text = fake.exposition()
    full = parse_exposition(text)
    kept = parse_exposition(text, keep=frozenset({"vllm:prompt_tokens_total", "vllm:generation_tokens_total"}))
    assert kept.names() == {"vllm:prompt_tokens_total", "vllm:generation_tokens_total"}
    assert len(full.names()) > 10 and "vllm:e2e_request_latency_seconds_bucket" in kept.all_names()
    assert kept.by_name["vllm:prompt_tokens_total"] == full.by_name["vllm:prompt_tokens_total"]


def test_a_malformed_wanted_line_is_still_refused():
    from meterd.probes.prometheus_servers import NotPrometheusText
    with pytest.raises(NotPrometheusText):
        totals_from_text('vllm:prompt_tokens_total{model_name="m" 5\n', "vllm")


def test_a_placeholder_model_label_takes_the_configured_name():
    """trtllm-serve hard-codes model_name="undefined"; the source's model names it."""
    text = ('trtllm_prompt_tokens_total{model_name="undefined",engine_type="trtllm"} 12\n'
            'trtllm_generation_tokens_total{model_name="undefined",engine_type="trtllm"} 3\n')
    assert list(totals_from_text(text, "trtllm").models) == ["undefined"]
    assert list(totals_from_text(text, "trtllm", model="llama-3.1-8b").models) == ["llama-3.1-8b"]
    real = text.replace("undefined", "qwen")
    assert list(totals_from_text(real, "trtllm", model="llama-3.1-8b").models) == ["qwen"]  # a real label wins
