"""A faithful fake NVML, shared by every test that touches GPU code.

It builds a stand-in ``pynvml`` module from the real binding's constants, exception classes
and ctypes structures, with the functions played by :class:`FakeNvml`:

- several GPUs whose power follows a piecewise-linear load curve in time,
- energy counters (mJ) that advance with the exact integral of that power and can reset
  (a driver reload),
- NOT_SUPPORTED per architecture (no energy counter before Volta, no power fields before Hopper,
  no MIG outside A100/H100/H200/B200),
- a GPU that falls off the bus at a given time (every call then raises GPU_IS_LOST),
- MIG instances (with their compute slices, ``nvmlDeviceGetAttributes``) and GPM samples
  (``nvmlGpmSampleGet`` / ``nvmlGpmMigSampleGet`` / ``nvmlGpmMetricsGet``: SM activity per GPU or
  per GPU instance averaged between two samples, Hopper and later only; NOT_SUPPORTED before),
- running compute processes (per GPU, and per MIG instance with their GPU/compute instance ids),
- per-process utilization samples (``nvmlDeviceGetProcessUtilization``): the driver takes one
  sample per ``sample_period_s``; a call returns, for each process that was busy (SM or memory)
  in a sample newer than ``lastSeenTimeStamp`` (µs of CPU time), its newest such sample, and
  NOT_FOUND when there is none; NOT_SUPPORTED while MIG is enabled (NVML's documented limit),
- NVML missing entirely (library not found) or the driver not loaded,
- any NVML error code (NO_PERMISSION, UNKNOWN, TIMEOUT...) raised by any function on demand
  (:meth:`FakeNvml.fail`).

Time comes from ``clock`` (a callable returning seconds); tests pass a :class:`ManualClock`.
"""

from __future__ import annotations

import ctypes
import time
import types
from dataclasses import dataclass, field
from typing import Callable

import pynvml as real

MiB = 1 << 20
GiB = 1 << 30


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def integrate(curve: list[tuple[float, float]], a: float, b: float) -> float:
    """Exact integral (watt-seconds = joules) of a piecewise-linear curve from a to b.

    ``curve`` is [(t, watts), ...] sorted by t; flat before the first point and after the last.
    """
    if b <= a:
        return 0.0
    pts = list(curve)
    knots = sorted({a, b, *(t for t, _ in pts if a < t < b)})
    total = 0.0
    for lo, hi in zip(knots, knots[1:]):
        total += (power_at(pts, lo) + power_at(pts, hi)) / 2 * (hi - lo)
    return total


def power_at(curve: list[tuple[float, float]], t: float) -> float:
    if t <= curve[0][0]:
        return curve[0][1]
    for (t0, w0), (t1, w1) in zip(curve, curve[1:]):
        if t0 <= t <= t1:
            return w0 if t1 == t0 else w0 + (w1 - w0) * (t - t0) / (t1 - t0)
    return curve[-1][1]


ARCH = {
    "pascal": real.NVML_DEVICE_ARCH_PASCAL,
    "volta": real.NVML_DEVICE_ARCH_VOLTA,
    "ampere": real.NVML_DEVICE_ARCH_AMPERE,
    "ada": real.NVML_DEVICE_ARCH_ADA,
    "hopper": real.NVML_DEVICE_ARCH_HOPPER,
}


@dataclass
class FakeMig:
    gpu_instance_id: int
    compute_instance_id: int
    mem_total_bytes: int
    mem_used_bytes: int = 0
    uuid: str = ""
    #: compute slices of this instance's compute instance (``computeInstanceSliceCount``), and of
    #: its GPU instance; an H100 has 7 of each (1g.10gb: 1, 3g.40gb: 3, 7g.80gb: 7)
    slices: int = 1
    gpu_slices: int | None = None
    #: SM activity (percent) over seconds since the fake started, piecewise linear, as GPM reports it
    activity: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 0.0)])
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, used bytes)


