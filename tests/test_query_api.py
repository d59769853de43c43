"""The query language at the Log API (served in-process over the in-memory store): `GET
/api/logs?query=`, `GET /api/logs/count`, the live tail's `query=`, and every refusal a 4xx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from aygolog.settings import LogApiSettings
from test_log_api_inprocess import serve

LOGS = [
    {"message": "disk full on node-1", "level": "error", "service": "storage",
     "attributes": {"status": 500}},
    {"message": "user logged in", "level": "info", "service": "auth",
     "attributes": {"user": "ana"}},
    {"message": "slow query took 1500ms", "level": "warning", "service": "db"},
    {"message": "payment failed: timeout", "level": "critical", "service": "billing",
     "attributes": {"status": 504}},
    {"message": "checkout timeout", "level": "warning", "service": "shop"},
]  # fmt: skip


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    async for url in serve(LogApiSettings(instance_name="q-1")):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.post("/api/logs", json=LOGS)).status_code == 201
            yield client


async def messages(api: httpx.AsyncClient, **params: str) -> list[str]:
    response = await api.get("/api/logs", params=params)
    assert response.status_code == 200, response.text
    return [e["message"] for e in response.json()["items"]]


async def test_the_query_parameter_filters_and_ands_with_the_old_ones(
    api: httpx.AsyncClient,
) -> None:
    assert await messages(api, query="timeout") == ["checkout timeout", "payment failed: timeout"]
    assert await messages(api, query="level>=warning -timeout") == [
        "slow query took 1500ms", "disk full on node-1"
    ]  # fmt: skip
    assert await messages(api, query="status:>=500") == [
        "payment failed: timeout", "disk full on node-1"
    ]  # fmt: skip
    assert await messages(api, query="timeout", service="shop") == ["checkout timeout"]
    assert await messages(api, query="timeout", min_level="error") == ["payment failed: timeout"]
    assert await messages(api, query="service:(auth OR db)", q="LOGGED") == ["user logged in"]


async def test_limit_pipe_caps_the_page_and_ends_it(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/logs", params={"query": "* | limit 2", "limit": "100"})
    assert response.status_code == 200, response.text
    page = response.json()
    assert [e["message"] for e in page["items"]] == ["checkout timeout", "payment failed: timeout"]
    assert page["next_cursor"] is None
    smaller = await api.get("/api/logs", params={"query": "* | limit 4", "limit": "1"})
    assert len(smaller.json()["items"]) == 1


async def test_a_syntax_error_is_a_400_naming_query_with_the_position(
    api: httpx.AsyncClient,
) -> None:
    for path in ("/api/logs", "/api/logs/count", "/api/logs/stream"):
        response = await api.get(path, params={"query": "service:(a OR"})
        assert response.status_code == 400, (path, response.text)
        body = response.json()
        (detail,) = body["detail"]
        assert detail["field"] == "query"
        assert detail["reason"].startswith("at 13: expected "), detail


async def test_a_count_query_at_the_search_endpoint_is_a_400_pointing_to_count(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/api/logs", params={"query": "error | count() by (level)"})
    assert response.status_code == 400
    (detail,) = response.json()["detail"]
    assert detail["field"] == "query"
    assert "/api/logs/count" in detail["reason"]


async def test_counts_by_level_with_and_without_step(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/logs/count", params={"query": "| count() by (level)"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["step_seconds"] is None
    assert body["complete"] is True
    assert {s["labels"]["level"]: s["counts"] for s in body["series"]} == {
        "critical": [1], "error": [1], "info": [1], "warning": [2]
    }  # fmt: skip
    total = (await api.get("/api/logs/count", params={"query": "timeout"})).json()
    assert total["series"] == [{"labels": {}, "counts": [2]}]
    sugar = await api.get("/api/logs/count", params={"min_level": "error"})
    assert sugar.json()["series"][0]["counts"] == [2]
    stepped = await api.get(
        "/api/logs/count", params={"query": "level>=warning | count() by (service) step 1m"}
    )
    assert stepped.status_code == 200, stepped.text
    result = stepped.json()
    assert result["step_seconds"] == 60.0
    assert len(result["buckets"]) in (60, 61)  # the hour before now, aligned to minutes
    starts = [datetime.fromisoformat(b) for b in result["buckets"]]
    assert all(s.second == 0 and s.microsecond == 0 for s in starts)
    assert starts[-1] <= datetime.now(UTC)
    assert {s["labels"]["service"]: sum(s["counts"]) for s in result["series"]} == {
        "billing": 1, "db": 1, "shop": 1, "storage": 1
    }  # fmt: skip
    assert all(s["counts"][-1] == sum(s["counts"]) for s in result["series"])  # all just now


async def test_too_many_buckets_is_a_4xx_naming_step(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/api/logs/count", params={"query": "| count() step 1s", "since": "7d"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"] == "step"


@pytest.mark.parametrize(
    "query",
    ["_time:999999999999d", "| count() step 999999999999d", "status:>=1e400", 'x:~"(a"', "(((("],
)
async def test_hostile_queries_are_a_400_naming_query_at_every_route(
    api: httpx.AsyncClient, query: str
) -> None:
    for path in ("/api/logs", "/api/logs/count", "/api/logs/stream"):
        response = await api.get(path, params={"query": query})
        assert response.status_code == 400, (path, query, response.text)
        assert response.json()["detail"][0]["field"] == "query"


async def test_a_query_too_long_is_a_400_and_a_huge_url_is_no_500(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/logs", params={"query": "x " * 5000})
    assert response.status_code == 400
    assert response.json()["detail"][0]["field"] == "query"
    huge = await api.get("/api/logs", params={"query": "x" * 60_000})
    assert 400 <= huge.status_code < 500


@pytest.mark.parametrize("query", ["error _time:5m", "error | count()", "error | limit 3"])
async def test_the_tail_refuses_a_time_range_and_pipes(api: httpx.AsyncClient, query: str) -> None:
    response = await api.get("/api/logs/stream", params={"query": query})
    assert response.status_code == 400
    assert response.json()["detail"][0]["field"] == "query"


async def test_the_tail_filters_with_the_query(api: httpx.AsyncClient) -> None:
    got: list[str] = []
    params = {"query": 'level>=warning "card declined"', "service": "shop"}
    async with api.stream("GET", "/api/logs/stream", params=params) as stream:
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        assert (await anext(lines)).startswith(": connected")
        await api.post("/api/logs", json=[
            {"message": "card declined", "level": "info", "service": "shop"},
            {"message": "card declined", "level": "error", "service": "auth"},
            {"message": "declined card", "level": "error", "service": "shop"},
            {"message": "the card declined twice", "level": "error", "service": "shop"},
        ])  # fmt: skip
        async with asyncio.timeout(10):
            async for line in lines:
                if line.startswith("data: "):
                    got.append(json.loads(line[6:])["message"])
                    break
    assert got == ["the card declined twice"]
