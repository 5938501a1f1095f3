"""The push endpoint: token usage from workloads that expose no metrics.

A workload POSTs usage records to a local HTTP endpoint, on loopback or a Unix socket::

    POST /v1/usage
    {"model": "llama-3-8b", "prompt_tokens": 120, "completion_tokens": 30,
     "tenant": "team-a", "request_id": "req-42"}

or a JSON list of such records (up to ``max_records``). ``tenant`` and ``request_id`` are
optional. The answer is ``200 {"accepted": N, "duplicates": M}``; a record whose
``request_id`` was already accepted counts once (a client may retry safely). Anything invalid
is ``400 {"error": "one line naming the record and the field"}`` and then *nothing* of that
body is taken, so that a client can fix and resend the whole batch; a body over ``max_bytes``
is 413, a body that does not arrive within ``body_timeout_s`` (default 10 s) is 408. ``GET /healthz`` answers 200.

Only loopback addresses (or a Unix socket) are accepted: the endpoint has no authentication,
and anything that can reach it can bill tokens.

Idempotency is remembered for the last ``max_request_ids`` ids (default 100,000), oldest
forgotten first. In memory (:class:`UsageLedger`, measured about 18 MB of RAM with UUID ids) that
is for the life of the process; the agent passes a durable sink instead
(:class:`meterd.agent.push_journal.StoreJournal`): then the ids live in the store, across
restarts, and a 200 means the records are committed to disk; a sink that cannot write is a 503.

For the agent::

    endpoint = PushEndpoint(port=9464)         # or PushEndpoint(uds="/run/meterd/push.sock")
    endpoint.start()                           # a background thread; returns once listening
    ...
    usage = endpoint.drain()   # {(model, tenant or ""): PushedUsage} since the last drain; thread-safe
    ...
    endpoint.stop()

The pure part (validation, the ledger) is :class:`UsageLedger`, usable and tested without
a server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from meterd.errors import InvalidUsage
from meterd.limits import InputError, dumps_line, loads_bounded, text_problem
from meterd.net import is_loopback

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_RECORDS = 10_000
DEFAULT_MAX_REQUEST_IDS = 100_000
DEFAULT_BODY_TIMEOUT_S = 10.0
MAX_TOKENS_PER_RECORD = 10**9  # far beyond any context window: a bigger number is a bug upstream
MAX_TEXT_CHARS = 256
# An oversized body is read and dropped up to this size (to answer 413 cleanly), then cut off.
_DISCARD_BYTES = 64 * 1024 * 1024

# A body is a record or a list of records: anything deeper is refused before it is parsed.
MAX_BODY_NESTING = 4

log = logging.getLogger(__name__)

_FIELDS = ("model", "prompt_tokens", "completion_tokens", "tenant", "request_id")


@dataclass(frozen=True)
class UsageRecord:
    model: str
    prompt_tokens: int
    completion_tokens: int
    tenant: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class PushedUsage:
    """What one (model, tenant) pushed since the last drain. ``requests``: records counted.

    ``prefill_s``/``decode_s`` are always ``None`` (a usage record carries no timing); they are
    here so that pushed usage reads like scraped usage (:class:`probes.counters.Counts`).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    prefill_s: float | None = None
    decode_s: float | None = None


def parse_body(body: bytes, max_records: int = DEFAULT_MAX_RECORDS) -> list[UsageRecord]:
    """Validate a pushed body: one record (a JSON object) or a list of them. Pure.

    Raises :class:`InvalidUsage` naming the record (by index in a list) and the field.
    """
    try:
        doc = loads_bounded(body, MAX_BODY_NESTING)
    except InputError as e:
        raise InvalidUsage(str(e)) from None
    if isinstance(doc, dict):
        return [_record(doc, "the record")]
    if isinstance(doc, list):
        if len(doc) > max_records:
            raise InvalidUsage(f"{len(doc)} records in one body; at most {max_records}")
        return [_record(item, f"record {i} of {len(doc)}") for i, item in enumerate(doc, 1)]
    raise InvalidUsage("the body must be a JSON object (one record) or a list of records")


