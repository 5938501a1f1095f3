"""``meter report``: a few lines over reports.query (I/O), reports.aggregate (pure) and the
renderers. Registered by agent/cli.py; it does not import agent.cli, so the two do not import
each other."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Callable, Sequence

import click

from meterd.agent.timeparse import parse_when
from meterd.agent.ui import write_error
from meterd.reports.aggregate import GROUP_KEYS, Cells, parse_by
from meterd.reports.page import report_of
from meterd.reports.query import Filters, read_collector, read_store
from meterd.sqlite_store import store_error
from meterd.units import iso

FORMATS = ("table", "json", "csv", "html")


def _reader(db: str | None, collector: str | None, token_file: str | None,
            tls: dict[str, str | None]) -> Callable[[Sequence[str], Filters], Cells]:
    """A function (by, filters) -> cells over the store or the collector."""
    if collector:
        if db:
            raise click.ClickException("--db and --collector exclude each other: report one source")
        if not token_file:
            raise click.ClickException("--collector needs --token-file FILE (a token from "
                                       "`meter collector token create --read NAME`)")
        # A read token reads every node: the shipper's rules hold for it too (checked before
        # anything connects): https unless loopback, a token file of mode 0600.
        from meterd.agent.shipper import check_url, read_token_file
        from meterd.agent.tls import FLAG_NAMES, client_context

        check_url(collector, what="--collector", expected="https://HOST[:PORT]", insecure_hint="")
        token = read_token_file(token_file)
        verify = client_context(tls["ca_file"], tls["client_cert"], tls["client_key"], names=FLAG_NAMES)
        return lambda by, f: read_collector(collector, token, by, f, verify=verify)
    if token_file or any(tls.values()):
        raise click.ClickException(("--token-file goes" if token_file else "--ca-file, --client-cert and "
                                    "--client-key go") + " with --collector URL")

    def read(by: Sequence[str], f: Filters) -> Cells:
        from meterd.agent.store import open_store

        store = open_store(db, readonly=True)
        try:
            return read_store(store, by, f)
        except sqlite3.Error as e:
            raise store_error(e, store.path) from e
        finally:
            store.close()

    return read


@click.command("report")
@click.option("--db", type=click.Path(dir_okay=False), help="The SQLite store (default: the agent's).")
@click.option("--collector", metavar="URL", help="Read a collector's query API instead of a local store.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="A file holding the collector's bearer token (mode 0600).")
@click.option("--ca-file", type=click.Path(dir_okay=False), help="With --collector: trust this CA (PEM) instead of the system's.")
@click.option("--client-cert", type=click.Path(dir_okay=False), help="With --collector: a client certificate (PEM) for mutual TLS.")
@click.option("--client-key", type=click.Path(dir_okay=False), help="The private key of --client-cert (mode 0600), if not in its file.")
@click.option("--since", help="From this time: ISO-8601 (2026-11-01, 2026-11-27T12:00Z) or a span back from now (24h, 7d).")
@click.option("--until", help="Up to this time (exclusive); same forms as --since.")
@click.option("--by", "by", multiple=True, metavar="KEY[,KEY]",
              help=f"Group by {'|'.join(GROUP_KEYS)}; repeatable or comma-separated (default: model,device).")
@click.option("--node", help="Only this node.")
@click.option("--device", help="Only this device id.")
@click.option("--model", help="Only this model.")
@click.option("--tenant", help="Only this tenant.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table for people; json and csv for scripts; html (with --output) for a self-contained page with charts.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file instead of standard output.")
@click.option("--wide", is_flag=True, help="With the table: every column, however wide the terminal (a narrow one leaves some out).")
def report(db, collector, token_file, ca_file, client_cert, client_key, since, until, by, node, device,
           model, tenant, fmt, output, wide) -> None:
    """What a million tokens cost: per model and device (default), node, tenant, hour, day or
    week, from the local store or a collector.

    Tokens (prompt, completion), energy, the cost split (capex, energy, opex), cost per million
    tokens (total, prompt, completion), joules per token, mean utilization, the share of cost
    spent idle, and the capacity cost per Mtok at the bench's roofline beside the realized one.
    """
    now = time.time()
    f = Filters(since=parse_when(since, now) if since else None,
                until=parse_when(until, now) if until else None,
                node=node, device=device, model=model, tenant=tenant)
    keys = parse_by(by)
    if f.since is not None and f.until is not None and f.since >= f.until:
        raise click.ClickException("--since must be before --until")
    if fmt == "html" and not output:
        raise click.ClickException("--format html needs --output FILE")
    read = _reader(db, collector, token_file, {"ca_file": ca_file, "client_cert": client_cert,
                                               "client_key": client_key})
    rep, cells = report_of(read, keys, f)
    context = {"since": iso(f.since) if f.since is not None else None,
               "until": iso(f.until) if f.until is not None else None,
               "source": collector or "local store"}
    if fmt == "table":
        from meterd.agent.ui import console, measure
        from meterd.reports.render import render_table

        from rich.console import Console

        title = f"meter report by {', '.join(keys)}" + (f" ({context['since'] or '…'} → {context['until'] or 'now'})"
                                                         if since or until else "")
        con = console()
        if output or wide or not con.is_terminal:  # every column, at the width it needs
            table = render_table(rep, title=title)
            need = measure(table)
            if output:
                try:
                    with open(output, "w") as fh:
                        Console(file=fh, width=need).print(table)
                except OSError as e:
                    raise click.ClickException(write_error(output, e)) from None
                click.echo(f"wrote {output}", err=True)
            else:
                Console(width=max(need, con.width)).print(table)
            return
        view = render_table(rep, title=title, width=con.width)
        con.print(view, markup=not isinstance(view, str), highlight=False)
        return
    if fmt == "html":
        from meterd.reports.page import html_page

        text = html_page(read, keys, f, rep, cells, title="meter report", **context)
    elif fmt == "json":
        from meterd.reports.render import render_json

        text = render_json(rep, **context) + "\n"
    else:
        from meterd.reports.render import render_csv

        text = render_csv(rep)
    if output:
        try:
            Path(output).write_text(text)
        except OSError as e:
            raise click.ClickException(write_error(output, e)) from None
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
