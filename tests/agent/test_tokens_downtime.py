"""No token lost to the agent's downtime, and outages never shown as idle.

The agent runs as a real subprocess (the fake NVML, one GPU) scraping a fake llama.cpp server on
loopback; it is killed with SIGKILL while the server keeps serving, then restarted: every token
served after the first agent's first scrape is billed exactly once, the tokens of the downtime
in the restarted agent's first window, flagged ``backfill`` with the downtime's span."""

import json
import signal
import sqlite3
import time

import pytest

from tests.agent.test_agent_restart import meter, wait_for_windows, windows
from tests.fakes.servers import FakeInferenceServer


def _tokens(db):
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(cached_prompt_tokens), 0),"
                         " coalesce(sum(completion_tokens), 0) FROM windows").fetchone()
    finally:
        c.close()


def _wait_for_tokens(db, want, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _tokens(db) == want:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"tokens {_tokens(db)} != {want} after {timeout_s} s")


def _serve(srv, sent, n, prompt=40, completion=7, cached=0):
    for _ in range(n):
        srv.add("default", prompt=prompt, completion=completion, cached=cached)
        sent[0] += prompt
        sent[1] += cached
        sent[2] += completion


@pytest.mark.parametrize("server_restarts", [False, True])
def test_tokens_served_while_the_agent_is_killed_are_billed_once(tmp_path, server_restarts):
    db = tmp_path / "m.db"
    with FakeInferenceServer("llamacpp") as srv:
        srv.add("default", prompt=1000, completion=100)  # before the agent: never billed
        args = ("agent", "--db", str(db), "--window", "1", "--interval", "0.25",
                "--source", f"llamacpp={srv.url},model=gemma-3-270m")
        sent = [0, 0, 0]
        with meter(*args, gpus=1) as first:
            try:
                wait_for_windows(db, 2 * 2)  # the first scrape (the baseline) is long done
                _serve(srv, sent, 3)
                _serve(srv, sent, 2, cached=25)
                _wait_for_tokens(db, tuple(sent))
                _serve(srv, sent, 4, prompt=11, completion=3)
                time.sleep(0.6)  # scraped into the open window, which dies with the agent
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
            finally:
                first.kill()
            first.stderr.close()
        assert first.returncode == -signal.SIGKILL
        killed_at = time.time()
        lost = [0, 0, 0]
        if server_restarts:
            lost = list(sent)
            srv.restart()  # what it had served is no longer on its counters
            sent = [0, 0, 0]
            baseline = sum(w["prompt_tokens"] for w in windows(db))
        _serve(srv, sent, 5, prompt=9, completion=2, cached=4)  # while nobody meters
        time.sleep(1.2)
        with meter(*args, "--duration", "2", gpus=1) as second:
            _, err = second.communicate(timeout=30)
        assert second.returncode == 0, err

    ws = windows(db)
    got = _tokens(db)
    if not server_restarts:
        assert got == tuple(sent)  # every token once: nothing lost to the kill, nothing twice
        back = [w for w in ws if "backfill" in json.loads(w["flags"])]
        assert len(back) == 1 and back[0]["prompt_tokens"] == 4 * 11 + 5 * 9
        assert back[0]["backfill_s"] >= time.time() - killed_at - 10 and back[0]["backfill_s"] >= 1.2
        assert back[0]["token_source"] == "counter" and back[0]["cached_prompt_tokens"] == 5 * 4
    else:
        # counted from the server's new zero, the loss flagged; what was committed stays
        assert got[0] == baseline + sent[0] and got[0] < lost[0] + sent[0]
        flagged = [w for w in ws if "tokens_lost" in json.loads(w["flags"])]
        assert len(flagged) == 1 and flagged[0]["prompt_tokens"] == 5 * 9
    c = sqlite3.connect(db)
    models = {r[0] for r in c.execute("SELECT DISTINCT model FROM window_usage")}
    c.close()
    assert models == {"gemma-3-270m"}


