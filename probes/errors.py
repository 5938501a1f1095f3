"""meterd's exception tree. Exceptions are converted at boundaries, with the cause kept.

    MeterError
     └── ProbeError                 a probe could not read what it was asked
          ├── NvmlUnavailable       no NVML library or no driver: the node has no NVIDIA GPU to us
          ├── GpuLost               the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST)
          ├── NvmlCallError         any other NVML failure (the NVML error is the cause)
          └── RaplUnavailable       no RAPL domain can be read (the reason says why)
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
