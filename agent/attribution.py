"""Splitting a shared GPU's window by who used it (pure: values in, values out).

Each round the agent reads, per GPU, every compute process's SM utilization since the last
read (``probes/gpu_share.py``) and names each process (``probes/process_owner.py``). The
window accumulates, per owner, **SM-busy weight** = Σ SM % × round length (µs), and the
**span** = 100 % × Σ round length: the busy time it could have held. Owners get the window's
energy and cost by their weight; what the span has left is the GPU's **idle** share (owner
``idle``). Where the processes' utilization adds up to more than 100 % (kernels overlapping on the
SMs), there is no idle share and they split by their weights.

On a MIG GPU the weights are each instance's SM activity × round length (GPM), labelled
``apportioned``; where GPM is not reported, each instance's compute slices × round length,
labelled ``apportioned (slices)``; with slices every instance gets its share whether busy or not,
so there is no idle share.

Every split is exact in integers (``agent/costmodel.py`` :func:`allocate`, the largest-remainder
method): energy in millijoules, money in micro-units; the parts add up to the window's, component
by component (capex, energy, opex), and energy cost is split over what capex left, as in
:func:`meterd.agent.costmodel.split_cost`, so no part's opex is negative.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterd.agent.costmodel import Cost, allocate

IDLE = "idle"
APPORTIONED = "apportioned"
APPORTIONED_SLICES = "apportioned (slices)"


@dataclass(frozen=True)
class OwnerCost:
    owner: str
    weight: int  # the owner's weight (SM % × µs, or slices × µs); idle: what the span left
    share: float  # weight / the window's span, for display
    energy_j: float | None
    capex_micro: int
    energy_micro: int
    opex_micro: int
    provenance: str

    @property
    def cost_micro(self) -> int:
        return self.capex_micro + self.energy_micro + self.opex_micro


def busy_weights(processes: dict[str, int], dt_us: int) -> tuple[dict[str, int], int]:
    """One round: {owner: SM %} over ``dt_us`` -> ({owner: weight}, span)."""
    return {o: pct * dt_us for o, pct in processes.items() if pct > 0}, 100 * dt_us


def split_by_owner(cost: Cost, energy_j: float | None, weights: dict[str, int], span: int,
                   provenance: str = APPORTIONED) -> list[OwnerCost]:
    """A window's cost and energy over its owners by ``weights``, the rest of ``span`` idle.

    Owners in name order, idle last; [] when there is nothing to split by (span 0)."""
    if span <= 0:
        return []
    owners = sorted(o for o, w in weights.items() if w > 0)
    ws = [weights[o] for o in owners]
    busy = sum(ws)
    if busy < span:
        owners.append(IDLE)
        ws.append(span - busy)
    if not owners:
        return []
    whole = max(span, busy)
    totals = allocate(cost.total_micro, ws)
    capex = allocate(cost.capex_micro, totals)
    energy = allocate(cost.energy_micro, [t - c for t, c in zip(totals, capex)])
    mj = allocate(round(energy_j * 1000), ws) if energy_j is not None else None
    return [
        OwnerCost(o, ws[i], ws[i] / whole, (mj[i] / 1000 if mj is not None else None), capex[i], energy[i],
                  totals[i] - capex[i] - energy[i], provenance)
        for i, o in enumerate(owners)
    ]
