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
import operator
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from meterd.collector.validation import MAX_WINDOW_S, TIME_TOLERANCE_S, Parsed
from meterd.errors import StoreKindError, StoreUnavailable
from meterd.sqlite_store import write_probe as sqlite_write_probe
from meterd.sqlite_store import COLLECTOR, Immediate, Migration, default_path, open_db, run_script, user_version

GROUP_KEYS = ("node", "device", "model", "tenant", "hour", "day", "month")
_WINDOW_COLS = (
    "seq", "node", "device", "device_name", "start", "end", "duration_s", "energy_j",
    "energy_source", "avg_power_w", "util_pct", "prompt_tokens", "completion_tokens",
    "cost_capex_micro", "cost_energy_micro", "cost_opex_micro", "cost_micro", "cost_prompt_micro",
    "cost_completion_micro", "currency", "partial", "gap_s", "flags", "config_hash", "agent_version",
    "cached_prompt_tokens", "token_source", "token_error_bound", "token_gap_s", "backfill_s",
)
_USAGE_COLS = (
    "seq", "node", "device", "start", "currency", "model", "tenant", "attributed",
    "prompt_tokens", "completion_tokens", "cost_micro", "cost_prompt_micro",
    "cost_completion_micro", "energy_j", "seconds", "cached_prompt_tokens", "token_gap_s",
)



def database_errors() -> tuple[type[BaseException], ...]:
    """What a backend raises when its database cannot answer or take a write now (psycopg's
    only where the postgres extra is installed)."""
    from meterd.errors import StoreError

    errors: list[type[BaseException]] = [sqlite3.Error, OSError, StoreError]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:
        pass
    return tuple(errors)

@dataclass(frozen=True)
class IngestResult:
    """What a batch's ingest did: events newly stored and duplicates skipped, or, where a window
    overlaps another of its device (``overlaps``: one error each), nothing stored at all."""

    accepted: int
    duplicates: int
    overlaps: tuple[dict[str, Any], ...] = ()


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


def _m2_token_detail(conn: sqlite3.Connection) -> None:
    """Cached prompt tokens, token provenance and outages (agent schema 5's fields); events of
    older agents have none of them and read as 0 / null."""
    run_script(
        conn,
        """
        ALTER TABLE windows ADD COLUMN cached_prompt_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE windows ADD COLUMN token_source TEXT;
        ALTER TABLE windows ADD COLUMN token_error_bound INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE windows ADD COLUMN token_gap_s REAL NOT NULL DEFAULT 0;
        ALTER TABLE windows ADD COLUMN backfill_s REAL NOT NULL DEFAULT 0;
        ALTER TABLE usage ADD COLUMN cached_prompt_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE usage ADD COLUMN token_gap_s REAL NOT NULL DEFAULT 0
        """,
    )


#: Append only. Each entry moves the schema from version i to i+1.
MIGRATIONS: list[Migration] = [_m1_initial, _m2_token_detail]


@dataclass(frozen=True)
class Dialect:
    """What differs in the SQL of the two backends (the statements use ``?`` placeholders)."""

    buckets: dict[str, str]  # hour/day/month label of a window start (Unix seconds)
    int_sum: str  # an integer SUM, as an integer
    order: str  # ORDER BY one text column: binary order, NULLs first (the unattributed row)
    windows_from: str  # the windows with their event id and arrival time
    usage_order: str  # the usage rows of a window in the order the event listed them


SQLITE = Dialect(
    buckets={
        "hour": "strftime('%Y-%m-%dT%H:00:00Z', start, 'unixepoch')",
        "day": "strftime('%Y-%m-%dT00:00:00Z', start, 'unixepoch')",
        "month": "strftime('%Y-%m-01T00:00:00Z', start, 'unixepoch')",
    },
    int_sum="SUM({})",
    order="{}",
    windows_from="SELECT w.*, e.id AS event_id, e.received_at FROM windows w JOIN events e ON e.seq = w.seq",
    usage_order="rowid",
)

_TOKEN_COLS = "key_id, scope, name, secret_sha256, created_at"


