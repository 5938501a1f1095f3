"""The node's ledger: SQLite through sqlite-utils, on the shared base (meterd/sqlite_store.py:
WAL with ``synchronous=FULL``, a busy timeout, migrations by ``PRAGMA user_version``, read-only
opening for the commands that only read, one-line store errors).

Tables: ``samples`` (raw device readings, pruned after N days), ``windows`` (billed minutes, kept
for good; also the outbox), ``window_usage`` (per model and tenant inside a window),
``rollups`` (hourly and daily sums maintained as windows close; schema 2 adds the idle windows'
seconds, schema 5 cached prompt tokens, token provenance and outages), ``bench_results`` and
``token_origins`` (schema 5: the token totals each window's deltas were taken up to).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

from meterd.sqlite_store import AGENT, Immediate, Migration, default_path, open_db, run_script, user_version
from meterd.units import DAY, HOUR

#: The rollups' periods and their lengths in seconds.
PERIODS = {"hour": HOUR, "day": DAY}


def default_db_path() -> Path:
    """``$STATE_DIRECTORY/meterd.db`` under systemd, else ``~/.local/share/meterd/meterd.db``."""
    return default_path(AGENT.filename)


def _m1_initial(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            at REAL NOT NULL,
            state TEXT NOT NULL,
            power_w REAL, power_source TEXT,
            energy_j REAL, energy_source TEXT,
            util_pct REAL,
            mem_used_bytes INTEGER
        );
        CREATE INDEX samples_at ON samples(at);

        CREATE TABLE windows (
            id INTEGER PRIMARY KEY,
            node TEXT NOT NULL,
            device TEXT NOT NULL,
            device_name TEXT,
            start REAL NOT NULL,
            end REAL NOT NULL,
            energy_j REAL,
            energy_source TEXT,
            avg_power_w REAL,
            util_pct REAL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_capex_micro INTEGER NOT NULL,
            cost_energy_micro INTEGER NOT NULL,
            cost_opex_micro INTEGER NOT NULL,
            cost_micro INTEGER NOT NULL,
            cost_prompt_micro INTEGER NOT NULL DEFAULT 0,
            cost_completion_micro INTEGER NOT NULL DEFAULT 0,
            currency TEXT NOT NULL,
            partial INTEGER NOT NULL DEFAULT 0,
            gap_s REAL NOT NULL DEFAULT 0,
            flags TEXT NOT NULL DEFAULT '[]',
            config_hash TEXT,
            agent_version TEXT,
            event_id TEXT NOT NULL,
            shipped_at REAL,
            quarantine_reason TEXT,
            UNIQUE (node, device, start)
        );
        CREATE INDEX windows_start ON windows(start);
        CREATE INDEX windows_unshipped ON windows(shipped_at) WHERE shipped_at IS NULL;

        CREATE TABLE window_usage (
            window_id INTEGER NOT NULL REFERENCES windows(id),
            model TEXT NOT NULL,
            tenant TEXT NOT NULL DEFAULT '',
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_micro INTEGER NOT NULL,
            cost_prompt_micro INTEGER NOT NULL,
            cost_completion_micro INTEGER NOT NULL,
            cost_capex_micro INTEGER NOT NULL,
            cost_energy_micro INTEGER NOT NULL,
            cost_opex_micro INTEGER NOT NULL,
            energy_j REAL,                 -- the window's energy, shared by cost
            PRIMARY KEY (window_id, model, tenant)
        );

        CREATE TABLE rollups (
            period TEXT NOT NULL,          -- 'hour' or 'day'
            bucket REAL NOT NULL,          -- Unix seconds of the period's start (UTC)
            node TEXT NOT NULL,
            device TEXT NOT NULL,
            model TEXT NOT NULL,           -- '' for the device's whole window (idle included)
            tenant TEXT NOT NULL,
            windows INTEGER NOT NULL,
            seconds REAL NOT NULL,
            energy_j REAL NOT NULL,
            util_pct_s REAL NOT NULL,      -- utilization x seconds, so means are exact ratios
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_capex_micro INTEGER NOT NULL,
            cost_energy_micro INTEGER NOT NULL,
            cost_opex_micro INTEGER NOT NULL,
            cost_micro INTEGER NOT NULL,
            cost_prompt_micro INTEGER NOT NULL,
            cost_completion_micro INTEGER NOT NULL,
            idle_cost_micro INTEGER NOT NULL,
            PRIMARY KEY (period, bucket, node, device, model, tenant)
        );

        CREATE TABLE bench_results (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            at REAL NOT NULL,
            node TEXT NOT NULL,
            device TEXT NOT NULL,
            device_name TEXT,
            kernel TEXT NOT NULL,
            dtype TEXT NOT NULL,
            value REAL NOT NULL,
            unit TEXT NOT NULL,
            pct_of_peak REAL,
            watts REAL,
            energy_j REAL,
            energy_source TEXT,
            spread REAL,
            versions TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX bench_results_run ON bench_results(run_id);
        """
    )


