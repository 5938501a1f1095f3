"""What each inference server calls its token counters, and reading them out of Prometheus text.

Pure: text in, :class:`~probes.counters.Totals` out; no network (that is :mod:`probes.tokens`).
The text is parsed by prometheus_client's parser, never by hand.

Matching is on **sample names**, not family names, on purpose: the parser strips ``_total``
from a counter's family name (``# TYPE vllm:prompt_tokens_total counter`` makes family
``vllm:prompt_tokens``) but leaves the sample name whole, and a counter exposed without a TYPE
line is a family of type ``unknown`` that keeps its ``_total``. Sample names are the same in
both cases. Colons (``vllm:``, ``sglang:``, ``llamacpp:``) are legal in metric names and the
parser keeps them. A histogram contributes its ``_sum`` sample only.

For each field every kind lists the documented names in order of preference; the first name
present anywhere in the scrape is used for every model, so one scrape never mixes sources.
A model's value is the sum of its samples over the other labels (vLLM v1 adds ``engine``,
Triton adds ``version``, TRT-LLM adds ``engine_type``).

Servers and the metrics read (tokens are required; seconds and cached tokens where reported):

============  =====================================================  =================
kind          prompt / completion tokens                             model label
============  =====================================================  =================
vllm          ``vllm:prompt_tokens_total`` / ``vllm:generation_tokens_total``;
              where those are absent, ``_sum`` of the ``vllm:request_prompt_tokens`` /
              ``vllm:request_generation_tokens`` histograms (finished requests only; some
              vLLM-compatible servers and trimmed builds expose only these);
              seconds: ``_sum`` of ``vllm:request_prefill_time_seconds`` /
              ``vllm:request_decode_time_seconds``; cached: ``vllm:prefix_cache_hits_total``
                                                                     ``model_name``
sglang        ``sglang:prompt_tokens_total`` / ``sglang:generation_tokens_total``;
              cached: ``sglang:cached_tokens_total``                 ``model_name``
tgi           ``_sum`` of ``tgi_request_input_length`` /
              ``tgi_request_generated_tokens``; seconds: ``_sum`` of
              ``tgi_batch_forward_duration{method="prefill"|"decode"}``
                                                                     none (one model)
llamacpp      ``llamacpp:prompt_tokens_total`` / ``llamacpp:tokens_predicted_total``;
              seconds: ``llamacpp:prompt_seconds_total`` /
              ``llamacpp:tokens_predicted_seconds_total``            none (one model)
trtllm        ``trtllm_prompt_tokens_total`` / ``trtllm_generation_tokens_total``
              (Dynamo re-exports them as ``trtllm:...``); seconds: ``_sum`` of
              ``trtllm_request_prefill_time_seconds`` / ``..._decode_...``;
              cached: ``trtllm_prompt_cached_tokens_total``          ``model_name``
triton        ``_sum`` of ``nv_llm_input_token_len`` / ``nv_llm_output_token_len``
              (Triton with the TensorRT-LLM backend)                 ``model``
generic       named in the config (:class:`GenericMetrics`)          named in the config
============  =====================================================  =================

Exceptions (all carry one line for people)::

    ProbeError (meterd.errors)
     └── TokenProbeError        reading an inference server's token counters failed
          ├── ServerUnreachable  no usable answer: refused, timed out, HTTP error, too large
          ├── NotPrometheusText  the answer is not Prometheus text: binary, HTML, truncated
          ├── BadCounter         a counter is NaN, infinite, negative or not a whole number
          └── MetricsMissing     the text parses but lacks the expected metric
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from prometheus_client.openmetrics.parser import text_string_to_metric_families as _parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as _parse_text

from meterd.probes.counters import Counts, Gap, Totals
from meterd.errors import ProbeError

DEFAULT_MODEL = "default"
#: A counter beyond 2^53 has lost integer precision and would overflow SQLite's INTEGER once
#: summed: it is a reading error (a gap with this reason), never a bill.
MAX_COUNTER = float(2**53)
#: Model label values that name no model: trtllm-serve hard-codes "undefined"; others say
#: "default" or leave the label empty. A configured model name replaces them.
PLACEHOLDER_MODELS = frozenset({"", "undefined", "default", "none", "null", "unknown"})


class TokenProbeError(ProbeError):
    """Reading an inference server's token counters failed. ``cause`` is the :class:`Gap` cause."""

    cause = "unreachable"

    def gap(self) -> Gap:
        return Gap(reason=str(self), cause=self.cause)


