"""The composition root and the bench as library calls, without click: what they build is
closed on every path (a normal stop, a busy port, a second agent, a crash mid-run)."""

import dataclasses
import socket
import sqlite3
import threading

import httpx
import pytest

from meterd.agent import runtime
from meterd.agent.bench_run import BenchResult, bench
from meterd.agent.config import ConfigError, default_config
from meterd.agent.pidlock import AlreadyRunning, StoreLock
from meterd.agent.shipper import ShipError
from meterd.agent.store import Store
from meterd.agent.systemd import Notifier
from meterd.errors import InputError, MeterError
from meterd.probes.devices import get_devices
from tests.fakes.nvml import h100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens there any more (a connection is refused)."""
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


class Recorder:
    """get_devices that remembers the nodes it built, so a test can see them closed."""

    def __init__(self):
        self.nodes = []

    def __call__(self):
        node = get_devices()
        self.nodes.append(node)
        return node


def lock_is_free(db) -> bool:
    try:
        StoreLock(db).acquire().release()
    except AlreadyRunning:
        return False
    return True


@pytest.fixture
def gpus(fake_nvml):
    import time

    return fake_nvml([h100(), h100()], clock=time.time)


def test_run_agent_meters_and_closes_everything(gpus, tmp_path):
    db = tmp_path / "m.db"
    mport, pport = free_port(), free_port()
    config = runtime.load(None, runtime.Overrides(store=str(db), interval_s=0.1, window_s=1,
                                                   metrics_listen=f"127.0.0.1:{mport}"))
    config = dataclasses.replace(config, push_listen=f"127.0.0.1:{pport}")
    seen = {}

    def during(rt_stop):
        # while it runs: the metrics and push endpoints answer, the store is locked
        seen["metrics"] = httpx.get(f"http://127.0.0.1:{mport}/metrics").status_code
        seen["push"] = httpx.get(f"http://127.0.0.1:{pport}/healthz").status_code
        seen["locked"] = not lock_is_free(db)
        rt_stop.set()

    stop = threading.Event()
    timer = threading.Timer(1.2, during, args=(stop,))
    timer.start()
    run = runtime.run_agent(config=config, stop=stop, duration_s=10)
    timer.join()
    assert seen == {"metrics": 200, "push": 200, "locked": True}
    assert run.stopped and run.store_path == db and run.summary.windows >= 3  # 2 GPUs and the CPU
    assert gpus.initialised == 0  # NVML shut down
    assert port_is_free(mport) and port_is_free(pport) and lock_is_free(db)
    store = Store(db)
    assert {w["device"] for w in store.windows()} == {g.uuid for g in gpus.gpus} | {"cpu"}
    store.close()


def test_a_busy_port_closes_what_was_already_open(gpus, tmp_path, monkeypatch):
    from meterd.agent import push_journal

    journals = []

    class Journal(push_journal.StoreJournal):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.closed = False
            journals.append(self)

        def close(self):
            self.closed = True
            super().close()

    monkeypatch.setattr(push_journal, "StoreJournal", Journal)
    db = tmp_path / "m.db"
    mport = free_port()
    config = runtime.load(None, runtime.Overrides(store=str(db), interval_s=0.1, window_s=1,
                                                   metrics_listen=f"127.0.0.1:{mport}"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = dataclasses.replace(config, push_listen=f"127.0.0.1:{busy.getsockname()[1]}")
        nodes = Recorder()
        with pytest.raises(ConfigError, match="push endpoint"):
            runtime.run_agent(config=config, duration_s=1, get_devices=nodes)
    # the metrics server (started before the push endpoint), NVML, the store and its lock
    assert port_is_free(mport) and gpus.initialised == 0 and lock_is_free(db)
    assert len(nodes.nodes) == 1
    assert len(journals) == 1 and journals[0].closed  # the push journal's connection too


def test_a_crash_inside_the_runtime_closes_everything(gpus, tmp_path):
    db = tmp_path / "m.db"
    config = runtime.load(None, runtime.Overrides(store=str(db), interval_s=0.1, window_s=1))
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    with pytest.raises(ZeroDivisionError):
        with runtime.open_runtime(config, notifier=notifier) as rt:
            notifier.send("STATUS=x")  # opens the notifier's socket (nobody listens: a warning)
            store, agent = rt.store, rt.agent
            1 / 0
    with pytest.raises(sqlite3.ProgrammingError):
        store.conn.execute("SELECT 1")
    assert notifier._sock is None and gpus.initialised == 0 and lock_is_free(db)
    assert agent.http.is_closed and agent.reader.pool._shutdown  # the agent never ran: closed anyway


def test_a_second_agent_on_the_same_store_is_refused_and_closes_its_own(gpus, tmp_path):
    db = tmp_path / "m.db"
    config = runtime.load(None, runtime.Overrides(store=str(db), interval_s=0.1, window_s=1))
    with runtime.open_runtime(config) as first:
        nodes = Recorder()
        with pytest.raises(AlreadyRunning, match="already metering"):
            runtime.run_agent(config=config, duration_s=1, get_devices=nodes)
        assert nodes.nodes == []  # refused before NVML was started a second time
        assert first.store.conn.execute("SELECT 1").fetchone() == (1,)
    assert lock_is_free(db)


def test_bad_shipping_setup_is_refused_before_anything_opens(no_nvml, tmp_path):
    db = tmp_path / "m.db"
    config = runtime.load(None, runtime.Overrides(store=str(db), ship_url="https://collector.invalid/api/v1/events"))
    with pytest.raises(ConfigError, match="ship.token_file: shipping needs a bearer token"):
        runtime.run_agent(config=config, duration_s=1)
    assert not db.exists()


def test_overrides_are_checked_and_win_over_the_file(no_nvml, tmp_path):
    with pytest.raises(ConfigError, match="--interval: must not exceed the window"):
        runtime.load(None, runtime.Overrides(interval_s=5, window_s=1))
    cfg = tmp_path / "meterd.toml"
    cfg.write_text("window_s = 60\n")
    config = runtime.load(str(cfg), runtime.Overrides(window_s=2, store=str(tmp_path / "x.db")))
    assert config.window_s == 2 and config.store == str(tmp_path / "x.db")


def test_the_store_error_names_the_file(no_nvml, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    from meterd.agent.store import open_store

    with pytest.raises(MeterError, match=f"cannot create the directory {blocker} for the agent store"):
        open_store(blocker / "m.db")


# -- the bench ------------------------------------------------------------------------------


@pytest.fixture
def no_cupy(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)


def test_bench_is_a_library_call_that_returns_and_saves_its_results(no_nvml, no_cupy, tmp_path):
    db = tmp_path / "m.db"
    seen = []
    result = bench(tiny=True, quick=True, db=str(db), model="gpt-oss-120b",
                   progress=lambda label, done, total: seen.append((done, total)))
    assert isinstance(result, BenchResult)
    assert [(r["kernel"], r["dtype"]) for r in result.rows] == [("gemm", "fp64"), ("gemm", "fp32"),
                                                               ("copy", "fp64"), ("triad", "fp64")]
    assert {c["model"] for c in result.capacity} == {"gpt-oss-120b"}
    assert seen[-1] == (4, 4) and result.currency == "USD"
    store = Store(db)
    assert len(store.latest_bench()) == 4
    store.close()
    assert set(result.to_json()) == {"results", "capacity", "notes", "skipped", "versions"}


def test_bench_errors_are_meter_errors_and_close_the_devices(fake_nvml, no_cupy, tmp_path):
    fake = fake_nvml([h100()])
    nodes = Recorder()
    with pytest.raises(InputError, match="no device 'gpu7'"):
        bench(tiny=True, db=str(tmp_path / "m.db"), device="gpu7", get_devices=nodes)
    with pytest.raises(InputError, match="nothing to benchmark: GPU kernels skipped"):
        bench(tiny=True, db=str(tmp_path / "m.db"), device="0", get_devices=nodes)
    with pytest.raises(InputError, match="unknown model 'nope'"):
        bench(tiny=True, db=str(tmp_path / "m.db"), model="nope", get_devices=nodes)
    assert len(nodes.nodes) == 2 and fake.initialised == 0
    config = default_config(store=str(tmp_path / "c.db"))
    assert bench(tiny=True, config=config, device="cpu").rows
    assert (tmp_path / "c.db").exists()
