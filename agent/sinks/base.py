"""What a sink is to the shipper: a mapping from one stored window to the records it sends
(:class:`Item`), how a batch of them goes on the wire, and, where the sink answers in its own
way, what an answer means for each record (:class:`Verdict`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx


@dataclass
class Item:
    """One record to send. ``key`` is unique within its window and stable across resends (the
    outbox remembers which keys a sink acknowledged); ``keys`` are all the keys of the window,
    which is shipped when every one is acknowledged. ``refuse``: the mapping will not send it
    (the window is quarantined with this reason)."""

    window_id: int
    key: str
    payload: Any
    keys: frozenset[str] = frozenset()
    refuse: str | None = None
    size: int = 0


@dataclass
class Verdict:
    """What a sink's answer meant per record: acknowledged (held by the sink), refused (with a
    reason: quarantined); every other record of the batch was not taken and is sent again."""

    acked: list[Item] = field(default_factory=list)
    refused: list[tuple[Item, str]] = field(default_factory=list)


class Sink:
    kind = "sink"
    #: The endpoint's path, appended to a base URL (``https://host``).
    path = "/api/v1/events"
    #: The most records in one request.
    max_events = 500
    #: The least time between two requests (a rate limit), seconds.
    min_interval_s = 0.0

    def items(self, window: dict[str, Any], usage: list[dict[str, Any]]) -> list[Item]:
        raise NotImplementedError

    def request(self, items: list[Item]) -> tuple[bytes, dict[str, str]]:
        """(body, headers) of one request carrying ``items``."""
        raise NotImplementedError

    def judge(self, response: httpx.Response, items: list[Item]) -> Verdict | None:
        """This sink's reading of an answer; None: the shipper's usual reading of the status."""
        return None

    def endpoint(self, url: str) -> str:
        """The URL to post to: ``url`` as given when it already names the endpoint, else the
        endpoint's path under it (``https://api.example`` or ``https://api.example/api/v1``)."""
        parts = urlsplit(url)
        have = [seg for seg in parts.path.split("/") if seg]
        want = [seg for seg in self.path.split("/") if seg]
        k = max(n for n in range(len(want) + 1) if n == 0 or have[-n:] == want[:n])
        return urlunsplit(parts._replace(path="/" + "/".join(have + want[k:])))

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def finish(items: list[Item]) -> list[Item]:
        """Fill in each item's sibling keys and its encoded size."""
        keys = frozenset(it.key for it in items)
        for it in items:
            it.keys = keys
            if not it.size:
                it.size = len(json.dumps(it.payload, separators=(",", ":")))
        return items


def json_batch(items: list[Item], content_type: str) -> tuple[bytes, dict[str, str]]:
    """A JSON array of the items' payloads."""
    body = b"[" + b",".join(json.dumps(it.payload, separators=(",", ":")).encode() for it in items) + b"]"
    return body, {"Content-Type": content_type}
