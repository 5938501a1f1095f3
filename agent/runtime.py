"""The agent's composition root: config, devices, store, shipper, push and metrics endpoints and
the systemd notifier, built in one place and torn down through one :class:`contextlib.ExitStack`,
so every resource is closed on every path (a bad flag, a busy port, a second agent, a crash in a
round, SIGTERM).

``meter agent`` is a thin shell over :func:`run_agent`; tests and other library callers use it
(or :func:`open_runtime`, to drive the :class:`~meterd.agent.daemon.Agent` themselves) without
click. Every expected failure is a :class:`meterd.errors.MeterError` with the message a user needs.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from typing import TYPE_CHECKING, Callable, Iterator

from meterd.agent.config import (
    Config, ConfigError, _listen, _window, default_config, load_config, parse_sink, parse_source_flag,
)
from meterd.net import parse_listen

if TYPE_CHECKING:
    import ssl

    from meterd.agent.daemon import Agent, RunSummary
    from meterd.agent.metrics import AgentState, MetricsServer
    from meterd.agent.sampler import Clocks
    from meterd.agent.shipper import ShipperThread
    from meterd.agent.store import Store
    from meterd.agent.systemd import Notifier
    from meterd.probes.devices import Node
    from meterd.probes.push import PushEndpoint

log = logging.getLogger("meterd")

DEFAULT_PUSH_LISTEN = "127.0.0.1:9465"


@dataclass(frozen=True)
class Overrides:
    """What the command line sets over the config file (None / empty: keep the config's)."""

    store: str | None = None
    interval_s: float | None = None
    window_s: int | None = None
    sources: tuple[str, ...] = ()  # KIND=URL, replacing the config's sources
    metrics_listen: str | None = None
    ship_url: str | None = None
    ship_token_file: str | None = None
    ship_sink: str | None = None  # --sink
    ship_ca_file: str | None = None  # --ca-file

    def apply(self, config: Config) -> Config:
        """The effective config; ConfigError names the flag that is wrong."""
        changes: dict = {}
        if self.store:
            changes["store"] = self.store
        if self.interval_s:
            changes["interval_s"] = self.interval_s
        if self.window_s is not None:
            changes["window_s"] = _window("--window", self.window_s)
        if self.sources:
            changes["sources"] = tuple(parse_source_flag(s) for s in self.sources)
        if self.metrics_listen:
            changes["metrics_listen"] = _listen("--metrics", self.metrics_listen)
        if self.ship_url:
            changes["ship_url"] = self.ship_url
        if self.ship_token_file:
            changes["ship_token_file"] = self.ship_token_file
        if self.ship_sink:
            changes["ship_sink"] = parse_sink("--sink", self.ship_sink)
        if self.ship_ca_file:
            changes["ship_ca_file"] = self.ship_ca_file
        config = dataclasses.replace(config, **changes)
        if config.ship_window_events and config.ship_sink != "openmeter":
            raise ConfigError(f"--sink {config.ship_sink}: [ship] window_events is for the openmeter sink only")
        if config.interval_s > config.window_s:
            raise ConfigError(f"--interval: must not exceed the window ({config.window_s} s)")
        return config


def load(config_path: str | None = None, overrides: Overrides = Overrides()) -> Config:
    """The config file (or the built-in defaults) with the overrides applied."""
    return overrides.apply(load_config(config_path) if config_path else default_config())


def import_sqlite_utils_without_numpy() -> None:
    """sqlite-utils imports NumPy at import time whenever it is installed, only to map NumPy
    values to SQL types; the daemon never stores one. Hiding NumPy during that one import saves
    ~11 MB of RSS on every node; NumPy stays importable afterwards."""
    if "sqlite_utils" in sys.modules or "numpy" in sys.modules:
        return
    sys.modules["numpy"] = None  # type: ignore[assignment]
    try:
        import sqlite_utils  # noqa: F401
    finally:
        del sys.modules["numpy"]


def ship_token(config: Config) -> str | None:
    """Everything the agent would refuse at start (the same decision as `meter config check`:
    agent/config_check.py); the bearer token when the config ships, else None."""
    from meterd.agent.config_check import check_agent_config

    return check_agent_config(config, starting=True)


def ship_tls(config: Config) -> "ssl.SSLContext | bool":
    """What the shipper's TLS trusts and presents: the system's CAs, or [ship] ca_file (--ca-file)
    and a client certificate; every file checked now, so a wrong one is one line at start."""
    from meterd.agent.tls import client_context

    return client_context(config.ship_ca_file, config.ship_client_cert, config.ship_client_key)


def start_push(listen: str, store_path: str | Path | None = None) -> "PushEndpoint":
    """The push endpoint; with ``store_path``, a 200 means the records are committed to the
    store's journal (agent/push_journal.py)."""
    from meterd.probes.push import PushEndpoint

    sink = None
    if store_path is not None:
        from meterd.agent.push_journal import StoreJournal

        sink = StoreJournal(store_path)
    try:
        if listen.startswith("unix:"):
            endpoint = PushEndpoint(uds=listen[len("unix:"):], sink=sink)
        else:
            endpoint = PushEndpoint(*parse_listen(listen), sink=sink)
        endpoint.start()
    except BaseException as e:
        if sink is not None:
            sink.close()  # the journal's own connection: the endpoint never took it
        if isinstance(e, (ValueError, OSError, RuntimeError)):
            raise ConfigError(f"push endpoint {listen}: {e}") from None
        raise
    log.info("push endpoint for usage records on %s", listen if endpoint.uds else endpoint.url + "/v1/usage")
    return endpoint


@dataclass
class Runtime:
    """What one agent run holds; every part is closed by the ExitStack that built it."""

    config: Config
    store: "Store"
    node: "Node"
    state: "AgentState"
    notifier: "Notifier"
    agent: "Agent"
    metrics: "MetricsServer | None" = None
    shipper: "ShipperThread | None" = None
    push: "PushEndpoint | None" = None


@contextmanager
def _signals(stop: threading.Event, on_reload: Callable[[], None]) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``; SIGHUP asks for a reload. The previous handlers come back
    on the way out."""

    def handler(signum, frame):
        if signum == signal.SIGHUP:
            on_reload()
        else:
            stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def open_runtime(config: Config, *, reload_config: Callable[[], Config] | None = None,
                 stop: threading.Event | None = None, handle_signals: bool = False,
                 clocks: "Clocks | None" = None, notifier: "Notifier | None" = None,
                 get_devices: "Callable[[], Node] | None" = None) -> Iterator[Runtime]:
    """Build the agent for ``config``; on the way out (normal or not) close, in reverse order,
    the push endpoint, the shipper (after a short flush), the metrics server, the devices, the
    notifier's socket, the store and its lock.

    With ``handle_signals`` (main thread only), SIGTERM/SIGINT set ``stop`` from the very start
    (before NVML's slow start-up: a stop then is clean, never a kill) and SIGHUP reloads."""
    import_sqlite_utils_without_numpy()
    from meterd.agent.daemon import Agent
    from meterd.agent.store import open_store
    from meterd.agent.metrics import AgentState, MetricsServer
    from meterd.agent.pidlock import StoreLock
    from meterd.agent.systemd import Notifier

    stop = stop if stop is not None else threading.Event()
    with ExitStack() as stack:
        agent_ref: list[Agent] = []
        if handle_signals:
            stack.enter_context(_signals(stop, lambda: agent_ref and agent_ref[0].request_reload()))
        token = ship_token(config)
        verify = ship_tls(config) if token is not None else True
        store = open_store(config.store)
        try:
            lock = StoreLock(store.path).acquire()
        except BaseException:
            store.close()
            raise
        stack.callback(lock.release)  # LIFO: the lock goes after the store's last write and close
        stack.callback(store.close)
        if get_devices is None:
            from meterd.probes.devices import get_devices
        node = stack.enter_context(closing(get_devices()))
        notifier = notifier or Notifier()
        stack.callback(notifier.close)
        state = AgentState(currency=config.prices.currency, store_path=str(store.path))
        metrics = None
        if config.metrics_listen:
            try:
                metrics = MetricsServer(state, config.metrics_listen)
            except (OSError, OverflowError) as e:
                why = getattr(e, "strerror", None) or e
                raise ConfigError(f"--metrics {config.metrics_listen}: cannot listen: {why}") from None
            stack.callback(metrics.close)
            host = config.metrics_listen.rpartition(":")[0] or "127.0.0.1"
            log.info("Prometheus metrics on http://%s:%d/metrics", host, metrics.port)  # port 0: the one bound
        if config.otlp_endpoint:
            try:
                from meterd.agent.otlp import OtlpExporter
            except ImportError as e:
                raise ConfigError(f"otlp.endpoint: the OpenTelemetry SDK is not installed ({e.name}): "
                                  "pip install 'meterd[otlp]'") from None
            otlp = OtlpExporter(state, config.otlp_endpoint, config.otlp_interval_s, config.node)
            stack.callback(otlp.close)  # LIFO: after the agent committed its last windows
            log.info("exporting OTLP metrics to %s every %g s", config.otlp_endpoint, config.otlp_interval_s)
        shipper = None
        if token is not None:
            from meterd.agent.shipper import ShipperThread
            from meterd.agent.sinks import sink_for

            sink = sink_for(config)
            shipper = ShipperThread(store.path, config.ship_url, token, sink=sink,
                                    backoff_cap_s=config.ship_backoff_cap_s, verify=verify).start()
            stack.callback(shipper.close)
            state.outbox_depth = shipper.store_counts
            log.info("shipping %s to the %s sink at %s%s%s",
                     "windows" if sink.kind == "meterd" else "usage events", sink.kind, shipper.endpoint,
                     f" ({urlsplit(shipper.endpoint).path} appended to the URL given)"
                     if shipper.endpoint.rstrip("/") != config.ship_url.rstrip("/") else "",
                     f", trusting the CA in {config.ship_ca_file}" if config.ship_ca_file else "")
        push = None
        if config.push_listen or any(src.kind == "push" for src in config.sources):
            push = start_push(config.push_listen or DEFAULT_PUSH_LISTEN, store.path)
            stack.callback(push.stop)
        import httpx

        http = stack.enter_context(httpx.Client())  # the token sources' keep-alive connections
        kw = {} if clocks is None else {"clocks": clocks}
        agent = Agent(config, store, node, notifier=notifier, state=state, reload_config=reload_config,
                      push=push, http=http, **kw)
        stack.callback(agent.reader.close)  # its probe threads, should run() never have started
        agent_ref.append(agent)
        yield Runtime(config, store, node, state, notifier, agent, metrics, shipper, push)


@dataclass
class AgentRun:
    """What :func:`run_agent` did."""

    summary: "RunSummary"
    store_path: Path
    stopped: bool  # by ``stop`` (a signal), not by ``duration_s``


def run_agent(config_path: str | None = None, overrides: Overrides = Overrides(), *,
              config: Config | None = None, duration_s: float | None = None,
              stop: threading.Event | None = None, handle_signals: bool = False, **runtime: object) -> AgentRun:
    """Meter this node until ``stop`` is set (or a signal, with ``handle_signals``) or
    ``duration_s`` has passed, then close and commit the open windows as partial and tear
    everything down. ``config`` (already effective) replaces loading ``config_path``; a SIGHUP
    reload reads ``config_path`` again with the same overrides. Extra keywords go to
    :func:`open_runtime` (clocks, notifier, get_devices)."""
    if config is None:
        config = load(config_path, overrides)

    def reload_config() -> Config:
        if not config_path:
            raise ConfigError("no --config file to reload")
        return load(config_path, overrides)

    stop = stop if stop is not None else threading.Event()
    with open_runtime(config, reload_config=reload_config, stop=stop, handle_signals=handle_signals,
                      **runtime) as rt:  # type: ignore[arg-type]
        log.info("metering %d device(s) into %s every %g s, windows of %d s",
                 len(rt.node.devices), rt.store.path, config.interval_s, config.window_s)
        summary = rt.agent.run(duration_s=duration_s, stop=stop)
        if stop.is_set():
            log.info("stopped by signal: open windows closed as partial and committed")
        return AgentRun(summary, rt.store.path, stop.is_set())
