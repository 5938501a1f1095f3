"""`meter report` at scale: a year of minute windows for 8 GPUs (4,204,800 windows), reported by
day, by model and by hour and device through the rollups, beside a direct SQL aggregate over the
raw windows in the same run. Prints both times and their ratio. Targets on a year: by hour and
device (70,080 rows) in at most 400 ms and at least 10x faster than the raw-SQL aggregate; by
model and hour in at most 500 ms. Then the HTML page (`meter report --format html`) of three
years (``--html-years``, a second store) in at most 1 s and 150 MiB peak RSS, measured in a fresh
process after its imports.

    nice -n 19 python bench/report_scale.py [--fraction 1.0] [--db PATH] [--keep] [--reuse]
                                            [--html-years 3] [--html-db PATH]

``--reuse`` with ``--db`` reports over a store an earlier ``--keep`` run built (building one takes
minutes); the store's schema is migrated on opening, as the agent's would be.

The store is built the fast way a benchmark may: windows and usage rows inserted with
executemany in large transactions (synchronous=OFF for the load only; the agent's store runs
FULL), then the hourly and daily rollups built by one bulk SQL statement per kind that sums
exactly what agent.store's per-window roll-up adds (checked here against Store.commit_windows on
a small sample). ``--fraction`` scales the year down (the days kept are printed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from meterd.agent.events import event_id  # noqa: E402
from meterd.agent.store import Store  # noqa: E402
from meterd.reports.aggregate import aggregate  # noqa: E402
from meterd.reports.query import Filters, read_store  # noqa: E402
from meterd.units import J_PER_KWH, iso  # noqa: E402

START = 1_764_547_200.0  # 2025-12-01T00:00:00Z
GPUS = 8
MODELS = ("llama-3.1-70b", "llama-3.1-8b", "gpt-oss-120b")
BATCH = 200_000

W_COLS = ("id", "node", "device", "device_name", "start", "end", "energy_j", "energy_source",
          "avg_power_w", "util_pct", "prompt_tokens", "completion_tokens", "cost_capex_micro",
          "cost_energy_micro", "cost_opex_micro", "cost_micro", "cost_prompt_micro",
          "cost_completion_micro", "currency", "partial", "gap_s", "flags", "config_hash",
          "agent_version", "event_id", "shipped_at")
U_COLS = ("window_id", "model", "tenant", "prompt_tokens", "completion_tokens", "cost_micro",
          "cost_prompt_micro", "cost_completion_micro", "cost_capex_micro", "cost_energy_micro",
          "cost_opex_micro", "energy_j")


def window_rows(minutes: int, first_id: int = 1, node: str = "node-1", start: float = START):
    """(window row, usage rows) per GPU-minute: ~20 % idle, one model per busy window (GPUs
    share three models), a daily load curve. Deterministic arithmetic, no RNG state."""
    wid = first_id
    for m in range(minutes):
        t = start + 60 * m
        hour = (m // 60) % 24
        load = 0.35 + 0.6 * (1 - abs(hour - 14) / 14)  # busiest at 14:00 UTC
        for g in range(GPUS):
            h = (m * 2654435761 + g * 40503) & 0xFFFF
            idle = h % 5 == 0
            watts = 120.0 if idle else 250.0 + 400.0 * load * ((h % 97) / 96)
            energy_j = watts * 60
            capex, opex = 21_390, 1_140  # micro per minute (a ~30 k GPU over 4 years, opex)
            energy_micro = round(energy_j * 1.3 / J_PER_KWH * 120_000)
            total = capex + opex + energy_micro
            device = f"GPU-{g}"
            if idle:
                p = c = cp = cc = 0
                usage = []
            else:
                p = int(40_000 * load) + (h % 4000)
                c = int(12_000 * load) + (h % 1500)
                cp = total * p // (p + 3 * c)
                cc = total - cp
                ux = capex  # one usage row takes the whole window
                usage = [(wid, MODELS[g % 3], "" if g < 6 else "acme", p, c, total, cp, cc, ux,
                          energy_micro, opex, energy_j)]
            yield (wid, node, device, "NVIDIA H100 80GB HBM3", t, t + 60, energy_j, "counter", watts,
                   5.0 if idle else 60.0 + 35.0 * load, p, c, capex, energy_micro, opex, total, cp, cc,
                   "USD", 0, 0.0, "[]", "sha256:bench", "0.1.0", event_id(node, device, t), t + 90), usage
            wid += 1


def load(store: Store, minutes: int) -> int:
    conn = store.conn
    conn.execute("PRAGMA synchronous = OFF")
    w_sql = f"INSERT INTO windows ({', '.join(W_COLS)}) VALUES ({', '.join('?' * len(W_COLS))})"
    u_sql = f"INSERT INTO window_usage ({', '.join(U_COLS)}) VALUES ({', '.join('?' * len(U_COLS))})"
    n = 0
    ws, us = [], []
    for w, u in window_rows(minutes):
        ws.append(w)
        us.extend(u)
        if len(ws) >= BATCH:
            with store.transaction():
                conn.executemany(w_sql, ws)
                conn.executemany(u_sql, us)
            n += len(ws)
            ws, us = [], []
            print(f"  {n:,} windows", end="\r", file=sys.stderr, flush=True)
    with store.transaction():
        conn.executemany(w_sql, ws)
        conn.executemany(u_sql, us)
    n += len(ws)
    return n


_ROLLUP_COLS = ("period, bucket, node, device, model, tenant, windows, seconds, energy_j, util_pct_s, "
                "prompt_tokens, completion_tokens, cost_capex_micro, cost_energy_micro, cost_opex_micro, "
                "cost_micro, cost_prompt_micro, cost_completion_micro, idle_cost_micro, idle_seconds, "
                "idle_util_pct_s, cached_prompt_tokens, token_gap_s, unavailable_seconds, "
                "unavailable_cost_micro, rounded_tokens")
# The rules of agent/store.py's _roll_up: a window without tokens is idle unless its token
# source could not be read (token_gap_s > 0): then it is unavailable.
_IDLE = "prompt_tokens + completion_tokens = 0 AND token_gap_s = 0"
_UNAVAILABLE = "prompt_tokens + completion_tokens = 0 AND token_gap_s > 0"
ROLLUP_SQL = {
    "whole": f"""
        INSERT INTO rollups ({_ROLLUP_COLS}) SELECT ?, (CAST(start AS INTEGER) / ?) * ?, node, device, '', '',
            count(*), sum(end - start), sum(coalesce(energy_j, 0)),
            sum(coalesce(util_pct, 0) * (end - start)), sum(prompt_tokens), sum(completion_tokens),
            sum(cost_capex_micro), sum(cost_energy_micro), sum(cost_opex_micro), sum(cost_micro),
            sum(cost_prompt_micro), sum(cost_completion_micro),
            sum(CASE WHEN {_IDLE} THEN cost_micro ELSE 0 END),
            sum(CASE WHEN {_IDLE} THEN end - start ELSE 0.0 END),
            sum(CASE WHEN {_IDLE} THEN coalesce(util_pct, 0) * (end - start) ELSE 0.0 END),
            sum(cached_prompt_tokens), sum(token_gap_s),
            sum(CASE WHEN {_UNAVAILABLE} THEN end - start ELSE 0.0 END),
            sum(CASE WHEN {_UNAVAILABLE} THEN cost_micro ELSE 0 END),
            sum(CASE WHEN token_source = 'rounded' THEN prompt_tokens + completion_tokens ELSE 0 END)
        FROM windows GROUP BY 2, node, device""",
    "usage": f"""
        INSERT INTO rollups ({_ROLLUP_COLS}) SELECT ?, (CAST(w.start AS INTEGER) / ?) * ?, w.node, w.device, u.model,
            u.tenant, count(*), sum(w.end - w.start), sum(coalesce(u.energy_j, 0)),
            sum(coalesce(w.util_pct, 0) * (w.end - w.start)), sum(u.prompt_tokens),
            sum(u.completion_tokens), sum(u.cost_capex_micro), sum(u.cost_energy_micro),
            sum(u.cost_opex_micro), sum(u.cost_micro), sum(u.cost_prompt_micro),
            sum(u.cost_completion_micro), 0, 0.0, 0.0, sum(u.cached_prompt_tokens), 0.0, 0.0, 0,
            sum(CASE WHEN u.token_source = 'rounded' THEN u.prompt_tokens + u.completion_tokens ELSE 0 END)
        FROM window_usage u JOIN windows w ON w.id = u.window_id
        GROUP BY 2, w.node, w.device, u.model, u.tenant""",
}


def build_rollups(store: Store) -> None:
    with store.transaction() as c:
        for period, size in (("hour", 3600), ("day", 86400)):
            for sql in ROLLUP_SQL.values():
                c.execute(sql, (period, size, size))


def check_rollups_match_the_store(tmp: Path) -> None:
    """The bulk SQL sums exactly what Store.commit_windows rolls up, window by window."""
    rows = list(window_rows(150, start=START + 3 * 3600 + 1800))
    as_store = []
    for w, u in rows:
        d = dict(zip(W_COLS, w))
        d.pop("id"), d.pop("shipped_at")
        as_store.append((d, [dict(zip(U_COLS[1:], x[1:])) for x in u]))
    a = Store(tmp / "a.db")
    a.commit_windows(as_store)
    b = Store(tmp / "b.db")
    with b.transaction() as c:
        c.executemany(f"INSERT INTO windows ({', '.join(W_COLS)}) VALUES ({', '.join('?' * len(W_COLS))})",
                      [w for w, _ in rows])
        c.executemany(f"INSERT INTO window_usage ({', '.join(U_COLS)}) VALUES ({', '.join('?' * len(U_COLS))})",
                      [x for _, u in rows for x in u])
    build_rollups(b)
    q = "SELECT * FROM rollups ORDER BY period, bucket, node, device, model, tenant"

    def rounded(conn):
        return [tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in conn.execute(q)]

    assert rounded(a.conn) == rounded(b.conn), "bulk rollups differ from the store's"
    a.close(), b.close()


def timed(fn, repeat: int = 3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times[0], out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0, help="of a year (1.0 = 365 days)")
    ap.add_argument("--db", help="build here (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--reuse", action="store_true", help="with --db: report over the store already there")
    ap.add_argument("--html-years", type=float, default=3.0, help="years of the HTML page's store (0: skip it)")
    ap.add_argument("--html-db", help="build the HTML page's store here (with --reuse: use the one there)")
    if len(sys.argv) == 6 and sys.argv[1] == "--html-child":
        return html_child(*sys.argv[2:])
    args = ap.parse_args()
    if args.reuse and not (args.db and Path(args.db).exists()):
        ap.error("--reuse needs --db PATH of a store an earlier --keep run built")
    days = max(1, round(365 * args.fraction))
    tmpdir = Path(tempfile.mkdtemp(prefix="report-scale-"))
    path = Path(args.db) if args.db else tmpdir / "meterd.db"
    check_rollups_match_the_store(tmpdir)

    store = Store(path)
    if args.reuse:
        n = store.conn.execute("SELECT count(*) FROM windows").fetchone()[0]
        first, last = store.conn.execute("SELECT min(start), max(start) FROM windows").fetchone()
        days = round((last - first) / 86400)
        built = "reused"
    else:
        t0 = time.perf_counter()
        n = load(store, days * 1440)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_rollups(store)
        built = f"load {t_load:.1f} s, rollups {time.perf_counter() - t0:.1f} s"
    size_mb = sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 1e6
    print(f"store: {days} days ({days / 365:.3f} of a year) x {GPUS} GPUs = {n:,} windows, "
          f"{store.conn.execute('SELECT count(*) FROM window_usage').fetchone()[0]:,} usage rows, "
          f"{store.conn.execute('SELECT count(*) FROM rollups').fetchone()[0]:,} rollup rows, {size_mb:,.0f} MB; "
          f"{built}")
    store.conn.execute("PRAGMA synchronous = FULL")

    def report(by):
        return lambda: aggregate(read_store(store, by, Filters()), by)

    def direct_day():
        return store.conn.execute(
            "SELECT CAST(start AS INTEGER) / 86400 AS day, sum(prompt_tokens), sum(completion_tokens),"
            " sum(energy_j), sum(cost_capex_micro), sum(cost_energy_micro), sum(cost_opex_micro),"
            " sum(cost_micro), sum(cost_prompt_micro), sum(cost_completion_micro),"
            " sum(coalesce(util_pct, 0) * (end - start)), sum(end - start),"
            " sum(CASE WHEN prompt_tokens + completion_tokens = 0 THEN cost_micro ELSE 0 END)"
            " FROM windows GROUP BY day ORDER BY day").fetchall()

    def direct_model():
        return store.conn.execute(
            "SELECT u.model, sum(u.prompt_tokens), sum(u.completion_tokens), sum(u.energy_j),"
            " sum(u.cost_capex_micro), sum(u.cost_energy_micro), sum(u.cost_opex_micro),"
            " sum(u.cost_micro), sum(u.cost_prompt_micro), sum(u.cost_completion_micro),"
            " sum(coalesce(w.util_pct, 0) * (w.end - w.start)), sum(w.end - w.start)"
            " FROM window_usage u JOIN windows w ON w.id = u.window_id GROUP BY u.model ORDER BY u.model"
        ).fetchall()

    def direct_model_hour():
        return store.conn.execute(
            "SELECT u.model, CAST(w.start AS INTEGER) / 3600 AS hour, sum(u.prompt_tokens),"
            " sum(u.completion_tokens), sum(u.energy_j), sum(u.cost_capex_micro), sum(u.cost_energy_micro),"
            " sum(u.cost_opex_micro), sum(u.cost_micro), sum(u.cost_prompt_micro), sum(u.cost_completion_micro)"
            " FROM window_usage u JOIN windows w ON w.id = u.window_id GROUP BY u.model, hour ORDER BY u.model, hour"
        ).fetchall()

    def direct_hour_device():
        return store.conn.execute(
            "SELECT CAST(start AS INTEGER) / 3600 AS hour, sum(prompt_tokens), sum(completion_tokens),"
            " sum(energy_j), sum(cost_capex_micro), sum(cost_energy_micro), sum(cost_opex_micro),"
            " sum(cost_micro), device FROM windows GROUP BY hour, device ORDER BY hour, device").fetchall()

    print(f"{'report':<28}{'rollups (best / first)':>26}{'raw SQL (best / first)':>26}{'ratio':>10}")
    got: dict[str, tuple[float, float]] = {}
    for label, by, direct, repeat, cost_col in (
            ("by day", ["day"], direct_day, 3, 7), ("by model", ["model"], direct_model, 3, 7),
            ("by hour, device", ["hour", "device"], direct_hour_device, 1, 7),
            ("by model, hour", ["model", "hour"], direct_model_hour, 1, 8)):
        best, first, rep = timed(report(by))
        dbest, dfirst, raw = timed(direct, repeat)  # over every raw window: seconds each
        # The same money either way: the raw aggregate's cost equals the report's total.
        assert rep.totals["cost_micro"] == sum(r[cost_col] for r in raw) + (
            rep.totals["idle_cost_micro"] if "model" in by else 0), label
        if by == ["hour", "device"]:
            assert len(rep.rows) == len(raw), label
        got[label] = (best, dbest)
        print(f"{label:<28}{best * 1e3:>13.1f} / {first * 1e3:>6.1f} ms"
              f"{dbest * 1e3:>13.1f} / {dfirst * 1e3:>6.1f} ms{dbest / best:>9.0f}x")
    for label, by in (("by week (from days)", ["week"]), ("by hour", ["hour"])):
        best, first, rep = timed(report(by))
        print(f"{label:<28}{best * 1e3:>13.1f} / {first * 1e3:>6.1f} ms   ({len(rep.rows):,} rows)")
    # A range that is not whole days: hours and raw minutes at its ends.
    lo, hi = START + 1234, START + days * 86400 - 4321
    best, first, rep = timed(lambda: aggregate(read_store(store, ["model", "device"], Filters(lo, hi)),
                                               ["model", "device"]))
    print(f"{'model,device, ragged range':<28}{best * 1e3:>13.1f} / {first * 1e3:>6.1f} ms")
    hd, hd_raw = got["by hour, device"]
    mh = got["by model, hour"][0]
    year = f"{days / 365:.3f} of a year"
    print(f"target: {year} by hour, device in {hd * 1e3:,.0f} ms (<= 400 ms) and {hd_raw / hd:.1f}x faster than "
          f"raw SQL (>= 10x): {'met' if hd <= 0.4 and hd_raw / hd >= 10 else 'MISSED'}")
    print(f"target: {year} by model, hour in {mh * 1e3:,.0f} ms (<= 500 ms): {'met' if mh <= 0.5 else 'MISSED'}")
    # What a script gets: the same report rendered (every figure of every row, as text).
    from meterd.reports.render import render_csv, render_json

    for fmt, render in (("CSV", render_csv), ("JSON", render_json)):
        best, _, text = timed(lambda: render(aggregate(read_store(store, ["hour", "device"], Filters()),
                                                       ["hour", "device"])), 1)
        print(f"{'by hour, device as ' + fmt:<28}{best * 1e3:>13.1f} ms   (report and rendering: "
              f"{len(text) / 1e6:,.0f} MB of text)")
    store.close()
    # The whole command as a user runs it: a fresh process, imports, the query, JSON out.
    cmd = [sys.executable, "-m", "meterd.agent.cli", "report", "--db", str(path), "--by", "day", "--format", "json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    print(f"{'`meter report --by day` process':<28}{wall * 1e3:>13.1f} ms wall (start-up and imports included)")
    if args.html_years:
        html_page(args, tmpdir)
    if not args.keep and not args.db:
        for f in tmpdir.iterdir():
            f.unlink()
        os.rmdir(tmpdir)
    elif args.keep:
        print(f"kept {path}")


def html_page(args, tmpdir: Path) -> None:
    """`meter report --format html` over ``--html-years`` years, in a fresh process: its time
    after the imports and its peak RSS."""
    days = round(365 * args.html_years)
    path = Path(args.html_db) if args.html_db else tmpdir / "meterd-html.db"
    if not (args.reuse and path.exists()):
        for f in path.parent.glob(path.name + "*"):
            f.unlink()
        store = Store(path)
        t0 = time.perf_counter()
        n = load(store, days * 1440)
        build_rollups(store)
        store.close()
        print(f"html store: {days} days x {GPUS} GPUs = {n:,} windows; built in {time.perf_counter() - t0:.0f} s")
    else:
        Store(path).close()  # migrated, as the agent would, before the read-only report opens it
    out = tmpdir / "report.html"
    since, until = iso(START), iso(START + days * 86400)
    r = subprocess.run([sys.executable, __file__, "--html-child", str(path), str(out), since, until],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    wall, rss = (float(x) for x in r.stdout.split())
    size = out.stat().st_size
    print(f"{'html page, ' + str(args.html_years) + ' years':<28}{wall * 1e3:>13.1f} ms, peak RSS {rss / 2**20:,.0f} MiB, "
          f"{size / 1e3:,.0f} kB page")
    print(f"target: the html page of {args.html_years} years in {wall * 1e3:,.0f} ms (<= 1,000 ms) and "
          f"{rss / 2**20:,.0f} MiB (<= 150 MiB): {'met' if wall <= 1.0 and rss <= 150 * 2**20 else 'MISSED'}")
    out.unlink()
    if not args.keep and not args.html_db:
        for f in path.parent.glob(path.name + "*"):
            f.unlink()


def html_child(db: str, out: str, since: str, until: str) -> None:
    from click.testing import CliRunner

    from meterd.agent.cli import main as meter
    import meterd.reports.html  # noqa: F401 - imported before the clock starts, as the others

    argv = ["report", "--db", db, "--since", since, "--until", until, "--format", "html", "--output", out]
    t0 = time.perf_counter()
    r = CliRunner().invoke(meter, argv)
    wall = time.perf_counter() - t0
    if r.exit_code != 0:
        raise SystemExit(f"meter report failed: {r.output}")
    # VmHWM: this process's peak RSS. (ru_maxrss would not do: Linux keeps it across execve, so a
    # child forked from this bench's parent would report the parent's peak.)
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    print(wall, hwm)


if __name__ == "__main__":
    main()
