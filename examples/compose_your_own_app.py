"""Compose aygolog's library classes into your own Litestar app.

A tiny "audit log" service: it stores events in aygolog's Redis stream store, keeps a registry
of worker instances and picks one with the power-of-two-choices strategy, all in one app,
without the Log API or the load balancer.

    python examples/compose_your_own_app.py            # serves on http://127.0.0.1:8099
    python examples/compose_your_own_app.py --check    # starts, exercises itself, exits

It starts a private Redis-compatible server (aygolog.embedded) unless AYGOLOG_REDIS_URL is set.
Needs the `server` and `embedded` extras: pip install 'aygolog[server,embedded]'.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from litestar import Litestar, get, post
from litestar.datastructures import State

from aygolog import (
    EmbeddedRedis,
    InMemoryServiceRegistry,
    LogLevel,
    LogQuery,
    NewLog,
    PowerOfTwoChoices,
    Registration,
)
from aygolog.store import RedisStreamLogStore

PORT = int(os.environ.get("EXAMPLE_PORT", "8099"))


@post("/audit")
async def record(state: State, data: dict[str, str]) -> dict[str, Any]:
    """Store an audit event and say which worker would handle its follow-up."""
    workers = [w for w in await state.registry.instances() if w.status == "healthy"]
    worker = state.strategy.pick(workers)
    entry = await state.store.append(
        NewLog(
            message=data.get("event", "unnamed event"),
            level=LogLevel.INFO,
            service="audit",
            attributes={"user": data.get("user", "anonymous"), "worker": worker.name},
        )
    )
    return {"id": entry.id, "worker": worker.name}


@get("/audit")
async def recent(state: State, user: str | None = None) -> list[dict[str, Any]]:
    """The newest audit events, optionally for one user."""
    query = LogQuery(services=frozenset({"audit"}), attributes={"user": user} if user else {})
    page = await state.store.query(query)
    return [
        {"event": e.message, "at": e.received_at.isoformat(), **e.attributes} for e in page.items
    ]


def create_app(redis_url: str) -> Litestar:
    """The app; its lifespan opens the store and registers two workers."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        store = RedisStreamLogStore.from_url(redis_url, instance="audit-app", prefix="audit")
        registry = InMemoryServiceRegistry()
        for name, port in (("worker-a", 9001), ("worker-b", 9002)):
            await registry.register(Registration(name=name, url=f"http://127.0.0.1:{port}"))
        app.state.store, app.state.registry = store, registry
        app.state.strategy = PowerOfTwoChoices()
        try:
            yield
        finally:
            await store.aclose()
            await registry.aclose()

    return Litestar([record, recent], lifespan=[lifespan])


async def check(redis_url: str) -> None:
    """Serve the app, use it over HTTP, and stop."""
    import httpx

    server = uvicorn.Server(uvicorn.Config(create_app(redis_url), port=PORT, log_level="error"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}") as client:
        for user, event in (("ana", "login"), ("bo", "login"), ("ana", "export")):
            answer = (await client.post("/audit", json={"user": user, "event": event})).json()
            print(f"stored {event!r} for {user}: id {answer['id']}, worker {answer['worker']}")
        events = (await client.get("/audit", params={"user": "ana"})).json()
        print("ana's events, newest first:", [e["event"] for e in events])
        assert [e["event"] for e in events] == ["export", "login"]
    server.should_exit = True
    await task


def main() -> None:
    url = os.environ.get("AYGOLOG_REDIS_URL")
    with contextlib.ExitStack() as stack:
        if url is None:
            url = stack.enter_context(EmbeddedRedis()).url
        if "--check" in sys.argv:
            asyncio.run(check(url))
        else:
            uvicorn.run(create_app(url), port=PORT)


if __name__ == "__main__":
    main()
