"""Who uses a GPU: its compute processes and their SM utilization since the last read, and the
activity of its MIG instances. Read through the one NVML gateway (:func:`probes.nvml.nvml_query`).

- ``nvmlDeviceGetComputeRunningProcesses`` lists the processes holding a context (PID, memory).
- ``nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)`` returns, per process that was
  busy, its newest driver sample newer than the cursor (CPU time in µs), and NOT_FOUND when no
  process was busy since then: that is "all idle", not "unknown". The cursor moves to the newest
  timestamp seen. NVML does not report it while MIG is enabled (NOT_SUPPORTED): no split then.
- MIG: per GPU instance, SM activity from two GPM samples (``nvmlGpmMigSampleGet``, Hopper and
  later), else the instance's compute slices (``nvmlDeviceGetAttributes``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from meterd.errors import ProbeError
from meterd.probes import nvml as _nvml

log = logging.getLogger(__name__)

_NOT_FOUND = object()


@dataclass(frozen=True)
class ProcessUse:
    pid: int
    sm_pct: int  # SM utilization of its newest sample since the last read; 0: not busy since then
    used_memory_bytes: int | None = None


def _gateway():
    return _nvml.pynvml


class ProcessUtilization:
    """One GPU's processes and their SM use since the previous :meth:`read` (the cursor)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.last_seen_us = 0
        self.supported: bool | None = None  # None until the first read tells

    def read(self) -> list[ProcessUse] | None:
        """The processes with their SM share since the last read; None where the GPU does not
        report per-process utilization (MIG, old GPUs, no permission): nothing to split by."""
        procs = _nvml.nvml_query(
            ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses"), self.handle)
        samples = _nvml.nvml_query("nvmlDeviceGetProcessUtilization", self.handle, self.last_seen_us,
                                   not_found=_NOT_FOUND)
        if samples is None:
            if self.supported is not False:
                log.info("GPU processes: NVML reports no per-process utilization here; no split by process")
            self.supported = False
            return None
        self.supported = True
        sm: dict[int, list[int]] = {}
        if samples is not _NOT_FOUND:
            cursor = self.last_seen_us
            for s in samples:
                ts = int(s.timeStamp)
                if ts <= cursor or int(s.pid) == 0:
                    continue  # a stale or empty slot of the driver's buffer
                sm.setdefault(int(s.pid), []).append(int(s.smUtil))
                self.last_seen_us = max(self.last_seen_us, ts)
        out: dict[int, ProcessUse] = {}
        for p in procs or []:
            pid = int(p.pid)
            used = p.usedGpuMemory
            used = None if used is None or used >= (1 << 64) - 1 else int(used)
            out[pid] = ProcessUse(pid, 0, used)
        for pid, values in sm.items():
            pct = round(sum(values) / len(values))
            prev = out.get(pid)
            out[pid] = ProcessUse(pid, min(100, pct), prev.used_memory_bytes if prev else None)
        return [out[p] for p in sorted(out)]


@dataclass(frozen=True)
class MigActivity:
    uuid: str
    gpu_instance_id: int
    slices: int  # compute slices of the instance
    activity_pct: float | None  # GPM SM utilization since the previous read; None: not reported


class MigMonitor:
    """A MIG-enabled GPU's instances: each one's compute slices and, where GPM reports it, its
    SM activity between two reads."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._prev: dict[int, Any] = {}  # gpu instance id -> the GPM sample of the previous read
        self.gpm = self._gpm_supported()

    def _gpm_supported(self) -> bool:
        try:
            support = _nvml.nvml_query("nvmlGpmQueryDeviceSupport", self.handle)
        except ProbeError:
            return False
        return bool(support is not None and support.isSupportedDevice)

    def instances(self) -> list[tuple[Any, str, int, int]]:
        """(handle, uuid, gpu instance id, compute slices) of each MIG device; [] without MIG."""
        mode = _nvml.nvml_query("nvmlDeviceGetMigMode", self.handle)
        if mode is None or not mode[0]:
            return []
        out = []
        for i in range(_nvml.nvml_query("nvmlDeviceGetMaxMigDeviceCount", self.handle, default=0)):
            mig = _nvml.nvml_query("nvmlDeviceGetMigDeviceHandleByIndex", self.handle, i)
            if mig is None:
                continue
            uuid = _nvml._text(_nvml.nvml_query("nvmlDeviceGetUUID", mig, default=""))
            gi = _nvml.nvml_query("nvmlDeviceGetGpuInstanceId", mig)
            attrs = _nvml.nvml_query("nvmlDeviceGetAttributes", mig)
            slices = int(attrs.computeInstanceSliceCount) if attrs is not None else 0
            out.append((mig, uuid, int(gi) if gi is not None else i, slices))
        return out

    def read(self) -> list[MigActivity]:
        pynvml = _gateway()
        result = []
        for _, uuid, gi, slices in self.instances():
            activity = None
            if self.gpm:
                sample = _nvml.nvml_query("nvmlGpmSampleAlloc")
                got = sample is not None and _nvml.nvml_query("nvmlGpmMigSampleGet", self.handle, gi, sample) is not None
                prev = self._prev.pop(gi, None)
                if got and prev is not None:
                    mg = pynvml.c_nvmlGpmMetricsGet_t()
                    mg.version = pynvml.NVML_GPM_METRICS_GET_VERSION
                    mg.numMetrics = 1
                    mg.sample1, mg.sample2 = prev, sample
                    mg.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
                    try:
                        mg = _nvml.nvml_query("nvmlGpmMetricsGet", mg)
                    except ProbeError as e:
                        log.info("GPM metrics of MIG instance %s: %s", uuid, e)
                        mg = None
                    if mg is not None and mg.metrics[0].nvmlReturn == 0:
                        activity = max(0.0, min(100.0, float(mg.metrics[0].value)))
                if prev is not None:
                    _nvml.nvml_query("nvmlGpmSampleFree", prev)
                if got:
                    self._prev[gi] = sample
                elif sample is not None:
                    _nvml.nvml_query("nvmlGpmSampleFree", sample)
            result.append(MigActivity(uuid, gi, slices, activity))
        return result
