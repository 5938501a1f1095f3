"""`meter probe tokens` against real HTTP servers on loopback, one per kind."""

import json
import socket

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.probes.prometheus_servers import KINDS
from tests.fakes.servers import GENERIC, FakeInferenceServer

SERVER_KINDS = [k for k in KINDS if k != "generic"]


def run(*args):
    return CliRunner().invoke(main, ["probe", "tokens", *args], catch_exceptions=False)


def _loaded(srv: FakeInferenceServer) -> FakeInferenceServer:
    for i, m in enumerate(srv.totals()):
        srv.add(m, 1000 + i, 200 + i, prefill_s=0.5, decode_s=2.5)
        srv.add(m, 24, 8, prefill_s=0.25, decode_s=0.5)
    return srv


CACHED_KINDS = ("vllm", "sglang", "llamacpp", "trtllm", "dynamo")
HISTOGRAM_KINDS = ("tgi", "triton", "dynamo")


def _expected_models(srv: FakeInferenceServer, model_name=None, seconds=True):
    return [{"model": model_name or m, "prompt_tokens": p, "completion_tokens": c,
             "cached_prompt_tokens": 0 if srv.kind in CACHED_KINDS else None,
             "prefill_s": 0.75 if seconds else None, "decode_s": 3.0 if seconds else None,
             "token_source": "histogram" if srv.kind in HISTOGRAM_KINDS else "counter", "error_bound": 0}
            for m, (p, c) in sorted(srv.totals().items())]


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_auto_names_the_kind_and_prints_the_right_totals(kind):
    with _loaded(FakeInferenceServer(kind)).start() as srv:
        r = run(srv.url, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc == {"kind": kind,
                   "models": _expected_models(srv, seconds=kind not in ("sglang", "triton", "dynamo"))}


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_an_explicit_kind_gives_the_same(kind):
    with _loaded(FakeInferenceServer(kind)).start() as srv:
        auto, named = run(srv.url, "--json"), run(srv.url, "--json", "--kind", kind)
    assert json.loads(named.stdout) == json.loads(auto.stdout)


def test_json_types_are_exactly_the_documented_ones():
    with _loaded(FakeInferenceServer("vllm")).start() as srv:
        doc = json.loads(run(srv.url, "--json").stdout)
    assert set(doc) == {"kind", "models"}
    for m in doc["models"]:
        assert set(m) == {"model", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "prefill_s",
                          "decode_s", "token_source", "error_bound"}
        assert type(m["cached_prompt_tokens"]) is int and m["token_source"] == "counter"
        assert type(m["prompt_tokens"]) is int and type(m["completion_tokens"]) is int
        assert type(m["prefill_s"]) is float and type(m["decode_s"]) is float


def test_one_model_server_takes_the_model_option():
    with _loaded(FakeInferenceServer("llamacpp")).start() as srv:
        doc = json.loads(run(srv.url, "--json", "--model", "qwen2.5-7b-instruct").stdout)
    assert [m["model"] for m in doc["models"]] == ["qwen2.5-7b-instruct"]


def test_generic_with_named_metrics():
    with _loaded(FakeInferenceServer("generic")).start() as srv:
        r = run(srv.url, "--json", "--kind", "generic",
                "--prompt-metric", GENERIC["prompt_metric"], "--completion-metric", GENERIC["completion_metric"],
                "--model-label", GENERIC["model_label"], "--prefill-metric", GENERIC["prefill_metric"],
                "--decode-metric", GENERIC["decode_metric"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"kind": "generic", "models": _expected_models(srv)}


def test_generic_needs_its_metric_names_and_others_refuse_them():
    r = run("127.0.0.1:9", "--kind", "generic", "--prompt-metric", "x")
    assert r.exit_code == 2 and "--completion-metric" in r.output
    r = run("127.0.0.1:9", "--kind", "vllm", "--prompt-metric", "x")
    assert r.exit_code == 2 and "go with --kind generic" in r.output


def test_the_table_for_people():
    with _loaded(FakeInferenceServer("vllm")).start() as srv:
        r = run(f"127.0.0.1:{srv.port}")  # host:port alone means /metrics
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"vllm at {srv.url}"
    assert lines[1].split() == ["model", "prompt_tokens", "cached", "completion_tokens", "prefill_s", "decode_s",
                                "source"]
    assert lines[2].split() == ["llama-3-8b", "1,024", "0", "208", "0.750", "3.000", "counter"]
    assert lines[3].split() == ["mistral-7b", "1,025", "0", "209", "0.750", "3.000", "counter"]


def test_dashes_where_the_server_reports_no_seconds():
    with _loaded(FakeInferenceServer("triton")).start() as srv:
        r = run(srv.url)
    assert r.output.splitlines()[2].split()[-3:-1] == ["-", "-"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode, words", [
    ("hang", "timed out after 0.3 s"),
    ("junk", "not Prometheus text"),
    ("html", "not Prometheus text"),
    ("truncated", "truncated"),
    ("huge", "byte limit"),
    ("nan", "is NaN"),
    ("negative", "is negative"),
    ("wrong_type", "not Prometheus text"),
    ("empty", "no metrics at all"),
    ("error", "HTTP 503"),
])
def test_errors_are_one_clear_line_and_a_nonzero_exit(mode, words):
    with FakeInferenceServer("vllm") as srv:
        srv.add("llama-3-8b", 1, 1)
        srv.set_mode(mode)
        r = run(srv.url, "--timeout", "0.3")
    assert r.exit_code == 1
    assert r.output.startswith("Error: ") and words in r.output and len(r.output.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_unreachable_is_one_clear_line():
    r = run(f"127.0.0.1:{_free_port()}", "--json")
    assert r.exit_code == 1 and "cannot connect" in r.output and r.output.startswith("Error: ")


def test_no_known_metrics_is_one_clear_line():
    with FakeInferenceServer("vllm", omit=("vllm:prompt_tokens", "vllm:request_prompt_tokens")) as srv:
        r = run(srv.url)
    assert r.exit_code == 1 and "looks like vllm, but vllm:prompt_tokens_total is missing" in r.output


@pytest.mark.parametrize("url, words", [
    ("ftp://127.0.0.1/metrics", "only http:// and https://"),
    ("http://127.0.0.1:abc/metrics", "not a valid URL"),
    ("http://[::1/metrics", "not a valid URL"),
])
def test_a_url_that_cannot_be_scraped(url, words):
    r = run(url)
    assert r.exit_code == 1 and words in r.output and r.output.startswith("Error: " + url.split("/metrics")[0])


def test_help():
    r = CliRunner().invoke(main, ["probe", "tokens", "--help"])
    assert r.exit_code == 0 and "--kind" in r.output and "auto" in r.output


def test_a_placeholder_model_name_is_warned_about_and_a_rounded_count_too():
    fake = FakeInferenceServer("trtllm", ["undefined"])
    fake.add("undefined", 12, 3)
    with fake.start() as srv:
        r = run(srv.url, "--json")
        named = run(srv.url, "--json", "--model", "llama-3.1-8b")
    assert r.exit_code == 0 and "warning:" in r.stderr and "'undefined', a placeholder" in r.stderr
    assert json.loads(r.stdout)["models"][0]["model"] == "undefined"
    assert "warning" not in named.stderr and json.loads(named.stdout)["models"][0]["model"] == "llama-3.1-8b"
    big = FakeInferenceServer("llamacpp")
    big.add("default", 2_345_678, 10)
    with big.start() as srv:
        r = run(srv.url, "--model", "gemma-3-270m")
    # 2.34568e+06: the last printed digit is the tens, so +-5 tokens
    assert r.exit_code == 0 and "rounded ±5" in r.stdout and "fewer digits" in r.stderr