@dataclass
class FakeGpu:
    """One fake GPU. ``curve`` is watts over seconds since the fake started."""

    name: str = "NVIDIA H100 80GB HBM3"
    arch: str = "hopper"
    mem_total_bytes: int = 80 * GiB
    mem_used_bytes: int = 1 * GiB
    idle_w: float = 70.0
    max_w: float = 700.0
    curve: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 100.0)])
    uuid: str = ""
    pci_bus_id: str = ""
    lost_at: float | None = None  # seconds since start at which it falls off the bus
    energy_offset_s: float = 0.0  # the energy counter counts from here (a reset moves it)
    energy_base_mj: int = 0
    mig: list[FakeMig] | None = None
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, used bytes)
    #: SM utilization (percent) per process: a constant or a piecewise-linear curve over seconds
    #: since the fake started; the driver samples it every ``sample_period_s``
    proc_sm: dict[int, float | list[tuple[float, float]]] = field(default_factory=dict)
    proc_mem: dict[int, float] = field(default_factory=dict)  # memory-controller utilization per process
    sample_period_s: float = 1.0
    #: device-wide SM activity for GPM (percent over time); None: the sum of the processes' SM use
    activity: list[tuple[float, float]] | None = None
    sm_count: int = 132
    throttle_mask: int = 0
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    temperature_c: int = 41
    power_limit_w: float | None = None

    def supports_energy(self) -> bool:
        return ARCH[self.arch] >= real.NVML_DEVICE_ARCH_VOLTA

    def supports_power_fields(self) -> bool:
        return ARCH[self.arch] >= real.NVML_DEVICE_ARCH_HOPPER

    def supports_mig(self) -> bool:
        return any(k in self.name for k in ("A100", "H100", "H200", "B200", "A30"))

    def supports_gpm(self) -> bool:
        return ARCH[self.arch] >= real.NVML_DEVICE_ARCH_HOPPER

    def sm_curve(self, pid: int) -> list[tuple[float, float]]:
        c = self.proc_sm.get(pid, 0.0)
        return [(0.0, float(c))] if isinstance(c, (int, float)) else list(c)


def h100(**kw) -> FakeGpu:
    return FakeGpu(**kw)


def a100(**kw) -> FakeGpu:
    kw.setdefault("name", "NVIDIA A100-SXM4-80GB")
    kw.setdefault("arch", "ampere")
    kw.setdefault("max_w", 400.0)
    kw.setdefault("idle_w", 50.0)
    return FakeGpu(**kw)


def p100(**kw) -> FakeGpu:
    kw.setdefault("name", "Tesla P100-PCIE-16GB")
    kw.setdefault("arch", "pascal")
    kw.setdefault("max_w", 250.0)
    kw.setdefault("idle_w", 30.0)
    kw.setdefault("mem_total_bytes", 16 * GiB)
    return FakeGpu(**kw)


class _Handle:
    def __init__(self, gpu: FakeGpu, index: int, mig: FakeMig | None = None) -> None:
        self.gpu, self.index, self.mig = gpu, index, mig


@dataclass
class _GpmSample:
    """What one GPM sample buffer holds once filled: whose it is and when it was taken."""

    buffer: object  # keeps the memory behind the opaque pointer alive
    gpu: FakeGpu | None = None
    mig: FakeMig | None = None
    at: float | None = None  # seconds since the fake started


#: Every NVML error code the binding defines, by name.
ERROR_CODES: dict[str, int] = {n: getattr(real, n) for n in dir(real) if n.startswith("NVML_ERROR_")}


