"""The ``meterd`` sink: one ``meterd.window.v1`` event per window, to a ``meter collector``
(or any CloudEvents batch ingest). Today's behaviour, and the default."""

from __future__ import annotations

from typing import Any

from meterd.agent.events import BATCH_CONTENT_TYPE, window_event
from meterd.agent.sinks.base import Item, Sink, json_batch


class MeterdSink(Sink):
    kind = "meterd"
    path = "/api/v1/events"
    max_events = 500

    def items(self, window: dict[str, Any], usage: list[dict[str, Any]]) -> list[Item]:
        ev = window_event(window, usage)
        return self.finish([Item(window["id"], ev["id"], ev)])

    def request(self, items: list[Item]) -> tuple[bytes, dict[str, str]]:
        return json_batch(items, BATCH_CONTENT_TYPE)
