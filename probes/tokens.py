"""Tokens from the inference servers on the node: scrape their Prometheus endpoints.

The API for the agent, once per sampling interval (the agent scrapes every source at once on
its round's thread pool, :class:`meterd.agent.sampler.ConcurrentReader`, so one slow server
costs the others nothing)::

    from meterd.probes.tokens import TokenSource
    from meterd.probes.counters import CounterTracker, Gap

    source = TokenSource("http://127.0.0.1:8000/metrics", kind="vllm")
    tracker = CounterTracker()
    with httpx.Client() as client:             # one client, reused: keep-alive connections
        while running:
            result = source.scrape(client)               # Totals | Gap
            update = tracker.update(source.key, result)  # pure: deltas per model, or a gap
            ...  # update.deltas[model].prompt_tokens, .gap, .restarted, .baseline

- :meth:`TokenSource.scrape` returns :class:`~probes.counters.Totals` (cumulative counts per
  model) or a :class:`~probes.counters.Gap` (with the reason): it never raises for anything
  the server does, and never reports a failed scrape as zero tokens.
  :meth:`TokenSource.read` is the same but raises a
  :class:`~probes.prometheus_servers.TokenProbeError` (what ``meter probe tokens`` uses).
- Each scrape has a deadline (``timeout_s``, default 2 s) covering connect, headers and the
  whole body, so a server that trickles bytes cannot hold it longer than about
  ``timeout_s`` plus one read; bodies over ``max_bytes`` (default 4 MiB, far above any real
  server's metrics) are refused unread.
- Counter semantics (deltas, restarts, gaps) are :mod:`probes.counters`; the metric names of
  each server and the parsing are :mod:`probes.prometheus_servers`.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from meterd.probes.counters import Gap, Totals
from meterd.probes.prometheus_servers import (
    KINDS,
    GenericMetrics,
    NotPrometheusText,
    ServerUnreachable,
    TokenProbeError,
    totals_from_text,
)

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

# Ask for the classic text format: it is what every server here speaks, and OpenMetrics
# exemplars would not parse with the classic parser. A server that answers OpenMetrics anyway
# says so in its Content-Type and gets the OpenMetrics parser.
_ACCEPT = "text/plain;version=0.0.4;q=1.0, application/openmetrics-text;version=1.0.0;q=0.5, */*;q=0.1"

# Where each server serves its metrics when the URL names no path.
_DEFAULT_PATHS = {"trtllm": "/prometheus/metrics"}


def normalize_url(url: str, kind: str = "auto") -> str:
    """``host:port`` becomes ``http://host:port/metrics`` (``/prometheus/metrics`` for
    trtllm-serve); a URL with a path is kept as it is. Only http and https are accepted."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as e:
        raise ValueError(f"{url}: not a valid URL ({e})") from e
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url}: only http:// and https:// URLs can be scraped")
    if not parts.hostname:
        raise ValueError(f"{url}: the URL names no host")
    path = parts.path if parts.path not in ("", "/") else _DEFAULT_PATHS.get(kind, "/metrics")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


@dataclass(frozen=True)
class TokenSource:
    """One inference server's metrics endpoint.

    ``kind``: one of :data:`~probes.prometheus_servers.KINDS` or ``auto`` (recognised from the
    metric names at every scrape). ``model``: the model name for one-model servers (TGI,
    llama.cpp, generic without a model label); default ``"default"``. ``generic``: the metric
    names for kind ``generic``. ``key``: what :class:`~probes.counters.CounterTracker` tracks
    it by; default the URL.
    """

    url: str
    kind: str = "auto"
    model: str | None = None
    generic: GenericMetrics | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_BYTES
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind != "auto" and self.kind not in KINDS:
            raise ValueError(f"unknown server kind {self.kind!r}; expected one of {', '.join(KINDS)} or auto")
        if self.kind == "generic" and self.generic is None:
            raise ValueError("kind generic needs its prompt and completion metric names")
        if not (0 < self.timeout_s <= 60):
            raise ValueError(f"timeout_s must be in (0, 60], got {self.timeout_s}")
        object.__setattr__(self, "url", normalize_url(self.url, self.kind))

    @property
    def key(self) -> str:
        return self.name or self.url

    def read(self, client: httpx.Client) -> Totals:
        """One scrape; raises :class:`~probes.prometheus_servers.TokenProbeError` with one line."""
        text, openmetrics = fetch_text(client, self.url, self.timeout_s, self.max_bytes)
        try:
            return totals_from_text(text, self.kind, model=self.model, generic=self.generic,
                                    openmetrics=openmetrics)
        except TokenProbeError as e:
            raise type(e)(f"{self.url}: {e}") from e

    def scrape(self, client: httpx.Client) -> Totals | Gap:
        """One scrape: the totals, or a :class:`~probes.counters.Gap` saying why not."""
        try:
            return self.read(client)
        except TokenProbeError as e:
            return e.gap()


