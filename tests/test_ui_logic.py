"""The web page's pure logic (`aygolog.ui.state`): URL state, attributes, rows, buffers, series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from aygolog.errors import Unavailable, ValidationError
from aygolog.models import FieldError, InstanceView, LogEntry, LogLevel
from aygolog.query import regex
from aygolog.querystring import parse_query_params
from aygolog.ui import state as ui_state
from aygolog.ui.state import (
    Filters,
    IngestSeries,
    RowBuffer,
    describe_error,
    format_age,
    format_row,
    newer_than,
    parse_attributes,
    service_rows,
    to_log_query,
    truncate,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def entry(
    n: int,
    message: str = "hello",
    *,
    level: LogLevel = LogLevel.INFO,
    service: str | None = "shop",
    at: datetime = NOW,
) -> LogEntry:
    return LogEntry(
        id=f"{1_700_000_000_000 + n}-0",
        message=message,
        level=level,
        timestamp=at,
        received_at=at,
        instance="api-1",
        service=service,
        attributes={"order": n},
    )


def numbers(buffer: RowBuffer) -> list[int]:
    return [int(row["id"].split("-")[0]) - 1_700_000_000_000 for row in buffer.rows]


def relabel(buffer: RowBuffer) -> RowBuffer:
    return buffer


def params_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


# -- URL state ---------------------------------------------------------------------------------


def test_filters_round_trip_through_the_url() -> None:
    filters = Filters(
        levels=frozenset({LogLevel.ERROR, LogLevel.WARNING}),
        service="api, auth",
        text="time out",
        range="15m",
    )
    url = filters.to_url()
    assert url.startswith("/?")
    assert params_of(url) == {
        "level": ["warning,error"],
        "service": ["api,auth"],
        "query": ["time out"],
        "since": ["15m"],
    }
    assert Filters.from_params(params_of(url)) == Filters(
        levels=filters.levels, service="api,auth", text="time out", range="15m"
    )


def test_an_older_links_q_is_a_substring_query() -> None:
    assert Filters.from_params({"q": "time out"}).text == '~"time out"'
    assert Filters.from_params({"q": "old", "query": "new"}).text == "new"
    for q, yes, no in [
        ('say "hi"', 'they SAY "HI" there', "say hi"),
        ("a.b (c)* \\d", "xA.B (C)* \\Dy", "aXb (c)* \\d"),
    ]:
        old = Filters.from_params({"q": q})
        assert old.problem() is None, old.text
        assert old.matches(entry(1, yes), now=NOW), old.text
        assert not old.matches(entry(1, no), now=NOW), old.text


def test_a_regex_this_process_cannot_run_is_left_to_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(regex, "_RE2", None)  # as with the `ui` extra alone
    ui_state._plan.cache_clear()
    try:
        filters = Filters(text='~"time.*out" | limit 5', levels=frozenset({LogLevel.ERROR}))
        assert filters.problem() is None
        assert not filters.live_applies
        assert filters.matches(entry(1, "anything", level=LogLevel.ERROR), now=NOW)
        assert not filters.matches(entry(1, "anything"), now=NOW)  # the level still applies
        assert (Filters(text='~"(a" (').problem() or "").startswith("query: at")
    finally:
        ui_state._plan.cache_clear()


def test_empty_filters_make_a_bare_url() -> None:
    assert Filters().to_url() == "/"
    assert Filters.from_params({}) == Filters()


def test_custom_range_keeps_since_and_until() -> None:
    filters = Filters.from_params(
        {"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"}
    )
    assert filters.range == "custom"
    assert filters.to_params() == [
        ("since", "2026-01-01T00:00:00Z"),
        ("until", "2026-01-02T00:00:00Z"),
    ]
    since, until = filters.bounds(now=NOW)
    assert since == datetime(2026, 1, 1, tzinfo=UTC)
    assert until == datetime(2026, 1, 2, tzinfo=UTC)
    assert not filters.live_applies


def test_relative_since_outside_the_presets_is_custom() -> None:
    filters = Filters.from_params({"since": "2h"})
    assert filters.range == "custom"
    assert filters.bounds(now=NOW)[0] == NOW - timedelta(hours=2)


def test_bad_parameters_are_left_out() -> None:
    filters = Filters.from_params({"level": ["error,nonsense"], "since": "yesterday-ish"})
    assert filters == Filters(levels=frozenset({LogLevel.ERROR}))


def test_url_params_mean_the_same_to_the_log_api() -> None:
    filters = Filters(levels=frozenset({LogLevel.ERROR}), service="api", text="x", range="1h")
    api = parse_query_params(
        level=["error"], service=["api"], query="x", since="1h", limit=50
    )  # what GET /api/logs?<the page's params> runs
    mine = to_log_query(filters, limit=50, now=NOW)
    assert (mine.levels, mine.services, mine.query) == (api.levels, api.services, api.query)
    assert mine.since == NOW - timedelta(hours=1)


def test_query_and_tail_filters() -> None:
    filters = Filters(levels=frozenset({LogLevel.ERROR}), service="a,b", text="boom", range="5m")
    assert filters.tail_filters() == {"level": [LogLevel.ERROR], "service": ["a", "b"]}
    assert filters.query == "boom"
    assert Filters(text="  ").query is None
    query = filters.query_filters(now=NOW)
    assert query["since"] == NOW - timedelta(minutes=5)
    assert "until" not in query


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(), True),
        (Filters(levels=frozenset({LogLevel.ERROR})), False),
        (Filters(service="shop"), True),
        (Filters(service="auth,api"), False),
        (Filters(text="HELLO"), True),
        (Filters(text="HELL"), False),  # a word is a whole word
        (Filters(text='~"ELL"'), True),
        (Filters(text="bye"), False),
        (Filters(text="hello -order:1"), False),
        (Filters(text="level>=info service:(shop OR x)"), True),
        (Filters(text="hello (", range="5m"), False),  # does not parse: nothing matches
        (Filters(range="5m"), True),
        (Filters(range="custom", until="2026-01-01T00:00:00Z"), False),
    ],
)
def test_matches(filters: Filters, expected: bool) -> None:
    assert filters.matches(entry(1), now=NOW + timedelta(seconds=1)) is expected


def test_problem_names_a_query_that_does_not_parse_or_counts() -> None:
    assert (Filters(text="service:(a OR").problem() or "").startswith("query: at 13: expected")
    assert "count" in (Filters(text="x | count()").problem() or "")
    assert Filters(text="level>=warning timeout").problem() is None


def test_a_query_a_live_tail_refuses_turns_live_off() -> None:
    assert Filters(text="timeout").live_applies
    assert not Filters(text="timeout _time:5m").live_applies
    assert not Filters(text="timeout | limit 5").live_applies
    assert not Filters(text="(").live_applies


def test_problem_names_a_custom_time_that_is_not_one() -> None:
    assert Filters(range="custom", since="2h").problem() is None
    assert "since" in (Filters(range="custom", since="last tuesday").problem() or "")
    assert "until" in (Filters(range="custom", until="soon").problem() or "")
    assert Filters(range="15m").problem() is None


# -- attributes -------------------------------------------------------------------------------


def test_parse_attributes_types_and_quotes() -> None:
    assert parse_attributes('order=42 amount=9.5, paid=true region="eu west" id=007x') == {
        "order": 42,
        "amount": 9.5,
        "paid": True,
        "region": "eu west",
        "id": "007x",
    }
    assert parse_attributes("") == {}
    assert parse_attributes("note=") == {"note": ""}


@pytest.mark.parametrize("text", ["novalue", "=x", "1bad=x", 'a="open'])
def test_parse_attributes_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="attributes"):
        parse_attributes(text)


# -- rows and buffer ----------------------------------------------------------------------------


def test_format_row_is_text_and_truncates() -> None:
    long = "<script>window.__xss=1</script> " + "x" * 300
    row = format_row(entry(1, long, level=LogLevel.ERROR))
    assert row["time"] == "03:04:05.678"
    assert row["timestamp"] == "2026-01-02T03:04:05.678Z"
    assert row["level"] == "error"
    assert row["color"] == "negative"
    assert row["message"].startswith("<script>")  # as it is: the table renders it as text
    assert len(row["message"]) == 120
    assert row["message"].endswith("…")
    assert row["truncated"] is True
    assert row["full_message"] == ""  # sent only when the row is expanded
    assert row["attributes"] == ["order=1"]
    short = format_row(entry(2, "short"))
    assert (short["message"], short["truncated"]) == ("short", False)


def test_row_buffer_expands_truncated_rows_only() -> None:
    buffer = RowBuffer()
    long = "line one\nline two " + "y" * 200
    buffer.add_newer([entry(1, long), entry(2, "short")])
    long_id, short_id = buffer.rows[1]["id"], buffer.rows[0]["id"]
    assert buffer.expand(long_id) is True
    assert buffer.rows[1]["full_message"] == long
    assert buffer.expand(long_id) is False  # already whole
    assert buffer.expand(short_id) is False
    assert buffer.expand("1-0") is False


def test_truncate_flattens_lines() -> None:
    assert truncate("a\nb\tc", 10) == "a b c"


def test_row_buffer_newest_first_dedup_and_cap() -> None:
    buffer = RowBuffer(cap=5)
    buffer.replace_all([entry(3), entry(2)], next_cursor="1700000000002-0")
    assert buffer.add_newer([entry(3), entry(4), entry(5)]) == 2
    assert numbers(buffer) == [5, 4, 3, 2]
    buffer.add_newer([entry(6), entry(7)])
    assert len(buffer) == 5
    # the oldest row went: "load older" continues from the oldest kept one
    assert buffer.cursor == buffer.rows[-1]["id"] == "1700000000003-0"


def test_row_buffer_append_older() -> None:
    buffer = RowBuffer(cap=10)
    buffer.replace_all([entry(9), entry(8)], next_cursor="1700000000008-0")
    assert buffer.append_older([entry(8), entry(7)], None) == 1
    assert buffer.cursor is None
    assert numbers(buffer) == [9, 8, 7]


def test_row_buffer_sorts_out_of_order_arrivals() -> None:
    buffer = RowBuffer()
    buffer.add_newer([entry(5)])
    buffer.add_newer([entry(3)])
    assert numbers(buffer) == [5, 3]
    buffer.add_newer([entry(4), entry(6)])
    assert numbers(buffer) == [6, 5, 4, 3]


def test_row_buffer_load_older_is_not_undone_by_the_cap() -> None:
    buffer = RowBuffer(cap=500)
    top = 1000
    buffer.replace_all(
        [entry(n) for n in range(top, top - 100, -1)], f"{1_700_000_000_000 + top - 99}-0"
    )
    for page in range(1, 8):
        newest = top - 100 * page
        older = [entry(n) for n in range(newest, newest - 100, -1)]
        cursor = None if page == 7 else older[-1].id
        assert buffer.append_older(older, cursor) == 100
        assert len(buffer) == 100 * (page + 1)
        assert buffer.cursor == cursor
        if cursor is not None:
            assert buffer.cursor == buffer.rows[-1]["id"]  # "load older" goes on from there
    assert numbers(buffer) == list(range(top, top - 800, -1))
    assert buffer.cursor is None  # nothing older matches
    buffer = relabel(buffer)  # (for mypy, which takes the cursor for None from here on)
    # a new row still comes in at the top; the oldest goes, and can be loaded again
    assert buffer.add_newer([entry(top + 1)]) == 1
    assert len(buffer) == 800
    assert numbers(buffer)[0] == top + 1
    assert buffer.cursor == buffer.rows[-1]["id"] == entry(top - 798).id
    # starting over goes back to the cap
    buffer.replace_all([entry(n) for n in range(2000, 1400, -1)], None)
    assert len(buffer) == 500
    assert buffer.cursor == buffer.rows[-1]["id"]


def test_newer_than_keeps_later_ids_once() -> None:
    entries = [entry(5), entry(3), entry(7), entry(5), entry(6)]
    assert [e.id for e in newer_than(entries, entry(5).id)] == [entry(7).id, entry(6).id]
    assert [e.id for e in newer_than(entries, None)] == [entry(n).id for n in (5, 3, 7, 6)]
    assert newer_than([], entry(1).id) == []


def test_a_time_out_of_range_is_invalid_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    huge = Filters.from_params({"since": "999999999999d"})
    assert (huge.range, huge.since, huge.until) == ("", "", "")
    assert huge.to_url() == "/"

    def overflow(value: str, *, now: datetime | None = None) -> datetime:
        raise OverflowError("date value out of range")

    # whatever `parse_time` lets through, the page's state treats it as "not a time"
    monkeypatch.setattr(ui_state, "parse_time", overflow)
    assert Filters.from_params({"since": "2h", "until": "1h"}) == Filters()
    problem = Filters(range="custom", since="999999999999d").problem() or ""
    assert "is not a time" in problem


def test_describe_error_names_the_fields() -> None:
    exc = ValidationError(
        [FieldError(field="message", reason="must not be empty")], "HTTP 422: invalid input"
    )
    assert describe_error(exc) == "HTTP 422: invalid input (message: must not be empty)"
    assert describe_error(Unavailable("no healthy instance")) == "no healthy instance"


# -- services and stats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.84, "0.8 s"), (42.2, "42 s"), (185, "3 m 5 s"), (7500, "2 h 5 m")],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_service_rows() -> None:
    views = [
        InstanceView(name="b", url="http://b", status="ejected", heartbeat_age=1.5, served=3),
        InstanceView(name="a", url="http://a", last_heartbeat=NOW - timedelta(seconds=20)),
    ]
    rows = service_rows(views, now=NOW)
    assert [(r["name"], r["status"], r["color"], r["heartbeat"]) for r in rows] == [
        ("a", "healthy", "positive", "20 s"),
        ("b", "ejected", "negative", "1.5 s"),
    ]
    assert rows[0]["served"] == 0
    assert rows[1]["served"] == 3


def test_ingest_series_rates_and_window() -> None:
    series = IngestSeries(window=10)
    assert series.add(100.0, 50) is None
    assert series.add(102.0, 60) == 5.0
    assert series.add(104.0, 60) == 0.0
    series.add(120.0, 70)
    assert series.chart_data() == [[120_000, 0.62]]
    series.reset()
    assert series.add(200.0, 10) is None  # no delta across an outage
    assert series.chart_data() == []  # 120 fell out of the window


def test_ingest_series_starts_from_the_servers_rate() -> None:
    series = IngestSeries()
    assert series.add(100.0, 50, first_rate=1.5) is None
    assert series.add(102.0, 54, first_rate=9.0) == 2.0
    assert series.chart_data() == [[100_000, 1.5], [102_000, 2.0]]


def test_a_number_too_large_in_the_query_is_a_problem_not_an_exception() -> None:
    filters = Filters(text="_time:999999999999d")
    assert (filters.problem() or "").startswith("query: at 6: expected a duration")
    assert not filters.live_applies
    assert not filters.matches(entry(1), now=NOW)
