"""The collector's HTTP API (Starlette, ASGI): ingest of CloudEvents batches, the query API and
a health check; the web report (``/report``, collector/web.py). docs/collector-api.md documents it.

The order of the ingest checks is the order of their cost: the token (401/403) before the
content type (415), the declared size (413) before any byte is read, the size again while the
body streams in (so a 50 MB body is never held in memory), then JSON (400), the sources (403)
and the schema (400); only a batch that passes all of them reaches the store, in one
transaction. Blocking work (SQLite, parsing a large body) runs in the thread pool so the event
loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meterd.agent.events import BATCH_CONTENT_TYPE
from meterd.limits import MAX_SAFE_INT
from meterd.units import iso
from meterd.collector.auth import Principal, authenticate
from meterd.collector.export import parse_bound, ratios
from meterd.collector.store import GROUP_KEYS, CollectorStore, IngestResult, Query, database_errors
from meterd.collector.validation import Checked, MalformedJSON, WrongShape, check_body
from meterd.errors import first_line

SINGLE_CONTENT_TYPE = "application/cloudevents+json"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_ERRORS = 1000
DEFAULT_LIMIT = 1000
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
log = logging.getLogger(__name__)


_DB_ERRORS = database_errors()


async def _read(query: Any, *args: Any) -> Any:
    """A store query in the thread pool; a database that cannot answer is a 503 naming why in
    one line (a load balancer asks another replica; a script retries), never a bare 500."""
    try:
        return await run_in_threadpool(query, *args)
    except _DB_ERRORS as e:
        log.error("collector database cannot answer a query: %s", first_line(e))
        raise _Refused(503, "the collector's database cannot answer now, retry later", detail=first_line(e),
                       retry_after=5) from None
MAX_LIMIT = 10_000


class _Refused(Exception):
    def __init__(self, status: int, error: str, *, retry_after: int | None = None, close: bool = False,
                 **extra: Any) -> None:
        self.status, self.body = status, {"error": error, **extra}
        self.retry_after, self.close = retry_after, close


class _Health:
    """The last write's outcome, for /readyz and the log (one line per change)."""

    def __init__(self) -> None:
        self.error: str | None = None

    def failed(self, e: BaseException) -> None:
        msg = first_line(e, limit=None)
        if self.error != msg:
            log.error("collector database cannot take writes: %s", msg)
        self.error = msg

    def ok(self) -> None:
        if self.error is not None:
            log.warning("collector database takes writes again (was: %s)", self.error)
        self.error = None


