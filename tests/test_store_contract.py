"""The LogStore contract, run against the in-memory and the Redis implementation alike."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from aygolog.embedded import EmbeddedRedis
from aygolog.errors import Conflict, Unavailable, ValidationError
from aygolog.models import Direction, LogEntry, LogLevel, LogQuery, NewLog
from aygolog.redis import KeySpace
from aygolog.store import (
    InMemoryLogStore,
    LogStore,
    RedisStreamLogStore,
    Retention,
    StoreOptions,
)


def log(message: str, **kwargs: object) -> NewLog:
    return NewLog(message=message, **kwargs)  # type: ignore[arg-type]


async def all_ids(store: LogStore, **filters: object) -> list[str]:
    """Every matching id, newest first, following cursors."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.query(LogQuery(limit=1000, cursor=cursor, **filters))  # type: ignore[arg-type]
        ids += [e.id for e in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


async def test_append_returns_the_stored_entry(store: LogStore) -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    entry = await store.append(
        log("hello", level=LogLevel.ERROR, service="api", timestamp=at, attributes={"n": 1})
    )
    assert entry.message == "hello"
    assert entry.level is LogLevel.ERROR
    assert entry.instance == "inst-a"
    assert entry.timestamp == at
    assert abs((entry.received_at - datetime.now(UTC)).total_seconds()) < 5
    page = await store.query(LogQuery())
    assert page.items == [entry]


async def test_timestamp_defaults_to_receive_time(store: LogStore) -> None:
    entry = await store.append(log("no time given"))
    assert entry.timestamp == entry.received_at
    (stored,) = (await store.query(LogQuery())).items
    assert stored.timestamp == stored.received_at


async def test_append_many_keeps_order_and_newest_comes_first(store: LogStore) -> None:
    result = await store.append_many([log(f"m{i}") for i in range(250)])
    assert result.count == 250
    assert not result.replayed
    assert result.instance == "inst-a"
    assert len(set(result.ids)) == 250
    page = await store.query(LogQuery(limit=1000))
    assert [e.message for e in page.items] == [f"m{i}" for i in reversed(range(250))]
    assert [e.id for e in page.items] == list(reversed(result.ids))
    assert page.next_cursor is None


async def test_empty_batch_stores_nothing(store: LogStore) -> None:
    result = await store.append_many([])
    assert result.ids == []
    assert (await store.stats()).total == 0


async def test_idempotent_batch_sent_twice_is_stored_once(store: LogStore) -> None:
    batch = [log(f"b{i}", service="svc") for i in range(100)]
    first = await store.append_many(batch, idempotency_key="batch-1")
    again = await store.append_many(batch, idempotency_key="batch-1")
    assert again.replayed
    assert again.ids == first.ids
    assert again.instance == first.instance
    assert len(await all_ids(store)) == 100
    stats = await store.stats()
    assert stats.total == 100
    assert stats.by_service == {"svc": 100}


async def test_one_entry_with_an_idempotency_key_is_stored_once(store: LogStore) -> None:
    first = await store.append(log("one", service="svc"), idempotency_key="single-1")
    again = await store.append(log("one", service="svc"), idempotency_key="single-1")
    assert again == first
    assert (await store.stats()).total == 1
    with pytest.raises(Conflict):
        await store.append(log("two", service="svc"), idempotency_key="single-1")


async def test_idempotency_key_reused_for_other_data_is_a_conflict(store: LogStore) -> None:
    await store.append_many([log("one")], idempotency_key="k")
    with pytest.raises(Conflict, match="different batch"):
        await store.append_many([log("two")], idempotency_key="k")
    assert len(await all_ids(store)) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "é"])
async def test_bad_idempotency_key_is_refused(store: LogStore, key: str) -> None:
    with pytest.raises(ValidationError) as info:
        await store.append_many([log("x")], idempotency_key=key)
    assert info.value.errors[0].field == "idempotency_key"
    assert (await store.stats()).total == 0


