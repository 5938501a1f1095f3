"""The collector's stores: SQLite's pragmas and migrations; on both backends the permanent
unique constraint, whole-batch rollback and concurrent senders of the same events."""

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from meterd.collector.store import MIGRATIONS, CollectorStore, SQLiteStore
from meterd.collector.validation import check_batch
from tests.collector.conftest import minutes, post_batch, sql


def _integrity_errors() -> tuple[type[Exception], ...]:
    import psycopg

    return sqlite3.IntegrityError, psycopg.IntegrityError


def test_store_is_wal_full_migrated_and_implements_the_interface(tmp_path):
    s = SQLiteStore(tmp_path / "c.db")
    try:
        assert isinstance(s, CollectorStore)
        assert s.schema_version() == len(MIGRATIONS)
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert s.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        s.close()
    s = SQLiteStore(tmp_path / "c.db")  # reopening does not migrate again
    assert s.schema_version() == len(MIGRATIONS)
    s.close()


def test_the_database_itself_refuses_a_second_copy_of_an_event(store):
    parsed, _ = check_batch(minutes(1))
    store.ingest(parsed)
    p = parsed[0]
    with pytest.raises(_integrity_errors(), match="UNIQUE|unique"):
        if isinstance(store, SQLiteStore):
            sql(store, "INSERT INTO events (source, id, received_at, raw) VALUES (?, ?, 0, '{}')", (p.source, p.id))
        else:
            sql(store, "INSERT INTO events (source, id, key_ms, received_at, raw) VALUES (?, ?, ?, 0, '{}')",
                (p.source, p.id, p.key_ms))
    assert store.counts()["events"] == 1


def test_a_failed_batch_rolls_back_whole(store):
    parsed, _ = check_batch(minutes(3))
    parsed[2].window["currency"] = None  # NOT NULL in the windows table: the third insert fails
    with pytest.raises(_integrity_errors()):
        store.ingest(parsed)
    assert store.counts() == {"events": 0, "windows": 0, "usage": 0, "tokens": 0}


def test_concurrent_senders_of_the_same_batch_store_it_once(live, store, token_n1):
    events = minutes(300)

    def send(_):
        with httpx.Client(base_url=live.url, timeout=30) as c:
            return post_batch(c, events, token_n1).json()

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(send, range(4)))
    assert sum(r["accepted"] for r in replies) == 300
    assert sum(r["duplicates"] for r in replies) == 3 * 300
    c = store.counts()
    assert c["events"] == c["windows"] == c["usage"] == 300
