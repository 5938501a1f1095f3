import sqlite3

import pytest

from meterd.agent.store import MIGRATIONS, Store, default_db_path


def test_store_is_wal_full_and_migrated(tmp_path):
    s = Store(tmp_path / "m.db")
    assert s.schema_version() == len(MIGRATIONS)
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert {"samples", "windows", "window_usage", "rollups", "bench_results"} <= set(s.db.table_names())
    s.close()
    # reopening does not migrate again
    assert Store(tmp_path / "m.db").schema_version() == len(MIGRATIONS)


def test_transaction_rolls_back_on_error(tmp_path):
    s = Store(tmp_path / "m.db")
    with pytest.raises(ZeroDivisionError):
        with s.transaction():
            s.conn.execute("INSERT INTO samples(device, at, state) VALUES ('cpu', 1, 'ok')")
            1 / 0
    assert s.conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 0


def test_bench_results_latest_run(tmp_path):
    s = Store(tmp_path / "m.db")
    row = dict(device="cpu", kernel="gemm", dtype="fp64", value=1e9, unit="FLOP/s")
    s.save_bench("run-1", "n", 100.0, [row], {"numpy": "x"})
    s.save_bench("run-2", "n", 200.0, [row | {"value": 2e9}, row | {"dtype": "fp32"}], {})
    latest = s.latest_bench()
    assert {r["run_id"] for r in latest} == {"run-2"} and len(latest) == 2
    assert s.latest_bench("gpu0") == []


def test_default_path_follows_systemd_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert default_db_path() == tmp_path / "meterd.db"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg/meterd/meterd.db"


def _window(start, cost=1000, device="GPU-1"):
    from meterd.agent.events import event_id
    return {
        "node": "n", "device": device, "device_name": "H100", "start": start, "end": start + 60,
        "energy_j": 100.0, "energy_source": "counter", "avg_power_w": 1.7, "util_pct": 50.0,
        "prompt_tokens": 30, "completion_tokens": 10, "cost_capex_micro": cost - 100,
        "cost_energy_micro": 80, "cost_opex_micro": 20, "cost_micro": cost, "cost_prompt_micro": 400,
        "cost_completion_micro": cost - 400, "currency": "USD", "partial": 0, "gap_s": 0.0, "flags": "[]",
        "config_hash": "h", "agent_version": "t", "event_id": event_id("n", device, start),
    }


def _usage(cost=1000):
    return [{"model": "m", "tenant": "", "prompt_tokens": 30, "completion_tokens": 10, "cost_micro": cost,
             "cost_prompt_micro": 400, "cost_completion_micro": cost - 400, "cost_capex_micro": cost - 100,
             "cost_energy_micro": 80, "cost_opex_micro": 20, "energy_j": 100.0}]


def test_a_committed_window_is_never_rewritten(tmp_path):
    s = Store(tmp_path / "m.db")
    assert s.commit_windows([(_window(3600.0), _usage())]) == 1
    assert s.commit_windows([(_window(3600.0, cost=999_999), _usage(999_999)), (_window(3660.0), _usage())]) == 1
    ws = s.windows()
    assert [w["cost_micro"] for w in ws] == [1000, 1000]
    assert s.last_window_end("n", "GPU-1") == 3720.0
    # the rollups count each window once
    hour = s.conn.execute("SELECT windows, cost_micro, prompt_tokens FROM rollups"
                          " WHERE period='hour' AND model=''").fetchone()
    assert hour == (2, 2000, 60)
    assert s.conn.execute("SELECT count(*) FROM window_usage").fetchone()[0] == 2


def test_rollups_bucket_by_hour_and_day(tmp_path):
    s = Store(tmp_path / "m.db")
    s.commit_windows([(_window(3540.0), _usage()), (_window(3600.0), _usage()), (_window(86400.0), [])])
    hours = s.conn.execute("SELECT bucket, windows, idle_cost_micro FROM rollups WHERE period='hour' AND model=''"
                           " ORDER BY bucket").fetchall()
    assert hours == [(0.0, 1, 0), (3600.0, 1, 0), (86400.0, 1, 0)]
    days = s.conn.execute("SELECT bucket, windows, cost_micro FROM rollups WHERE period='day' AND model=''"
                          " ORDER BY bucket").fetchall()
    assert days == [(0.0, 2, 2000), (86400.0, 1, 1000)]


def test_samples_are_pruned_by_age(tmp_path):
    s = Store(tmp_path / "m.db")
    s.insert_samples([{"device": "cpu", "at": t, "state": "ok", "power_w": 1.0, "power_source": "estimated",
                       "energy_j": None, "energy_source": None, "util_pct": 1.0, "mem_used_bytes": 1}
                      for t in (10.0, 20.0, 30.0)])
    assert s.prune_samples(before=25.0) == 2
    assert s.conn.execute("SELECT at FROM samples").fetchall() == [(30.0,)]


