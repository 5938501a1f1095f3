"""meterd's exception tree: one neutral module every package imports (never the other way).

Every expected failure is one of these, with the message a user needs; the `meter` group turns
them into one line on stderr and exit status 1. Exceptions are converted at boundaries, with the
cause kept.

    MeterError
     ├── ProbeError                 a probe could not read what it was asked
     │    ├── NvmlUnavailable       no NVML library or no driver: the node has no NVIDIA GPU to us
     │    ├── GpuLost               the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST)
     │    ├── NvmlCallError         any other NVML failure (the NVML error is the cause)
     │    ├── RaplUnavailable       no RAPL domain can be read (the reason says why)
     │    └── TokenProbeError       an inference server's counters could not be read
     │         ├── ServerUnreachable, NotPrometheusText, BadCounter, MetricsMissing
     │         (probes/prometheus_servers.py; each turns into a Gap, never zero tokens)
     ├── InputError                 bad input: a flag's value, a device or model name, a time
     ├── ConfigError                a config key is wrong (agent/config.py; the message names it)
     ├── ShipError                  the shipping setup is unusable: URL, token file (agent/shipper.py)
     └── StoreError                 an SQLite store cannot be used as asked (the message names the file)
          ├── StoreVersionError     the store's schema is newer (or older) than this meterd
          ├── StoreKindError        the file is not this kind of store (a collector db given to the agent...)
          ├── StoreDamaged          SQLite reports a malformed database (integrity_check says more)
          └── StoreUnavailable      the store cannot be opened or written now: missing, read-only, full, locked

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


class InputError(MeterError):
    pass


class StoreError(MeterError):
    pass


class StoreVersionError(StoreError):
    pass


class StoreKindError(StoreError):
    pass


class StoreDamaged(StoreError):
    pass


class StoreUnavailable(StoreError):
    pass
