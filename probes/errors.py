"""meterd's exception tree. Exceptions are converted at boundaries, with the cause kept.

    MeterError
     ├── ProbeError                 a probe could not read what it was asked
     │    ├── NvmlUnavailable       no NVML library or no driver: the node has no NVIDIA GPU to us
     │    ├── GpuLost               the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST)
     │    ├── NvmlCallError         any other NVML failure (the NVML error is the cause)
     │    ├── RaplUnavailable       no RAPL domain can be read (the reason says why)
     │    └── TokenProbeError       an inference server's counters could not be read
     │         ├── ServerUnreachable, NotPrometheusText, BadCounter, MetricsMissing
     │         (probes/prometheus_servers.py; each turns into a Gap, never zero tokens)
     ├── ConfigError                a config key is wrong (agent/config.py; the message names it)
     └── ShipError                  the shipping setup is unusable: URL, token file (agent/shipper.py)

The CLI turns these into one line (click.ClickException); nothing else catches them broadly.
"""


class MeterError(Exception):
    """Base of every error meterd raises on purpose."""


class ProbeError(MeterError):
    pass


class NvmlUnavailable(ProbeError):
    pass


class GpuLost(ProbeError):
    pass


class NvmlCallError(ProbeError):
    pass


class RaplUnavailable(ProbeError):
    pass
