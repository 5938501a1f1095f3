"""The collector's web report: ``GET /report`` renders the HTML report (reports/html.py) live,
from the same usage query and aggregation as ``meter report --collector URL`` (the parameters of
reports/query.py's :func:`collector_params`, answered by the store as ``GET /api/v1/usage``
answers them, turned into cells by :func:`cells_of_groups`), so the page shows the same figures.

Filters are query parameters (since, until, by, node, device, model, tenant) and a plain
``<form method=get>`` changes them: nothing on the page needs a script or fetches anything.
A reader is a read token: an ``Authorization: Bearer`` header, or the login form (``POST
/login``), which sets a ``Secure; HttpOnly; SameSite=Strict`` session cookie signed with what
the collector stores of the token (collector/auth.py); ``POST /logout`` clears it. Without
either, ``/report`` answers 401 with the login form; a node token is refused (403).
"""

from __future__ import annotations

import html
import logging
import time
import urllib.parse
from typing import Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from meterd.collector.auth import SESSION_COOKIE, SESSION_S, authenticate, open_session, session_principal
from meterd.collector.export import parse_bound, ratios
from meterd.collector.store import CollectorStore, Query, database_errors
from meterd.errors import QueryError, first_line
from meterd.reports.aggregate import DEFAULT_BY, Cells, ReportError, parse_by
from meterd.reports.query import Filters, cells_of_groups, collector_params
from meterd.units import iso

FIELDS = ("since", "until", "by", "node", "device", "model", "tenant")
MAX_LOGIN_BODY = 4096
#: What a page may load: nothing from anywhere (styles inline), no script at all.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'"
_HEADERS = {"Content-Security-Policy": _CSP, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}
_PAGE_CSS = ("body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222} .error{color:#b00020;font-weight:bold}"
             " input{font:inherit;padding:2px 4px}")


log = logging.getLogger(__name__)

def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _page(title: str, body: str, status: int, extra: dict[str, str] | None = None) -> HTMLResponse:
    text = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_PAGE_CSS}</style></head><body>{body}</body></html>\n")
    return HTMLResponse(text, status_code=status, headers={**_HEADERS, **(extra or {})})


def _login_page(status: int, message: str = "", next_q: str = "") -> HTMLResponse:
    err = f'<p class="error" role="alert">{_e(message)}</p>' if message else ""
    body = (f"<h1>meter report: sign in</h1>{err}"
            '<form method="post" action="/login">'
            '<label>Read token <input type="password" name="token" autocomplete="off" required size="60"></label> '
            f'<input type="hidden" name="next" value="{_e(next_q)}">'
            '<button type="submit">Sign in</button></form>'
            '<p>A read token comes from <code>meter collector token create --read NAME</code>.</p>')
    return _page("meter report: sign in", body, status,
                 {"WWW-Authenticate": "Bearer"} if status == 401 else None)


def _form(values: dict[str, str], who: str) -> str:
    inputs = "".join(
        f'<label>{name}<input name="{name}" value="{_e(values.get(name, ""))}"'
        + (' placeholder="2026-11-01 or 7d"' if name in ("since", "until") else "")
        + (f' placeholder="{",".join(DEFAULT_BY)}"' if name == "by" else "") + "></label>"
        for name in FIELDS)
    return (f'<form class="filters" method="get" action="/report">{inputs}'
            '<button type="submit">Show</button></form>'
            f'<form method="post" action="/logout" class="filters"><span>signed in as {_e(who)}</span>'
            '<button type="submit">Sign out</button></form>')


def _filters(values: dict[str, str], now: float) -> tuple[list[str], Filters]:
    """The report's keys and filters from the form's fields, as ``meter report`` reads its
    options. Raises ValueError (one line) for a bad one."""
    from meterd.agent.timeparse import TimeParseError, parse_when

    bounds: dict[str, float | None] = {}
    for name in ("since", "until"):
        try:
            bounds[name] = parse_when(values[name], now) if values.get(name) else None
        except TimeParseError as e:
            raise ValueError(f"{name}: {e}") from None
    if bounds["since"] is not None and bounds["until"] is not None and bounds["since"] >= bounds["until"]:
        raise ValueError("since must be before until")
    try:
        keys = parse_by([values["by"]] if values.get("by") else [])
    except ReportError as e:
        raise ValueError(str(e).replace("--by", "by")) from None
    f = Filters(**bounds, **{k: values.get(k) or None for k in ("node", "device", "model", "tenant")})
    return keys, f