class ServerUnreachable(TokenProbeError):
    cause = "unreachable"


class NotPrometheusText(TokenProbeError):
    cause = "not_prometheus"


class BadCounter(TokenProbeError):
    cause = "bad_counter"


class MetricsMissing(TokenProbeError):
    cause = "missing"


@dataclass(frozen=True)
class Field:
    """Where one :class:`Counts` field comes from: sample names in order of preference, and
    label values a sample must carry (e.g. TGI's ``method="prefill"``)."""

    name: str
    samples: tuple[str, ...]
    required: bool = False
    where: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ServerSpec:
    """One kind of inference server. ``model_label`` is ``None`` for one-model servers."""

    kind: str
    model_label: str | None
    fields: tuple[Field, ...]
    # Sample-name prefixes that identify the server even when its token metrics are absent,
    # so that `auto` can say "this is vLLM, but vllm:prompt_tokens_total is missing".
    prefixes: tuple[str, ...] = ()
    # llama.cpp's prompt counter leaves out the prompt tokens its cache served: every prompt
    # token of the requests (what a client's usage.prompt_tokens counts) is the sum of the two.
    prompt_excludes_cached: bool = False

    def sample_names(self) -> frozenset[str]:
        return frozenset(n for f in self.fields for n in f.samples)


def counter(name: str) -> tuple[str, ...]:
    """Sample names of a counter: with ``_total`` (current clients, OpenMetrics) and without
    (text format 0.0.4 allows it; older clients and hand-written exporters use it)."""
    base = name.removesuffix("_total")
    return (base + "_total", base)


def hist_sum(name: str) -> tuple[str, ...]:
    """The ``_sum`` sample of a histogram (or summary)."""
    return (name + "_sum",)


_TOKENS = ("prompt_tokens", "completion_tokens")