def _m2_idle_seconds(conn: sqlite3.Connection) -> None:
    """The time and utilization x time of the windows that served no tokens, on each device's
    whole rollup row (model '' and tenant ''), so that a report's (idle) row shows them. Rollups
    whose windows are all still stored are filled in from those windows; one whose windows were
    partly dropped (enforce_budget) keeps 0, as its idle time is no longer known."""
    run_script(
        conn,
        """
        ALTER TABLE rollups ADD COLUMN idle_seconds REAL NOT NULL DEFAULT 0;
        ALTER TABLE rollups ADD COLUMN idle_util_pct_s REAL NOT NULL DEFAULT 0
        """,
    )
    idle = "prompt_tokens + completion_tokens = 0"
    for period, size in PERIODS.items():
        # One pass over the windows per period (UPDATE ... FROM, SQLite 3.33+), not a subquery
        # per rollup row: a year of minute windows is millions of rows.
        conn.execute(
            f"""
            UPDATE rollups SET idle_seconds = w.seconds, idle_util_pct_s = w.util_s
            FROM (SELECT node, device, (CAST(start AS INTEGER) / {size}) * {size} AS bucket,
                         count(*) AS n,
                         sum(CASE WHEN {idle} THEN end - start ELSE 0 END) AS seconds,
                         sum(CASE WHEN {idle} THEN coalesce(util_pct, 0) * (end - start) ELSE 0 END)
                             AS util_s
                  FROM windows GROUP BY node, device, bucket) AS w
            WHERE rollups.period = ? AND rollups.model = '' AND rollups.tenant = ''
              AND rollups.node = w.node AND rollups.device = w.device AND rollups.bucket = w.bucket
              AND rollups.windows = w.n
            """,
            [period],
        )


