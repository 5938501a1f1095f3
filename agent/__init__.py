"""meterd's agent: config, sampling loop, windows, cost model, store, shipper, CLI."""

__version__ = "0.1.0"
