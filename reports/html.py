"""``meter report --format html``: one self-contained page that opens offline. Pure: reports in,
text out. Charts are inline SVG drawn here (no script, no CDN, no font or image to fetch):

- cost per Mtok over time (hourly or daily);
- tokens/s against power, one point per device-hour, coloured by device (a node's, in a fleet);
- the roofline of each benched device (attainable FLOP/s against arithmetic intensity, log-log)
  with the live operating points: achieved FLOP/s = 2 × active params × tokens/s over the
  model's serving time, placed at the model's decode intensity at the bench's batch and context.
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable, Sequence

from meterd.reports.aggregate import Report
from meterd.reports.render import EFFICIENCY_NOTE, _money

W, H = 640, 340
ML, MR, MT, MB = 70, 20, 20, 50
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
MAX_POINTS = 3000


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


class _Axis:
    """A linear or log10 scale from data to pixels."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False) -> None:
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi <= lo:
            lo, hi = lo - 1, hi + 1
        self.lo, self.hi, self.a, self.b, self.log = lo, hi, a, b, log

    def __call__(self, v: float) -> float:
        x = math.log10(v) if self.log else v
        return self.a + (x - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, n: int = 5) -> list[float]:
        if self.log:
            return [10.0 ** k for k in range(math.floor(self.lo), math.ceil(self.hi) + 1)
                    if self.lo - 1e-9 <= k <= self.hi + 1e-9]
        step = _nice((self.hi - self.lo) / n)
        first = math.ceil(self.lo / step) * step
        return [first + i * step for i in range(int((self.hi - first) / step + 1e-9) + 1)]


def _nice(x: float) -> float:
    if x <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(x))
    return next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= x)


def _fmt(v: float) -> str:
    a = abs(v)
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:.4g}"


