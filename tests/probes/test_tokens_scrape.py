"""Scraping real HTTP servers on loopback: each kind, counter resets across scrapes, gaps,
and servers that misbehave. Every timeout is short so that the suite stays fast."""

import socket
import threading
import time

import httpx
import pytest

from meterd.probes.counters import Counts, CounterTracker, Gap, Totals
from meterd.probes.prometheus_servers import KINDS, GenericMetrics, ServerUnreachable
from meterd.probes.tokens import TokenSource, normalize_url
from tests.fakes.servers import GENERIC, FakeInferenceServer

FAST_S = 0.4  # the deadline used against servers that hang


@pytest.fixture
def client():
    with httpx.Client() as c:
        yield c


@pytest.fixture
def fake(request):
    kind = getattr(request, "param", "vllm")
    with FakeInferenceServer(kind) as srv:
        yield srv


def _free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", [k for k in KINDS])
def test_scrape_each_kind_over_http(kind, client):
    with FakeInferenceServer(kind) as srv:
        for m in srv.totals():
            srv.add(m, 321, 45, prefill_s=0.1, decode_s=0.9)
        generic = GenericMetrics(**GENERIC) if kind == "generic" else None
        result = TokenSource(srv.url, kind="generic" if kind == "generic" else "auto", generic=generic).scrape(client)
    assert isinstance(result, Totals), result
    assert result.kind == kind
    assert {m: (c.prompt_tokens, c.completion_tokens) for m, c in result.models.items()} == srv.totals()


def test_counter_resets_across_scrapes(fake, client):
    """The server restarts between scrapes: what was counted stays counted, the new process
    counts from zero, nothing goes negative."""
    source, tracker = TokenSource(fake.url, kind="vllm"), CounterTracker()
    fake.add("llama-3-8b", 5000, 1000)  # history before the agent started
    assert tracker.update(source.key, source.scrape(client)).baseline
    fake.add("llama-3-8b", 200, 40)
    fake.add("mistral-7b", 10, 2)
    u1 = tracker.update(source.key, source.scrape(client))
    fake.restart()
    fake.add("llama-3-8b", 30, 6)
    u2 = tracker.update(source.key, source.scrape(client))
    fake.add("llama-3-8b", 1, 1)
    u3 = tracker.update(source.key, source.scrape(client))
    assert u1.deltas["llama-3-8b"] == Counts(200, 40, prefill_s=0.0, decode_s=0.0, cached_tokens=0)
    assert (u1.deltas["mistral-7b"].prompt_tokens, u1.deltas["mistral-7b"].completion_tokens) == (10, 2)
    assert u2.restarted == {"llama-3-8b", "mistral-7b"}  # the whole process restarted
    assert (u2.deltas["llama-3-8b"].prompt_tokens, u2.deltas["llama-3-8b"].completion_tokens) == (30, 6)
    assert (u3.deltas["llama-3-8b"].prompt_tokens, u3.deltas["llama-3-8b"].completion_tokens) == (1, 1)
    total_p = sum(u.prompt_tokens for u in (u1, u2, u3))
    assert total_p == 200 + 10 + 30 + 1


def test_a_gap_is_reported_and_the_tokens_come_with_the_next_good_scrape(fake, client):
    source, tracker = TokenSource(fake.url, kind="vllm", timeout_s=FAST_S), CounterTracker()
    tracker.update(source.key, source.scrape(client))
    fake.add("mistral-7b", 70, 7)
    fake.set_mode("error")
    gap = tracker.update(source.key, source.scrape(client))
    assert gap.gap is not None and gap.gap.cause == "unreachable" and "HTTP 503" in gap.gap.reason
    assert gap.deltas == {}
    fake.set_mode("ok")
    after = tracker.update(source.key, source.scrape(client))
    assert (after.deltas["mistral-7b"].prompt_tokens, after.deltas["mistral-7b"].completion_tokens) == (70, 7)


def test_a_page_without_the_metric_is_a_gap_that_names_it(client):
    with FakeInferenceServer("sglang", omit=("sglang:generation_tokens",)) as srv:
        result = TokenSource(srv.url, kind="sglang").scrape(client)
    assert isinstance(result, Gap) and result.cause == "missing"
    assert "sglang:generation_tokens_total is missing" in result.reason and srv.url in result.reason


@pytest.mark.parametrize("mode, cause, words", [
    ("hang", "unreachable", "timed out"),
    ("trickle", "unreachable", "timed out"),
    ("disconnect", "unreachable", "disconnected"),
    ("error", "unreachable", "HTTP 503"),
    ("junk", "not_prometheus", "not UTF-8"),
    ("html", "not_prometheus", "HTML"),
    ("empty", "missing", "no metrics at all"),
    ("truncated", "not_prometheus", "truncated"),
    ("huge", "unreachable", "over the 4,194,304-byte limit"),
    ("huge_streamed", "unreachable", "over the 4,194,304-byte limit"),
    ("nan", "bad_counter", "is NaN"),
    ("inf", "bad_counter", "is infinite"),
    ("negative", "bad_counter", "is negative"),
    ("wrong_type", "not_prometheus", "could not convert"),
    ("gzip_bomb", "unreachable", "decompressed response is over"),
])
def test_a_misbehaving_server_is_a_gap_with_a_clear_reason_and_no_hang(fake, client, mode, cause, words):
    fake.add("llama-3-8b", 10, 1)
    fake.set_mode(mode)
    start = time.monotonic()
    result = TokenSource(fake.url, kind="auto", timeout_s=FAST_S).scrape(client)
    took = time.monotonic() - start
    assert isinstance(result, Gap), result
    assert result.cause == cause and words in result.reason, result.reason
    assert "\n" not in result.reason
    assert took < 2 * FAST_S + 1.0  # the deadline, plus at most one read, plus slack