class SQLStore(CollectorStore):
    """Tokens and queries in SQL both backends speak; a backend runs the statements."""

    dialect: Dialect

    @abc.abstractmethod
    def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of one statement, as dicts."""

    @abc.abstractmethod
    def _fetch_each(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> list[list[dict[str, Any]]]:
        """Rows of several statements, read from one snapshot."""

    @abc.abstractmethod
    def _change(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one write in its own transaction; the rows it changed."""

    # -- tokens -----------------------------------------------------------------------------------

    def add_token(self, record: TokenRecord) -> None:
        self._change(f"INSERT INTO tokens ({_TOKEN_COLS}) VALUES (?, ?, ?, ?, ?)",
                     (record.key_id, record.scope, record.name, record.secret_sha256, record.created_at))

    def get_token(self, key_id: str) -> TokenRecord | None:
        rows = self._fetch(f"SELECT {_TOKEN_COLS} FROM tokens WHERE key_id = ?", (key_id,))
        return TokenRecord(**rows[0]) if rows else None

    def list_tokens(self) -> list[TokenRecord]:
        return [TokenRecord(**r) for r in self._fetch(f"SELECT {_TOKEN_COLS} FROM tokens ORDER BY created_at, key_id")]

    def delete_token(self, key_id: str) -> bool:
        return self._change("DELETE FROM tokens WHERE key_id = ?", (key_id,)) > 0

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
        sql = (f"{self.dialect.windows_from} "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY w.start, w.seq LIMIT ?")
        rows = self._fetch(sql, [*args, limit])
        by_seq = {r["seq"]: r for r in rows}
        for r in rows:
            r["usage"] = []
        statements = [("SELECT seq, model, tenant, prompt_tokens, completion_tokens, cached_prompt_tokens, cost_micro, "
                       "cost_prompt_micro, cost_completion_micro, energy_j, seconds FROM usage "
                       f"WHERE seq IN ({', '.join('?' * len(chunk))}) ORDER BY seq, {self.dialect.usage_order}",
                       chunk) for chunk in _chunks(list(by_seq), 500)]
        for result in self._fetch_each(statements):
            for u in result:
                by_seq[u.pop("seq")]["usage"].append(u)
        return rows

    def usage(self, group_by: Sequence[str], q: Query) -> list[dict[str, Any]]:
        bad = [g for g in group_by if g not in GROUP_KEYS]
        if bad:
            raise ValueError(f"cannot group by {', '.join(bad)}: choose from {', '.join(GROUP_KEYS)}")
        d = self.dialect
        per_model = any(g in ("model", "tenant") for g in group_by) or q.model is not None \
            or q.tenant is not None
        keys = [f"{d.buckets.get(g, g)} AS {g}" for g in group_by]
        names = [*group_by, "currency"]
        where, args = self._where(q, "t")
        isum = d.int_sum.format
        ints = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_micro", "cost_prompt_micro",
                "cost_completion_micro")
        if per_model:
            for col in ("model", "tenant"):
                if getattr(q, col) is not None:
                    where.append(f"t.{col} = ?")
                    args.append(getattr(q, col))
            sums = ["COUNT(DISTINCT seq) AS windows", "SUM(seconds) AS seconds", "SUM(energy_j) AS energy_j",
                    *(f"{isum(c)} AS {c}" for c in ints[:3]),
                    "NULL AS cost_capex_micro", "NULL AS cost_energy_micro", "NULL AS cost_opex_micro",
                    *(f"{isum(c)} AS {c}" for c in ints[3:])]
            table = "usage"
        else:
            sums = ["COUNT(*) AS windows", "SUM(duration_s) AS seconds", "SUM(energy_j) AS energy_j",
                    *(f"{isum(c)} AS {c}" for c in ints[:3]),
                    *(f"{isum(c)} AS {c}" for c in ("cost_capex_micro", "cost_energy_micro", "cost_opex_micro")),
                    *(f"{isum(c)} AS {c}" for c in ints[3:])]
            table = "windows"
        # No tokens from a source that answered: idle; no tokens because it could not be read:
        # unavailable, never idle.
        idle = (isum("CASE WHEN prompt_tokens + completion_tokens = 0 AND token_gap_s = 0 THEN cost_micro ELSE 0 END")
                + " AS idle_cost_micro, "
                + isum("CASE WHEN prompt_tokens + completion_tokens = 0 AND token_gap_s > 0 THEN cost_micro ELSE 0 END")
                + " AS unavailable_cost_micro")
        group = ", ".join(names)
        sql = (f"SELECT * FROM (SELECT {', '.join([*keys, 'currency', *sums, idle])} FROM {table} t "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} "
               f"GROUP BY {group}) g ORDER BY {', '.join(d.order.format('g.' + n) for n in names)}")
        return self._fetch(sql, args)

    def counts(self) -> dict[str, int]:
        [rows] = self._fetch_each([(f"SELECT {', '.join(f'(SELECT count(*) FROM {t}) AS {t}' for t in _TABLES)}", ())])
        return dict(rows[0])

    def ping(self) -> None:
        self._fetch("SELECT 1 AS one")

    def overlapping(self, events: Sequence[Parsed]) -> list[dict[str, Any]]:
        """:func:`overlap_errors` against the stored windows, outside any ingest: what a batch
        would be refused for now (ingest checks again, atomically, in its own transaction)."""
        return overlap_errors(events, lambda *span: self._fetch(STORED_WINDOWS_SQL, span))


