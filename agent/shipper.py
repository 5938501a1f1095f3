"""The shipper: committed windows are the outbox; each becomes its sink's records (a
``meterd.window.v1`` event for ``meter collector``, usage events for OpenMeter, Lago events, Stripe
meter events: meterd.agent.sinks), sent in batches until the sink acknowledges every record of the
window. At least once from here; the sink deduplicates by the records' stable ids: together,
exactly once. Records a sink acknowledged while others of their window were still out are
remembered (``outbox_acks``), so a resend never carries them again.

- A batch is bounded in records and bytes (and by the sink's own limit: 100 for Lago, 1 for
  Stripe, whose requests are paced at its rate limit). Event ids were fixed when the window was
  committed.
- A sink that answers in its own way reads its answers itself (Lago's 422 ``value_already_exist``
  is a delivery; Stripe's "already exists with identifier" too); the mapping may refuse a record
  before sending it (Stripe: usage older than 35 days), which quarantines its window with why.
- 2xx: the batch is marked shipped. Network errors, 5xx, 408 and 429: retried with exponential
  backoff and full jitter, honouring Retry-After. 413: the batch is halved. Other 4xx: a batch of
  several is split so that only the events the sink refuses are quarantined, with its reason
  (`meter outbox` shows them; `meter outbox retry` sends them again after a fix); an auth or
  routing refusal (401, 403, 404, 405, 415) quarantines the batch as it is.
- HTTPS by default: plain http is refused unless the host is loopback or ``allow_insecure``.
- The bearer token comes from a file that must not be readable by group or others.

The shipper has its own SQLite connection and thread; the sampling loop never waits for it.
The HTTP transport is injectable (httpx's seam), so tests can play any sink.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable
from urllib.parse import urlsplit

import httpx

from meterd.agent.events import BATCH_CONTENT_TYPE
from meterd.agent.sinks.base import Item, Sink
from meterd.agent.sinks.meterd import MeterdSink
from meterd.agent.store import Store
from meterd.agent.tls import regular_file
from meterd.errors import ShipError
from meterd.net import is_loopback

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENTS = 500
DEFAULT_MAX_BYTES = 2 * 1024 * 1024
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
RETRYABLE = {408, 429}
BATCH_REFUSALS = {401, 403, 404, 405, 415}


def check_url(url: str, allow_insecure: bool = False, *, what: str = "ship url",
              expected: str = "https://HOST[:PORT]/api/v1/events",
              insecure_hint: str = ", or set [ship] allow_insecure = true") -> str:
    """``url`` when a bearer token may go to it: http(s) with a host, and https unless the host
    is loopback (or ``allow_insecure``). Checked before anything connects."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ShipError(f"{what} {url!r}: expected {expected}")
    if parts.scheme == "http" and not allow_insecure and not is_loopback(parts.hostname):
        raise ShipError(f"{what} {url!r}: plain http to a non-loopback host is refused (the token would "
                        f"cross the network in the clear); use https{insecure_hint}")
    return url




