"""`meter collector ...`: serve the billing endpoint, create tokens, export bills.

The group is defined here without importing agent.cli (which imports this module to register
it), so there is no import cycle.
"""

from __future__ import annotations

import functools
import os
import signal
import ssl
import tomllib
from pathlib import Path
from typing import Any, Callable

import click

from meterd.collector.app import DEFAULT_MAX_BODY_BYTES, create_app, timed_h11
from meterd.collector.auth import create_token
from meterd.collector.export import PERIODS, billing_rows, parse_bound, parse_by, render_csv, render_json
from meterd.collector.store import Query, open_store
from meterd.errors import ConfigError
from meterd.net import parse_listen
from meterd.units import iso

DEFAULT_LISTEN = "127.0.0.1:8650"
DB_ENV = "METERD_COLLECTOR_DB"


def _db_option(f: Callable) -> Callable:
    """``--db`` and ``--config``, resolved into one ``db`` argument: --db, else
    $METERD_COLLECTOR_DB, else ``[collector] db`` in the --config file, else the default path."""

    @click.option("--db", "db_flag", default=None, metavar="PATH|URL",
                  help="The collector's database: a file (SQLite; default $STATE_DIRECTORY/collector.db "
                       "under systemd, else ~/.local/share/meterd/collector.db) or a "
                       "postgresql://USER@HOST/DATABASE URL (PostgreSQL, for replicas). "
                       f"Default: ${DB_ENV}, else [collector] db in --config.")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="A TOML file whose [collector] table may name the database (db = ...).")
    @functools.wraps(f)
    def wrapper(*args: Any, db_flag: str | None, config_path: str | None, **kw: Any) -> Any:
        return f(*args, db=resolve_db(db_flag, config_path), **kw)

    return wrapper


