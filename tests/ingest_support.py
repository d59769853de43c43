"""What the ingest protocols' tests share: a Log API served in-process (uvicorn on a free
loopback port) over a real Redis store, counting what it stored, and reading one service's
entries back through the SDK."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from aygolog.client import LogClient
from aygolog.embedded import free_port
from aygolog.models import LogEntry, LogLevel, LogQuery
from aygolog.server import create_log_api
from aygolog.settings import LogApiSettings
from aygolog.store import RedisStreamLogStore

__all__ = ["LEVELS", "count", "serve", "stored"]

LEVELS = [
    (logging.DEBUG, LogLevel.DEBUG),
    (logging.INFO, LogLevel.INFO),
    (logging.WARNING, LogLevel.WARNING),
    (logging.ERROR, LogLevel.ERROR),
    (logging.CRITICAL, LogLevel.CRITICAL),
]
"""The stdlib's levels and what each is stored as."""


async def serve(store: RedisStreamLogStore, **settings: Any) -> AsyncIterator[str]:
    """A Log API over `store` with `settings`, yielding its URL while it runs."""
    app = create_log_api(LogApiSettings(instance_name="ingest-1", **settings), store=store)
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


async def count(store: RedisStreamLogStore) -> int:
    """How many entries `store` holds (up to 1,000)."""
    return len((await store.query(LogQuery(limit=1000))).items)


def stored(url: str, service: str) -> list[LogEntry]:
    """Every entry of `service`, oldest first, read back through aygolog's own API."""
    with LogClient(url) as client:
        return list(client.iter_logs(service=service, limit=1000, direction="forward"))