SPECS: dict[str, ServerSpec] = {
    spec.kind: spec
    for spec in (
        ServerSpec(
            "vllm", "model_name",
            (
                Field("prompt_tokens", counter("vllm:prompt_tokens") + hist_sum("vllm:request_prompt_tokens"), True),
                Field("completion_tokens",
                      counter("vllm:generation_tokens") + hist_sum("vllm:request_generation_tokens"), True),
                Field("prefill_s", hist_sum("vllm:request_prefill_time_seconds")),
                Field("decode_s", hist_sum("vllm:request_decode_time_seconds")),
                # Local and external (LMCache, KV transfer) cache hits; older vLLM: local only.
                Field("cached_tokens", counter("vllm:prompt_tokens_cached") + counter("vllm:prefix_cache_hits")),
            ),
            ("vllm:",),
        ),
        ServerSpec(
            "sglang", "model_name",
            (
                Field("prompt_tokens", counter("sglang:prompt_tokens"), True),
                Field("completion_tokens", counter("sglang:generation_tokens"), True),
                # One series per cache_source (device, host, storage): summed.
                Field("cached_tokens", counter("sglang:cached_tokens")),
            ),
            ("sglang:",),
        ),
        ServerSpec(
            "tgi", None,
            (
                Field("prompt_tokens", hist_sum("tgi_request_input_length"), True),
                Field("completion_tokens", hist_sum("tgi_request_generated_tokens"), True),
                # Batch forward time per phase: GPU time, not per-request wall time, which is
                # what a cost split by time wants.
                Field("prefill_s", hist_sum("tgi_batch_forward_duration"), where=(("method", "prefill"),)),
                Field("decode_s", hist_sum("tgi_batch_forward_duration"), where=(("method", "decode"),)),
            ),
            ("tgi_",),
        ),
        ServerSpec(
            "llamacpp", None,
            (
                Field("prompt_tokens", counter("llamacpp:prompt_tokens"), True),
                Field("completion_tokens", counter("llamacpp:tokens_predicted"), True),
                Field("prefill_s", counter("llamacpp:prompt_seconds")),
                Field("decode_s", counter("llamacpp:tokens_predicted_seconds")),
                Field("cached_tokens", counter("llamacpp:prompt_tokens_cached")),
            ),
            ("llamacpp:",),
            prompt_excludes_cached=True,
        ),
        ServerSpec(
            "trtllm", "model_name",
            (
                Field("prompt_tokens", counter("trtllm_prompt_tokens") + counter("trtllm:prompt_tokens"), True),
                Field("completion_tokens",
                      counter("trtllm_generation_tokens") + counter("trtllm:generation_tokens"), True),
                Field("prefill_s", hist_sum("trtllm_request_prefill_time_seconds")
                      + hist_sum("trtllm:request_prefill_time_seconds")),
                Field("decode_s", hist_sum("trtllm_request_decode_time_seconds")
                      + hist_sum("trtllm:request_decode_time_seconds")),
                Field("cached_tokens", counter("trtllm_prompt_cached_tokens") + counter("trtllm:prompt_cached_tokens")),
            ),
            ("trtllm_", "trtllm:"),
        ),
        ServerSpec(
            # LMDeploy's api_server (lmdeploy/metrics/metrics_processor.py), label model_name.
            "lmdeploy", "model_name",
            (
                Field("prompt_tokens", counter("lmdeploy:prompt_tokens"), True),
                Field("completion_tokens", counter("lmdeploy:generation_tokens"), True),
                Field("prefill_s", hist_sum("lmdeploy:request_prefill_time_seconds")),
                Field("decode_s", hist_sum("lmdeploy:request_decode_time_seconds")),
            ),
            ("lmdeploy:",),
        ),
        ServerSpec(
            # NVIDIA Dynamo's HTTP frontend: input tokens per request as a histogram, output
            # tokens as a counter, label model.
            "dynamo", "model",
            (
                Field("prompt_tokens", hist_sum("dynamo_frontend_input_sequence_tokens"), True),
                Field("completion_tokens", counter("dynamo_frontend_output_tokens")
                      + hist_sum("dynamo_frontend_output_sequence_tokens"), True),
                Field("cached_tokens", hist_sum("dynamo_frontend_cached_tokens")),
            ),
            ("dynamo_frontend_",),
        ),
        ServerSpec(
            "triton", "model",
            (
                Field("prompt_tokens", hist_sum("nv_llm_input_token_len"), True),
                Field("completion_tokens", hist_sum("nv_llm_output_token_len"), True),
            ),
            ("nv_llm_", "nv_trt_llm_", "nv_inference_"),
        ),
    )
}

KINDS: tuple[str, ...] = (*SPECS, "generic")


@dataclass(frozen=True)
class GenericMetrics:
    """A server of no known kind: the config names its metrics.

    A metric name may be a sample name (``my_prompt_tokens_total``, ``my_hist_sum``) or a
    family name: ``name``, ``name_total`` and ``name_sum`` are tried in that order.
    ``model_label`` ``None``: one model per server.
    """

    prompt_metric: str
    completion_metric: str
    model_label: str | None = None
    prefill_metric: str | None = None
    decode_metric: str | None = None

    def spec(self) -> ServerSpec:
        def names(metric: str) -> tuple[str, ...]:
            return (metric, metric + "_total", metric + "_sum")

        fields_ = [Field("prompt_tokens", names(self.prompt_metric), True),
                   Field("completion_tokens", names(self.completion_metric), True)]
        if self.prefill_metric:
            fields_.append(Field("prefill_s", names(self.prefill_metric)))
        if self.decode_metric:
            fields_.append(Field("decode_s", names(self.decode_metric)))
        return ServerSpec("generic", self.model_label, tuple(fields_))


