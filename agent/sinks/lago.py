"""The ``lago`` sink: usage events as Lago events, ``POST /api/v1/events/batch``.

From Lago's API (``Events::CreateBatchService``): the body is ``{"events": [...]}``, at most 100
events; each has ``transaction_id``, ``external_subscription_id``, ``code`` (a billable metric's
code), ``timestamp`` (Unix seconds) and flat ``properties``. ``transaction_id`` is unique per
organization and ``external_subscription_id``, for good. The batch is all or nothing: one bad
event fails it with ``422 {"code": "validation_errors", "error_details": {"<index>": {field:
[codes]}}}`` and none of it is stored. A duplicate is ``transaction_id: ["value_already_exist"]``:
Lago holds that event already, so it counts as delivered; the events it names for other reasons
are quarantined, and the rest of the batch is sent again.

Mapping: one Lago event per usage event and billable metric in ``metrics`` (a data field -> the
metric's code; the metric sums that property). ``transaction_id`` is the usage event's id (with
several metrics, a uuid5 of it per code). The subscription comes from ``subscriptions``
(subject -> ``external_subscription_id``): a subject without one is quarantined with that reason.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import httpx

from meterd.agent.sinks.base import Item, Sink, Verdict
from meterd.agent.usage_events import derived_id, usage_events

DUPLICATE = {"transaction_id": ["value_already_exist"]}
DEFAULT_METRICS = {"cost_micro": "meterd_cost"}


class LagoSink(Sink):
    kind = "lago"
    path = "/api/v1/events/batch"
    max_events = 100

    def __init__(self, subject: str | None = None, metrics: Mapping[str, str] | None = None,
                 subscriptions: Mapping[str, str] | None = None) -> None:
        self.subject = subject
        self.metrics = dict(metrics or DEFAULT_METRICS)
        self.subscriptions = dict(subscriptions or {})

    def items(self, window: dict[str, Any], usage: list[dict[str, Any]]) -> list[Item]:
        out = []
        for ev in usage_events(window, usage, self.subject):
            sub = self.subscriptions.get(ev["subject"])
            for code in self.metrics.values():
                tid = ev["id"] if len(self.metrics) == 1 else derived_id(ev["id"], code)
                payload = {"transaction_id": tid, "external_subscription_id": sub, "code": code,
                           "timestamp": window["start"], "properties": ev["data"]}
                refuse = None if sub else (f"lago: no subscription for subject {ev['subject']!r}: "
                                           f"add it to [ship.subscriptions]")
                out.append(Item(window["id"], tid, payload, refuse=refuse))
        return self.finish(out)

    def request(self, items: list[Item]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"events": [it.payload for it in items]}, separators=(",", ":")).encode()
        return body, {"Content-Type": "application/json"}

    def judge(self, response: httpx.Response, items: list[Item]) -> Verdict | None:
        if response.status_code != 422:
            return None
        try:
            details = response.json().get("error_details")
        except (ValueError, AttributeError):
            return None
        if not isinstance(details, dict) or not details:
            return None
        if len(items) == 1 and details == DUPLICATE:
            return Verdict(acked=list(items))
        if not all(isinstance(k, str) and k.isdigit() and int(k) < len(items) for k in details):
            return None  # about the batch as a whole (too_many_events, no_events)
        v = Verdict()
        for k, errs in details.items():
            it = items[int(k)]
            if errs == DUPLICATE:
                v.acked.append(it)
            else:
                v.refused.append((it, f"HTTP 422: {json.dumps(errs, separators=(',', ':'))[:400]}"))
        return v