def _record(item: Any, where: str) -> UsageRecord:
    if not isinstance(item, dict):
        raise InvalidUsage(f"{where}: must be a JSON object, not {type(item).__name__}")
    unknown = sorted(set(item) - set(_FIELDS))
    if unknown:
        raise InvalidUsage(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(_FIELDS)}")
    for name in ("model", "prompt_tokens", "completion_tokens"):
        if name not in item:
            raise InvalidUsage(f"{where}: {name} is required")
    return UsageRecord(
        model=_text(item["model"], where, "model", required=True),
        prompt_tokens=_tokens(item["prompt_tokens"], where, "prompt_tokens"),
        completion_tokens=_tokens(item["completion_tokens"], where, "completion_tokens"),
        tenant=_text(item.get("tenant"), where, "tenant"),
        request_id=_text(item.get("request_id"), where, "request_id"),
    )


def _tokens(v: Any, where: str, name: str) -> int:
    # bool is an int in Python and 1.0 is a float in JSON: neither is a count of tokens.
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidUsage(f"{where}: {name} must be a whole number, not {dumps_line(v)}")
    if not 0 <= v <= MAX_TOKENS_PER_RECORD:
        raise InvalidUsage(f"{where}: {name} must be between 0 and {MAX_TOKENS_PER_RECORD:,}, not {v}")
    return v


def _text(v: Any, where: str, name: str, required: bool = False) -> str | None:
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip():
        raise InvalidUsage(f"{where}: {name} must be a non-empty string")
    if len(v) > MAX_TEXT_CHARS:
        raise InvalidUsage(f"{where}: {name} is longer than {MAX_TEXT_CHARS} characters")
    if any(ord(c) < 32 for c in v):
        raise InvalidUsage(f"{where}: {name} contains control characters")
    problem = text_problem(v)
    if problem:
        raise InvalidUsage(f"{where}: {name} {problem}")
    return v


class UsageLedger:
    """Pushed usage per (model, tenant) since the last drain, idempotent by request id.

    Thread-safe: the endpoint adds from its thread, the agent drains from its own.
    """

    def __init__(self, max_request_ids: int = DEFAULT_MAX_REQUEST_IDS) -> None:
        if max_request_ids < 1:
            raise ValueError("max_request_ids must be at least 1")
        self.max_request_ids = max_request_ids
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._usage: dict[tuple[str, str], PushedUsage] = {}

    def add(self, records: list[UsageRecord]) -> tuple[int, int]:
        """Count ``records``; returns (accepted, duplicates). All under one lock, so a batch
        is never half-drained."""
        accepted = duplicates = 0
        with self._lock:
            for r in records:
                if r.request_id is not None:
                    if r.request_id in self._seen:
                        self._seen.move_to_end(r.request_id)
                        duplicates += 1
                        continue
                    self._seen[r.request_id] = None
                    if len(self._seen) > self.max_request_ids:
                        self._seen.popitem(last=False)
                key = (r.model, r.tenant or "")
                u = self._usage.get(key, PushedUsage())
                self._usage[key] = PushedUsage(u.prompt_tokens + r.prompt_tokens,
                                               u.completion_tokens + r.completion_tokens, u.requests + 1)
                accepted += 1
        return accepted, duplicates

    def drain(self) -> dict[tuple[str, str], PushedUsage]:
        """Usage since the last drain, per (model, tenant), tenant ``""`` where the records
        named none; the ledger starts again from zero.
        Request ids are kept: a retry after a drain is still a duplicate."""
        with self._lock:
            out, self._usage = self._usage, {}
        return out