def _m3_outbox_acks(conn: sqlite3.Connection) -> None:
    """Billing sinks take several records per window (a usage event per model and tenant): the
    ones a sink acknowledged while others of the window were not yet (``outbox_acks``, emptied
    when the window is shipped), and which sink the agent ships to (``ship_state``)."""
    run_script(
        conn,
        """
        CREATE TABLE IF NOT EXISTS outbox_acks (
            window_id INTEGER NOT NULL REFERENCES windows(id),
            key TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (window_id, key)
        );
        CREATE TABLE IF NOT EXISTS ship_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
    )


def _m4_push_journal(conn: sqlite3.Connection) -> None:
    """The push endpoint's journal, request ids and per-device cursors (agent/push_journal.py)."""
    from meterd.agent.push_journal import SCHEMA

    run_script(conn, SCHEMA)


def _m5_token_detail(conn: sqlite3.Connection) -> None:
    """Tokens in full: cached prompt tokens (a subset of prompt tokens) on windows, usage rows and
    rollups; where a window's tokens come from (``token_source``: counter, push, histogram,
    rounded; ``token_error_bound`` for rounded counts); the time its token sources could not be
    read (``token_gap_s``) and the downtime a backfill covers (``backfill_s``); rollups keep the
    unreadable time and the cost of the windows it left without tokens apart from idle; and
    ``token_origins``, the last totals of each (source, model), committed with the window that
    consumed them so a restarted agent bills what was served while it was down. Columns already
    there are left alone, so the step may run over a store that has some of them."""
    columns = {
        "windows": ("cached_prompt_tokens INTEGER NOT NULL DEFAULT 0", "token_source TEXT",
                    "token_error_bound INTEGER NOT NULL DEFAULT 0", "token_gap_s REAL NOT NULL DEFAULT 0",
                    "backfill_s REAL NOT NULL DEFAULT 0"),
        "window_usage": ("cached_prompt_tokens INTEGER NOT NULL DEFAULT 0", "token_source TEXT"),
        "rollups": ("cached_prompt_tokens INTEGER NOT NULL DEFAULT 0", "token_gap_s REAL NOT NULL DEFAULT 0",
                    "unavailable_seconds REAL NOT NULL DEFAULT 0",
                    "unavailable_cost_micro INTEGER NOT NULL DEFAULT 0",
                    "rounded_tokens INTEGER NOT NULL DEFAULT 0"),
    }
    for table, cols in columns.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for col in cols:
            if col.split()[0] not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {col}")
    run_script(
        conn,
        """
        CREATE TABLE IF NOT EXISTS token_origins (
            source TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER,
            prefill_s REAL,
            decode_s REAL,
            provenance TEXT NOT NULL,
            error_bound INTEGER NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (source, model)
        )
        """,
    )


def _m6_window_owners(conn: sqlite3.Connection) -> None:
    """Shared GPUs (agent/attribution.py): a window's energy and cost split by who used the GPU
    (``window_owners``: a process owner, a MIG instance, or ``idle``; provenance ``apportioned``
    or ``apportioned (slices)``), and the owner a usage row's tokens came from."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(window_usage)")}
    if "owner" not in have:
        conn.execute("ALTER TABLE window_usage ADD COLUMN owner TEXT")
    run_script(
        conn,
        """
        CREATE TABLE IF NOT EXISTS window_owners (
            window_id INTEGER NOT NULL REFERENCES windows(id),
            owner TEXT NOT NULL,
            share REAL NOT NULL,
            energy_j REAL,
            cost_capex_micro INTEGER NOT NULL,
            cost_energy_micro INTEGER NOT NULL,
            cost_opex_micro INTEGER NOT NULL,
            cost_micro INTEGER NOT NULL,
            provenance TEXT NOT NULL,
            PRIMARY KEY (window_id, owner)
        )
        """,
    )


#: Append only. Each entry moves the schema from version i to i+1.
MIGRATIONS: list[Migration] = [_m1_initial, _m2_idle_seconds, _m3_outbox_acks, _m4_push_journal, _m5_token_detail,
                               _m6_window_owners]


def open_store(path: str | os.PathLike | None = None, *, readonly: bool = False,
               create: bool = True) -> "Store":
    """The agent's store at ``path`` (default: :func:`default_db_path`).

    ``readonly=True`` for commands that only read (``meter windows``, ``report``, ``outbox``):
    it never creates, migrates or writes the store (a missing one is a StoreUnavailable) and
    works on a read-only mount or another user's 0644 store. ``create=False``: writable, but
    the store must exist. Raises a :class:`meterd.errors.StoreError` naming the file."""
    return Store(path, readonly=readonly, create=create)


class Store:
    """The node's SQLite ledger. One instance per process; not shared across threads."""

    def __init__(self, path: str | os.PathLike | None = None, *, readonly: bool = False,
                 create: bool = True) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.readonly = readonly
        self.db = sqlite_utils.Database(open_db(self.path, AGENT, MIGRATIONS, readonly=readonly, create=create))

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def schema_version(self) -> int:
        return user_version(self.conn)

    def transaction(self):
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error), for read-then-write."""
        return Immediate(self.conn)

    def close(self) -> None:
        self.conn.close()

    # -- samples --------------------------------------------------------------------------------

    def insert_samples(self, rows: list[dict[str, Any]]) -> None:
        """Raw readings of one sampling round, in one transaction."""
        if not rows:
            return
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO samples(device, at, state, power_w, power_source, energy_j, energy_source,"
                " util_pct, mem_used_bytes) VALUES (:device, :at, :state, :power_w, :power_source,"
                " :energy_j, :energy_source, :util_pct, :mem_used_bytes)", rows)

    def prune_samples(self, before: float) -> int:
        with self.transaction():
            return self.conn.execute("DELETE FROM samples WHERE at < ?", [before]).rowcount

    def downsample_samples(self, since: float | None, before: float, every_s: float = 60.0,
                           chunk_s: float = 3600.0) -> int:
        """Raw samples in [since, before) (since None: from the oldest) thinned to the first
        one per device per ``every_s``: the windows and rollups hold the billed figures, the
        samples that age are context. Idempotent (a thinned range keeps its survivors); one
        transaction per ``chunk_s``, so a first pass over days of samples never holds the
        store for long. Returns how many were deleted."""
        if since is None:
            row = self.conn.execute("SELECT min(at) FROM samples").fetchone()
            if row[0] is None:
                return 0
            since = row[0]
        deleted = 0
        lo = since
        while lo < before:
            hi = min(before, lo + chunk_s)
            with self.transaction() as c:
                deleted += c.execute(
                    "DELETE FROM samples WHERE at >= ? AND at < ? AND id NOT IN ("
                    " SELECT min(id) FROM samples WHERE at >= ? AND at < ?"
                    " GROUP BY device, CAST(at / ? AS INTEGER))", [lo, hi, lo, hi, every_s]).rowcount
            lo = hi
        return deleted

    # -- windows --------------------------------------------------------------------------------

    def commit_windows(self, windows: list[tuple[dict[str, Any], list[dict[str, Any]]]],
                       push_cursors: dict[str, int] | None = None, push_targets: list[str] | None = None,
                       origins: dict[str, dict[str, Any]] | None = None, at: float | None = None) -> int:
        """Commit closed windows with their usage rows and roll them up, atomically; with
        ``push_cursors``, the push journal rows these windows hold are consumed in the same
        transaction (agent/push_journal.py).

        ``origins``: {source: {model: Counts}}, the token totals the windows' deltas were taken
        up to, replacing those stored, in the same transaction (``at``: when they were read).
        A window already stored (same node, device, start) is never rewritten: it is skipped.
        Returns how many windows were new.
        """
        new = 0
        with self.transaction() as c:
            if push_cursors:
                from meterd.agent.push_journal import advance

                advance(c, push_cursors, push_targets or [])
            if origins is not None:
                _save_origins(c, origins, at if at is not None else 0.0)
            for w, usage in windows:
                w = {**_WINDOW_DEFAULTS, **w}
                cur = c.execute(
                    f"INSERT OR IGNORE INTO windows({', '.join(_WINDOW_COLS)})"
                    f" VALUES ({', '.join(':' + k for k in _WINDOW_COLS)})", w)
                if cur.rowcount == 0:
                    continue
                new += 1
                wid = cur.lastrowid
                usage = [{**_USAGE_DEFAULTS, **u} for u in usage]
                for u in usage:
                    c.execute(
                        f"INSERT INTO window_usage(window_id, {', '.join(_USAGE_COLS)})"
                        f" VALUES (:window_id, {', '.join(':' + k for k in _USAGE_COLS)})",
                        {**u, "window_id": wid})
                for o in w.get("owners") or ():
                    c.execute(
                        f"INSERT INTO window_owners(window_id, {', '.join(_OWNER_COLS)})"
                        f" VALUES (:window_id, {', '.join(':' + k for k in _OWNER_COLS)})",
                        {**o, "window_id": wid})
                _roll_up(c, w, usage)
        return new

    def owners_of(self, window_id: int) -> list[dict[str, Any]]:
        """A window's split by who used the GPU (agent/attribution.py); [] when it was not split."""
        return list(self.db.query(
            "SELECT * FROM window_owners WHERE window_id = ? ORDER BY owner = 'idle', owner", [window_id]))

    def token_origins(self) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        """({source: {model: Counts}}, {source: when read}): the totals the last run committed."""
        from meterd.probes.counters import Counts

        out: dict[str, dict[str, Any]] = {}
        when: dict[str, float] = {}
        for r in self.conn.execute(
                "SELECT source, model, prompt_tokens, completion_tokens, cached_tokens, prefill_s, decode_s,"
                " provenance, error_bound, at FROM token_origins"):
            out.setdefault(r[0], {})[r[1]] = Counts(r[2], r[3], r[5], r[6], r[4], r[7], r[8])
            when[r[0]] = max(when.get(r[0], 0.0), r[9])
        return out, when

    def save_token_origins(self, origins: dict[str, dict[str, Any]], at: float) -> None:
        with self.transaction() as c:
            _save_origins(c, origins, at)

    def last_window_end(self, node: str, device: str) -> float | None:
        row = self.conn.execute(
            "SELECT max(end) FROM windows WHERE node = ? AND device = ?", [node, device]).fetchone()
        return row[0]

    def windows(self, since: float | None = None, until: float | None = None,
                device: str | None = None, limit: int | None = None,
                last: int | None = None) -> list[dict[str, Any]]:
        """Windows in [since, until) by start, oldest first: the first ``limit`` of them, or
        the newest ``last``."""
        where, args = [], []
        if since is not None:
            where.append("start >= ?"), args.append(since)
        if until is not None:
            where.append("start < ?"), args.append(until)
        if device is not None:
            where.append("device = ?"), args.append(device)
        sql = "SELECT * FROM windows" + (" WHERE " + " AND ".join(where) if where else "")
        if last is not None:
            return list(self.db.query(sql + f" ORDER BY start DESC, device DESC LIMIT {int(last)}", args))[::-1]
        sql += " ORDER BY start, device"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return list(self.db.query(sql, args))

    def device_ids(self) -> list[str]:
        """The devices that have windows in the store."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT device FROM windows ORDER BY device")]

    # -- the outbox -----------------------------------------------------------------------------

    def pending_windows(self, limit: int) -> list[dict[str, Any]]:
        """The oldest windows not yet acknowledged by a sink, quarantined ones left out."""
        return list(self.db.query(
            "SELECT * FROM windows WHERE shipped_at IS NULL AND quarantine_reason IS NULL"
            " ORDER BY id LIMIT ?", [limit]))

    def mark_shipped(self, ids: list[int], at: float) -> None:
        self.record_acks([], ids, at)

    def record_acks(self, partial: list[tuple[int, str]], complete: list[int], at: float) -> None:
        """In one transaction: remember the records (window id, key) a sink acknowledged of
        windows not yet complete, and mark the ``complete`` windows shipped (forgetting their
        records' acknowledgements)."""
        with self.transaction() as c:
            c.executemany("INSERT OR IGNORE INTO outbox_acks(window_id, key, at) VALUES (?, ?, ?)",
                          [(w, k, at) for w, k in partial])
            c.executemany("UPDATE windows SET shipped_at = ? WHERE id = ?", [(at, i) for i in complete])
            c.executemany("DELETE FROM outbox_acks WHERE window_id = ?", [(i,) for i in complete])

    def acked_keys(self, window_ids: list[int]) -> dict[int, set[str]]:
        """The records a sink already acknowledged, per window not yet shipped."""
        out: dict[int, set[str]] = {}
        for i in range(0, len(window_ids), 500):
            chunk = window_ids[i:i + 500]
            for w, k in self.conn.execute(
                    f"SELECT window_id, key FROM outbox_acks WHERE window_id IN ({','.join('?' * len(chunk))})",
                    chunk):
                out.setdefault(w, set()).add(k)
        return out

    def set_ship_state(self, **values: str) -> None:
        """What the agent ships to (``sink``, ``url``), for `meter outbox`."""
        with self.transaction() as c:
            c.executemany("INSERT INTO ship_state(key, value) VALUES (?, ?)"
                          " ON CONFLICT(key) DO UPDATE SET value = excluded.value", list(values.items()))

    def ship_state(self) -> dict[str, str]:
        try:
            return dict(self.conn.execute("SELECT key, value FROM ship_state"))
        except sqlite3.OperationalError:  # read-only, on a store an older agent wrote: no sink yet
            return {}

    def quarantine(self, ids: list[int], reason: str) -> int:
        with self.transaction() as c:
            c.executemany("UPDATE windows SET quarantine_reason = ? WHERE id = ? AND shipped_at IS NULL",
                          [(reason, i) for i in ids])
        return len(ids)

    def outbox_counts(self) -> tuple[int, int]:
        """(pending, quarantined) windows."""
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE quarantine_reason IS NULL),"
            " count(*) FILTER (WHERE quarantine_reason IS NOT NULL)"
            " FROM windows WHERE shipped_at IS NULL").fetchone()
        return row[0], row[1]

    def quarantined(self) -> list[dict[str, Any]]:
        return list(self.db.query(
            "SELECT id, node, device, start, end, event_id, quarantine_reason FROM windows"
            " WHERE shipped_at IS NULL AND quarantine_reason IS NOT NULL ORDER BY id"))

    def outbox_states(self, ids: Iterable[int]) -> dict[int, str]:
        """Where each of these windows stands: ``shipped``, ``quarantined`` or ``pending``
        (an id with no window is left out)."""
        out = {}
        for i in ids:
            row = self.conn.execute("SELECT shipped_at, quarantine_reason FROM windows WHERE id = ?", [i]).fetchone()
            if row is not None:
                out[i] = "shipped" if row[0] is not None else "quarantined" if row[1] is not None else "pending"
        return out

    def retry_quarantined(self, ids: list[int] | None = None) -> int:
        """Put quarantined windows back in the outbox (all, or these ids)."""
        with self.transaction() as c:
            if ids is None:
                return c.execute("UPDATE windows SET quarantine_reason = NULL"
                                 " WHERE quarantine_reason IS NOT NULL AND shipped_at IS NULL").rowcount
            return sum(c.execute("UPDATE windows SET quarantine_reason = NULL WHERE id = ?"
                                 " AND quarantine_reason IS NOT NULL AND shipped_at IS NULL", [i]).rowcount
                       for i in ids)

    def used_bytes(self) -> int:
        """Bytes the database uses (pages not on the free list), WAL included."""
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        try:
            wal = os.path.getsize(str(self.path) + "-wal")
        except OSError:
            wal = 0
        return (pages - free) * size + wal

    def enforce_budget(self, max_bytes: int, chunk: int = 5000) -> dict[str, int]:
        """Keep the store under ``max_bytes``: the oldest raw samples go first, then the oldest
        windows a sink has acknowledged (their hourly and daily rollups stay). An unshipped
        window is never dropped."""
        dropped = {"samples": 0, "windows": 0}
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        while self.used_bytes() > max_bytes:
            with self.transaction() as c:
                n = c.execute("DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id LIMIT ?)",
                              [chunk]).rowcount
            dropped["samples"] += n
            if n == 0:
                break
        while self.used_bytes() > max_bytes:
            with self.transaction() as c:
                ids = [r[0] for r in c.execute(
                    "SELECT id FROM windows WHERE shipped_at IS NOT NULL ORDER BY id LIMIT ?", [chunk])]
                if not ids:
                    break
                marks = ",".join("?" * len(ids))
                c.execute(f"DELETE FROM window_usage WHERE window_id IN ({marks})", ids)
                c.execute(f"DELETE FROM window_owners WHERE window_id IN ({marks})", ids)
                c.execute(f"DELETE FROM windows WHERE id IN ({marks})", ids)
            dropped["windows"] += len(ids)
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return dropped

    def usage_of(self, window_id: int) -> list[dict[str, Any]]:
        return list(self.db.query(
            "SELECT * FROM window_usage WHERE window_id = ? ORDER BY model, tenant", [window_id]))

    # -- bench results --------------------------------------------------------------------------

    def save_bench(self, run_id: str, node: str, at: float, rows: Iterable[dict[str, Any]],
                   versions: dict[str, Any]) -> int:
        """Store one bench run's results; returns how many rows were written."""
        payload = [
            {
                "run_id": run_id, "at": at, "node": node,
                "device": r["device"], "device_name": r.get("device_name"),
                "kernel": r["kernel"], "dtype": r["dtype"], "value": r["value"], "unit": r["unit"],
                "pct_of_peak": r.get("pct_of_peak"), "watts": r.get("watts"),
                "energy_j": r.get("energy_j"), "energy_source": r.get("energy_source"),
                "spread": r.get("spread"), "versions": json.dumps(versions, sort_keys=True),
            }
            for r in rows
        ]
        with self.transaction():
            self.db["bench_results"].insert_all(payload)
        return len(payload)

    def latest_bench(self, device: str | None = None) -> list[dict[str, Any]]:
        """The rows of the newest bench run (for one device, if given)."""
        where, args = ("WHERE device = ?", [device]) if device else ("", [])
        row = self.conn.execute(
            f"SELECT run_id FROM bench_results {where} ORDER BY at DESC, id DESC LIMIT 1", args
        ).fetchone()
        if row is None:
            return []
        q = "SELECT * FROM bench_results WHERE run_id = ?" + (" AND device = ?" if device else "")
        return list(self.db.query(q, [row[0], *args]))