def resolve_db(flag: str | None, config_path: str | None, env: dict[str, str] | None = None) -> str | None:
    """The database the command uses (None: the default SQLite path)."""
    env = os.environ if env is None else env
    if flag:
        return flag
    if env.get(DB_ENV):
        return env[DB_ENV]
    if config_path is None:
        return None
    try:
        doc = tomllib.loads(Path(config_path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{config_path}: cannot read config: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{config_path}: not valid TOML: {e}") from None
    table = doc.get("collector", {})
    if not isinstance(table, dict):
        raise ConfigError("collector: expected a table")
    unknown = sorted(set(table) - {"db"})
    if unknown:
        raise ConfigError(f"collector.{unknown[0]}: unknown key")
    db = table.get("db")
    if db is not None and (not isinstance(db, str) or not db):
        raise ConfigError("collector.db: expected a file path or a postgresql:// URL")
    return db


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


@click.group()
def collector() -> None:
    """The central billing endpoint: CloudEvents ingest, node tokens, billing export."""


@collector.command()
@_db_option
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Where to listen. Plain HTTP: put TLS in front, or give --certfile/--keyfile.")
@click.option("--max-body", type=click.IntRange(min=1024), default=DEFAULT_MAX_BODY_BYTES,
              show_default=True, help="Largest request body in bytes (413 above).")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS certificate (PEM) to serve HTTPS.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS private key (PEM) for --certfile.")
@click.option("--client-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Mutual TLS: require a client certificate signed by this CA (PEM), beside the bearer token.")
def serve(db: str | None, listen: str, max_body: int, certfile: str | None, keyfile: str | None,
          client_ca: str | None) -> None:
    """Serve POST /api/v1/events, the query API and /healthz until interrupted."""
    import uvicorn  # only the server needs it

    try:
        host, port = parse_listen(listen)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--listen") from None
    if (certfile is None) != (keyfile is None):
        raise click.UsageError("--certfile and --keyfile go together")
    if client_ca is not None and certfile is None:
        raise click.UsageError("--client-ca needs --certfile and --keyfile (mutual TLS is TLS first)")
    store = open_store(db)
    try:
        config = uvicorn.Config(
            create_app(store, max_body_bytes=max_body), host=host, port=port,
            lifespan="off", ws="none", server_header=False, log_level="info", http=timed_h11(),
            ssl_certfile=certfile, ssl_keyfile=keyfile,
            **({"ssl_ca_certs": client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED} if client_ca else {}),
        )
        click.echo(f"collector: database {store.path}", err=True)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: end with
        # status 0 rather than "Aborted!" or death by SIGTERM (systemd counts that as a failure).
        previous = signal.signal(signal.SIGTERM, _exit_cleanly)
        try:
            uvicorn.Server(config).run()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        store.close()


@collector.group()
def token() -> None:
    """Bearer tokens: one per node (sends its own events), or read tokens for reports."""


@token.command("create")
@click.argument("name")
@click.option("--read", "read_only", is_flag=True,
              help="A read token (queries every node, sends nothing) named NAME, instead of a token for node NAME.")
@_db_option
def token_create(name: str, read_only: bool, db: str | None) -> None:
    """Create a token for node NAME and print it, once, alone on the last line.

    Only its SHA-256 hash is stored: keep the token, it cannot be shown again.
    """
    store = open_store(db)
    try:
        tok = create_token(store, name, scope="read" if read_only else "node")
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    finally:
        store.close()
    kind = "read token" if read_only else "token for node"
    click.echo(f"Created a {kind} {name!r}. It is shown once; only its hash is stored.", err=True)
    click.echo(tok)


@token.command("list")
@_db_option
def token_list(db: str | None) -> None:
    """The tokens (key id, scope, name, created), never their secrets."""
    store = open_store(db, readonly=True)
    try:
        for t in store.list_tokens():
            click.echo(f"{t.key_id}  {t.scope:<4}  {t.name}  {iso(t.created_at)}")
    finally:
        store.close()


@token.command("revoke")
@click.argument("key_id")
@_db_option
def token_revoke(key_id: str, db: str | None) -> None:
    """Revoke the token with KEY_ID (the part after "mtk_"; see `token list`). Takes effect at once."""
    store = open_store(db)
    try:
        if not store.delete_token(key_id):
            raise click.ClickException(f"no token with key id {key_id!r}")
    finally:
        store.close()
    click.echo(f"revoked {key_id}")


@collector.command()
@_db_option
@click.option("--since", required=True, help="Start (inclusive), ISO-8601 date or time; UTC unless it says otherwise.")
@click.option("--until", required=True, help="End (exclusive), ISO-8601 date or time.")
@click.option("--period", type=click.Choice(PERIODS), default="day", show_default=True,
              help="One row per period and --by keys.")
@click.option("--by", "by_text", default="node,model", show_default=True, metavar="KEYS",
              help="Break down by these keys (node, device, model, tenant), e.g. tenant,model for an invoice "
                   "per tenant with its models.")
@click.option("--node", default=None, help="Only this node.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
def export(db: str | None, since: str, until: str, period: str, by_text: str, node: str | None, fmt: str) -> None:
    """The billing export: tokens, energy and cost per period, node and model (or --by).

    Costs are exact integer micro-units (cost_micro) and the same amount in currency units
    (cost); cost per million tokens is a ratio of sums, empty when there were no tokens. Idle
    cost (windows without tokens) is its own row, model "(idle)". With --by other than
    node,model the table is invoice-ready: tokens in, cached and out, kWh, the cost and its
    prompt/completion split, cost per Mtok; its money equals the sum of the meterd.usage.v1
    events of the same windows exactly.
    """
    try:
        t0, t1 = parse_bound(since), parse_bound(until)
        by = parse_by(by_text)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    if t1 <= t0:
        raise click.ClickException("--until must be after --since")
    store = open_store(db, readonly=True)
    try:
        groups = store.usage([period, *by], Query(node=node, since=t0, until=t1))
    finally:
        store.close()
    rows = billing_rows(groups, period, by)
    if fmt == "json":
        click.echo(render_json(rows, since=t0, until=t1, period=period))
    else:
        click.echo(render_csv(rows, by), nl=False)
