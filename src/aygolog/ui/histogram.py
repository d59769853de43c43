"""The chart above the table: how many entries match the filters, per level, over the time range
(`GET /api/logs/count` with `| count() by (level) step ...`). Pure logic, tested without NiceGUI.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aygolog.models import CountResult
from aygolog.query import QuerySyntaxError, parse
from aygolog.ui.state import Filters

__all__ = ["HISTOGRAM_BARS", "HISTOGRAM_COLORS", "histogram_options", "histogram_request"]

HISTOGRAM_BARS: Final = 60
"""At most this many bars: the step is the smallest of `_STEPS` that gives no more."""
_STEPS: Final = (
    ("1s", 1), ("5s", 5), ("10s", 10), ("30s", 30), ("1m", 60), ("5m", 300), ("10m", 600),
    ("30m", 1800), ("1h", 3600), ("3h", 10800), ("6h", 21600), ("12h", 43200), ("1d", 86400),
    ("7d", 604800), ("30d", 2592000), ("365d", 31536000),
)  # fmt: skip
_DEFAULT_SPAN: Final = timedelta(hours=1)
HISTOGRAM_COLORS: Final = {
    "trace": "#9e9e9e",
    "debug": "#78909c",
    "info": "#1976d2",
    "warning": "#ef6c00",
    "error": "#c10015",
    "critical": "#6a1b9a",
}
"""The levels' colours (as the table's chips), lowest first: the bars stack in this order."""


def histogram_request(
    filters: Filters, *, now: datetime | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The count query and keyword filters (for `AsyncLogClient.count`) of the chart, or None
    when there is none to draw: the search box does not parse, or already ends in a pipe.

    The range is the table's (without one, the last hour, as the API's default), cut into at
    most `HISTOGRAM_BARS` buckets of a round step.
    """
    text = filters.query or ""
    try:
        parsed = parse(text) if text else None
    except (QuerySyntaxError, OverflowError):
        return None
    if parsed is not None and (parsed.limit is not None or parsed.count is not None):
        return None
    now = now or datetime.now(UTC)
    kwargs = filters.query_filters(now=now)
    end = kwargs.get("until") or now
    start = kwargs.get("since") or end - _DEFAULT_SPAN
    span = max((end - start).total_seconds(), 1.0)
    step = next((name for name, seconds in _STEPS if span / seconds <= HISTOGRAM_BARS), "365d")
    kwargs["since"] = start
    return f"{text} | count() by (level) step {step}".strip(), kwargs


def histogram_options(result: CountResult) -> dict[str, Any]:
    """ECharts options: a bar per bucket, stacked by level (lowest level at the bottom)."""
    times = [at.astimezone(UTC).isoformat().replace("+00:00", "Z") for at in result.buckets]
    counts = {s.labels.get("level", ""): s.counts for s in result.series}
    series = [
        {
            "name": level,
            "type": "bar",
            "stack": "levels",
            "color": color,
            "data": [[at, n] for at, n in zip(times, counts[level], strict=True)],
        }
        for level, color in HISTOGRAM_COLORS.items()
        if level in counts
    ]
    return {
        "grid": {"left": 40, "right": 10, "top": 10, "bottom": 25},
        "tooltip": {"trigger": "axis"},
        "xAxis": {"type": "time", "axisLabel": {"hideOverlap": True}},
        "yAxis": {"type": "value", "minInterval": 1},
        "series": series,
    }
