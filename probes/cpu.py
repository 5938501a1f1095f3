"""The CPU as a first-class device: utilization, frequency and memory from psutil, package
energy from RAPL when readable, otherwise power estimated from the TDP table (marked
``estimated``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import psutil

from meterd.probes.cpu_tdp import watts_per_core
from meterd.probes.device import Device
from meterd.errors import RaplUnavailable
from meterd.probes.rapl import RaplCounter
from meterd.probes.readings import DeviceSample, Reading

# The first utilization figure needs two CPU-time readings this far apart at least.
MIN_UTIL_INTERVAL_S = 0.1


def cpu_model_name(root: str | os.PathLike = "/") -> str:
    try:
        text = (Path(root) / "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "CPU"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model name", "cpu model") and value.strip():
            return value.strip()
    return "CPU"


def busy_pct(prev: tuple[float, float], cur: tuple[float, float]) -> float | None:
    """Utilization between two (total, idle) CPU-time readings, in percent."""
    total = cur[0] - prev[0]
    if total <= 0:
        return None
    return max(0.0, min(100.0, 100.0 * (total - (cur[1] - prev[1])) / total))


def _times() -> tuple[float, float]:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t), idle


class CpuDevice(Device):
    """All CPU packages of the node as one device, id ``cpu``."""

    kind = "cpu"

    def __init__(
        self,
        root: str | os.PathLike = "/",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.id = "cpu"
        self.name = cpu_model_name(root)
        self._clock, self._monotonic, self._sleep = clock, monotonic, sleep
        self.logical_cpus = psutil.cpu_count(logical=True) or 1
        self.w_per_core, self.tdp_basis = watts_per_core(self.name)
        try:
            self._rapl: RaplCounter | None = RaplCounter(root)
            self.rapl_reason: str | None = None
        except RaplUnavailable as e:
            self._rapl, self.rapl_reason = None, str(e)
        self._prev_times = _times()
        self._prev_mono = monotonic()
        self._prev_energy_j = self._rapl.read_j() if self._rapl else None

    def sample(self, detail: bool = True) -> DeviceSample:
        wait = MIN_UTIL_INTERVAL_S - (self._monotonic() - self._prev_mono)
        if wait > 0:
            self._sleep(wait)
        mono = self._monotonic()
        at = self._clock()
        times = _times()
        util = busy_pct(self._prev_times, times)
        dt = mono - self._prev_mono
        self._prev_times, self._prev_mono = times, mono

        power: Reading | None = None
        energy: Reading | None = None
        reason = self.rapl_reason
        if self._rapl is not None:
            try:
                total_j = self._rapl.read_j()
            except RaplUnavailable as e:
                self._rapl, self.rapl_reason = None, str(e)
                reason = self.rapl_reason
            else:
                energy = Reading(total_j, "counter", at)
                if self._prev_energy_j is not None and dt > 0:
                    power = Reading((total_j - self._prev_energy_j) / dt, "counter", at)
                self._prev_energy_j = total_j
        if power is None and util is not None:
            power = Reading(self.w_per_core * self.logical_cpus * util / 100.0, "estimated", at)

        mem = psutil.virtual_memory()
        freq = psutil.cpu_freq()
        return DeviceSample(
            id=self.id, kind="cpu", name=self.name, at=at, state="ok",
            power_w=power, energy_j=energy,
            util_pct=Reading(util, "average", at) if util is not None else None,
            mem_used_bytes=int(mem.total - mem.available), mem_total_bytes=int(mem.total),
            reason=reason,
            extra={
                "logical_cpus": self.logical_cpus,
                "freq_mhz": round(freq.current, 1) if freq else None,
                "power_estimate_basis": None if energy else self.tdp_basis,
            },
        )
