"""The collector's web report (collector/web.py) on a real server on 127.0.0.1, on both
backends: who may read it (no token: the login form; a node token: refused; a read token by
header or by the session cookie of the login form), the cookie's flags and signature, the
filters, and that the page shows the figures `meter report --collector` computes."""

from __future__ import annotations

import re

import httpx
import pytest

from meterd.collector.auth import SESSION_COOKIE, create_token, session_principal
from meterd.reports.page import html_page, report_of
from meterd.reports.query import Filters, read_collector
from meterd.units import iso
from tests.collector.conftest import T0, minutes, post_batch


@pytest.fixture
def web(live, token_n1):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        events = (minutes(30, models=(("llama-3.1-8b", "acme"), ("qwen-7b", "globex")))
                  + minutes(20, device="GPU-1", start=T0 + 3600, prompt=0, completion=0))
        assert post_batch(c, events, token_n1).status_code == 200
        yield c


def _login(c: httpx.Client, token: str, next_q: str = ""):
    return c.post("/login", data={"token": token, "next": next_q}, follow_redirects=False)


def test_without_a_token_the_report_is_the_login_form_and_nothing_else(web):
    r = web.get("/report?by=model")
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login">' in r.text and 'name="token"' in r.text
    assert "llama" not in r.text and "<table" not in r.text
    assert 'name="next" value="by=model"' in r.text  # back to the same filters after signing in
    assert "script" not in r.text.lower()


def test_a_node_token_cannot_read_the_report_nor_sign_in(web, token_n1):
    r = web.get("/report", headers={"authorization": f"Bearer {token_n1}"})
    assert r.status_code == 403 and "<table" not in r.text
    r = _login(web, token_n1)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert "may not read reports" in r.text
    assert _login(web, "mtk_000000000000_" + "A" * 43).status_code == 401
    assert _login(web, "").status_code == 401


def test_a_read_token_by_header_shows_the_figures_of_meter_report_over_the_api(web, store, read_token):
    f = Filters(since=T0, until=T0 + 86400)
    r = web.get("/report", params={"since": iso(f.since), "until": iso(f.until), "by": "model"},
                headers={"authorization": f"Bearer {read_token}"})
    assert r.status_code == 200, r.text
    # The same page built from the query API over HTTP, as `meter report --collector` reads it.
    read = lambda by, flt: read_collector(str(web.base_url), read_token, by, flt)  # noqa: E731
    rep, cells = report_of(read, ["model"], f)
    expected = html_page(read, ["model"], f, rep, cells, since=iso(f.since), until=iso(f.until),
                         source="this collector")
    tables = lambda t: re.findall(r"<table>.*?</table>", t, re.S)  # noqa: E731
    kpis = lambda t: re.findall(r'<div class="kpi">.*?</div>', t)  # noqa: E731
    assert tables(r.text) == tables(expected) and kpis(r.text) == kpis(expected)
    assert re.findall(r"<svg.*?</svg>", r.text, re.S) == re.findall(r"<svg.*?</svg>", expected, re.S)
    assert {row["model"] for row in rep.rows} >= {"llama-3.1-8b", "qwen-7b"}
    assert "<script" not in r.text and "http://" not in r.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert '<form class="filters" method="get" action="/report">' in r.text


def test_the_login_cookie_is_secure_httponly_strict_signed_and_ends_with_logout_or_revoke(web, store, read_token):
    r = _login(web, read_token, "by=tenant&evil=https://elsewhere.example")
    assert r.status_code == 303 and r.headers["location"] == "/report?by=tenant"
    cookie = r.headers["set-cookie"]
    flags = {p.strip().split("=")[0].lower() for p in cookie.split(";")}
    assert {"secure", "httponly", "path", "max-age"} <= flags and "samesite=strict" in cookie.lower()
    value = cookie.split(";")[0].split("=", 1)[1]
    assert read_token.split("_")[-1] not in value  # the secret is not in the cookie
    jar = {"cookie": f"{SESSION_COOKIE}={value}"}
    page = web.get("/report?by=tenant", headers=jar)
    assert page.status_code == 200 and "acme" in page.text and "globex" in page.text
    # forged, expired: the login form again
    forged = value[:-1] + ("0" if value[-1] != "0" else "1")
    assert web.get("/report", headers={"cookie": f"{SESSION_COOKIE}={forged}"}).status_code == 401
    assert session_principal(store, value) is not None
    assert session_principal(store, value, now=int(value.split(".")[1]) + 1) is None
    out = web.post("/logout", headers=jar, follow_redirects=False)
    assert out.status_code == 303 and re.search(rf'{SESSION_COOKIE}=""?;.*Max-Age=0', out.headers["set-cookie"])
    # revoking the token ends its sessions at once
    assert store.delete_token(read_token.split("_")[1])
    assert web.get("/report", headers=jar).status_code == 401


def test_a_node_tokens_record_cannot_sign_a_session(web, store, token_n1):
    from meterd.collector.auth import _session_mac

    key_id = token_n1.split("_")[1]
    payload = f"{key_id}.{int(T0 * 2)}"
    value = f"{payload}.{_session_mac(store.get_token(key_id), payload)}"
    assert session_principal(store, value) is None
    assert web.get("/report", headers={"cookie": f"{SESSION_COOKIE}={value}"}).status_code == 401


def test_bad_filters_are_one_line_and_the_form_stays(web, read_token):
    h = {"authorization": f"Bearer {read_token}"}
    for q, msg in (({"since": "yesterday"}, "since: &#x27;yesterday&#x27; is not a time"),
                   ({"by": "colour"}, "by colour: choose from"),
                   ({"since": "2026-11-29", "until": "2026-11-28"}, "since must be before until")):
        r = web.get("/report", params=q, headers=h)
        assert r.status_code == 400 and msg in r.text and 'action="/report"' in r.text, (q, r.text)
    r = web.get("/report", params={"model": "nope"}, headers=h)
    assert r.status_code == 200 and "no windows" in r.text and "for model &#x27;nope&#x27;" in r.text
    assert web.post("/login", content=b"token=x", headers={"content-type": "text/plain"}).status_code == 415
