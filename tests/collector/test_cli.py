"""`meter collector ...`: token create, export, and serve as a real process."""

import csv
import hashlib
import io
import json
import signal
import socket
import sqlite3
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.collector.auth import authenticate
from meterd.collector.store import MIGRATIONS, SQLiteStore, open_store
from meterd.collector.validation import check_batch
from tests.collector.conftest import T0, make_event, minutes, post_batch, wait_healthy


def meter(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_token_create_prints_the_token_alone_on_the_last_line_and_stores_its_hash(tmp_path):
    db = tmp_path / "c.db"
    r = meter("collector", "token", "create", "gpu-node-17", "--db", str(db))
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    assert token.startswith("mtk_") and " " not in token and r.stdout.strip() == token
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT key_id, scope, name, secret_sha256 FROM tokens").fetchall()
    c.close()
    [(key_id, scope, name, digest)] = rows
    secret = token.split("_", 2)[2]
    assert (scope, name) == ("node", "gpu-node-17") and token == f"mtk_{key_id}_{secret}"
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    on_disk = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.name.startswith("c.db"))
    assert secret.encode() not in on_disk  # only the hash is on disk
    store = SQLiteStore(db)
    try:
        assert authenticate(store, f"Bearer {token}").name == "gpu-node-17"
        assert authenticate(store, f"Bearer {token[:-1]}{'A' if token[-1] != 'A' else 'B'}") is None
    finally:
        store.close()


def test_token_create_read_and_bad_names(db):
    r = meter("collector", "token", "create", "--read", "finance", "--db", db)
    store = open_store(db)
    try:
        assert authenticate(store, "Bearer " + r.stdout.strip()).scope == "read"
    finally:
        store.close()
    r = meter("collector", "token", "create", " padded ", "--db", db)
    assert r.exit_code != 0 and "Error:" in r.output


def _fill(db):
    store = open_store(db)
    try:
        events = minutes(3, prompt=1000, completion=500) + [make_event(start=T0 + 180, prompt=0, completion=0)]
        parsed, _ = check_batch(events)
        store.ingest(parsed)
    finally:
        store.close()
    return events


def test_export_csv_and_json(db):
    events = _fill(db)
    r = meter("collector", "export", "--db", str(db), "--since", "2026-11-28", "--until", "2026-11-29")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["period_start"], x["node"], x["model"]) for x in rows] == [
        ("2026-11-28T00:00:00Z", "n1", "(idle)"), ("2026-11-28T00:00:00Z", "n1", "llama-3.1-8b")]
    assert sum(int(x["cost_micro"]) for x in rows) == sum(e["data"]["cost"]["total_micro"] for e in events)
    busy = rows[1]
    assert busy["prompt_tokens"] == "3000" and busy["cost_per_mtok_micro"] == str(round(3 * 61_234 * 1e6 / 4500))
    r = meter("collector", "export", "--db", str(db), "--since", "2026-11-28", "--until", "2026-11-29",
              "--format", "json", "--period", "month")
    doc = json.loads(r.stdout)
    assert doc["period"] == "month" and doc["rows"][0]["period_start"] == "2026-11-01T00:00:00Z"
    assert doc["totals"][0]["cost_micro"] == 4 * 61_234


