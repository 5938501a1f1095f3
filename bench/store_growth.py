"""How big the agent's store grows from raw samples: 8 GPUs and the CPU sampled at 1 Hz for
``--days`` simulated days (default 7, the default retention), written through the real
``Store.insert_samples`` in the agent's 10 s batches, with the agent's hourly upkeep: retention,
and raw samples older than a day thinned to one per device per minute. Beside it, in the same
run, the baseline: the same samples kept at full rate (what the store held before thinning).

    python bench/store_growth.py [--days 7]

Prints each store's size (database + WAL, after a checkpoint) and the ratio. Windows and
rollups are not included: they are the same in both (and never thinned).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meterd.agent.daemon import SAMPLES_FULL_RATE_S, SAMPLES_PRUNE_EVERY_S, SAMPLES_THINNED_EVERY_S  # noqa: E402
from meterd.agent.store import Store  # noqa: E402

DEVICES = [f"GPU-{i}" for i in range(8)] + ["cpu"]
T0 = 1_800_000_000.0


def size(path: Path) -> int:
    return sum(os.path.getsize(str(path) + s) for s in ("", "-wal") if os.path.exists(str(path) + s))


def simulate(path: Path, days: float, thin: bool, retention_days: float = 7.0) -> int:
    store = Store(path)
    store.conn.execute("PRAGMA synchronous = OFF")  # size, not durability, is measured here
    end = T0 + days * 86400
    t = T0
    next_upkeep = T0 + SAMPLES_PRUNE_EVERY_S
    thinned_until = None
    while t < end:
        rows = [{"device": d, "at": t + k, "state": "ok", "power_w": 412.5 + k, "power_source": "instant",
                 "energy_j": 1.0e6 + 400.0 * (t + k - T0), "energy_source": "counter", "util_pct": 87.0,
                 "mem_used_bytes": 60_000_000_000} for k in range(10) for d in DEVICES]
        store.insert_samples(rows)
        t += 10
        if t >= next_upkeep:
            store.prune_samples(t - retention_days * 86400)
            if thin:
                full_until = t - SAMPLES_FULL_RATE_S
                since = None if thinned_until is None else thinned_until - 2 * SAMPLES_PRUNE_EVERY_S
                store.downsample_samples(since, full_until, SAMPLES_THINNED_EVERY_S)
                thinned_until = full_until
            next_upkeep += SAMPLES_PRUNE_EVERY_S
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return size(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=7.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterd-growth-") as tmp:
        t0 = time.monotonic()
        base = simulate(Path(tmp) / "full.db", a.days, thin=False)
        t1 = time.monotonic()
        thinned = simulate(Path(tmp) / "thinned.db", a.days, thin=True)
        t2 = time.monotonic()
    mb = 1024 * 1024
    print(f"{len(DEVICES) - 1} GPUs + CPU at 1 Hz, {a.days:g} days, 7-day retention")
    print(f"  full rate (baseline): {base / mb:7.1f} MB  ({t1 - t0:.0f} s to simulate)")
    print(f"  thinned after a day:  {thinned / mb:7.1f} MB  ({t2 - t1:.0f} s)")
    print(f"  ratio: {thinned / base:.3f}")


if __name__ == "__main__":
    main()
