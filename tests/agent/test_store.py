import sqlite3

import pytest

from agent.store import MIGRATIONS, Store, default_db_path


def test_store_is_wal_full_and_migrated(tmp_path):
    s = Store(tmp_path / "m.db")
    assert s.schema_version() == len(MIGRATIONS)
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert {"samples", "windows", "window_usage", "rollups", "bench_results"} <= set(s.db.table_names())
    s.close()
    # reopening does not migrate again
    assert Store(tmp_path / "m.db").schema_version() == len(MIGRATIONS)


def test_newer_schema_is_refused(tmp_path):
    p = tmp_path / "m.db"
    Store(p).close()
    c = sqlite3.connect(p)
    c.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    c.close()
    with pytest.raises(RuntimeError, match="newer than this meterd knows"):
        Store(p)


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
