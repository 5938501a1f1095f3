"""The collector's PostgreSQL backend: any number of `meter collector serve` replicas on one
database, deduplicating exactly.

PostgreSQL is the authority and the replicas hold no state: every request reads what it needs
(a revoked token is refused by every replica at its next request), and every batch is one
transaction whose events insert with ``INSERT ... ON CONFLICT DO NOTHING RETURNING``. The unique
index decides, between concurrent writers too: a second replica inserting the same event waits
for the first one's transaction and then skips it, so the counts each replica answers (accepted,
duplicates) are exact and a 200 still means every event of the batch is held. The events of a
batch insert in (source, id) order, so two replicas sending overlapping batches take the index
entries in the same order and cannot deadlock. Windows of one device never overlap: a batch
takes a transaction advisory lock per (node, device) of its own (:func:`device_lock`, in key
order) before it checks the stored windows, and holds them to its commit, so no other replica can
store an overlapping window between the check and the insert.

Tables live in the ``meterd`` schema, partitioned by month of the window start (a partition per
month, made the first time a batch needs it, under an advisory lock; months outside 2000-2099 go
to a default partition). The unique key of ``events`` is (source, id, key_ms): PostgreSQL wants
the partition key in every unique key, and key_ms, the millisecond the id was derived from, is
fixed by the id, so the key is as strict as (source, id).

Migrations are versioned (``meterd.schema_version``) and run in one transaction under an advisory
lock by the first replica that starts; one that starts at the same time waits, then finds them
done. A batch's events COPY into a per-session temporary table, then move into ``events`` with one
INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING; windows and usage rows COPY straight in. Durability: the store makes sure ``synchronous_commit`` is not ``off`` for its sessions,
so an acknowledged batch is on the server's disk (docs/collector-api.md).
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError("the PostgreSQL store needs psycopg: pip install 'meterd[postgres]'") from e

from meterd.collector.store import (_USAGE_COLS, _WINDOW_COLS, STORED_WINDOWS_SQL, Dialect, IngestResult,
                                    SQLStore, child_rows, first_copies, overlap_errors, redact)
from meterd.collector.validation import Parsed
from meterd.errors import StoreUnavailable, StoreVersionError

SCHEMA = "meterd"
MIGRATE_LOCK = 0x6D65_7465_7264_0001  # pg_advisory_xact_lock keys ("meterd" + 1, + 2)
PARTITION_LOCK = 0x6D65_7465_7264_0002


def device_lock(node: str, device: str) -> int:
    """The transaction advisory lock key of one (node, device): a batch holds its devices' keys
    from the overlap check to its commit, so two replicas cannot both store overlapping windows
    of one device (each checked before the other committed). 64 bits of BLAKE2b: the same on
    every replica, and a collision only serializes two devices' batches."""
    digest = hashlib.blake2b(f"meterd window\0{node}\0{device}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
FIRST_YEAR, LAST_YEAR = 2000, 2099  # months with a partition of their own

POSTGRES = Dialect(
    buckets={
        "hour": """to_char(to_timestamp(start) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":00:00Z"')""",
        "day": """to_char(to_timestamp(start) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T00:00:00Z"')""",
        "month": """to_char(to_timestamp(start) AT TIME ZONE 'UTC', 'YYYY-MM"-01T00:00:00Z"')""",
    },
    int_sum="SUM({})::bigint",
    order='{} COLLATE "C" NULLS FIRST',
    windows_from="SELECT w.* FROM windows w",  # event_id and received_at are windows' columns here
    usage_order="ord",
)

_WINDOW_TYPES = {
    "seq": "bigint NOT NULL", "node": "text NOT NULL", "device": "text NOT NULL", "device_name": "text",
    "start": "double precision NOT NULL", "end": "double precision NOT NULL",
    "duration_s": "double precision NOT NULL", "energy_j": "double precision", "energy_source": "text",
    "avg_power_w": "double precision", "util_pct": "double precision",
    "prompt_tokens": "bigint NOT NULL", "completion_tokens": "bigint NOT NULL",
    "cost_capex_micro": "bigint NOT NULL", "cost_energy_micro": "bigint NOT NULL",
    "cost_opex_micro": "bigint NOT NULL", "cost_micro": "bigint NOT NULL",
    "cost_prompt_micro": "bigint NOT NULL", "cost_completion_micro": "bigint NOT NULL",
    "currency": "text NOT NULL", "partial": "integer NOT NULL", "gap_s": "double precision NOT NULL",
    "flags": "text NOT NULL", "config_hash": "text", "agent_version": "text",
    "cached_prompt_tokens": "bigint NOT NULL DEFAULT 0", "token_source": "text",
    "token_error_bound": "bigint NOT NULL DEFAULT 0", "token_gap_s": "double precision NOT NULL DEFAULT 0",
    "backfill_s": "double precision NOT NULL DEFAULT 0",
    "event_id": "text NOT NULL", "received_at": "double precision NOT NULL",
}
_USAGE_TYPES = {
    "seq": "bigint NOT NULL", "node": "text NOT NULL", "device": "text NOT NULL",
    "start": "double precision NOT NULL", "currency": "text NOT NULL", "model": "text", "tenant": "text",
    "attributed": "integer NOT NULL", "prompt_tokens": "bigint NOT NULL",
    "completion_tokens": "bigint NOT NULL", "cost_micro": "bigint NOT NULL",
    "cost_prompt_micro": "bigint NOT NULL", "cost_completion_micro": "bigint NOT NULL",
    "energy_j": "double precision", "seconds": "double precision NOT NULL",
    "cached_prompt_tokens": "bigint NOT NULL DEFAULT 0", "token_gap_s": "double precision NOT NULL DEFAULT 0",
    "ord": "integer NOT NULL",
}
assert tuple(_WINDOW_TYPES)[:-2] == _WINDOW_COLS and tuple(_USAGE_TYPES)[:-1] == _USAGE_COLS
PG_WINDOW_COLS = tuple(_WINDOW_TYPES)
PG_USAGE_COLS = tuple(_USAGE_TYPES)


def _columns(types: dict[str, str]) -> str:
    return ", ".join(f'"{c}" {t}' for c, t in types.items())


#: Append only: each entry moves the schema from version i to i + 1, in the migration's transaction.
MIGRATIONS: list[list[str]] = [[
    "CREATE SEQUENCE events_seq",
    "CREATE TABLE events (seq bigint NOT NULL DEFAULT nextval('events_seq'), source text NOT NULL, "
    "id text NOT NULL, key_ms bigint NOT NULL, received_at double precision NOT NULL, raw text NOT NULL, "
    "UNIQUE (source, id, key_ms)) PARTITION BY RANGE (key_ms)",
    "CREATE INDEX events_by_seq ON events (seq)",
    "CREATE TABLE events_default PARTITION OF events DEFAULT",
    f"CREATE TABLE windows ({_columns(_WINDOW_TYPES)}) PARTITION BY RANGE (start)",
    "CREATE INDEX windows_by_seq ON windows (seq)",
    "CREATE INDEX windows_by_start ON windows (start, seq)",
    "CREATE INDEX windows_by_node_device_start ON windows (node, device, start)",
    "CREATE TABLE windows_default PARTITION OF windows DEFAULT",
    f"CREATE TABLE usage ({_columns(_USAGE_TYPES)}) PARTITION BY RANGE (start)",
    "CREATE INDEX usage_by_seq ON usage (seq)",
    "CREATE INDEX usage_by_start ON usage (start)",
    "CREATE TABLE usage_default PARTITION OF usage DEFAULT",
    "CREATE TABLE tokens (key_id text PRIMARY KEY, scope text NOT NULL CHECK (scope IN ('node', 'read')), "
    "name text NOT NULL, secret_sha256 text NOT NULL, created_at double precision NOT NULL)",
]]

# A batch's events COPY into a session's temporary table (emptied at each commit), then move with
# one INSERT ... SELECT: COPY is the fast way in, and the INSERT is where the unique key decides.
_INCOMING = ("CREATE TEMPORARY TABLE IF NOT EXISTS incoming (n integer NOT NULL, source text NOT NULL, "
             "id text NOT NULL, key_ms bigint NOT NULL, received_at double precision NOT NULL, "
             "raw text NOT NULL) ON COMMIT DELETE ROWS")
_COPY_INCOMING = "COPY incoming (n, source, id, key_ms, received_at, raw) FROM STDIN"
_INSERT_EVENTS = (
    "INSERT INTO events (source, id, key_ms, received_at, raw) "
    "SELECT source, id, key_ms, received_at, raw FROM incoming ORDER BY n "
    "ON CONFLICT (source, id, key_ms) DO NOTHING RETURNING seq, source, id"
)
_COPY_WINDOWS = f"COPY windows ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in PG_WINDOW_COLS)}) FROM STDIN"
_COPY_USAGE = f"COPY usage ({', '.join(PG_USAGE_COLS)}) FROM STDIN"
_RETRIED = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


def _month(ts: float) -> tuple[int, int]:
    t = time.gmtime(ts)
    return t.tm_year, t.tm_mon


def _month_start(year: int, month: int) -> int:
    return calendar.timegm((year, month, 1, 0, 0, 0))


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


@contextlib.contextmanager
def _holding(conn: psycopg.Connection, key: int) -> Iterator[None]:
    """A session advisory lock, taken before the transaction that needs it begins: a transaction
    begun while waiting would keep catalog caches from before the other holder's commit (and,
    say, not see the schema it made: CREATE SCHEMA IF NOT EXISTS would then fail)."""
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


class PostgresStore(SQLStore):
    """A pool of connections (the server's worker threads share them), each in the ``meterd``
    schema with synchronous_commit on."""

    dialect = POSTGRES

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, max_connections: int = 8,
                 connect_timeout_s: float = 10.0, readonly: bool = False) -> None:
        """``readonly=True`` (the commands that only read) never creates or migrates the schema."""
        self.url = url
        self.readonly = readonly
        self.path = redact(url)  # what `serve` prints as its database
        self._clock = clock
        self._months: set[tuple[int, int]] = set()  # partitions known to exist
        self.pool = ConnectionPool(url, min_size=1, max_size=max_connections, open=False,
                                   kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s))},
                                   configure=self._configure, timeout=connect_timeout_s)
        try:
            try:  # one plain connection first: its error is the one line a user needs
                psycopg.connect(url, connect_timeout=max(1, int(connect_timeout_s))).close()
                self.pool.open(wait=True, timeout=connect_timeout_s)
            except (PoolTimeout, psycopg.Error) as e:
                why = " ".join(str(e).split())
                raise StoreUnavailable(f"cannot connect to PostgreSQL at {self.path}: {why}") from e
            if readonly:
                self._check_version()
            else:
                self._migrate()
                this = _month(clock())
                self._make_months([this, _next_month(*this)])  # made before traffic needs them
        except BaseException:
            self.pool.close()
            raise

    @staticmethod
    def _configure(conn: psycopg.Connection) -> None:
        conn.execute(f"SET search_path = {SCHEMA}")
        conn.execute(_INCOMING)
        if conn.execute("SHOW synchronous_commit").fetchone()[0] == "off":
            conn.execute("SET synchronous_commit = on")  # an acknowledged batch is on disk

    # -- plumbing ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self.pool.connection() as conn:
            if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
                return 0
            return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]

    def _check_version(self) -> None:
        version = self.schema_version()
        if version == 0:
            raise StoreUnavailable(f"no collector database at {self.path} (`meter collector serve` makes it)")
        if version != len(MIGRATIONS):
            raise StoreVersionError(f"{self.path} has collector schema version {version}; this collector "
                                    f"knows {len(MIGRATIONS)}: " + ("upgrade meterd" if version > len(MIGRATIONS)
                                                                    else "run `meter collector serve` to migrate it"))

    def _migrate(self) -> None:
        with self.pool.connection() as conn, _holding(conn, MIGRATE_LOCK), conn.transaction():
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                         "applied_at timestamptz NOT NULL DEFAULT now())")
            version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreVersionError(f"{self.path} has collector schema version {version}, newer than "
                                        f"this collector knows ({len(MIGRATIONS)}): upgrade meterd")
            for i in range(version, len(MIGRATIONS)):
                for stmt in MIGRATIONS[i]:
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (i + 1,))

    def close(self) -> None:
        self.pool.close()

    # -- the SQL runner (SQLStore) ----------------------------------------------------------------

    def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(sql.replace("?", "%s"), args).fetchall()

    def _fetch_each(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> list[list[dict[str, Any]]]:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return [cur.execute(sql.replace("?", "%s"), args).fetchall() for sql, args in statements]

    def _change(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self.pool.connection() as conn:
            return conn.execute(sql.replace("?", "%s"), args).rowcount

    # -- ingest -----------------------------------------------------------------------------------

    def ingest(self, events: Sequence[Parsed]) -> IngestResult:
        first = first_copies(events)
        ordered = sorted(first.items(), key=lambda kv: kv[0])  # one lock order for every replica
        self._ensure_partitions(first.values())
        for attempt in range(5):
            try:
                accepted, overlaps = self._ingest_once(events, ordered, self._clock())
            except _RETRIED:  # not expected with the ordered inserts; retried whole if it happens
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
                continue
            if overlaps:
                return IngestResult(accepted=0, duplicates=0, overlaps=tuple(overlaps))
            return IngestResult(accepted=accepted, duplicates=len(events) - accepted)
        raise AssertionError("unreachable")

    def _ingest_once(self, events: Sequence[Parsed], ordered: list[tuple[tuple[str, str], Parsed]],
                     now: float) -> tuple[int, list[dict[str, Any]]]:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            # The batch's devices, locked in one order on every replica (no deadlock), then the
            # overlap check: it sees every window another replica committed before we got a lock.
            for key in sorted({device_lock(p.window["node"], p.window["device"]) for p in events}):
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            with conn.cursor(row_factory=dict_row) as read:
                overlaps = overlap_errors(
                    events, lambda *span: read.execute(STORED_WINDOWS_SQL.replace("?", "%s"), span).fetchall())
            if overlaps:
                return 0, overlaps  # nothing written: the transaction commits empty
            with cur.copy(_COPY_INCOMING) as copy:
                for n, (_, p) in enumerate(ordered):
                    copy.write_row((n, p.source, p.id, p.key_ms, now, p.raw))
            cur.execute(_INSERT_EVENTS)
            seqs = {(source, id_): seq for seq, source, id_ in cur.fetchall()}
            new = [(seqs[k], p) for k, p in ordered if k in seqs]
            windows, usage = child_rows(new)
            if windows:
                with cur.copy(_COPY_WINDOWS) as copy:
                    for (_, p), w in zip(new, windows):
                        copy.write_row((*w, p.id, now))
                with cur.copy(_COPY_USAGE) as copy:
                    seq, n = None, 0
                    for u in usage:
                        n = n + 1 if u[0] == seq else 0
                        seq = u[0]
                        copy.write_row((*u, n))
        return len(new), []

    def _ensure_partitions(self, parsed: Iterable[Parsed]) -> None:
        """The monthly partitions the batch's windows go to (events by the id's millisecond,
        windows and usage by their start), made once, by one replica at a time."""
        months = set()
        for p in parsed:
            months.add(_month(p.key_ms / 1000))
            months.add(_month(p.window["start"]))
        need = sorted(m for m in months - self._months if FIRST_YEAR <= m[0] <= LAST_YEAR)
        if need:
            self._make_months(need)

    def _make_months(self, need: list[tuple[int, int]]) -> None:
        """Making a partition locks its parent table exclusively, and queries lock the parents in
        different orders (ingest: events, then windows; a join of windows with events: windows
        first), so the lock waits could close a cycle. The maker gives up any lock it waited
        200 ms for, before PostgreSQL's deadlock check (1 s) would abort someone else's query,
        and tries again."""
        for attempt in range(1, 51):
            try:
                with self.pool.connection() as conn, _holding(conn, PARTITION_LOCK), conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '200ms'")
                    for year, month in need:
                        self._make_month(conn, year, month)
                break
            except pg_errors.LockNotAvailable:
                if attempt == 50:
                    raise
                time.sleep(min(0.5, 0.01 * attempt))
        self._months.update(need)

    @staticmethod
    def _make_month(conn: psycopg.Connection, year: int, month: int) -> None:
        suffix = f"y{year:04d}m{month:02d}"
        if conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.events_{suffix}",)).fetchone()[0] is not None:
            return
        lo, hi = _month_start(year, month), _month_start(*_next_month(year, month))
        conn.execute(f"CREATE TABLE events_{suffix} PARTITION OF events "
                     f"FOR VALUES FROM ({lo * 1000}) TO ({hi * 1000})")
        for table in ("windows", "usage"):
            conn.execute(f"CREATE TABLE {table}_{suffix} PARTITION OF {table} FOR VALUES FROM ({lo}) TO ({hi})")