def _store_reader(store: CollectorStore):
    """(by, filters) -> cells: the query ``meter report --collector`` sends, answered by the
    store as ``GET /api/v1/usage`` answers it."""

    def read(by: Sequence[str], f: Filters) -> Cells:
        p = collector_params(by, f)
        q = Query(node=p.get("node"), device=p.get("device"), model=p.get("model"), tenant=p.get("tenant"),
                  since=parse_bound(p["since"]) if "since" in p else None,
                  until=parse_bound(p["until"]) if "until" in p else None)
        groups = [ratios(r) for r in store.usage(p["group_by"].split(","), q)]
        return cells_of_groups(groups, by, f)

    return read


def _next_of(text: str) -> str:
    """A query string to go back to after login: only ours (no scheme, host or path)."""
    q = urllib.parse.parse_qs(text.lstrip("?"), keep_blank_values=False)
    kept = {k: v[0] for k, v in q.items() if k in FIELDS and v}
    return urllib.parse.urlencode(kept)


def routes(store: CollectorStore) -> list[Route]:
    db_errors = database_errors()

    async def reader_of(request: Request):
        """The principal of the request (header first, then the cookie), or None."""
        header = request.headers.get("authorization")
        if header:
            return await run_in_threadpool(authenticate, store, header)
        return await run_in_threadpool(session_principal, store, request.cookies.get(SESSION_COOKIE))

    async def get_report(request: Request) -> Response:
        who = await reader_of(request)
        if who is None:
            return _login_page(401, "", _next_of(request.url.query))
        if who.scope != "read":
            return _page("meter report", f'<p class="error">a {_e(who.scope)} token may not read reports: '
                         "use a read token</p>", 403)
        values = {k: request.query_params.get(k, "").strip() for k in FIELDS}
        controls = _form(values, who.name)
        try:
            keys, f = _filters(values, time.time())
        except ValueError as e:
            return _page("meter report", "<h1>meter report</h1>" + controls
                         + f'<p class="error" role="alert">{_e(e)}</p>', 400)

        def build() -> str:
            from meterd.reports.page import html_page, report_of

            read = _store_reader(store)
            rep, cells = report_of(read, keys, f)
            return html_page(read, keys, f, rep, cells, title="meter report", controls=controls,
                             since=iso(f.since) if f.since is not None else None,
                             until=iso(f.until) if f.until is not None else None, source="this collector")

        try:
            text = await run_in_threadpool(build)
        except QueryError as e:  # no windows for these filters: the form stays, to change them
            return _page("meter report", "<h1>meter report</h1>" + controls
                         + f'<p class="error" role="alert">{_e(e)}</p>', 200)
        except ReportError as e:
            return _page("meter report", "<h1>meter report</h1>" + controls
                         + f'<p class="error" role="alert">{_e(e)}</p>', 400)
        except db_errors as e:  # the figures cannot be read now: say so, in one line, and keep the form
            why = first_line(e)
            log.error("collector database cannot answer the report: %s", why)
            return _page("meter report", "<h1>meter report</h1>" + controls
                         + f'<p class="error" role="alert">the collector\'s database cannot answer now, '
                         f"retry later: {_e(why)}</p>", 503, {"Retry-After": "5"})
        return HTMLResponse(text, headers=_HEADERS)

    async def login(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return _login_page(415, "the login form posts application/x-www-form-urlencoded")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return _login_page(413, "the login form is too large")
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        next_q = _next_of((form.get("next") or [""])[0])
        who, value = await run_in_threadpool(open_session, store, token)
        if who is None:
            status = 401 if value == "unknown token" else 403
            return _login_page(status, f"sign-in refused: {value}", next_q)
        r = RedirectResponse("/report" + (f"?{next_q}" if next_q else ""), status_code=303)
        r.set_cookie(SESSION_COOKIE, value, max_age=SESSION_S, path="/", secure=True, httponly=True,
                     samesite="strict")
        r.headers["Cache-Control"] = "no-store"
        return r

    async def logout(request: Request) -> Response:
        r = RedirectResponse("/report", status_code=303)
        r.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return r

    return [Route("/report", get_report, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]
