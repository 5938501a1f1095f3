"""Inference servers found on their own: ``[[sources]] kind = "discover"`` and
``meter sources discover``.

The processes that hold a GPU (NVML's compute processes) and their ancestors (vLLM's API
server is the parent of the engine that holds the GPU; SGLang's HTTP server the parent of its
schedulers) are looked up among the listening TCP sockets (psutil). Each such port is scraped
once on loopback (``/metrics``, the one deadline of :mod:`probes.tokens`) and recognised by
``auto`` (:mod:`probes.prometheus_servers`); what is recognised is a source, metered with the GPUs
its processes hold as its devices. Only loopback is ever connected to: a socket bound to all
addresses is reached at 127.0.0.1 (or ::1), one bound to another address is left alone.

:class:`Discoverer` remembers what it found, and logs a source that appears or goes away once.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import psutil

from meterd.errors import ProbeError
from meterd.probes.counters import Totals
from meterd.probes.tokens import TokenSource

log = logging.getLogger(__name__)

METRICS_PATHS = ("/metrics",)


@dataclass(frozen=True)
class Found:
    name: str  # "<kind>@<port>"
    kind: str
    url: str
    devices: tuple[str, ...]  # the GPUs its processes hold
    pids: tuple[int, ...]  # those processes


def listening_sockets() -> dict[int, set[tuple[str, int]]]:
    """{pid: {(address, port)}} of every listening TCP socket psutil can see."""
    out: dict[int, set[tuple[str, int]]] = {}
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError) as e:
        log.info("listening sockets: %s", e)
        return out
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.pid and c.laddr:
            out.setdefault(c.pid, set()).add((c.laddr.ip, c.laddr.port))
    return out


def loopback_url(address: str, port: int, path: str = "/metrics") -> str | None:
    """The loopback URL that reaches a socket bound to ``address``, or None where loopback does
    not reach it (bound to another interface's address)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 4 and (ip.is_unspecified or ip.is_loopback):
        return f"http://127.0.0.1:{port}{path}"
    if ip.version == 6 and (ip.is_unspecified or ip.is_loopback):
        return f"http://[::1]:{port}{path}"
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None and (mapped.is_unspecified or mapped.is_loopback):
        return f"http://127.0.0.1:{port}{path}"
    return None


def _parent(proc_root: str, pid: int) -> int | None:
    try:
        with open(os.path.join(proc_root, str(pid), "stat"), encoding="utf-8", errors="replace") as f:
            stat = f.read()
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return ppid if ppid > 1 else None


class Discoverer:
    """Finds the servers behind the GPUs' processes; :meth:`discover` each time the agent looks."""

    def __init__(self, sockets: Callable[[], dict[int, set[tuple[str, int]]]] = listening_sockets,
                 proc_root: str = "/proc", timeout_s: float = 0.5) -> None:
        self.sockets, self.proc_root, self.timeout_s = sockets, proc_root, timeout_s
        self.known: dict[str, Found] = {}

    def candidates(self, gpu_pids: dict[int, Iterable[str]]) -> dict[str, tuple[set[str], set[int]]]:
        """{loopback URL: (GPU ids, PIDs)} of every port a GPU process or one of its ancestors
        listens on."""
        listening = self.sockets()
        out: dict[str, tuple[set[str], set[int]]] = {}
        for pid, devices in gpu_pids.items():
            p: int | None = pid
            for _ in range(16):
                if p is None:
                    break
                for address, port in sorted(listening.get(p, ())):
                    for path in METRICS_PATHS:
                        url = loopback_url(address, port, path)
                        if url is None:
                            continue
                        devs, pids = out.setdefault(url, (set(), set()))
                        devs.update(devices)
                        pids.add(pid)
                p = _parent(self.proc_root, p)
        return out

    def discover(self, gpu_pids: dict[int, Iterable[str]], client) -> list[Found]:
        """The servers found now (scraped once each, recognised by ``auto``), by name; each that
        appeared or went away since the last call is logged once."""
        found: dict[str, Found] = {}
        for url, (devices, pids) in sorted(self.candidates(gpu_pids).items()):
            result = TokenSource(url, kind="auto", timeout_s=self.timeout_s).scrape(client)
            if not isinstance(result, Totals):
                continue  # not Prometheus text of a server we know: not a source
            port = url.rsplit(":", 1)[1].split("/", 1)[0]
            name = f"{result.kind}@{port}"
            found[name] = Found(name, result.kind, url, tuple(sorted(devices)), tuple(sorted(pids)))
        for name in sorted(found.keys() - self.known.keys()):
            f = found[name]
            log.info("discovered %s server at %s (PIDs %s) on %s", f.kind, f.url,
                     ", ".join(map(str, f.pids)), ", ".join(f.devices))
        for name in sorted(self.known.keys() - found.keys()):
            log.info("discovered server %s at %s went away: no longer scraped", name, self.known[name].url)
        self.known = found
        return [found[n] for n in sorted(found)]


def gpu_processes(devices: Iterable[object]) -> dict[int, list[str]]:
    """{pid: [GPU ids]} of the compute processes NVML lists on each GPU."""
    out: dict[int, list[str]] = {}
    for d in devices:
        read = getattr(d, "processes", None)
        if getattr(d, "kind", None) != "gpu" or read is None:
            continue
        try:
            procs = read() or []
        except ProbeError as e:  # a GPU that cannot list its processes holds none we can see
            log.info("GPU %s processes: %s", getattr(d, "id", "?"), e)
            continue
        for p in procs:
            out.setdefault(int(p["pid"]), []).append(d.id)
    return out