def read_token_file(path: str) -> str:
    """The bearer token from ``path`` (``${CREDENTIALS_DIRECTORY}`` and ``~`` expanded), which
    must be a regular file not readable or writable by group or others."""
    p, st = regular_file("token file", path, ShipError)
    if st.st_mode & 0o077:
        raise ShipError(f"token file {p} is accessible to group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                        f"run chmod 600 {p}")
    token = p.read_text().strip()
    if not token or any(c.isspace() for c in token):
        raise ShipError(f"token file {p}: expected one token on one line")
    return token


def backoff_s(attempt: int, rng: random.Random, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)]."""
    return rng.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    v = value.strip()
    if v.isdigit():
        return float(v)
    try:
        return max(0.0, parsedate_to_datetime(v).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


@dataclass
class Outcome:
    """What one shipping attempt did. ``wait_s`` > 0: back off before the next attempt."""

    sent: int = 0
    acked: int = 0
    duplicates: int = 0
    quarantined: int = 0
    wait_s: float = 0.0
    error: str | None = None
    idle: bool = False


class Shipper:
    """Ships the outbox to one sink (:mod:`meterd.agent.sinks`): each window becomes the sink's
    records; a window is shipped when the sink has acknowledged every record of it."""

    def __init__(self, store: Store, url: str, token: str, *, transport: httpx.BaseTransport | None = None,
                 sink: Sink | None = None,
                 max_events: int = DEFAULT_MAX_EVENTS, max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout_s: float = 5.0, rng: random.Random | None = None,
                 wall: Callable[[], float] = time.time, backoff_cap_s: float = BACKOFF_CAP_S,
                 verify: "ssl.SSLContext | bool" = True) -> None:
        self.store = store
        self.sink = sink or MeterdSink()
        self.url = self.sink.endpoint(url)
        self.max_events = min(max_events, self.sink.max_events)
        self.batch_limit = self.max_events
        self.max_bytes = max_bytes
        self.rng = rng or random.Random()
        self.wall = wall
        self.failures = 0
        self.backoff_cap_s = backoff_cap_s
        self.last_error: str | None = None
        self._next_post = 0.0
        # verify: True (the system's CAs) or an SSLContext from meterd.agent.tls (a private CA,
        # a client certificate for mutual TLS)
        self.client = httpx.Client(transport=transport, timeout=timeout_s, verify=verify, headers={
            "Authorization": f"Bearer {token}", "Content-Type": BATCH_CONTENT_TYPE,
            "User-Agent": "meterd-shipper"})

    def close(self) -> None:
        self.client.close()

    # -- one attempt ------------------------------------------------------------------------------

    def ship_once(self) -> Outcome:
        rows = self.store.pending_windows(self.batch_limit)
        if not rows:
            return Outcome(idle=True)
        batch, done, refused = self._fit(rows)
        out = Outcome()
        for reason, ids in refused.items():
            out.quarantined += self.store.quarantine(ids, reason)
            log.error("%d window(s) not sent to %s, quarantined (`meter outbox`): %s",
                      len(ids), self.sink.kind, reason)
        if done:
            self.store.mark_shipped(done, self.wall())
        if not batch:
            return out
        o = self._send(batch)
        o.quarantined += out.quarantined
        return o

    def _fit(self, rows: list[dict]) -> tuple[list[Item], list[int], dict[str, list[int]]]:
        """The records still to send of these windows, as many as fit the batch bounds (at least
        one); the windows with nothing left to send; the windows the mapping refuses, by reason."""
        acked = self.store.acked_keys([w["id"] for w in rows])
        batch: list[Item] = []
        done: list[int] = []
        refused: dict[str, list[int]] = {}
        size = 2
        for w in rows:
            owners = self.store.owners_of(w["id"])  # a shared GPU's split (agent/attribution.py)
            items = self.sink.items({**w, "owners": owners} if owners else w, self.store.usage_of(w["id"]))
            bad = next((it.refuse for it in items if it.refuse), None)
            if bad:
                refused.setdefault(bad, []).append(w["id"])
                continue
            have = acked.get(w["id"], set())
            todo = [it for it in items if it.key not in have]
            if not todo:
                done.append(w["id"])
                continue
            for it in todo:
                if batch and (len(batch) >= self.batch_limit or size + it.size + 1 > self.max_bytes):
                    return batch, done, refused
                batch.append(it)
                size += it.size + 1
        return batch, done, refused

    def _post(self, batch: list[Item]) -> httpx.Response:
        body, headers = self.sink.request(batch)
        if self.sink.min_interval_s:
            now = time.monotonic()
            if now < self._next_post:
                time.sleep(self._next_post - now)
            self._next_post = max(now, self._next_post) + self.sink.min_interval_s
        return self.client.post(self.url, content=body, headers=headers)

    def _ack(self, items: list[Item]) -> None:
        """Record what the sink acknowledged; windows with every record acknowledged are shipped."""
        by_window: dict[int, list[Item]] = {}
        for it in items:
            by_window.setdefault(it.window_id, []).append(it)
        before = self.store.acked_keys(list(by_window))
        partial, complete = [], []
        for wid, its in by_window.items():
            have = before.get(wid, set()) | {it.key for it in its}
            if its[0].keys <= have:
                complete.append(wid)
            else:
                partial.extend((wid, it.key) for it in its)
        self.store.record_acks(partial, complete, self.wall())

    def _quarantine(self, items: list[Item], reason: str) -> int:
        ids = sorted({it.window_id for it in items})
        n = self.store.quarantine(ids, f"{self.sink.kind}: {reason}")
        log.error("%s refused %d record(s) of %d window(s), quarantined (`meter outbox`): %s",
                  self.sink.kind, len(items), n, reason)
        return n

    def _send(self, batch: list[Item]) -> Outcome:
        try:
            r = self._post(batch)
        except httpx.HTTPError as e:
            return self._retry(f"{type(e).__name__}: {e}", None, len(batch))
        verdict = self.sink.judge(r, batch)
        if verdict is not None:
            out = Outcome(sent=len(batch), acked=len(verdict.acked), duplicates=len(verdict.acked))
            if verdict.acked:
                self._ack(verdict.acked)
            by_reason: dict[str, list[Item]] = {}
            for it, why in verdict.refused:
                by_reason.setdefault(why, []).append(it)
            for why, its in by_reason.items():
                out.quarantined += self._quarantine(its, why)
            self.failures = 0
            if len(verdict.acked) + len(verdict.refused) < len(batch):
                out.error = _reason(r)  # the rest was not taken: it goes again, in the next batch
            return out
        if r.is_success:
            self._ack(batch)
            self.failures = 0
            self.last_error = None
            self.batch_limit = min(self.max_events, self.batch_limit * 2)
            dup = _duplicates(r)
            return Outcome(sent=len(batch), acked=len(batch), duplicates=dup)
        reason = _reason(r)
        if r.status_code >= 500 or r.status_code in RETRYABLE:
            return self._retry(reason, r.headers.get("Retry-After"), len(batch))
        if r.status_code == 413 and len(batch) > 1:
            self.batch_limit = max(1, len(batch) // 2)
            log.warning("sink refused a batch of %d as too large: next batches hold %d", len(batch), self.batch_limit)
            return Outcome(sent=len(batch), error=reason)
        if r.status_code in BATCH_REFUSALS or len(batch) == 1:
            n = self._quarantine(batch, reason)
            return Outcome(sent=len(batch), quarantined=n, error=reason)
        # A 4xx about the contents of a batch: find out which events, one by one.
        out = Outcome(sent=len(batch), error=reason)
        for one in batch:
            o = self._send([one])
            out.acked += o.acked
            out.duplicates += o.duplicates
            out.quarantined += o.quarantined
            if o.wait_s:
                out.wait_s = o.wait_s
                break
        return out

    def _retry(self, reason: str, retry_after: str | None, n: int) -> Outcome:
        wait = backoff_s(self.failures, self.rng, cap=self.backoff_cap_s)
        ra = retry_after_s(retry_after, self.wall())
        if ra is not None:
            wait = min(max(wait, ra), self.backoff_cap_s * 4)
        self.failures += 1
        if reason != self.last_error:
            log.warning("shipping %d window(s) failed, retrying with backoff: %s", n, reason)
            self.last_error = reason
        return Outcome(sent=n, wait_s=wait, error=reason)

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event, poll_s: float = 2.0) -> None:
        """Ship until ``stop`` is set: drain the backlog, then look again every ``poll_s``."""
        while not stop.is_set():
            try:
                o = self.ship_once()
            except Exception as e:  # a bug or a broken store must not kill the agent silently
                log.exception("shipper: unexpected error: %s", e)
                o = Outcome(wait_s=backoff_s(self.failures, self.rng))
                self.failures += 1
            if o.wait_s:
                stop.wait(o.wait_s)
            elif o.idle:
                stop.wait(poll_s)


def _duplicates(r: httpx.Response) -> int:
    try:
        body = r.json()
        return int(body.get("duplicates", 0)) if isinstance(body, dict) else 0
    except (ValueError, TypeError):
        return 0  # OpenMeter answers 204 with no body


def _reason(r: httpx.Response) -> str:
    text = r.text.strip().replace("\n", " ")
    return f"HTTP {r.status_code}: {text[:500]}" if text else f"HTTP {r.status_code} {r.reason_phrase}"


class ShipperThread:
    """The shipper on its own thread, with its own store connection (made on that thread:
    SQLite connections stay on the thread that opened them)."""

    def __init__(self, store_path: str | os.PathLike, url: str, token: str, **kw) -> None:
        self.store_path = store_path
        self.url = url
        sink = kw.get("sink") or MeterdSink()
        self.endpoint = sink.endpoint(url)
        s = Store(store_path)
        try:
            s.set_ship_state(sink=sink.kind, url=self.endpoint)
        finally:
            s.close()
        self._token = token
        self._kw = kw
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="shipper", daemon=True)

    def _shipper(self, **overrides) -> Shipper:
        return Shipper(Store(self.store_path), self.url, self._token, **(self._kw | overrides))

    def _run(self) -> None:
        shipper = self._shipper()
        try:
            shipper.run(self.stop)
        finally:
            shipper.close()
            shipper.store.close()

    def store_counts(self) -> tuple[int, int]:
        """(pending, quarantined), read on the caller's thread through its own connection."""
        s = Store(self.store_path)
        try:
            return s.outbox_counts()
        finally:
            s.close()

    def start(self) -> "ShipperThread":
        self.thread.start()
        return self

    def close(self, flush_s: float = 3.0, timeout_s: float = 5.0) -> None:
        """Stop the loop, then try for at most ``flush_s`` to ship what is left (the windows
        closed at shutdown); whatever does not go stays in the outbox for the next start."""
        self.stop.set()
        self.thread.join(timeout_s)
        if self.thread.is_alive() or flush_s <= 0:
            return
        shipper = self._shipper(timeout_s=min(flush_s, 2.0))
        deadline = time.monotonic() + flush_s
        try:
            while time.monotonic() < deadline:
                o = shipper.ship_once()
                if o.idle or o.wait_s or o.error:
                    break
        finally:
            shipper.close()
            shipper.store.close()
