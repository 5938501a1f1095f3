"""Thermal design power of common server CPUs, for the estimate used when RAPL cannot be read.

The estimate is ``watts per core × visible logical CPUs × utilization``. Per core rather than per
package, because a VM sees only a slice of the host's CPU: a 2-vCPU guest on a 96-core EPYC must
not be charged the whole package. Figures are the vendors' datasheet TDP over physical cores.
"""

from __future__ import annotations

# (substring of /proc/cpuinfo "model name", package TDP in watts, physical cores per package)
CPU_TDP: tuple[tuple[str, float, int], ...] = (
    ("EPYC 9965", 500, 192),
    ("EPYC 9755", 500, 128),
    ("EPYC 9654", 360, 96),
    ("EPYC 9754", 360, 128),
    ("EPYC 9554", 360, 64),
    ("EPYC 9474F", 360, 48),
    ("EPYC 9575F", 400, 64),
    ("EPYC 7763", 280, 64),
    ("EPYC 7742", 225, 64),
    ("EPYC 7713", 225, 64),
    ("EPYC 7543", 225, 32),
    ("Xeon 6980P", 500, 128),
    ("Xeon(R) 6980P", 500, 128),
    ("Platinum 8592", 350, 64),
    ("Platinum 8480", 350, 56),
    ("Platinum 8468", 350, 48),
    ("Platinum 8462Y", 300, 32),
    ("Platinum 8380", 270, 40),
    ("Platinum 8358", 250, 32),
    ("Gold 6448Y", 225, 32),
    ("Neoverse-V2", 250, 72),  # NVIDIA Grace, CPU share of the superchip module
)

#: Documented default when the model is not in the table: 10 W per logical CPU at full load.
DEFAULT_W_PER_CORE = 10.0


def watts_per_core(model_name: str) -> tuple[float, str]:
    """(watts per core at full load, where the figure came from)."""
    for needle, tdp_w, cores in CPU_TDP:
        if needle.lower() in model_name.lower():
            return tdp_w / cores, f"TDP table: {needle} {tdp_w:g} W / {cores} cores"
    return DEFAULT_W_PER_CORE, f"default {DEFAULT_W_PER_CORE:g} W per core (model not in the TDP table)"
