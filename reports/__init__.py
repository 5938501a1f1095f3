"""`meter report`: queries over a local store or a collector, and their renderers."""
