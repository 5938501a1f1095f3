"""The `meter` command line. Each command is a few lines over a library call; domain errors
become one clear line (click.ClickException), never a traceback."""

from __future__ import annotations

import json
import logging
import socket
import time

import click
from rich.live import Live

from agent import __version__
from agent.status_view import status_json, status_table
from agent.ui import console
from probes.devices import get_devices


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meter")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """meterd: what a token really costs on your own hardware.

    Measures the node's devices, the tokens its inference servers make, and what each million
    tokens costs in energy, capital and operations.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.option("--watch", type=click.FloatRange(min=0.2), is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]", help="Refresh every SECONDS (default 2) until Ctrl-C. With --json, one JSON object per line.")
def status(as_json: bool, watch: float | None) -> None:
    """What the node has and draws right now: one row per GPU and CPU.

    Every power and energy figure names its source: counter (a hardware energy counter),
    instant or average (the device's power sensor), or estimated (a model, e.g. CPU TDP x
    utilization when RAPL cannot be read).
    """
    node_name = socket.gethostname()
    node = get_devices()
    try:
        if watch is None:
            _print_status(node_name, node, as_json)
            return
        if as_json:
            while True:
                _print_status(node_name, node, True)
                time.sleep(watch)
        with Live(console=console(), auto_refresh=False) as live:
            while True:
                samples = [d.sample() for d in node.devices]
                live.update(status_table(node_name, time.time(), samples, node.gpus.reason), refresh=True)
                time.sleep(watch)
    except KeyboardInterrupt:
        pass
    finally:
        node.close()


def _print_status(node_name, node, as_json: bool) -> None:
    samples = [d.sample() for d in node.devices]
    at = time.time()
    if as_json:
        click.echo(json.dumps(status_json(node_name, at, samples, node.gpus.reason)))
    else:
        console().print(status_table(node_name, at, samples, node.gpus.reason))


# Commands that live in their own modules register here, one line each.
from reports.cli import report  # noqa: E402
main.add_command(report)
from agent.cli_bench import bench  # noqa: E402
main.add_command(bench)
from agent.cli_probe import probe  # noqa: E402
main.add_command(probe)
from agent.cli_agent import agent_cmd, config_group, windows_cmd  # noqa: E402
main.add_command(agent_cmd)
main.add_command(windows_cmd)
main.add_command(config_group)
from collector.cli import collector  # noqa: E402
main.add_command(collector)


if __name__ == "__main__":
    main()
