"""Faithful stand-ins for the billing systems we cannot run in a test: OpenMeter, Lago and Stripe,
as real HTTP servers on 127.0.0.1, each written from its documented contract.

- :class:`FakeOpenMeter` (``POST /api/v1/events``): the content type compared as an exact string
  (``application/cloudevents+json`` for one event, ``application/cloudevents-batch+json`` for a
  JSON array; ``; charset=...`` is refused), the CloudEvents attributes and ``subject`` required,
  ``204`` with no body; deduplication by (source, id) only when enabled, within a TTL. Meters
  (``valueProperty`` and ``groupBy`` JSONPaths, ``SUM``/``COUNT``/...) are evaluated as OpenMeter
  does, over the stored events.
- :class:`FakeLago` (``POST /api/v1/events/batch``): ``{"events": [...]}``, at most 100, all or
  nothing; ``transaction_id`` unique per (``external_subscription_id``, ``transaction_id``) for
  good, a duplicate answered ``422 value_already_exist`` keyed by the event's index.
- :class:`FakeStripe` (``POST /v1/billing/meter_events``): form-encoded, ``event_name``,
  ``payload[stripe_customer_id]``, ``payload[value]``, ``identifier`` unique (400 "already
  exists"), ``timestamp`` within the past 35 days and 5 minutes ahead, a per-second rate limit
  (429).

Each can be told to store a request and then answer 500 (``fail_after_store``): the sink holds
the events, the sender does not know it.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl


class _Server(ThreadingHTTPServer):
    daemon_threads = False


class _Fake:
    """A loopback HTTP server; subclasses answer ``handle(method, path, headers, body)``."""

    def __init__(self, token: str = "secret") -> None:
        self.token = token
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.fail_after_store = 0  # how many storing requests to answer 500 all the same
        self.fail_before_store = 0  # how many requests to answer 503 without storing
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                status, headers, out = fake._dispatch(self.command, self.path, self.headers, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                if out:
                    self.wfile.write(out)

            do_POST = do_GET = _any  # noqa: N815

            def log_message(self, *a):
                pass

        self.httpd = _Server(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _dispatch(self, method, path, headers, body):
        with self.lock:
            self.requests.append({"method": method, "path": path, "headers": dict(headers), "body": body})
            if self.fail_before_store:
                self.fail_before_store -= 1
                return 503, {"content-type": "text/plain"}, b"unavailable"
            if headers.get("authorization") != f"Bearer {self.token}":
                return self.unauthorized()
            status, hdrs, out, stored = self.handle(method, path, headers, body)
            if stored and self.fail_after_store:
                self.fail_after_store -= 1
                return 500, {"content-type": "text/plain"}, b"internal error"
            return status, hdrs, out

    def unauthorized(self):
        return 401, {"content-type": "application/json"}, b'{"error":"unauthorized"}'

    def handle(self, method, path, headers, body) -> tuple[int, dict, bytes, bool]:
        raise NotImplementedError

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _json(status: int, doc: Any, content_type: str = "application/json") -> tuple[int, dict, bytes, bool]:
    return status, {"content-type": content_type}, json.dumps(doc).encode(), False


# -- JSONPath, as far as OpenMeter meters use it ---------------------------------------------------

_SEG = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]")


def jsonpath(doc: Any, path: str) -> Any:
    """The value at a JSONPath of the form ``$.a.b`` / ``$['a']['b']`` (what a meter's
    ``valueProperty`` and ``groupBy`` hold). Raises KeyError when it does not resolve and
    ValueError for syntax this evaluator does not know (wildcards, filters, slices)."""
    if not path.startswith("$"):
        raise ValueError(f"JSONPath must start with $: {path!r}")
    pos, cur = 1, doc
    while pos < len(path):
        m = _SEG.match(path, pos)
        if not m:
            raise ValueError(f"unsupported JSONPath syntax at {path[pos:]!r} in {path!r}")
        key = next(g for g in m.groups() if g is not None)
        if not isinstance(cur, dict) or key not in cur:
            raise KeyError(f"{path} does not resolve (no {key!r})")
        cur = cur[key]
        pos = m.end()
    return cur


# -- OpenMeter ---------------------------------------------------------------------------------------

OM_BATCH = "application/cloudevents-batch+json"
OM_SINGLE = "application/cloudevents+json"


class FakeOpenMeter(_Fake):
    def __init__(self, token: str = "om_secret", dedupe: bool = False, dedupe_ttl_s: float = 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.events: list[dict[str, Any]] = []
        self.dedupe = dedupe
        self.dedupe_ttl_s = dedupe_ttl_s
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self.content_types: list[str] = []
        super().__init__(token)

    def _problem(self, detail: str):
        return _json(400, {"type": "about:blank", "title": "Bad Request", "status": 400, "detail": detail},
                     "application/problem+json")

    def handle(self, method, path, headers, body):
        if method != "POST" or path != "/api/v1/events":
            return _json(404, {"title": "Not Found", "status": 404})
        ctype = headers.get("content-type", "")
        self.content_types.append(ctype)
        try:
            doc = json.loads(body)
        except ValueError:
            return self._problem("invalid JSON body")
        if ctype == OM_BATCH:
            if not isinstance(doc, list):
                return self._problem("a batch must be a JSON array of CloudEvents")
            events = doc
        elif ctype == OM_SINGLE:
            events = [doc]
        else:  # an exact string comparison: no parameters, no application/json
            return self._problem(f"invalid content type: {ctype}")
        for i, ev in enumerate(events):
            if not isinstance(ev, dict):
                return self._problem(f"event {i}: not an object")
            for attr in ("id", "source", "type", "subject"):
                if not isinstance(ev.get(attr), str) or not ev[attr]:
                    return self._problem(f"event {i}: {attr} is required")
            if ev.get("specversion") != "1.0":
                return self._problem(f"event {i}: specversion must be 1.0")
            if "data" in ev and ev["data"] is not None and not isinstance(ev["data"], dict):
                return self._problem(f"event {i}: data must be a JSON object")
        now = self.clock()
        for ev in events:
            key = (ev["source"], ev["id"])
            if self.dedupe and now - self._seen.get(key, -1e18) < self.dedupe_ttl_s:
                continue
            self._seen[key] = now
            self.events.append(ev)
        return 204, {}, b"", True

    def meter(self, meter: dict[str, Any]) -> dict[tuple, float]:
        """A meter's value per group over the stored events, as OpenMeter computes it: the
        JSONPaths of ``valueProperty`` and ``groupBy`` are read from each event's ``data``."""
        out: dict[tuple, float] = {}
        agg = meter["aggregation"]
        group_by = meter.get("groupBy") or {}
        for ev in self.events:
            if ev["type"] != meter["eventType"]:
                continue
            data = ev.get("data") or {}
            key = tuple(sorted((name, str(jsonpath(data, p))) for name, p in group_by.items()))
            if agg == "COUNT":
                value = 1
            else:
                value = jsonpath(data, meter["valueProperty"])
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"{meter['valueProperty']} is not a number: {value!r}")
            if agg in ("SUM", "COUNT"):
                out[key] = out.get(key, 0) + value
            elif agg == "MAX":
                out[key] = max(out.get(key, value), value)
            else:
                raise ValueError(f"aggregation {agg} not modelled")
        return out