async def seed(store: LogStore) -> None:
    await store.append_many(
        [
            log("Disk FULL on node-1", level=LogLevel.ERROR, service="storage",
                attributes={"node": 1, "retry": True, "region": "eu"}),
            log("user logged in", level=LogLevel.INFO, service="auth",
                attributes={"user": "ana", "node": 2}),
            log("slow query", level=LogLevel.WARNING, service="db", attributes={"ms": 1500.5}),
            log("no service here", level=LogLevel.DEBUG),
            log("payment failed", level=LogLevel.CRITICAL, service="billing",
                attributes={"node": 1, "retry": False}),
        ]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["payment failed", "no service here", "slow query", "user logged in",
              "Disk FULL on node-1"]),
        ({"levels": frozenset({LogLevel.ERROR})}, ["Disk FULL on node-1"]),
        ({"min_level": LogLevel.WARNING}, ["payment failed", "slow query", "Disk FULL on node-1"]),
        ({"levels": frozenset({LogLevel.ERROR, LogLevel.DEBUG}), "min_level": LogLevel.ERROR},
         ["Disk FULL on node-1"]),
        ({"levels": frozenset()}, []),
        ({"services": frozenset({"auth", "db"})}, ["slow query", "user logged in"]),
        ({"services": frozenset({""})}, ["no service here"]),
        ({"text": "disk full"}, ["Disk FULL on node-1"]),
        ({"text": "FAILED"}, ["payment failed"]),
        ({"text": "nothing matches this"}, []),
        ({"attributes": {"node": "1"}}, ["payment failed", "Disk FULL on node-1"]),
        ({"attributes": {"node": "1.0"}}, ["payment failed", "Disk FULL on node-1"]),
        ({"attributes": {"retry": "true"}}, ["Disk FULL on node-1"]),
        ({"attributes": {"retry": "false"}}, ["payment failed"]),
        ({"attributes": {"user": "ana"}}, ["user logged in"]),
        ({"attributes": {"ms": "1500.5"}}, ["slow query"]),
        ({"attributes": {"node": "1", "region": "eu"}}, ["Disk FULL on node-1"]),
        ({"attributes": {"missing": "x"}}, []),
        ({"min_level": LogLevel.ERROR, "services": frozenset({"billing"}), "text": "pay"},
         ["payment failed"]),
        ({"direction": Direction.FORWARD, "min_level": LogLevel.ERROR},
         ["Disk FULL on node-1", "payment failed"]),
    ],
)  # fmt: skip
async def test_query_filters(
    store: LogStore, filters: dict[str, object], expected: list[str]
) -> None:
    await seed(store)
    page = await store.query(LogQuery(**filters))  # type: ignore[arg-type]
    assert [e.message for e in page.items] == expected