def _reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(store: CollectorStore, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_errors: int = DEFAULT_MAX_ERRORS, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> Starlette:
    """The ASGI app over a store. The caller owns the store (and closes it). A body that does
    not arrive within ``body_timeout_s`` is a 408 (the header timeout is the server's:
    :func:`timed_h11`)."""
    health = _Health()

    async def principal_of(request: Request) -> Principal:
        who = await run_in_threadpool(authenticate, store, request.headers.get("authorization"))
        if who is None:
            raise _Refused(401, "missing or unknown bearer token")
        return who

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _Refused(400, "bad Content-Length")
            if int(declared) > max_body_bytes:
                raise _Refused(413, f"body of {declared} bytes is over the limit of {max_body_bytes}")
        body = bytearray()
        try:
            async with asyncio.timeout(body_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > max_body_bytes:
                        raise _Refused(413, f"body is over the limit of {max_body_bytes} bytes")
        except TimeoutError:
            raise _Refused(408, f"the body did not arrive within {body_timeout_s:g} s", close=True) from None
        return bytes(body)

    async def post_events(request: Request) -> Response:
        who = await principal_of(request)
        if who.scope != "node":
            raise _Refused(403, f"a {who.scope} token may not send events")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in (BATCH_CONTENT_TYPE, SINGLE_CONTENT_TYPE):
            raise _Refused(415, f"content type must be {BATCH_CONTENT_TYPE} (a batch) or "
                                f"{SINGLE_CONTENT_TYPE} (one event), not {ctype or 'none'}")
        body = await read_body(request)
        single = ctype == SINGLE_CONTENT_TYPE

        def check_and_store() -> tuple[Checked, list, IngestResult | None]:  # one trip to the thread pool
            checked = check_body(body, node=who.name, single=single, max_errors=max_errors)
            if checked.foreign or checked.errors:
                return checked, [], None
            # The store refuses a batch with a window overlapping another of its device, checked
            # in the ingest's own transaction (atomic across replicas): then nothing is stored.
            result = store.ingest(checked.parsed)
            return checked, list(result.overlaps), None if result.overlaps else result

        try:
            checked, overlaps, result = await run_in_threadpool(check_and_store)
        except MalformedJSON as e:
            raise _Refused(400, "malformed JSON", detail=str(e)) from None
        except WrongShape as e:
            raise _Refused(400, f"{ctype} must be {e}") from None
        except _DB_ERRORS as e:  # the database cannot take the batch now: the node retries it
            health.failed(e)
            raise _Refused(503, "the collector's database cannot store events now; nothing was stored, "
                                "retry later", detail=first_line(e),
                           retry_after=5) from None
        if result is not None:
            health.ok()
        if checked.foreign:
            raise _Refused(403, "events from another node's source", errors=checked.foreign)
        if checked.errors:
            raise _Refused(400, "invalid events; nothing was stored", received=checked.received,
                           errors=checked.errors)
        if overlaps:
            raise _Refused(400, "invalid events; nothing was stored", received=checked.received,
                           errors=overlaps[:max_errors])
        assert result is not None
        return _reply(200, {"received": checked.received, "accepted": result.accepted,
                            "duplicates": result.duplicates})

    async def get_windows(request: Request) -> Response:
        who = await principal_of(request)
        q = _query(request, who)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        after = _int_param(request, "after", None, 0, None)
        rows = await _read(store.windows, q, limit, after)
        out = [_window_json(r) for r in rows]
        nxt = str(rows[-1]["seq"]) if len(rows) == limit else None
        return _reply(200, {"windows": out, "next": nxt})

    async def get_usage(request: Request) -> Response:
        who = await principal_of(request)
        q = _query(request, who)
        raw = request.query_params.get("group_by", "")
        group_by = [g.strip() for g in raw.split(",") if g.strip()]
        bad = [g for g in group_by if g not in GROUP_KEYS]
        if bad or len(set(group_by)) != len(group_by):
            raise _Refused(400, f"group_by takes distinct keys from {', '.join(GROUP_KEYS)}")
        rows = await _read(store.usage, group_by, q)
        return _reply(200, {
            "group_by": group_by,
            "since": None if q.since is None else iso(q.since),
            "until": None if q.until is None else iso(q.until),
            "groups": [ratios(r) for r in rows],
        })

    async def readyz(request: Request) -> Response:
        """Ready: the database takes a write now (a real one, rolled back where the backend can),
        and the last ingest did not fail since. A load balancer sends events elsewhere meanwhile."""
        probe = getattr(store, "write_probe", store.ping)
        try:
            await run_in_threadpool(probe)
        except Exception as e:  # readiness reports any storage failure, it never raises
            health.failed(e)
            return _reply(503, {"status": "not ready", "error": first_line(e)})
        health.ok()
        return _reply(200, {"status": "ready"})

    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(store.ping)
        except Exception as e:  # the health check reports any storage failure, it never raises
            return _reply(503, {"status": "error", "error": str(e)})
        return _reply(200, {"status": "ok"})

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        if exc.close:
            headers["Connection"] = "close"
        return _reply(exc.status, exc.body, headers or None)

    from meterd.collector.web import routes as web_routes

    return Starlette(
        routes=[*web_routes(store),
            Route("/api/v1/events", post_events, methods=["POST"]),
            Route("/api/v1/windows", get_windows, methods=["GET"]),
            Route("/api/v1/usage", get_usage, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={_Refused: refused},
    )


def _int_param(request: Request, name: str, default: int | None, lo: int, hi: int | None) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    hi = MAX_SAFE_INT if hi is None else hi  # nothing the database holds is beyond 2^53
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or not lo <= int(text) <= hi:
        raise _Refused(400, f"{name} must be an integer from {lo} to {hi}")
    return int(text)


def _query(request: Request, who: Principal) -> Query:
    p = request.query_params
    bounds: dict[str, float | None] = {}
    for name in ("since", "until"):
        try:
            bounds[name] = parse_bound(p[name]) if p.get(name) else None
        except ValueError as e:
            raise _Refused(400, f"{name}: {e}") from None
    node = p.get("node") or None
    if who.scope == "node":
        # A node token reads its own node's data only.
        if node is not None and node != who.name:
            raise _Refused(403, f"a token for node {who.name!r} may not read node {node!r}")
        node = who.name
    return Query(node=node, device=p.get("device") or None, model=p.get("model") or None,
                 tenant=p.get("tenant") if "tenant" in p else None, **bounds)


def _window_json(r: dict[str, Any]) -> dict[str, Any]:
    out = dict(r)
    out["start"], out["end"] = iso(r["start"]), iso(r["end"])
    out["received_at"] = iso(r["received_at"])
    out["partial"] = bool(r["partial"])
    out["flags"] = json.loads(r["flags"])
    return out



def timed_h11(header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S):
    """uvicorn's h11 protocol with a header read timeout: a connection that has not sent a
    whole request head within ``header_timeout_s`` of connecting (or of its last response) is
    closed, so a slow client cannot hold connections open."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
            armed_for = self.scope
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout, armed_for)

        def _header_timeout(self, armed_for) -> None:
            if self.scope is armed_for and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()  # no request head arrived in time

    return TimedH11