# -- Lago --------------------------------------------------------------------------------------------

LAGO_MAX_BATCH = 100


class FakeLago(_Fake):
    def __init__(self, token: str = "lago_key") -> None:
        self.events: dict[tuple[str, str], dict[str, Any]] = {}  # (subscription, transaction_id) -> event
        self.created = 0  # events stored as new
        self.already_held = 0  # events answered value_already_exist
        super().__init__(token)

    def unauthorized(self):
        return 401, {"content-type": "application/json"}, b'{"status":401,"error":"Unauthorized"}'

    @staticmethod
    def _validation(details: dict):
        return _json(422, {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
                           "error_details": details})

    def handle(self, method, path, headers, body):
        if method != "POST" or path != "/api/v1/events/batch":
            return _json(404, {"status": 404, "error": "Not Found", "code": "route_not_found"})
        if not headers.get("content-type", "").startswith("application/json"):
            return _json(400, {"status": 400, "error": "BadRequest: content type must be application/json"})
        try:
            doc = json.loads(body)
        except ValueError:
            return _json(400, {"status": 400, "error": "BadRequest: invalid JSON"})
        events = doc.get("events") if isinstance(doc, dict) else None
        if not events:
            return self._validation({"events": ["no_events"]})
        if len(events) > LAGO_MAX_BATCH:
            return self._validation({"events": ["too_many_events"]})
        errors: dict[str, dict[str, list[str]]] = {}
        rows = []
        for i, ev in enumerate(events):
            e: dict[str, list[str]] = {}
            if not isinstance(ev, dict):
                errors[str(i)] = {"event": ["invalid_format"]}
                continue
            for f in ("transaction_id", "code"):
                if not ev.get(f):
                    e.setdefault(f, []).append("value_is_mandatory")
            if not ev.get("external_subscription_id"):
                e.setdefault("external_subscription_id", []).append("value_is_mandatory")
            try:
                ts = float(ev["timestamp"]) if ev.get("timestamp") is not None else time.time()
            except (TypeError, ValueError):
                e.setdefault("timestamp", []).append("invalid_format")
                ts = None
            props = ev.get("properties", {})
            if not isinstance(props, dict):
                e.setdefault("properties", []).append("invalid_format")
            key = (ev.get("external_subscription_id"), ev.get("transaction_id"))
            if not e and key in self.events:
                e["transaction_id"] = ["value_already_exist"]
                self.already_held += 1
            if e:
                errors[str(i)] = e
            rows.append((key, {**ev, "timestamp": ts, "lago_id": str(uuid.uuid4())}))
        if errors:  # all or nothing: none of the batch is stored
            return self._validation(errors)
        for key, ev in rows:
            self.events[key] = ev
            self.created += 1
        out = {"events": [{"lago_id": ev["lago_id"], "transaction_id": ev["transaction_id"],
                           "external_subscription_id": ev["external_subscription_id"], "code": ev["code"],
                           "timestamp": ev["timestamp"], "properties": ev.get("properties", {})}
                          for _, ev in rows]}
        status, hdrs, b, _ = _json(200, out)
        return status, hdrs, b, True

    def sum(self, code: str, field: str, by: tuple[str, ...] = ()) -> dict[tuple, int | float]:
        """A ``sum_agg`` billable metric over ``field`` of the events with ``code``, per values
        of the properties ``by`` (Lago's filters)."""
        out: dict[tuple, int | float] = {}
        for ev in self.events.values():
            if ev["code"] != code:
                continue
            key = tuple(ev["properties"].get(b) for b in by)
            out[key] = out.get(key, 0) + ev["properties"][field]
        return out