def test_an_unreachable_token_source_is_an_outage_not_idle(fake_nvml, clock, tmp_path):
    from meterd.agent.config import Prices, SourceConfig, default_config, to_micro
    from meterd.agent.daemon import Agent
    from meterd.agent.sampler import Clocks
    from meterd.agent.store import Store
    from meterd.probes.devices import get_devices
    from tests.fakes.nvml import h100

    t0 = 1_800_000_000.0
    clock.t = t0
    fake_nvml([h100(curve=[(0.0, 300.0)])])
    mono = {"t": 0.0}
    with FakeInferenceServer("vllm", ["m"]) as srv:
        def sleep(s):
            clock.advance(s)
            mono["t"] += s
            now = clock() - t0
            srv.set_mode("error" if 2.0 <= now < 4.0 else "ok")  # down for windows 2 and 3
            if now < 2.0 or now >= 4.0:
                srv.add("m", 10, 5)

        prices = Prices(rental_per_gpu_hour_micro=to_micro("3.6"), energy_per_kwh_micro=0,
                        opex_per_node_month_micro=0)
        config = default_config(node="n", interval_s=0.5, window_s=1, prices=prices,
                                sources=(SourceConfig(kind="vllm", url=srv.url, name="vllm", devices=("0",)),))
        node = get_devices(clock=clock)
        store = Store(tmp_path / "m.db")
        Agent(config, store, node, clocks=Clocks(wall=clock, mono=lambda: mono["t"], boot=lambda: mono["t"],
                                                sleep=sleep)).run(duration_s=6.0)
        node.close()
    gpu = [w for w in store.windows() if w["device"].startswith("GPU-")]
    # A scrape belongs to the window open before its round: the failed scrapes at 2.0 .. 3.5 s
    # leave window [2, 3) without tokens, and half of [1, 2) and [3, 4) unread.
    by_start = {w["start"] - t0: w for w in gpu}
    assert [by_start[k]["token_gap_s"] for k in (1.0, 2.0, 3.0)] == [0.5, 1.0, 0.5]
    down = [by_start[2.0]]
    for w in down:
        assert w["prompt_tokens"] == 0 and w["token_source"] is None
    for k in (1.0, 2.0, 3.0):
        assert "tokens_unavailable" in json.loads(by_start[k]["flags"])
    up = [by_start[k] for k in (0.0, 4.0, 5.0)]
    assert all(w["token_gap_s"] == 0 and "tokens_unavailable" not in json.loads(w["flags"]) for w in up)
    roll = store.conn.execute(
        "SELECT sum(idle_cost_micro), sum(unavailable_cost_micro), sum(unavailable_seconds), sum(token_gap_s)"
        " FROM rollups WHERE period = 'hour' AND model = '' AND device LIKE 'GPU-%'").fetchone()
    assert roll[0] == 0  # never idle: the server was serving, we could not read it
    assert roll[1] == sum(w["cost_micro"] for w in down) > 0 and roll[2] == pytest.approx(1.0)
    assert roll[3] == pytest.approx(sum(w["token_gap_s"] for w in gpu))
    # the tokens served during the outage were not lost: the next good scrape carried them
    assert sum(w["prompt_tokens"] for w in gpu) == sum(c for c, _ in srv.totals().values())
    store.close()

    # meter report keeps the outage apart: its own row, never in (idle)
    from click.testing import CliRunner

    from meterd.agent.cli import main

    r = CliRunner().invoke(main, ["report", "--db", str(tmp_path / "m.db"), "--by", "model", "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    rows = {row["model"]: row for row in doc["rows"]}
    gpu_cost = sum(w["cost_micro"] for w in down)
    assert rows["(unavailable)"]["cost_micro"] == gpu_cost and rows["(unavailable)"]["tokens"] == 0
    assert rows["(unavailable)"]["unavailable_seconds"] == pytest.approx(1.0)
    assert rows["(unavailable)"]["idle_cost_micro"] == 0
    assert doc["totals"]["unavailable_cost_micro"] == gpu_cost
    idle = rows.get("(idle)")
    if idle is not None:  # the CPU, which no token source maps to, is idle
        assert idle["unavailable_cost_micro"] == 0
    assert doc["totals"]["cost_micro"] == sum(row["cost_micro"] for row in doc["rows"])
    table = CliRunner().invoke(main, ["report", "--db", str(tmp_path / "m.db"), "--by", "model", "--wide"])
    assert table.exit_code == 0 and "(unavailable)" in table.stdout and "is not idle" in " ".join(table.stdout.split())