class _RateLimitedLog:
    """A refused body is a log line, but a client looping on bad bodies gets at most one line
    every ``every_s`` (with how many were held back)."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def warning(self, fmt: str, *args) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._held += 1
                return
            held, self._held, self._next = self._held, 0, now + self.every_s
        log.warning(fmt + (f" (and {held} more since the last line)" if held else ""), *args)


class PushEndpoint:
    """The HTTP endpoint around a :class:`UsageLedger`, served by uvicorn in a background thread.

    Give ``uds`` (a Unix socket path) or ``host``/``port`` (loopback only; port 0 picks a free
    one, see :attr:`url`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, uds: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_records: int = DEFAULT_MAX_RECORDS,
                 max_request_ids: int = DEFAULT_MAX_REQUEST_IDS,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S, sink=None) -> None:
        if uds is None and not is_loopback(host):
            raise ValueError(f"the push endpoint listens on loopback or a Unix socket only, not {host!r}: "
                             "it has no authentication")
        self.host, self.port, self.uds = host, port, uds
        self.max_bytes, self.max_records, self.body_timeout_s = max_bytes, max_records, body_timeout_s
        # Where accepted records go: in memory by default; the agent passes a durable journal
        # (meterd.agent.push_journal.StoreJournal), and then a 200 means committed to disk.
        self.ledger = sink if sink is not None else UsageLedger(max_request_ids)
        self._refusals = _RateLimitedLog()
        self._sock: socket.socket | None = None
        self._bound_uds: str | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    # --- the agent's side --------------------------------------------------------------------

    def drain(self) -> dict[tuple[str, str], PushedUsage]:
        return self.ledger.drain()

    @property
    def durable(self) -> bool:
        """True when a 200 means the records are on disk (the agent then reads the journal)."""
        return bool(getattr(self.ledger, "durable", False))

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (TCP) or ``http://localhost`` (Unix socket: pass the path
        to the HTTP client's transport)."""
        if self.uds:
            return "http://localhost"
        assert self._sock is not None, "start the endpoint first"
        host, port = self._sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self, ready_timeout_s: float = 10.0) -> "PushEndpoint":
        import uvicorn

        self._sock = self._bind()
        config = uvicorn.Config(
            self._app(), log_config=None, access_log=False, lifespan="off", ws="none",
            # Idle keep-alive connections go after 5 s; a request's head is bounded to 64 kB.
            timeout_keep_alive=5, timeout_graceful_shutdown=2, h11_max_incomplete_event_size=64 * 1024,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="meterd-push", daemon=True)
        self._thread.start()
        stop = threading.Event()
        for _ in range(int(ready_timeout_s / 0.01)):  # bounded wait for uvicorn's startup
            if self._server.started or not self._thread.is_alive():
                break
            stop.wait(0.01)
        if not self._server.started:
            self.stop()
            raise RuntimeError("the push endpoint did not start")
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._bound_uds and os.path.exists(self._bound_uds):
            os.unlink(self._bound_uds)
        self._bound_uds = None
        self._server = None
        close = getattr(self.ledger, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "PushEndpoint":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        if self.uds:
            if os.path.exists(self.uds):
                os.unlink(self.uds)  # a stale socket from a previous run
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(self.uds)
                self._bound_uds = self.uds
                # Owner and group only: whoever can write to the socket can bill tokens.
                os.chmod(self.uds, 0o660)
            except OSError:
                sock.close()
                raise
        else:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1" if self.host == "localhost" else self.host, self.port))
            except OSError:
                sock.close()
                raise
        sock.listen(128)
        return sock

    # --- the HTTP side -----------------------------------------------------------------------

    def _app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.concurrency import run_in_threadpool
        from starlette.routing import Route

        async def usage(request: Request) -> JSONResponse:
            body = bytearray()
            received = 0
            try:
                # A client that stops half-way through its body must not hold a request open.
                async with asyncio.timeout(self.body_timeout_s):
                    async for chunk in request.stream():
                        received += len(chunk)
                        if received <= self.max_bytes:
                            body += chunk
                        elif received > _DISCARD_BYTES:
                            return _error(413, f"the body is over {self.max_bytes:,} bytes", close=True)
                        # Over the limit: keep reading, without keeping, so that the client gets
                        # the 413 instead of a reset connection (closing a socket with unread
                        # data resets it).
            except TimeoutError:
                return _error(408, f"the body did not arrive within {self.body_timeout_s:g} s", close=True)
            if received > self.max_bytes:
                return _error(413, f"the body is {received:,} bytes; at most {self.max_bytes:,}")
            try:
                records = parse_body(bytes(body), self.max_records)
            except InvalidUsage as e:
                self._refusals.warning("push endpoint refused a body (400): %s", e)
                return _error(400, str(e))
            try:
                # The journal's write blocks on fsync: off the event loop.
                accepted, duplicates = await run_in_threadpool(self.ledger.add, records)
            except (sqlite3.Error, OSError) as e:
                self._refusals.warning("push endpoint cannot store records (503): %s", e)
                return _error(503, f"the agent's store cannot take the records now ({e}); nothing "
                                   "of this body was taken: retry later", retry_after=5)
            return JSONResponse({"accepted": accepted, "duplicates": duplicates})

        async def healthz(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/v1/usage", usage, methods=["POST"]),
                                 Route("/healthz", healthz, methods=["GET"])])


def _error(status: int, message: str, close: bool = False, retry_after: int | None = None):
    from starlette.responses import JSONResponse

    headers = {"Connection": "close"} if close else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": message}, status_code=status, headers=headers)
