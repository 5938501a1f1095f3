"""meterd's agent: config, sampling loop, windows, cost model, store, shipper, CLI."""
