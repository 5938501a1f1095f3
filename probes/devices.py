"""The factory: every device the node has, GPUs first, then the CPU."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from meterd.probes.cpu import CpuDevice
from meterd.probes.device import Device, Gpus
from meterd.probes.nvml import get_gpus


@dataclass
class Node:
    """The node's devices and the GPU backend they came from (close it when done)."""

    gpus: Gpus
    devices: list[Device] = field(default_factory=list)

    def close(self) -> None:
        self.gpus.close()


def get_devices(root: str | os.PathLike = "/", clock: Callable[[], float] = time.time) -> Node:
    """Enumerate GPUs (or the null backend) and the CPU. Never raises for missing hardware."""
    gpus = get_gpus(clock)
    return Node(gpus=gpus, devices=[*gpus.devices(), CpuDevice(root, clock=clock)])
