"""Run the `meter` CLI in a real subprocess with the fake NVML installed, for tests that need a
real process (kill -9, signals, systemd notify). The fake runs on real time.

    python -m tests.fakes.run_meter agent --db ... --window 1

Environment: ``METERD_FAKE_GPUS`` (how many H100s, default 0), ``METERD_FAKE_WATTS`` (their
constant power, default 300).
"""

from __future__ import annotations

import os

from tests.fakes.nvml import FakeNvml, h100


def main() -> None:
    n = int(os.environ.get("METERD_FAKE_GPUS", "0"))
    watts = float(os.environ.get("METERD_FAKE_WATTS", "300"))
    fake = FakeNvml([h100(curve=[(0.0, watts)]) for _ in range(n)], missing=None if n else "library")

    from meterd.probes import nvml as nvml_probe

    nvml_probe.pynvml = fake.module
    from meterd.agent.cli import main as meter

    meter(prog_name="meter")


if __name__ == "__main__":
    main()
