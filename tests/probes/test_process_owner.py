"""probes/process_owner.py: a GPU process named by its token source's port, its cgroup, or its
command; a real listening process for the psutil part."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from meterd.probes.process_owner import OwnerResolver, cgroup_owner, listening_ports, source_ports

CID = "4f1c2a7be0d94a3c8b6e5f7a9d0c1b2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c"
POD = "1a2b3c4d-1111-2222-3333-444455556666"


@pytest.mark.parametrize("text, owner", [
    # Kubernetes, cgroup v2 (systemd driver): the pod's UID with underscores
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/"
     f"cri-containerd-{CID}.scope\n", f"pod:{POD}"),
    # Kubernetes, cgroup v1 (cgroupfs driver)
    (f"12:memory:/kubepods/burstable/pod{POD}/{CID}\n11:cpu,cpuacct:/kubepods/burstable/pod{POD}/{CID}\n",
     f"pod:{POD}"),
    (f"0::/system.slice/docker-{CID}.scope\n", f"container:{CID[:12]}"),
    (f"4:cpu:/docker/{CID}\n", f"container:{CID[:12]}"),
    (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope\n", f"container:{CID[:12]}"),
    (f"0::/system.slice/crio-{CID}.scope\n", f"container:{CID[:12]}"),
    ("0::/system.slice/vllm-llama.service\n", "unit:vllm-llama.service"),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/sglang.service\n", "unit:sglang.service"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", None),
    ("0::/\n", None),
    ("", None),
])
def test_cgroup_owner(text, owner):
    assert cgroup_owner(text) == owner


def test_source_ports():
    assert source_ports([("a", "http://127.0.0.1:8000/metrics"), ("b", "https://[::1]/metrics"),
                         ("c", "http://127.0.0.1:8000/other"), ("bad", "http://h:port/")]) == {8000: "a", 443: "b"}


def _proc(root, pid, *, ppid=1, comm="python3", cgroup="0::/user.slice/user-0.slice/session-1.scope\n", start=100):
    d = root / str(pid)
    d.mkdir()
    (d / "comm").write_text(comm + "\n")
    (d / "cgroup").write_text(cgroup)
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)]
    (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")


def test_resolver_order_port_then_cgroup_then_command(tmp_path):
    _proc(tmp_path, 100, comm="vllm")  # the API server: it listens
    _proc(tmp_path, 101, ppid=100, comm="VLLM::EngineCore")  # its engine holds the GPU
    _proc(tmp_path, 200, cgroup="0::/system.slice/sglang.service\n")
    _proc(tmp_path, 300, comm="train.py")
    _proc(tmp_path, 400, comm="other", cgroup=f"0::/system.slice/docker-{CID}.scope\n")
    r = OwnerResolver({8000: "vllm-a", 30000: "sglang-b"}, proc_root=str(tmp_path),
                      listeners=lambda: {100: {8000}, 400: {9999}})
    assert r.owner(101) == "source:vllm-a"
    assert r.owner(100) == "source:vllm-a"
    assert r.owner(200) == "unit:sglang.service"
    assert r.owner(300) == "cmd:train.py"
    assert r.owner(400) == f"container:{CID[:12]}"  # listens, but on no source's port
    assert r.owner(999) == "pid:999"  # gone before it could be named


def test_a_reused_pid_is_named_again(tmp_path):
    _proc(tmp_path, 100, comm="first", start=100)
    r = OwnerResolver({}, proc_root=str(tmp_path))
    assert r.owner(100) == "cmd:first"
    for f in ("comm", "stat", "cgroup"):
        (tmp_path / "100" / f).unlink()
    (tmp_path / "100").rmdir()
    _proc(tmp_path, 100, comm="second", start=200)
    assert r.owner(100) == "cmd:second"


def test_listening_ports_sees_a_real_listener():
    code = ("import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
            "print(s.getsockname()[1], flush=True); time.sleep(30)")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as p:
        try:
            port = int(p.stdout.readline())
            deadline = time.monotonic() + 5
            while port not in listening_ports().get(p.pid, set()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert port in listening_ports()[p.pid]
            r = OwnerResolver({port: "mine"})
            assert r.owner(p.pid) == "source:mine"
            assert r.owner(os.getpid()).startswith(("cmd:", "unit:", "container:", "pod:"))
        finally:
            p.kill()


def test_a_process_named_by_its_command_is_named_again_once_its_server_listens(tmp_path):
    _proc(tmp_path, 100, comm="vllm")
    listening: dict[int, set[int]] = {}
    now = [0.0]
    r = OwnerResolver({8000: "vllm-a"}, proc_root=str(tmp_path), listeners=lambda: listening,
                      clock=lambda: now[0])
    assert r.owner(100) == "cmd:vllm"  # loading the model, not listening yet
    listening[100] = {8000}
    now[0] = 10.0
    assert r.owner(100) == "cmd:vllm"  # cached for recheck_s
    now[0] = 31.0
    assert r.owner(100) == "source:vllm-a"
    listening.clear()
    now[0] = 100.0
    assert r.owner(100) == "source:vllm-a"  # a source's name is kept
