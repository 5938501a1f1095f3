"""The one fake NVML and the fake inference servers every test uses."""
