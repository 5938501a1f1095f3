"""Token counters between scrapes: pure values in, pure values out (no clock, no network).

An inference server exposes *cumulative* counters (tokens since it started). Cost per token
needs the tokens of each interval, so :class:`CounterTracker` keeps the last totals per
(server, model) and turns each new scrape into deltas, with these rules:

- **First sight of a server is a baseline.** The counters then hold everything the server did
  before the agent looked; none of it belongs to this interval, so no delta is reported
  (``Update.baseline``). This is what Prometheus' ``increase()`` does with a first sample.
- **A counter that goes down is a restart.** The server (or that model) started again from
  zero: the tokens reported before stay reported, and the new value counts whole
  (delta = new value). Nothing goes negative. The test is per (server, model): if *any* of a
  model's counters went down, *all* its counters restarted, because a process restart resets
  them together (a prompt counter that went down next to a completion counter that happened to
  climb past its old value is still one restart).
- **A model that appears on a server already seen counts from zero** (a model loaded after the
  agent started, or a model's labels first created by its first request).
- **A gap is not zero.** A scrape that failed (:class:`Gap`) changes nothing: the last totals
  are kept, so the next good scrape's delta holds the tokens made during the gap, and the
  interval of the gap itself reports a gap, never zero tokens (``Update.gap``). A model missing
  from one scrape is likewise kept, not reset.

- **Origins survive the agent.** ``CounterTracker(origins=...)`` starts from the totals the
  agent last committed (the store keeps them with the window that consumed them): the first
  scrape after an agent restart (``kill -9`` included) is then a delta against them, not a
  baseline (``Update.resumed``), so the tokens served while the agent was down are billed.
  If the server restarted meanwhile (a counter went down) what it served since is counted from
  its new zero and whatever it served before it restarted is lost (``Update.restarted``).

Values: tokens are ``int`` (≥ 0), seconds are ``float`` (≥ 0) or ``None`` where the server
does not report them. Each :class:`Counts` says where its tokens come from
(``provenance``): ``counter`` (exact integer counters), ``rounded`` (a counter printed with
fewer digits than it has, e.g. llama.cpp's ``1.23457e+06``, or beyond 2^53; ``error_bound``
is how many tokens it may be off by), ``histogram`` (a histogram's ``_sum``), ``push``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

_TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens")
_SECONDS_FIELDS = ("prefill_s", "decode_s")
_VALUE_FIELDS = _TOKEN_FIELDS + _SECONDS_FIELDS
#: Token provenance, best first: a figure made of several takes the worst.
PROVENANCES = ("counter", "push", "histogram", "rounded")
_PROV_RANK = {p: i for i, p in enumerate(PROVENANCES)}


def worst_provenance(*ps: str | None) -> str | None:
    known = [p for p in ps if p is not None]
    return max(known, key=_PROV_RANK.__getitem__) if known else None


@dataclass(frozen=True)
class Counts:
    """What one model of one server counted.

    From a scrape, these are cumulative totals; from :meth:`CounterTracker.update`, the deltas
    of one interval. ``prefill_s``/``decode_s`` are seconds spent in prefill and decode (for
    splitting cost between prompt and completion tokens by time); ``cached_tokens`` are prompt
    tokens served from a prefix cache (a subset of ``prompt_tokens``). ``None``: not reported.
    """

    prompt_tokens: int
    completion_tokens: int
    prefill_s: float | None = None
    decode_s: float | None = None
    cached_tokens: int | None = None
    provenance: str = "counter"
    error_bound: int = 0

    def __post_init__(self) -> None:
        if self.provenance not in _PROV_RANK:
            raise ValueError(f"provenance must be one of {', '.join(PROVENANCES)}, got {self.provenance!r}")
        if isinstance(self.error_bound, bool) or not isinstance(self.error_bound, int) or self.error_bound < 0:
            raise ValueError(f"error_bound must be an integer >= 0, got {self.error_bound!r}")

        for name in _TOKEN_FIELDS:
            v = getattr(self, name)
            if v is None and name == "cached_tokens":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in _SECONDS_FIELDS:
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0 <= v < float("inf")):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {v!r}")


@dataclass(frozen=True)
class Totals:
    """One good scrape: the server kind and cumulative :class:`Counts` per model name."""

    kind: str
    models: dict[str, Counts]


@dataclass(frozen=True)
class Gap:
    """A scrape that yielded no counts: the server did not answer, answered something that is
    not Prometheus text, or answered without the expected metric.

    ``cause`` is one of ``unreachable``, ``not_prometheus``, ``bad_counter``, ``missing``;
    ``reason`` is one line for people, naming the server and, where it applies, the metric.
    """

    reason: str
    cause: str = "unreachable"


@dataclass(frozen=True)
class Update:
    """What one scrape of one server added since the previous good scrape.

    ``deltas``: per model, the tokens (and seconds) of this interval; empty on a baseline or
    a gap. ``gap``: set when this scrape failed (then nothing is known about the interval).
    ``baseline``: the first good scrape of this server, which only sets the origin.
    ``restarted``: models whose counters went down (the server or the model restarted).
    ``new_models``: models first seen on a server already baselined, counted from zero.
    ``resumed``: the first scrape after the agent started from committed origins; its deltas
    hold what the server served while the agent was down (a backfill), except for the models
    in ``restarted``, whose earlier tokens are lost.
    """

    deltas: dict[str, Counts] = field(default_factory=dict)
    gap: Gap | None = None
    baseline: bool = False
    restarted: frozenset[str] = frozenset()
    new_models: frozenset[str] = frozenset()
    resumed: bool = False

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.deltas.values())

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.deltas.values())


def _went_down(old: Counts, new: Counts) -> bool:
    for name in _VALUE_FIELDS:
        a, b = getattr(old, name), getattr(new, name)
        if a is not None and b is not None and b < a:
            return True
    return False


def _delta(old: Counts, new: Counts) -> Counts:
    """new − old field by field; a field that only ``new`` has counts from zero."""
    out: dict = {}
    for name in _VALUE_FIELDS:
        a, b = getattr(old, name), getattr(new, name)
        if b is None:
            out[name] = None
        elif a is None:
            out[name] = b
        else:
            out[name] = b - a
    # A difference of two rounded readings may be off by both their bounds.
    out["provenance"] = worst_provenance(old.provenance, new.provenance)
    out["error_bound"] = old.error_bound + new.error_bound
    if out["provenance"] != "rounded":
        out["error_bound"] = 0
    if out["prompt_tokens"] is None:  # pragma: no cover - Counts forbids it
        raise AssertionError("prompt_tokens is required")
    # Float subtraction can leave -1e-17 on an unchanged seconds counter.
    for name in _SECONDS_FIELDS:
        if out[name] is not None and out[name] < 0:
            out[name] = 0.0
    return Counts(**out)


def _merge(old: Counts, new: Counts) -> Counts:
    """The state to keep: ``new``, but a field this scrape did not report keeps its old value
    so that its next appearance is compared with what was last seen."""
    kept = {name: getattr(old, name) for name in _VALUE_FIELDS if getattr(new, name) is None}
    return replace(new, **kept) if kept else new


class CounterTracker:
    """Turns cumulative scrapes into per-interval deltas, per (server, model). Pure.

    ``server`` is any stable key the caller chooses (e.g. the scrape URL). Not thread-safe:
    one tracker belongs to one sampling loop.
    """

    def __init__(self, origins: dict[str, dict[str, Counts]] | None = None) -> None:
        self._last: dict[str, dict[str, Counts]] = {}
        # Totals committed by an earlier run of the agent, used once per server.
        self._origins: dict[str, dict[str, Counts]] = {k: dict(v) for k, v in (origins or {}).items()}

    def update(self, server: str, result: Totals | Gap) -> Update:
        if isinstance(result, Gap):
            return Update(gap=result)
        last = self._last.get(server)
        resumed = False
        if last is None:
            origin = self._origins.pop(server, None)
            if origin is None:
                self._last[server] = dict(result.models)
                return Update(baseline=True)
            last = self._last[server] = origin
            resumed = True
        deltas: dict[str, Counts] = {}
        restarted: set[str] = set()
        new_models: set[str] = set()
        for model, now in result.models.items():
            before = last.get(model)
            if before is None:
                new_models.add(model)
                deltas[model] = now
                last[model] = now
            elif _went_down(before, now):
                restarted.add(model)
                deltas[model] = now
                last[model] = now
            else:
                deltas[model] = _delta(before, now)
                last[model] = _merge(before, now)
        return Update(deltas=deltas, restarted=frozenset(restarted), new_models=frozenset(new_models),
                      resumed=resumed)

    def forget(self, server: str) -> None:
        """Drop a server's origin (it was removed from the config): its next scrape is a baseline."""
        self._last.pop(server, None)

    def all_totals(self) -> dict[str, dict[str, Counts]]:
        """Every server's last totals (copies): what the store commits as origins. Origins not
        used yet (a server not scraped successfully since the agent started) are kept too."""
        out = {k: dict(v) for k, v in self._origins.items()}
        out.update({k: dict(v) for k, v in self._last.items()})
        return out

    def last_totals(self, server: str) -> dict[str, Counts] | None:
        """The totals last seen for ``server`` (a copy), or ``None`` before its first good scrape."""
        last = self._last.get(server)
        return dict(last) if last is not None else None
