"""One device interface, and the null GPU backend.

Shaped after Zeus's ``zeus/device``: an abstract base per kind of device, one module per vendor
(:mod:`probes.nvml`, :mod:`probes.cpu`), one factory (:func:`probes.devices.get_devices`), and a
null object (:class:`NullGpus`) for a machine with no GPU, so callers never branch on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from meterd.probes.readings import DeviceKind, DeviceSample


class Device(ABC):
    """A device whose power, energy and utilization can be sampled."""

    id: str
    kind: DeviceKind
    name: str

    @abstractmethod
    def sample(self, detail: bool = True) -> DeviceSample:
        """Read the device now. Never raises for a device that is lost or unsupported:
        the sample says so in ``state`` and ``reason``. ``detail=False`` reads only what
        metering needs (power, energy, utilization, memory): the agent's 1 Hz path."""


class Gpus(ABC):
    """The node's GPUs of one vendor."""

    @abstractmethod
    def devices(self) -> list[Device]: ...

    def driver_version(self) -> str | None:
        return None

    def close(self) -> None:
        """Release the vendor library."""

    @property
    def reason(self) -> str | None:
        """Why there are no GPUs, when there are none."""
        return None


class NullGpus(Gpus):
    """No GPU on this node (no driver, no library, or none found)."""

    def __init__(self, reason: str = "no GPU found") -> None:
        self._reason = reason

    def devices(self) -> list[Device]:
        return []

    @property
    def reason(self) -> str | None:
        return self._reason
