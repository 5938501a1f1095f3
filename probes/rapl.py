"""CPU package energy from Linux powercap RAPL (``/sys/class/powercap/intel-rapl:N``).

AMD CPUs expose the same ``intel-rapl`` tree on recent kernels. Since CVE-2020-8694,
``energy_uj`` is readable by root only on most distributions: that case is reported with the
reason, and the CPU falls back to an estimate.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from meterd.errors import RaplUnavailable

POWERCAP = "sys/class/powercap"
_PACKAGE_DIR = re.compile(r"^intel-rapl:\d+$")


def counter_delta_uj(previous_uj: int, current_uj: int, max_range_uj: int) -> int:
    """Energy between two readings of a RAPL counter that wraps at ``max_range_uj``.

    A counter lower than before has wrapped exactly once (readings are far more frequent than a
    wrap, which takes minutes even at full power).
    """
    if current_uj >= previous_uj:
        return current_uj - previous_uj
    return max_range_uj - previous_uj + current_uj


@dataclass
class RaplDomain:
    path: Path
    name: str
    max_range_uj: int

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())


def find_package_domains(root: str | os.PathLike = "/") -> list[RaplDomain]:
    """The top-level (package) RAPL domains under ``root``. Raises RaplUnavailable with a reason."""
    base = Path(root) / POWERCAP
    if not base.is_dir():
        raise RaplUnavailable(f"no RAPL: {'/' + POWERCAP} does not exist (no powercap driver, or a VM)")
    domains = []
    for d in sorted(base.iterdir()):
        if not _PACKAGE_DIR.match(d.name):
            continue
        try:
            name = (d / "name").read_text().strip()
            max_range = int((d / "max_energy_range_uj").read_text().strip())
        except (OSError, ValueError):
            continue
        domains.append(RaplDomain(d, name, max_range))
    if not domains:
        raise RaplUnavailable(f"no RAPL: no package domain under {'/' + POWERCAP}")
    for dom in domains:
        try:
            dom.read_uj()
        except PermissionError as e:
            raise RaplUnavailable(
                f"RAPL {dom.path.name}/energy_uj is readable by root only (CVE-2020-8694): "
                "run meterd as root or grant read access to it"
            ) from e
        except (OSError, ValueError) as e:
            raise RaplUnavailable(f"RAPL {dom.path.name}/energy_uj unreadable: {e}") from e
    return domains


class RaplCounter:
    """A monotonic joule total over every package, carried through each domain's wraparound."""

    def __init__(self, root: str | os.PathLike = "/") -> None:
        self.domains = find_package_domains(root)
        self._last_uj = [d.read_uj() for d in self.domains]
        self._total_uj = 0

    def read_j(self) -> float:
        """Joules since this counter was created. Raises RaplUnavailable if a read fails."""
        for i, dom in enumerate(self.domains):
            try:
                now = dom.read_uj()
            except (OSError, ValueError) as e:
                raise RaplUnavailable(f"RAPL {dom.path.name}/energy_uj unreadable: {e}") from e
            self._total_uj += counter_delta_uj(self._last_uj[i], now, dom.max_range_uj)
            self._last_uj[i] = now
        return self._total_uj / 1e6
