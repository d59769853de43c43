"""The count chart above the table (`aygolog.ui.histogram`): the count it asks for, and how it
draws the answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aygolog.models import CountResult, CountSeries, LogLevel
from aygolog.query import parse
from aygolog.ui.histogram import HISTOGRAM_BARS, histogram_options, histogram_request
from aygolog.ui.state import Filters

NOW = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("filters", "query", "since"),
    [
        (Filters(), "| count() by (level) step 1m", NOW - timedelta(hours=1)),
        (Filters(text="timeout", range="24h"), "timeout | count() by (level) step 30m",
         NOW - timedelta(hours=24)),
        (Filters(text="x", range="5m"), "x | count() by (level) step 5s",
         NOW - timedelta(minutes=5)),
        (Filters(range="custom", since="2026-01-01T00:00:00Z", until="2026-12-01T00:00:00Z"),
         "| count() by (level) step 7d", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_the_count_follows_the_search_and_the_range(
    filters: Filters, query: str, since: datetime
) -> None:
    request = histogram_request(filters, now=NOW)
    assert request is not None
    text, kwargs = request
    assert text == query
    assert kwargs["since"] == since
    parsed = parse(text)
    assert parsed.count is not None
    assert parsed.count.step is not None
    end = kwargs.get("until", NOW)
    assert (end - since) / parsed.count.step <= HISTOGRAM_BARS


def test_the_level_and_service_filters_go_along() -> None:
    filters = Filters(levels=frozenset({LogLevel.ERROR}), service="shop")
    request = histogram_request(filters, now=NOW)
    assert request is not None
    assert request[1]["level"] == [LogLevel.ERROR]
    assert request[1]["service"] == ["shop"]


@pytest.mark.parametrize("text", ["x | limit 5", "x | count()", "x ("])
def test_no_chart_for_a_query_with_a_pipe_or_that_does_not_parse(text: str) -> None:
    assert histogram_request(Filters(text=text), now=NOW) is None


def test_bars_stack_by_level_lowest_first() -> None:
    at = [NOW, NOW + timedelta(minutes=1)]
    result = CountResult(
        buckets=at,
        step_seconds=60,
        series=[
            CountSeries(labels={"level": "error"}, counts=[1, 0]),
            CountSeries(labels={"level": "info"}, counts=[3, 4]),
        ],
    )
    options = histogram_options(result)
    assert [s["name"] for s in options["series"]] == ["info", "error"]
    assert options["series"][0]["data"] == [
        ["2026-12-06T20:00:00Z", 3],
        ["2026-12-06T20:01:00Z", 4],
    ]
    assert {s["stack"] for s in options["series"]} == {"levels"}
    assert histogram_options(CountResult(buckets=[], series=[]))["series"] == []