@dataclass
class Samples:
    """The parsed scrape: sample name → [(labels, value)].

    ``bounds``: (sample name, index in ``by_name[name]``) → how many units the printed value may
    be off by, for values printed with fewer digits than they have (exponent form, e.g.
    llama.cpp's ``1.23457e+06``) or beyond 2^53. ``seen``: every sample name on the page, also
    those filtered out before parsing (for messages only).
    """

    by_name: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    bounds: dict[tuple[str, int], int] = field(default_factory=dict)
    seen: set[str] | None = None
    text: str | None = None  # the whole page, when lines were filtered out (read for messages)

    def names(self) -> set[str]:
        return set(self.by_name)

    def all_names(self) -> set[str]:
        if self.seen is None and self.text is not None:
            self.seen = set(_NAME_AT_LINE_START.findall(self.text))
        return self.seen if self.seen is not None else self.names()


# Servers print counters in different ways: Go and Python print every digit, C++'s default
# stream (llama.cpp) 6 significant digits. A value in exponent form is taken to have at least 6.
MIN_SIGNIFICANT_DIGITS = 6
_EXACT_LIMIT = 2.0 ** 53


def print_error_bound(token: str, value: float) -> int:
    """How many units a printed value may be off by: 0 when every unit digit is there."""
    bound = 0
    if not isinstance(value, float) or not math.isfinite(value):
        return 0  # NaN and infinities are refused as counters anyway
    t = token.strip()
    if "e" in t or "E" in t:
        mant, _, exp_s = t.lower().partition("e")
        try:
            exp = int(exp_s)
        except ValueError:
            exp = 0
        mant = mant.lstrip("+-")
        decimals = len(mant.partition(".")[2])
        decimals = max(decimals, MIN_SIGNIFICANT_DIGITS - 1)
        if exp > decimals:  # the last printed digit is 10^(exp - decimals) units
            bound = 5 * 10 ** (exp - decimals - 1)
    if abs(value) >= _EXACT_LIMIT:
        bound = max(bound, math.ceil(math.ulp(value) / 2))
    return bound


_NAME_AT_LINE_START = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", re.M)
_filters: dict[frozenset[str], re.Pattern] = {}


def _line_filter(names: frozenset[str]) -> re.Pattern:
    pat = _filters.get(names)
    if pat is None:
        alt = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        # The sample's name, its labels (a label value holds no raw newline: it is escaped),
        # then the value (and maybe a timestamp).
        # (A malformed line of a wanted metric is kept, so that the parser refuses it.)
        pat = re.compile(r"^(?:" + alt + r")[{ \t][^\n]*$", re.M)
        if len(_filters) > 64:
            _filters.clear()
        _filters[names] = pat
    return pat


def _value_token(line: str) -> str:
    rest = line[line.rindex("}") + 1:] if "}" in line else line.split(None, 1)[1]
    return rest.split()[0]


def parse_exposition(text: str, openmetrics: bool = False, keep: frozenset[str] | None = None) -> Samples:
    """Parse Prometheus text exposition (or OpenMetrics) into samples.

    ``keep``: the sample names wanted; other lines are dropped before the parser sees them (a
    vLLM page is mostly histogram buckets nobody here reads). Comment lines go too: matching is
    on sample names, which TYPE lines do not change.

    Raises :class:`NotPrometheusText` for anything the parser rejects, and for text that does
    not end with a newline: the format ends every line with one, so a body without it was cut
    short (a cut inside a number would otherwise parse as a smaller, wrong value).
    """
    if "\x00" in text:
        raise NotPrometheusText("not Prometheus text: the body is binary (it contains NUL bytes)")
    stripped = text.lstrip()
    if stripped[:1] == "<":
        raise NotPrometheusText("not Prometheus text: the body looks like HTML or XML")
    if stripped[:1] in ("{", "["):
        raise NotPrometheusText("not Prometheus text: the body looks like JSON")
    if text and not text.endswith("\n"):
        raise NotPrometheusText("not Prometheus text: the body does not end with a newline (truncated?)")
    out = Samples()
    lines: list[str] | None = None
    if keep is not None and not openmetrics:
        lines = _line_filter(keep).findall(text)
        out.text = text
        body = "\n".join(lines) + "\n" if lines else ""
    else:
        body = text
    try:
        parse = _parse_openmetrics if openmetrics else _parse_text
        for family in parse(body):
            for s in family.samples:
                out.by_name.setdefault(s.name, []).append((s.labels, s.value))
    except Exception as e:  # the parser raises ValueError, TypeError, IndexError... on junk
        raise NotPrometheusText(f"not Prometheus text: {_one_line(e)}") from e
    if lines is not None:
        _find_bounds(out, lines)
    else:
        for name, rows in out.by_name.items():
            for i, (_, v) in enumerate(rows):
                if isinstance(v, float) and abs(v) >= _EXACT_LIMIT:
                    out.bounds[(name, i)] = print_error_bound(repr(v), v)
    return out


