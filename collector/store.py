"""The collector's storage: a small interface (``CollectorStore``) and its SQLite backend.

SQLite on the base agent/store.py shares (meterd/sqlite_store.py): WAL with ``synchronous=FULL``
(a billed event that was acknowledged must survive a power cut), a busy timeout, ``BEGIN
IMMEDIATE`` for every write, migrations by ``PRAGMA user_version``, read-only opening (``meter
collector export``), one-line store errors.

Tables:

- ``events``: the raw CloudEvent JSON, as received, with ``UNIQUE (source, id)`` kept forever:
  the deduplication is the database's constraint, not a cache that forgets after a day.
- ``windows``: one flattened row per event (node, device, start, end, energy, tokens, costs).
- ``usage``: the window's rows per model and tenant, plus one unattributed row (``model`` NULL)
  for what no model took (idle cost), each with its share of energy and seconds; they partition
  the window exactly (validation.allocate), so grouping by model never hides idle cost.
- ``tokens``: bearer tokens, hashed (collector/auth.py).
"""

from __future__ import annotations

import abc
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from meterd.collector.validation import Parsed
from meterd.sqlite_store import COLLECTOR, Immediate, Migration, default_path, open_db, run_script, user_version

GROUP_KEYS = ("node", "device", "model", "tenant", "hour", "day", "month")
_BUCKETS = {
    "hour": "strftime('%Y-%m-%dT%H:00:00Z', start, 'unixepoch')",
    "day": "strftime('%Y-%m-%dT00:00:00Z', start, 'unixepoch')",
    "month": "strftime('%Y-%m-01T00:00:00Z', start, 'unixepoch')",
}
_WINDOW_COLS = (
    "seq", "node", "device", "device_name", "start", "end", "duration_s", "energy_j",
    "energy_source", "avg_power_w", "util_pct", "prompt_tokens", "completion_tokens",
    "cost_capex_micro", "cost_energy_micro", "cost_opex_micro", "cost_micro", "cost_prompt_micro",
    "cost_completion_micro", "currency", "partial", "gap_s", "flags", "config_hash", "agent_version",
)
_USAGE_COLS = (
    "seq", "node", "device", "start", "currency", "model", "tenant", "attributed",
    "prompt_tokens", "completion_tokens", "cost_micro", "cost_prompt_micro",
    "cost_completion_micro", "energy_j", "seconds",
)


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class TokenRecord:
    key_id: str
    scope: str  # "node" (may send its own events, read its own data) or "read" (reads everything)
    name: str  # the node's name for a node token; a label for a read token
    secret_sha256: str
    created_at: float


@dataclass(frozen=True)
class Query:
    """Filters shared by the query API and the export. Times are Unix seconds; a window belongs
    to ``[since, until)`` by its start."""

    node: str | None = None
    device: str | None = None
    model: str | None = None
    tenant: str | None = None
    since: float | None = None
    until: float | None = None


