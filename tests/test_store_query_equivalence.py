"""Identical answers on the same data: the in-memory store, the Redis store with a search index of
many small blocks (small bloom filters: many false positives to weed out), and the Redis store
without an index, given the same generated entries, the same queries and the same counts."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from aygolog.embedded import EmbeddedRedis
from aygolog.models import LogLevel, LogQuery, NewLog
from aygolog.redis import KeySpace
from aygolog.store import InMemoryLogStore, LogStore, RedisStreamLogStore
from aygolog.store.index import IndexOptions

pytestmark = pytest.mark.timeout(300)

WORDS = ["timeout", "refused", "paid", "order", "retry", "disk", "full", "café", "Ünïcode", "x1"]
SERVICES = ["shop", "auth", "billing", "db", None]


def generate(n: int, seed: int = 13) -> list[list[NewLog]]:
    """`n` entries in batches of 1 to 60, with words, levels, services and attributes."""
    rng = random.Random(seed)
    logs = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(1, 4))
        attributes: dict[str, str | int | float | bool] = {"n": i}
        if rng.random() < 0.3:
            attributes["status"] = rng.choice([200, 404, 500, 502, 504])
        if rng.random() < 0.2:
            attributes["path"] = rng.choice(["/api/orders", "/api/users", "/internal/pay"])
        if rng.random() < 0.1:
            attributes["user"] = rng.choice(["ana", "bob"])
        if rng.random() < 0.05:
            attributes["ok"] = rng.random() < 0.5
        logs.append(
            NewLog(
                message=" ".join(words) + f" req-{i:05d}",
                level=rng.choice(list(LogLevel)),
                service=rng.choice(SERVICES),
                attributes=attributes,
                trace_id=f"t{i % 97:03d}" if rng.random() < 0.5 else None,
            )
        )
    batches, at = [], 0
    while at < n:
        size = rng.randint(1, 60)
        batches.append(logs[at : at + size])
        at += size
    return batches


QUERIES = [
    "",
    "timeout",
    "TIMEOUT refused",
    "timeout OR café",
    '"disk full"',
    '"full disk"',
    "-timeout -paid level>=error",
    "NOT (order OR retry)",
    "level:warning service:shop",
    "level<=debug",
    "service:(auth OR billing) status:>=500",
    "status:502",
    "status:<300",
    'path:~"^/api/"',
    '~"req-0012[0-9]"',
    "user:*",
    "-user:* level:critical",
    "ok:true",
    "trace_id:t042",
    "req-00777",
    "ünïcode",
    "x1 | limit 7",
    "nothing-matches-this",
]
COUNTS = [
    "| count()",
    "timeout | count() by (level)",
    "level>=warning | count() by (service, status)",
    "| count() by (user, ok)",
    "| count() by (instance)",
]


@pytest.fixture
async def stores(redis_server: EmbeddedRedis, prefix: str) -> AsyncIterator[list[LogStore]]:
    memory = InMemoryLogStore(instance="inst-a")
    client = aioredis.Redis.from_url(redis_server.url)
    indexed = RedisStreamLogStore(
        client, instance="inst-a", prefix=prefix + "i",
        index=IndexOptions(block_entries=64, bloom_bytes=256, block_budget=3),
    )  # fmt: skip
    plain = RedisStreamLogStore(client, instance="inst-a", prefix=prefix + "p", index=None)
    everyone: list[LogStore] = [memory, indexed, plain]
    for batch in generate(2500):
        for store in everyone:
            await store.append_many(batch)
    blocks = await client.zcard(KeySpace(prefix + "i").key("ixb"))
    assert blocks >= 30  # the index is on, in many blocks (a batch never spans two)
    assert not await client.exists(KeySpace(prefix + "p").key("ixb"))
    yield everyone
    await client.aclose()


async def messages(store: LogStore, text: str, page: int) -> list[str]:
    found: list[str] = []
    cursor: str | None = None
    while True:
        result = await store.query(LogQuery(query=text or None, limit=page, cursor=cursor))
        found += [e.message for e in result.items]
        if result.next_cursor is None:
            return found
        cursor = result.next_cursor


async def test_every_store_gives_the_same_entries_and_counts(stores: list[LogStore]) -> None:
    for text in QUERIES:
        answers = [await messages(store, text, 97) for store in stores]
        assert answers[1] == answers[0], text
        assert answers[2] == answers[0], text
        if text and "limit" not in text and text != "nothing-matches-this":
            assert 0 < len(answers[0]) < 2500, text  # the query selects something, not all
    for text in COUNTS:
        results = [await store.count(LogQuery(query=text)) for store in stores]
        tables = [{tuple(s.labels.items()): s.counts for s in r.series} for r in results]
        assert tables[1] == tables[0], text
        assert tables[2] == tables[0], text
        assert all(r.complete for r in results), text
    stepped = [
        await store.count(LogQuery(query="| count() by (level) step 1m")) for store in stores
    ]
    totals = [{s.labels["level"]: sum(s.counts) for s in r.series} for r in stepped]
    assert totals[0] == totals[1] == totals[2]
    assert sum(totals[0].values()) == 2500
