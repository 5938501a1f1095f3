"""Ingest benchmark: events/s the collector accepts beside raw inserts of the same rows, on each
backend, in the same run.

    python bench/collector_ingest.py [--events 20000] [--batch 500] [--repeat 5] [--pg URL]

    # both backends, PostgreSQL on a throwaway local server with fsync on:
    METERD_TEST_PG_FSYNC=on .ci/with-postgres .venv/bin/python bench/collector_ingest.py --events 10000 --repeat 7

The collector runs as its own process (`meter collector serve`) on 127.0.0.1; one httpx client
posts pre-serialized batches of `--batch` events (application/cloudevents-batch+json, bearer
token, dedupe by the unique (source, id) key), one after the other, and each must come back
accepted. A second figure: the same batches resent, all duplicates.

The baselines, in the same run, insert the rows the collector itself writes (the raw event, the
window, its usage rows: collector.store's own row builders), one transaction per batch, so both
sides pay the same number of durable commits:
- SQLite: `executemany` into the same schema, same pragmas (WAL, synchronous=FULL);
- PostgreSQL (with `--pg URL`, or $METERD_TEST_PG_URL): `COPY ... FROM STDIN` into the same
  schema (synchronous_commit on), in a database schema of its own that is dropped afterwards.

Each side runs --repeat times, interleaved, on fresh tables; printed: the median, the spread
(min-max) and the median of the per-run ratios (a shared machine's fsync times vary from one
run to the next, so the ratio of each run is the figure to trust).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

from meterd.agent.events import BATCH_CONTENT_TYPE, event_id, window_event  # noqa: E402
from meterd.collector.auth import create_token  # noqa: E402
from meterd.collector.store import (_EVENT_COLS, _USAGE_COLS, _WINDOW_COLS, SQLiteStore,  # noqa: E402
                                    child_rows, event_rows)
from meterd.collector.validation import check_batch  # noqa: E402

T0 = 1_795_824_000.0


def make_events(n: int) -> list[dict]:
    """n device-windows of one node: 8 GPUs, one minute each, two models."""
    events = []
    for i in range(n):
        device, minute = f"GPU-{i % 8}", i // 8
        start = T0 + 60 * minute
        prompt, completion = 1000 + i % 97, 400 + i % 31
        total = 61_234 + i % 1000
        cp = total * prompt // (prompt + completion)
        window = {
            "event_id": event_id("bench-node", device, start), "node": "bench-node", "device": device,
            "device_name": "NVIDIA H100 80GB HBM3", "start": start, "end": start + 60,
            "energy_j": 31_250.5, "energy_source": "counter", "avg_power_w": 520.8, "util_pct": 87.5,
            "prompt_tokens": prompt, "completion_tokens": completion,
            "cost_capex_micro": total - 11_234, "cost_energy_micro": 6_234, "cost_opex_micro": 5_000,
            "cost_micro": total, "cost_prompt_micro": cp, "cost_completion_micro": total - cp,
            "currency": "USD", "partial": 0, "gap_s": 0.0, "flags": "[]",
            "config_hash": "sha256:bench", "agent_version": "0.1.0",
        }
        half_p, half_c, half_cp, half_cc = prompt // 2, completion // 2, cp // 2, (total - cp) // 2
        usage = [
            {"model": "llama-3.1-8b", "tenant": "", "prompt_tokens": half_p, "completion_tokens": half_c,
             "cost_micro": half_cp + half_cc, "cost_prompt_micro": half_cp, "cost_completion_micro": half_cc},
            {"model": "qwen2.5-7b", "tenant": "", "prompt_tokens": prompt - half_p,
             "completion_tokens": completion - half_c, "cost_micro": total - half_cp - half_cc,
             "cost_prompt_micro": cp - half_cp, "cost_completion_micro": total - cp - half_cc},
        ]
        events.append(window_event(window, usage))
    return events


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_collector(db: str, bodies: list[bytes], n_events: int, token: str) -> tuple[float, float]:
    port = _free_port()
    cmd = [sys.executable, "-m", "meterd.agent.cli", "collector", "serve", "--db", db,
           "--listen", f"127.0.0.1:{port}"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as p:
        try:
            headers = {"content-type": BATCH_CONTENT_TYPE, "authorization": f"Bearer {token}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=headers) as c:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if c.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or p.poll() is not None:
                        p.kill()
                        raise SystemExit(f"the collector did not start: {p.stderr.read()[-2000:]}")
                    time.sleep(0.05)
                rates = []
                for want in ("accepted", "duplicates"):
                    t = time.perf_counter()
                    got = 0
                    for body in bodies:
                        r = c.post("/api/v1/events", content=body)
                        r.raise_for_status()
                        got += r.json()[want]
                    elapsed = time.perf_counter() - t
                    if got != n_events:
                        raise SystemExit(f"expected {n_events} {want}, got {got}")
                    rates.append(n_events / elapsed)
        finally:
            p.terminate()
            p.wait(timeout=10)
    return rates[0], rates[1]


def baseline_rows(batches: list[list[dict]]) -> list[tuple[list, list, list]]:
    """Per batch: (events, windows, usage) rows numbered by seq, from the collector's own row
    builders (flattening is not timed)."""
    out, seq = [], 0
    for b in batches:
        parsed = check_batch(b)[0]
        numbered = list(enumerate(parsed, start=seq + 1))
        ev = [(s, *r) for s, r in zip((n for n, _ in numbered), event_rows(parsed, 0.0))]
        out.append((ev, *child_rows(numbered)))
        seq += len(parsed)
    return out


def pg_rows(batches: list[list[dict]]):
    """The rows the PostgreSQL store writes: events with the id's millisecond, windows with the
    event id and arrival time, usage rows with their place in the event."""
    out, seq = [], 0
    all_parsed = []
    for b in batches:
        parsed = check_batch(b)[0]
        all_parsed += parsed
        numbered = list(enumerate(parsed, start=seq + 1))
        windows, usage = child_rows(numbered)
        ev = [(n, p.source, p.id, p.key_ms, 0.0, p.raw) for n, p in numbered]
        windows = [(*w, p.id, 0.0) for (_, p), w in zip(numbered, windows)]
        ords, last, k = [], None, 0
        for u in usage:
            k = k + 1 if u[0] == last else 0
            last = u[0]
            ords.append((*u, k))
        out.append((ev, windows, ords))
        seq += len(parsed)
    return out, all_parsed


def pg_sides(url: str, batches, bodies, n):
    """(raw COPY, collector) for PostgreSQL, each on a database of its own made for the run."""
    import psycopg

    from meterd.collector.pgstore import PG_USAGE_COLS, PG_WINDOW_COLS, PostgresStore

    rows, parsed = pg_rows(batches)

    def fresh_db() -> str:
        name = f"meterd_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return url.rsplit("/", 1)[0] + "/" + name

    def raw(tmp: Path) -> float:
        db = fresh_db()
        store = PostgresStore(db)  # the same schema, the same partitions
        store._ensure_partitions(parsed)
        store.close()
        cols = {"events": "seq, source, id, key_ms, received_at, raw",
                "windows": ", ".join(f'"{c}"' for c in PG_WINDOW_COLS), "usage": ", ".join(PG_USAGE_COLS)}
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SET search_path = meterd")
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] != "off"
            t = time.perf_counter()
            for batch in rows:
                with conn.transaction(), conn.cursor() as cur:
                    for table, r in zip(("events", "windows", "usage"), batch):
                        with cur.copy(f"COPY {table} ({cols[table]}) FROM STDIN") as copy:
                            for row in r:
                                copy.write_row(row)
            elapsed = time.perf_counter() - t
        return sum(len(b[0]) for b in rows) / elapsed

    def collector(tmp: Path) -> tuple[float, float]:
        db = fresh_db()
        store = PostgresStore(db)
        try:
            token = create_token(store, "bench-node")
        finally:
            store.close()
        return bench_collector(db, bodies, n, token)

    made: list[str] = []

    def drop_all() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            for name in made:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return raw, collector, drop_all


def sqlite_collector(tmp: Path, bodies, n) -> tuple[float, float]:
    db = tmp / "collector.db"
    store = SQLiteStore(db)
    try:
        token = create_token(store, "bench-node")
    finally:
        store.close()
    return bench_collector(str(db), bodies, n, token)


def sqlite_raw(tmp: Path, rows) -> float:
    """The same rows into the same schema with executemany, one transaction per batch."""
    store = SQLiteStore(tmp / "raw.db")  # creates the schema with the same pragmas
    conn = store.conn
    ph = lambda cols: ", ".join("?" * len(cols))  # noqa: E731
    sql = [f"INSERT INTO events (seq, {', '.join(_EVENT_COLS)}) VALUES (?, {ph(_EVENT_COLS)})",
           f"INSERT INTO windows ({', '.join(_WINDOW_COLS)}) VALUES ({ph(_WINDOW_COLS)})".replace(" end,", ' "end",'),
           f"INSERT INTO usage ({', '.join(_USAGE_COLS)}) VALUES ({ph(_USAGE_COLS)})"]
    try:
        t = time.perf_counter()
        for batch in rows:
            conn.execute("BEGIN IMMEDIATE")
            for stmt, r in zip(sql, batch):
                conn.executemany(stmt, r)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t
    finally:
        store.close()
    return sum(len(b[0]) for b in rows) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pg", default=os.environ.get("METERD_TEST_PG_URL"), metavar="URL",
                    help="also bench PostgreSQL on this server (a database per run, dropped after); "
                         "default $METERD_TEST_PG_URL")
    args = ap.parse_args()
    events = make_events(args.events)
    batches = [events[i:i + args.batch] for i in range(0, len(events), args.batch)]
    bodies = [json.dumps(b).encode() for b in batches]
    rows = baseline_rows(batches)
    sides = {"sqlite": (lambda tmp: sqlite_raw(tmp, rows), lambda tmp: sqlite_collector(tmp, bodies, args.events))}
    cleanup = []
    if args.pg:
        raw_pg, coll_pg, drop = pg_sides(args.pg, batches, bodies, args.events)
        sides["postgresql"] = (raw_pg, coll_pg)
        cleanup.append(drop)
    try:
        report(args, sides, bodies, len(events))
    finally:
        for drop in cleanup:
            drop()


def report(args, sides, bodies, n_events) -> None:
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in sides}
    for i in range(args.repeat):
        for name, (raw_fn, coll_fn) in sides.items():
            with tempfile.TemporaryDirectory() as tmp:
                raw = raw_fn(Path(tmp))
                accepted, dups = coll_fn(Path(tmp))
            runs[name].append((raw, accepted, dups))
            print(f"run {i + 1} {name}: raw {raw:,.0f}/s, collector {accepted:,.0f}/s "
                  f"({accepted / raw:.2f}x), resend {dups:,.0f}/s", flush=True)
    print(f"\nevents: {args.events} in batches of {args.batch} "
          f"({sum(map(len, bodies)) / n_events:.0f} bytes/event on the wire); {args.repeat} interleaved runs")
    baseline = {"sqlite": "raw SQLite executemany (WAL, FULL, 1 txn/batch)",
                "postgresql": "raw PostgreSQL COPY (synchronous_commit on, 1 txn/batch)"}
    for name, rs in runs.items():
        def fmt(vals, unit=" events/s", f="{:,.0f}"):
            return (f"median {f.format(statistics.median(vals))}{unit}, "
                    f"spread {f.format(min(vals))}-{f.format(max(vals))}")
        print(f"[{name}]")
        print(f"  {baseline[name]}: {fmt([r[0] for r in rs])}")
        print(f"  collector over HTTP, accepted (dedupe on): {fmt([r[1] for r in rs])}")
        print(f"  collector over HTTP, resend (all duplicates): {fmt([r[2] for r in rs])}")
        print(f"  ratio collector/raw per run: {fmt([r[1] / r[0] for r in rs], 'x', '{:.3f}')}")


if __name__ == "__main__":
    main()