def fetch_text(client: httpx.Client, url: str, timeout_s: float = DEFAULT_TIMEOUT_S,
               max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, bool]:
    """GET ``url`` within ``timeout_s`` overall; return (text, is_openmetrics).

    Raises :class:`ServerUnreachable` (refused, timed out, HTTP error status, body too large)
    or :class:`NotPrometheusText` (not UTF-8 text).
    """
    deadline = time.monotonic() + timeout_s
    body = bytearray()
    try:
        with client.stream("GET", url, headers={"Accept": _ACCEPT, "Accept-Encoding": "identity"},
                           timeout=httpx.Timeout(timeout_s), follow_redirects=False) as r:
            if r.status_code != 200:
                raise ServerUnreachable(f"{url}: HTTP {r.status_code} {r.reason_phrase}".rstrip())
            declared = r.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ServerUnreachable(f"{url}: the response is {int(declared):,} bytes, over the "
                                        f"{max_bytes:,}-byte limit for a metrics page")
            content_type = r.headers.get("content-type", "")
            for chunk in r.iter_raw():
                body += chunk
                if len(body) > max_bytes:
                    raise ServerUnreachable(f"{url}: the response is over the {max_bytes:,}-byte limit "
                                            f"for a metrics page")
                if time.monotonic() > deadline:
                    raise ServerUnreachable(f"{url}: timed out after {timeout_s:g} s (the body kept trickling)")
    except httpx.TimeoutException as e:
        raise ServerUnreachable(f"{url}: timed out after {timeout_s:g} s ({type(e).__name__})") from e
    except httpx.ConnectError as e:
        raise ServerUnreachable(f"{url}: cannot connect ({_reason(e)})") from e
    except httpx.InvalidURL as e:
        raise ServerUnreachable(f"{url}: not a valid URL ({e})") from e
    except httpx.HTTPError as e:  # disconnects, protocol errors, decoding errors
        raise ServerUnreachable(f"{url}: {type(e).__name__}: {_reason(e)}") from e
    encoding = r.headers.get("content-encoding", "identity").lower()
    if encoding not in ("", "identity"):
        # iter_raw() skipped decoding so that max_bytes bounds what is on the wire; decode now,
        # bounded again (a small gzip can expand enormously).
        body = bytearray(_decode_bounded(url, bytes(body), encoding, max_bytes))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotPrometheusText(f"{url}: not Prometheus text: the body is not UTF-8 (binary?)") from e
    return text, content_type.lower().startswith("application/openmetrics-text")


def _decode_bounded(url: str, data: bytes, encoding: str, max_bytes: int) -> bytes:
    if encoding not in ("gzip", "deflate"):
        raise ServerUnreachable(f"{url}: unsupported Content-Encoding {encoding!r}")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        d = zlib.decompressobj(wbits)
        out = d.decompress(data, max_bytes + 1)
    except zlib.error as e:
        raise NotPrometheusText(f"{url}: not Prometheus text: bad {encoding} body ({e})") from e
    if len(out) > max_bytes:
        raise ServerUnreachable(f"{url}: the decompressed response is over the {max_bytes:,}-byte limit")
    return out


def _reason(e: Exception) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg.splitlines()[0][:200]