def test_export_refuses_bad_input(tmp_path):
    r = meter("collector", "export", "--db", str(tmp_path / "none.db"), "--since", "2026-11-28",
              "--until", "2026-11-29")
    assert r.exit_code == 1 and "no collector database at" in r.output
    _fill(tmp_path / "c.db")
    for since, until in (("soon", "2026-11-29"), ("2026-11-29", "2026-11-28")):
        r = meter("collector", "export", "--db", str(tmp_path / "c.db"), "--since", since, "--until", until)
        assert r.exit_code == 1 and "Error:" in r.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_is_a_real_process_that_ingests_and_stops_cleanly(db, sig):
    token = meter("collector", "token", "create", "n1", "--db", str(db)).stdout.strip()
    port = _free_port()
    with subprocess.Popen([sys.executable, "-m", "meterd.agent.cli", "collector", "serve", "--db", str(db),
                           "--listen", f"127.0.0.1:{port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as p:
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
                wait_healthy(c, p, timeout_s=15)
                r = post_batch(c, minutes(3), token)
                assert r.json() == {"received": 3, "accepted": 3, "duplicates": 0}
            p.send_signal(sig)
            p.wait(timeout=10)
        finally:
            p.kill()
        err = p.stderr.read()
    assert p.returncode == 0, err
    store = open_store(db)
    try:
        assert store.counts()["windows"] == 3
    finally:
        store.close()


def test_a_database_from_a_newer_collector_is_one_clear_line(tmp_path):
    db = tmp_path / "c.db"
    SQLiteStore(db).close()
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA user_version = 99")
    c.close()
    r = meter("collector", "token", "create", "n1", "--db", str(db))
    assert r.exit_code == 1
    assert r.output.strip() == (f"Error: {db} has schema version 99, newer than this meterd knows "
                                 f"({len(MIGRATIONS)}): "
                                 "it was written by a newer meterd; upgrade meterd to use it")
    assert "Traceback" not in r.output


def test_token_list_and_revoke(db):
    token = meter("collector", "token", "create", "n1", "--db", db).stdout.strip()
    meter("collector", "token", "create", "--read", "finance", "--db", db)
    key_id = token.split("_")[1]
    listed = meter("collector", "token", "list", "--db", db).stdout
    assert key_id in listed and "finance" in listed and token.split("_", 2)[2] not in listed
    assert meter("collector", "token", "revoke", key_id, "--db", db).exit_code == 0
    store = open_store(db)
    try:
        assert authenticate(store, f"Bearer {token}") is None
        assert [t.name for t in store.list_tokens()] == ["finance"]
    finally:
        store.close()
    r = meter("collector", "token", "revoke", key_id, "--db", db)
    assert r.exit_code == 1 and "no token" in r.output


def _closed_port() -> int:
    return _free_port()  # bound then released: nothing listens there


@pytest.mark.parametrize("url", ["mysql://u@127.0.0.1/db", "sqlite:///tmp/x.db", "http://127.0.0.1/x",
                                 "postgresql://meterd@127.0.0.1:{port}/nothing"])
def test_a_database_url_never_creates_a_local_file(tmp_path, monkeypatch, url):
    """Another scheme is one line naming what --db takes; an unreachable PostgreSQL is one line
    naming it (the password masked). Neither leaves anything in the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    url = url.format(port=_closed_port())
    for args in (("token", "create", "n1"), ("token", "list"), ("serve", "--listen", "127.0.0.1:1")):
        r = meter("collector", *args, "--db", url)
        assert r.exit_code == 1, r.output
        [line] = r.output.strip().splitlines()
        if url.startswith("postgresql"):
            assert line.startswith("Error: cannot connect to PostgreSQL at postgresql://meterd@127.0.0.1:")
        else:
            assert line == (f"Error: unsupported database URL {url!r}: give a file path (SQLite) or a "
                            "postgresql://USER@HOST/DATABASE URL")
    assert list(tmp_path.iterdir()) == []


def test_the_database_comes_from_db_then_the_environment_then_the_config(tmp_path, monkeypatch):
    from meterd.collector.cli import resolve_db
    from meterd.errors import ConfigError

    cfg = tmp_path / "meterd.toml"
    cfg.write_text(f'node = "n1"\n[collector]\ndb = "{tmp_path / "from-config.db"}"\n')
    assert resolve_db(None, str(cfg), env={}) == str(tmp_path / "from-config.db")
    assert resolve_db(None, str(cfg), env={"METERD_COLLECTOR_DB": "postgresql://a@b/c"}) == "postgresql://a@b/c"
    assert resolve_db("x.db", str(cfg), env={"METERD_COLLECTOR_DB": "y.db"}) == "x.db"
    assert resolve_db(None, None, env={}) is None
    # the same file configures the agent, which ignores the collector's table
    from meterd.agent.config import load_config

    assert load_config(cfg).node == "n1"
    for text, words in (('[collector]\ndatabase = "x"\n', "collector.database: unknown key"),
                        ("[collector]\ndb = 5\n", "collector.db: expected"), ("collector = 1\n", "a table")):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=words):
            resolve_db(None, str(cfg), env={})
    # through the CLI: --config, then the environment
    cfg.write_text(f'[collector]\ndb = "{tmp_path / "from-config.db"}"\n')
    monkeypatch.delenv("METERD_COLLECTOR_DB", raising=False)
    assert meter("collector", "token", "create", "n1", "--config", str(cfg)).exit_code == 0
    assert (tmp_path / "from-config.db").exists()
    monkeypatch.setenv("METERD_COLLECTOR_DB", str(tmp_path / "from-env.db"))
    assert meter("collector", "token", "create", "n1", "--config", str(cfg)).exit_code == 0
    assert (tmp_path / "from-env.db").exists()
