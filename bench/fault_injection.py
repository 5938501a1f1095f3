"""Fault injection: the meter under kill -9 storms, a full disk, wall-clock steps and fuzzed
input, with what it lost, duplicated or made up counted against what it acknowledged.

    python bench/fault_injection.py [--kills 10] [--fuzz 2000] [--seed 1]

Scenarios (each prints its counts; every count is expected to be 0):

1. **kill -9 storm**: a real `meter agent` (2 fake GPUs of tests/fakes and the CPU, 1 s windows)
   takes usage pushes and ships its windows to a real `meter collector serve`; the agent and the
   collector are killed with SIGKILL at random moments, alternately, and restarted. A pusher
   retries each record until acknowledged. Afterwards: windows committed before a kill that are
   gone or changed (lost), (device, start) stored twice or overlapping (duplicated/phantom, agent
   and collector), agent windows the collector lacks after the outbox drained (lost in shipping),
   and acknowledged push tokens not billed, or billed twice.
2. **full disk** (root only: a 3 MB tmpfs): the store's disk filled while the agent runs, then
   freed: windows missing between the first and the last (lost), overlapping (phantom), and the
   store's integrity check.
3. **clock steps** through the agent's clock seam (in process): +6 h and -30 s; windows beyond
   the elapsed time (phantom), seconds elapsed but not in a window (hidden), overlaps.
4. **fuzz**: random hostile inputs per surface (push bodies, collector batches, configs,
   Prometheus expositions); inputs that raised anything but the surface's one refusal (crashes).

Needs the repository checkout (it uses tests/fakes for the GPUs) and nothing on the network
beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meter(*args, gpus=2, log=None):
    env = dict(os.environ, METERD_FAKE_GPUS=str(gpus), METERD_FAKE_WATTS="400", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tests.fakes.run_meter", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)


def rows(db, sql, args=()):
    c = sqlite3.connect(db, timeout=30)
    try:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute(sql, args)]
    except sqlite3.OperationalError:
        return []
    finally:
        c.close()


def wait(cond, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except (httpx.HTTPError, sqlite3.Error, OSError):
            pass
        time.sleep(0.1)
    return False


def overlaps_and_dupes(ws):
    """(duplicates, overlaps) among windows, per device."""
    dupes = overlaps = 0
    by_dev: dict[str, list] = {}
    for w in ws:
        by_dev.setdefault(w["device"], []).append(w)
    for mine in by_dev.values():
        mine.sort(key=lambda w: (w["start"], w["end"]))
        keys = [w["start"] for w in mine]
        dupes += len(keys) - len(set(keys))
        for a, b in zip(mine, mine[1:]):
            if b["start"] != a["start"] and b["start"] < a["end"] - 1e-6:
                overlaps += 1
    return dupes, overlaps


class Pusher(threading.Thread):
    def __init__(self, url, seed):
        super().__init__(daemon=True)
        self.url, self.rng = url, random.Random(seed)
        self.acked: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self):
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self.stop.is_set():
                rid = f"r{i}"
                rec = {"model": "m", "prompt_tokens": self.rng.randint(1, 1000), "completion_tokens": 1,
                       "request_id": rid}
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    try:
                        if client.post(self.url, json=rec).status_code == 200:
                            self.acked[rid] = rec["prompt_tokens"]
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.02)
                i += 1
                time.sleep(0.01)


def kill_storm(kills: int, seed: int, work: Path) -> dict:
    rng = random.Random(seed)
    db, cdb = work / "m.db", work / "c.db"
    push_port, cport = free_port(), free_port()
    token_file = work / "token"
    out = subprocess.run([sys.executable, "-m", "meterd.agent.cli", "collector", "token", "create", "node-a",
                          "--db", str(cdb)], cwd=ROOT, capture_output=True, text=True, check=True)
    token_file.write_text(out.stdout.strip().splitlines()[-1] + "\n")
    os.chmod(token_file, 0o600)
    cfg = work / "meterd.toml"
    cfg.write_text(f'node = "node-a"\n[push]\nlisten = "127.0.0.1:{push_port}"\n'
                   f'[ship]\nurl = "http://127.0.0.1:{cport}/api/v1/events"\ntoken_file = "{token_file}"\n'
                   "backoff_cap_s = 1\n")
    agent_args = ("agent", "--config", str(cfg), "--db", str(db), "--window", "1", "--interval", "0.2")
    collector_args = ("collector", "serve", "--db", str(cdb), "--listen", f"127.0.0.1:{cport}")
    collector = meter(*collector_args, gpus=0)
    agent = meter(*agent_args)
    pusher = Pusher(f"http://127.0.0.1:{push_port}/v1/usage", seed)
    pusher.start()
    lost_committed = changed = 0
    agent_kills = collector_kills = 0
    try:
        wait(lambda: len(rows(db, "SELECT id FROM windows")) > 6, 60)
        for k in range(kills):
            time.sleep(rng.uniform(0.5, 2.5))
            if k % 2 == 0:
                before = {(w["device"], w["start"]): w for w in rows(db, "SELECT * FROM windows")}
                agent.send_signal(signal.SIGKILL)
                agent.wait(30)
                agent_kills += 1
                after = {(w["device"], w["start"]): w for w in rows(db, "SELECT * FROM windows")}
                for key, w in before.items():
                    if key not in after:
                        lost_committed += 1
                    elif {k_: v for k_, v in after[key].items() if k_ not in ("shipped_at", "quarantine_reason")} != \
                            {k_: v for k_, v in w.items() if k_ not in ("shipped_at", "quarantine_reason")}:
                        changed += 1
                time.sleep(rng.uniform(0.2, 1.0))
                agent = meter(*agent_args)
            else:
                collector.send_signal(signal.SIGKILL)
                collector.wait(30)
                collector_kills += 1
                time.sleep(rng.uniform(0.2, 1.0))
                collector = meter(*collector_args, gpus=0)
        time.sleep(2)
        pusher.stop.set()
        pusher.join(60)
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
        # drain the outbox: a last agent run ships what is left
        agent = meter(*agent_args, "--duration", "8")
        agent.wait(120)
    finally:
        pusher.stop.set()
        for p in (agent, collector):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    ws = rows(db, "SELECT * FROM windows")
    cws = rows(cdb, "SELECT node, device, start, \"end\" AS end, cost_micro, prompt_tokens FROM windows")
    a_dupes, a_overlaps = overlaps_and_dupes(ws)
    c_dupes, c_overlaps = overlaps_and_dupes(cws)
    ckeys = {(w["device"], w["start"]): w for w in cws}
    unshipped = sum(1 for w in ws if w["shipped_at"] is None)
    not_at_collector = sum(1 for w in ws if w["shipped_at"] is not None and (w["device"], w["start"]) not in ckeys)
    differs = sum(1 for w in ws if (w["device"], w["start"]) in ckeys
                  and (ckeys[(w["device"], w["start"])]["cost_micro"], ckeys[(w["device"], w["start"])]["prompt_tokens"])
                  != (w["cost_micro"], w["prompt_tokens"]))
    stored_tokens = sum(r["prompt_tokens"] for r in rows(db, "SELECT prompt_tokens FROM window_usage"))
    acked_tokens = sum(pusher.acked.values())
    return {"agent_kills": agent_kills, "collector_kills": collector_kills, "windows": len(ws),
            "collector_windows": len(cws), "pushes_acknowledged": len(pusher.acked),
            "lost_committed_windows": lost_committed, "changed_committed_windows": changed,
            "duplicated_agent": a_dupes, "phantom_agent_overlaps": a_overlaps,
            "duplicated_collector": c_dupes, "phantom_collector_overlaps": c_overlaps,
            "shipped_but_not_at_collector": not_at_collector, "differ_at_collector": differs,
            "still_unshipped": unshipped,
            "push_tokens_lost": max(0, acked_tokens - stored_tokens),
            "push_tokens_duplicated": max(0, stored_tokens - acked_tokens)}


def full_disk(work: Path) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "needs root to mount a tmpfs"}
    mnt = work / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        return {"skipped": "mount -t tmpfs failed"}
    try:
        db = mnt / "m.db"
        agent = meter("agent", "--db", str(db), "--window", "1", "--interval", "0.2")
        wait(lambda: len(rows(db, "SELECT id FROM windows")) >= 9, 60)
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        for size in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * size) == size:
                    pass
            except OSError:
                pass
        os.close(fd)
        time.sleep(6)
        alive = agent.poll() is None
        os.unlink(mnt / "filler")
        time.sleep(6)
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(60)
        ws = rows(db, "SELECT * FROM windows")
        missing = 0
        by_dev: dict[str, list] = {}
        for w in ws:
            by_dev.setdefault(w["device"], []).append(w)
        for mine in by_dev.values():
            mine.sort(key=lambda w: w["start"])
            missing += sum(1 for a, b in zip(mine, mine[1:]) if b["start"] > a["end"] + 1e-6)
        dupes, overlaps = overlaps_and_dupes(ws)
        c = sqlite3.connect(db)
        integrity = c.execute("PRAGMA integrity_check").fetchone()[0]
        c.close()
        return {"agent_alive_while_full": alive, "exit_status": rc, "windows": len(ws),
                "lost_windows_holes": missing, "duplicated": dupes, "phantom_overlaps": overlaps,
                "integrity": integrity}
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def clock_steps(work: Path) -> dict:
    from meterd.agent.config import default_config
    from meterd.agent.daemon import Agent
    from meterd.agent.sampler import Clocks
    from meterd.agent.store import Store
    from meterd.probes.devices import get_devices

    out = {}
    for name, step in (("forward_6h", 6 * 3600.0), ("back_30s", -30.0)):
        t = {"t": 1_800_000_000.0}
        t0 = t["t"]
        offset = {"s": 0.0}

        def sleep(s, t=t, offset=offset, step=step, t0=t0):
            t["t"] += s
            if t["t"] - t0 >= 5.0:
                offset["s"] = step

        clocks = Clocks(wall=lambda t=t, offset=offset: t["t"] + offset["s"], mono=lambda t=t: t["t"] - 1e9,
                        boot=lambda t=t: t["t"] - 1e9, sleep=sleep)
        store = Store(work / f"clock-{name}.db")
        node = get_devices()
        Agent(default_config(node="n", interval_s=0.5, window_s=1), store, node, clocks=clocks).run(duration_s=10.0)
        node.close()
        ws = store.windows()
        store.close()
        billed = sum(w["end"] - w["start"] for w in ws)
        dupes, overlaps = overlaps_and_dupes(ws)
        out[name] = {"windows": len(ws), "phantom_windows": max(0, len(ws) - 11),
                     "phantom_seconds": round(max(0.0, billed - 10.0), 3),
                     "hidden_seconds": round(max(0.0, 10.0 - billed), 3),
                     "overlaps": overlaps, "duplicated": dupes,
                     "flagged_clock_step": sum("clock_step" in json.loads(w["flags"]) for w in ws)}
    return out


def fuzz(n: int, seed: int) -> dict:
    import tomllib

    from meterd.agent.config import ConfigError, parse_toml, parse_config
    from meterd.collector.validation import MalformedJSON, WrongShape, check_body
    from meterd.errors import InvalidUsage
    from meterd.probes.prometheus_servers import TokenProbeError, totals_from_text
    from meterd.probes.push import parse_body
    from tests.collector.conftest import minutes

    rng = random.Random(seed)
    atoms = [b'"\\ud800"', b'"\\udfff"', b"1e400", b"9" * 5000, b"-1", b"NaN", b"null", b"[]", b"{}",
             b'"\xed\xa0\x80"', b"\xff", b"[" * 3000, b'"' + b"x" * 300 + b'"', b"18446744073709551616",
             b'"\\u0000"', b"true", b"1.5"]

    def mutate(base: bytes) -> bytes:
        b = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            i = rng.randrange(len(b) + 1)
            if op < 0.4:
                b[i:i] = rng.choice(atoms)
            elif op < 0.7 and len(b) > 2:
                j = min(len(b), i + rng.randint(1, 20))
                b[i:j] = rng.choice(atoms)
            elif op < 0.85 and len(b) > 2:
                del b[i:i + rng.randint(1, 10)]
            else:
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        return bytes(b)

    crashes = {"push": 0, "collector": 0, "config": 0, "prometheus": 0}
    push_base = json.dumps([{"model": "m", "prompt_tokens": 10, "completion_tokens": 2, "tenant": "t",
                             "request_id": "r"}]).encode()
    batch_base = json.dumps(minutes(2)).encode()
    config_base = b'node = "n"\nwindow_s = 60\n[prices]\ncapex_per_gpu = 25000.0\npue = 1.3\ncurrency = "USD"\n' \
                  b'[[sources]]\nkind = "vllm"\nurl = "http://127.0.0.1:8000/metrics"\ndevices = ["all"]\n'
    prom_base = (b'# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{model_name="m"} 120\n'
                 b'# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{model_name="m"} 30\n')
    for _ in range(n):
        try:
            parse_body(mutate(push_base))
        except InvalidUsage:
            pass
        except Exception:
            crashes["push"] += 1
        try:
            check_body(mutate(batch_base), node="n1")
        except (MalformedJSON, WrongShape):
            pass
        except Exception:
            crashes["collector"] += 1
        try:
            text = mutate(config_base).decode("utf-8")
            parse_config(parse_toml(text, "fuzz.toml"))
        except (ConfigError, UnicodeDecodeError):
            pass
        except Exception:
            crashes["config"] += 1
        try:
            totals_from_text(mutate(prom_base).decode("utf-8", "replace"), "vllm")
        except (TokenProbeError, ValueError):
            pass
        except Exception:
            crashes["prometheus"] += 1
    return {"inputs_per_surface": n, "crashes": crashes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--fuzz", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterd-faults-") as tmp:
        work = Path(tmp)
        for d in ("storm", "disk", "clock"):
            (work / d).mkdir()
        results = {}
        for name, fn in (("kill_storm", lambda: kill_storm(a.kills, a.seed, work / "storm")),
                         ("full_disk", lambda: full_disk(work / "disk")),
                         ("clock_steps", lambda: clock_steps(work / "clock")),
                         ("fuzz", lambda: fuzz(a.fuzz, a.seed))):
            t0 = time.monotonic()
            results[name] = fn()
            print(f"{name} ({time.monotonic() - t0:.0f} s): {json.dumps(results[name])}", flush=True)
    bad = []
    storm = results["kill_storm"]
    for k in ("lost_committed_windows", "changed_committed_windows", "duplicated_agent", "phantom_agent_overlaps",
              "duplicated_collector", "phantom_collector_overlaps", "shipped_but_not_at_collector",
              "differ_at_collector", "push_tokens_lost", "push_tokens_duplicated"):
        if storm[k]:
            bad.append(f"kill_storm.{k}={storm[k]}")
    disk = results["full_disk"]
    if "skipped" not in disk:
        for k in ("lost_windows_holes", "duplicated", "phantom_overlaps"):
            if disk[k]:
                bad.append(f"full_disk.{k}={disk[k]}")
        if disk["integrity"] != "ok" or not disk["agent_alive_while_full"]:
            bad.append("full_disk: agent died or integrity failed")
    for name, c in results["clock_steps"].items():
        for k in ("phantom_windows", "phantom_seconds", "hidden_seconds", "overlaps", "duplicated"):
            if c[k]:
                bad.append(f"clock_steps.{name}.{k}={c[k]}")
    for surface, n in results["fuzz"]["crashes"].items():
        if n:
            bad.append(f"fuzz.{surface}={n}")
    print("all counts 0" if not bad else "NOT ZERO: " + ", ".join(bad))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
