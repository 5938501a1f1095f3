"""The agent's side of a shared GPU: each round, who used each GPU, into its open window.

Per NVIDIA GPU, one reader (``probes/gpu_share.py``): on a GPU without MIG, its compute
processes and their SM use since the last read, each process named by
``probes/process_owner.py`` and summed per owner; on a MIG GPU, its instances (owner
``mig:<MIG UUID>``), by GPM SM activity × compute slices where every instance reports it
(``apportioned``), else by compute slices alone (``apportioned (slices)``). The window builder
turns that into weights over the round's time (:meth:`agent.windows.WindowBuilder.add_busy`) and
the ledger splits the window by them (``agent/attribution.py``).

A GPU that reports neither (no per-process utilization, no permission, an error) is not split:
its windows stay whole. Reads run on the round's thread pool with the device reads.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from meterd.agent.attribution import APPORTIONED, APPORTIONED_SLICES
from meterd.errors import ProbeError
from meterd.probes.gpu_share import MigMonitor, ProcessUtilization
from meterd.probes.process_owner import OwnerResolver

log = logging.getLogger(__name__)

#: (weights per µs {owner: value}, span per µs, provenance), or None: nothing to split by.
Busy = tuple[dict[str, int], int, str]


class GpuSharing:
    def __init__(self, devices: list[Any], resolver: OwnerResolver) -> None:
        self.resolver = resolver
        self._readers: dict[str, tuple[ProcessUtilization, MigMonitor | None]] = {}
        for d in devices:
            handle = getattr(d, "_handle", None)
            if d.kind != "gpu" or handle is None:
                continue
            try:
                mig = MigMonitor(handle)
                mig = mig if mig.instances() else None
            except ProbeError as e:
                log.info("GPU %s: MIG instances not readable (%s)", d.id, e)
                mig = None
            self._readers[d.id] = (ProcessUtilization(handle), mig)

    def probes(self) -> dict[str, Callable[[], Busy | None]]:
        return {f"share:{dev}": (lambda dev=dev: self.read(dev)) for dev in self._readers}

    def read(self, device: str) -> Busy | None:
        procs, mig = self._readers[device]
        if mig is not None:
            instances = mig.read()
            if not instances:
                return None
            if mig.gpm:
                # GPM needs two samples: the first read only sets them (nothing to split by yet)
                if any(i.activity_pct is None for i in instances):
                    return None
                weights = {f"mig:{i.uuid}": int(round(i.activity_pct * i.slices)) for i in instances}  # type: ignore[operator]
                return weights, 100 * sum(i.slices for i in instances), APPORTIONED
            return {f"mig:{i.uuid}": i.slices for i in instances}, sum(i.slices for i in instances), APPORTIONED_SLICES
        use = procs.read()
        if use is None:
            return None
        weights: dict[str, int] = {}
        for p in use:
            owner = self.resolver.owner(p.pid)
            weights[owner] = weights.get(owner, 0) + p.sm_pct
        return weights, 100, APPORTIONED
