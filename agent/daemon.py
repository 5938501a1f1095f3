"""The agent: probes → windows → cost → store, every interval, until stopped.

One round per interval (:mod:`agent.sampler`): read every device and token source concurrently,
turn token counters into deltas (:class:`probes.counters.CounterTracker`, on this thread only, so
a late scrape can never advance a counter whose result was dropped), hand each device its
tokens and sample (:class:`agent.windows.WindowBuilder`), price the windows that closed
(:mod:`agent.ledger`) and commit them (:class:`agent.store.Store`). On stop, the open windows
close as partial and are committed too.

A restarted agent resumes each device at the end of its last committed window, so no window is
written twice; the time it was down shows as missing windows, and the first new one is partial.
No token is lost to the agent's downtime: every commit stores, in the same transaction, the
token totals of each (source, model) that its windows' deltas were taken up to
(``token_origins``); a restarted agent (``kill -9`` included) starts its counter tracker from
them, so the first scrape's delta holds what the servers served while it was down, billed in
the first window, flagged ``backfill`` with the downtime's span (``backfill_s``). A server that
restarted meanwhile is counted from its new zero and the window is flagged ``tokens_lost``.
A round in which a token source cannot be read adds its interval to the ``token_gap_s`` of the
windows of the devices it maps to (flag ``tokens_unavailable``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import httpx

from meterd.agent.config import Config, ConfigError, SourceConfig
from meterd.agent.costmodel import node_shares
from meterd.agent.ledger import price_window
from meterd.agent.metrics import AgentState
from meterd.agent import push_journal
from meterd.agent.agent_status import StatusFile
from meterd.units import iso
from meterd.agent.store_writer import (AGENT_BUSY_TIMEOUT_MS, StoreWriter, WriterStatus, rollback_quietly,
                                       sqlite_reason)
from meterd.agent.sharing import GpuSharing
from meterd.agent.sampler import Clocks, ConcurrentReader, ProbeHealth, Schedule, ticks
from meterd.agent.store import Store
from meterd.agent.systemd import Notifier
from meterd.agent.windows import Usage, Window, WindowBuilder, split_evenly
from meterd.probes.counters import CounterTracker, Gap, Totals
from meterd.probes.device import Device
from meterd.probes.devices import Node
from meterd.probes.discovery import Discoverer, gpu_processes
from meterd.probes.process_owner import OwnerResolver, source_ports
from meterd.probes.prometheus_servers import GenericMetrics
from meterd.probes.readings import DeviceSample
from meterd.probes.tokens import TokenSource

log = logging.getLogger(__name__)

SAMPLES_PRUNE_EVERY_S = 3600.0
DISCOVER_EVERY_S = 30.0  # how often [[sources]] kind = "discover" looks for servers again
BUDGET_CHECK_EVERY_S = 60.0
SAMPLES_FLUSH_EVERY_S = 10.0  # raw samples are not billed: batch them to spare fsyncs
MAX_HELD_SAMPLES = 100_000
SAMPLES_FULL_RATE_S = 86400.0  # raw samples at full rate for a day, then
SAMPLES_THINNED_EVERY_S = 60.0  # one per device per minute
GPU_RETRY_START_S = 5.0  # no GPU at start: look again after this, doubling
GPU_RETRY_CAP_S = 300.0  # raw samples kept in memory while the store refuses writes
# Changing these needs a restart; a reload keeps the running values and says so.
RESTART_KEYS = ("node", "store", "interval_s", "window_s", "push_listen", "metrics_listen", "otlp_endpoint",
                "otlp_interval_s", "store_budget_mb", "ship_backoff_cap_s",
                "store_max_pending_windows",
                "ship_url", "ship_token_file", "ship_allow_insecure",
                # the shipper's sink is built once, at start
                "ship_sink", "ship_subject", "ship_window_events", "ship_rate_per_s", "ship_metrics",
                "ship_subscriptions", "ship_customers")


class PushUsage(Protocol):
    """What the push endpoint gives the agent each round: usage since the last drain."""

    def drain(self) -> dict[tuple[str, str], Usage]: ...


@dataclass
class RunSummary:
    rounds: int = 0
    windows: int = 0
    partial_windows: int = 0
    last_sample_wall: float | None = None
    gaps: dict[str, int] = field(default_factory=dict)


def resolve_devices(wanted: tuple[str, ...], devices: list[Device]) -> list[str]:
    """Device ids a source maps to: ``all`` is every GPU (the CPU when there is none); else GPU
    indexes or ids (UUIDs), or ``cpu``."""
    gpus = [d for d in devices if d.kind == "gpu"]
    if "all" in wanted:
        return [d.id for d in gpus] or [d.id for d in devices if d.kind == "cpu"]
    out = []
    for w in wanted:
        for d in devices:
            if w == d.id or (d.kind == "gpu" and w == str(getattr(d, "index", ""))):
                out.append(d.id)
    return out


def token_source(cfg: SourceConfig, interval_s: float) -> TokenSource:
    generic = None
    if cfg.kind == "generic":
        generic = GenericMetrics(prompt_metric=cfg.prompt_metric, completion_metric=cfg.completion_metric,
                                 model_label=cfg.model_label)
    # A scrape must finish inside the round, or its answer is dropped and the round is a gap.
    timeout = max(0.2, min(2.0, 0.8 * interval_s))
    return TokenSource(cfg.url, kind=cfg.kind, model=cfg.model, generic=generic, timeout_s=timeout,
                       name=cfg.name)


def usage_from_deltas(deltas: dict[str, Any], tenant: str = "") -> dict[tuple[str, str], Usage]:
    return {(model, tenant): Usage(c.prompt_tokens, c.completion_tokens, c.prefill_s, c.decode_s,
                                   cached_prompt_tokens=c.cached_tokens or 0, token_source=c.provenance,
                                   error_bound=c.error_bound)
            for model, c in deltas.items() if c.prompt_tokens or c.completion_tokens}


def owned(usage: dict[tuple[str, str], Usage], source: str) -> dict[tuple[str, str], Usage]:
    """A token source's usage, marked as its own (``source:<name>``, the owner its GPU processes get)."""
    for u in usage.values():
        u.owner = f"source:{source}"
    return usage