# -- Stripe ------------------------------------------------------------------------------------------

STRIPE_MAX_AGE_S = 35 * 86400
STRIPE_MAX_FUTURE_S = 300


class FakeStripe(_Fake):
    def __init__(self, token: str = "sk_test_fake", rate_per_s: int = 25,
                 clock: Callable[[], float] = time.time) -> None:
        self.meter_events: dict[str, dict[str, Any]] = {}  # identifier -> event
        self.rate_per_s = rate_per_s
        self.clock = clock
        self.recent: deque[float] = deque()
        self.rate_limited = 0
        self.identifiers_sent: list[str] = []
        super().__init__(token)

    def unauthorized(self):
        return _json(401, {"error": {"message": "Invalid API Key provided", "type": "invalid_request_error"}})[:3]

    @staticmethod
    def _error(status: int, message: str, param: str | None = None, code: str | None = None):
        err = {"message": message, "type": "invalid_request_error"}
        if param:
            err["param"] = param
        if code:
            err["code"] = code
        return _json(status, {"error": err})

    def handle(self, method, path, headers, body):
        now = time.monotonic()
        while self.recent and now - self.recent[0] >= 1.0:
            self.recent.popleft()
        if len(self.recent) >= self.rate_per_s:
            self.rate_limited += 1
            return self._error(429, "Request rate limit exceeded.", code="rate_limit")
        self.recent.append(now)
        if method != "POST" or path != "/v1/billing/meter_events":
            return self._error(404, f"Unrecognized request URL ({method}: {path}).")
        if headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return self._error(400, "Invalid request: expected a form-encoded body")
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        for param in ("event_name", "payload[stripe_customer_id]", "payload[value]"):
            if not form.get(param):
                return self._error(400, f"Missing required param: {param}.", param, "parameter_missing")
        if len(form["event_name"]) > 100 or len(form.get("identifier", "")) > 100:
            return self._error(400, "event_name and identifier are at most 100 characters", "identifier")
        if not re.fullmatch(r"-?\d+", form["payload[value]"]):
            return self._error(400, "payload[value] must be a whole number", "payload[value]")
        ts = int(form.get("timestamp") or self.clock())
        if ts < self.clock() - STRIPE_MAX_AGE_S or ts > self.clock() + STRIPE_MAX_FUTURE_S:
            return self._error(400, "Timestamp must be within the past 35 calendar days or up to 5 minutes "
                                    "in the future.", "timestamp", "timestamp_outside_allowed_range")
        ident = form.get("identifier") or f"auto_{uuid.uuid4().hex}"
        self.identifiers_sent.append(ident)
        if ident in self.meter_events:
            return self._error(400, f"An event already exists with identifier {ident}.")
        ev = {"object": "billing.meter_event", "created": int(self.clock()), "event_name": form["event_name"],
              "identifier": ident, "livemode": False, "timestamp": ts,
              "payload": {k[len("payload["):-1]: v for k, v in form.items() if k.startswith("payload[")}}
        self.meter_events[ident] = ev
        status, hdrs, b, _ = _json(200, ev)
        return status, hdrs, b, True

    def total(self, event_name: str, by_customer: bool = True) -> dict[str, int]:
        """A ``sum`` meter: the values per customer."""
        out: dict[str, int] = {}
        for ev in self.meter_events.values():
            if ev["event_name"] == event_name:
                c = ev["payload"]["stripe_customer_id"] if by_customer else ""
                out[c] = out.get(c, 0) + int(ev["payload"]["value"])
        return out