def test_migration_2_adds_idle_time_to_a_version_1_store_and_keeps_its_data(tmp_path):
    import sqlite_utils

    p = tmp_path / "v1.db"
    conn = sqlite3.connect(p, isolation_level=None)
    MIGRATIONS[0](sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 1")
    # What a version-1 agent wrote: an idle and a busy window in hour 1, one idle window of the
    # five of hour 2 (enforce_budget dropped the others), their rollups (no idle time), and a
    # usage row's rollup.
    idle = {"prompt_tokens": 0, "completion_tokens": 0, "util_pct": 20.0}
    windows = [_window(3600.0) | idle, _window(3660.0), _window(7200.0) | idle]
    cols = list(windows[0])
    conn.executemany(f"INSERT INTO windows({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     [[w[k] for k in cols] for w in windows])
    v1 = ("INSERT INTO rollups VALUES (?, ?, 'n', 'GPU-1', ?, '', ?, ?, 200.0, ?, 30, 10, 1800, 160, 40, 2000,"
          " 800, 1200, ?)")
    conn.executemany(v1, [("hour", 3600.0, "", 2, 120.0, 6000.0, 1000), ("hour", 3600.0, "m", 1, 60.0, 3000.0, 0),
                          ("hour", 7200.0, "", 5, 300.0, 6000.0, 5000), ("day", 0.0, "", 7, 420.0, 1.2e4, 6000)])
    conn.close()

    s = Store(p)
    assert s.schema_version() == len(MIGRATIONS)
    assert {"idle_seconds", "idle_util_pct_s"} <= set(s.db["rollups"].columns_dict)
    rows = s.conn.execute("SELECT period, bucket, model, windows, seconds, cost_micro, idle_cost_micro,"
                          " idle_seconds, idle_util_pct_s FROM rollups ORDER BY period, bucket, model").fetchall()
    assert rows == [("day", 0.0, "", 7, 420.0, 2000, 6000, 0.0, 0.0),  # windows dropped: not known
                    ("hour", 3600.0, "", 2, 120.0, 2000, 1000, 60.0, 1200.0),  # from its windows
                    ("hour", 3600.0, "m", 1, 60.0, 2000, 0, 0.0, 0.0),  # usage rows hold no idle time
                    ("hour", 7200.0, "", 5, 300.0, 2000, 5000, 0.0, 0.0)]
    assert [w["start"] for w in s.windows()] == [3600.0, 3660.0, 7200.0]
    s.close()
    assert Store(p).schema_version() == len(MIGRATIONS)  # reopening does not migrate again


def test_rollups_count_idle_windows_time_and_utilization(tmp_path):
    s = Store(tmp_path / "m.db")
    idle = _window(3600.0) | {"prompt_tokens": 0, "completion_tokens": 0, "util_pct": 20.0}
    s.commit_windows([(idle, []), (_window(3660.0), _usage()),
                      (_window(3720.0) | {"prompt_tokens": 0, "completion_tokens": 0, "util_pct": None}, [])])
    rows = s.conn.execute("SELECT period, model, seconds, idle_seconds, util_pct_s, idle_util_pct_s FROM rollups"
                          " ORDER BY period, model").fetchall()
    assert rows == [("day", "", 180.0, 120.0, 4200.0, 1200.0), ("day", "m", 60.0, 0.0, 3000.0, 0.0),
                    ("hour", "", 180.0, 120.0, 4200.0, 1200.0), ("hour", "m", 60.0, 0.0, 3000.0, 0.0)]


def test_windows_first_or_newest(tmp_path):
    s = Store(tmp_path / "m.db")
    s.commit_windows([(_window(3600.0 + 60 * i), []) for i in range(5)])
    assert [w["start"] for w in s.windows(limit=2)] == [3600.0, 3660.0]
    assert [w["start"] for w in s.windows(last=2)] == [3780.0, 3840.0]
    assert [w["start"] for w in s.windows(until=3780.0, last=2)] == [3660.0, 3720.0]


def test_budget_drops_samples_then_shipped_windows_never_unshipped(tmp_path):
    s = Store(tmp_path / "m.db")
    s.insert_samples([{"device": "cpu", "at": float(t), "state": "ok", "power_w": 1.0, "power_source": "estimated",
                       "energy_j": None, "energy_source": None, "util_pct": 1.0, "mem_used_bytes": 1}
                      for t in range(20_000)])
    s.commit_windows([(_window(3600.0 + 60 * i), _usage()) for i in range(400)])
    ids = [w["id"] for w in s.windows()]
    s.mark_shipped(ids[:300], at=1.0)
    rollup_cost = s.conn.execute("SELECT sum(cost_micro) FROM rollups WHERE period='day' AND model=''").fetchone()
    dropped = s.enforce_budget(max_bytes=1)  # far below what 100 unshipped windows need
    assert dropped == {"samples": 20_000, "windows": 300}
    left = s.windows()
    assert len(left) == 100 and all(w["shipped_at"] is None for w in left)
    assert s.outbox_counts() == (100, 0)
    assert s.conn.execute("SELECT count(*) FROM window_usage").fetchone()[0] == 100
    # the rollups keep the dropped windows' sums, so reports still add up
    assert s.conn.execute("SELECT sum(cost_micro) FROM rollups WHERE period='day' AND model=''").fetchone() == rollup_cost


def test_budget_already_met_drops_nothing(tmp_path):
    s = Store(tmp_path / "m.db")
    s.commit_windows([(_window(3600.0), _usage())])
    assert s.enforce_budget(max_bytes=10**9) == {"samples": 0, "windows": 0}


def test_migration_3_adds_the_outbox_acks_and_keeps_a_version_2_store(tmp_path):
    from tests.agent.billing_seed import seed

    p = tmp_path / "m.db"
    s = Store(p)
    seed(s, 1, 1_800_000_000.0)
    s.conn.execute("DROP TABLE outbox_acks")
    s.conn.execute("DROP TABLE ship_state")
    s.conn.execute("PRAGMA user_version = 2")
    s.close()
    s = Store(p)
    try:
        assert s.schema_version() == len(MIGRATIONS) >= 3
        assert len(s.windows()) == 2  # the data stays
        s.record_acks([(1, "a")], [], 1.0)
        assert s.acked_keys([1, 2]) == {1: {"a"}}
        s.record_acks([], [1], 2.0)
        assert s.acked_keys([1]) == {} and s.windows()[0]["shipped_at"] == 2.0
        s.set_ship_state(sink="lago", url="https://x/api/v1/events/batch")
        s.set_ship_state(sink="stripe")
        assert s.ship_state() == {"sink": "stripe", "url": "https://x/api/v1/events/batch"}
    finally:
        s.close()


def test_migration_5_adds_token_detail_to_a_version_4_store_and_keeps_its_data(tmp_path):
    from meterd.sqlite_store import AGENT, open_db

    p = tmp_path / "m.db"
    conn = open_db(p, AGENT, MIGRATIONS[:4])
    conn.execute("INSERT INTO windows(node, device, start, end, prompt_tokens, completion_tokens, cost_capex_micro,"
                 " cost_energy_micro, cost_opex_micro, cost_micro, currency, event_id)"
                 " VALUES ('n', 'd', 0, 60, 5, 6, 1, 1, 1, 3, 'USD', 'e')")
    conn.close()
    s = Store(p)
    try:
        assert s.schema_version() == len(MIGRATIONS) >= 5
        (w,) = s.windows()
        assert (w["prompt_tokens"], w["cached_prompt_tokens"], w["token_source"], w["token_gap_s"]) == (5, 0, None, 0)
        assert s.token_origins() == ({}, {})
    finally:
        s.close()


def test_raw_samples_older_than_a_day_thin_to_one_a_minute_and_windows_stay(tmp_path):
    from meterd.agent.daemon import SAMPLES_THINNED_EVERY_S

    s = Store(tmp_path / "m.db")
    t0 = 1_800_000_000.0
    s.insert_samples([{"device": d, "at": t0 + i, "state": "ok", "power_w": 1.0, "power_source": "instant",
                       "energy_j": None, "energy_source": None, "util_pct": None, "mem_used_bytes": None}
                      for i in range(600) for d in ("g0", "g1")])
    s.commit_windows([(_window(t0), _usage())])
    before_windows = s.windows()
    # thin [t0, t0 + 300): 5 minutes keep 5 samples per device; the rest stays at full rate
    n = s.downsample_samples(None, t0 + 300, SAMPLES_THINNED_EVERY_S)
    assert n == 2 * (300 - 5)
    kept = s.conn.execute("SELECT device, at FROM samples WHERE at < ? ORDER BY device, at", [t0 + 300]).fetchall()
    assert kept == [(d, t0 + 60 * k) for d in ("g0", "g1") for k in range(5)]
    assert s.conn.execute("SELECT count(*) FROM samples WHERE at >= ?", [t0 + 300]).fetchone()[0] == 2 * 300
    # idempotent, and the windows never change
    assert s.downsample_samples(t0 - 7200, t0 + 300, SAMPLES_THINNED_EVERY_S) == 0
    assert s.windows() == before_windows
    s.close()
