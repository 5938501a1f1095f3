"""The HTML report's page over a reader: the report itself and the charts' own groupings, read
through the same function. ``meter report --format html`` and the collector's ``GET /report``
(collector/web.py) both build their page here, so the two show the same figures."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from meterd.reports.aggregate import Cells, Report, aggregate
from meterd.reports.query import Filters

Reader = Callable[[Sequence[str], Filters], Cells]


def report_of(read: Reader, by: Sequence[str], f: Filters) -> tuple[Report, Cells]:
    cells = read(by, f)
    return aggregate(cells, by, model=f.model, tenant=f.tenant), cells


def html_views(f: Filters, keys: Sequence[str]) -> dict[str, list[str]]:
    """The charts' own groupings: cost per Mtok over time (hourly for a range under three days,
    else daily), device-hours for tokens/s against power (by node too: two nodes' GPU-0 are two
    devices), device and model for the roofline."""
    span = (f.until or time.time()) - f.since if f.since is not None else None
    period = "hour" if span is not None and span <= 3 * 86400 else "day"
    return {"trend": [period], "scatter": ["node", "device", "hour"], "points": ["device", "model"]}


#: Longest range whose tokens/s-against-power chart has a point per device-hour; beyond it, one
#: per device-day (3 years x 8 GPUs by hour is 210,000 rows for a chart that shows 3,000).
SCATTER_HOURS_UP_TO_S = 14 * 86400


def scatter_by(f: Filters, trend: Report) -> list[str]:
    """The chart's grouping for the range the trend (by hour or day) covers."""
    from meterd.units import parse_iso

    key = trend.by[0]
    stamps = [parse_iso(r[key]) for r in trend.rows[:1] + trend.rows[-1:]]
    lo = f.since if f.since is not None else (min(stamps) if stamps else 0.0)
    hi = f.until if f.until is not None else (max(stamps) + 86400 if stamps else 0.0)
    return ["node", "device", "hour" if hi - lo <= SCATTER_HOURS_UP_TO_S else "day"]


def html_page(read: Reader, keys: Sequence[str], f: Filters, rep: Report, cells: Cells, *,
              title: str = "meter report", controls: str = "", since: str | None = None,
              until: str | None = None, source: str | None = None) -> str:
    """The page of ``rep`` (the report by ``keys``, read from ``cells``) with its charts."""
    from meterd.reports.html import render_html

    views = html_views(f, keys)
    extra = {"trend": report_of(read, views["trend"], f)[0]}
    views["scatter"] = scatter_by(f, extra["trend"])
    extra.update({k: report_of(read, views[k], f)[0] for k in ("scatter", "points")})
    return render_html(rep, extra["trend"], extra["scatter"], extra["points"], cells.capacity,
                       title=title, since=since, until=until, source=source, controls=controls)
