"""Where the shipper sends: one module per sink, each a mapping from stored windows to what that
sink takes (:class:`meterd.agent.sinks.base.Sink`). The outbox, retries and quarantine are one
mechanism, in :mod:`meterd.agent.shipper`.

- ``meterd``: ``meterd.window.v1`` window events to a ``meter collector`` (the default).
- ``openmeter``: ``meterd.usage.v1`` usage events (and window events with ``window_events``)
  to OpenMeter's CloudEvents ingest.
- ``lago``: usage events as Lago events, in batches of at most 100.
- ``stripe``: usage events as Stripe meter events, one request each, within its rate limit.
"""

from __future__ import annotations

SINK_KINDS = ("meterd", "openmeter", "lago", "stripe")


def make_sink(kind: str, **options):
    """The sink of ``kind`` with its options (see each module)."""
    if kind == "meterd":
        from meterd.agent.sinks.meterd import MeterdSink
        return MeterdSink(**options)
    if kind == "openmeter":
        from meterd.agent.sinks.openmeter import OpenMeterSink
        return OpenMeterSink(**options)
    if kind == "lago":
        from meterd.agent.sinks.lago import LagoSink
        return LagoSink(**options)
    if kind == "stripe":
        from meterd.agent.sinks.stripe import StripeSink
        return StripeSink(**options)
    raise ValueError(f"sink: expected one of {', '.join(SINK_KINDS)}, got {kind!r}")


def sink_for(config) -> "object":
    """The sink an agent config names (``[ship] sink`` and its tables)."""
    kind = config.ship_sink
    opts: dict = {}
    if kind in ("openmeter", "lago", "stripe"):
        opts["subject"] = config.ship_subject
    if kind == "openmeter":
        opts["window_events"] = config.ship_window_events
    if kind in ("lago", "stripe") and config.ship_metrics:
        opts["metrics"] = config.ship_metrics
    if kind == "lago":
        opts["subscriptions"] = config.ship_subscriptions
    if kind == "stripe":
        opts["customers"] = config.ship_customers
        if config.ship_rate_per_s:
            opts["rate_per_s"] = config.ship_rate_per_s
    return make_sink(kind, **opts)
