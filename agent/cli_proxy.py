"""`meter proxy`: meter a server that publishes no token metrics (Ollama) by passing its API
through (agent/proxy.py). Registered on `meter` by agent/cli.py."""

from __future__ import annotations

import click

from meterd.net import parse_listen


@click.command("proxy")
@click.option("--listen", default="127.0.0.1:11435", show_default=True, metavar="HOST:PORT",
              help="Where clients connect (loopback only).")
@click.option("--upstream", default="http://127.0.0.1:11434", show_default=True, metavar="URL",
              help="The inference server (loopback only), e.g. Ollama.")
@click.option("--push", "push_url", required=True, metavar="URL",
              help="The agent's push endpoint ([push] listen), e.g. http://127.0.0.1:9465.")
@click.option("--key", "keys", multiple=True, metavar="KEY=TENANT",
              help="An API key (Authorization: Bearer KEY) and the tenant it bills. Repeatable.")
def proxy(listen: str, upstream: str, push_url: str, keys: tuple[str, ...]) -> None:
    """Forward OpenAI and Ollama API calls to the server and record each response's usage
    (prompt and completion tokens, per model and per API key's tenant) with the agent's push
    endpoint. Runs until Ctrl-C / SIGTERM."""
    from meterd.agent.proxy import PushSink, UsageProxy, parse_keys

    try:
        host, port = parse_listen(listen)
        tenants = parse_keys(keys)
        sink = PushSink(push_url)
        p = UsageProxy(upstream, sink, host=host, port=port, keys=tenants)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"meter proxy: {p.url} -> {upstream}, usage to {push_url}", err=True)
    try:
        p.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        p.httpd.server_close()
        sink.close()
