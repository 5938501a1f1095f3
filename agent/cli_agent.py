"""`meter agent`, `meter windows` and `meter config`: a few lines each over the library."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import click
from meterd.agent.ui import console
from rich.table import Table

from meterd.agent.config import EXAMPLE, Config, ConfigError, _listen, _window, default_config, load_config, parse_source_flag
from meterd.agent.costmodel import cost_per_mtok
from meterd.agent.events import iso
from meterd.agent.timeparse import TimeParseError, parse_when
from meterd.errors import MeterError

log = logging.getLogger("meterd")


def _load(config_path: str | None) -> Config:
    try:
        return load_config(config_path) if config_path else default_config()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _open_store(path: str | None, config: Config | None = None):
    from meterd.agent.store import Store

    p = path or (config.store if config else None)
    try:
        return Store(p)
    except (OSError, RuntimeError, sqlite3.Error) as e:  # unwritable, newer schema, not a database
        raise click.ClickException(f"cannot open the store {p or 'at the default path'}: {e}") from None


DEFAULT_PUSH_LISTEN = "127.0.0.1:9465"
DEFAULT_LAST_WINDOWS = 200


def _start_push(listen: str):
    from meterd.probes.push import PushEndpoint

    try:
        if listen.startswith("unix:"):
            endpoint = PushEndpoint(uds=listen[len("unix:"):])
        else:
            host, _, port = listen.rpartition(":")
            endpoint = PushEndpoint(host.strip("[]") or "127.0.0.1", int(port))
        endpoint.start()
    except (ValueError, OSError, RuntimeError) as e:
        raise click.ClickException(f"push endpoint {listen}: {e}") from None
    log.info("push endpoint for usage records on %s", listen)
    return endpoint


def _import_sqlite_utils_without_numpy() -> None:
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


@click.command("agent")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (see `meter config init`). Without it: built-in defaults.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after SECONDS (default: run until SIGTERM/Ctrl-C).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="SQLite store path (overrides the config).")
@click.option("--interval", type=click.FloatRange(min=0.05), help="Sampling interval in seconds (overrides the config).")
@click.option("--window", type=int, help="Window length in seconds; must divide an hour (overrides the config).")
@click.option("--source", "sources", multiple=True, metavar="KIND=URL", help="A token source mapped to all devices, e.g. vllm=http://127.0.0.1:8000/metrics. Repeatable; replaces the config's sources.")
@click.option("--metrics", "metrics_listen", metavar="HOST:PORT", help="Serve Prometheus metrics of the agent here (off by default).")
@click.option("--ship", "ship_url", metavar="URL", help="Ship every window to this CloudEvents sink (a `meter collector` or OpenMeter's /api/v1/events), overriding the config.")
@click.option("--token-file", "token_file", type=click.Path(dir_okay=False), help="The sink's bearer token (a file of mode 0600), with --ship.")
def agent_cmd(config_path, duration, db_path, interval, window, sources, metrics_listen, ship_url, token_file) -> None:
    """Meter this node: every interval read the devices and token sources, every window commit
    energy, tokens and cost to the SQLite store. Runs in the foreground (as systemd runs it).

    SIGTERM or Ctrl-C closes the open windows as partial, commits them and exits 0. SIGHUP
    reloads --config: a valid config takes effect at the next window, an invalid one is refused
    with the reason logged and the running one kept.
    """
    _import_sqlite_utils_without_numpy()
    from meterd.agent.daemon import Agent
    from meterd.agent.metrics import AgentState, MetricsServer
    from meterd.agent.systemd import Notifier
    from meterd.probes.devices import get_devices

    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scrape is not an event

    def effective(config: Config) -> Config:
        overrides: dict = {}
        if db_path:
            overrides["store"] = db_path
        if interval:
            overrides["interval_s"] = interval
        if window is not None:
            overrides["window_s"] = _window("--window", window)
        if sources:
            overrides["sources"] = tuple(parse_source_flag(s) for s in sources)
        if metrics_listen:
            overrides["metrics_listen"] = _listen("--metrics", metrics_listen)
        if ship_url:
            overrides["ship_url"] = ship_url
        if token_file:
            overrides["ship_token_file"] = token_file
        config = dataclasses.replace(config, **overrides)
        if config.interval_s > config.window_s:
            raise ConfigError(f"--interval: must not exceed the window ({config.window_s} s)")
        return config

    try:
        config = effective(_load(config_path))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None

    def reload_config() -> Config:
        if not config_path:
            raise ConfigError("no --config file to reload")
        return effective(load_config(config_path))

    ship_token = None
    if config.ship_url:
        from meterd.agent.shipper import ShipError, check_url, read_token_file

        try:
            check_url(config.ship_url, config.ship_allow_insecure)
            if not config.ship_token_file:
                raise ShipError("shipping needs a bearer token: --token-file FILE or [ship] token_file")
            ship_token = read_token_file(config.ship_token_file)
        except ShipError as e:
            raise click.ClickException(str(e)) from None

    stop = threading.Event()
    agent = None

    def on_signal(signum, frame):
        if signum == signal.SIGHUP:
            if agent is not None:
                agent.request_reload()
            return
        stop.set()

    # Before anything slow (NVML start-up): a SIGTERM from then on is a clean stop, never a kill.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    from meterd.agent.pidlock import AlreadyRunning, StoreLock

    try:
        store = _open_store(None, config)
        try:
            lock = StoreLock(store.path).acquire()
        except AlreadyRunning as e:
            store.close()
            raise click.ClickException(str(e)) from None
    except click.ClickException:
        for s, h in previous.items():
            signal.signal(s, h)
        raise
    node = get_devices()
    state = AgentState(currency=config.prices.currency, store_path=str(store.path))
    metrics = None
    shipper = None
    push = None
    try:
        if config.metrics_listen:
            try:
                metrics = MetricsServer(state, config.metrics_listen)
            except OSError as e:
                raise click.ClickException(f"--metrics {config.metrics_listen}: cannot listen: {e.strerror}") from None
            log.info("Prometheus metrics on http://%s/metrics", config.metrics_listen)
        if ship_token is not None:
            from meterd.agent.shipper import ShipperThread

            shipper = ShipperThread(store.path, config.ship_url, ship_token,
                                    backoff_cap_s=config.ship_backoff_cap_s).start()
            state.outbox_depth = shipper.store_counts
            log.info("shipping windows to %s", config.ship_url)
        if config.push_listen or any(src.kind == "push" for src in config.sources):
            push = _start_push(config.push_listen or DEFAULT_PUSH_LISTEN)
        agent = Agent(config, store, node, notifier=Notifier(), state=state, reload_config=reload_config,
                      push=push)
        log.info("metering %d device(s) into %s every %g s, windows of %d s",
                 len(node.devices), store.path, config.interval_s, config.window_s)
        summary = agent.run(duration_s=duration, stop=stop)
        if stop.is_set():
            log.info("stopped by signal: open windows closed as partial and committed")
    except MeterError as e:
        raise click.ClickException(str(e)) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if push is not None:
            push.stop()
        if shipper is not None:
            shipper.close()
        if metrics is not None:
            metrics.close()
        node.close()
        store.close()
        lock.release()
    click.echo(f"metered {summary.rounds} rounds; committed {summary.windows} windows "
               f"({summary.partial_windows} partial) to {store.path}", err=True)


def window_json(w: dict) -> dict:
    tokens = w["prompt_tokens"] + w["completion_tokens"]
    return {
        "node": w["node"], "device": w["device"], "start": iso(w["start"]), "end": iso(w["end"]),
        "energy_j": w["energy_j"], "energy_source": w["energy_source"], "avg_power_w": w["avg_power_w"],
        "util_pct": w["util_pct"], "prompt_tokens": w["prompt_tokens"],
        "completion_tokens": w["completion_tokens"], "cost_micro": w["cost_micro"],
        "cost_per_mtok": cost_per_mtok(w["cost_micro"], tokens), "partial": bool(w["partial"]),
        "gap_s": w["gap_s"], "currency": w["currency"], "flags": json.loads(w["flags"]),
    }


@click.command("windows")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="SQLite store (default: the agent's).")
@click.option("--since", help="From this time: ISO-8601 or a span back from now (1h, 7d).")
@click.option("--until", help="Up to this time (exclusive).")
@click.option("--device", help="Only this device id.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many windows, the oldest first (without --since or --limit: the newest 200).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list for scripts.")
def windows_cmd(db_path, since, until, device, limit, as_json) -> None:
    """The stored windows: energy, tokens and cost per device per window."""
    if db_path and not Path(db_path).exists():
        raise click.ClickException(f"{db_path}: no such store")
    now = time.time()
    try:
        t0 = parse_when(since, now) if since else None
        t1 = parse_when(until, now) if until else None
    except TimeParseError as e:
        raise click.ClickException(str(e)) from None
    store = _open_store(db_path)
    try:
        last = DEFAULT_LAST_WINDOWS if since is None and limit is None else None
        rows = [window_json(w) for w in store.windows(t0, t1, device, limit, last=last)]
    finally:
        store.close()
    if last is not None and len(rows) == last:
        click.echo(f"the newest {last} windows; --since or --limit for others", err=True)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no windows stored" + (" in that range" if since or until else " yet: run `meter agent`"), err=True)
        return
    t = Table()
    for c in ("start", "device", "energy J", "source", "W", "util %", "prompt", "completion", "cost", "per Mtok", "flags"):
        t.add_column(c, justify="left" if c in ("start", "device", "source", "flags") else "right")
    for r in rows:
        flags = ",".join(r["flags"]) + (" gap %.1fs" % r["gap_s"] if r["gap_s"] >= 0.05 else "")
        t.add_row(r["start"], r["device"][:20], _f(r["energy_j"], 1), r["energy_source"] or "—",
                  _f(r["avg_power_w"], 1), _f(r["util_pct"], 0), str(r["prompt_tokens"]),
                  str(r["completion_tokens"]), f"{r['cost_micro'] / 1e6:.6f}",
                  "—" if r["cost_per_mtok"] is None else f"{r['cost_per_mtok']:.4f}", flags)
    console().print(t)


def _f(v, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


@click.group("config")
def config_group() -> None:
    """Write a commented example config, or check one."""


@config_group.command("init")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def config_init(path, force) -> None:
    """Print a commented example config, or write it to PATH."""
    if not path:
        click.echo(EXAMPLE, nl=False)
        return
    p = Path(path)
    if p.exists() and not force:
        raise click.ClickException(f"{p} exists: use --force to overwrite it")
    p.write_text(EXAMPLE)
    click.echo(f"wrote {p}", err=True)


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the effective config as JSON.")
def config_check(path, as_json) -> None:
    """Validate a config: the bad key and why, or `ok`."""
    config = _load(path)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(config), default=str))
    else:
        click.echo(f"{path}: ok ({len(config.sources)} token source(s), window {config.window_s} s, {config.hash()})")


@click.group("outbox", invoke_without_command=True)
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="SQLite store (default: the agent's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def outbox_group(ctx, db_path, as_json) -> None:
    """What is waiting to ship, and what a sink refused and why."""
    ctx.ensure_object(dict)
    ctx.obj["db"] = db_path
    if ctx.invoked_subcommand is not None:
        return
    store = _existing_store(db_path)
    try:
        pending, quarantined = store.outbox_counts()
        oldest = store.pending_windows(1)
        rows = store.quarantined()
    finally:
        store.close()
    doc = {
        "pending": pending,
        "oldest_pending": iso(oldest[0]["start"]) if oldest else None,
        "quarantined": [{"id": r["id"], "device": r["device"], "start": iso(r["start"]),
                         "event_id": r["event_id"], "reason": r["quarantine_reason"]} for r in rows],
    }
    if as_json:
        click.echo(json.dumps(doc))
        return
    click.echo(f"{pending} window(s) waiting to ship" + (f", the oldest from {doc['oldest_pending']}" if oldest else ""))
    click.echo(f"{quarantined} quarantined" + (": `meter outbox retry` sends them again once the sink is fixed" if rows else ""))
    for q in doc["quarantined"]:
        click.echo(f"  #{q['id']} {q['device']} {q['start']}: {q['reason']}")


@outbox_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.pass_context
def outbox_retry(ctx, ids) -> None:
    """Put quarantined windows (all, or these ids) back in the outbox; the agent sends them again."""
    store = _existing_store(ctx.obj.get("db"))
    try:
        n = store.retry_quarantined(list(ids) if ids else None)
    finally:
        store.close()
    click.echo(f"{n} window(s) back in the outbox")


def _existing_store(db_path):
    from meterd.agent.store import default_db_path

    p = Path(db_path) if db_path else default_db_path()
    if not p.exists():
        raise click.ClickException(f"{p}: no store here (run `meter agent`, or give --db)")
    return _open_store(str(p))
