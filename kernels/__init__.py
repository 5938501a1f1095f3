"""Microbenchmarks: CuPy kernels on GPUs, NumPy kernels on CPUs, one runner, the spec table of
known devices and the roofline. CuPy is imported lazily, here only."""
