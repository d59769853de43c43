"""Redis failures reach users in words they understand, never as Redis's raw text or script
hashes; Redis's own text goes to the server log. Real Redis servers throughout."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions as rex

from aygolog.embedded import EmbeddedRedis, free_port
from aygolog.errors import Unavailable
from aygolog.models import LogQuery, NewLog
from aygolog.redis import create_redis
from aygolog.store import RedisStreamLogStore
from aygolog.store.redis_errors import POOL_BUSY, unavailable
from support import ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(120)

_RAW = re.compile(r"script|[0-9a-f]{40}|@user_script|used memory >", re.IGNORECASE)


@pytest.fixture(scope="module")
def small_redis() -> Iterator[EmbeddedRedis]:
    """A server of this module's own, whose memory limit the tests lower."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def full(small_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    """Sets maxmemory just above what the server uses now (the store is then full)."""
    client = redis.Redis.from_url(small_redis.url)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 50_000)
    yield client
    client.config_set("maxmemory", 0)
    client.close()


@pytest.fixture(scope="module")
def api(small_redis: EmbeddedRedis) -> Iterator[ServiceProcess]:
    env = {
        "AYGOLOG_REDIS_URL": small_redis.url,
        "AYGOLOG_REDIS_PREFIX": f"oom{uuid.uuid4().hex[:8]}",
        "AYGOLOG_INSTANCE_NAME": "api-oom",
    }
    process = ServiceProcess("api", env=env).start()
    yield process
    process.close()


def test_a_full_store_answers_503_saying_so_and_what_to_do(
    api: ServiceProcess, small_redis: EmbeddedRedis
) -> None:
    assert httpx.post(api.url + "/api/log", json={"message": "before"}).status_code == 201
    client = redis.Redis.from_url(small_redis.url)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 50_000)
    try:
        answers = []
        big = "x" * 4000
        for _ in range(100):  # fill what is left, then some
            answer = httpx.post(api.url + "/api/logs", json=[{"message": big}] * 20)
            answers.append(answer)
            if answer.status_code == 503:
                break
        refused = answers[-1]
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert body["error"].startswith("the log store is full")
        assert "maxmemory" in body["error"]
        assert "AYGOLOG_RETENTION_MAX_ENTRIES" in body["error"]
        assert not _RAW.search(refused.text), refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        # Reads still work, and the server log has Redis's own words.
        assert httpx.get(api.url + "/api/logs", params={"limit": 1}).status_code == 200
        assert wait_until(lambda: "command not allowed when used memory" in api.output(), 5)
    finally:
        client.config_set("maxmemory", 0)
        client.close()
    assert httpx.post(api.url + "/api/log", json={"message": "after"}).status_code == 201


async def test_a_full_store_is_unavailable_in_plain_words(
    full: redis.Redis, small_redis: EmbeddedRedis
) -> None:
    client = aioredis.Redis.from_url(small_redis.url)
    store = RedisStreamLogStore(client, instance="s", prefix=f"full{uuid.uuid4().hex[:6]}")
    try:
        refused: Unavailable | None = None
        for _ in range(100):
            try:
                await store.append_many([NewLog(message="y" * 4000)] * 20)
            except Unavailable as exc:
                refused = exc
                break
        assert refused is not None
        assert str(refused).startswith("the log store is full")
        assert not _RAW.search(str(refused))
        assert refused.retry_after == 5.0
    finally:
        await client.aclose()


async def test_a_user_without_write_permission_is_told_so(redis_server: EmbeddedRedis) -> None:
    admin = aioredis.Redis.from_url(redis_server.url)
    name = f"reader{uuid.uuid4().hex[:6]}"
    await admin.acl_setuser(
        name, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-xadd"]
    )
    url = redis_server.url.replace("redis://", f"redis://{name}:pw@")
    store = RedisStreamLogStore.from_url(url, instance="s", prefix=f"acl{uuid.uuid4().hex[:6]}")
    try:
        with pytest.raises(Unavailable) as info:
            await store.append(NewLog(message="m"))
        assert "refused this instance's user or password" in str(info.value)
        assert not _RAW.search(str(info.value))
        wrong = RedisStreamLogStore.from_url(
            redis_server.url.replace("redis://", f"redis://{name}:nope@"), instance="s"
        )
        with pytest.raises(Unavailable) as info:
            await wrong.query(LogQuery())
        assert "user or password" in str(info.value)
        await wrong.aclose()
    finally:
        await store.aclose()
        await admin.acl_deluser(name)
        await admin.aclose()


async def test_nothing_listening_is_cannot_be_reached() -> None:
    store = RedisStreamLogStore.from_url(f"redis://127.0.0.1:{free_port()}", instance="s")
    try:
        with pytest.raises(Unavailable) as info:
            await store.ping()
        assert str(info.value) == "the log store (Redis) cannot be reached"
        assert info.value.retry_after == 1.0
    finally:
        await store.aclose()


async def test_every_pooled_connection_busy_is_not_cannot_be_reached(
    small_redis: EmbeddedRedis,
) -> None:
    """Redis is up but the instance's one connection is held: the answer says so (it said
    "cannot be reached", sending users to look for a Redis that was running)."""
    client = create_redis(small_redis.url, max_connections=1, pool_timeout=0.2)
    try:
        held = asyncio.ensure_future(client.blpop(["never-pushed"], timeout=2))
        await asyncio.sleep(0.2)
        with pytest.raises(rex.ConnectionError) as raised:
            await client.ping()
        answer = unavailable(raised.value, "query")
        assert str(answer) == POOL_BUSY
        assert "cannot be reached" not in str(answer)
        assert answer.retry_after == 1.0
        await held
    finally:
        await client.aclose()


def test_the_server_log_says_it_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="aygolog.store")
    kind = redis.exceptions.BusyLoadingError("LOADING Redis is loading the dataset in memory")
    for _ in range(5):
        error = unavailable(kind, "query")
        assert str(error) == "the log store (Redis) is loading its data after a restart"
    lines = [r.getMessage() for r in caplog.records if "loading the dataset" in r.getMessage()]
    assert len(lines) <= 1  # at most one per LOG_EVERY seconds (another test may have logged)
