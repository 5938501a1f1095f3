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
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from meterd.errors import ProbeError
from meterd.probes.counters import Totals
from meterd.probes.process_owner import listening_sockets
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
    """Finds the servers behind the GPUs' processes; :meth:`discover` each time the agent looks.

    For each GPU process, the process itself, then its parent, and so on up to
    ``MAX_LEVELS``: the first of them with a listening port that serves a known server's metrics
    is its server (a vLLM engine's own NCCL or torch.distributed ports are not; its API server,
    the parent, is). A port that served no known metrics is not asked again for ``retry_s``."""

    MAX_LEVELS = 4

    def __init__(self, sockets: Callable[[], dict[int, set[tuple[str, int]]]] = listening_sockets,
                 proc_root: str = "/proc", timeout_s: float = 1.0, retry_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sockets, self.proc_root, self.timeout_s = sockets, proc_root, timeout_s
        self.retry_s, self.clock = retry_s, clock
        self.known: dict[str, Found] = {}
        self._not_servers: dict[tuple[int, str], float] = {}  # (pid, url) -> when it served nothing known

    def _probe(self, pid: int, url: str, client) -> str | None:
        """The server kind at ``url`` (``auto``), or None."""
        key = (pid, url)
        at = self._not_servers.get(key)
        if at is not None and self.clock() - at < self.retry_s:
            return None
        result = TokenSource(url, kind="auto", timeout_s=self.timeout_s).scrape(client)
        if isinstance(result, Totals):
            self._not_servers.pop(key, None)
            return result.kind
        self._not_servers[key] = self.clock()
        return None

    def discover(self, gpu_pids: dict[int, Iterable[str]], client) -> list[Found]:
        """The servers found now (scraped once each, recognised by ``auto``), by name; each that
        appeared or went away since the last call is logged once."""
        listening = self.sockets()
        by_url: dict[str, tuple[str, set[str], set[int]]] = {}
        kinds: dict[str, str | None] = {}
        for pid, devices in gpu_pids.items():
            p: int | None = pid
            for _ in range(self.MAX_LEVELS):
                if p is None:
                    break
                hits = []
                for address, port in sorted(listening.get(p, ())):
                    for path in METRICS_PATHS:
                        url = loopback_url(address, port, path)
                        if url is None:
                            continue
                        if url not in kinds:
                            kinds[url] = self._probe(p, url, client)
                        if kinds[url] is not None:
                            hits.append(url)
                for url in hits:
                    kind, devs, pids = by_url.setdefault(url, (kinds[url], set(), set()))  # type: ignore[arg-type]
                    devs.update(devices)
                    pids.add(pid)
                if hits:
                    break
                p = _parent(self.proc_root, p)
        live = {p for p in listening}
        self._not_servers = {k: v for k, v in self._not_servers.items() if k[0] in live}
        found: dict[str, Found] = {}
        for url, (kind, devices, pids) in by_url.items():
            port = url.rsplit(":", 1)[1].split("/", 1)[0]
            name = f"{kind}@{port}"
            found[name] = Found(name, kind, url, tuple(sorted(devices)), tuple(sorted(pids)))
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
