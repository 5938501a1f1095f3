"""Closed windows on their way into the store, surviving the store's faults.

The meter must not stop because its disk is full (``SQLITE_FULL``), another process holds the
database past the busy timeout (``SQLITE_BUSY``), or a commit fails with an I/O error
(``SQLITE_IOERR``). :class:`StoreWriter` takes the windows each round closes, in order, and
commits them; when the store refuses, it keeps them in memory (at most ``max_pending`` windows)
and tries again with exponential backoff, while the agent goes on sampling. When the store takes
writes again, everything held is committed in the order it closed, each batch in its own
transaction with the push journal cursors it carries. Nothing already committed is rewritten
(the store skips a window it already has).

The state (``ok`` or ``failing``) is logged once per change, counted for the metrics endpoint
(``meterd_store_write_errors_total``, ``meterd_store_pending_windows``), told to systemd
(``STATUS=``), and written to the agent's status file for ``meter status``.

A window the store can never take (a value SQLite refuses: an integer beyond 64 bits, text that
is not UTF-8) is not retried for ever: it is logged in full, counted as dropped, and the
windows behind it go on. Input validation keeps such values out; this is the last line.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from meterd.errors import first_line

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_WINDOWS = 20_000  # 8 GPUs and the CPU at 60 s windows: about 37 hours
BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 60.0
#: How long the agent's own commits wait for a lock held by another process, at most. Short,
#: so that a store held elsewhere delays one round, not ten; the windows wait in memory.
AGENT_BUSY_TIMEOUT_MS = 500


@dataclass
class Batch:
    rows: list[tuple[dict[str, Any], list[dict[str, Any]]]]
    push_cursors: dict[str, int] = field(default_factory=dict)
    origins: dict[str, dict[str, Any]] | None = None  # token totals the rows' deltas end at
    origins_at: float | None = None


@dataclass
class WriterStatus:
    """What :class:`StoreWriter` tells the metrics endpoint and ``meter status``."""

    state: str = "ok"  # ok | failing
    reason: str | None = None
    since: float | None = None  # wall time of the first failure of this spell
    write_errors_total: int = 0
    pending_windows: int = 0
    dropped_windows_total: int = 0


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """After a failed write: a COMMIT that failed (SQLITE_FULL, SQLITE_BUSY) can leave the
    transaction open, and every later BEGIN would fail. End it, whatever state it is in."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def sqlite_reason(e: BaseException) -> str:
    """One line: the SQLite error and what it means for the operator."""
    msg = first_line(e, limit=None)
    name = getattr(e, "sqlite_errorname", None)
    if name == "SQLITE_FULL" or "full" in msg:
        return f"the disk holding the store is full ({msg})"
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in msg:
        return f"another process holds the store locked ({msg})"
    if name and name.startswith("SQLITE_IOERR") or "I/O" in msg:
        return f"the store's disk failed a write ({msg})"
    if name == "SQLITE_CORRUPT" or "malformed" in msg:
        return f"the store is damaged ({msg}): check it with `sqlite3 FILE 'PRAGMA integrity_check'`"
    return msg


class StoreWriter:
    def __init__(self, store, *, max_pending: int = DEFAULT_MAX_PENDING_WINDOWS,
                 push_targets: Callable[[], list[str]] = list, mono: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 on_change: Callable[[WriterStatus], None] | None = None) -> None:
        self.store = store
        self.max_pending = max_pending
        self.push_targets = push_targets
        self.mono, self.wall = mono, wall
        self.on_change = on_change
        self.pending: deque[Batch] = deque()
        self.status = WriterStatus()
        self._backoff = BACKOFF_START_S
        self._next_try = float("-inf")
        self._bound_logged = False

    # -- the agent's side ---------------------------------------------------------------------

    def put(self, rows: list, push_cursors: dict[str, int] | None = None,
            origins: dict[str, dict[str, Any]] | None = None, origins_at: float | None = None) -> None:
        if not rows and not push_cursors:
            return
        self.pending.append(Batch(list(rows), dict(push_cursors or {}), origins, origins_at))
        self._count()
        while self.status.pending_windows > self.max_pending and len(self.pending) > 1:
            lost = self.pending.popleft()
            self.status.dropped_windows_total += len(lost.rows)
            if not self._bound_logged:
                self._bound_logged = True
                log.error("the store has refused writes for %d windows (store_max_pending_windows = %d): "
                          "the oldest held windows are being dropped, starting with %s; free the store's "
                          "disk or raise the bound", self.status.pending_windows, self.max_pending,
                          _describe(lost))
            self._count()

    def flush(self, force: bool = False) -> int:
        """Commit what is held, oldest first; returns how many windows were new. While the
        store fails, tries at most once per backoff period (``force``: now)."""
        if not self.pending:
            return 0
        if not force and self.mono() < self._next_try:
            return 0
        new = 0
        while self.pending:
            batch = self.pending[0]
            try:
                new += self.store.commit_windows(batch.rows, batch.push_cursors or None, self.push_targets(),
                                                 origins=batch.origins, at=batch.origins_at)
            except sqlite3.Error as e:
                rollback_quietly(self.store.conn)
                self._failed(sqlite_reason(e))
                return new
            except (OverflowError, ValueError, TypeError) as e:  # this batch can never be stored
                rollback_quietly(self.store.conn)
                self.pending.popleft()
                self.status.dropped_windows_total += len(batch.rows)
                log.error("windows the store cannot take (%s) were dropped: %s", e,
                          json.dumps([w for w, _ in batch.rows], default=str)[:2000])
                self._count()
                continue
            self.pending.popleft()
            self._count()
        self._recovered()
        return new

    @property
    def failing(self) -> bool:
        return self.status.state != "ok"

    # -- state ----------------------------------------------------------------------------------

    def _count(self) -> None:
        self.status.pending_windows = sum(len(b.rows) for b in self.pending)

    def _failed(self, reason: str) -> None:
        self.status.write_errors_total += 1
        self._next_try = self.mono() + self._backoff
        self._backoff = min(BACKOFF_CAP_S, self._backoff * 2)
        if self.status.state == "ok" or self.status.reason != reason:
            first = self.status.state == "ok"
            self.status.state, self.status.reason = "failing", reason
            if first:
                self.status.since = self.wall()
            log.error("the store refuses writes: %s; metering goes on, %d window(s) held in memory "
                      "(retrying with backoff)", reason, self.status.pending_windows)
            self._changed()

    def _recovered(self) -> None:
        self._backoff = BACKOFF_START_S
        self._next_try = float("-inf")
        self._bound_logged = False
        if self.status.state != "ok":
            log.warning("the store takes writes again (was: %s): held windows committed", self.status.reason)
            self.status.state, self.status.reason, self.status.since = "ok", None, None
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.status)

    def note_failure(self, reason: str) -> None:
        """A write other than a window's (raw samples, pruning) failed: same state machine."""
        self._failed(reason)


def _describe(batch: Batch) -> str:
    if not batch.rows:
        return "(no windows)"
    w = batch.rows[0][0]
    return f"{w.get('device')} from {w.get('start')}"
