"""`meter agent`, `meter windows` and `meter config`: a few lines each over the library."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import click
from meterd.agent.ui import ALWAYS, Column, print_table, write_error

from meterd.agent import runtime
from meterd.agent.config import EXAMPLE, load_config
from meterd.agent.costmodel import cost_per_mtok
from meterd.agent.timeparse import parse_when
from meterd.units import MICRO, iso

log = logging.getLogger("meterd")


DEFAULT_LAST_WINDOWS = 200


@click.command("agent")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (see `meter config init`). Without it: built-in defaults.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after SECONDS (default: run until SIGTERM/Ctrl-C).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="SQLite store path (overrides the config).")
@click.option("--interval", type=click.FloatRange(min=0.05), help="Sampling interval in seconds (overrides the config).")
@click.option("--window", type=int, help="Window length in seconds; must divide an hour (overrides the config).")
@click.option("--source", "sources", multiple=True, metavar="KIND=URL", help="A token source mapped to all devices, e.g. vllm=http://127.0.0.1:8000/metrics. Repeatable; replaces the config's sources.")
@click.option("--metrics", "metrics_listen", metavar="HOST:PORT", help="Serve Prometheus metrics of the agent here (off by default).")
@click.option("--ship", "ship_url", metavar="URL", help="Ship every window to this sink, overriding the config: a `meter collector`'s base URL (as `collector serve` prints it; /api/v1/events is appended) or the sink's own URL.")
@click.option("--token-file", "token_file", type=click.Path(dir_okay=False), help="The sink's bearer token (a file of mode 0600), with --ship.")
@click.option("--sink", "sink_kind", type=click.Choice(["meterd", "openmeter", "lago", "stripe"]),
              help="What --ship sends: meterd (window events, to `meter collector`; the default), or usage events "
                   "per model and tenant for openmeter, lago or stripe (docs/billing.md). Overrides [ship] sink.")
@click.option("--ca-file", "ca_file", type=click.Path(dir_okay=False),
              help="Trust this CA (PEM) for the sink's certificate instead of the system's CAs (a private CA), with --ship. Overrides [ship] ca_file.")
def agent_cmd(config_path, duration, db_path, interval, window, sources, metrics_listen, ship_url, token_file,
              sink_kind, ca_file) -> None:
    """Meter this node: every interval read the devices and token sources, every window commit
    energy, tokens and cost to the SQLite store. Runs in the foreground (as systemd runs it).

    SIGTERM or Ctrl-C closes the open windows as partial, commits them and exits 0. SIGHUP
    reloads --config: a valid config takes effect at the next window, an invalid one is refused
    with the reason logged and the running one kept.
    """
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scrape is not an event
    for flag, value in (("--token-file", token_file), ("--ca-file", ca_file), ("--sink", sink_kind)):
        if value and not (ship_url or (config_path and load_config(config_path).ship_url)):
            raise click.UsageError(f"{flag} is for shipping: it goes with --ship URL (or [ship] url in the config)")
    overrides = runtime.Overrides(store=db_path, interval_s=interval, window_s=window, sources=sources,
                                  metrics_listen=metrics_listen, ship_url=ship_url, ship_token_file=token_file,
                                  ship_sink=sink_kind, ship_ca_file=ca_file)
    run = runtime.run_agent(config_path, overrides, duration_s=duration, handle_signals=True)
    s = run.summary
    click.echo(f"metered {s.rounds} rounds; committed {s.windows} windows "
               f"({s.partial_windows} partial) to {run.store_path}", err=True)


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
@click.option("--wide", is_flag=True, help="Every column, however wide the terminal (a narrow one leaves some out).")
def windows_cmd(db_path, since, until, device, limit, as_json, wide) -> None:
    """The stored windows: energy, tokens and cost per device per window."""
    from meterd.agent.store import open_store

    now = time.time()
    t0 = parse_when(since, now) if since else None
    t1 = parse_when(until, now) if until else None
    store = open_store(db_path, readonly=True)
    try:
        last = DEFAULT_LAST_WINDOWS if since is None and limit is None else None
        rows = [window_json(w) for w in store.windows(t0, t1, device, limit, last=last)]
        known = store.device_ids() if device is not None and not rows else None
    finally:
        store.close()
    if last is not None and len(rows) == last:
        click.echo(f"the newest {last} windows; --since or --limit for others", err=True)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        if known == []:
            click.echo("no windows stored yet: run `meter agent`", err=True)
        elif known is not None and device not in known:
            raise click.ClickException(f"no device {device!r} in the store; its devices: {', '.join(known)}")
        else:
            click.echo("no windows stored" + (f" for {device}" if device else "")
                       + (" in that range" if since or until else " yet: run `meter agent`"), err=True)
        return
    rows_out = []
    for r in rows:
        flags = ",".join(r["flags"]) + (" gap %.1fs" % r["gap_s"] if r["gap_s"] >= 0.05 else "")
        rows_out.append([r["start"], r["device"], _f(r["energy_j"], 1), r["energy_source"] or "—",
                         _f(r["avg_power_w"], 1), _f(r["util_pct"], 0), str(r["prompt_tokens"]),
                         str(r["completion_tokens"]), f"{r['cost_micro'] / MICRO:.6f}",
                         "—" if r["cost_per_mtok"] is None else f"{r['cost_per_mtok']:.4f}", flags.strip()])
    print_table(WINDOW_COLUMNS, rows_out, wide=wide)


#: `meter windows`, most needed first when a terminal is narrow: when and which device always,
#: then cost and cost per Mtok, energy, power, tokens.
WINDOW_COLUMNS = (
    Column("start", keep=ALWAYS), Column("device", keep=ALWAYS), Column("energy J", "right", 7),
    Column("source", keep=3), Column("W", "right", 6), Column("util %", "right", 2),
    Column("prompt", "right", 5), Column("completion", "right", 5), Column("cost", "right", 9),
    Column("per Mtok", "right", 8), Column("flags", keep=1),
)


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
    try:
        p.write_text(EXAMPLE)
    except OSError as e:
        raise click.ClickException(write_error(p, e)) from None
    click.echo(f"wrote {p}", err=True)


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the effective config as JSON.")
def config_check(path, as_json) -> None:
    """Validate a config: the bad key and why, or `ok` (exactly what the agent would take)."""
    from meterd.agent.config_check import check_agent_config

    config = load_config(path)
    check_agent_config(config)
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
    from meterd.agent.store import open_store

    store = open_store(db_path, readonly=True)
    try:
        pending, quarantined = store.outbox_counts()
        oldest = store.pending_windows(1)
        rows = store.quarantined()
        ship = store.ship_state()
    finally:
        store.close()
    doc = {
        "sink": ship.get("sink"),
        "url": ship.get("url"),
        "pending": pending,
        "oldest_pending": iso(oldest[0]["start"]) if oldest else None,
        "quarantined": [{"id": r["id"], "device": r["device"], "start": iso(r["start"]),
                         "event_id": r["event_id"], "reason": r["quarantine_reason"]} for r in rows],
    }
    if as_json:
        click.echo(json.dumps(doc))
        return
    if doc["sink"]:
        click.echo(f"sink: {doc['sink']} at {doc['url']}")
    else:
        click.echo("sink: none yet (the agent has not shipped from this store: `meter agent --ship URL`)")
    click.echo(f"{pending} window(s) waiting to ship" + (f", the oldest from {doc['oldest_pending']}" if oldest else ""))
    click.echo(f"{quarantined} quarantined" + (": `meter outbox retry` sends them again once the sink is fixed" if rows else ""))
    for q in doc["quarantined"]:
        click.echo(f"  #{q['id']} {q['device']} {q['start']}: {q['reason']}")


@outbox_group.command("retry")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1), metavar="[ID]...")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="SQLite store (default: the agent's).")
@click.pass_context
def outbox_retry(ctx, ids, db_path) -> None:
    """Put quarantined windows (all, or these ids from `meter outbox`) back in the outbox; the
    agent sends them again."""
    from meterd.agent.store import open_store

    store = open_store(db_path or ctx.obj.get("db"), create=False)
    try:
        if ids:
            states = store.outbox_states(ids)
            wrong = [f"#{i} " + ("does not exist" if i not in states else f"is {states[i]}, not quarantined")
                     for i in dict.fromkeys(ids) if states.get(i) != "quarantined"]
            if wrong:
                raise click.ClickException(f"window {'; '.join(wrong)}: nothing retried "
                                           "(`meter outbox` lists the quarantined windows)")
        n = store.retry_quarantined(list(ids) if ids else None)
    finally:
        store.close()
    click.echo(f"{n} window(s) back in the outbox")

