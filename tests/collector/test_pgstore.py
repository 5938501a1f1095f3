"""The PostgreSQL store on a real server: migrations that two replicas run at once, monthly
partitions, exact counts between concurrent writers, durability settings, read-only opening.
(The API tests run on both backends through the ``store`` fixture; these are PostgreSQL's own.)"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from meterd.collector.store import Query, open_store
from meterd.collector.validation import check_batch
from meterd.errors import StoreUnavailable, StoreVersionError
from tests.collector.conftest import make_event, minutes

DEC_1 = 1_796_083_200.0  # 2026-12-01T00:00:00Z


def _pg(url):
    from meterd.collector.pgstore import MIGRATIONS, PostgresStore

    return MIGRATIONS, PostgresStore


def test_two_replicas_starting_at_once_migrate_once(pg_url):
    MIGRATIONS, PostgresStore = _pg(pg_url)
    barrier = threading.Barrier(4)

    def start(_):
        barrier.wait()
        return PostgresStore(pg_url)

    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(start, range(4)))
    try:
        with stores[0].pool.connection() as c:
            versions = [r[0] for r in c.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        assert all(s.schema_version() == len(MIGRATIONS) for s in stores)
    finally:
        for s in stores:
            s.close()


def test_a_newer_schema_is_refused_and_read_only_never_creates(pg_url):
    MIGRATIONS, PostgresStore = _pg(pg_url)
    with pytest.raises(StoreUnavailable, match="no collector database"):
        PostgresStore(pg_url, readonly=True)
    s = PostgresStore(pg_url)
    with s.pool.connection() as c:
        c.execute("INSERT INTO schema_version (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    s.close()
    with pytest.raises(StoreVersionError, match="newer than this collector knows"):
        PostgresStore(pg_url)
    with pytest.raises(StoreVersionError, match="upgrade meterd"):
        PostgresStore(pg_url, readonly=True)


def test_windows_go_to_their_months_partition_and_far_times_to_the_default(pg_url, monkeypatch):
    import meterd.collector.validation as validation

    # validation takes no window more than a day ahead: put the collector's clock at the end of 2099
    monkeypatch.setattr(validation, "now", lambda: 4_102_444_800.0 - 12 * 3600)
    MIGRATIONS, PostgresStore = _pg(pg_url)
    s = PostgresStore(pg_url)
    try:
        events = (minutes(3, start=DEC_1 - 120)  # two minutes of November, one of December
                  + [make_event(start=4_102_444_800.0 + 3600)])  # 2100-01-01T01:00Z: outside 2000-2099
        parsed, errors = check_batch(events)
        assert errors == []
        assert s.ingest(parsed).accepted == 4
        assert s.ingest(parsed).duplicates == 4  # the default partition dedupes too
        with s.pool.connection() as c:
            where = {t: dict(c.execute(f"SELECT tableoid::regclass::text, count(*) FROM {t} GROUP BY 1").fetchall())
                     for t in ("events", "windows", "usage")}
        for t in ("events", "windows", "usage"):
            assert where[t] == {f"{t}_y2026m11": 2, f"{t}_y2026m12": 1, f"{t}_default": 1}, where
        assert [w["start"] for w in s.windows(Query(), 10)] == [e for e in (DEC_1 - 120, DEC_1 - 60, DEC_1,
                                                                           4_102_444_800.0 + 3600)]
    finally:
        s.close()


def test_concurrent_replicas_count_every_event_once_without_deadlocks(pg_url):
    """Four stores (four replicas' pools) send overlapping batches in opposite orders at once:
    the accepted counts add up to the unique events exactly, the rest are duplicates."""
    _, PostgresStore = _pg(pg_url)
    stores = [PostgresStore(pg_url) for _ in range(4)]
    try:
        unique = minutes(2000)
        batches = [unique[i:i + 1000] for i in range(0, 2000, 500)]  # each event in two batches
        parsed = [check_batch(b)[0] for b in batches]
        barrier = threading.Barrier(4)

        def send(i):
            barrier.wait()
            order = parsed if i % 2 == 0 else [list(reversed(p)) for p in reversed(parsed)]
            return [stores[i].ingest(p) for p in order]

        with ThreadPoolExecutor(4) as pool:
            results = [r for rs in pool.map(send, range(4)) for r in rs]
        sent = sum(len(p) for p in parsed) * 4
        assert sum(r.accepted for r in results) == 2000
        assert sum(r.duplicates for r in results) == sent - 2000
        assert stores[0].counts() == {"events": 2000, "windows": 2000, "usage": 2000, "tokens": 0}
    finally:
        for s in stores:
            s.close()


def test_two_replicas_never_both_store_overlapping_windows_of_one_device(pg_url):
    """Two replicas get, at the same instant, windows of one device that overlap under different
    ids (a node's clock stepped; a second agent on the same GPU): for every pair exactly one is
    stored and the other refused with the overlap, never both. The check runs in the ingest's
    transaction under the device's advisory lock; checked outside it, both passed often."""
    _, PostgresStore = _pg(pg_url)
    stores = [PostgresStore(pg_url) for _ in range(2)]
    try:
        pairs = 40
        barrier = threading.Barrier(2)

        def send(i):
            got = []
            for k in range(pairs):
                start = DEC_1 - 86400 + 600 * k + 30 * i  # the two windows of pair k overlap by 30 s
                (p,), errors = check_batch([make_event("n1", "GPU-0", start)])
                assert errors == []
                barrier.wait()
                got.append(stores[i].ingest([p]))
            return got

        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(send, range(2))
        for k, (x, y) in enumerate(zip(a, b)):
            assert sorted((x.accepted, y.accepted)) == [0, 1], k
            refused = x if x.accepted == 0 else y
            assert len(refused.overlaps) == 1 and "overlaps window" in refused.overlaps[0]["problem"]
        assert stores[0].counts()["windows"] == pairs
    finally:
        for s in stores:
            s.close()


def test_synchronous_commit_is_never_off_for_the_store(pg_url):
    """A database configured with synchronous_commit = off (fast, but an acknowledged batch could
    be lost in a crash): the store's sessions turn it back on."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as c:
        dbname = c.execute("SELECT current_database()").fetchone()[0]
        c.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')
    _, PostgresStore = _pg(pg_url)
    s = PostgresStore(pg_url)
    try:
        with psycopg.connect(pg_url) as c:
            assert c.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        with s.pool.connection() as c:
            assert c.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    finally:
        s.close()


def test_open_store_picks_postgresql_from_the_url(pg_url):
    s = open_store(pg_url)
    try:
        assert type(s).__name__ == "PostgresStore" and s.path == pg_url
    finally:
        s.close()
    s = open_store(pg_url.replace("postgresql://meterd@", "postgres://meterd:secret@"))
    try:
        assert "secret" not in s.path and ":***@" in s.path
    finally:
        s.close()


@pytest.mark.parametrize("ci, outcome", [("", "1 skipped"), ("true", "1 error")])
def test_without_a_server_the_postgresql_tests_skip_locally_and_fail_in_ci(tmp_path, ci, outcome):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "METERD_TEST_PG_URL")}
    if ci:
        env["CI"] = ci
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                        str(tmp_path / "t"), "tests/collector/test_pgstore.py::test_open_store_picks_postgresql_from_the_url"],
                       cwd=Path(__file__).parents[2], env=env, capture_output=True, text=True, timeout=120)
    assert outcome in r.stdout, r.stdout[-2000:]
    assert (r.returncode != 0) == bool(ci)
