"""meterd/units.py and meterd/net.py: the one home of money and energy units, the time format,
and where to listen; and a guard that no package defines its own copy again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.collector.validation import parse_time
from meterd.net import parse_listen
from meterd.units import J_PER_KWH, MICRO, iso, parse_iso, to_micro

ROOT = Path(__file__).resolve().parents[1]


def test_units():
    assert MICRO == 1_000_000 and J_PER_KWH == 3_600_000 and isinstance(J_PER_KWH, int)
    assert to_micro("0.1") == 100_000 and to_micro(25_000) == 25_000 * MICRO and to_micro("0.0000005") == 0


def test_iso_round_trips_to_the_millisecond():
    assert iso(1_800_000_000) == "2027-01-15T08:00:00Z"
    assert iso(1_800_000_000.25) == "2027-01-15T08:00:00.250Z"
    for t in (0.0, 1_800_000_000.0, 1_800_000_000.125):
        assert parse_iso(iso(t)) == t


def test_parse_iso_takes_offsets_and_naive_utc_unless_told_not_to():
    assert parse_iso("2027-01-15T09:00:00+01:00") == 1_800_000_000
    assert parse_iso("2027-01-15T08:00:00") == 1_800_000_000 == parse_iso("2027-01-15T08:00Z")
    assert parse_iso("2027-01-15") == 1_800_000_000 - 8 * 3600
    with pytest.raises(ValueError, match="names no UTC offset"):
        parse_iso("2027-01-15T08:00:00", naive_is_utc=False)
    # the wire format's times name their offset: the collector's validation uses the strict form
    assert parse_time("2027-01-15T08:00:00Z") == 1_800_000_000 and parse_time("2027-01-15T08:00:00") is None


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9465", ("127.0.0.1", 9465)), ("[::1]:8650", ("::1", 8650)), (":9100", ("127.0.0.1", 9100)),
    ("localhost:0", ("localhost", 0)), ("node-7.example:65535", ("node-7.example", 65535)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, message", [
    ("127.0.0.1", "expected HOST:PORT"), ("127.0.0.1:http", "expected HOST:PORT"),
    ("127.0.0.1:99999", r"port 99999 is out of range \(0-65535\)"), ("a b:80", "is not a host name"),
])
def test_parse_listen_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_listen(text)


def test_every_listen_option_uses_the_one_parser(tmp_path):
    r = CliRunner().invoke(main, ["collector", "serve", "--db", str(tmp_path / "c.db"), "--listen", "127.0.0.1:99999"])
    assert r.exit_code == 2 and "port 99999 is out of range" in r.output and "Traceback" not in r.output
    cfg = tmp_path / "m.toml"
    cfg.write_text('[metrics]\nlisten = "127.0.0.1:99999"\n')
    r = CliRunner().invoke(main, ["config", "check", str(cfg)])
    assert r.exit_code == 1 and "metrics.listen: port 99999 is out of range" in r.output
    cfg.write_text('[push]\nlisten = "unix:/run/meterd/push.sock"\n')
    assert CliRunner().invoke(main, ["config", "check", str(cfg)]).exit_code == 0


# What has one home and must not be written again elsewhere: (pattern, the files allowed to hold it).
ONE_HOME = [
    (r"^\s*MICRO\s*=", {"meterd/units.py"}),
    (r"^\s*J_PER_KWH\s*=", {"meterd/units.py"}),
    (r"3\.6e6|3_600_000|3600000", {"meterd/units.py"}),
    (r"^def (iso|parse_iso)\(", {"meterd/units.py"}),
    (r"^def parse_listen\(", {"meterd/net.py"}),
    (r"^def default_db_path\(", {"agent/store.py", "collector/store.py"}),
    (r"PRAGMA journal_mode\s*=\s*WAL", {"meterd/sqlite_store.py"}),
    (r"PRAGMA user_version\s*=", {"meterd/sqlite_store.py"}),
]


def test_units_time_format_listen_and_store_setup_have_one_home():
    files = [str(p.relative_to(ROOT)) for d in ("meterd", "agent", "probes", "kernels", "reports", "collector", "bench")
             for p in sorted((ROOT / d).rglob("*.py"))]
    assert "meterd/units.py" in files
    found: dict[str, set[str]] = {}
    for f in files:
        text = (ROOT / f).read_text()
        for pattern, _ in ONE_HOME:
            if re.search(pattern, text, re.M):
                found.setdefault(pattern, set()).add(f)
    for pattern, home in ONE_HOME:
        assert found.get(pattern, set()) <= home, (pattern, found.get(pattern))


def test_first_line_of_an_exception_is_one_line_cut_or_its_type():
    from meterd.errors import first_line

    assert first_line(ValueError("no such table: usage\nat line 2")) == "no such table: usage"
    assert first_line(ValueError("x" * 400)) == "x" * 300
    assert first_line(ValueError("x" * 400), limit=None) == "x" * 400
    assert first_line(OSError()) == "OSError"
