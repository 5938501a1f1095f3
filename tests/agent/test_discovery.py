"""Servers found on their own: a fake vLLM holding GPU 0 and a fake SGLang holding GPU 1, each a
real process on its own loopback port, the fake NVML reporting their PIDs; no [[sources]] with
a url anywhere."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.agent.config import ConfigError, Prices, SourceConfig, default_config, parse_config, to_micro
from meterd.agent.daemon import Agent
from meterd.agent.sampler import Clocks
from meterd.agent.store import Store
from meterd.probes.devices import get_devices
from meterd.probes.discovery import Discoverer, gpu_processes, loopback_url
from tests.fakes.nvml import GiB, h100
from tests.fakes.servers import FakeInferenceServer, ServerProcess

T0 = 1_800_000_000.0


@pytest.fixture
def two_servers(fake_nvml, clock):
    clock.t = T0
    with ServerProcess("vllm", "llama-3-8b", tokens_per_s=500) as vllm, \
            ServerProcess("sglang", "qwen-7b", tokens_per_s=300) as sglang:
        fake = fake_nvml([h100(processes=[(vllm.pid, 20 * GiB)]), h100(processes=[(sglang.pid, 30 * GiB)]), h100()])
        yield fake, vllm, sglang


def test_loopback_only():
    assert loopback_url("0.0.0.0", 8000) == "http://127.0.0.1:8000/metrics"
    assert loopback_url("127.0.0.5", 8000) == "http://127.0.0.1:8000/metrics"
    assert loopback_url("::", 30000) == "http://[::1]:30000/metrics"
    assert loopback_url("::ffff:127.0.0.1", 1) == "http://127.0.0.1:1/metrics"
    assert loopback_url("10.1.2.3", 8000) is None  # bound to another interface: never connected to
    assert loopback_url("fe80::1%eth0", 8000) is None
    assert loopback_url("not-an-ip", 8000) is None


def test_vllm_on_gpu0_and_sglang_on_gpu1_are_found(two_servers, caplog):
    fake, vllm, sglang = two_servers
    node = get_devices()
    try:
        pids = gpu_processes(node.devices)
        assert pids == {vllm.pid: [fake.gpus[0].uuid], sglang.pid: [fake.gpus[1].uuid]}
        d = Discoverer()
        with httpx.Client() as client, caplog.at_level(logging.INFO, logger="meterd.probes.discovery"):
            found = d.discover(pids, client)
            assert [(f.name, f.kind, f.url, f.devices, f.pids) for f in found] == sorted([
                (f"vllm@{vllm.port}", "vllm", vllm.url, (fake.gpus[0].uuid,), (vllm.pid,)),
                (f"sglang@{sglang.port}", "sglang", sglang.url, (fake.gpus[1].uuid,), (sglang.pid,)),
            ])
            assert len(d.discover(pids, client)) == 2  # again: nothing new to say
            sglang.__exit__(None, None, None)  # it goes away
            assert [f.kind for f in d.discover(gpu_processes(node.devices), client)] == ["vllm"]
            d.discover(pids, client)
    finally:
        node.close()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("discovered vllm server" in m for m in lines) == 1
    assert sum("discovered sglang server" in m for m in lines) == 1
    assert sum("went away" in m for m in lines) == 1


def test_a_listener_that_is_not_a_known_server_is_no_source(fake_nvml, clock):
    # a GPU process whose port serves HTML, not Prometheus text of a known server
    from http.server import BaseHTTPRequestHandler, HTTPServer
    import threading

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *a):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    import os

    try:
        port = httpd.server_address[1]
        d = Discoverer(sockets=lambda: {os.getpid(): {("127.0.0.1", port)}})
        with httpx.Client() as client:
            assert d.discover({os.getpid(): ["GPU-x"]}, client) == []
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_agent_meters_discovered_servers_with_the_gpus_they_hold(two_servers, tmp_path):
    fake, vllm, sglang = two_servers
    prices = Prices(rental_per_gpu_hour_micro=to_micro("3.6"), energy_per_kwh_micro=0, pue=1.0,
                    opex_per_node_month_micro=0)
    config = default_config(node="n", interval_s=0.5, window_s=1, prices=prices,
                            sources=(SourceConfig(kind="discover"),))
    node = get_devices()
    store = Store(tmp_path / "m.db")

    def sleep(s):  # the manual clock, and a little real time so the servers serve tokens
        fake.clock.advance(s)
        time.sleep(0.15)

    mono = lambda: fake.clock() - T0 + 100.0  # noqa: E731
    try:
        Agent(config, store, node, clocks=Clocks(wall=fake.clock, mono=mono, boot=mono, sleep=sleep)).run(duration_s=4.0)
    finally:
        node.close()
    tokens = {}
    for w in store.windows():
        for u in store.usage_of(w["id"]):
            tokens.setdefault(w["device"], set()).add((u["model"], u["owner"]))
    assert tokens[fake.gpus[0].uuid] == {("llama-3-8b", f"source:vllm@{vllm.port}")}
    assert tokens[fake.gpus[1].uuid] == {("qwen-7b", f"source:sglang@{sglang.port}")}
    assert fake.gpus[2].uuid not in tokens  # nobody on GPU 2


def test_meter_sources_discover(two_servers):
    fake, vllm, sglang = two_servers
    r = CliRunner().invoke(main, ["sources", "discover", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert {s["kind"]: s["devices"] for s in out["sources"]} == {
        "vllm": [fake.gpus[0].uuid], "sglang": [fake.gpus[1].uuid]}
    text = CliRunner().invoke(main, ["sources", "discover"])
    assert f"vllm@{vllm.port}  vllm at {vllm.url}" in text.output


def test_meter_sources_discover_without_gpus(no_nvml):
    r = CliRunner().invoke(main, ["sources", "discover"])
    assert r.exit_code == 0 and "no process holds a GPU" in r.output


def test_config_kind_discover_takes_no_url():
    cfg = parse_config({"sources": [{"kind": "discover"}]})
    assert cfg.sources[0].kind == "discover" and cfg.sources[0].url is None
    with pytest.raises(ConfigError, match=r"sources\[0\]\.url: kind \"discover\" finds its servers itself"):
        parse_config({"sources": [{"kind": "discover", "url": "http://127.0.0.1:1/metrics"}]})


def test_in_process_servers_share_a_pid_so_they_need_processes_of_their_own():
    # why ServerProcess: two in-process servers would be one PID with two ports
    with FakeInferenceServer("vllm") as a, FakeInferenceServer("sglang") as b:
        assert a.port != b.port


def test_the_nearest_process_that_serves_metrics_is_the_server(tmp_path):
    # engine (holds the GPU, listens on an NCCL-like port) -> API server (serves vLLM metrics)
    # -> a supervisor that also listens: the API server is the one
    with FakeInferenceServer("vllm") as api, FakeInferenceServer("sglang") as other:
        import socket

        nccl = socket.socket()
        nccl.bind(("127.0.0.1", 0))
        nccl.listen()
        try:
            for pid, ppid in ((300, 200), (200, 100), (100, 1)):
                (tmp_path / str(pid)).mkdir()
                (tmp_path / str(pid) / "stat").write_text(f"{pid} (x) S {ppid} " + "0 " * 20)
            sockets = {300: {("127.0.0.1", nccl.getsockname()[1])}, 200: {("0.0.0.0", api.port)},
                       100: {("127.0.0.1", other.port)}}
            now = [0.0]
            d = Discoverer(sockets=lambda: sockets, proc_root=str(tmp_path), timeout_s=0.3, clock=lambda: now[0])
            with httpx.Client() as client:
                (f,) = d.discover({300: ["GPU-a"]}, client)
                assert (f.kind, f.url, f.pids) == ("vllm", api.url, (300,))
                assert len(d._not_servers) == 1  # the NCCL port: not asked again for a while
                (f,) = d.discover({300: ["GPU-a"]}, client)
                assert f.kind == "vllm"
        finally:
            nccl.close()