#: The stored windows of one (node, device) starting in (lo, hi): ``?`` parameters node, device,
#: lo, hi.
STORED_WINDOWS_SQL = ('SELECT w.start AS start, w."end" AS stop, e.id AS id FROM windows w JOIN events e ON e.seq = w.seq'
                      " WHERE w.node = ? AND w.device = ? AND w.start > ? AND w.start < ?")


def overlap_errors(events: Sequence[Parsed],
                   stored: Callable[[str, str, float, float], Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Events whose window overlaps another window of the same (node, device) with a different
    id, stored (``stored(node, device, lo, hi)``: rows of :data:`STORED_WINDOWS_SQL`) or in the
    same batch: one error each (a resend of the same id is a duplicate, not an overlap). One
    query per device in the batch, over its time span."""
    groups: dict[tuple[str, str], list[tuple[float, float, str, int | None]]] = {}
    for i, p in enumerate(events):
        w = p.window
        groups.setdefault((w["node"], w["device"]), []).append((w["start"], w["end"], p.id, i))
    errors: list[dict[str, Any]] = []
    for (node, device), items in groups.items():
        lo = min(t[0] for t in items) - MAX_WINDOW_S
        hi = max(t[1] for t in items)
        intervals = sorted([(r["start"], r["stop"], r["id"], None) for r in stored(node, device, lo, hi)] + items,
                           key=lambda t: (t[0], t[1]))
        reach: tuple[float, float, str, int | None] | None = None  # the interval reaching furthest
        for iv in intervals:
            if reach is not None and iv[0] < reach[1] - TIME_TOLERANCE_S and iv[2] != reach[2]:
                index, other = (iv[3], reach) if iv[3] is not None else (reach[3], iv)
                if index is not None:
                    errors.append({"index": index, "id": events[index].id, "field": "data.start",
                                   "problem": f"the window overlaps window {other[2]} of device {device!r} "
                                              f"({other[1] - other[0]:g} s from {other[0]:.3f})"})
            if reach is None or iv[1] > reach[1]:
                reach = iv
    seen: set[int] = set()
    return sorted((e for e in errors if not (e["index"] in seen or seen.add(e["index"]))),
                  key=lambda e: e["index"])


_TABLES = ("events", "windows", "usage", "tokens")


def default_db_path() -> Path:
    """``$STATE_DIRECTORY/collector.db`` under systemd, else ``~/.local/share/meterd/collector.db``."""
    return default_path(COLLECTOR.filename)


class SQLiteStore(SQLStore):
    """One connection shared by the server's worker threads behind a lock: SQLite serializes
    writers anyway, and a billing endpoint's reads are few."""

    dialect = SQLITE

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

    def write_probe(self) -> None:
        """``GET /readyz``: :func:`meterd.sqlite_store.write_probe` on this database."""
        with self._lock:
            sqlite_write_probe(self.conn)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- ingest -----------------------------------------------------------------------------------

    def ingest(self, events: Sequence[Parsed]) -> IngestResult:
        with self._lock:
            try:
                return self._ingest(events)
            except sqlite3.Error:
                if self.conn.in_transaction:  # a COMMIT that failed (disk full) can leave it open
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    def _ingest(self, events: Sequence[Parsed]) -> IngestResult:
        now = self._clock()
        first = first_copies(events)
        with self._write():
            # Inside the write lock (BEGIN IMMEDIATE): no other writer, in this process or another,
            # can store an overlapping window between the check and the insert.
            overlaps = overlap_errors(events, lambda *span: _dicts(self.conn.execute(STORED_WINDOWS_SQL, span)))
            if overlaps:
                return IngestResult(accepted=0, duplicates=0, overlaps=tuple(overlaps))
            # One multi-row INSERT per table (in chunks under SQLite's limit on parameters).
            # The events insert skips what the UNIQUE (source, id) constraint already holds and
            # returns the rows it did insert: only those get windows and usage rows.
            seqs: dict[tuple[str, str], int] = {}
            for sql, params in _multirow("events", _EVENT_COLS, event_rows(first.values(), now),
                                         self._max_rows(len(_EVENT_COLS)),
                                         " ON CONFLICT (source, id) DO NOTHING RETURNING seq, source, id"):
                for seq, source, id_ in self.conn.execute(sql, params):
                    seqs[(source, id_)] = seq
            new = [(seqs[k], p) for k, p in first.items() if k in seqs]
            windows, usage = child_rows(new)
            for table, cols, rows in (("windows", _WINDOW_COLS, windows), ("usage", _USAGE_COLS, usage)):
                for sql, params in _multirow(table, cols, rows, self._max_rows(len(cols))):
                    self.conn.execute(sql, params)
        return IngestResult(accepted=len(new), duplicates=len(events) - len(new))

    def _max_rows(self, ncols: int) -> int:
        return max(1, min(1000, self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // ncols))

    # -- the SQL runner (SQLStore) -----------------------------------------------------------

    def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return _dicts(self.conn.execute(sql, args))

    def _fetch_each(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> list[list[dict[str, Any]]]:
        with self._lock:
            return [_dicts(self.conn.execute(sql, args)) for sql, args in statements]

    def _change(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._lock, self._write():
            return self.conn.execute(sql, args).rowcount


def _dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


_EVENT_COLS = ("source", "id", "received_at", "raw")


def first_copies(events: Iterable[Parsed]) -> dict[tuple[str, str], Parsed]:
    """The first copy of each (source, id) in a batch, in batch order."""
    first: dict[tuple[str, str], Parsed] = {}
    for p in events:
        first.setdefault((p.source, p.id), p)
    return first


def event_rows(parsed: Iterable[Parsed], received_at: float) -> list[tuple]:
    """``events`` rows (``_EVENT_COLS``): each event's JSON as it arrived."""
    return [(p.source, p.id, received_at, p.raw) for p in parsed]


def child_rows(numbered: Iterable[tuple[int, Parsed]]) -> tuple[list[tuple], list[tuple]]:
    """(windows, usage) rows (``_WINDOW_COLS``, ``_USAGE_COLS``) of events stored under ``seq``."""
    windows, usage = [], []
    window_values, usage_values = _WINDOW_VALUES, _USAGE_VALUES
    for seq, p in numbered:
        w = p.window
        windows.append((seq, *window_values(w)))
        head = (seq, w["node"], w["device"], w["start"], w["currency"])
        for u in p.usage:
            usage.append((*head, *usage_values(u)))
    return windows, usage


_WINDOW_VALUES = operator.itemgetter(*_WINDOW_COLS[1:])
_USAGE_VALUES = operator.itemgetter(*_USAGE_COLS[5:])


def _multirow(table: str, cols: Sequence[str], rows: list[tuple], per_statement: int,
              tail: str = "") -> Iterable[tuple[str, list]]:
    """``INSERT INTO table (cols) VALUES (...), (...), ...`` statements of at most
    ``per_statement`` rows each, with their flattened parameters."""
    one = f"({', '.join('?' * len(cols))})"
    head = f"INSERT INTO {table} ({', '.join(_quoted(c) for c in cols)}) VALUES "
    for chunk in _chunks(rows, per_statement):
        yield head + ", ".join([one] * len(chunk)) + tail, [v for r in chunk for v in r]


def _quoted(col: str) -> str:
    return f'"{col}"' if col == "end" else col


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


# -- choosing the backend -------------------------------------------------------------------------

POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_url(text: str) -> bool:
    """``scheme://...``: a database URL, never a file name."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return re.sub(r"^([^:/]+://[^:@/]*):[^@/]*@", r"\1:***@", url)


def open_store(db: str | os.PathLike | None = None, **kw: Any) -> CollectorStore:
    """The store ``--db`` names: a ``postgresql://`` URL (PostgreSQL, the ``meterd[postgres]``
    extra), or a file path (SQLite, the embedded default; None is the default path). Any other
    URL scheme is refused: nothing is created for it, no file, no directory."""
    if db is not None and is_url(str(db)):
        url = str(db)
        scheme = url.split("://", 1)[0].lower()
        if scheme not in POSTGRES_SCHEMES:
            raise StoreKindError(f"unsupported database URL {redact(url)!r}: give a file path (SQLite) "
                                 f"or a postgresql://USER@HOST/DATABASE URL")
        try:
            from meterd.collector.pgstore import PostgresStore  # noqa: PLC0415 (the optional extra)
        except ImportError as e:
            raise StoreUnavailable(f"{e}") from e
        return PostgresStore(url, **kw)
    return SQLiteStore(db, **kw)