def _time_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Ticks on whole UTC hours or days, at most ``most`` of them."""
    steps = [h * 3600 for h in (1, 2, 3, 6, 12)] + [d * 86400 for d in (1, 2, 7, 14, 28, 56, 91)]
    step = next((s for s in steps if (hi - lo) / s <= most), steps[-1])
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) // step) + 1)]


def _frame(title: str, xlabel: str, ylabel: str, x: _Axis, y: _Axis,
           xfmt: Callable[[float], str] = _fmt, xticks: Sequence[float] | None = None) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="{_e(title)}">',
           f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" fill="#fafafa" stroke="#999"/>']
    for t in (x.ticks() if xticks is None else xticks):
        px = x(t)
        anchor = "end" if px > W - MR - 30 else "middle"
        out.append(f'<line x1="{px:.1f}" y1="{MT}" x2="{px:.1f}" y2="{H - MB}" stroke="#e4e4e4"/>'
                   f'<text x="{px:.1f}" y="{H - MB + 16}" text-anchor="{anchor}" class="t">{_e(xfmt(t))}</text>')
    for t in y.ticks():
        py = y(t)
        out.append(f'<line x1="{ML}" y1="{py:.1f}" x2="{W - MR}" y2="{py:.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{ML - 6}" y="{py + 4:.1f}" text-anchor="end" class="t">{_e(_fmt(t))}</text>')
    out.append(f'<text x="{(ML + W - MR) / 2}" y="{H - 12}" text-anchor="middle" class="l">{_e(xlabel)}</text>'
               f'<text transform="translate(16 {(MT + H - MB) / 2}) rotate(-90)" text-anchor="middle" '
               f'class="l">{_e(ylabel)}</text>')
    return out


def _empty(title: str, why: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="80" role="img" '
            f'aria-label="{_e(title)}"><text x="10" y="40" class="l">{_e(why)}</text></svg>')


def _legend(names: Sequence[str]) -> str:
    return "".join(f'<span class="key"><i style="background:{COLOURS[i % len(COLOURS)]}"></i>{_e(n)}</span>'
                   for i, n in enumerate(names))


def _time_label(span: float) -> Callable[[float], str]:
    from datetime import datetime, timezone

    f = "%m-%d %H:00" if span <= 3 * 86400 else "%Y-%m-%d"
    return lambda t: datetime.fromtimestamp(t, timezone.utc).strftime(f)


def cost_chart(trend: Report) -> str:
    """Cost per Mtok over time: a line through the periods that served tokens."""
    key = trend.by[0]
    from meterd.units import parse_iso

    pts = [(parse_iso(r[key]), r["cost_per_mtok"]) for r in trend.rows if r["cost_per_mtok"] is not None]
    if not pts:
        return _empty("cost per Mtok over time", "no tokens served in this range")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x = _Axis(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, ML, W - MR)
    y = _Axis(0, max(ys) * 1.1 or 1, H - MB, MT)
    out = _frame("cost per Mtok over time", f"time (UTC, per {key})",
                 f"cost per Mtok ({trend.currency or ''})", x, y, _time_label(max(xs) - min(xs)),
                 _time_ticks(min(xs), max(xs)))
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(a):.1f},{y(b):.1f}" for i, (a, b) in enumerate(pts))
    out.append(f'<path d="{path}" fill="none" stroke="{COLOURS[0]}" stroke-width="1.5"/>')
    if len(pts) <= 400:
        out += [f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="2.5" fill="{COLOURS[0]}"/>' for a, b in pts]
    out.append("</svg>")
    return "".join(out)


def power_chart(scatter: Report) -> str:
    """Tokens/s against mean power, one point per device and period (an hour, or a day over a
    long range: reports/cli.py picks it; at most MAX_POINTS of them, evenly spaced)."""
    rows = [r for r in scatter.rows if r["avg_power_w"] is not None and r["tokens_per_s"] is not None]
    if not rows:
        return _empty("tokens/s against power", "no energy measured in this range")
    if len(rows) > MAX_POINTS:
        step = len(rows) / MAX_POINTS
        rows = [rows[int(i * step)] for i in range(MAX_POINTS)]
    # A device is (node, device): in a fleet every node has a GPU-0. Named by node too where
    # the chart holds more than one node.
    def device_of(r: dict[str, Any]) -> tuple[str, str]:
        return (r.get("node") or "", r["device"])

    devices = list(dict.fromkeys(device_of(r) for r in scatter.rows))
    colour = {d: COLOURS[i % len(COLOURS)] for i, d in enumerate(devices)}
    several = len({n for n, _ in devices}) > 1
    x = _Axis(0, max(r["avg_power_w"] for r in rows) * 1.05 or 1, ML, W - MR)
    y = _Axis(0, max(r["tokens_per_s"] for r in rows) * 1.1 or 1, H - MB, MT)
    out = _frame("tokens/s against power", "mean power (W)", "tokens/s", x, y)
    for r in rows:
        c = colour[device_of(r)]
        out.append(f'<circle cx="{x(r["avg_power_w"]):.1f}" cy="{y(r["tokens_per_s"]):.1f}" r="2" '
                   f'fill="{c}" fill-opacity="0.6"/>')
    out.append("</svg>")
    return "".join(out) + f'<div class="legend">{_legend([f"{n} {d}" if several else d for n, d in devices])}</div>'


def roofline_chart(capacity: Sequence[dict[str, Any]], points: Report) -> str:
    """Each benched device's roofline and the live (device, model) operating points."""
    roofs = {c["device"]: (c["flops_per_s"], c["bytes_per_s"]) for c in capacity}
    if not roofs:
        return _empty("roofline", "no bench results: run `meter bench` on the node (local store only)")
    live = []
    by_dm = {(c["device"], c["model"]): c for c in capacity}
    from meterd.reports.aggregate import match_profile

    for r in points.rows:
        models = [m for (d, m) in by_dm if d == r["device"]]
        name = match_profile(r["model"], models) if r["model"] else None
        if name is None or not r["tokens"] or not r["seconds"]:
            continue
        c = by_dm[(r["device"], name)]
        live.append((r["device"], r["model"], c["decode_intensity"],
                     2 * c["active_params"] * r["tokens"] / r["seconds"]))
    devices = list(roofs)
    ai_lo, ai_hi = 0.1, 10_000.0
    for _, _, ai, _ in live:
        ai_lo, ai_hi = min(ai_lo, ai / 2), max(ai_hi, ai * 2)
    peak = max(f for f, _ in roofs.values())
    low = min([b * ai_lo for _, b in roofs.values()] + [p for *_, p in live if p > 0])
    x = _Axis(ai_lo, ai_hi, ML, W - MR, log=True)
    y = _Axis(max(low / 2, 1.0), peak * 3, H - MB, MT, log=True)
    out = _frame("roofline", "arithmetic intensity (FLOP/byte)", "FLOP/s", x, y)
    for i, (dev, (flops, bw)) in enumerate(roofs.items()):
        c = COLOURS[i % len(COLOURS)]
        knee = flops / bw
        pts = [(ai_lo, bw * ai_lo)] + ([(knee, flops)] if ai_lo < knee < ai_hi else []) + [
            (ai_hi, min(flops, bw * ai_hi))]
        d = " ".join(f"{'M' if j == 0 else 'L'}{x(a):.1f},{y(max(v, 10 ** y.lo)):.1f}" for j, (a, v) in enumerate(pts))
        out.append(f'<path d="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
    outside = []
    for dev, model, ai, achieved in live:
        if achieved <= 0:
            continue
        c = COLOURS[devices.index(dev) % len(COLOURS)] if dev in devices else "#000"
        if achieved > 10 ** y.hi:  # above 3x the device's measured peak: drawn at the top edge
            outside.append(f"{model} on {dev} at {_fmt(achieved)}FLOP/s")
        px, py = x(ai), y(min(max(achieved, 10 ** y.lo), 10 ** y.hi))
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{c}" stroke="#000"/>'
                   f'<text x="{px + 8:.1f}" y="{py + 4:.1f}" class="t">{_e(model)}</text>')
    out.append("</svg>")
    note = ("Lines: attainable FLOP/s = min(peak GEMM FLOP/s, intensity × measured bandwidth) from "
            "the latest bench. Points: achieved FLOP/s = 2 × active params × tokens/s over the "
            "model's serving time, at the model's decode intensity (bench batch and context).")
    if outside:
        note += (f" Outside the plot, drawn at its top edge: {'; '.join(outside)}, above three times the "
                 "device's measured peak, which no device attains: check the model's profile (active "
                 "params) and the server's token counts.")
    return "".join(out) + f'<div class="legend">{_legend(devices)}</div><p class="note">{_e(note)}</p>'


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 6px}
.meta{color:#555;margin-bottom:12px} .note{color:#555;font-size:12px;max-width:900px}
table{border-collapse:collapse;font-size:12px} th,td{padding:3px 8px;border-bottom:1px solid #ddd}
th{background:#f0f0f0;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:bold;border-top:2px solid #999}
.grid{display:flex;flex-wrap:wrap;gap:16px} .chart{border:1px solid #ddd;padding:8px}
svg .t{font-size:10px;fill:#444} svg .l{font-size:12px;fill:#222}
.legend{font-size:12px} .key{margin-right:12px} .key i{display:inline-block;width:10px;height:10px;margin-right:4px}
.kpi{display:inline-block;margin-right:28px} .kpi b{display:block;font-size:20px}
form.filters{margin:8px 0 12px;display:flex;flex-wrap:wrap;gap:8px;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#555}
form.filters input{font:inherit;padding:2px 4px;width:11em} .error{color:#b00020;font-weight:bold}
"""

_COLS = (("prompt_tokens", "prompt", "{:,}"), ("completion_tokens", "completion", "{:,}"),
         ("energy_kwh", "kWh", "{:,.3f}"), ("cost_micro", "cost", "money"),
         ("cost_per_mtok", "/Mtok", "{:,.4f}"), ("cost_per_mtok_prompt", "prompt /Mtok", "{:,.4f}"),
         ("cost_per_mtok_completion", "compl. /Mtok", "{:,.4f}"), ("j_per_token", "J/tok", "{:,.3f}"),
         ("util_pct", "util %", "{:,.1f}"), ("idle_cost_share", "idle %", "pct"),
         ("capacity_cost_per_mtok", "cap /Mtok", "{:,.4f}"), ("realized_over_capacity", "real÷cap", "{:,.2f}"))


def _cell(v: Any, fmt: str) -> str:
    if v is None:
        return "—"
    if fmt == "money":
        return _money(v)
    if fmt == "pct":
        return f"{100 * v:.1f}"
    return fmt.format(v)


def _table(report: Report) -> str:
    head = "".join(f"<th>{_e(k)}</th>" for k in report.by) + "".join(f"<th>{_e(h)}</th>" for _, h, _ in _COLS)
    body = []
    for r in report.rows:
        body.append("<tr>" + "".join(f"<td>{_e(r[k] if r[k] != '' else '(none)')}</td>" for k in report.by)
                    + "".join(f'<td class="n">{_e(_cell(r[k], f))}</td>' for k, _, f in _COLS) + "</tr>")
    t = report.totals
    body.append('<tr class="total"><td>total</td>' + "<td></td>" * (len(report.by) - 1)
                + "".join(f'<td class="n">{_e(_cell(t[k], f))}</td>' for k, _, f in _COLS) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _period_of(r: Report) -> str:
    return next((k for k in r.by if k in ("hour", "day", "week")), "hour")


def render_html(report: Report, trend: Report, scatter: Report, points: Report,
                capacity: Sequence[dict[str, Any]], *, title: str = "meter report",
                since: str | None = None, until: str | None = None, source: str | None = None,
                controls: str = "") -> str:
    """The page: key figures, the charts and the report's table. ``controls``: HTML placed
    under the heading as given (the collector's filter form), escaped by its caller."""
    t = report.totals
    cur = report.currency or ""
    kpis = [("cost", _cell(t["cost_micro"], "money") + f" {cur}"),
            ("tokens", f"{t['tokens']:,}"),
            ("cost per Mtok", _cell(t["cost_per_mtok"], "{:,.4f}") + f" {cur}"),
            ("energy", _cell(t["energy_kwh"], "{:,.2f}") + " kWh"),
            ("J per token", _cell(t["j_per_token"], "{:,.3f}")),
            ("idle share of cost", _cell(t["idle_cost_share"], "pct") + " %")]
    meta = (f"{_e(since or 'the first window')} → {_e(until or 'now')} · source: {_e(source or 'local store')}"
            f" · grouped by {_e(', '.join(report.by))}")
    charts = [("Cost per Mtok over time", cost_chart(trend)),
              (f"Tokens/s against power (device-{_period_of(scatter)}s)", power_chart(scatter)),
              ("Roofline and live operating points", roofline_chart(capacity, points))]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>{controls}<div class=\"meta\">{meta}</div>"
        + "".join(f'<div class="kpi">{_e(k)}<b>{_e(v)}</b></div>' for k, v in kpis)
        + '<div class="grid">'
        + "".join(f'<div class="chart"><h2>{_e(h)}</h2>{svg}</div>' for h, svg in charts)
        + "</div><h2>Report</h2>" + _table(report)
        + f'<p class="note">Money in {_e(cur)}. {_e(EFFICIENCY_NOTE)}. Ratios are ratios of sums; '
          "the totals are the sums of the rows.</p></body></html>\n"
    )