_WINDOW_COLS = (
    "node", "device", "device_name", "start", "end", "energy_j", "energy_source", "avg_power_w",
    "util_pct", "prompt_tokens", "completion_tokens", "cost_capex_micro", "cost_energy_micro",
    "cost_opex_micro", "cost_micro", "cost_prompt_micro", "cost_completion_micro", "currency",
    "partial", "gap_s", "flags", "config_hash", "agent_version", "event_id",
    "cached_prompt_tokens", "token_source", "token_error_bound", "token_gap_s", "backfill_s",
)
_WINDOW_DEFAULTS = {"cached_prompt_tokens": 0, "token_source": None, "token_error_bound": 0,
                    "token_gap_s": 0.0, "backfill_s": 0.0}
_USAGE_COLS = (
    "model", "tenant", "prompt_tokens", "completion_tokens", "cost_micro", "cost_prompt_micro",
    "cost_completion_micro", "cost_capex_micro", "cost_energy_micro", "cost_opex_micro", "energy_j",
    "cached_prompt_tokens", "token_source", "owner",
)
_USAGE_DEFAULTS = {"cached_prompt_tokens": 0, "token_source": None, "owner": None}
_OWNER_COLS = ("owner", "share", "energy_j", "cost_capex_micro", "cost_energy_micro", "cost_opex_micro",
               "cost_micro", "provenance")
