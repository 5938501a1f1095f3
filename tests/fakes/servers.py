"""Fake inference servers: real HTTP servers on 127.0.0.1 serving each kind's metrics page.

Each page is written from the server's documented metric names, with HELP and TYPE lines,
several models (one for the one-model servers TGI and llama.cpp), histograms with buckets,
and the unrelated gauges and counters a real page has around the token counters. The Python
servers (vLLM, SGLang, trtllm-serve, LMDeploy) build their pages with prometheus_client, as the
real ones do; TGI (Rust), Dynamo's frontend (Rust), llama.cpp (C++) and Triton (C++) are written
out by hand in their own styles.

``add(model, prompt, completion, cached=N)``: ``prompt`` is every prompt token of the request
(what its usage.prompt_tokens says), ``cached`` the part of it a prefix cache served; each page
shows them the way its server counts them (llama.cpp's prompt counter leaves the cached part
out; SGLang splits it by cache_source; llama.cpp prints through a C++ stream, 6 significant
digits, so past 999,999 a counter reads ``1.23457e+06``).

    with FakeInferenceServer("vllm", models=("llama-3-8b", "mistral-7b")) as srv:
        srv.add("llama-3-8b", prompt=120, completion=30, prefill_s=0.05, decode_s=0.6)
        srv.url                  # http://127.0.0.1:PORT/metrics
        srv.restart()            # counters back to zero, as a restarted process
        srv.set_mode("hang")     # see MODES

The server runs in a background thread on an ephemeral port and stops on ``stop()`` (or on
leaving the ``with`` block); handlers that hang or trickle wake up and end when it stops.
"""

from __future__ import annotations

import gzip
import random
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

MODES = {
    "ok": "the metrics page",
    "error": "HTTP 503",
    "hang": "accepts the connection and never answers",
    "trickle": "sends headers, then one byte every 50 ms, forever",
    "disconnect": "closes the connection without an answer",
    "junk": "binary junk as text/plain",
    "html": "an HTML page",
    "empty": "an empty 200",
    "truncated": "the page cut in the middle of a line",
    "huge": "a 10 MB body with a Content-Length",
    "huge_streamed": "a 10 MB body without a Content-Length (close-delimited)",
    "nan": "the first prompt-token counter is NaN",
    "inf": "the first prompt-token counter is +Inf",
    "negative": "the first prompt-token counter is negative",
    "wrong_type": "the first prompt-token counter's value is a word",
    "gzip": "the page gzip-compressed, though the client asked for identity",
    "gzip_bomb": "10 MB of gzip-compressed filler (about 10 kB on the wire)",
}

KINDS = ("vllm", "sglang", "tgi", "llamacpp", "trtllm", "lmdeploy", "dynamo", "triton", "generic")
ONE_MODEL_KINDS = ("tgi", "llamacpp")

# The sample that carries prompt tokens on each page (what the hostile modes corrupt).
PROMPT_SAMPLE = {
    "vllm": "vllm:prompt_tokens_total",
    "sglang": "sglang:prompt_tokens_total",
    "tgi": "tgi_request_input_length_sum",
    "llamacpp": "llamacpp:prompt_tokens_total",
    "trtllm": "trtllm_prompt_tokens_total",
    "lmdeploy": "lmdeploy:prompt_tokens_total",
    "dynamo": "dynamo_frontend_input_sequence_tokens_sum",
    "triton": "nv_llm_input_token_len_sum",
    "generic": "app_input_tokens_total",
}

# What `meter probe tokens --kind generic` needs to read the generic page.
GENERIC = {"prompt_metric": "app_input_tokens_total", "completion_metric": "app_output_tokens_total",
           "model_label": "served_model", "prefill_metric": "app_prefill_seconds",
           "decode_metric": "app_decode_seconds"}

TOKEN_BUCKETS = (16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0)
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
TRITON_BUCKETS = (10.0, 50.0, 100.0, 500.0, 1000.0)
HUGE_BYTES = 10 * 1000 * 1000


class _Server(ThreadingHTTPServer):
    # http.server's default is daemon handler threads, which server_close() does not join;
    # these are joined, so that a stopped fake leaves no thread behind.
    daemon_threads = False


