"""Tables on an 80-column terminal: `meter windows`, `meter status` and `meter report` keep the
columns that matter most, say which were left out and how to see them (--wide, --json), and
never show a cell cut to "…"; narrower still, one record per block."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from rich.cells import cell_len

from meterd.agent.cli import main
from meterd.agent.store import Store
from tests.fakes.nvml import a100, h100
from tests.reports.conftest import fleet_windows


def at_width(width: int, *args: str) -> str:
    """The command's output on a terminal this wide (rich: FORCE_COLOR makes it a terminal,
    COLUMNS sets the width), its escape codes taken out."""
    r = CliRunner().invoke(main, list(args), env={"FORCE_COLOR": "1", "TERM": "xterm", "COLUMNS": str(width),
                                                  "NO_COLOR": "1"}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return re.sub(r"\x1b\[[0-9;]*m", "", r.output)


def fits(out: str, width: int) -> None:
    assert "…" not in out, out  # no cell (nor anything else) cut to an ellipsis
    too_wide = [ln for ln in out.splitlines() if cell_len(ln) > width]
    assert not too_wide, too_wide


@pytest.fixture
def fleet_db(tmp_path):
    s = Store(tmp_path / "meterd.db")
    s.commit_windows(fleet_windows())
    s.close()
    return str(tmp_path / "meterd.db")


def test_windows_at_80_columns(fleet_db):
    out = at_width(80, "windows", "--db", fleet_db)
    fits(out, 80)
    header = next(ln for ln in out.splitlines() if "start" in ln)
    for col in ("start", "device", "cost", "per Mtok", "energy J"):
        assert col in header
    assert "2026-11-23T01:00:00Z" in out and "0.002000" in out and "GPU-1" in out
    assert "column(s) left out at 80 columns: " in out and "--wide shows them" in out
    wide = at_width(80, "windows", "--db", fleet_db, "--wide")
    assert "completion" in wide and "left out" not in wide and "…" not in wide


def test_windows_narrower_than_the_kept_columns_is_one_record_per_block(fleet_db):
    out = at_width(32, "windows", "--db", fleet_db)  # start and device need 33 as a table
    fits(out, 32)
    assert "     start: 2026-11-23T01:00:00Z" in out and "completion: 1000" in out
    assert out.count("    device: ") == 5


def test_status_at_80_columns_with_gpus(fake_nvml):
    fake_nvml([h100(curve=[(0, 300.0)]), a100(curve=[(0, 200.0)])])
    out = at_width(80, "status")
    fits(out, 80)
    assert "NVIDIA H100 80GB HBM3" in out and "300.0" in out and "instant" in out
    assert "left out at 80 columns" in out and "--wide" in out
    wide = at_width(200, "status")
    assert "clock MHz" in wide and "left out" not in wide


def test_report_at_80_columns(fleet_db):
    out = at_width(80, "report", "--db", fleet_db)
    fits(out, 80)
    header = next(ln for ln in out.splitlines() if ln.startswith(" model"))
    for col in ("model", "device", "cost", "/Mtok", "prompt", "compl."):
        assert col in header
    assert "(idle)" in out and "0.0093" in out  # the keys whole, the total cost
    assert "left out at 80 columns: capex, energy, opex" in out and "--format csv or json" in out
    wide = at_width(80, "report", "--db", fleet_db, "--wide")
    assert "real÷cap" in wide and "left out" not in wide