class CollectorStore(abc.ABC):
    """What the collector needs from storage. Another backend (PostgreSQL, ...) implements this."""

    @abc.abstractmethod
    def ingest(self, events: Sequence[Parsed]) -> IngestResult:
        """Store a batch in one transaction; events already held (same source and id, in an
        earlier batch or earlier in this one) count as duplicates and are not stored again."""

    @abc.abstractmethod
    def add_token(self, record: TokenRecord) -> None: ...

    @abc.abstractmethod
    def get_token(self, key_id: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    def list_tokens(self) -> list[TokenRecord]: ...

    @abc.abstractmethod
    def delete_token(self, key_id: str) -> bool:
        """Revoke a token; False if there was none with that key id."""

    @abc.abstractmethod
    def windows(self, q: Query, limit: int, after: int | None = None) -> list[dict[str, Any]]:
        """Windows in (start, seq) order, each with its ``usage`` rows; ``after`` is the ``seq`` of
        the last window of the previous page."""

    @abc.abstractmethod
    def usage(self, group_by: Sequence[str], q: Query) -> list[dict[str, Any]]:
        """Integer and energy sums per group (and per currency: never summed across currencies)."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Rows per table, for health checks and tests."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the storage cannot answer (``GET /healthz``)."""

    @abc.abstractmethod
    def close(self) -> None: ...


def _m1_initial(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            id TEXT NOT NULL,
            received_at REAL NOT NULL,
            raw TEXT NOT NULL,
            UNIQUE (source, id)
        );
        CREATE TABLE windows (
            seq INTEGER PRIMARY KEY REFERENCES events(seq),
            node TEXT NOT NULL,
            device TEXT NOT NULL,
            device_name TEXT,
            start REAL NOT NULL,
            end REAL NOT NULL,
            duration_s REAL NOT NULL,
            energy_j REAL,
            energy_source TEXT,
            avg_power_w REAL,
            util_pct REAL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_capex_micro INTEGER NOT NULL,
            cost_energy_micro INTEGER NOT NULL,
            cost_opex_micro INTEGER NOT NULL,
            cost_micro INTEGER NOT NULL,
            cost_prompt_micro INTEGER NOT NULL,
            cost_completion_micro INTEGER NOT NULL,
            currency TEXT NOT NULL,
            partial INTEGER NOT NULL,
            gap_s REAL NOT NULL,
            flags TEXT NOT NULL,
            config_hash TEXT,
            agent_version TEXT
        );
        CREATE INDEX windows_start ON windows(start);
        CREATE INDEX windows_node_device_start ON windows(node, device, start);
        CREATE TABLE usage (
            seq INTEGER NOT NULL REFERENCES windows(seq),
            node TEXT NOT NULL,           -- node, device, start, currency: copied from the window
            device TEXT NOT NULL,         -- so that grouping by model needs no join
            start REAL NOT NULL,
            currency TEXT NOT NULL,
            model TEXT,                   -- NULL: the unattributed rest (idle cost)
            tenant TEXT,
            attributed INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_micro INTEGER NOT NULL,
            cost_prompt_micro INTEGER NOT NULL,
            cost_completion_micro INTEGER NOT NULL,
            energy_j REAL,                -- the row's share of the window's energy
            seconds REAL NOT NULL         -- and of its duration
        );
        CREATE INDEX usage_seq ON usage(seq);
        CREATE INDEX usage_start ON usage(start);
        CREATE TABLE tokens (
            key_id TEXT PRIMARY KEY,
            scope TEXT NOT NULL CHECK (scope IN ('node', 'read')),
            name TEXT NOT NULL,
            secret_sha256 TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        """
    )


#: Append only. Each entry moves the schema from version i to i+1.
MIGRATIONS: list[Migration] = [_m1_initial]


def default_db_path() -> Path:
    """``$STATE_DIRECTORY/collector.db`` under systemd, else ``~/.local/share/meterd/collector.db``."""
    return default_path(COLLECTOR.filename)


class SQLiteStore(CollectorStore):
    """One connection shared by the server's worker threads behind a lock: SQLite serializes
    writers anyway, and a billing endpoint's reads are few."""

    def __init__(self, path: str | os.PathLike | None = None, *, clock: Callable[[], float] = time.time,
                 readonly: bool = False, create: bool = True) -> None:
        """``readonly=True`` never creates, migrates or writes the database (see
        meterd/sqlite_store.py); raises a :class:`meterd.errors.StoreError` naming the file."""
        self.path = Path(path) if path is not None else default_db_path()
        self.readonly = readonly
        self._clock = clock
        self._lock = threading.Lock()
        self.conn = open_db(self.path, COLLECTOR, MIGRATIONS, readonly=readonly, create=create,
                            check_same_thread=False)

    # -- plumbing ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        return user_version(self.conn)

    def _write(self) -> Immediate:
        return Immediate(self.conn)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- ingest -----------------------------------------------------------------------------------

    def ingest(self, events: Sequence[Parsed]) -> IngestResult:
        now = self._clock()
        with self._lock, self._write():
            # Which events are new: first copies inside the batch, minus what the store holds.
            # Read under the write lock (BEGIN IMMEDIATE), so nothing can slip in between; the
            # UNIQUE constraint stays the guarantee (plain INSERT: a miss here would fail the
            # batch, never store an event twice). This keeps the writes to three executemany.
            first: dict[tuple[str, str], Parsed] = {}
            for p in events:
                first.setdefault((p.source, p.id), p)
            held: set[tuple[str, str]] = set()
            by_source: dict[str, list[str]] = {}
            for source, id_ in first:
                by_source.setdefault(source, []).append(id_)
            for source, ids in by_source.items():
                for chunk in _chunks(ids, 500):
                    held.update((source, r[0]) for r in self.conn.execute(
                        f"SELECT id FROM events WHERE source = ? AND id IN ({', '.join('?' * len(chunk))})",
                        [source, *chunk]))
            new = [p for key, p in first.items() if key not in held]
            seq = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            insert_rows(self.conn, *table_rows(new, seq, now))
        return IngestResult(accepted=len(new), duplicates=len(events) - len(new))

    # -- tokens -----------------------------------------------------------------------------------

    def add_token(self, record: TokenRecord) -> None:
        with self._lock, self._write():
            self.conn.execute(
                "INSERT INTO tokens (key_id, scope, name, secret_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                (record.key_id, record.scope, record.name, record.secret_sha256, record.created_at))

    def get_token(self, key_id: str) -> TokenRecord | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT key_id, scope, name, secret_sha256, created_at FROM tokens WHERE key_id = ?",
                (key_id,)).fetchone()
        return TokenRecord(*row) if row else None

    def list_tokens(self) -> list[TokenRecord]:
        with self._lock:
            rows = self.conn.execute("SELECT key_id, scope, name, secret_sha256, created_at FROM tokens "
                                     "ORDER BY created_at, key_id").fetchall()
        return [TokenRecord(*r) for r in rows]

    def delete_token(self, key_id: str) -> bool:
        with self._lock, self._write():
            return self.conn.execute("DELETE FROM tokens WHERE key_id = ?", (key_id,)).rowcount > 0

    # -- queries ----------------------------------------------------------------------------------

    @staticmethod
    def _where(q: Query, table: str) -> tuple[list[str], list[Any]]:
        where, args = [], []
        for col in ("node", "device"):
            if getattr(q, col) is not None:
                where.append(f"{table}.{col} = ?")
                args.append(getattr(q, col))
        if q.since is not None:
            where.append(f"{table}.start >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append(f"{table}.start < ?")
            args.append(q.until)
        return where, args

    def windows(self, q: Query, limit: int, after: int | None = None) -> list[dict[str, Any]]:
        where, args = self._where(q, "w")
        for col in ("model", "tenant"):
            if getattr(q, col) is not None:
                where.append(f"EXISTS (SELECT 1 FROM usage u WHERE u.seq = w.seq AND u.{col} = ?)")
                args.append(getattr(q, col))
        if after is not None:
            where.append("(w.start, w.seq) > (SELECT start, seq FROM windows WHERE seq = ?)")
            args.append(after)
        sql = (f"SELECT w.*, e.id AS event_id, e.received_at FROM windows w "
               f"JOIN events e ON e.seq = w.seq "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY w.start, w.seq LIMIT ?")
        with self._lock:
            rows = _dicts(self.conn.execute(sql, [*args, limit]))
            by_seq = {r["seq"]: r for r in rows}
            for r in rows:
                r["usage"] = []
            for chunk in _chunks(list(by_seq), 500):
                for u in _dicts(self.conn.execute(
                        "SELECT seq, model, tenant, prompt_tokens, completion_tokens, cost_micro, "
                        "cost_prompt_micro, cost_completion_micro, energy_j, seconds FROM usage "
                        f"WHERE seq IN ({', '.join('?' * len(chunk))}) ORDER BY seq, rowid", chunk)):
                    by_seq[u.pop("seq")]["usage"].append(u)
        return rows

    def usage(self, group_by: Sequence[str], q: Query) -> list[dict[str, Any]]:
        bad = [g for g in group_by if g not in GROUP_KEYS]
        if bad:
            raise ValueError(f"cannot group by {', '.join(bad)}: choose from {', '.join(GROUP_KEYS)}")
        per_model = any(g in ("model", "tenant") for g in group_by) or q.model is not None \
            or q.tenant is not None
        keys = [f"{_BUCKETS.get(g, g)} AS {g}" for g in group_by]
        names = [*group_by, "currency"]
        where, args = self._where(q, "t")
        if per_model:
            for col in ("model", "tenant"):
                if getattr(q, col) is not None:
                    where.append(f"t.{col} = ?")
                    args.append(getattr(q, col))
            sums = ("COUNT(DISTINCT seq) AS windows, SUM(seconds) AS seconds, "
                    "SUM(energy_j) AS energy_j, SUM(prompt_tokens) AS prompt_tokens, "
                    "SUM(completion_tokens) AS completion_tokens, NULL AS cost_capex_micro, "
                    "NULL AS cost_energy_micro, NULL AS cost_opex_micro, SUM(cost_micro) AS cost_micro, "
                    "SUM(cost_prompt_micro) AS cost_prompt_micro, "
                    "SUM(cost_completion_micro) AS cost_completion_micro")
            table = "usage"
        else:
            sums = ("COUNT(*) AS windows, SUM(duration_s) AS seconds, SUM(energy_j) AS energy_j, "
                    "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
                    "SUM(cost_capex_micro) AS cost_capex_micro, SUM(cost_energy_micro) AS cost_energy_micro, "
                    "SUM(cost_opex_micro) AS cost_opex_micro, SUM(cost_micro) AS cost_micro, "
                    "SUM(cost_prompt_micro) AS cost_prompt_micro, "
                    "SUM(cost_completion_micro) AS cost_completion_micro")
            table = "windows"
        idle = ("SUM(CASE WHEN prompt_tokens + completion_tokens = 0 THEN cost_micro ELSE 0 END) "
                "AS idle_cost_micro")
        group = ", ".join(names)
        sql = (f"SELECT {', '.join([*keys, 'currency', sums, idle])} FROM {table} t "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} "
               f"GROUP BY {group} ORDER BY {group}")
        with self._lock:
            return _dicts(self.conn.execute(sql, args))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {t: self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("events", "windows", "usage", "tokens")}

    def ping(self) -> None:
        with self._lock:
            self.conn.execute("SELECT 1").fetchone()


def _dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def table_rows(parsed: Sequence[Parsed], last_seq: int, received_at: float) -> tuple[list, list, list]:
    """(events, windows, usage) rows for new events, numbered after ``last_seq``."""
    ev_rows, windows, usage = [], [], []
    seq = last_seq
    for p in parsed:
        seq += 1
        ev_rows.append((seq, p.source, p.id, received_at, p.raw))
        w = {**p.window, "seq": seq}
        windows.append(tuple(w[c] for c in _WINDOW_COLS))
        for u in p.usage:
            row = {**u, "seq": seq, "node": w["node"], "device": w["device"],
                   "start": w["start"], "currency": w["currency"]}
            usage.append(tuple(row[c] for c in _USAGE_COLS))
    return ev_rows, windows, usage


def insert_rows(conn: sqlite3.Connection, ev_rows: list, windows: list, usage: list) -> None:
    """The rows of :func:`table_rows`, in the caller's transaction."""
    conn.executemany("INSERT INTO events (seq, source, id, received_at, raw) VALUES (?, ?, ?, ?, ?)", ev_rows)
    conn.executemany(f"INSERT INTO windows ({', '.join(_WINDOW_COLS)}) "
                     f"VALUES ({', '.join('?' * len(_WINDOW_COLS))})", windows)
    conn.executemany(f"INSERT INTO usage ({', '.join(_USAGE_COLS)}) "
                     f"VALUES ({', '.join('?' * len(_USAGE_COLS))})", usage)


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