def _find_bounds(out: Samples, lines: list[str]) -> None:
    """The parser yields one sample per line, in order: pair each kept line with its sample to
    see how its value was printed."""
    seen: dict[str, int] = {}
    for ln in lines:
        name = _NAME_AT_LINE_START.match(ln).group(1)
        i = seen.get(name, 0)
        seen[name] = i + 1
        rows = out.by_name.get(name)
        if rows is None or i >= len(rows):
            continue
        b = print_error_bound(_value_token(ln), rows[i][1])
        if b:
            out.bounds[(name, i)] = b


def _one_line(e: BaseException) -> str:
    msg = str(e).replace("\n", " ").strip() or type(e).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."


def detect_kind(samples: Samples) -> str:
    """Name the server from its metric names (``auto``).

    The kind whose required token metrics are all present wins. Raises
    :class:`MetricsMissing` when none is complete: naming the missing metric when the text
    looks like a known server (its prefix is there), or listing the kinds looked for.
    """
    names = samples.names()
    if not samples.all_names():
        raise MetricsMissing("the page has no metrics at all")
    complete = [k for k, spec in SPECS.items()
                if all(_first_present(f, names) for f in spec.fields if f.required)]
    if len(complete) == 1:
        return complete[0]
    if len(complete) > 1:
        raise MetricsMissing(f"the metrics match several kinds ({', '.join(complete)}): pick one with --kind")
    for kind, spec in SPECS.items():
        if any(n.startswith(spec.prefixes) for n in samples.all_names()):
            missing = [f for f in spec.fields if f.required and not _first_present(f, names)]
            raise MetricsMissing(f"looks like {kind}, but {_describe_missing(missing)}")
    known = ", ".join(SPECS)
    raise MetricsMissing(f"no known token metrics ({len(samples.all_names())} metrics read; looked for {known})")


def _first_present(f: Field, names: set[str]) -> str | None:
    return next((n for n in f.samples if n in names), None)


def _describe_missing(missing: list[Field]) -> str:
    parts = [f"{f.samples[0]} is missing" + (f" (also tried {', '.join(f.samples[1:])})" if len(f.samples) > 1 else "")
             for f in missing]
    return "; ".join(parts)