_ROLLUP_SUMS = (
    "windows", "seconds", "energy_j", "util_pct_s", "prompt_tokens", "completion_tokens",
    "cost_capex_micro", "cost_energy_micro", "cost_opex_micro", "cost_micro", "cost_prompt_micro",
    "cost_completion_micro", "idle_cost_micro", "idle_seconds", "idle_util_pct_s",
    "cached_prompt_tokens", "token_gap_s", "unavailable_seconds", "unavailable_cost_micro", "rounded_tokens",
)


def _save_origins(c: sqlite3.Connection, origins: dict[str, dict[str, Any]], at: float) -> None:
    rows = [(src, model, k.prompt_tokens, k.completion_tokens, k.cached_tokens, k.prefill_s, k.decode_s,
             k.provenance, k.error_bound, at)
            for src, models in origins.items() for model, k in models.items()]
    c.executemany("INSERT INTO token_origins(source, model, prompt_tokens, completion_tokens, cached_tokens,"
                  " prefill_s, decode_s, provenance, error_bound, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                  " ON CONFLICT(source, model) DO UPDATE SET prompt_tokens = excluded.prompt_tokens,"
                  " completion_tokens = excluded.completion_tokens, cached_tokens = excluded.cached_tokens,"
                  " prefill_s = excluded.prefill_s, decode_s = excluded.decode_s,"
                  " provenance = excluded.provenance, error_bound = excluded.error_bound, at = excluded.at", rows)


