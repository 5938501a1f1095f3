"""The ``stripe`` sink: usage events as Stripe meter events, ``POST /v1/billing/meter_events``.

From Stripe's API: form-encoded ``event_name`` (a meter's), ``payload[stripe_customer_id]``,
``payload[value]`` (here a whole number), ``identifier`` (unique for at least 24 hours; a second
event with it is refused with ``400 ... already exists with identifier``, which means Stripe
holds it: delivered) and ``timestamp`` (Unix seconds, at most 35 calendar days in the past and 5
minutes in the future). One event per request; the v1 endpoint takes up to 1,000 a second in
live mode and fewer in test mode, so requests are paced at ``rate_per_s`` (default 25) and a 429
backs off as any sink's does.

Mapping: one meter event per usage event and meter in ``metrics`` (a data field -> the meter's
``event_name``), value the field's whole micro-units or tokens (``energy_j`` rounded to whole
joules); a value of 0 is not sent. ``identifier`` is the usage event's id (with several meters, a
uuid5 of it per event name), so resends carry the same identifier. The customer comes from
``customers`` (subject -> ``cus_...``). Usage older than 35 days, or whose subject has no
customer, is quarantined with that reason instead of sent.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Mapping
from urllib.parse import urlencode

import httpx

from meterd.units import iso
from meterd.agent.sinks.base import Item, Sink, Verdict
from meterd.agent.usage_events import derived_id, usage_events

MAX_AGE_S = 35 * 86400
DEFAULT_RATE_PER_S = 25.0
DEFAULT_METRICS = {"cost_micro": "meterd_cost"}
_DUPLICATE = re.compile(r"already exists with identifier", re.I)


class StripeSink(Sink):
    kind = "stripe"
    path = "/v1/billing/meter_events"
    max_events = 1

    def __init__(self, subject: str | None = None, metrics: Mapping[str, str] | None = None,
                 customers: Mapping[str, str] | None = None, rate_per_s: float = DEFAULT_RATE_PER_S,
                 wall: Callable[[], float] = time.time) -> None:
        self.subject = subject
        self.metrics = dict(metrics or DEFAULT_METRICS)
        self.customers = dict(customers or {})
        self.min_interval_s = 1.0 / rate_per_s
        self.wall = wall

    def items(self, window: dict[str, Any], usage: list[dict[str, Any]]) -> list[Item]:
        out = []
        too_old = self.wall() - window["start"] > MAX_AGE_S
        for ev in usage_events(window, usage, self.subject):
            customer = self.customers.get(ev["subject"])
            for fld, name in self.metrics.items():
                value = round(ev["data"][fld])
                if value == 0:
                    continue
                ident = ev["id"] if len(self.metrics) == 1 else derived_id(ev["id"], name)
                form = {"event_name": name, "identifier": ident, "timestamp": str(int(window["start"])),
                        "payload[stripe_customer_id]": customer or "", "payload[value]": str(value)}
                refuse = None
                if too_old:
                    refuse = (f"stripe: usage from {iso(window['start'])} is older than the 35 days "
                              f"Stripe accepts meter events for; not sent")
                elif not customer:
                    refuse = f"stripe: no customer for subject {ev['subject']!r}: add it to [ship.customers]"
                out.append(Item(window["id"], ident, form, refuse=refuse, size=len(urlencode(form))))
        return self.finish(out)

    def request(self, items: list[Item]) -> tuple[bytes, dict[str, str]]:
        (it,) = items
        return urlencode(it.payload).encode(), {"Content-Type": "application/x-www-form-urlencoded"}

    def judge(self, response: httpx.Response, items: list[Item]) -> Verdict | None:
        if response.status_code != 400:
            return None
        try:
            err = response.json().get("error") or {}
        except (ValueError, AttributeError):
            return None
        if isinstance(err, dict) and _DUPLICATE.search(str(err.get("message", ""))):
            return Verdict(acked=list(items))
        return None