def read_totals(samples: Samples, kind: str = "auto", *, model: str | None = None,
                generic: GenericMetrics | None = None) -> Totals:
    """Cumulative token counts per model from one parsed scrape.

    ``kind`` is one of :data:`KINDS` or ``auto``. ``model`` names the model of a one-model
    server (TGI, llama.cpp, a generic server without a model label), of samples that lack
    the model label and of those whose label is a placeholder (:data:`PLACEHOLDER_MODELS`,
    e.g. trtllm-serve's ``"undefined"``); default ``"default"``. Raises :class:`MetricsMissing` naming the missing
    metric, :class:`BadCounter` naming the bad sample.
    """
    if kind == "auto":
        kind = detect_kind(samples)
    if kind == "generic":
        if generic is None:
            raise ValueError("kind generic needs the names of its metrics (GenericMetrics)")
        spec = generic.spec()
    elif kind in SPECS:
        spec = SPECS[kind]
    else:
        raise ValueError(f"unknown server kind {kind!r}; expected one of {', '.join(KINDS)} or auto")
    default_model = model or DEFAULT_MODEL
    names = samples.names()
    missing = [f for f in spec.fields if f.required and not _first_present(f, names)]
    if missing:
        raise MetricsMissing(f"{kind}: {_describe_missing(missing)}")

    per_model: dict[str, dict[str, float]] = {}
    bounds: dict[str, int] = {}
    histogram: set[str] = set()
    for f in spec.fields:
        name = _first_present(f, names)
        if name is None:
            continue
        from_hist = name.endswith("_sum") and f.name in _TOKENS
        for i, (labels, value) in enumerate(samples.by_name[name]):
            if any(labels.get(k) != v for k, v in f.where):
                continue
            _check_value(name, labels, value, whole=f.name not in ("prefill_s", "decode_s"))
            m = (labels.get(spec.model_label) if spec.model_label else None) or default_model
            if model and m in PLACEHOLDER_MODELS:
                m = model
            acc = per_model.setdefault(m, {})
            acc[f.name] = acc.get(f.name, 0) + value
            if f.name in _TOKENS or f.name == "cached_tokens":
                b = samples.bounds.get((name, i), 0)
                if b:
                    bounds[m] = bounds.get(m, 0) + b
                if from_hist:
                    histogram.add(m)

    models: dict[str, Counts] = {}
    for m, acc in sorted(per_model.items()):
        absent = [f for f in _TOKENS if f not in acc]
        if absent:
            raise MetricsMissing(f"{kind}: model {m!r} has no {' and no '.join(absent)} samples")
        over = [f for f, v in acc.items() if v > MAX_COUNTER]
        if over:
            raise BadCounter(f"{kind}: model {m!r}: {over[0]} sums to {acc[over[0]]:g}, beyond any real count "
                             "(at most 2^53): a reading error")
        cached = int(acc["cached_tokens"]) if "cached_tokens" in acc else None
        prompt = int(acc["prompt_tokens"])
        if spec.prompt_excludes_cached and cached is not None:
            prompt += cached
        provenance = "rounded" if m in bounds else ("histogram" if m in histogram else "counter")
        models[m] = Counts(
            prompt_tokens=prompt,
            completion_tokens=int(acc["completion_tokens"]),
            prefill_s=float(acc["prefill_s"]) if "prefill_s" in acc else None,
            decode_s=float(acc["decode_s"]) if "decode_s" in acc else None,
            cached_tokens=cached,
            provenance=provenance,
            error_bound=bounds.get(m, 0),
        )
    return Totals(kind=kind, models=models)


def _check_value(name: str, labels: dict[str, str], value: float, whole: bool) -> None:
    def where() -> str:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}}" if inner else name

    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise BadCounter(f"{where()} is not a number ({value!r})")
    if math.isnan(value):
        raise BadCounter(f"{where()} is NaN: a counter must be a finite number >= 0")
    if math.isinf(value):
        raise BadCounter(f"{where()} is infinite: a counter must be a finite number >= 0")
    if value < 0:
        raise BadCounter(f"{where()} is negative ({value:g}): a counter never goes below 0")
    if whole and not float(value).is_integer():
        raise BadCounter(f"{where()} is {value:g}, not a whole number of tokens")
    if value > MAX_COUNTER:
        raise BadCounter(f"{where()} is {value:g}, beyond any real count (at most 2^53): a reading error")


def totals_from_text(text: str, kind: str = "auto", *, model: str | None = None,
                     generic: GenericMetrics | None = None, openmetrics: bool = False) -> Totals:
    """:func:`parse_exposition` (only the lines of the metrics this kind reads) then
    :func:`read_totals`."""
    keep = wanted_samples(kind, generic)
    try:
        return read_totals(parse_exposition(text, openmetrics, keep=keep), kind, model=model, generic=generic)
    except MetricsMissing:
        if keep is None:
            raise
        # The error path only: the whole page through the parser, for the exact diagnosis
        # (text that is not Prometheus at all, or which kind it looks like).
        return read_totals(parse_exposition(text, openmetrics), kind, model=model, generic=generic)


_ALL_SAMPLES = frozenset(n for spec in SPECS.values() for n in spec.sample_names())


def wanted_samples(kind: str, generic: GenericMetrics | None = None) -> frozenset[str] | None:
    """The sample names a scrape of this kind reads (every known kind's for ``auto``)."""
    if kind == "auto":
        return _ALL_SAMPLES
    if kind == "generic":
        return generic.spec().sample_names() if generic is not None else None
    spec = SPECS.get(kind)
    return spec.sample_names() if spec is not None else None