class FakeNvml:
    """The fake library's state. ``module`` is what replaces ``pynvml`` in probes."""

    #: The calls made while NVML starts and enumerates the GPUs (the rest are a sample's).
    START_CALLS = frozenset({
        "nvmlInit", "nvmlShutdown", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetArchitecture"})

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        clock: Callable[[], float] = time.time,
        missing: str | None = None,  # None, "library" or "driver"
        driver_version: str = "570.124.06",
    ) -> None:
        self.gpus = list(gpus or [])
        self.clock = clock
        self.start = clock()
        self.missing = missing
        self.driver_version = driver_version
        self.initialised = 0
        self.calls: list[str] = []
        self._failing: tuple[int, frozenset[str] | None, frozenset[str]] | None = None
        self._gpm: dict[int, _GpmSample] = {}  # address of an allocated sample -> its contents
        for i, g in enumerate(self.gpus):
            g.uuid = g.uuid or f"GPU-{i:08x}-fake-4000-8000-{i:012x}"
            g.pci_bus_id = g.pci_bus_id or f"00000000:{0x18 + i:02X}:00.0"
            for j, m in enumerate(g.mig or []):
                m.uuid = m.uuid or f"MIG-{i:04x}{j:04x}-fake"
        self.module = self._build_module()

    # -- test controls ------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.clock() - self.start

    def power_w(self, index: int, at: float | None = None) -> float:
        g = self.gpus[index]
        return power_at(g.curve, self.elapsed() if at is None else at)

    def energy_j(self, index: int) -> float:
        """What the energy counter reads now, in joules."""
        g = self.gpus[index]
        return (g.energy_base_mj + int(integrate(g.curve, g.energy_offset_s, self.elapsed()) * 1000)) / 1000

    def reset_energy(self, index: int) -> None:
        """The driver reloaded: the counter starts again from zero now."""
        g = self.gpus[index]
        g.energy_offset_s = self.elapsed()
        g.energy_base_mj = 0

    def lose(self, index: int, after_s: float = 0.0) -> None:
        """GPU ``index`` falls off the bus ``after_s`` seconds from now."""
        self.gpus[index].lost_at = self.elapsed() + after_s

    def fail(self, code: int, calls: "set[str] | frozenset[str] | None" = None, *,
             except_calls: "set[str] | frozenset[str]" = frozenset()) -> "FakeNvml":
        """From now on the functions named in ``calls`` (None: every function, less
        ``except_calls``) raise ``NVMLError(code)``, as the real library does for that code."""
        self._failing = (code, None if calls is None else frozenset(calls), frozenset(except_calls))
        return self

    def heal(self) -> None:
        """Stop the failures :meth:`fail` started."""
        self._failing = None

    def functions(self) -> list[str]:
        """The names of every NVML function the fake plays."""
        return sorted(n for n in vars(self.module) if n.startswith("nvml") and callable(getattr(self.module, n))
                      and not n.startswith("nvmlClocks"))

    def process_samples(self, index: int, last_seen_us: int) -> list[tuple[int, int, int, int]]:
        """(pid, timestamp µs, smUtil, memUtil) of GPU ``index``'s driver samples newer than
        ``last_seen_us``: per process, the newest in which it was busy."""
        g = self.gpus[index]
        now = self.elapsed()
        period = g.sample_period_s
        k_last = int(now // period + 1e-9)  # the newest complete sample period ends at k_last × period
        pids = sorted(set(g.proc_sm) | set(g.proc_mem))
        out = []
        for pid in pids:
            for k in range(k_last, 0, -1):
                ts = int(round((self.start + k * period) * 1e6))
                if ts <= last_seen_us:
                    break
                sm = integrate(g.sm_curve(pid), (k - 1) * period, k * period) / period
                mem = g.proc_mem.get(pid, 0.0)
                if round(sm) > 0 or round(mem) > 0:
                    out.append((pid, ts, int(round(sm)), int(round(mem))))
                    break
        return out

    def install(self, monkeypatch) -> "FakeNvml":
        """Patch the ``pynvml`` that probes use."""
        from meterd.probes import nvml as nvml_probe

        monkeypatch.setattr(nvml_probe, "pynvml", self.module)
        return self

    # -- the fake library -----------------------------------------------------------------------

    def _raise(self, code: int):
        raise real.NVMLError(code)

    def _check(self, h: _Handle) -> FakeGpu:
        if not self.initialised:
            self._raise(real.NVML_ERROR_UNINITIALIZED)
        if not isinstance(h, _Handle):
            self._raise(real.NVML_ERROR_INVALID_ARGUMENT)
        g = h.gpu
        if g.lost_at is not None and self.elapsed() >= g.lost_at:
            self._raise(real.NVML_ERROR_GPU_IS_LOST)
        return g

    def _build_module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        for name in dir(real):
            if name.startswith(("NVML_", "nvmlClocks", "NVMLError", "c_nvml")):
                setattr(m, name, getattr(real, name))
        fake = self

        def fn(f):
            def wrapper(*args):
                fake.calls.append(f.__name__)
                if fake._failing is not None:
                    code, only, spared = fake._failing
                    if (only is None or f.__name__ in only) and f.__name__ not in spared:
                        fake._raise(code)
                return f(*args)
            wrapper.__name__ = f.__name__
            setattr(m, f.__name__, wrapper)
            return f

        @fn
        def nvmlInit():
            if fake.missing == "library":
                fake._raise(real.NVML_ERROR_LIBRARY_NOT_FOUND)
            if fake.missing == "driver":
                fake._raise(real.NVML_ERROR_DRIVER_NOT_LOADED)
            fake.initialised += 1

        @fn
        def nvmlShutdown():
            if not fake.initialised:
                fake._raise(real.NVML_ERROR_UNINITIALIZED)
            fake.initialised -= 1

        @fn
        def nvmlSystemGetDriverVersion():
            if not fake.initialised:
                fake._raise(real.NVML_ERROR_UNINITIALIZED)
            return fake.driver_version

        @fn
        def nvmlDeviceGetCount():
            if not fake.initialised:
                fake._raise(real.NVML_ERROR_UNINITIALIZED)
            return len(fake.gpus)

        @fn
        def nvmlDeviceGetHandleByIndex(i):
            if not fake.initialised:
                fake._raise(real.NVML_ERROR_UNINITIALIZED)
            if not 0 <= i < len(fake.gpus):
                fake._raise(real.NVML_ERROR_INVALID_ARGUMENT)
            h = _Handle(fake.gpus[i], i)
            fake._check(h)
            return h

        @fn
        def nvmlDeviceGetName(h):
            fake._check(h)
            return h.gpu.name if h.mig is None else f"{h.gpu.name} MIG"

        @fn
        def nvmlDeviceGetUUID(h):
            fake._check(h)
            return h.gpu.uuid if h.mig is None else h.mig.uuid

        @fn
        def nvmlDeviceGetPciInfo(h):
            fake._check(h)
            info = real.nvmlPciInfo_t()
            info.busId = h.gpu.pci_bus_id.encode()
            return info

        @fn
        def nvmlDeviceGetArchitecture(h):
            return ARCH[fake._check(h).arch]

        @fn
        def nvmlDeviceGetPowerUsage(h):
            g = fake._check(h)
            t = fake.elapsed()
            if ARCH[g.arch] >= real.NVML_DEVICE_ARCH_AMPERE and "A100" not in g.name:
                return int(integrate(g.curve, t - 1.0, t) * 1000)  # 1 s average, mW
            return int(power_at(g.curve, t) * 1000)

        @fn
        def nvmlDeviceGetFieldValues(h, field_ids):
            g = fake._check(h)
            t = fake.elapsed()
            values = (real.c_nvmlFieldValue_t * len(field_ids))()
            for i, fid in enumerate(field_ids):
                v = values[i]
                v.fieldId = fid
                v.timestamp = int(fake.clock() * 1e6)
                if fid == real.NVML_FI_DEV_POWER_INSTANT and g.supports_power_fields():
                    v.nvmlReturn, v.value.uiVal = 0, int(power_at(g.curve, t) * 1000)
                elif fid == real.NVML_FI_DEV_POWER_AVERAGE and g.supports_power_fields():
                    v.nvmlReturn, v.value.uiVal = 0, int(integrate(g.curve, t - 1.0, t) * 1000)
                else:
                    v.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
            return values

        @fn
        def nvmlDeviceGetTotalEnergyConsumption(h):
            g = fake._check(h)
            if not g.supports_energy():
                fake._raise(real.NVML_ERROR_NOT_SUPPORTED)
            return int(round(fake.energy_j(h.index) * 1000))

        @fn
        def nvmlDeviceGetUtilizationRates(h):
            g = fake._check(h)
            p = power_at(g.curve, fake.elapsed())
            u = real.c_nvmlUtilization_t()
            u.gpu = int(round(max(0.0, min(1.0, (p - g.idle_w) / (g.max_w - g.idle_w))) * 100))
            u.memory = u.gpu // 2
            return u

        @fn
        def nvmlDeviceGetMemoryInfo(h):
            fake._check(h)
            mem = real.c_nvmlMemory_t()
            if h.mig is not None:
                mem.total, mem.used = h.mig.mem_total_bytes, h.mig.mem_used_bytes
            else:
                mem.total, mem.used = h.gpu.mem_total_bytes, h.gpu.mem_used_bytes
            mem.free = mem.total - mem.used
            return mem

        @fn
        def nvmlDeviceGetClockInfo(h, clock_type):
            g = fake._check(h)
            return g.sm_clock_mhz if clock_type == real.NVML_CLOCK_SM else g.mem_clock_mhz

        @fn
        def nvmlDeviceGetTemperature(h, sensor):
            return fake._check(h).temperature_c

        @fn
        def nvmlDeviceGetEnforcedPowerLimit(h):
            g = fake._check(h)
            return int((g.power_limit_w or g.max_w) * 1000)

        @fn
        def nvmlDeviceGetCurrentClocksEventReasons(h):
            return fake._check(h).throttle_mask

        @fn
        def nvmlDeviceGetMigMode(h):
            g = fake._check(h)
            if not g.supports_mig():
                fake._raise(real.NVML_ERROR_NOT_SUPPORTED)
            on = 1 if g.mig else 0
            return [on, on]

        @fn
        def nvmlDeviceGetMaxMigDeviceCount(h):
            g = fake._check(h)
            if not g.supports_mig():
                fake._raise(real.NVML_ERROR_NOT_SUPPORTED)
            return 7

        @fn
        def nvmlDeviceGetMigDeviceHandleByIndex(h, i):
            g = fake._check(h)
            if not g.mig or i >= len(g.mig):
                fake._raise(real.NVML_ERROR_NOT_FOUND)
            return _Handle(g, h.index, g.mig[i])

        @fn
        def nvmlDeviceGetGpuInstanceId(h):
            fake._check(h)
            if h.mig is None:
                fake._raise(real.NVML_ERROR_INVALID_ARGUMENT)
            return h.mig.gpu_instance_id

        @fn
        def nvmlDeviceGetComputeInstanceId(h):
            fake._check(h)
            if h.mig is None:
                fake._raise(real.NVML_ERROR_INVALID_ARGUMENT)
            return h.mig.compute_instance_id

        def _procs(h):
            g = fake._check(h)
            na = real.NVML_VALUE_NOT_AVAILABLE_uint.value
            rows = []
            if h.mig is not None:
                rows = [(pid, used, h.mig) for pid, used in h.mig.processes]
            else:
                rows = [(pid, used, None) for pid, used in g.processes]
                rows += [(pid, used, m) for m in (g.mig or []) for pid, used in m.processes]
            out = []
            for pid, used, m in rows:
                p = real.c_nvmlProcessInfo_v3_t()
                p.pid, p.usedGpuMemory = pid, used
                p.gpuInstanceId = m.gpu_instance_id if m is not None else na
                p.computeInstanceId = m.compute_instance_id if m is not None else na
                out.append(p)
            return out

        @fn
        def nvmlDeviceGetComputeRunningProcesses(h):
            return _procs(h)

        @fn
        def nvmlDeviceGetComputeRunningProcesses_v3(h):
            return _procs(h)

        @fn
        def nvmlDeviceGetProcessUtilization(h, last_seen_us):
            g = fake._check(h)
            if h.mig is not None or g.mig:
                fake._raise(real.NVML_ERROR_NOT_SUPPORTED)  # no per-process utilization in MIG mode
            rows = fake.process_samples(h.index, int(last_seen_us))
            if not rows:
                fake._raise(real.NVML_ERROR_NOT_FOUND)
            out = []
            for pid, ts, sm, mem in rows:
                smp = real.c_nvmlProcessUtilizationSample_t()
                smp.pid, smp.timeStamp, smp.smUtil, smp.memUtil, smp.encUtil, smp.decUtil = pid, ts, sm, mem, 0, 0
                out.append(smp)
            return out

        @fn
        def nvmlDeviceGetAttributes(h):
            g = fake._check(h)
            a = real.c_nvmlDeviceAttributes()
            if h.mig is not None:
                total = 7
                a.multiprocessorCount = g.sm_count * h.mig.slices // total
                a.computeInstanceSliceCount = h.mig.slices
                a.gpuInstanceSliceCount = h.mig.gpu_slices or h.mig.slices
                a.memorySizeMB = h.mig.mem_total_bytes // MiB
            else:
                a.multiprocessorCount = g.sm_count
                a.memorySizeMB = g.mem_total_bytes // MiB
            return a

        @fn
        def nvmlDeviceIsMigDeviceHandle(h):
            fake._check(h)
            return 1 if h.mig is not None else 0

        @fn
        def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(h):
            fake._check(h)
            if h.mig is None:
                fake._raise(real.NVML_ERROR_INVALID_ARGUMENT)
            return _Handle(h.gpu, h.index)

        # -- GPM (GPU performance monitoring), Hopper and later ---------------------------------

        @fn
        def nvmlGpmQueryDeviceSupport(h):
            g = fake._check(h)
            support = real.c_nvmlGpmSupport_t()
            support.version = real.NVML_GPM_SUPPORT_VERSION
            support.isSupportedDevice = 1 if g.supports_gpm() else 0
            return support

        @fn
        def nvmlGpmSampleAlloc():
            if not fake.initialised:
                fake._raise(real.NVML_ERROR_UNINITIALIZED)
            buf = ctypes.create_string_buffer(16)
            ptr = ctypes.cast(buf, real.c_nvmlGpmSample_t)
            fake._gpm[ctypes.addressof(buf)] = _GpmSample(buf)
            return ptr

        def _gpm_of(ptr) -> _GpmSample:
            addr = ctypes.cast(ptr, ctypes.c_void_p).value
            if addr not in fake._gpm:
                fake._raise(real.NVML_ERROR_INVALID_ARGUMENT)
            return fake._gpm[addr]

        @fn
        def nvmlGpmSampleFree(ptr):
            _gpm_of(ptr)
            del fake._gpm[ctypes.cast(ptr, ctypes.c_void_p).value]

        @fn
        def nvmlGpmSampleGet(h, ptr):
            g = fake._check(h)
            if not g.supports_gpm():
                fake._raise(real.NVML_ERROR_NOT_SUPPORTED)
            smp = _gpm_of(ptr)
            smp.gpu, smp.mig, smp.at = g, h.mig, fake.elapsed()
            return ptr

        @fn
        def nvmlGpmMigSampleGet(h, gpu_instance_id, ptr):
            g = fake._check(h)
            if not g.supports_gpm():
                fake._raise(real.NVML_ERROR_NOT_SUPPORTED)
            mig = next((m for m in g.mig or [] if m.gpu_instance_id == gpu_instance_id), None)
            if mig is None:
                fake._raise(real.NVML_ERROR_NOT_FOUND)
            smp = _gpm_of(ptr)
            smp.gpu, smp.mig, smp.at = g, mig, fake.elapsed()
            return ptr

        def _activity(smp: _GpmSample, a: float, b: float) -> float:
            """Mean SM activity (percent) of the sampled GPU or GPU instance over [a, b]."""
            if smp.mig is not None:
                return integrate(smp.mig.activity, a, b) / (b - a)
            g = smp.gpu
            if g.activity is not None:
                return integrate(g.activity, a, b) / (b - a)
            return min(100.0, sum(integrate(g.sm_curve(p), a, b) for p in g.proc_sm) / (b - a))

        @fn
        def nvmlGpmMetricsGet(mg):
            if mg.version != real.NVML_GPM_METRICS_GET_VERSION:
                fake._raise(real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
            a, b = _gpm_of(mg.sample1), _gpm_of(mg.sample2)
            if a.at is None or b.at is None or a.gpu is not b.gpu or a.mig is not b.mig or b.at <= a.at:
                fake._raise(real.NVML_ERROR_INVALID_ARGUMENT)
            for i in range(mg.numMetrics):
                metric = mg.metrics[i]
                if metric.metricId in (real.NVML_GPM_METRIC_SM_UTIL, real.NVML_GPM_METRIC_GRAPHICS_UTIL):
                    metric.nvmlReturn = 0
                    metric.value = _activity(b, a.at, b.at)
                else:
                    metric.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
            return mg

        return m
