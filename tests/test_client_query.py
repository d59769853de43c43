"""The SDK's query-language calls at the HTTP boundary (respx): `query`, `count` and `tail` with a
query string, the request each builds, and the errors each raises."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from aygolog.client import AsyncLogClient, LogClient, RetryPolicy
from aygolog.errors import MalformedInput, Unavailable
from aygolog.models import CountResult, CountSeries
from aygolog.query import QuerySyntaxError

URL = "http://lb.test"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def entry(i: int) -> dict[str, Any]:
    return {
        "id": f"{i}-0",
        "message": f"m{i}",
        "level": "warning",
        "timestamp": NOW.isoformat(),
        "received_at": NOW.isoformat(),
        "instance": "api-1",
    }


COUNTS = {
    "buckets": ["2026-01-02T03:04:00Z", "2026-01-02T03:05:00Z"],
    "step_seconds": 60.0,
    "series": [
        {"labels": {"level": "error"}, "counts": [1, 0]},
        {"labels": {"level": "warning"}, "counts": [2, 5]},
    ],
}


def syntax_error(position: int, expected: str, found: str) -> httpx.Response:
    reason = f"at {position}: expected {expected}, found {found}"
    body = {"error": "the query does not parse", "detail": [{"field": "query", "reason": reason}]}
    return httpx.Response(400, json=body)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
def client() -> Iterator[LogClient]:
    policy = RetryPolicy(retries=3, backoff_base=0.01, backoff_max=0.01)
    with LogClient(URL, retries=policy, sleep=lambda s: None, rng=random.Random(1)) as c:
        yield c


def test_a_query_string_is_sent_as_query_beside_the_other_parameters(
    mock: respx.MockRouter, client: LogClient
) -> None:
    route = mock.get("/api/logs").mock(
        return_value=httpx.Response(200, json={"items": [entry(2)], "next_cursor": "2-0"})
    )
    page = client.query("level>=warning service:shop timeout", limit=20, cursor="9-0")
    assert [e.id for e in page.items] == ["2-0"]
    assert page.next_cursor == "2-0"
    params = route.calls[0].request.url.params
    assert params["query"] == "level>=warning service:shop timeout"
    assert (params["limit"], params["cursor"]) == ("20", "9-0")
    client.query("timeout", service="shop", since=NOW)  # keywords AND with the string
    params = route.calls[1].request.url.params
    assert (params["query"], params["service"], params["since"]) == (
        "timeout", "shop", NOW.isoformat()
    )  # fmt: skip
    client.query("   ")  # a blank query is no query, not an empty string the server must parse
    assert "query" not in route.calls[2].request.url.params
    client.query(query="level:error", limit=5)  # as a keyword too
    assert route.calls[3].request.url.params["query"] == "level:error"
    client.query("ignored", query="wins")  # keywords win, as for every filter
    assert route.calls[4].request.url.params["query"] == "wins"


def test_iter_logs_keeps_the_query_string_on_every_page(
    mock: respx.MockRouter, client: LogClient
) -> None:
    pages = {None: {"items": [entry(3)], "next_cursor": "3-0"}, "3-0": {"items": [entry(1)]}}
    route = mock.get("/api/logs").mock(
        side_effect=lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")])
    )
    assert [e.id for e in client.iter_logs("error -debug", limit=1)] == ["3-0", "1-0"]
    assert [c.request.url.params["query"] for c in route.calls] == ["error -debug"] * 2


def test_count_asks_the_count_endpoint_and_decodes_the_buckets(
    mock: respx.MockRouter, client: LogClient
) -> None:
    route = mock.get("/api/logs/count").mock(return_value=httpx.Response(200, json=COUNTS))
    result = client.count("service:shop | count() by (level) step 1m", since="2h", level="error")
    assert isinstance(result, CountResult)
    assert result.buckets == [NOW.replace(second=0), NOW.replace(minute=5, second=0)]
    assert result.step_seconds == 60.0
    assert result.series[1] == CountSeries(labels={"level": "warning"}, counts=[2, 5])
    assert result.complete
    params = route.calls[0].request.url.params
    assert params["query"] == "service:shop | count() by (level) step 1m"
    assert params["level"] == "error"
    assert abs((datetime.fromisoformat(params["since"]) - datetime.now(UTC)).total_seconds()
               + 7200) < 60  # fmt: skip
    assert not {"limit", "cursor", "direction"} & set(params)  # a count has no pages


def test_a_syntax_error_is_a_query_syntax_error_with_its_position_and_not_retried(
    mock: respx.MockRouter, client: LogClient
) -> None:
    route = mock.get("/api/logs").mock(return_value=syntax_error(12, "')'", "end of query"))
    with pytest.raises(QuerySyntaxError) as caught:
        client.query("service:(a OR")
    assert (caught.value.position, caught.value.expected, caught.value.found) == (
        12, "')'", "end of query"
    )  # fmt: skip
    assert caught.value.errors[0].field == "query"
    assert route.call_count == 1
    # Another 400 about the query (not a syntax error) stays a plain MalformedInput.
    body = {"error": "x", "detail": [{"field": "query", "reason": "a count: use count()"}]}
    route.mock(return_value=httpx.Response(400, json=body))
    with pytest.raises(MalformedInput) as other:
        client.query("x | count()")
    assert not isinstance(other.value, QuerySyntaxError)
    assert other.value.errors[0].reason == "a count: use count()"


def test_count_is_retried_when_redis_is_down_then_gives_up(
    mock: respx.MockRouter, client: LogClient
) -> None:
    down = httpx.Response(503, json={"error": "redis down"}, headers={"Retry-After": "1"})
    route = mock.get("/api/logs/count").mock(side_effect=[down, httpx.Response(200, json=COUNTS)])
    assert client.count("x").series[0].counts == [1, 0]
    assert route.call_count == 2
    route.mock(return_value=down)
    with pytest.raises(Unavailable):
        client.count("x")


def test_tail_sends_the_query_string(mock: respx.MockRouter, client: LogClient) -> None:
    frame = b'id: 1-0\r\ndata: {"id":"1-0","message":"m","level":"error","timestamp":' + (
        b'"2026-01-02T03:04:05Z","received_at":"2026-01-02T03:04:05Z","instance":"a"}\r\n\r\n'
    )
    route = mock.get("/api/logs/stream").mock(
        return_value=httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=frame
        )
    )
    with client.tail("level:error timeout", service="shop") as tail:
        assert next(iter(tail)).id == "1-0"
    params = route.calls[0].request.url.params
    assert (params["query"], params["service"]) == ("level:error timeout", "shop")
    with client.tail(query="level:error", last_event_id="0-1") as tail:
        assert next(iter(tail)).id == "1-0"
    assert route.calls[1].request.url.params["query"] == "level:error"


async def test_the_async_client_queries_and_counts_alike() -> None:
    with respx.mock(base_url=URL, assert_all_called=False) as mock:
        logs = mock.get("/api/logs").mock(
            return_value=httpx.Response(200, json={"items": [entry(1)]})
        )
        counts = mock.get("/api/logs/count").mock(return_value=httpx.Response(200, json=COUNTS))
        async with AsyncLogClient(URL) as client:
            assert [e.id for e in (await client.query("timeout", limit=5)).items] == ["1-0"]
            result = await client.count(query="| count() by (level) step 1m")
            assert [s.labels["level"] for s in result.series] == ["error", "warning"]
            assert [e.id async for e in client.iter_logs("timeout")] == ["1-0"]
        assert logs.calls[0].request.url.params["query"] == "timeout"
        assert logs.calls[0].request.url.params["limit"] == "5"
        assert counts.calls[0].request.url.params["query"] == "| count() by (level) step 1m"
        mock.get("/api/logs/count").mock(return_value=syntax_error(0, "a filter", "'|'"))
        async with AsyncLogClient(URL) as client:
            with pytest.raises(QuerySyntaxError):
                await client.count("|")
