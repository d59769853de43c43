"""The Log API app served in-process (uvicorn on loopback) over the in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from aygolog.embedded import free_port
from aygolog.server import create_log_api
from aygolog.settings import LogApiSettings
from aygolog.store import InMemoryLogStore


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = create_log_api(
        LogApiSettings(instance_name="mem-1"),
        store=InMemoryLogStore(instance="mem-1"),
        keepalive_seconds=0.2,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_idle_stream_gets_keepalive_comments(base_url: str) -> None:
    comments: list[str] = []
    async with (
        httpx.AsyncClient(timeout=5) as client,
        client.stream("GET", base_url + "/api/logs/stream") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith(":"):
                comments.append(line)
            if comments.count(": keep-alive") >= 2:
                break
    assert comments[0] == ": connected"


async def test_app_works_over_the_memory_store(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        stored = await client.post("/api/log", json={"message": "in memory", "level": "warn"})
        assert stored.status_code == 201
        assert stored.json()["instance"] == "mem-1"
        page = (await client.get("/api/logs", params={"min_level": "warning"})).json()
        assert [i["message"] for i in page["items"]] == ["in memory"]
