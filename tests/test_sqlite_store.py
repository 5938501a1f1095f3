"""The one SQLite base (meterd/sqlite_store.py) under the agent's and the collector's stores:
the kinds of file it tells apart, the versions it refuses, damaged files, read-only opening that
never creates or writes anything, and each of these through the CLI as one line."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from meterd import sqlite_store
from meterd.agent.cli import main
from meterd.agent.store import MIGRATIONS, Store, open_store
from meterd.collector.store import MIGRATIONS as COLLECTOR_MIGRATIONS
from meterd.collector.store import SQLiteStore
from meterd.errors import StoreDamaged, StoreKindError, StoreUnavailable, StoreVersionError
from tests.agent.test_store import _usage, _window


def meter(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


def one_error_line(r) -> str:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.exception
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    return lines[0]


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def agent_db(tmp_path) -> Path:
    p = tmp_path / "agent" / "meterd.db"
    s = Store(p)
    s.commit_windows([(_window(1_800_000_000.0), _usage())])
    s.close()
    return p


@pytest.fixture
def collector_db(tmp_path) -> Path:
    p = tmp_path / "collector" / "collector.db"
    SQLiteStore(p).close()
    return p


def _set_version(p: Path, v: int) -> None:
    c = sqlite3.connect(p)
    c.execute(f"PRAGMA user_version = {v}")
    c.commit()
    c.close()


# -- kinds of file ---------------------------------------------------------------------------------


def test_a_collector_database_is_not_an_agent_store_and_vice_versa(agent_db, collector_db):
    before = digest(collector_db), digest(agent_db)
    for readonly in (False, True):
        with pytest.raises(StoreKindError, match=f"{collector_db} is a collector database, not an agent store"):
            open_store(collector_db, readonly=readonly)
        with pytest.raises(StoreKindError, match=f"{agent_db} is an agent store, not a collector database"):
            SQLiteStore(agent_db, readonly=readonly)
    assert (digest(collector_db), digest(agent_db)) == before  # nothing migrated into the wrong file


def test_the_cli_names_the_other_kind(agent_db, collector_db):
    line = one_error_line(meter("report", "--db", str(collector_db)))
    assert "is a collector database, not an agent store" in line and "rollups" not in line
    line = one_error_line(meter("windows", "--db", str(collector_db)))
    assert "is a collector database" in line
    line = one_error_line(meter("collector", "export", "--db", str(agent_db), "--since", "2026-11-28",
                                "--until", "2026-11-29"))
    assert "is an agent store, not a collector database" in line and "upgrade" not in line


def test_a_file_that_is_not_sqlite_is_named_so_and_left_alone(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("not a database, just some notes\n" * 100)
    before = digest(p)
    for readonly in (False, True):
        with pytest.raises(StoreKindError, match=f"{p} is not an SQLite database, so not an agent store"):
            open_store(p, readonly=readonly)
    assert "is not an SQLite database" in one_error_line(meter("windows", "--db", str(p)))
    assert "is not an SQLite database" in one_error_line(meter("agent", "--db", str(p), "--duration", "0.1"))
    assert digest(p) == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["notes.txt"]


def test_another_applications_database_is_named_by_its_tables(tmp_path):
    p = tmp_path / "other.db"
    c = sqlite3.connect(p)
    c.execute("CREATE TABLE photos (id INTEGER)")
    c.close()
    with pytest.raises(StoreKindError, match=r"an SQLite database of something else \(tables: photos\)"):
        open_store(p)


def test_an_empty_file_is_not_turned_into_a_store_by_a_read(tmp_path):
    p = tmp_path / "empty.db"
    p.touch()
    assert "is an empty database, not an agent store" in one_error_line(meter("windows", "--db", str(p)))
    assert "is an empty database" in one_error_line(meter("report", "--db", str(p)))
    assert p.stat().st_size == 0 and sorted(x.name for x in tmp_path.iterdir()) == ["empty.db"]
    # a write command makes it a store
    s = open_store(p)
    assert s.schema_version() == len(MIGRATIONS)
    s.close()


# -- versions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["agent", "collector"])
def test_a_newer_schema_names_the_file_and_both_versions(agent_db, collector_db, kind):
    path, opener, n = ((agent_db, open_store, len(MIGRATIONS)) if kind == "agent"
                       else (collector_db, SQLiteStore, len(COLLECTOR_MIGRATIONS)))
    _set_version(path, n + 5)
    for readonly in (False, True):
        with pytest.raises(StoreVersionError) as e:
            opener(path, readonly=readonly)
        msg = str(e.value)
        assert str(path) in msg and f"version {n + 5}, newer" in msg and f"({n})" in msg \
            and "upgrade meterd" in msg


@pytest.mark.parametrize("command", [
    ["bench", "--tiny", "--device", "cpu"], ["windows"], ["report"], ["outbox"], ["outbox", "retry"],
    ["agent", "--duration", "0.1"],
])
def test_every_command_says_a_newer_store_in_one_line(agent_db, no_nvml, command):
    _set_version(agent_db, 99)
    args = [*command[:1], "--db", str(agent_db), *command[1:]] if command[0] != "outbox" \
        else ["outbox", "--db", str(agent_db), *command[1:]]
    line = one_error_line(meter(*args))
    assert line == (f"Error: {agent_db} has schema version 99, newer than this meterd knows "
                    f"({len(MIGRATIONS)}): it was written by a newer meterd; upgrade meterd to use it")


def test_a_read_does_not_upgrade_an_older_store_and_says_so(agent_db):
    s = open_store(agent_db)
    s.conn.execute("ALTER TABLE rollups DROP COLUMN idle_util_pct_s")
    s.conn.execute("ALTER TABLE rollups DROP COLUMN idle_seconds")
    for table in ("push_journal", "push_request_ids", "push_cursors"):  # schema 4
        s.conn.execute(f"DROP TABLE {table}")
    s.close()
    _set_version(agent_db, 1)
    with pytest.raises(StoreVersionError, match=rf"schema version 1, older than this meterd's \({len(MIGRATIONS)}\): "
                                                r"a read does not upgrade it; run `meter agent`"):
        open_store(agent_db, readonly=True)
    c = sqlite3.connect(agent_db)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 1
    c.close()
    s = open_store(agent_db)  # a writable open migrates
    assert s.schema_version() == len(MIGRATIONS)
    s.close()


def test_a_failed_open_closes_its_connection(agent_db, monkeypatch):
    opened = []
    real = sqlite3.connect

    def spy(*a, **kw):
        opened.append(real(*a, **kw))
        return opened[-1]

    _set_version(agent_db, 99)
    monkeypatch.setattr(sqlite_store.sqlite3, "connect", spy)
    for readonly in (False, True):
        with pytest.raises(StoreVersionError):
            open_store(agent_db, readonly=readonly)
    assert len(opened) == 2
    for conn in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")


def test_migrations_run_once_from_the_stores_version(tmp_path):
    ran = []
    steps = [lambda c: (ran.append(1), c.execute("CREATE TABLE a (x)")),
             lambda c: (ran.append(2), c.execute("CREATE TABLE b (x)"))]
    kind = sqlite_store.Kind("test store", "t.db", frozenset({"a"}), "make it")
    conn = sqlite_store.open_db(tmp_path / "t.db", kind, steps[:1])
    conn.close()
    conn = sqlite_store.open_db(tmp_path / "t.db", kind, steps)
    assert ran == [1, 2] and sqlite_store.user_version(conn) == 2
    conn.close()
    sqlite_store.open_db(tmp_path / "t.db", kind, steps).close()
    assert ran == [1, 2]


# -- damaged -----------------------------------------------------------------------------------------


def test_a_malformed_store_says_what_to_do(agent_db):
    raw = bytearray(agent_db.read_bytes())
    raw[100:4096] = b"\xa5" * (4096 - 100)  # the schema page, after the 100-byte header
    agent_db.write_bytes(bytes(raw))
    for readonly in (False, True):
        with pytest.raises(StoreDamaged) as e:
            open_store(agent_db, readonly=readonly)
        msg = str(e.value)
        assert msg.startswith(f"{agent_db} is damaged") and "malformed" in msg
        assert f"sqlite3 {agent_db} 'PRAGMA integrity_check'" in msg and "backup" in msg \
            and "start a new agent store" in msg
    assert "is damaged" in one_error_line(meter("windows", "--db", str(agent_db)))


# -- read-only ---------------------------------------------------------------------------------------


def test_read_commands_never_create_a_store(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": "", "STATE_DIRECTORY": ""}
    (tmp_path / "home").mkdir()
    default = tmp_path / "home" / ".local" / "share" / "meterd" / "meterd.db"
    for args in (["windows"], ["report"], ["outbox"], ["outbox", "retry"]):
        line = one_error_line(meter(*args, env=env))
        assert line.startswith(f"Error: no agent store at {default}: run `meter agent` first"), line
    line = one_error_line(meter("collector", "export", "--since", "2026-11-28", "--until", "2026-11-29", env=env))
    assert "no collector database at" in line
    assert "no collector database at" in one_error_line(meter("collector", "token", "list", env=env))
    assert list((tmp_path / "home").iterdir()) == []
    missing = tmp_path / "nope" / "m.db"
    assert "no agent store at" in one_error_line(meter("windows", "--db", str(missing)))
    assert not missing.parent.exists()


def test_a_read_only_open_writes_nothing_and_refuses_writes(agent_db):
    before = sorted(os.listdir(agent_db.parent)), digest(agent_db), agent_db.stat().st_mtime_ns
    s = open_store(agent_db, readonly=True)
    try:
        assert len(s.windows()) == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            s.mark_shipped([1], 5.0)
    finally:
        s.close()
    r = meter("windows", "--db", str(agent_db), "--json")
    assert r.exit_code == 0 and '"device": "GPU-1"' in r.output
    for args in (["report", "--db", str(agent_db)], ["outbox", "--db", str(agent_db)]):
        assert meter(*args).exit_code == 0
    assert (sorted(os.listdir(agent_db.parent)), digest(agent_db), agent_db.stat().st_mtime_ns) == before


def test_a_read_only_open_sees_what_a_running_agent_committed(agent_db):
    writer = open_store(agent_db)  # holds the write-ahead log open, as the agent does
    try:
        writer.commit_windows([(_window(1_800_000_060.0), _usage())])
        assert (agent_db.parent / "meterd.db-wal").stat().st_size > 0
        reader = open_store(agent_db, readonly=True)
        try:
            assert len(reader.windows()) == 2
        finally:
            reader.close()
    finally:
        writer.close()


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (root, mount namespaces) for a read-only bind mount")
def test_read_commands_work_on_a_read_only_bind_mount(agent_db, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    before = sorted(os.listdir(agent_db.parent)), digest(agent_db)
    script = (f"mount --bind {agent_db.parent} {mnt} && mount -o remount,ro,bind {mnt} && "
              f"! touch {mnt}/probe 2>/dev/null && "
              f"{sys.executable} -m meterd.agent.cli windows --db {mnt}/meterd.db --json && "
              f"{sys.executable} -m meterd.agent.cli report --db {mnt}/meterd.db --format json && "
              f"{sys.executable} -m meterd.agent.cli outbox --db {mnt}/meterd.db --json && "
              f"! {sys.executable} -m meterd.agent.cli outbox --db {mnt}/meterd.db retry")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert '"device": "GPU-1"' in r.stdout and '"pending": 1' in r.stdout and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"Error: {mnt}/meterd.db cannot be written by this user: run as the store's " \
        "owner, or give --db PATH to a writable file (windows, report and outbox only read, and need no write access)"
    assert (sorted(os.listdir(agent_db.parent)), digest(agent_db)) == before


def test_a_write_to_an_unwritable_store_is_one_line(agent_db, monkeypatch):
    real = os.access
    for unwritable in (agent_db, agent_db.parent):
        monkeypatch.setattr(sqlite_store.os, "access",
                            lambda p, mode: real(p, mode) if Path(p) != unwritable or mode != os.W_OK else False)
        with pytest.raises(StoreUnavailable, match=f"{unwritable} cannot be written by this user"):
            open_store(agent_db)
        line = one_error_line(meter("outbox", "--db", str(agent_db), "retry"))
        assert "cannot be written by this user" in line
        assert meter("windows", "--db", str(agent_db)).exit_code == 0  # a read needs no write access


def test_a_directory_where_the_store_should_be(tmp_path):
    with pytest.raises(StoreUnavailable, match="is a directory"):
        open_store(tmp_path)
    with pytest.raises(StoreUnavailable, match="is a directory"):
        open_store(tmp_path, readonly=True)


def test_outbox_retry_needs_an_existing_store(tmp_path):
    p = tmp_path / "m.db"
    assert "no agent store at" in one_error_line(meter("outbox", "--db", str(p), "retry"))
    assert not p.exists()
