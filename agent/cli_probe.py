"""`meter probe ...`: what one probe sees, once, for operators checking a node.

Registered on `meter` by agent/cli.py; this module does not import it (no import cycle).
"""

from __future__ import annotations

import json

import click
import httpx

from meterd.probes.prometheus_servers import KINDS, PLACEHOLDER_MODELS, GenericMetrics
from meterd.probes.tokens import DEFAULT_TIMEOUT_S, TokenSource


@click.group()
def probe() -> None:
    """What one probe reads, once: for checking a node's setup."""


@probe.command()
@click.argument("url")
@click.option("--kind", type=click.Choice([*KINDS, "auto"]), default="auto", show_default=True,
              help="The server's kind; auto recognises it from its metric names.")
@click.option("--model", default=None, metavar="NAME",
              help="Model name for one-model servers (tgi, llamacpp, generic without --model-label). "
                   "Default: default.")
@click.option("--prompt-metric", metavar="NAME", help="generic: the prompt-token counter (or histogram).")
@click.option("--completion-metric", metavar="NAME", help="generic: the completion-token counter (or histogram).")
@click.option("--model-label", metavar="LABEL", help="generic: the label that names the model.")
@click.option("--prefill-metric", metavar="NAME", help="generic: seconds spent in prefill (optional).")
@click.option("--decode-metric", metavar="NAME", help="generic: seconds spent in decode (optional).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.05, max=60), default=DEFAULT_TIMEOUT_S,
              show_default=True, metavar="SECONDS", help="Give up on the server after this long.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
def tokens(url: str, kind: str, model: str | None, prompt_metric: str | None, completion_metric: str | None,
           model_label: str | None, prefill_metric: str | None, decode_metric: str | None,
           timeout_s: float, as_json: bool) -> None:
    """What one scrape of an inference server's metrics shows, per model.

    URL is the server's Prometheus endpoint; host:port alone means http://host:port/metrics
    (/prometheus/metrics for trtllm-serve). Shows cumulative prompt tokens (every prompt token,
    cached or not), the cached part, completion tokens, prefill and decode seconds where the
    server reports them, and where the counts come from (counter, histogram, rounded). Warns
    when the server names its model with a placeholder ("undefined", "default").
    """
    generic = None
    if kind == "generic":
        if not (prompt_metric and completion_metric):
            raise click.UsageError("--kind generic needs --prompt-metric and --completion-metric")
        generic = GenericMetrics(prompt_metric, completion_metric, model_label, prefill_metric, decode_metric)
    elif prompt_metric or completion_metric or model_label or prefill_metric or decode_metric:
        raise click.UsageError("--prompt-metric, --completion-metric, --model-label, --prefill-metric and "
                               "--decode-metric go with --kind generic")
    try:
        source = TokenSource(url, kind=kind, model=model, generic=generic, timeout_s=timeout_s)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    with httpx.Client() as client:
        totals = source.read(client)

    rows = [{"model": m, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
             "cached_prompt_tokens": c.cached_tokens, "prefill_s": c.prefill_s, "decode_s": c.decode_s,
             "token_source": c.provenance, "error_bound": c.error_bound} for m, c in totals.models.items()]
    placeholders = sorted(m for m in totals.models if m in PLACEHOLDER_MODELS)
    if placeholders and not model:
        click.echo(f"warning: {source.url} names its model {placeholders[0]!r}, a placeholder: give the model's "
                   f"name with --model NAME (in the agent: model = in the source, or --source KIND=URL,model=NAME)",
                   err=True)
    rounded = [r["model"] for r in rows if r["token_source"] == "rounded"]
    if rounded:
        click.echo(f"warning: {source.url} prints counters with fewer digits than they have (model "
                   f"{rounded[0]!r}: off by up to {rows[[r['model'] for r in rows].index(rounded[0])]['error_bound']:,} "
                   f"tokens): the agent marks such counts rounded", err=True)
    if as_json:
        click.echo(json.dumps({"kind": totals.kind, "models": rows}))
        return
    click.echo(f"{totals.kind} at {source.url}")
    if not rows:
        click.echo("no model has served a request yet")
        return
    header = ("model", "prompt_tokens", "cached", "completion_tokens", "prefill_s", "decode_s", "source")
    cells = [header] + [(r["model"], f"{r['prompt_tokens']:,}",
                         "-" if r["cached_prompt_tokens"] is None else f"{r['cached_prompt_tokens']:,}",
                         f"{r['completion_tokens']:,}", _seconds(r["prefill_s"]), _seconds(r["decode_s"]),
                         r["token_source"] + (f" ±{r['error_bound']:,}" if r["error_bound"] else ""))
                        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:,.3f}"
