"""An operator's mistakes, through the CLI: each is one line naming what is wrong (and what to
do), exit status 1 (2 for a usage error), never a traceback."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.agent.store import Store
from tests.osenv import as_nobody, readonly_bind, run_meter, shared_dir
from tests.reports.conftest import fleet_windows


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line(r, *needles: str, code: int = 1) -> str:
    """The error line of a failed command; asserts it is the only line and names ``needles``."""
    out = r.output if hasattr(r, "exit_code") else r.stdout + r.stderr
    status = r.exit_code if hasattr(r, "exit_code") else r.returncode
    assert status == code, out
    assert "Traceback" not in out
    if hasattr(r, "exception") and r.exception is not None:
        assert isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [ln for ln in out.splitlines() if ln.strip() and " INFO " not in ln]
    if code == 2:  # click's usage errors: "Usage: ...", "Try ...", then the one Error line
        lines = [ln for ln in lines if ln.startswith("Error:")]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def fleet_db(tmp_path):
    s = Store(tmp_path / "meterd.db")
    s.commit_windows(fleet_windows())
    s.close()
    return tmp_path / "meterd.db"


# -- config ---------------------------------------------------------------------------------------


def test_config_init_into_a_missing_directory(tmp_path):
    one_line(invoke("config", "init", str(tmp_path / "missing" / "dir" / "m.toml")),
             "cannot write", "no directory", "create it first")


def test_config_init_into_a_directory_this_user_cannot_write():
    d = shared_dir()
    try:
        r = run_meter("config", "init", str(d / "m.toml"), prefix=as_nobody(d))
        one_line(r, f"cannot write {d / 'm.toml'}", "permission denied")
        assert not (d / "m.toml").exists()
    finally:
        shutil.rmtree(d)


def test_config_init_into_a_read_only_mount(tmp_path):
    with readonly_bind(tmp_path) as ro:
        one_line(invoke("config", "init", str(ro / "m.toml")), "cannot write", "Read-only file system")


def test_config_check_of_a_file_that_is_not_text(tmp_path):
    p = tmp_path / "m.toml"
    p.write_bytes(b'node = "n1"\n\xff\xfe\x00\x01')
    one_line(invoke("config", "check", str(p)), str(p), "not a TOML config", "not UTF-8")
    one_line(invoke("config", "check", str(tmp_path)), "is a directory", code=2)


# -- agent ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1:65536"])
def test_agent_metrics_port_out_of_range(tmp_path, listen):
    one_line(invoke("agent", "--db", str(tmp_path / "m.db"), "--duration", "1", "--metrics", listen),
             "--metrics", "out of range", "0-65535")
    assert not (tmp_path / "m.db").exists()  # refused before anything was opened


def test_agent_metrics_on_port_0_logs_the_port_it_bound(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="meterd")
    r = invoke("agent", "--db", str(tmp_path / "m.db"), "--window", "1", "--interval", "0.2",
               "--duration", "0.5", "--metrics", "127.0.0.1:0")
    assert r.exit_code == 0, r.output
    (line,) = [m for m in caplog.messages if "Prometheus metrics on" in m]
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)[1])
    assert port != 0


def test_token_file_without_ship_is_a_usage_error(tmp_path):
    tok = tmp_path / "tok"
    tok.write_text("t\n")
    tok.chmod(0o600)
    one_line(invoke("agent", "--db", str(tmp_path / "m.db"), "--duration", "1", "--token-file", str(tok)),
             "--token-file is for shipping", "--ship URL", code=2)
    cfg = tmp_path / "m.toml"
    cfg.write_text('node = "n1"\n')  # a config that ships nowhere either
    one_line(invoke("agent", "--config", str(cfg), "--db", str(tmp_path / "m.db"), "--duration", "1",
                    "--ca-file", str(tok)), "--ca-file is for shipping", code=2)
    cfg.write_text('[ship]\nurl = "http://127.0.0.1:9"\ntoken_file = "%s"\nca_file = "%s"\n' % (tok, tmp_path / "no.pem"))
    one_line(invoke("agent", "--config", str(cfg), "--db", str(tmp_path / "m.db"), "--duration", "1"),
             f"ship.ca_file {tmp_path / 'no.pem'}: not found")
    assert not (tmp_path / "m.db").exists()  # refused before the store was opened


# -- windows and outbox ---------------------------------------------------------------------------


def test_windows_for_a_device_the_store_does_not_have(fleet_db):
    one_line(invoke("windows", "--db", str(fleet_db), "--device", "GPU-7"),
             "no device 'GPU-7' in the store", "GPU-0, GPU-1")
    r = invoke("windows", "--db", str(fleet_db), "--device", "GPU-1", "--since", "2020-01-01",
               "--until", "2020-01-02")
    assert r.exit_code == 0 and "no windows stored for GPU-1 in that range" in r.output
    assert "run `meter agent`" not in r.output


def quarantine_two(db):
    s = Store(db)
    ids = [w["id"] for w in s.windows()][:2]
    s.quarantine(ids, "HTTP 400: schema")
    s.mark_shipped([[w["id"] for w in s.windows()][4]], 1.0)
    s.close()
    return ids


def test_outbox_retry_takes_db_after_the_subcommand(fleet_db):
    a, b = quarantine_two(fleet_db)
    r = invoke("outbox", "retry", "--db", str(fleet_db), str(a))
    assert r.exit_code == 0 and "1 window(s) back in the outbox" in r.output
    r = invoke("outbox", "--db", str(fleet_db), "retry")  # the old order still works
    assert r.exit_code == 0 and "1 window(s) back in the outbox" in r.output


def test_outbox_retry_of_ids_that_are_not_quarantined(fleet_db):
    a, _ = quarantine_two(fleet_db)
    line = one_line(invoke("outbox", "retry", "--db", str(fleet_db), "999", "3", "5", str(a)),
                    "#999 does not exist", "#3 is pending, not quarantined", "#5 is shipped",
                    "nothing retried", "meter outbox")
    assert f"#{a}" not in line
    s = Store(fleet_db)
    try:
        assert s.outbox_counts() == (2, 2)  # nothing changed
    finally:
        s.close()


# -- report and bench -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["html", "csv", "json", "table"])
def test_report_output_into_a_missing_directory(fleet_db, tmp_path, fmt):
    out = tmp_path / "missing" / "dir" / f"r.{fmt}"
    one_line(invoke("report", "--db", str(fleet_db), "--format", fmt, "--output", str(out)),
             f"cannot write {out}", "no directory")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_report_output_into_a_read_only_directory(fleet_db, tmp_path, fmt):
    (tmp_path / "out").mkdir()
    with readonly_bind(tmp_path / "out") as ro:
        one_line(invoke("report", "--db", str(fleet_db), "--format", fmt, "--output", str(ro / "r")),
                 f"cannot write {ro / 'r'}", "Read-only file system")


def test_bench_without_cupy_or_nvml_notes_the_gpu_rows_left_out(tmp_path):
    r = invoke("bench", "--tiny", "--json", "--db", str(tmp_path / "b.db"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert {x["device"] for x in doc["results"]} == {"cpu"}
    (note,) = [n for n in doc["notes"] if n.startswith("GPU rows left out")]
    assert "NVML" in note
    r = invoke("bench", "--tiny", "--db", str(tmp_path / "b.db"))
    assert r.exit_code == 0 and "GPU rows left out" in r.output
    if importlib.util.find_spec("cupy") is None:
        assert "meterd[gpu]" in r.output  # the note's brackets are text, not markup
    r = invoke("bench", "--tiny", "--json", "--device", "cpu", "--db", str(tmp_path / "b.db"))
    assert not [n for n in json.loads(r.output)["notes"] if n.startswith("GPU rows")]  # asked for the CPU


# -- the example config -----------------------------------------------------------------------------


def uncomment(text: str) -> str:
    """Every commented TOML line of the example (a table header or a key = value) made live;
    prose comments stay comments."""
    live = re.compile(r'^# (\[\[?[\w."-]+\]\]?|[A-Za-z_][\w-]* = |"[^"]+" = )')
    return "\n".join(line[2:] if live.match(line) else line for line in text.splitlines()) + "\n"


def test_the_example_config_checks_with_everything_uncommented(tmp_path):
    p = tmp_path / "m.toml"
    assert invoke("config", "init", str(p)).exit_code == 0
    text = uncomment(p.read_text())
    assert text.count("\n# [") == 0 and "\n[ship]" in text and '\n[models."qwen2.5-32b"]' in text
    assert "\nrental_per_gpu_hour = " in text and "\ntoken_file = " in text
    p.write_text(text)
    r = invoke("config", "check", str(p), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert "qwen2.5-32b" in doc["models"] and doc["sources"][0]["kind"] == "vllm"
    assert doc["prices"]["tariff"] and doc["ship_url"] == "https://collector.internal:8650"


# -- reading a store this user may read but not write ---------------------------------------------


def test_read_commands_on_a_store_owned_by_another_user(tmp_path):
    """The systemd layout: the store belongs to the agent's user (here root), mode 0644 in a
    0755 directory; the operator (here nobody) reads it: report, windows and outbox work, and
    nothing is created or written, in the directory or the file."""
    d = shared_dir()
    try:
        s = Store(d / "meterd.db")
        s.commit_windows(fleet_windows())
        s.close()  # the last connection closes: the WAL is checkpointed and removed
        (d / "meterd.db").chmod(0o644)
        prefix = as_nobody(d)
        before = sorted(p.name for p in d.iterdir()), (d / "meterd.db").read_bytes(), (d / "meterd.db").stat().st_mtime_ns
        db = str(d / "meterd.db")
        env = {"HOME": str(d / "home-of-nobody")}  # not there: nothing may be made in it either
        r = run_meter("windows", "--db", db, "--json", prefix=prefix, env=env)
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)) == 5
        r = run_meter("report", "--db", db, "--format", "json", prefix=prefix, env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["totals"]["cost_micro"] == 9300
        r = run_meter("outbox", "--db", db, "--json", prefix=prefix, env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["pending"] == 5
        r = run_meter("outbox", "retry", "--db", db, prefix=prefix, env=env)  # a write: refused, one line
        one_line(r, "cannot be written by this user")
        after = sorted(p.name for p in d.iterdir()), (d / "meterd.db").read_bytes(), (d / "meterd.db").stat().st_mtime_ns
        assert after == before

        # While the agent runs, its store has a write-ahead log (-wal, -shm: 0644 by its umask):
        # the other user reads through them, and sees what the agent committed last.
        agent = Store(d / "meterd.db")
        try:
            w, u = fleet_windows()[0]
            agent.commit_windows([({**w, "device": "GPU-9", "event_id": "e-live"}, [])])
            assert (d / "meterd.db-wal").exists()
            r = run_meter("windows", "--db", db, "--device", "GPU-9", "--json", prefix=prefix, env=env)
            assert r.returncode == 0, r.stderr
            assert [x["device"] for x in json.loads(r.stdout)] == ["GPU-9"]
        finally:
            agent.close()
        assert not (d / "home-of-nobody").exists()
    finally:
        shutil.rmtree(d)


def test_collector_client_ca_needs_a_certificate(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used\n")
    one_line(invoke("collector", "serve", "--db", str(tmp_path / "c.db"), "--client-ca", str(ca)),
             "--client-ca needs --certfile and --keyfile", code=2)
    assert not (tmp_path / "c.db").exists()
