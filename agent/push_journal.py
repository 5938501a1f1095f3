"""Pushed usage made durable: the push endpoint's records go to a journal table in the agent's
store before the client is answered, and the window close consumes them in the same
transaction as the window.

Tables (schema 4):

- ``push_journal(id, received_at, model, tenant, prompt_tokens, completion_tokens)``: records
  acknowledged to a client and not yet in a committed window of every target device;
- ``push_request_ids(request_id, seq)``: the request ids accepted, so that a retry counts
  once, across restarts too (the newest ``max_request_ids`` are kept);
- ``push_cursors(device, last_id)``: per device, the last journal id whose share is in a
  committed window of that device. It moves in the transaction that commits the window.

A record's tokens are shared over the push target devices with :func:`share` (integers that
add up, rotated by the record id so no device always gets the remainder); each device takes
its share of each record exactly once: after its cursor, before the window that holds it
commits. A journal row goes once every cursor has passed it. So an acknowledged record is
billed exactly once whatever happens between the 200 and the window's commit (kill -9,
SIGTERM, a full disk): a restarted agent finds the rows past each device's cursor and takes
them again.

Changing the push target devices between restarts with rows still in the journal: a device
new to the journal starts at the newest row (it takes none of the older ones), a device no
longer targeted stops holding rows back.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Iterable

from meterd.sqlite_store import Immediate

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_IDS = 100_000
#: The endpoint's writes wait at most this long for the agent's commit to finish.
JOURNAL_BUSY_TIMEOUT_MS = 5_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS push_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the cursors compare ids
    received_at REAL NOT NULL,
    model TEXT NOT NULL,
    tenant TEXT NOT NULL DEFAULT '',
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS push_request_ids (
    request_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS push_request_ids_seq ON push_request_ids(seq);
CREATE TABLE IF NOT EXISTS push_cursors (
    device TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class JournalRow:
    id: int
    model: str
    tenant: str
    prompt_tokens: int
    completion_tokens: int


def share(n: int, k: int, i: int, row_id: int) -> int:
    """Device ``i`` of ``k``'s part of ``n`` tokens of journal row ``row_id``: the parts of the
    ``k`` devices add up to ``n``."""
    base, rest = divmod(n, k)
    return base + (1 if (i - row_id) % k < rest else 0)


class StoreJournal:
    """The push endpoint's side: append accepted records, durably. Thread-safe (its own
    connection, used under a lock, from the endpoint's worker threads)."""

    durable = True

    def __init__(self, path: str | os.PathLike, max_request_ids: int = DEFAULT_MAX_REQUEST_IDS,
                 wall=time.time) -> None:
        self.path = str(path)
        self.max_request_ids = max_request_ids
        self.wall = wall
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=JOURNAL_BUSY_TIMEOUT_MS / 1000,
                                     isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {JOURNAL_BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._since_trim = 0

    def add(self, records: Iterable) -> tuple[int, int]:
        """Journal ``records`` (:class:`meterd.probes.push.UsageRecord`) in one transaction;
        returns (accepted, duplicates). Raises :class:`sqlite3.Error` when the store cannot
        take the write: then nothing of the body was taken."""
        now = self.wall()
        with self._lock:
            try:
                return self._add(records, now)
            except sqlite3.Error:
                from meterd.agent.store_writer import rollback_quietly

                rollback_quietly(self._conn)
                raise

    def _add(self, records: Iterable, now: float) -> tuple[int, int]:
        accepted = duplicates = 0
        with Immediate(self._conn) as c:
            seq = c.execute("SELECT coalesce(max(seq), 0) FROM push_request_ids").fetchone()[0]
            for r in records:
                if r.request_id is not None:
                    seq += 1
                    if c.execute("INSERT OR IGNORE INTO push_request_ids(request_id, seq) VALUES (?, ?)",
                                 [r.request_id, seq]).rowcount == 0:
                        duplicates += 1
                        continue
                c.execute("INSERT INTO push_journal(received_at, model, tenant, prompt_tokens,"
                          " completion_tokens) VALUES (?, ?, ?, ?, ?)",
                          [now, r.model, r.tenant or "", r.prompt_tokens, r.completion_tokens])
                accepted += 1
            self._since_trim += accepted + duplicates
            if self._since_trim >= 1000:
                self._since_trim = 0
                c.execute("DELETE FROM push_request_ids WHERE seq <= ?", [seq - self.max_request_ids])
        return accepted, duplicates

    def drain(self) -> dict:
        """Nothing: the agent reads the journal from the store itself."""
        return {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# -- the agent's side (on the store's connection) -------------------------------------------


def load_cursors(conn: sqlite3.Connection, devices: list[str]) -> dict[str, int]:
    """Each device's cursor; a device with none starts at the newest row."""
    have = dict(conn.execute("SELECT device, last_id FROM push_cursors").fetchall())
    if not have:  # a journal never consumed yet: every row in it is the targets'
        return dict.fromkeys(devices, 0)
    newest = conn.execute("SELECT coalesce(max(id), 0) FROM push_journal").fetchone()[0]
    return {d: have.get(d, newest) for d in devices}


def read_after(conn: sqlite3.Connection, after_id: int, limit: int = 100_000) -> list[JournalRow]:
    return [JournalRow(*r) for r in conn.execute(
        "SELECT id, model, tenant, prompt_tokens, completion_tokens FROM push_journal"
        " WHERE id > ? ORDER BY id LIMIT ?", [after_id, limit])]


def advance(conn: sqlite3.Connection, cursors: dict[str, int], targets: list[str]) -> None:
    """Inside the window's transaction: move the cursors, drop the rows every target has."""
    for device, last_id in cursors.items():
        conn.execute("INSERT INTO push_cursors(device, last_id) VALUES (?, ?) ON CONFLICT(device)"
                     " DO UPDATE SET last_id = max(last_id, excluded.last_id)", [device, last_id])
    if targets:
        marks = ",".join("?" * len(targets))
        row = conn.execute(f"SELECT count(*), min(last_id) FROM push_cursors WHERE device IN ({marks})",
                           targets).fetchone()
        if row[0] == len(targets):
            conn.execute("DELETE FROM push_journal WHERE id <= ?", [row[1]])
