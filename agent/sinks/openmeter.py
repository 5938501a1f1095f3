"""The ``openmeter`` sink: ``meterd.usage.v1`` events (one per window, model and tenant, plus the
idle remainder) to OpenMeter's ingest, ``POST /api/v1/events``.

From OpenMeter's API: the body is a JSON array of structured CloudEvents with the content type
exactly ``application/cloudevents-batch+json`` (compared as a string: no parameters), every event
needs ``subject`` (the billed customer: here the tenant, or the configured subject for
untenanted and idle usage), and a success is ``204 No Content``. OpenMeter deduplicates by
(source, id) only when deduplication is enabled, and then within a TTL; the ids are stable so a
resend is a duplicate wherever it does. With ``window_events`` the window events go too (a meter
can read their top-level scalars; ``usage[]`` is an array no meter can group).
"""

from __future__ import annotations

from typing import Any

from meterd.agent.events import BATCH_CONTENT_TYPE, window_event
from meterd.agent.sinks.base import Item, Sink, json_batch
from meterd.agent.usage_events import usage_events


class OpenMeterSink(Sink):
    kind = "openmeter"
    path = "/api/v1/events"
    max_events = 500

    def __init__(self, subject: str | None = None, window_events: bool = False) -> None:
        self.subject = subject
        self.window_events = window_events

    def items(self, window: dict[str, Any], usage: list[dict[str, Any]]) -> list[Item]:
        events = usage_events(window, usage, self.subject)
        if self.window_events:
            events.append(window_event(window, usage))
        return self.finish([Item(window["id"], ev["id"], ev) for ev in events])

    def request(self, items: list[Item]) -> tuple[bytes, dict[str, str]]:
        return json_batch(items, BATCH_CONTENT_TYPE)
