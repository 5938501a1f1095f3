"""``meter proxy``: a metering pass-through for servers that publish no token metrics (Ollama).

It listens on loopback, forwards every request unchanged to the inference server (loopback
too), streams the answer back unchanged, and reads the usage each response reports:

- OpenAI-compatible APIs (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``):
  the ``usage`` object (``prompt_tokens``, ``completion_tokens``, and
  ``prompt_tokens_details.cached_tokens``), in the JSON body or, streamed as server-sent events,
  in the chunk that carries it (``stream_options.include_usage``);
- Ollama's own API (``/api/generate``, ``/api/chat``): ``prompt_eval_count`` and ``eval_count``
  of the response, or of the last NDJSON line (``"done": true``) of a streamed one.

Each response's usage becomes one record for the agent's push endpoint (``model``,
``prompt_tokens``, ``completion_tokens``, ``tenant``, ``request_id``), the tenant named by the
request's API key (``Authorization: Bearer KEY``, mapped with ``--key KEY=TENANT``; a request
without a mapped key names no tenant). The push endpoint takes no cached prompt tokens, so a
response's ``cached_tokens`` are read but not recorded. A record that cannot be delivered is retried a few times and logged; the
answer to the client never waits for it. The push endpoint counts a ``request_id`` once, so a
retried delivery is never billed twice.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import httpx

from meterd.net import is_loopback

log = logging.getLogger(__name__)

#: Headers that belong to one hop, not to the request or the answer.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass(frozen=True)
class Usage:
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def usage_of(doc: Any, model: str = "") -> Usage | None:
    """The usage one response object reports (OpenAI's ``usage`` or Ollama's counts), or None."""
    if not isinstance(doc, dict):
        return None
    name = doc.get("model") if isinstance(doc.get("model"), str) else model
    u = doc.get("usage")
    if isinstance(u, dict) and _int(u.get("prompt_tokens")) is not None:
        details = u.get("prompt_tokens_details") if isinstance(u.get("prompt_tokens_details"), dict) else {}
        return Usage(name or "", u["prompt_tokens"], _int(u.get("completion_tokens")) or 0,
                     _int(details.get("cached_tokens")) or 0)
    if doc.get("done") is True and (_int(doc.get("prompt_eval_count")) is not None
                                    or _int(doc.get("eval_count")) is not None):
        return Usage(name or "", _int(doc.get("prompt_eval_count")) or 0, _int(doc.get("eval_count")) or 0)
    return None


class _StreamScanner:
    """Finds the usage in a streamed answer (NDJSON or server-sent events) as it passes."""

    def __init__(self) -> None:
        self.buf = b""
        self.found: Usage | None = None
        self.model = ""

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self.buf:
            self._line(self.buf)
            self.buf = b""

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line.startswith(b"{"):
            return
        try:
            doc = json.loads(line)
        except ValueError:
            return
        if isinstance(doc, dict) and isinstance(doc.get("model"), str):
            self.model = doc["model"]
        u = usage_of(doc, self.model)
        if u is not None:
            self.found = u


class PushSink:
    """Delivers records to the agent's push endpoint from one background thread."""

    def __init__(self, push_url: str, attempts: int = 5) -> None:
        self.url = push_url.rstrip("/") + "/v1/usage"
        self.attempts = attempts
        self.q: queue.Queue = queue.Queue()
        self.client = httpx.Client(timeout=5.0)
        self.thread = threading.Thread(target=self._run, name="meterd-proxy-push", daemon=True)
        self.thread.start()

    def __call__(self, record: dict[str, Any]) -> None:
        self.q.put(record)

    def _run(self) -> None:
        import time

        while True:
            record = self.q.get()
            if record is None:
                return
            for i in range(self.attempts):
                try:
                    r = self.client.post(self.url, json=record)
                    if r.status_code == 200:
                        break
                    if r.status_code < 500 and r.status_code not in (408, 429):
                        log.error("the push endpoint refused %s: %s", record, r.text[:200])
                        break
                except httpx.HTTPError as e:
                    if i == self.attempts - 1:
                        log.error("usage not delivered to %s (%s): %s", self.url, e, record)
                time.sleep(0.2 * 2 ** i)

    def close(self, timeout_s: float = 5.0) -> None:
        self.q.put(None)
        self.thread.join(timeout_s)
        self.client.close()


class UsageProxy:
    """The pass-through: ``listen`` (host, port) on loopback, to ``upstream`` (loopback)."""

    def __init__(self, upstream: str, sink: Callable[[dict[str, Any]], None], *, host: str = "127.0.0.1",
                 port: int = 0, keys: dict[str, str] | None = None, timeout_s: float = 600.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname or not is_loopback(parts.hostname):
            raise ValueError(f"--upstream {upstream!r}: the proxy forwards to a server on loopback only "
                             "(e.g. http://127.0.0.1:11434)")
        if not is_loopback(host):
            raise ValueError(f"the proxy listens on loopback only, not {host!r}")
        self.upstream = upstream.rstrip("/")
        self.sink, self.keys = sink, dict(keys or {})
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                proxy._forward(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _any  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "UsageProxy":
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="meterd-proxy", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.client.close()

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def tenant_of(self, headers) -> str:
        auth = headers.get("Authorization") or ""
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        return self.keys.get(key, "")

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        try:
            req = self.client.build_request(h.command, self.upstream + h.path, headers=headers, content=body)
            r = self.client.send(req, stream=True)
        except httpx.HTTPError as e:
            msg = json.dumps({"error": f"meter proxy: the upstream server did not answer ({type(e).__name__})"}).encode()
            h.send_response(502)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(msg)))
            h.end_headers()
            h.wfile.write(msg)
            return
        try:
            h.send_response(r.status_code)
            for k, v in r.headers.items():
                if k.lower() not in _HOP and k.lower() != "content-encoding":
                    h.send_header(k, v)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            scanner = _StreamScanner()
            whole = bytearray()
            for chunk in r.iter_bytes():
                if not chunk:
                    continue
                scanner.feed(chunk)
                if len(whole) < 16 * 1024 * 1024:
                    whole += chunk
                h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
            scanner.close()
        finally:
            r.close()
        if r.status_code != 200:
            return
        found = scanner.found
        if found is None:
            try:
                found = usage_of(json.loads(bytes(whole)))
            except ValueError:
                found = None
        if found is None or not (found.prompt_tokens or found.completion_tokens):
            return
        record = {"model": found.model or "unknown", "prompt_tokens": found.prompt_tokens,
                  "completion_tokens": found.completion_tokens, "request_id": f"proxy-{uuid.uuid4()}"}
        tenant = self.tenant_of(h.headers)
        if tenant:  # a request without a mapped key bills no tenant
            record["tenant"] = tenant
        self.sink(record)


def parse_keys(items: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, tenant = item.partition("=")
        if not sep or not key or not tenant:
            raise ValueError(f"--key {item!r}: expected KEY=TENANT")
        out[key] = tenant
    return out