def _roll_up(c: sqlite3.Connection, w: dict[str, Any], usage: list[dict[str, Any]]) -> None:
    """Add one window to its hourly and daily rollups: one row for the device as a whole
    (model '' and tenant '': energy, time and idle cost included; a window with no tokens adds
    its cost, seconds and utilization x seconds to the idle sums too) and one per usage row."""
    seconds = w["end"] - w["start"]
    util_s = (w["util_pct"] or 0.0) * seconds if w["util_pct"] is not None else 0.0
    tokens = w["prompt_tokens"] + w["completion_tokens"]
    # A window whose token source could not be read and that shows no tokens is not idle: its
    # tokens are unknown. Its cost goes to unavailable_cost_micro, never to idle.
    unavailable = tokens == 0 and (w.get("token_gap_s") or 0) > 0
    idle = tokens == 0 and not unavailable
    rounded = tokens if w.get("token_source") == "rounded" else 0
    rows = [("", "", {
        "windows": 1, "seconds": seconds, "energy_j": w["energy_j"] or 0.0, "util_pct_s": util_s,
        "prompt_tokens": w["prompt_tokens"], "completion_tokens": w["completion_tokens"],
        "cost_capex_micro": w["cost_capex_micro"], "cost_energy_micro": w["cost_energy_micro"],
        "cost_opex_micro": w["cost_opex_micro"], "cost_micro": w["cost_micro"],
        "cost_prompt_micro": w["cost_prompt_micro"], "cost_completion_micro": w["cost_completion_micro"],
        "idle_cost_micro": w["cost_micro"] if idle else 0,
        "idle_seconds": seconds if idle else 0.0, "idle_util_pct_s": util_s if idle else 0.0,
        "cached_prompt_tokens": w.get("cached_prompt_tokens") or 0, "token_gap_s": w.get("token_gap_s") or 0.0,
        "unavailable_seconds": seconds if unavailable else 0.0,
        "unavailable_cost_micro": w["cost_micro"] if unavailable else 0, "rounded_tokens": rounded,
    })]
    for u in usage:
        rows.append((u["model"], u["tenant"], {
            "windows": 1, "seconds": seconds, "energy_j": u["energy_j"] or 0.0, "util_pct_s": util_s,
            "prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
            "cost_capex_micro": u["cost_capex_micro"], "cost_energy_micro": u["cost_energy_micro"],
            "cost_opex_micro": u["cost_opex_micro"], "cost_micro": u["cost_micro"],
            "cost_prompt_micro": u["cost_prompt_micro"], "cost_completion_micro": u["cost_completion_micro"],
            "idle_cost_micro": 0, "idle_seconds": 0.0, "idle_util_pct_s": 0.0,
            "cached_prompt_tokens": u.get("cached_prompt_tokens") or 0, "token_gap_s": 0.0,
            "unavailable_seconds": 0.0, "unavailable_cost_micro": 0,
            "rounded_tokens": (u["prompt_tokens"] + u["completion_tokens"]) if u.get("token_source") == "rounded" else 0,
        }))
    sums = ", ".join(_ROLLUP_SUMS)
    params = ", ".join(":" + k for k in _ROLLUP_SUMS)
    updates = ", ".join(f"{k} = {k} + excluded.{k}" for k in _ROLLUP_SUMS)
    for period, size in PERIODS.items():
        bucket = (w["start"] // size) * size
        for model, tenant, vals in rows:
            c.execute(
                f"INSERT INTO rollups(period, bucket, node, device, model, tenant, {sums})"
                f" VALUES (:period, :bucket, :node, :device, :model, :tenant, {params})"
                f" ON CONFLICT(period, bucket, node, device, model, tenant) DO UPDATE SET {updates}",
                {"period": period, "bucket": bucket, "node": w["node"], "device": w["device"],
                 "model": model, "tenant": tenant, **vals})
