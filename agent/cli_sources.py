"""`meter sources ...`: the token sources a node has. `meter sources discover` finds the
inference servers behind the GPUs' processes (probes/discovery.py), as `[[sources]] kind =
"discover"` does in the agent. Registered on `meter` by agent/cli.py."""

from __future__ import annotations

import json

import click
import httpx

from meterd.probes.devices import get_devices
from meterd.probes.discovery import Discoverer, gpu_processes


@click.group()
def sources() -> None:
    """The node's token sources."""


@sources.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of lines.")
def discover(as_json: bool) -> None:
    """Find the inference servers on this node: the processes that hold a GPU and listen on a
    TCP port serving Prometheus text a known server kind writes (auto), each with the GPUs it
    holds. Only loopback is scraped. What `[[sources]] kind = "discover"` meters."""
    node = get_devices()
    try:
        pids = gpu_processes(node.devices)
        with httpx.Client() as client:
            found = Discoverer().discover(pids, client)
    finally:
        node.close()
    if as_json:
        click.echo(json.dumps({"gpu_processes": {str(p): d for p, d in sorted(pids.items())},
                               "sources": [{"name": f.name, "kind": f.kind, "url": f.url, "devices": list(f.devices),
                                            "pids": list(f.pids)} for f in found]}))
        return
    if not pids:
        why = f" ({node.gpus.reason})" if getattr(node.gpus, "reason", None) else ""
        click.echo(f"no process holds a GPU{why}: nothing to discover")
        return
    if not found:
        click.echo(f"{len(pids)} GPU process(es), none listening on a port that serves a known server's metrics")
        return
    for f in found:
        click.echo(f"{f.name}  {f.kind} at {f.url}  devices {', '.join(f.devices)}  PIDs {', '.join(map(str, f.pids))}")
