"""The Log API app served in-process (uvicorn on loopback) over the in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from aygolog.embedded import free_port
from aygolog.metrics import Metrics
from aygolog.models import LogEntry, NewLog
from aygolog.server import create_log_api
from aygolog.server.routes import ApiState, _log_event
from aygolog.server.tail import TailHub
from aygolog.settings import ApiScope, LogApiSettings
from aygolog.store import InMemoryLogStore
from aygolog.store.base import stored_entry


async def serve(settings: LogApiSettings) -> AsyncIterator[str]:
    app = create_log_api(
        settings, store=InMemoryLogStore(instance=settings.instance_name), keepalive_seconds=0.2
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


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    async for url in serve(LogApiSettings(instance_name="mem-1")):
        yield url


@pytest.fixture
async def keyed_url() -> AsyncIterator[str]:
    keys: dict[str, ApiScope] = {"r": "read", "w": "write", "rw": "read+write"}
    async for url in serve(LogApiSettings(instance_name="mem-k", api_keys=keys)):
        yield url


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/api/logs", {}, 401),
        ("GET", "/api/log", {"X-Api-Key": "nope"}, 401),
        ("GET", "/api/logs/stats", {"Authorization": "Bearer r"}, 200),
        ("GET", "/api/log", {"X-Api-Key": "rw"}, 200),
        ("POST", "/api/log", {"X-Api-Key": "r"}, 403),
        ("POST", "/api/log", {"Authorization": "Bearer w"}, 201),
        ("GET", "/api/logs", {"X-Api-Key": "w"}, 403),
        ("POST", "/api/logs", {"authorization": "bearer rw"}, 201),
        ("GET", "/health", {}, 200),
        ("GET", "/metrics", {}, 200),
    ],
)
async def test_an_instance_given_api_keys_checks_them(
    keyed_url: str, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    body = [{"message": "k"}] if path == "/api/logs" else {"message": "k"}
    async with httpx.AsyncClient(base_url=keyed_url) as client:
        if method == "POST":
            response = await client.post(path, json=body, headers=headers)
        else:
            response = await client.request(method, path, headers=headers)
        assert response.status_code == status, response.text
        if status in (401, 403):
            assert response.json()["error"]
            assert ("www-authenticate" in response.headers) == (status == 401)
        count = (await client.get("/api/logs/stats", headers={"X-Api-Key": "rw"})).json()["total"]
        assert count == (1 if status == 201 else 0)


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


def test_a_live_entry_is_encoded_once_and_a_reused_id_is_encoded_afresh() -> None:
    store = InMemoryLogStore()
    api = ApiState(instance="i", store=store, hub=TailHub(store), metrics=Metrics())
    entry: LogEntry = stored_entry(NewLog(message="first"), "1700000000000-0", "i")
    frame = _log_event(api, entry)
    assert frame.startswith(b"id: 1700000000000-0\r\ndata: {")
    assert frame.endswith(b"}\r\n\r\n")
    assert b'"message":"first"' in frame
    assert _log_event(api, entry) is frame  # encoded once for every stream it goes to
    other = stored_entry(NewLog(message="second"), "1700000000000-0", "i")  # a wiped store
    assert b'"message":"second"' in _log_event(api, other)
