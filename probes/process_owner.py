"""What a GPU process is, for billing: the name its share of a GPU is billed to (its *owner*).

In order:

1. the token source whose listening TCP port the process, or one of its ancestors, owns (vLLM's
   API server listens and its engine core holds the GPU): ``source:<name>``;
2. its cgroup (``/proc/PID/cgroup``): a Kubernetes pod (``pod:<uid>``), else a container
   (``container:<first 12 of its id>``: Docker, containerd, CRI-O, Podman), else a systemd
   service (``unit:<name>.service``);
3. its command name (``/proc/PID/comm``): ``cmd:<name>``.

:func:`cgroup_owner` is pure (the text of the cgroup file in, an owner out). ``proc_root``
is ``/proc`` unless a test hands another folder; listening sockets come from psutil.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

import psutil

log = logging.getLogger(__name__)

IDLE = "idle"

_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_CONTAINER = re.compile(r"(?:^|[/-])(?:docker|cri-containerd|crio|libpod|containerd)?-?([0-9a-f]{64})(?:\.scope)?$")
_UNIT = re.compile(r"([A-Za-z0-9:_.@\\-]+\.service)$")


def cgroup_owner(text: str) -> str | None:
    """The owner a cgroup file names, or None (a login session, the root cgroup)."""
    paths = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths.append(parts[2].strip())
    # cgroup v2's single line first ("0::/..."), then v1's controllers
    paths.sort(key=lambda p: 0 if p else 1)
    for path in paths:
        m = _POD.search(path)
        if m:
            return "pod:" + m.group(1).replace("_", "-")
    for path in paths:
        for part in reversed([p for p in path.split("/") if p]):
            m = _CONTAINER.search(part)
            if m:
                return "container:" + m.group(1)[:12]
    for path in paths:
        for part in reversed([p for p in path.split("/") if p]):
            m = _UNIT.search(part)
            if m and not part.startswith("user@"):
                return "unit:" + m.group(1)
    return None


def source_ports(sources: Iterable[tuple[str, str]]) -> dict[int, str]:
    """{port: source name} from (name, url) pairs: the ports token sources are scraped on."""
    out: dict[int, str] = {}
    for name, url in sources:
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        out.setdefault(port, name)
    return out


def listening_sockets() -> dict[int, set[tuple[str, int]]]:
    """{pid: {(address, port)}} of every listening TCP socket psutil can see (every process's
    where allowed)."""
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


def listening_ports() -> dict[int, set[int]]:
    """{pid: its listening TCP ports}: :func:`listening_sockets` without the addresses."""
    return {pid: {port for _, port in socks} for pid, socks in listening_sockets().items()}


@dataclass
class OwnerResolver:
    """Names processes. ``ports``: {port: token source name}. Names are cached per (pid, start
    time), so a reused PID is named again."""

    ports: dict[int, str]
    proc_root: str = "/proc"
    listeners: Callable[[], dict[int, set[int]]] = listening_ports
    #: A name other than a token source's is looked at again after this long: a server's GPU
    #: process may hold the GPU before its API server listens.
    recheck_s: float = 30.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._cache: dict[tuple[int, str], tuple[str, float]] = {}

    def _read(self, pid: int, name: str) -> str | None:
        try:
            with open(os.path.join(self.proc_root, str(pid), name), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def _parent(self, pid: int) -> int | None:
        stat = self._read(pid, "stat")
        if not stat or ")" not in stat:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        try:
            ppid = int(fields[1])
        except (IndexError, ValueError):
            return None
        return ppid if ppid > 1 else None

    def _start_time(self, pid: int) -> str:
        stat = self._read(pid, "stat") or ""
        fields = stat.rsplit(")", 1)[-1].split()
        return fields[19] if len(fields) > 19 else ""

    def owner(self, pid: int) -> str:
        key = (pid, self._start_time(pid))
        hit = self._cache.get(key)
        now = self.clock()
        if hit is not None and (hit[0].startswith("source:") or not self.ports or now - hit[1] < self.recheck_s):
            return hit[0]
        name = self._resolve(pid)
        self._cache[key] = (name, now)
        if len(self._cache) > 10_000:
            self._cache.pop(next(iter(self._cache)))
        return name

    def _resolve(self, pid: int) -> str:
        if self.ports:
            listening = self.listeners()
            p: int | None = pid
            for _ in range(16):  # the process, then its ancestors
                if p is None:
                    break
                for port in sorted(listening.get(p, ())):
                    if port in self.ports:
                        return "source:" + self.ports[port]
                p = self._parent(p)
        cg = self._read(pid, "cgroup")
        if cg:
            owner = cgroup_owner(cg)
            if owner:
                return owner
        comm = (self._read(pid, "comm") or "").strip()
        return f"cmd:{comm}" if comm else f"pid:{pid}"
