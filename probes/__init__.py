"""Everything that reads the world. The hardware boundary lives here and nowhere else.

Use :func:`probes.devices.get_devices` to enumerate what the node has; each device's
``sample()`` returns a :class:`probes.readings.DeviceSample` whose figures each carry
their timestamp and source.
"""
