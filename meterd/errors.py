"""meterd's exception tree: one neutral module every package imports (never the other way).

Every expected failure is one of these, with the message a user needs; the `meter` group turns
them into one line on stderr and exit status 1 (and any other exception into one line naming it
as a bug, the traceback behind ``meter --debug``). Exceptions are converted at boundaries, with
the cause kept. The modules that raise them re-export their names (``from meterd.reports.query
import NoData`` works).

    MeterError
     ├── InputError                 bad input: a flag's value, a device or model name
     │    ├── TimeParseError        a time on the command line (agent/timeparse.py)
     │    ├── InvalidUsage          a usage record pushed to the agent: answered 400 (probes/push.py)
     │    └── ReportError           a report that cannot be made as asked: a bad --by, several currencies
     ├── ConfigError                a config key is wrong (agent/config.py; the message names it)
     ├── ProbeError                 a probe could not read what it was asked
     │    ├── NvmlUnavailable       no NVML library or no driver: the node has no NVIDIA GPU to us
     │    ├── GpuLost               the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST)
     │    ├── NvmlCallError         any other NVML failure (the NVML error is the cause); a GPU's
     │    │                         sample turns it into state "error" with the reason, never raises it
     │    ├── RaplUnavailable       no RAPL domain can be read (the reason says why)
     │    ├── TimedOut              a probe gave no answer within the round (agent/sampler.py)
     │    └── TokenProbeError       an inference server's counters could not be read
     │         ├── ServerUnreachable, NotPrometheusText, BadCounter, MetricsMissing
     │         (probes/prometheus_servers.py; each turns into a Gap, never zero tokens)
     ├── KernelError                a kernel could not be benchmarked (kernels/base.py)
     │    ├── KernelUnavailable     the backend is missing (no CuPy, no CUDA device, a dtype cuBLAS lacks)
     │    └── KernelIncorrect       the kernel's result is wrong: it reports no number
     ├── ShipError                  the shipping setup is unusable: URL, token file (agent/shipper.py)
     ├── QueryError                 a report cannot be read (reports/query.py)
     │    ├── EmptyStore            no windows at all
     │    ├── NoData                none in the range (or for the filters)
     │    ├── CollectorDown         the collector cannot be reached
     │    └── CollectorRefused      the collector refused the token (401, 403)
     └── StoreError                 an SQLite store cannot be used as asked (the message names the file)
          ├── StoreVersionError     the store's schema is newer (or older) than this meterd
          ├── StoreKindError        the file is not this kind of store (a collector db given to the agent...)
          ├── StoreDamaged          SQLite reports a malformed database (integrity_check says more)
          ├── StoreUnavailable      the store cannot be opened or written now: missing, read-only, full, locked
          └── AlreadyRunning        another agent holds the store's lock (agent/pidlock.py)

Only the `meter` group (agent/cli.py) catches them broadly.
"""


def first_line(e: BaseException, limit: int | None = 300) -> str:
    """An exception's message as one line for a log line or an error body: its first line (cut
    at ``limit`` characters; None: whole), or its type's name when it has no message."""
    text = str(e)
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    return line if limit is None else line[:limit]


class MeterError(Exception):
    """Base of every error meterd raises on purpose."""


# -- bad input ------------------------------------------------------------------------------------


class InputError(MeterError):
    pass


class TimeParseError(InputError):
    pass


class InvalidUsage(InputError):
    """A pushed body that cannot be accepted; the message is one line for the client."""


class ReportError(InputError):
    """A report that cannot be made as asked (a bad --by, several currencies)."""


class ConfigError(MeterError):
    """A config that cannot be used; the message names the key and why."""


# -- probes ---------------------------------------------------------------------------------------


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


class TimedOut(ProbeError):
    """The probe did not answer within the round's deadline."""


# -- kernels --------------------------------------------------------------------------------------


class KernelError(MeterError):
    pass


class KernelUnavailable(KernelError):
    pass


class KernelIncorrect(KernelError):
    pass


# -- shipping and reports -------------------------------------------------------------------------


class ShipError(MeterError):
    """The shipping setup cannot be used (URL, token file)."""


class QueryError(MeterError):
    """A report that cannot be read; the message is one line for the user."""


class EmptyStore(QueryError):
    pass


class NoData(QueryError):
    pass


class CollectorDown(QueryError):
    pass


class CollectorRefused(QueryError):
    pass


# -- stores ---------------------------------------------------------------------------------------


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


class AlreadyRunning(StoreError):
    pass