async def test_filters_agree_between_pages_and_whole(store: LogStore) -> None:
    await store.append_many(
        [log(f"e{i}", level=LogLevel.ERROR if i % 7 == 0 else LogLevel.INFO) for i in range(500)]
    )
    every = await all_ids(store, levels=frozenset({LogLevel.ERROR}))
    assert len(every) == len([i for i in range(500) if i % 7 == 0])
    paged: list[str] = []
    cursor = None
    while True:
        page = await store.query(
            LogQuery(levels=frozenset({LogLevel.ERROR}), limit=9, cursor=cursor)
        )
        paged += [e.id for e in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert paged == every


async def test_time_range(store: LogStore) -> None:
    first = await store.append(log("old"))
    await asyncio.sleep(0.02)
    middle = await store.append(log("middle"))
    await asyncio.sleep(0.02)
    await store.append(log("new"))
    page = await store.query(LogQuery(since=middle.received_at, until=middle.received_at))
    assert [e.message for e in page.items] == ["middle"]
    page = await store.query(LogQuery(until=first.received_at))
    assert [e.message for e in page.items] == ["old"]
    page = await store.query(LogQuery(since=middle.received_at, direction=Direction.FORWARD))
    assert [e.message for e in page.items] == ["middle", "new"]


async def test_forward_paging(store: LogStore) -> None:
    result = await store.append_many([log(f"f{i}") for i in range(35)])
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.query(LogQuery(limit=10, cursor=cursor, direction=Direction.FORWARD))
        seen += [e.id for e in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == result.ids


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (LogQuery(limit=0), "limit"),
        (LogQuery(limit=1001), "limit"),
        (LogQuery(cursor="not-an-id"), "cursor"),
        (LogQuery(since=datetime(2024, 2, 1, tzinfo=UTC), until=datetime(2024, 1, 1, tzinfo=UTC)),
         "since"),
    ],
)  # fmt: skip
async def test_bad_query_is_refused(store: LogStore, query: LogQuery, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        await store.query(query)
    assert info.value.errors[0].field == field


@pytest.mark.parametrize(
    ("cursor", "field_or_none"),
    [
        ("99999999999999999999-0", "cursor"),  # 20 digits, over 2**64 - 1
        ("1-18446744073709551616", "cursor"),
        ("\u0661-0", "cursor"),  # Arabic-Indic digit one: int() reads it, Redis does not
        ("\u00b2", "cursor"),  # superscript two: str.isdigit() is true
        ("1-2-3", "cursor"),
        ("-1", "cursor"),
        (" 1-0", "cursor"),
        ("1-0\n", "cursor"),
    ],
)
async def test_a_cursor_redis_would_refuse_is_a_validation_error(
    store: LogStore, cursor: str, field_or_none: str
) -> None:
    await store.append(log("x"))
    with pytest.raises(ValidationError) as info:
        await store.query(LogQuery(cursor=cursor))
    assert info.value.errors[0].field == field_or_none


@pytest.mark.parametrize(
    ("cursor", "direction"),
    [
        ("0-0", Direction.BACKWARD),  # nothing is before the first id: was a Redis error (503)
        ("0", Direction.BACKWARD),
        ("18446744073709551615-18446744073709551615", Direction.FORWARD),
    ],
)
async def test_a_cursor_at_either_end_of_the_id_space_is_an_empty_page(
    store: LogStore, cursor: str, direction: Direction
) -> None:
    await store.append(log("x"))
    page = await store.query(LogQuery(cursor=cursor, direction=direction))
    assert page.items == []
    assert page.next_cursor is None


async def test_the_other_way_from_either_end_is_everything(store: LogStore) -> None:
    ids = (await store.append_many([log(f"e{i}") for i in range(3)])).ids
    forward = await store.query(LogQuery(cursor="0-0", direction=Direction.FORWARD))
    assert [e.id for e in forward.items] == ids
    top = "18446744073709551615-18446744073709551615"
    backward = await store.query(LogQuery(cursor=top))
    assert [e.id for e in backward.items] == ids[::-1]


async def test_times_before_1970(store: LogStore) -> None:
    ids = (await store.append_many([log("a"), log("b")])).ids
    old = datetime(1900, 1, 1, tzinfo=UTC)
    assert [e.id for e in (await store.query(LogQuery(since=old))).items] == ids[::-1]
    assert (await store.query(LogQuery(until=old))).items == []


async def test_tail_refuses_a_bad_position(store: LogStore) -> None:
    with pytest.raises(ValidationError):
        await anext(aiter(store.tail("99999999999999999999-0")))


async def test_pages_while_writing_are_disjoint_and_skip_nothing(store: LogStore) -> None:
    existing = (await store.append_many([log(f"old{i}") for i in range(1500)])).ids
    existing_set = set(existing)

    async def writer() -> None:
        for i in range(100):
            await store.append_many([log(f"new{i}-{j}") for j in range(100)])
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    pages: list[list[LogEntry]] = []
    cursor = None
    for _ in range(10):
        page = await store.query(LogQuery(limit=100, cursor=cursor))
        pages.append(page.items)
        cursor = page.next_cursor
        await asyncio.sleep(0)
    await task
    ids = [e.id for items in pages for e in items]
    assert len(ids) == 1000
    assert len(set(ids)) == 1000, "pages overlap"
    keys = [tuple(map(int, i.split("-"))) for i in ids]
    assert keys == sorted(keys, reverse=True), "not newest first"
    oldest_read = keys[-1]
    should_have = {i for i in existing_set if tuple(map(int, i.split("-"))) >= oldest_read}
    assert should_have <= set(ids), "an entry that existed when paging began was skipped"
    assert (await store.stats()).total == 1500 + 10_000


async def test_tail_from_now_then_resume_without_gap_or_duplicate(store: LogStore) -> None:
    await store.append(log("before"))
    received: list[LogEntry] = []

    async def follow(after: str, count: int) -> None:
        async for entry in store.tail(after):
            received.append(entry)
            if len(received) >= count:
                return

    task = asyncio.create_task(follow("$", 3))
    await asyncio.sleep(0.1)
    for i in range(5):
        await store.append(log(f"live{i}"))
    await asyncio.wait_for(task, 5)
    assert [e.message for e in received] == ["live0", "live1", "live2"]
    resume_after = received[-1].id
    received.clear()
    await asyncio.wait_for(follow(resume_after, 2), 5)
    assert [e.message for e in received] == ["live3", "live4"]


async def test_tail_from_the_start(store: LogStore) -> None:
    await store.append_many([log(f"x{i}") for i in range(3)])
    got: list[str] = []
    async for entry in store.tail("0"):
        got.append(entry.message)
        if len(got) == 3:
            break
    assert got == ["x0", "x1", "x2"]


async def test_stats_count_per_level_service_and_instance(store: LogStore) -> None:
    await seed(store)
    await store.append(log("another", level=LogLevel.ERROR, service="auth"))
    stats = await store.stats()
    assert stats.total == 6
    assert stats.retained == 6
    assert stats.by_level == {"error": 2, "info": 1, "warning": 1, "debug": 1, "critical": 1}
    assert stats.by_service == {"storage": 1, "auth": 2, "db": 1, "billing": 1}
    assert stats.by_instance == {"inst-a": 6}
    assert 6 / 70 <= stats.ingest_rate <= 6 / 60


async def test_ping(store: LogStore) -> None:
    await store.ping()
    await store.aclose()


# -- retention -------------------------------------------------------------------------------


async def test_retention_by_count_memory() -> None:
    store = InMemoryLogStore(options=StoreOptions(retention=Retention(max_entries=100)))
    await store.append_many([log(f"r{i}") for i in range(350)])
    page = await store.query(LogQuery(limit=1000))
    assert [e.message for e in page.items][-1] == "r250"
    assert (await store.stats()).retained == 100
    assert (await store.stats()).total == 350


async def test_retention_by_count_redis(redis_client: aioredis.Redis, prefix: str) -> None:
    store = RedisStreamLogStore(
        redis_client,
        instance="i",
        prefix=prefix,
        options=StoreOptions(retention=Retention(max_entries=1000)),
    )
    for _ in range(10):
        await store.append_many([log("r") for _ in range(500)])
    retained = (await store.stats()).retained
    # MAXLEN ~ trims whole listpack nodes (100 entries by default): a little over is expected.
    assert 1000 <= retained <= 1200


async def test_retention_by_age_memory() -> None:
    now = [1_700_000_000.0]
    store = InMemoryLogStore(
        options=StoreOptions(retention=Retention(max_age=timedelta(seconds=60))),
        clock=lambda: now[0],
    )
    await store.append(log("old"))
    now[0] += 61
    await store.append(log("new"))
    assert [e.message for e in (await store.query(LogQuery())).items] == ["new"]


async def test_retention_by_age_redis(redis_client: aioredis.Redis, prefix: str) -> None:
    store = RedisStreamLogStore(
        redis_client,
        instance="i",
        prefix=prefix,
        options=StoreOptions(retention=Retention(max_entries=None, max_age=timedelta(seconds=0.2))),
    )
    await store.append_many([log("old") for _ in range(10)])
    await asyncio.sleep(0.3)
    await store.append(log("new"))
    assert [e.message for e in (await store.query(LogQuery())).items] == ["new"]


async def test_memory_idempotency_expires() -> None:
    now = [1_700_000_000.0]
    store = InMemoryLogStore(
        options=StoreOptions(idempotency_ttl=timedelta(hours=24)), clock=lambda: now[0]
    )
    await store.append_many([log("a")], idempotency_key="k")
    now[0] += 24 * 3600 + 1
    again = await store.append_many([log("a")], idempotency_key="k")
    assert not again.replayed
    assert (await store.stats()).total == 2


# -- Redis-specific: bounded scans, and Redis down ------------------------------------------


async def test_scan_is_bounded_and_continues(redis_client: aioredis.Redis, prefix: str) -> None:
    store = RedisStreamLogStore(
        redis_client,
        instance="i",
        prefix=prefix,
        options=StoreOptions(scan_chunk=7, scan_budget=20, max_scan=40),
    )
    # A boolean attribute: no index narrows it (booleans are not tokens; warning and above
    # have postings of their own), so the entries are scanned.
    await store.append_many([log(f"s{i}", attributes={"hit": i % 30 == 0}) for i in range(300)])
    query = LogQuery(attributes={"hit": "true"}, limit=5)
    page = await store.query(query)
    # 40 entries scanned at most: the page is short, with a cursor to go on from.
    assert len(page.items) < 5
    assert page.next_cursor is not None
    found = [e.message for e in page.items]
    cursor: str | None = page.next_cursor
    while cursor is not None:
        page = await store.query(LogQuery(attributes=query.attributes, limit=5, cursor=cursor))
        found += [e.message for e in page.items]
        cursor = page.next_cursor
    assert found == [f"s{i}" for i in reversed(range(0, 300, 30))]


async def test_redis_down_raises_unavailable_not_empty() -> None:
    server = EmbeddedRedis().start()
    client = aioredis.Redis.from_url(server.url)
    store = RedisStreamLogStore(client, instance="i")
    await store.append(log("x"))
    server.kill()
    try:
        with pytest.raises(Unavailable) as info:
            await store.query(LogQuery())
        assert info.value.retry_after is not None
        with pytest.raises(Unavailable):
            await store.append(log("y"))
        with pytest.raises(Unavailable):
            await store.stats()
        with pytest.raises(Unavailable):
            await store.ping()
        server.start()
        # It recovers by itself once Redis is back (the data is gone: no persistence here).
        for _ in range(50):
            with contextlib.suppress(Unavailable):
                await store.ping()
                break
            await asyncio.sleep(0.05)
        entry = await store.append(log("back"))
        assert entry.message == "back"
    finally:
        await client.aclose()
        server.stop()


async def test_script_is_reloaded_after_script_flush(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    store = RedisStreamLogStore(redis_client, instance="i", prefix=prefix)
    await store.append(log("a"))
    await redis_client.script_flush()
    await store.append(log("b"))
    await redis_client.script_flush()
    assert len((await store.query(LogQuery(text="a"))).items) == 1


async def test_an_unfiltered_page_asks_redis_for_what_it_returns(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """The seed's list (`GET /api/log`) read 1,000 entries to return 10 (~300 req/s at most)."""
    store = RedisStreamLogStore(redis_client, instance="a", prefix=prefix)
    await store.append_many([log(f"c{i}") for i in range(1500)])
    watcher = aioredis.Redis.from_url(redis_url)
    reads: list[str] = []
    try:
        async with watcher.monitor() as monitor:
            page = await store.query(LogQuery(limit=10))
            while not reads:
                command = (await asyncio.wait_for(monitor.next_command(), 5))["command"]
                if command.startswith("XREVRANGE") and prefix in command:
                    reads.append(command)
    finally:
        await watcher.aclose()
    assert len(page.items) == 10
    assert reads[0].endswith(" COUNT 10"), reads


@pytest.fixture(params=["memory", "redis"])
async def small_pages(
    request: pytest.FixtureRequest, redis_client: aioredis.Redis, prefix: str
) -> LogStore:
    """Each store with pages capped at 10,000 bytes."""
    options = StoreOptions(max_page_bytes=10_000)
    if request.param == "memory":
        return InMemoryLogStore(instance="a", options=options)
    return RedisStreamLogStore(redis_client, instance="a", prefix=prefix, options=options)


@pytest.mark.parametrize("direction", list(Direction))
@pytest.mark.parametrize("text", [None, "big"])
async def test_a_page_ends_early_at_max_page_bytes_and_the_cursor_continues(
    small_pages: LogStore, direction: Direction, text: str | None
) -> None:
    """`limit=1000` of 64 KiB messages used to read ~60 MiB out of Redis per request."""
    ids = (await small_pages.append_many([log(f"big {i} " + "x" * 2000) for i in range(23)])).ids
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = LogQuery(limit=1000, cursor=cursor, direction=direction, text=text)
        page = await small_pages.query(query)
        pages += 1
        assert 1 <= len(page.items) <= 5  # 5 bodies of ~2,030 bytes reach 10,000
        seen += [e.id for e in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == (ids if direction is Direction.FORWARD else ids[::-1])
    assert pages == 5


async def test_an_entry_larger_than_a_page_is_a_page_of_its_own(small_pages: LogStore) -> None:
    ids = (await small_pages.append_many([log("y" * 30_000), log("small")])).ids
    first = await small_pages.query(LogQuery(limit=10, direction=Direction.FORWARD))
    assert [e.id for e in first.items] == ids[:1]
    second = await small_pages.query(
        LogQuery(limit=10, direction=Direction.FORWARD, cursor=first.next_cursor)
    )
    assert [e.id for e in second.items] == ids[1:]


@pytest.mark.parametrize("text", [None, "big"])
async def test_big_entries_are_read_in_small_xranges(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, text: str | None
) -> None:
    """A scan's XRANGE is held in Redis's memory whole: with 60 KiB entries, a COUNT of 1,000
    read ~60 MiB to return a 4 MiB page."""
    store = RedisStreamLogStore(redis_client, instance="a", prefix=prefix)
    await store.append_many([log(f"big {i} " + "x" * 60_000) for i in range(150)])
    watcher = aioredis.Redis.from_url(redis_url)
    counts: list[int] = []
    try:
        async with watcher.monitor() as monitor:
            page = await store.query(LogQuery(limit=1000, text=text))
            await redis_client.ping()  # a marker: every read of the query came before it
            while True:
                command = (await asyncio.wait_for(monitor.next_command(), 5))["command"]
                if command == "PING":
                    break
                if command.startswith("XREVRANGE") and prefix in command:
                    counts.append(int(command.rsplit(" ", 1)[1]))
    finally:
        await watcher.aclose()
    assert 60 <= len(page.items) <= 75  # a 4 MiB page
    assert page.next_cursor is not None
    assert max(counts) <= 32, counts
    assert sum(counts) <= len(page.items) + 32, counts


# -- version: what a reader keeping a page checks ---------------------------------------------


async def test_version_changes_with_every_write_and_only_then(store: LogStore) -> None:
    empty = await store.version()
    assert await store.version() == empty
    await store.append(log("one"))
    one = await store.version()
    assert one != empty
    assert await store.version() == one  # reads change nothing
    await store.query(LogQuery(limit=10))
    assert await store.version() == one
    await store.append_many([log("two"), log("three")])
    assert await store.version() not in (empty, one)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_version_changes_when_retention_trims(
    kind: str, redis_client: aioredis.Redis, prefix: str
) -> None:
    options = StoreOptions(retention=Retention(max_entries=5))
    store: LogStore = (
        InMemoryLogStore(options=options)
        if kind == "memory"
        else RedisStreamLogStore(redis_client, instance="a", prefix=prefix, options=options)
    )
    await store.append_many([log(f"m{i}") for i in range(5)])
    seen = {await store.version()}
    for i in range(3):
        await store.append(log(f"more {i}"))
        version = await store.version()
        assert version not in seen
        seen.add(version)


async def test_redis_version_tells_a_rewritten_stream_from_the_one_it_replaced(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """Same newest id and length (a stream deleted and written again in the same
    millisecond): the newest entry's digest still tells them apart."""
    store = RedisStreamLogStore(redis_client, instance="a", prefix=prefix)
    stream = KeySpace(prefix).key("logs")
    fields = {"l": "2", "s": "", "i": "a", "d": b'{"message":"first"}'}
    await redis_client.xadd(stream, fields, id="1700000000000-0")  # type: ignore[arg-type]
    before = await store.version()
    assert before.startswith("1700000000000-0:1:")
    await redis_client.delete(stream)
    fields["d"] = b'{"message":"second"}'
    await redis_client.xadd(stream, fields, id="1700000000000-0")  # type: ignore[arg-type]
    assert await store.version() != before
    (entry,) = (await store.query(LogQuery())).items
    assert entry.message == "second"


async def test_a_batch_replays_through_another_instance(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    # the digest is of the packed entries only: the same batch matches whoever sends it again,
    # one entry's change (here: the service) does not
    first = RedisStreamLogStore(redis_client, instance="a", prefix=prefix)
    second = RedisStreamLogStore(redis_client, instance="b", prefix=prefix)
    batch = [log(f"r{i}", service="svc", attributes={"n": i}) for i in range(50)]
    stored = await first.append_many(batch, idempotency_key="k")
    again = await second.append_many(batch, idempotency_key="k")
    assert again.replayed
    assert (again.ids, again.instance) == (stored.ids, "a")
    changed = [*batch[:-1], log("r49", attributes={"n": 49})]
    with pytest.raises(Conflict):
        await second.append_many(changed, idempotency_key="k")


async def test_a_cancelled_append_leaves_no_reply_behind(prefix: str) -> None:
    # one pooled connection: an append cancelled before its reply is read must not hand that
    # reply to the next command on the connection
    server = EmbeddedRedis().start()
    client = aioredis.Redis.from_url(server.url, max_connections=1)
    store = RedisStreamLogStore(client, instance="i", prefix=prefix)
    batch = [log(f"c{i}") for i in range(2000)]
    other = aioredis.Redis.from_url(server.url)
    try:
        await client.set("marker", "v")
        await store.append_many(batch[:1])  # the script is loaded
        for delay in (0, 0.001, 0.005, 0.02):
            # Redis holds the append (a write) for 200 ms: its reply comes after the GET below
            # was sent, and a reused connection would read it as the GET's reply
            await other.client_pause(200, all=False)
            task = asyncio.create_task(store.append_many(batch))
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert await client.get("marker") == b"v"
            await other.client_unpause()
        stats = await store.stats()
        assert stats.total % 2000 == 1  # whole batches only
        assert stats.retained == stats.total
        assert len((await store.append_many(batch[:3])).ids) == 3
    finally:
        await other.aclose()
        await client.aclose()
        server.stop()