def spread(usage: dict[tuple[str, str], Usage], k: int) -> list[dict[tuple[str, str], Usage]]:
    """One server's tokens over the ``k`` devices behind it: integers that add up, seconds shared."""
    out: list[dict[tuple[str, str], Usage]] = [{} for _ in range(k)]
    for key, u in usage.items():
        ps, cs = split_evenly(u.prompt_tokens, k), split_evenly(u.completion_tokens, k)
        ks, bs = split_evenly(u.cached_prompt_tokens, k), split_evenly(u.error_bound, k)
        for i in range(k):
            out[i][key] = Usage(ps[i], cs[i], None if u.prefill_s is None else u.prefill_s / k,
                                None if u.decode_s is None else u.decode_s / k,
                                cached_prompt_tokens=ks[i],
                                token_source=u.token_source, error_bound=bs[i], owner=u.owner)
    return out


class Agent:
    def __init__(self, config: Config, store: Store, node: Node, clocks: Clocks = Clocks(),
                 push: PushUsage | None = None, http: httpx.Client | None = None,
                 notifier: Notifier | None = None, state: AgentState | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 find_gpus: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.store = store
        self.node = node
        self.clocks = clocks
        self.push = push
        self.notifier = notifier or Notifier(env={})
        self.state = state or AgentState(currency=config.prices.currency, store_path=str(store.path))
        self.reload_config = reload_config
        self._reload_requested = threading.Event()
        self._pending: Config | None = None
        self._over_budget = False
        self._sample_rows: list[dict[str, Any]] = []
        self._next_flush = clocks.mono() + SAMPLES_FLUSH_EVERY_S
        self.health = ProbeHealth()
        self.reader = ConcurrentReader(max_workers=min(32, 4 + len(node.devices) + len(config.sources)))
        self._own_http = http is None
        self.http = http or httpx.Client()
        origins, self._origin_at = store.token_origins()
        self.tracker = CounterTracker(origins)
        self._last_round_wall: float | None = None  # the last round that scraped the token sources
        self._next_tokens: float | None = None
        self._last_scrape_wall: float | None = None
        self.devices = {d.id: d for d in node.devices}
        self.shares = node_shares(node.devices)
        self._set_sources(config)
        self.sharing = GpuSharing(node.devices, OwnerResolver(self._source_ports()))
        self.discoverer = Discoverer()
        self._next_discover = clocks.mono()
        self.max_gap_s = max(3 * config.interval_s, config.interval_s + 2.0)
        self.builders: dict[str, WindowBuilder] = {}
        self.config_hash = config.hash()
        self.summary = RunSummary()
        # The push endpoint's records: from the store's journal (durable), or drained from memory.
        self._journal = bool(getattr(push, "durable", False))
        self._journal_pos: dict[str, int] = {}
        # A lock held by another process delays one round, not the meter: windows wait in memory.
        store.conn.execute(f"PRAGMA busy_timeout = {AGENT_BUSY_TIMEOUT_MS}")
        self.writer = StoreWriter(store, max_pending=config.store_max_pending_windows,
                                  push_targets=lambda: list(self.push_targets) if self._journal else [],
                                  mono=clocks.mono, wall=clocks.wall, on_change=self._store_state_changed)
        self.state.store_writer = self.writer.status
        self.status_file = StatusFile(store.path)
        self._write_status()
        self.state.node = config.node
        self.state.device_kinds = {d.id: d.kind for d in node.devices}
        # No GPU at start because NVML could not be used (no driver yet, a driver reload): look
        # again with backoff, and bring the GPUs in when they appear.
        self._find_gpus = find_gpus or self._default_find_gpus
        self._gpu_retry_s = GPU_RETRY_START_S
        no_gpu = not any(d.kind == "gpu" for d in node.devices) and getattr(node.gpus, "reason", None)
        self._downsampled_until: float | None = None
        self._next_gpu_try: float | None = clocks.mono() + self._gpu_retry_s if no_gpu else None
        if config.store_budget_mb:
            self.state.store_budget_bytes = int(config.store_budget_mb * 1024 * 1024)

    def _set_sources(self, config: Config) -> None:
        before = {src.key: src.url for src, _ in getattr(self, "sources", ())}
        self.sources = []
        for s in config.sources:
            if s.kind in ("push", "discover"):
                continue
            targets = resolve_devices(s.devices, self.node.devices)
            if not targets:
                log.warning("token source %s maps to no device on this node (devices = %s)", s.name, list(s.devices))
            self.sources.append((token_source(s, config.interval_s), targets))
        # A source a reload removed (or pointed elsewhere) is forgotten: should it come back, its
        # first scrape is a baseline, not everything it counted meanwhile billed to one window.
        after = {src.key: src.url for src, _ in self.sources}
        for key, url in before.items():
            if after.get(key) != url:
                self.tracker.forget(key)
                log.info("token source %s removed: its counters are forgotten", key)
        self.discover = any(s.kind == "discover" for s in config.sources)
        if not self.discover or not hasattr(self, "_discovered"):
            self._discovered: dict[str, tuple[TokenSource, list[str]]] = {}
        self.sources += list(getattr(self, "_discovered", {}).values())
        if hasattr(self, "sharing"):
            self.sharing.resolver.ports = self._source_ports()
        push_cfg = [s for s in config.sources if s.kind == "push"]
        self.push_targets = resolve_devices(push_cfg[0].devices if push_cfg else ("all",), self.node.devices)

    def _discover_now(self) -> None:
        """``[[sources]] kind = "discover"``: the servers behind the GPUs' processes, each
        metered with the GPUs it holds; one that went away stops being scraped (its counters
        forgotten), one that appeared starts (its first scrape a baseline)."""
        self._next_discover = self.clocks.mono() + DISCOVER_EVERY_S
        found = {f.name: f for f in self.discoverer.discover(gpu_processes(self.node.devices), self.http)}
        changed = False
        for name in list(self._discovered.keys() - found.keys()):
            del self._discovered[name]
            changed = True
        for name, f in found.items():
            old = self._discovered.get(name)
            if old is None or old[0].url != f.url or old[1] != list(f.devices):
                cfg = SourceConfig(kind=f.kind, url=f.url, name=f.name, devices=f.devices)
                self._discovered[name] = (token_source(cfg, self.config.interval_s), list(f.devices))
                changed = True
        if changed:  # the configured sources, then the discovered ones; a gone one is forgotten
            self._set_sources(self.config)

    def _source_ports(self) -> dict[int, str]:
        """The ports token sources are scraped on: a GPU process listening on one is that source's."""
        return source_ports((src.key, src.url) for src, _ in self.sources)

    # -- reload (SIGHUP) ------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Safe from a signal handler: the reload itself happens on the agent's thread."""
        self._reload_requested.set()

    def _maybe_reload(self) -> None:
        if not self._reload_requested.is_set() or self.reload_config is None:
            return
        self._reload_requested.clear()
        try:
            new = self.reload_config()
        except ConfigError as e:
            log.error("config reload refused, keeping the running config: %s", e)
            return
        kept = {k: getattr(self.config, k) for k in RESTART_KEYS if getattr(new, k) != getattr(self.config, k)}
        if kept:
            log.warning("config reload: %s changed; these take effect after a restart", ", ".join(sorted(kept)))
            new = dataclasses.replace(new, **kept)
        self._pending = new
        log.info("config reloaded (%s): takes effect at the next window", new.hash())

    def _apply_pending(self) -> None:
        """Called right after windows closed: the new windows are the first under the new config."""
        if self._pending is None:
            return
        self.config, self._pending = self._pending, None
        self.config_hash = self.config.hash()
        self.state.currency = self.config.prices.currency
        self._set_sources(self.config)
        log.info("config %s in effect", self.config_hash)

    # -- lifecycle ------------------------------------------------------------------------------

    def _start_builders(self) -> None:
        now = self.clocks.wall()
        if self._journal:
            self._journal_pos = push_journal.load_cursors(self.store.conn, list(self.push_targets))
        for d in self.node.devices:
            last_end = self.store.last_window_end(self.config.node, d.id)
            start = max(now, last_end) if last_end is not None else now
            self.builders[d.id] = WindowBuilder(d.id, self.config.window_s, start, self.max_gap_s)

    def run(self, duration_s: float | None = None, stop: threading.Event | None = None) -> RunSummary:
        """Meter until ``stop`` is set or ``duration_s`` has passed; then close partial windows."""
        stop = stop or threading.Event()
        self._start_builders()
        schedule = Schedule(self.config.interval_s, self.clocks)
        t_end = None if duration_s is None else self.clocks.mono() + duration_s
        next_prune = self.clocks.mono()

        def should_stop() -> bool:
            return stop.is_set() or (t_end is not None and self.clocks.mono() >= t_end)

        try:
            for tick in ticks(schedule, should_stop):
                self._maybe_reload()
                self.round(tick)
                if self.summary.rounds == 1:
                    self.notifier.notify_ready(f"metering {len(self.devices)} device(s)")
                self.notifier.maybe_ping()
                if self.clocks.mono() >= next_prune:
                    self._prune(tick.wall)
                    next_prune = self.clocks.mono() + (
                        BUDGET_CHECK_EVERY_S if self.config.store_budget_mb else SAMPLES_PRUNE_EVERY_S)
                if should_stop():
                    break
            else:
                # stopped between rounds: one last round, so the partial window runs to the stop
                self.round(self.clocks.tick())
        finally:
            self.shutdown()
        return self.summary

    def shutdown(self) -> None:
        self.notifier.stopping()
        # In-flight pushes finish (and are journaled) before the last windows close.
        stop_intake = getattr(self.push, "stop", None)
        if stop_intake is not None:
            stop_intake()
        if self._journal and self.builders:
            self._take_journal()
        elif self.push is not None and self.builders:
            self._give_usage(0.0, _pushed(self.push.drain()), self.push_targets)
        at = self.clocks.wall()
        closed: list[Window] = []
        for dev_id, b in self.builders.items():
            closed += b.close(at)
        self.builders.clear()
        self._commit(closed)
        for wait_s in (0.5, 1.0, 2.0):  # a store that refuses writes gets a few last chances
            if not self.writer.pending:
                break
            self.clocks.sleep(wait_s)
            self._commit([], force=True)
        if self.writer.pending:
            log.error("the store still refuses writes at shutdown: %d closed window(s) are lost (%s); "
                      "pushed usage stays in the journal for the next start",
                      self.writer.status.pending_windows, self.writer.status.reason)
        self._flush_samples()
        self._write_status("stopped")
        self.status_file.close()
        self.reader.close()
        if self._own_http:
            self.http.close()

    def _prune(self, now: float) -> None:
        if self.writer.failing:
            return
        try:
            self._prune_now(now)
        except sqlite3.Error as e:
            rollback_quietly(self.store.conn)
            self.writer.note_failure(sqlite_reason(e))

    def _prune_now(self, now: float) -> None:
        n = self.store.prune_samples(now - self.config.samples_retention_days * 86400)
        if n:
            log.info("pruned %d raw samples older than %g days", n, self.config.samples_retention_days)
        # Samples older than a day keep one per device per minute (8 GPUs at 1 Hz: ~87 MB a day
        # at full rate, ~1.5 MB thinned); the first pass takes everything older, later ones the
        # last hours that aged past the day.
        full_until = now - SAMPLES_FULL_RATE_S
        since = None if self._downsampled_until is None else self._downsampled_until - 2 * SAMPLES_PRUNE_EVERY_S
        n = self.store.downsample_samples(since, full_until, SAMPLES_THINNED_EVERY_S)
        self._downsampled_until = full_until
        if n:
            log.info("thinned %d raw samples older than a day to one a minute", n)
        if self.config.store_budget_mb:
            budget = int(self.config.store_budget_mb * 1024 * 1024)
            dropped = self.store.enforce_budget(budget)
            if any(dropped.values()):
                log.info("store budget %g MB: dropped %d raw samples and %d shipped windows",
                         self.config.store_budget_mb, dropped["samples"], dropped["windows"])
            over = self.store.used_bytes() > budget
            if over and not self._over_budget:
                log.warning("store is over its %g MB budget with unshipped windows only: they are kept",
                            self.config.store_budget_mb)
            self._over_budget = over

    # -- one round ------------------------------------------------------------------------------

    def _default_find_gpus(self):
        from meterd.probes.nvml import get_gpus

        cpu = next((d for d in self.node.devices if d.kind == "cpu"), None)
        return get_gpus(getattr(cpu, "_clock", None) or self.clocks.wall, again=True)

    def _maybe_find_gpus(self, tick) -> None:
        if self._next_gpu_try is None or self.clocks.mono() < self._next_gpu_try:
            return
        try:
            gpus = self._find_gpus()
            found = list(gpus.devices())
        except Exception as e:  # NVML that half works is still no GPU: try again later
            gpus, found = None, []
            log.debug("GPU discovery failed: %s", e)
        if not found:
            if gpus is not None:
                gpus.close()
            self._gpu_retry_s = min(GPU_RETRY_CAP_S, self._gpu_retry_s * 2)
            self._next_gpu_try = self.clocks.mono() + self._gpu_retry_s
            return
        log.warning("GPUs appeared: %d brought in (until now: %s)", len(found), getattr(self.node.gpus, "reason", None))
        old, self.node.gpus = self.node.gpus, gpus
        old.close()
        self.node.devices[:0] = found  # GPUs first, as get_devices orders them
        self.devices = {d.id: d for d in self.node.devices}
        # From now the GPUs carry the node's capex and opex; the CPU, its own energy.
        self.shares = node_shares(self.node.devices)
        self.sharing = GpuSharing(self.node.devices, OwnerResolver(self._source_ports()))
        self._set_sources(self.config)
        self.reader.close()
        self.reader = ConcurrentReader(max_workers=min(32, 4 + len(self.node.devices) + len(self.config.sources)))
        for d in found:
            last_end = self.store.last_window_end(self.config.node, d.id)
            start = max(tick.wall, last_end) if last_end is not None else tick.wall
            self.builders[d.id] = WindowBuilder(d.id, self.config.window_s, start, self.max_gap_s)
        self.state.device_kinds = {d.id: d.kind for d in self.node.devices}
        self._next_gpu_try = None

    def round(self, tick) -> None:
        self._maybe_find_gpus(tick)
        if self.discover and self.clocks.mono() >= self._next_discover:
            self._discover_now()
        probes: dict[str, Callable[[], Any]] = {
            f"device:{d}": (lambda dev=dev: dev.sample(detail=False)) for d, dev in self.devices.items()}
        scrape = self._tokens_due(tick)
        if scrape:
            for src, _ in self.sources:
                probes[f"tokens:{src.key}"] = (lambda s=src: s.scrape(self.http))
        probes.update(self.sharing.probes())
        timeout = max(0.05, 0.8 * self.config.interval_s)
        results = self.reader.read(probes, timeout)

        if scrape:
            self._take_tokens(tick, results)
        if self._journal:
            self._take_journal()
        elif self.push is not None:
            self._give_usage(tick.wall, _pushed(self.push.drain()), self.push_targets)
        self._finish_round(tick, results)

    def tokens_every_s(self) -> float:
        c = self.config
        return c.tokens_interval_s if c.tokens_interval_s is not None else max(c.interval_s, c.window_s / 4)

    def _tokens_due(self, tick) -> bool:
        """Token sources are scraped every ``tokens_interval_s`` and in every round that may close
        a window (its readings can reach the window's end before the round's deadline), so that
        the tokens of a window are the counters' delta up to its end."""
        if not self.sources:
            return False
        horizon = tick.wall + 0.8 * self.config.interval_s
        closes = any(horizon >= b.current.end for b in self.builders.values())
        now = self.clocks.mono()
        if closes or self._next_tokens is None or now >= self._next_tokens:
            # Half a round early, so that a schedule in step with the rounds never slips one.
            self._next_tokens = now + self.tokens_every_s() - 0.5 * self.config.interval_s
            return True
        return False

    def _take_tokens(self, tick, results: dict[str, Any]) -> None:
        since_last = (tick.wall - self._last_round_wall) if self._last_round_wall is not None \
            else min(self.tokens_every_s(), self.config.window_s)
        since_last = max(0.0, min(since_last, self.max_gap_s + self.tokens_every_s()))
        self._last_round_wall = tick.wall
        for src, targets in self.sources:
            name = f"tokens:{src.key}"
            r = results[name]
            if isinstance(r, (Totals, Gap)):
                update = self.tracker.update(src.key, r)
            else:
                update = self.tracker.update(src.key, Gap(str(r), "unreachable"))
            if update.gap is not None:
                self.health.fail(name, update.gap.reason)
                self.summary.gaps[name] = self.summary.gaps.get(name, 0) + 1
                for dev_id in targets:  # these tokens are unknown for now, not zero
                    self.builders[dev_id].add_token_gap(since_last)
                continue
            self.health.ok(name)
            backfill_s = 0.0
            if update.resumed:
                at = self._origin_at.get(src.key)
                backfill_s = max(0.0, tick.wall - at) if at else 0.0
                log.info("token source %s: resuming from the totals committed %.1f s ago%s", src.key, backfill_s,
                         f"; it restarted meanwhile (models {sorted(update.restarted)}): what it served "
                         f"before its restart is lost" if update.restarted else "")
            elif update.restarted:
                log.info("token source %s restarted (models %s): counting from zero", src.key, sorted(update.restarted))
            self._give_usage(tick.wall, owned(usage_from_deltas(update.deltas), src.key), targets, backfill_s,
                             lost=update.resumed and bool(update.restarted))
        self._last_scrape_wall = tick.wall

    def _finish_round(self, tick, results: dict[str, Any]) -> None:
        closed: list[Window] = []
        sample_rows = []
        for dev_id in self.devices:
            name = f"device:{dev_id}"
            r = results[name]
            sample = r if isinstance(r, DeviceSample) else None
            if sample is None:
                self.health.fail(name, str(r))
                self.summary.gaps[name] = self.summary.gaps.get(name, 0) + 1
            elif sample.state != "ok":
                self.health.fail(name, f"{sample.state}: {sample.reason}")
            else:
                self.health.ok(name)
            if sample is not None:
                sample_rows.append(_sample_row(sample))
            busy = results.get(f"share:{dev_id}")
            if isinstance(busy, tuple):  # who used it since the last round (agent/sharing.py)
                self.builders[dev_id].add_busy(tick.wall, *busy)
            closed += self.builders[dev_id].add_sample(tick, sample)

        self._sample_rows += sample_rows
        self._commit(closed)
        if closed:
            self._apply_pending()
        if self.clocks.mono() >= self._next_flush:
            self._flush_samples()
        self.summary.rounds += 1
        self.summary.last_sample_wall = tick.wall
        self.state.last_sample_wall = tick.wall
        # every probe, with 0 for those that never failed: a dashboard shows it before its first gap
        names = [*results, *(f"tokens:{src.key}" for src, _ in self.sources)]
        self.state.gaps = {name: self.summary.gaps.get(name, 0) for name in names
                           if not name.startswith("share:")} | self.summary.gaps
        self.state.device_up = {d: isinstance(results[f"device:{d}"], DeviceSample)
                                and results[f"device:{d}"].state == "ok" for d in self.devices}

    def _commit(self, closed: list[Window], force: bool = False) -> None:
        """Price the windows that closed and hand them to the writer, which commits them now or,
        while the store refuses writes, as soon as it takes them again (in order). With them go
        the token totals their deltas were taken up to, committed in the same transaction."""
        if closed:
            rows = [self._price(w) for w in closed]
            cursors = {w.device: w.journal_id for w in closed if w.journal_id}
            self.writer.put(rows, cursors, origins=self.tracker.all_totals(),
                            origins_at=self._last_scrape_wall or self.clocks.wall())
            self.summary.partial_windows += sum(1 for w, _ in rows if w["partial"])
            self.state.add_windows([w for w, _ in rows], [u for _, u in rows])
        self.summary.windows += self.writer.flush(force=force)
        if closed and self.writer.failing:
            self._write_status()  # how many windows are held, for `meter status`

    def _flush_samples(self) -> None:
        self._next_flush = self.clocks.mono() + SAMPLES_FLUSH_EVERY_S
        if not self._sample_rows or self.writer.failing:
            # Raw samples are not billed: while the store refuses writes they wait, bounded.
            del self._sample_rows[:-MAX_HELD_SAMPLES]
            return
        try:
            self.store.insert_samples(self._sample_rows)
        except sqlite3.Error as e:
            rollback_quietly(self.store.conn)
            self.writer.note_failure(sqlite_reason(e))
            del self._sample_rows[:-MAX_HELD_SAMPLES]
            return
        self._sample_rows = []

    def _write_status(self, state: str | None = None) -> None:
        st = self.writer.status
        self.status_file.write({
            "pid": os.getpid(), "state": state or "running", "store": st.state, "reason": st.reason,
            "since": iso(st.since) if st.since else None, "pending_windows": st.pending_windows,
            "write_errors_total": st.write_errors_total, "dropped_windows_total": st.dropped_windows_total,
        })

    def _store_state_changed(self, status: WriterStatus) -> None:
        self._write_status()
        if status.state == "ok":
            self.notifier.send(f"STATUS=metering {len(self.devices)} device(s)")
        else:
            self.notifier.send(f"STATUS=store refuses writes: {status.reason}; "
                               f"{status.pending_windows} window(s) held in memory")

    def _take_journal(self) -> None:
        """The push journal's rows each target device has not taken yet, into its open window."""
        targets = list(self.push_targets)
        if not targets:
            return
        start = max(self._journal_pos.values(), default=0)
        for d in targets:
            self._journal_pos.setdefault(d, start)
        lo = min(self._journal_pos[d] for d in targets)
        try:
            rows = push_journal.read_after(self.store.conn, lo)
        except sqlite3.Error as e:  # the rows stay in the journal: the next round takes them
            self.health.fail("push:journal", sqlite_reason(e))
            return
        self.health.ok("push:journal")
        k = len(targets)
        for i, dev in enumerate(targets):
            pos = self._journal_pos[dev]
            usage: dict[tuple[str, str], Usage] = {}
            last = pos
            for r in rows:
                if r.id <= pos:
                    continue
                usage.setdefault((r.model, r.tenant), Usage()).add(Usage(
                    push_journal.share(r.prompt_tokens, k, i, r.id),
                    push_journal.share(r.completion_tokens, k, i, r.id), token_source="push"))
                last = r.id
            if last > pos:
                self.builders[dev].add_usage(0.0, usage, journal_id=last)
                self._journal_pos[dev] = last

    def _give_usage(self, at: float, usage: dict[tuple[str, str], Usage], targets: list[str],
                    backfill_s: float = 0.0, lost: bool = False) -> None:
        if not targets or not (usage or lost):
            return
        for dev_id, part in zip(targets, spread(usage, len(targets))):
            self.builders[dev_id].add_usage(at, part, backfill_s=backfill_s if part else 0.0, lost=lost)

    def _price(self, w: Window):
        dev = self.devices[w.device]
        return price_window(w, self.config.node, dev.name, self.config.prices, self.shares[w.device],
                            self.config_hash)


def _pushed(drained: dict) -> dict[tuple[str, str], Usage]:
    """Usage drained from the push endpoint, as the windows keep it (provenance ``push``)."""
    return {k: Usage(u.prompt_tokens, u.completion_tokens, u.prefill_s, u.decode_s,
                     cached_prompt_tokens=getattr(u, "cached_prompt_tokens", 0) or 0, token_source="push")
            for k, u in drained.items()}


def _sample_row(s: DeviceSample) -> dict[str, Any]:
    return {
        "device": s.id, "at": s.at, "state": s.state,
        "power_w": s.power_w.value if s.power_w else None,
        "power_source": s.power_w.source if s.power_w else None,
        "energy_j": s.energy_j.value if s.energy_j else None,
        "energy_source": s.energy_j.source if s.energy_j else None,
        "util_pct": s.util_pct.value if s.util_pct else None,
        "mem_used_bytes": s.mem_used_bytes,
    }
