"""NVIDIA GPUs through NVML (``nvidia-ml-py``, module ``pynvml``).

Every NVML call goes through :func:`nvml_query`, the one gateway (after nvitop's
``nvmlQuery``): it tries versioned names in order, turns NOT_SUPPORTED into ``None``, logs a
missing function once, and converts NVML errors into meterd's own (:mod:`meterd.errors`).
Tests replace the module-level ``pynvml`` with the fake in ``tests/fakes``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import pynvml

from meterd.probes.device import Device, Gpus, NullGpus
from meterd.errors import GpuLost, NvmlCallError, NvmlUnavailable, ProbeError
from meterd.probes.readings import DeviceSample, Reading

log = logging.getLogger(__name__)

_logged_missing: set[str] = set()

# Errors that mean "this field is not there on this GPU", not "the GPU is broken".
_FIELD_ABSENT = {
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_NO_DATA",
    "NVML_ERROR_NOT_FOUND",
}


def _code(name: str) -> int:
    return getattr(pynvml, name)


_ABSENT = object()


def nvml_query(names: str | tuple[str, ...], *args: Any, default: Any = None, not_found: Any = _ABSENT) -> Any:
    """Call the first NVML function of ``names`` that exists; ``default`` if the field is absent
    (``not_found``, where given, for NOT_FOUND: a call that means "nothing since" by it).

    Raises :class:`GpuLost` when the GPU fell off the bus, :class:`NvmlCallError` for any other
    failure (with the NVML error as the cause).
    """
    if isinstance(names, str):
        names = (names,)
    for name in names:
        fn = getattr(pynvml, name, None)
        if fn is None:
            continue
        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            code = e.value
            if code == _code("NVML_ERROR_FUNCTION_NOT_FOUND"):
                _log_missing_once(name)
                continue
            if not_found is not _ABSENT and code == _code("NVML_ERROR_NOT_FOUND"):
                return not_found
            if any(code == _code(n) for n in _FIELD_ABSENT):
                return default
            if code == _code("NVML_ERROR_GPU_IS_LOST"):
                raise GpuLost(f"{name}: GPU is lost (fell off the bus)") from e
            raise NvmlCallError(f"{name}: {e}") from e
    _log_missing_once("/".join(names))
    return default


def _log_missing_once(name: str) -> None:
    if name not in _logged_missing:
        _logged_missing.add(name)
        log.info("NVML function %s is not available in this driver/binding", name)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# Clock event ("throttle") reason bits, named as nvidia-smi -q names them.
_THROTTLE_BITS: tuple[tuple[str, str], ...] = (
    ("nvmlClocksThrottleReasonGpuIdle", "gpu_idle"),
    ("nvmlClocksThrottleReasonApplicationsClocksSetting", "applications_clocks_setting"),
    ("nvmlClocksThrottleReasonSwPowerCap", "sw_power_cap"),
    ("nvmlClocksThrottleReasonHwSlowdown", "hw_slowdown"),
    ("nvmlClocksThrottleReasonSyncBoost", "sync_boost"),
    ("nvmlClocksThrottleReasonSwThermalSlowdown", "sw_thermal_slowdown"),
    ("nvmlClocksThrottleReasonHwThermalSlowdown", "hw_thermal_slowdown"),
    ("nvmlClocksThrottleReasonHwPowerBrakeSlowdown", "hw_power_brake_slowdown"),
    ("nvmlClocksThrottleReasonDisplayClockSetting", "display_clock_setting"),
)


def decode_throttle_reasons(mask: int | None) -> list[str] | None:
    """Names of the set bits of an NVML clocks-event mask (``clocks_event_reasons.*``)."""
    if mask is None:
        return None
    names = []
    for const, label in _THROTTLE_BITS:
        bit = getattr(pynvml, const, None)
        if bit is not None and mask & bit:
            names.append(label)
    return names


class NvidiaGpu(Device):
    """One NVIDIA GPU. Its ``id`` is the GPU UUID, stable across reboots and index changes."""

    kind = "gpu"

    def __init__(self, index: int, clock: Callable[[], float] = time.time) -> None:
        self.index = index
        self._clock = clock
        self._handle = nvml_query("nvmlDeviceGetHandleByIndex", index)
        if self._handle is None:  # NO_PERMISSION, NOT_FOUND...: no handle, no GPU to read
            raise NvmlCallError(f"GPU {index}: NVML gives no handle for it")
        self.name = _text(nvml_query("nvmlDeviceGetName", self._handle, default="NVIDIA GPU"))
        uuid = nvml_query("nvmlDeviceGetUUID", self._handle)
        self.uuid = _text(uuid) if uuid is not None else None
        self.id = self.uuid or f"gpu{index}"
        pci = nvml_query("nvmlDeviceGetPciInfo", self._handle)
        self.pci_bus_id = _text(pci.busId) if pci is not None else None
        self.architecture = nvml_query("nvmlDeviceGetArchitecture", self._handle)
        self.lost_reason: str | None = None

    # -- individual fields; each docstring names the nvidia-smi equivalent --------------------

    def power_w(self, at: float) -> Reading | None:
        """Board power in watts. ``power.draw.instant`` / ``power.draw.average`` where the driver
        reports them as fields; otherwise ``power.draw`` (a 1 s average on Ampere and newer
        except GA100, instantaneous before)."""
        instant, average = self._power_fields_mw()
        if instant is not None:
            return Reading(instant / 1000.0, "instant", at)
        if average is not None:
            return Reading(average / 1000.0, "average", at)
        mw = nvml_query("nvmlDeviceGetPowerUsage", self._handle)
        if mw is None:
            return None
        return Reading(mw / 1000.0, self._power_usage_source(), at)

    def power_average_w(self, at: float) -> Reading | None:
        """``power.draw.average``: the driver's 1-second average, where supported."""
        _, average = self._power_fields_mw()
        return Reading(average / 1000.0, "average", at) if average is not None else None

    def _power_fields_mw(self) -> tuple[int | None, int | None]:
        fields = (
            getattr(pynvml, "NVML_FI_DEV_POWER_INSTANT", None),
            getattr(pynvml, "NVML_FI_DEV_POWER_AVERAGE", None),
        )
        if None in fields:
            return None, None
        values = nvml_query("nvmlDeviceGetFieldValues", self._handle, list(fields))
        if values is None:
            return None, None
        out: list[int | None] = []
        for v in values:
            out.append(int(v.value.uiVal) if v.nvmlReturn == 0 else None)
        return out[0], out[1]

    def _power_usage_source(self) -> str:
        ampere = getattr(pynvml, "NVML_DEVICE_ARCH_AMPERE", 7)
        if self.architecture is not None and self.architecture >= ampere and "A100" not in self.name:
            return "average"
        return "instant"

    def energy_j(self, at: float) -> Reading | None:
        """``total_energy_consumption`` counter (Volta+), joules since the driver loaded."""
        mj = nvml_query("nvmlDeviceGetTotalEnergyConsumption", self._handle)
        return Reading(mj / 1000.0, "counter", at) if mj is not None else None

    def mig_instances(self) -> list[dict] | None:
        """MIG devices (``nvidia-smi -L``), or None when MIG is unsupported or disabled."""
        mode = nvml_query("nvmlDeviceGetMigMode", self._handle)
        if mode is None or not mode[0]:
            return None
        count = nvml_query("nvmlDeviceGetMaxMigDeviceCount", self._handle, default=0)
        instances = []
        for i in range(count):
            mig = nvml_query("nvmlDeviceGetMigDeviceHandleByIndex", self._handle, i)
            if mig is None:
                continue
            mem = nvml_query("nvmlDeviceGetMemoryInfo", mig)
            instances.append({
                "uuid": _text(nvml_query("nvmlDeviceGetUUID", mig, default="")),
                "gpu_instance_id": nvml_query("nvmlDeviceGetGpuInstanceId", mig),
                "compute_instance_id": nvml_query("nvmlDeviceGetComputeInstanceId", mig),
                "mem_total_bytes": int(mem.total) if mem is not None else None,
                "mem_used_bytes": int(mem.used) if mem is not None else None,
            })
        return instances

    def processes(self) -> list[dict] | None:
        """``--query-compute-apps=pid,used_memory``."""
        procs = nvml_query(
            ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses"),
            self._handle,
        )
        if procs is None:
            return None
        return [
            {"pid": int(p.pid), "used_memory_bytes": _opt_int(p.usedGpuMemory)} for p in procs
        ]

    def sample(self, detail: bool = True) -> DeviceSample:
        """What the GPU reads now. Never raises for an NVML error: a GPU that fell off the bus
        is ``lost`` (for good), any other NVML failure makes this sample ``error`` with the
        reason (the next one tries again)."""
        at = self._clock()
        if self.lost_reason is not None:
            return self._lost_sample(at)
        try:
            return self._sample(at, detail)
        except GpuLost as e:
            self.lost_reason = str(e)
            log.warning("GPU %s (%s) is lost: %s", self.index, self.id, e)
            return self._lost_sample(at)
        except ProbeError as e:
            return DeviceSample(id=self.id, kind="gpu", name=self.name, at=at, state="error", reason=str(e),
                                extra={"index": self.index, "pci_bus_id": self.pci_bus_id})

    def _lost_sample(self, at: float) -> DeviceSample:
        return DeviceSample(
            id=self.id, kind="gpu", name=self.name, at=at, state="lost",
            reason=self.lost_reason, extra={"index": self.index, "pci_bus_id": self.pci_bus_id},
        )

    def _sample(self, at: float, detail: bool) -> DeviceSample:
        h = self._handle
        util = nvml_query("nvmlDeviceGetUtilizationRates", h)
        mem = nvml_query("nvmlDeviceGetMemoryInfo", h)
        power = self.power_w(at)
        extra = self._details(at, util) if detail else {"index": self.index}
        supported = power is not None or util is not None or mem is not None
        return DeviceSample(
            id=self.id, kind="gpu", name=self.name, at=at,
            state="ok" if supported else "unsupported",
            reason=None if supported else "NVML reports neither power, utilization nor memory",
            power_w=power,
            energy_j=self.energy_j(at),
            util_pct=Reading(float(util.gpu), "average", at) if util is not None else None,
            mem_used_bytes=int(mem.used) if mem is not None else None,
            mem_total_bytes=int(mem.total) if mem is not None else None,
            extra=extra,
        )

    def _details(self, at: float, util: Any) -> dict[str, Any]:
        h = self._handle
        limit_mw = nvml_query("nvmlDeviceGetEnforcedPowerLimit", h)
        throttle = nvml_query(
            ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"), h
        )
        return {
            "index": self.index,
            "uuid": self.uuid,
            "pci_bus_id": self.pci_bus_id,
            "power_average_w": _value(self.power_average_w(at)),
            "mem_util_pct": float(util.memory) if util is not None else None,
            "sm_clock_mhz": nvml_query("nvmlDeviceGetClockInfo", h, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": nvml_query("nvmlDeviceGetClockInfo", h, pynvml.NVML_CLOCK_MEM),
            "temperature_c": nvml_query("nvmlDeviceGetTemperature", h, pynvml.NVML_TEMPERATURE_GPU),
            "power_limit_w": limit_mw / 1000.0 if limit_mw is not None else None,
            "throttle_reasons": decode_throttle_reasons(throttle),
            "mig": self.mig_instances(),
            "processes": self.processes(),
        }


def _value(reading: Reading | None) -> float | None:
    return reading.value if reading is not None else None


def _opt_int(v: Any) -> int | None:
    # NVML reports "not available" process memory as NVML_VALUE_NOT_AVAILABLE (max ulonglong).
    if v is None or v >= (1 << 64) - 1:
        return None
    return int(v)


class NvidiaGpus(Gpus):
    """Every NVIDIA GPU NVML can see. A GPU lost during enumeration is kept, marked lost."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML not available: {e}") from e
        try:
            self._enumerate(clock)
        except BaseException:
            self.close()
            raise

    def _enumerate(self, clock: Callable[[], float]) -> None:
        try:
            self._driver = nvml_query("nvmlSystemGetDriverVersion")
        except ProbeError as e:
            log.warning("NVML driver version: %s", e)
            self._driver = None
        count = nvml_query("nvmlDeviceGetCount", default=0)
        self._devices: list[Device] = []
        for i in range(count):
            try:
                self._devices.append(NvidiaGpu(i, clock))
            except GpuLost as e:
                self._devices.append(_FailedAtStart(i, "lost", str(e), clock))
            except ProbeError as e:  # this GPU cannot be read; the others can
                log.warning("GPU %d: %s", i, e)
                self._devices.append(_FailedAtStart(i, "error", str(e), clock))

    def devices(self) -> list[Device]:
        return list(self._devices)

    def driver_version(self) -> str | None:
        return _text(self._driver) if self._driver is not None else None

    def close(self) -> None:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


class _FailedAtStart(Device):
    """A GPU NVML could not enumerate: lost, or an NVML error; every sample says so."""

    kind = "gpu"

    def __init__(self, index: int, state: str, reason: str, clock: Callable[[], float]) -> None:
        self.index, self.state, self.reason, self._clock = index, state, reason, clock
        self.id = f"gpu{index}"
        self.name = f"NVIDIA GPU ({state})"

    def sample(self, detail: bool = True) -> DeviceSample:
        return DeviceSample(id=self.id, kind="gpu", name=self.name, at=self._clock(),
                            state=self.state, reason=self.reason, extra={"index": self.index})  # type: ignore[arg-type]


def get_gpus(clock: Callable[[], float] = time.time, *, again: bool = False) -> Gpus:
    """NVIDIA GPUs, or the null backend when there is no driver or no NVML library.

    ``again``: a retry of a look that already found none (the agent's backoff), whose unchanged
    reason was logged the first time: it is logged at debug level only."""
    info = log.debug if again else log.info
    try:
        return NvidiaGpus(clock)
    except NvmlUnavailable as e:
        info("%s", e)
        return NullGpus(str(e))
    except ProbeError as e:  # the GPU count itself failed (or the bus is gone)
        (log.debug if again else log.warning)("NVML initialised but enumeration failed: %s", e)
        return NullGpus(f"NVML enumeration failed: {e}")
    except OSError as e:  # a broken libnvidia-ml.so can fail to load at the OS level
        info("NVML could not be loaded: %s", e)
        return NullGpus(f"NVML could not be loaded: {e}")
