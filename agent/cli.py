"""The `meter` command line. Each command is a few lines over a library call.

The one error boundary is :meth:`LazyGroup.invoke`: a :class:`meterd.errors.MeterError` from any
command becomes one line on stderr and exit status 1; any other exception becomes one line too,
naming it as a bug and pointing to ``meter --debug`` for the traceback. Click's usage errors keep
their exit status 2."""

from __future__ import annotations

import importlib
import json
import logging
import socket
import sys
import time
import traceback

import click
from rich.live import Live
from rich.text import Text

from meterd import __version__
from meterd.agent.status_view import status_json, status_table
from meterd.agent.ui import console
from meterd.errors import MeterError
from meterd.probes.devices import get_devices


#: name -> "module:attribute" of commands defined in their own modules.
LAZY_COMMANDS: dict[str, str] = {}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (or help lists it), so
    the daemon does not carry NumPy, Starlette and the report renderers in memory, and every
    command starts faster."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, EOFError):
            raise  # click's own: usage errors exit 2, Ctrl-C is "Aborted!"
        except MeterError as e:
            if ctx.params.get("debug"):
                traceback.print_exc(file=sys.stderr)
            raise click.ClickException(one_line(str(e)) or type(e).__name__) from None
        except Exception as e:
            if ctx.params.get("debug"):
                raise
            logging.getLogger("meterd").debug("unexpected error", exc_info=True)
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {one_line(str(e))} (a bug in meterd; "
                "`meter --debug ...` shows the traceback)") from None


def one_line(text: str) -> str:
    """A message as one line: its lines joined, surrounding space dropped."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meter")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error (and debug log output).")
def main(verbose: int, debug: bool) -> None:
    """meterd: what a token really costs on your own hardware.

    Measures the node's devices, the tokens its inference servers make, and what each million
    tokens costs in energy, capital and operations.
    """
    level = logging.DEBUG if debug else logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.option("--watch", type=click.FloatRange(min=0.2), is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]", help="Refresh every SECONDS (default 2) until Ctrl-C. With --json, one JSON object per line.")
@click.option("--wide", is_flag=True, help="Every column, however wide the terminal (a narrow one leaves some out).")
def status(as_json: bool, watch: float | None, wide: bool) -> None:
    """What the node has and draws right now: one row per GPU and CPU.

    Every power and energy figure names its source: counter (a hardware energy counter),
    instant or average (the device's power sensor), or estimated (a model, e.g. CPU TDP x
    utilization when RAPL cannot be read).
    """
    node_name = socket.gethostname()
    node = get_devices()
    try:
        if watch is None:
            _print_status(node_name, node, as_json, wide)
            return
        if as_json:
            while True:
                _print_status(node_name, node, True)
                time.sleep(watch)
        con = console()
        with Live(console=con, auto_refresh=False) as live:
            while True:
                samples = [d.sample() for d in node.devices]
                view = status_table(node_name, time.time(), samples, node.gpus.reason,
                                    width=None if wide or not con.is_terminal else con.width)
                live.update(Text(view) if isinstance(view, str) else view, refresh=True)
                time.sleep(watch)
    except KeyboardInterrupt:
        pass
    finally:
        node.close()


def _print_status(node_name, node, as_json: bool, wide: bool = False) -> None:
    from meterd.agent.agent_status import describe, read_status
    from meterd.agent.store import default_db_path

    samples = [d.sample() for d in node.devices]
    at = time.time()
    agent = read_status(default_db_path())  # the agent's word on its store (full disk, locked)
    if as_json:
        click.echo(json.dumps({**status_json(node_name, at, samples, node.gpus.reason), "agent": agent}))
        return
    con = console()
    view = status_table(node_name, at, samples, node.gpus.reason,
                        width=None if wide or not con.is_terminal else con.width)
    con.print(view, markup=not isinstance(view, str), highlight=False)
    line = describe(agent)
    if line:
        click.echo(line)


# Commands that live in their own modules, imported only when used (see LazyGroup): one line each.
LAZY_COMMANDS.update({
    "agent": "meterd.agent.cli_agent:agent_cmd",
    "windows": "meterd.agent.cli_agent:windows_cmd",
    "config": "meterd.agent.cli_agent:config_group",
    "outbox": "meterd.agent.cli_agent:outbox_group",
    "bench": "meterd.agent.cli_bench:bench",
    "probe": "meterd.agent.cli_probe:probe",
    "proxy": "meterd.agent.cli_proxy:proxy",
    "sources": "meterd.agent.cli_sources:sources",
    "report": "meterd.reports.cli:report",
    "collector": "meterd.collector.cli:collector",
})


if __name__ == "__main__":
    main()