@dataclass
class ModelState:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    # One entry per request, for the histograms' buckets.
    prompt_lens: list[int] = field(default_factory=list)
    completion_lens: list[int] = field(default_factory=list)
    cached_lens: list[int] = field(default_factory=list)
    prefill_times: list[float] = field(default_factory=list)
    decode_times: list[float] = field(default_factory=list)


def _buckets(values: list[float], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    out = [(_fmt(b), float(sum(1 for v in values if v <= b))) for b in bounds]
    out.append(("+Inf", float(len(values))))
    return out


def _fmt(x: float) -> str:
    return repr(float(x))


class FakeInferenceServer:
    """A metrics endpoint of one inference server ``kind`` (see :data:`KINDS`)."""

    def __init__(self, kind: str = "vllm", models: tuple[str, ...] | list[str] | None = None, *,
                 omit: tuple[str, ...] = ()) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if models is None:
            models = ("default",) if kind in ONE_MODEL_KINDS else ("llama-3-8b", "mistral-7b")
        if kind in ONE_MODEL_KINDS and len(models) != 1:
            raise ValueError(f"{kind} serves one model")
        self.kind = kind
        self.omit = set(omit)  # family names left off the page (an older or trimmed server)
        self._lock = threading.Lock()
        self._models = {m: ModelState() for m in models}
        self._mode = "ok"
        self._stopping = threading.Event()
        self.scrapes = 0
        self._httpd: _Server | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self.path = "/prometheus/metrics" if kind == "trtllm" else "/metrics"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "FakeInferenceServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that stops reading cannot block a handler (and stop()) for ever

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                try:
                    fake._serve(self)
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    pass  # the client gave up (a size limit or a timeout): that is the point

            def log_message(self, *args) -> None:
                pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()  # joins the handler threads, which the event has woken
        self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> "FakeInferenceServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on (or last listened on, once stopped)."""
        assert self._port is not None, "start the server first"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    # --- what the test drives --------------------------------------------------------------

    def add(self, model: str, prompt: int, completion: int, prefill_s: float | None = None,
            decode_s: float | None = None, cached: int = 0) -> None:
        """One finished request of ``model``: its tokens and, optionally, its phase times."""
        with self._lock:
            if model not in self._models:
                if self.kind in ONE_MODEL_KINDS:
                    raise ValueError(f"{self.kind} serves one model: {next(iter(self._models))!r}")
                self._models[model] = ModelState()
            m = self._models[model]
            m.prompt_tokens += prompt
            m.completion_tokens += completion
            m.cached_tokens += cached
            m.prompt_lens.append(prompt)
            m.completion_lens.append(completion)
            m.cached_lens.append(cached)
            if prefill_s is not None:
                m.prefill_s += prefill_s
                m.prefill_times.append(prefill_s)
            if decode_s is not None:
                m.decode_s += decode_s
                m.decode_times.append(decode_s)

    def restart(self) -> None:
        """The process restarted: every counter and histogram back to zero, same models."""
        with self._lock:
            self._models = {m: ModelState() for m in self._models}

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        self._mode = mode

    def totals(self) -> dict[str, tuple[int, int]]:
        """{model: (prompt_tokens, completion_tokens)} as the page shows them now."""
        with self._lock:
            return {name: (m.prompt_tokens, m.completion_tokens) for name, m in self._models.items()}

    # --- the page ----------------------------------------------------------------------------

    def exposition(self) -> str:
        """The metrics page as the real server would write it now."""
        with self._lock:
            models = {name: _copy(m) for name, m in self._models.items()}
        if self.kind in ("vllm", "sglang", "trtllm", "lmdeploy", "generic"):
            return _PythonPage(self.kind, models, self.omit).render()
        return {"tgi": _tgi, "llamacpp": _llamacpp, "triton": _triton, "dynamo": _dynamo}[self.kind](models, self.omit)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        self.scrapes += 1
        mode = self._mode
        if h.path.split("?")[0] != self.path:
            return self._reply(h, 404, b"404 page not found\n")
        if mode == "hang":
            self._stopping.wait(30)
            return
        if mode == "disconnect":
            h.close_connection = True
            return
        if mode == "error":
            return self._reply(h, 503, b"Service Unavailable\n")
        if mode == "trickle":
            h.send_response(200)
            h.send_header("Content-Type", "text/plain; version=0.0.4")
            h.end_headers()
            for _ in range(600):  # at most 30 s, and far less: the stop event ends it
                h.wfile.write(b"#")
                h.wfile.flush()
                if self._stopping.wait(0.05):
                    return
            return
        if mode in ("huge", "huge_streamed"):
            line = b"# filler comment, a page no server should ever send\n"
            h.send_response(200)
            h.send_header("Content-Type", "text/plain; version=0.0.4")
            if mode == "huge":
                h.send_header("Content-Length", str(HUGE_BYTES))
            h.end_headers()
            sent = 0
            block = line * (65536 // len(line))
            while sent < HUGE_BYTES and not self._stopping.is_set():
                n = min(len(block), HUGE_BYTES - sent)
                h.wfile.write(block[:n])
                sent += n
            return
        if mode in ("gzip", "gzip_bomb"):
            raw = self.exposition().encode() if mode == "gzip" else b"#" * HUGE_BYTES
            body = gzip.compress(raw)
            h.send_response(200)
            h.send_header("Content-Type", "text/plain; version=0.0.4")
            h.send_header("Content-Encoding", "gzip")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if mode == "junk":
            body = random.Random(4).randbytes(4096)
        elif mode == "html":
            body = b"<!doctype html><html><body><h1>Welcome</h1></body></html>\n"
        elif mode == "empty":
            body = b""
        else:
            text = self.exposition()
            if mode == "truncated":
                text = text[: len(text) // 2].rstrip("\n")
            elif mode in ("nan", "inf", "negative", "wrong_type"):
                text = _corrupt(text, PROMPT_SAMPLE[self.kind],
                                {"nan": "NaN", "inf": "+Inf", "negative": "-12.0", "wrong_type": "many"}[mode])
            body = text.encode()
        self._reply(h, 200, body, "text/plain; version=0.0.4; charset=utf-8")

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "text/plain") -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def _copy(m: ModelState) -> ModelState:
    return ModelState(m.prompt_tokens, m.completion_tokens, m.cached_tokens, m.prefill_s, m.decode_s,
                      list(m.prompt_lens), list(m.completion_lens), list(m.cached_lens),
                      list(m.prefill_times), list(m.decode_times))


def _corrupt(text: str, sample: str, value: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(sample + "{") or line.startswith(sample + " "):
            lines[i] = line.rsplit(" ", 1)[0] + " " + value
            break
    else:  # pragma: no cover - every page has its prompt sample
        raise AssertionError(f"{sample} not on the page")
    return "\n".join(lines)


class _PythonPage:
    """vLLM, SGLang and trtllm-serve build their pages with prometheus_client; so does this,
    through a Collector that yields the families at scrape time (a fresh registry each time)."""

    def __init__(self, kind: str, models: dict[str, ModelState], omit: set[str]) -> None:
        self.kind, self.models, self.omit = kind, models, omit

    def render(self) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry).decode()

    def collect(self):
        k = self.kind
        if k == "vllm":
            labels, extra = ["model_name", "engine"], ["0"]
            yield from self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                     labels, extra, lambda m: m.prompt_tokens)
            yield from self._counter("vllm:generation_tokens", "Number of generation tokens processed.",
                                     labels, extra, lambda m: m.completion_tokens)
            yield from self._counter("vllm:prompt_tokens_cached",
                                     "Number of cached prompt tokens (local + external).",
                                     labels, extra, lambda m: m.cached_tokens)
            yield from self._counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                                     labels, extra, lambda m: m.cached_tokens)
            yield from self._gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                                   labels, extra)
            yield from self._hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                  labels, extra, lambda m: m.prompt_lens, TOKEN_BUCKETS)
            yield from self._hist("vllm:request_generation_tokens", "Number of generation tokens processed.",
                                  labels, extra, lambda m: m.completion_lens, TOKEN_BUCKETS)
            yield from self._hist("vllm:request_prefill_time_seconds",
                                  "Histogram of time spent in PREFILL phase for request.",
                                  labels, extra, lambda m: m.prefill_times, SECONDS_BUCKETS)
            yield from self._hist("vllm:request_decode_time_seconds",
                                  "Histogram of time spent in DECODE phase for request.",
                                  labels, extra, lambda m: m.decode_times, SECONDS_BUCKETS)
            yield from self._hist("vllm:e2e_request_latency_seconds",
                                  "Histogram of e2e request latency in seconds.", labels, extra,
                                  lambda m: [a + b for a, b in zip(m.prefill_times, m.decode_times)], SECONDS_BUCKETS)
        elif k == "sglang":
            labels, extra = ["model_name"], []
            yield from self._counter("sglang:prompt_tokens", "Number of prefill tokens processed.",
                                     labels, extra, lambda m: m.prompt_tokens)
            yield from self._counter("sglang:generation_tokens", "Number of generation tokens processed.",
                                     labels, extra, lambda m: m.completion_tokens)
            if "sglang:cached_tokens" not in self.omit:
                c = CounterMetricFamily("sglang:cached_tokens", "Number of cached prompt tokens.",
                                        labels=["model_name", "cache_source"])
                for model, m in self.models.items():  # a third from host memory, the rest on device
                    c.add_metric([model, "device"], float(m.cached_tokens - m.cached_tokens // 3))
                    c.add_metric([model, "host"], float(m.cached_tokens // 3))
                yield c
            yield from self._gauge("sglang:num_running_reqs", "The number of running requests.", labels, extra)
            yield from self._hist("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                                  labels, extra, lambda m: m.prefill_times, SECONDS_BUCKETS)
        elif k == "trtllm":
            labels, extra = ["model_name", "engine_type"], ["trtllm"]
            yield from self._counter("trtllm_prompt_tokens", "Cumulative number of prompt (input) tokens processed.",
                                     labels, extra, lambda m: m.prompt_tokens)
            yield from self._counter("trtllm_generation_tokens",
                                     "Cumulative number of generation (output) tokens produced.",
                                     labels, extra, lambda m: m.completion_tokens)
            yield from self._counter("trtllm_prompt_cached_tokens",
                                     "Cumulative number of prompt tokens served from the KV cache.",
                                     labels, extra, lambda m: m.cached_tokens)
            yield from self._counter("trtllm_request_success", "Count of successfully processed requests.",
                                     labels, extra, lambda m: len(m.prompt_lens))
            yield from self._hist("trtllm_request_prefill_time_seconds",
                                  "Histogram of prefill (context) phase duration in seconds.",
                                  labels, extra, lambda m: m.prefill_times, SECONDS_BUCKETS)
            yield from self._hist("trtllm_request_decode_time_seconds",
                                  "Histogram of decode (generation) phase duration in seconds.",
                                  labels, extra, lambda m: m.decode_times, SECONDS_BUCKETS)
        elif k == "lmdeploy":
            labels, extra = ["model_name"], []
            yield from self._gauge("lmdeploy:num_requests_running", "Number of requests in model execution batches.",
                                   labels, extra)
            yield from self._counter("lmdeploy:prompt_tokens", "Number of prefill tokens processed.",
                                     labels, extra, lambda m: m.prompt_tokens)
            yield from self._counter("lmdeploy:generation_tokens", "Number of generation tokens processed.",
                                     labels, extra, lambda m: m.completion_tokens)
            yield from self._hist("lmdeploy:request_prefill_time_seconds",
                                  "Histogram of time spent in PREFILL phase for request.",
                                  labels, extra, lambda m: m.prefill_times, SECONDS_BUCKETS)
            yield from self._hist("lmdeploy:request_decode_time_seconds",
                                  "Histogram of time spent in DECODE phase for request.",
                                  labels, extra, lambda m: m.decode_times, SECONDS_BUCKETS)
        else:  # generic: an in-house server with its own names
            labels, extra = ["served_model"], []
            yield from self._counter("app_input_tokens", "Input tokens.", labels, extra, lambda m: m.prompt_tokens)
            yield from self._counter("app_output_tokens", "Output tokens.", labels, extra, lambda m: m.completion_tokens)
            yield from self._hist("app_prefill_seconds", "Prefill time.", labels, extra,
                                  lambda m: m.prefill_times, SECONDS_BUCKETS)
            yield from self._hist("app_decode_seconds", "Decode time.", labels, extra,
                                  lambda m: m.decode_times, SECONDS_BUCKETS)

    def _counter(self, name, doc, labels, extra, get):
        if name in self.omit:
            return
        c = CounterMetricFamily(name, doc, labels=labels)
        for model, m in self.models.items():
            c.add_metric([model, *extra], float(get(m)))
        yield c

    def _gauge(self, name, doc, labels, extra):
        if name in self.omit:
            return
        g = GaugeMetricFamily(name, doc, labels=labels)
        for model in self.models:
            g.add_metric([model, *extra], 0.0)
        yield g

    def _hist(self, name, doc, labels, extra, get, bounds):
        if name in self.omit:
            return
        h = HistogramMetricFamily(name, doc, labels=labels)
        for model, m in self.models.items():
            values = get(m)
            h.add_metric([model, *extra], buckets=_buckets(values, bounds), sum_value=float(sum(values)))
        yield h


def _hist_lines(name: str, labels: str, values: list[float], bounds: tuple[float, ...],
                le_style=_fmt) -> list[str]:
    sep = "," if labels else ""
    out = [f'{name}_bucket{{{labels}{sep}le="{le_style(b)}"}} {sum(1 for v in values if v <= b)}'
           for b in bounds]
    out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {len(values)}')
    tail = f"{{{labels}}}" if labels else ""
    out.append(f"{name}_sum{tail} {_num(sum(values))}")
    out.append(f"{name}_count{tail} {len(values)}")
    return out


def _num(x: float) -> str:
    """Rust and C++ exporters print whole numbers without a decimal point."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _tgi(models: dict[str, ModelState], omit: set[str]) -> str:
    """TGI's router (Rust, metrics-exporter-prometheus): no model label, histograms with
    buckets, counters without ``_total``."""
    (m,) = models.values()
    lines: list[str] = []

    def hist(name, doc, values, bounds, labels=""):
        if name in omit:
            return
        lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} histogram"])
        lines.extend(_hist_lines(name, labels, values, bounds, le_style=_num))

    lines += ["# HELP tgi_request_count Total number of requests", "# TYPE tgi_request_count counter",
              f"tgi_request_count {len(m.prompt_lens)}",
              "# HELP tgi_queue_size Current queue size", "# TYPE tgi_queue_size gauge", "tgi_queue_size 0"]
    hist("tgi_request_input_length", "Input token length per request", m.prompt_lens, TOKEN_BUCKETS)
    hist("tgi_request_generated_tokens", "Generated tokens per request", m.completion_lens, TOKEN_BUCKETS)
    if "tgi_batch_forward_duration" not in omit:
        lines += ["# HELP tgi_batch_forward_duration Batch forward duration per method (prefill or decode)",
                  "# TYPE tgi_batch_forward_duration histogram"]
        lines += _hist_lines("tgi_batch_forward_duration", 'method="decode"', m.decode_times, SECONDS_BUCKETS, _num)
        lines += _hist_lines("tgi_batch_forward_duration", 'method="prefill"', m.prefill_times, SECONDS_BUCKETS, _num)
    return "\n".join(lines) + "\n"


def _llamacpp(models: dict[str, ModelState], omit: set[str]) -> str:
    """llama.cpp's server (``--metrics``): counters with ``_total`` in the TYPE line, no labels."""
    (m,) = models.values()
    n = len(m.prompt_lens)
    metrics = [
        ("prompt_tokens_total", "counter", "Number of prompt tokens processed, excluding cached tokens",
         m.prompt_tokens - m.cached_tokens),
        ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache", m.cached_tokens),
        ("prompt_seconds_total", "counter", "Prompt process time", m.prefill_s),
        ("tokens_predicted_total", "counter", "Number of generation tokens processed.", m.completion_tokens),
        ("tokens_predicted_seconds_total", "counter", "Predict process time", m.decode_s),
        ("n_decode_total", "counter", "Total number of llama_decode() calls", n),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.",
         m.prompt_tokens / m.prefill_s if m.prefill_s else 0.0),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.",
         m.completion_tokens / m.decode_s if m.decode_s else 0.0),
        ("requests_processing", "gauge", "Number of requests processing.", 0),
    ]
    lines = []
    for name, typ, doc, value in metrics:
        full = "llamacpp:" + name
        if full in omit:
            continue
        lines += [f"# HELP {full} {doc}", f"# TYPE {full} {typ}", f"{full} {_cxx(value)}"]
    return "\n".join(lines) + "\n"


def _cxx(x: float) -> str:
    """What ``std::stringstream << (double) x`` prints: 6 significant digits (C's %g)."""
    return "%g" % float(x)


def _dynamo(models: dict[str, ModelState], omit: set[str]) -> str:
    """NVIDIA Dynamo's HTTP frontend (Rust, the prometheus crate): label ``model``; input and
    cached tokens per request as histograms, output tokens as a counter and a histogram."""
    lines = ["# HELP dynamo_frontend_inflight_requests Number of inflight requests",
             "# TYPE dynamo_frontend_inflight_requests gauge"]
    lines += [f'dynamo_frontend_inflight_requests{{model="{name}"}} 0' for name in models]
    if "dynamo_frontend_output_tokens" not in omit:
        lines += ["# HELP dynamo_frontend_output_tokens_total Total number of output tokens generated",
                  "# TYPE dynamo_frontend_output_tokens_total counter"]
        lines += [f'dynamo_frontend_output_tokens_total{{model="{name}"}} {m.completion_tokens}'
                  for name, m in models.items()]
    for name, doc, get in (
        ("dynamo_frontend_input_sequence_tokens", "Input sequence length in tokens", lambda m: m.prompt_lens),
        ("dynamo_frontend_output_sequence_tokens", "Output sequence length in tokens", lambda m: m.completion_lens),
        ("dynamo_frontend_cached_tokens", "Number of cached tokens (prefix cache hits) per request",
         lambda m: m.cached_lens),
    ):
        if name in omit:
            continue
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
        for model, m in models.items():
            lines += _hist_lines(name, f'model="{model}"', get(m), TOKEN_BUCKETS, _num)
    return "\n".join(lines) + "\n"


def _triton(models: dict[str, ModelState], omit: set[str]) -> str:
    """Triton (prometheus-cpp) with the TensorRT-LLM backend: ``model`` and ``version`` labels,
    counters without ``_total``, and the backend's token-length histograms."""
    lines = ["# HELP nv_inference_request_success Number of successful inference requests, all batch sizes",
             "# TYPE nv_inference_request_success counter"]
    lines += [f'nv_inference_request_success{{model="{name}",version="1"}} {len(m.prompt_lens)}'
              for name, m in models.items()]
    for name, doc, kind_label, get in (
        ("nv_llm_input_token_len", "TRT LLM response metrics", "total_input_tokens", lambda m: m.prompt_lens),
        ("nv_llm_output_token_len", "TRT LLM response metrics", "total_output_tokens", lambda m: m.completion_lens),
    ):
        if name in omit:
            continue
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
        for model, m in models.items():
            labels = f'model="{model}",response_metric_type="{kind_label}",version="1"'
            lines += _hist_lines(name, labels, get(m), TRITON_BUCKETS, _num)
    return "\n".join(lines) + "\n"


class ServerProcess:
    """A fake inference server in a process of its own (``python -m tests.fakes.servers``): its
    own PID listening on its own loopback port, as a real server is, for the tests that match GPU
    processes to listening ports. It serves ``tokens_per_s`` prompt and half as many completion
    tokens a second of real time, and exits when stopped or when its parent's pipe closes."""

    def __init__(self, kind: str = "vllm", model: str = "llama-3-8b", tokens_per_s: int = 0) -> None:
        self.kind, self.model, self.tokens_per_s = kind, model, tokens_per_s
        self.proc = None
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}" + ("/prometheus/metrics" if self.kind == "trtllm" else "/metrics")

    def __enter__(self) -> "ServerProcess":
        import subprocess
        import sys
        from pathlib import Path

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.servers", self.kind, self.model, str(self.tokens_per_s)],
            cwd=Path(__file__).parents[2], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"the fake {self.kind} server did not start: {line!r}")
        self.port = int(line)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()


def _serve_forever(kind: str, model: str, tokens_per_s: int) -> None:
    import sys
    import time

    server = FakeInferenceServer(kind, models=[model]).start()
    print(server.port, flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.wait(0.2):
        if tokens_per_s:
            server.add(model, max(1, tokens_per_s // 5), max(1, tokens_per_s // 10))
    server.stop()


if __name__ == "__main__":
    import sys

    _serve_forever(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
