"""Ingest benchmark: events/s the collector accepts beside raw SQLite inserts of the same rows.

    python bench/collector_ingest.py [--events 20000] [--batch 500]

The collector runs as its own process (`meter collector serve`) on 127.0.0.1; one httpx client
posts pre-serialized batches of `--batch` events (application/cloudevents-batch+json, bearer
token, dedupe by the UNIQUE (source, id) constraint), one after the other, and each must come
back accepted. The baseline, in the same run: the same rows (raw event, window, usage) inserted
with executemany into the same schema, same pragmas (WAL, synchronous=FULL), one transaction per
batch, so both sides pay the same number of fsyncs. A third figure: the same batches resent,
all duplicates. Each side runs --repeat times, interleaved, each time on a fresh database; the
medians are printed (a shared machine's fsync times vary a lot from one run to the next), with
both rates and the ratio.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

from meterd.agent.events import BATCH_CONTENT_TYPE, event_id, window_event  # noqa: E402
from meterd.collector.auth import create_token  # noqa: E402
from meterd.collector.store import SQLiteStore, insert_rows, table_rows  # noqa: E402
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


def bench_collector(db: Path, bodies: list[bytes], n_events: int) -> tuple[float, float]:
    store = SQLiteStore(db)
    try:
        token = create_token(store, "bench-node")
    finally:
        store.close()
    port = _free_port()
    cmd = [sys.executable, "-m", "meterd.agent.cli", "collector", "serve", "--db", str(db),
           "--listen", f"127.0.0.1:{port}"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as p:
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
                        raise SystemExit("the collector did not start")
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


def bench_sqlite(db: Path, batches: list[list[dict]]) -> float:
    """The same rows into the same schema with executemany, one transaction per batch."""
    store = SQLiteStore(db)  # creates the schema with the same pragmas
    conn = store.conn
    parsed_batches = [check_batch(b)[0] for b in batches]  # flattening is not timed
    rows, seq = [], 0
    for parsed in parsed_batches:
        rows.append(table_rows(parsed, seq, 0.0))  # the rows the collector itself would write
        seq += len(parsed)
    try:
        t = time.perf_counter()
        for ev, win, use in rows:
            conn.execute("BEGIN IMMEDIATE")
            insert_rows(conn, ev, win, use)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t
    finally:
        store.close()
    return seq / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    events = make_events(args.events)
    batches = [events[i:i + args.batch] for i in range(0, len(events), args.batch)]
    bodies = [json.dumps(b).encode() for b in batches]
    runs = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            raw = bench_sqlite(Path(tmp) / "raw.db", batches)
            accepted, dups = bench_collector(Path(tmp) / "collector.db", bodies, args.events)
        runs.append((raw, accepted, dups))
        print(f"run {i + 1}: raw {raw:,.0f}/s, collector {accepted:,.0f}/s, resend {dups:,.0f}/s")
    raw, accepted, dups = (statistics.median(r[k] for r in runs) for k in range(3))
    print(f"events: {args.events} in batches of {args.batch} "
          f"({sum(map(len, bodies)) / len(events):.0f} bytes/event on the wire); medians of {args.repeat} runs")
    print(f"raw SQLite executemany (WAL, FULL, 1 txn/batch): {raw:12,.0f} events/s")
    print(f"collector over HTTP, accepted (dedupe on):         {accepted:12,.0f} events/s")
    print(f"collector over HTTP, resend (all duplicates):      {dups:12,.0f} events/s")
    print(f"ratio collector/raw: {accepted / raw:.3f} (raw is {raw / accepted:.1f}x faster)")


if __name__ == "__main__":
    main()