def test_a_compressed_page_is_read_anyway(fake, client):
    fake.add("llama-3-8b", 10, 1)
    fake.set_mode("gzip")
    assert TokenSource(fake.url).scrape(client).models["llama-3-8b"].prompt_tokens == 10


def test_a_stopped_fake_leaves_no_thread_behind(client):
    """What the agent's end-to-end tests rely on: stop() ends even a hanging handler."""
    before = set(threading.enumerate())
    with FakeInferenceServer("vllm") as srv:
        srv.set_mode("hang")
        assert isinstance(TokenSource(srv.url, timeout_s=0.2).scrape(client), Gap)
    assert set(threading.enumerate()) <= before


def test_nothing_listening_is_a_gap(client):
    url = f"http://127.0.0.1:{_free_port()}/metrics"
    result = TokenSource(url, timeout_s=FAST_S).scrape(client)
    assert isinstance(result, Gap) and "cannot connect" in result.reason


def test_read_raises_what_scrape_reports(fake, client):
    fake.set_mode("error")
    with pytest.raises(ServerUnreachable, match="HTTP 503"):
        TokenSource(fake.url).read(client)


def test_a_slow_server_does_not_stall_the_others(client):
    """The agent's round reads every source at once (its ConcurrentReader)."""
    from meterd.agent.sampler import ConcurrentReader

    with FakeInferenceServer("vllm") as slow, FakeInferenceServer("sglang") as a, FakeInferenceServer("tgi") as b:
        slow.set_mode("hang")
        a.add("llama-3-8b", 5, 1)
        b.add("default", 7, 2)
        sources = [TokenSource(slow.url, timeout_s=FAST_S), TokenSource(a.url, timeout_s=FAST_S),
                   TokenSource(b.url, timeout_s=FAST_S)]
        reader = ConcurrentReader(max_workers=4)
        start = time.monotonic()
        results = reader.read({s.key: (lambda s=s: s.scrape(client)) for s in sources}, FAST_S + 1.0)
        took = time.monotonic() - start
        reader.close()
    assert list(results) == [s.key for s in sources]
    assert isinstance(results[sources[0].key], Gap)
    assert results[sources[1].key].models["llama-3-8b"].prompt_tokens == 5
    assert results[sources[2].key].models["default"].prompt_tokens == 7
    assert took < FAST_S + 1.0  # one deadline, not the sum


def test_trtllm_default_path(client):
    with FakeInferenceServer("trtllm") as srv:
        srv.add("llama-3-8b", 3, 1)
        source = TokenSource(f"127.0.0.1:{srv.port}", kind="trtllm")
        assert source.url == srv.url
        assert source.scrape(client).models["llama-3-8b"].prompt_tokens == 3


@pytest.mark.parametrize("given, kind, want", [
    ("localhost:8000", "auto", "http://localhost:8000/metrics"),
    ("http://10.0.0.5:8000/", "vllm", "http://10.0.0.5:8000/metrics"),
    ("http://h:8000/custom/metrics", "auto", "http://h:8000/custom/metrics"),
    ("h:8000", "trtllm", "http://h:8000/prometheus/metrics"),
    ("https://h/metrics?x=1", "auto", "https://h/metrics?x=1"),
])
def test_normalize_url(given, kind, want):
    assert normalize_url(given, kind) == want


@pytest.mark.parametrize("bad", ["ftp://h/metrics", "file:///etc/passwd", "http://", "http://h:99999/metrics",
                                 "h:port/metrics", "http://[::1/metrics"])
def test_urls_that_cannot_be_scraped(bad):
    with pytest.raises(ValueError):
        normalize_url(bad)


def test_source_validation():
    with pytest.raises(ValueError, match="unknown server kind"):
        TokenSource("h:1", kind="ollama")
    with pytest.raises(ValueError, match="generic"):
        TokenSource("h:1", kind="generic")
    with pytest.raises(ValueError, match="timeout"):
        TokenSource("h:1", timeout_s=0)


class _StreamedPage:
    """A real HTTP server on loopback that streams ``body`` with no Content-Length (the end is
    the connection closing), in small writes: only the streamed-size check can refuse it."""

    def __init__(self, body: bytes) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        page = body

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                for i in range(0, len(page), 4096):
                    self.wfile.write(page[i:i + 4096])

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def __enter__(self) -> "_StreamedPage":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_the_streamed_body_limit_is_exact(client):
    page = b"vllm:prompt_tokens_total{model_name=\"m\"} 12\n" \
           b"vllm:generation_tokens_total{model_name=\"m\"} 3\n"
    page += b"# padding\n" * 3000  # ~30 kB, well past one read
    size = len(page)
    with _StreamedPage(page) as srv:
        at_limit = TokenSource(srv.url, kind="vllm", max_bytes=size).scrape(client)
        assert isinstance(at_limit, Totals), at_limit
        assert at_limit.models["m"].prompt_tokens == 12
        for limit in (size - 1, size * 2 // 3):  # one byte over; half as much again
            over = TokenSource(srv.url, kind="vllm", max_bytes=limit).scrape(client)
            assert isinstance(over, Gap) and over.cause == "unreachable", over
            assert f"over the {limit:,}-byte limit" in over.reason
