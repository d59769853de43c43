"""Shared fixtures: one real Redis-compatible server per session, a fresh key prefix per test."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from playwright.sync_api import Browser, Error, Playwright, sync_playwright

from aygolog.embedded import EmbeddedRedis
from aygolog.store import InMemoryLogStore, LogStore, RedisStreamLogStore
from ingest_support import serve
from support import LiveStack


@pytest.fixture(scope="session", autouse=True)
def _no_user_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An `aygolog up` started by a test never writes into the user's real data directory."""
    before = os.environ.get("AYGOLOG_DATA_DIR")
    os.environ["AYGOLOG_DATA_DIR"] = str(tmp_path_factory.mktemp("aygolog-data"))
    yield
    if before is None:
        os.environ.pop("AYGOLOG_DATA_DIR", None)
    else:
        os.environ["AYGOLOG_DATA_DIR"] = before


@pytest.fixture(scope="session", autouse=True)
def _one_lb_worker() -> Iterator[None]:
    """Every `aygolog lb` a test starts (directly, or through `aygolog up`) is one process, as
    before `--workers` (fast and deterministic: the tests that count its file descriptors or
    children, or kill it, mean one process); the worker tests set AYGOLOG_LB_WORKERS=2."""
    before = os.environ.get("AYGOLOG_LB_WORKERS")
    os.environ["AYGOLOG_LB_WORKERS"] = "1"
    yield
    if before is None:
        os.environ.pop("AYGOLOG_LB_WORKERS", None)
    else:
        os.environ["AYGOLOG_LB_WORKERS"] = before


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A private redis-server/valkey-server for the whole session (no mocks of Redis)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The URL of the session's server."""
    return redis_server.url


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, so tests never see each other's data."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client of the session's server, closed after the test."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis, prefix: str
) -> AsyncIterator[LogStore]:
    """Each implementation of `LogStore` in turn: the contract suite runs against both."""
    if request.param == "memory":
        yield InMemoryLogStore(instance="inst-a")
        return
    client = aioredis.Redis.from_url(redis_server.url)
    yield RedisStreamLogStore(client, instance="inst-a", prefix=prefix)
    await client.aclose()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """A live system for one test module: Redis (append-only), the LB, 3 Log API instances."""
    live = LiveStack(tmp_path_factory.mktemp("redis"))
    try:
        yield live.start()
    finally:
        live.close()


# -- a real headless Chromium (Debian's), for the tests of what a person sees ----------------

CHROMIUM = os.environ.get("AYGOLOG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _no_browser(reason: str) -> None:
    if os.environ.get("AYGOLOG_REQUIRE_BROWSER") == "1":
        pytest.fail(f"AYGOLOG_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """Playwright's sync API, for one test module."""
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless; a skip (or, with AYGOLOG_REQUIRE_BROWSER=1, a failure)
    when there is none."""
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if path is None:
        _no_browser(f"no Chromium at {CHROMIUM} or on PATH (apt-get install chromium)")
    try:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
    except Error as exc:
        _no_browser(f"Chromium at {path} does not start: {exc.message.splitlines()[0]}")
    yield launched
    launched.close()


@pytest.fixture
async def redis_store(redis_url: str, prefix: str) -> AsyncIterator[RedisStreamLogStore]:
    """A Redis store on this test's own prefix."""
    client = aioredis.Redis.from_url(redis_url)
    yield RedisStreamLogStore(client, instance="ingest-1", prefix=prefix)
    await client.aclose()


@pytest.fixture
async def ingest_api(redis_store: RedisStreamLogStore) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a Log API served in-process over `redis_store`, its body limit 200,000
    bytes (for the ingest protocols' route tests)."""
    async for url in serve(redis_store, max_body_bytes=200_000):
        async with httpx.AsyncClient(base_url=url) as client:
            yield client
