"""The Redis store's plan runner and search index: block summaries and bloom filters written by
the append, blocks skipped by the scan, counts from block counters, retention of blocks.

Every answer is checked against the same plan applied in Python to every stored entry, with
the index on and off, on a real Redis.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from aygolog.models import Direction, LogEntry, LogLevel, LogQuery, NewLog
from aygolog.query import CountSpec, Plan, log_tokens, tokens
from aygolog.store import RedisStreamLogStore, Retention, StoreOptions
from aygolog.store.index import FILTER_FORMAT, BloomHasher, IndexOptions, false_positive_rate

SMALL = IndexOptions(block_entries=8, bloom_bytes=256, block_budget=3)
T0 = 1_780_000_000_000 - 1_780_000_000_000 % 3_600_000  # an hour boundary, in ms


def token_plan(*clauses: set[str], **kwargs: object) -> Plan:
    """A plan for entries holding a token of each clause (the exact check included)."""
    frozen = tuple(frozenset(c) for c in clauses)
    severities = kwargs.get("severities")
    services = kwargs.get("services")

    def predicate(entry: LogEntry) -> bool:
        if isinstance(severities, frozenset) and entry.level.severity not in severities:
            return False
        if isinstance(services, frozenset) and (entry.service or "") not in services:
            return False
        held = log_tokens(entry.message, entry.attributes, entry.trace_id)
        return all(held & c for c in frozen)

    return Plan(predicate=predicate, clauses=frozen, **kwargs)  # type: ignore[arg-type]


def make_logs(count: int, seed: int = 3) -> list[NewLog]:
    rng = random.Random(seed)
    logs = []
    for i in range(count):
        level = LogLevel.ERROR if i % 10 == 3 else LogLevel.INFO
        logs.append(
            NewLog(
                message=f"req r{i} done for user u{rng.randrange(20)}",
                level=level,
                service=("auth", "shop", None)[i % 3],
                attributes={"status": 500 if level is LogLevel.ERROR else 200, "node": "n1"},
            )
        )
    return logs


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


def stores(
    client: aioredis.Redis, prefix: str, **options: object
) -> tuple[RedisStreamLogStore, RedisStreamLogStore]:
    """The same stream read with the index (small blocks) and without."""
    opts = StoreOptions(retention=Retention(max_entries=None), **options)  # type: ignore[arg-type]
    on = RedisStreamLogStore(client, instance="i1", prefix=prefix, options=opts, index=SMALL)
    off = RedisStreamLogStore(client, instance="i1", prefix=prefix, options=opts, index=None)
    return on, off


async def load(store: RedisStreamLogStore, logs: list[NewLog], *, spread_ms: int = 0) -> None:
    """Batches of 1-7 logs; with `spread_ms`, ids `spread_ms` apart from T0 (explicit ids)."""
    rng = random.Random(5)
    i = 0
    while i < len(logs):
        n = rng.randrange(1, 8)
        batch = logs[i : i + n]
        if spread_ms:
            ids = [f"{T0 + (i + j) * spread_ms}-0" for j in range(len(batch))]
            await store.append_at(batch, ids)
        else:
            await store.append_many(batch)
        i += n


async def everything(store: RedisStreamLogStore, plan: Plan, **page: object) -> list[str]:
    """Every id `plan` selects, page by page."""
    query = LogQuery(limit=7, **page)  # type: ignore[arg-type]
    ids: list[str] = []
    for _ in range(1000):
        result = await store.search(plan, query)
        ids += [e.id for e in result.items]
        if result.next_cursor is None:
            return ids
        query = LogQuery(limit=7, cursor=result.next_cursor, **page)  # type: ignore[arg-type]
    raise AssertionError("paging did not end")


async def brute(store: RedisStreamLogStore, plan: Plan) -> list[str]:
    everything_plan = Plan()
    entries = []
    query = LogQuery(limit=1000)
    while True:
        page = await store.search(everything_plan, query)
        entries += page.items
        if page.next_cursor is None:
            break
        query = LogQuery(limit=1000, cursor=page.next_cursor)
    return [e.id for e in entries if plan.matches(e)]


PLANS = {
    "rare token": token_plan({"r77"}),
    "token or token": token_plan({"r5", "r150"}),
    "two clauses": token_plan({"user"}, {"u3"}),
    "absent token": token_plan({"nowhere"}),
    "level": Plan(predicate=lambda e: e.level is LogLevel.ERROR, severities=frozenset({4})),
    "service none": Plan(predicate=lambda e: e.service is None, services=frozenset({""})),
    "level and token": token_plan(
        {"u7"},
        severities=frozenset({4}),
        services=frozenset({"auth", "shop"}),
    ),
    "everything": Plan(),
}


@pytest.mark.parametrize("name", sorted(PLANS))
@pytest.mark.parametrize("direction", [Direction.BACKWARD, Direction.FORWARD])
async def test_search_agrees_with_the_exact_filter_index_on_and_off(
    client: aioredis.Redis, prefix: str, name: str, direction: Direction
) -> None:
    on, off = stores(client, prefix)
    await load(on, make_logs(200))
    plan = PLANS[name]
    expected = await brute(on, plan)
    if direction is Direction.FORWARD:
        expected.reverse()
    assert await everything(on, plan, direction=direction) == expected
    assert await everything(off, plan, direction=direction) == expected
    if name != "absent token":
        assert expected


async def test_blocks_are_written_with_their_summary(client: aioredis.Redis, prefix: str) -> None:
    on, _ = stores(client, prefix)
    await load(on, make_logs(50))
    members: Any = await client.zrange(f"{{{prefix}}}:ixb", 0, -1)
    assert len(members) >= 3
    total = 0
    previous_t = "0-0"
    for member in members:
        block: Any = await client.hgetall(f"{{{prefix}}}:ix:{int(member)}")
        n = int(block[b"n"])
        assert n >= SMALL.block_entries or member == members[-1]
        assert n < SMALL.block_entries + 7
        first, last = block[b"f"].decode(), block[b"t"].decode()
        assert tuple(map(int, first.split("-"))) > tuple(map(int, previous_t.split("-")))
        span: Any = await client.xrange(f"{{{prefix}}}:logs", first, last)
        assert len(span) == n
        levels = Counter(f"l{e[1][b'l'].decode()}" for e in span)
        assert {k: int(block[k.encode()]) for k in levels} == levels
        total += n
        previous_t = last
    assert total == 50


async def test_index_skips_blocks_within_one_bounded_call(
    client: aioredis.Redis, prefix: str
) -> None:
    # one call of 10 entries: without the index a rare token 200 entries back is not reached
    on, off = stores(client, prefix, scan_budget=10, max_scan=10)
    await load(on, make_logs(300))
    wide = IndexOptions(block_entries=8, bloom_bytes=256, block_budget=100)
    on = RedisStreamLogStore(client, instance="i1", prefix=prefix, options=on._options, index=wide)
    plan = token_plan({"r40"})
    found = await on.search(plan, LogQuery(limit=10))
    assert [e.message.split()[1] for e in found.items] == ["r40"]
    missed = await off.search(plan, LogQuery(limit=10))
    assert missed.items == []
    assert missed.next_cursor is not None


async def test_a_level_search_reads_only_the_postings_of_its_levels(
    client: aioredis.Redis, prefix: str
) -> None:
    on, off = stores(client, prefix, scan_budget=20, max_scan=20)
    levels = [LogLevel.ERROR if i % 30 == 0 else LogLevel.INFO for i in range(300)]
    levels[7] = levels[8] = LogLevel.WARNING
    await on.append_many([NewLog(message=f"s{i}", level=lv) for i, lv in enumerate(levels)])
    plan = PLANS["level"]
    page = await on.search(plan, LogQuery(limit=100))
    assert [e.message for e in page.items] == [f"s{i}" for i in reversed(range(0, 300, 30))]
    assert page.next_cursor is None
    short = await off.search(plan, LogQuery(limit=100))
    assert short.items == []  # 20 entries scanned (s299-s280), no error among them
    assert short.next_cursor is not None
    assert await client.xlen(f"{{{prefix}}}:ixl") == 12


async def test_non_ascii_case_is_left_to_the_exact_check(
    client: aioredis.Redis, prefix: str
) -> None:
    on, off = stores(client, prefix)
    await on.append_many([NewLog(message=f"ascii {i}") for i in range(5)])
    await on.append(NewLog(message="ÉCOLE \u212aelvin"))  # the same block, another batch
    await on.append(NewLog(message="plain words"))
    for store in (on, off):
        for token in ("école", "kelvin"):
            page = await store.search(token_plan({token}), LogQuery())
            assert [e.message for e in page.items] == ["ÉCOLE \u212aelvin"], token


async def test_one_log_appends_use_the_sparse_bits_and_are_found(
    client: aioredis.Redis, prefix: str
) -> None:
    on, _ = stores(client, prefix)
    for i in range(30):
        await on.append(NewLog(message=f"single s{i}", attributes={"k": f"v{i}"}))
    for token in ("s0", "s17", "v29"):
        page = await on.search(token_plan({token}), LogQuery())
        assert len(page.items) == 1, token


async def test_a_sparse_batch_of_many_words_is_written_in_parts(
    client: aioredis.Redis, prefix: str
) -> None:
    store = RedisStreamLogStore(client, instance="i1", prefix=prefix, index=IndexOptions())
    logs = [NewLog(message=f"a{i} b{i} c{i} d{i}") for i in range(400)]
    assert store._hasher.batch_bits(logs)[:1] == b"s"  # 3,200 words: sparse, 7 BITFIELD parts
    await store.append_many(logs)
    for token in ("a0", "b199", "d399"):
        page = await store.search(token_plan({token}), LogQuery())
        assert len(page.items) == 1, token


async def test_retention_drops_blocks_with_their_entries(
    client: aioredis.Redis, prefix: str
) -> None:
    options = StoreOptions(retention=Retention(max_entries=40))
    store = RedisStreamLogStore(client, instance="i1", prefix=prefix, options=options, index=SMALL)
    for i in range(60):
        await store.append_many(make_logs(10, seed=i))
    head: Any = await client.xrange(f"{{{prefix}}}:logs", "-", "+", count=1)
    first = head[0][0].decode()
    members: Any = await client.zrange(f"{{{prefix}}}:ixb", 0, -1)
    assert len(members) <= 8
    oldest: Any = await client.hgetall(f"{{{prefix}}}:ix:{int(members[0])}")
    assert tuple(map(int, oldest[b"t"].split(b"-"))) >= tuple(map(int, first.split("-")))
    keys = await client.keys(f"{{{prefix}}}:ix:f:*")
    assert len(keys) == len(members)
    postings: Any = await client.xrange(f"{{{prefix}}}:ixl", "-", "+", count=1)
    assert tuple(map(int, postings[0][0].split(b"-"))) >= tuple(map(int, first.split("-")))


# -- counts -----------------------------------------------------------------------------------


def expected_counts(entries: list[LogEntry], plan: Plan, spec: CountSpec, first_ms: int,
                    step_ms: int, buckets: int) -> dict[tuple[str, ...], list[int]]:  # fmt: skip
    from aygolog.store.counting import label_value as label_of

    out: dict[tuple[str, ...], list[int]] = {}
    for entry in entries:
        ms = int(entry.id.split("-")[0])
        if not plan.matches(entry):
            continue
        if plan.since and ms < plan.since.timestamp() * 1000:
            continue
        if plan.until and ms > plan.until.timestamp() * 1000:
            continue
        labels = tuple(label_of(entry, f) for f in spec.by)
        series = out.setdefault(labels, [0] * buckets)
        series[(ms - ms % step_ms - first_ms) // step_ms if step_ms else 0] += 1
    return out


async def all_entries(store: RedisStreamLogStore) -> list[LogEntry]:
    page = await store.search(Plan(), LogQuery(limit=1000, direction=Direction.FORWARD))
    assert page.next_cursor is None
    return page.items


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


COUNTS = [
    ("by level per minute", Plan(count=CountSpec(("level",), timedelta(minutes=1))), (0, 40)),
    ("by service+instance 2m",
     Plan(count=CountSpec(("service", "instance"), timedelta(minutes=2))), (7, 33)),
    ("total", Plan(count=CountSpec()), (0, 60)),
    ("30 s step", Plan(count=CountSpec(("level",), timedelta(seconds=30))), (3, 17)),
    ("filtered", Plan(predicate=lambda e: e.level is LogLevel.ERROR, severities=frozenset({4}),
                      count=CountSpec(("service",), timedelta(minutes=5))), (0, 59)),
    ("exact level", Plan(predicate=lambda e: e.level is LogLevel.ERROR, severities=frozenset({4}),
                         exact=True, count=CountSpec(("level",), timedelta(minutes=1))), (0, 59)),
    ("exact service", Plan(predicate=lambda e: e.service == "auth", services=frozenset({"auth"}),
                           exact=True, count=CountSpec(("service", "level"),
                                                       timedelta(minutes=2))), (1, 50)),
    ("exact both", Plan(predicate=lambda e: e.level is LogLevel.INFO and e.service != "auth",
                        severities=frozenset({2}), services=frozenset({"shop", ""}), exact=True,
                        count=CountSpec(("instance",), timedelta(minutes=3))), (0, 60)),
    ("by attribute", Plan(count=CountSpec(("status",), timedelta(minutes=1))), (2, 22)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "plan", "minutes"), COUNTS, ids=[c[0] for c in COUNTS])
async def test_counts_agree_with_the_entries_index_on_and_off(
    client: aioredis.Redis, prefix: str, name: str, plan: Plan, minutes: tuple[int, int]
) -> None:
    on, off = stores(client, prefix)
    # 300 entries 11.5 s apart: ~57 minutes, blocks of 8+ entries span 1-3 minutes
    await load(on, make_logs(300), spread_ms=11_500)
    since_ms = T0 + minutes[0] * 60_000 + 1234
    until_ms = T0 + minutes[1] * 60_000 + 4321
    plan = Plan(predicate=plan.predicate, severities=plan.severities, services=plan.services,
                exact=plan.exact, count=plan.count, since=at(since_ms),
                until=at(until_ms))  # fmt: skip
    entries = await all_entries(on)
    now = at(until_ms + 10**7)
    for store in (on, off):
        result = await store.count_plan(plan, now=now)
        assert result.complete
        step_ms = int(result.step_seconds * 1000) if result.step_seconds else 0
        first_ms = int(result.buckets[0].timestamp() * 1000)
        want = expected_counts(entries, plan, plan.count or CountSpec(), first_ms, step_ms,
                               len(result.buckets))  # fmt: skip
        got = {tuple(s.labels[f] for f in (plan.count or CountSpec()).by): s.counts
               for s in result.series}  # fmt: skip
        assert got == want
        assert sum(sum(v) for v in got.values()) > 0


async def test_count_default_range_is_the_hour_before_until(
    client: aioredis.Redis, prefix: str
) -> None:
    on, _ = stores(client, prefix)
    await load(on, make_logs(300), spread_ms=30_000)  # 150 minutes
    until = at(T0 + 150 * 60_000)
    result = await on.count_plan(Plan(count=CountSpec((), timedelta(minutes=10)), until=until))
    assert len(result.buckets) == 7
    assert result.buckets[0] == at(T0 + 90 * 60_000)
    assert sum(result.series[0].counts) == 120


async def test_a_count_with_too_many_buckets_is_refused(
    client: aioredis.Redis, prefix: str
) -> None:
    from aygolog.errors import ValidationError

    on, _ = stores(client, prefix)
    plan = Plan(count=CountSpec((), timedelta(milliseconds=1)), since=at(T0), until=at(T0 + 10**6))
    with pytest.raises(ValidationError) as caught:
        await on.count_plan(plan)
    assert caught.value.errors[0].field == "step"


# -- the filter itself ------------------------------------------------------------------------


def test_bloom_false_positive_rate_is_what_the_model_says() -> None:
    options = IndexOptions(bloom_bytes=4096)
    hasher = BloomHasher(options)
    words = [0] * (options.bloom_bytes // 4)
    present = [f"tok{i}" for i in range(2000)]
    for token in present:
        w1, m1, w2, m2 = hasher.probe(token)
        words[w1] |= m1
        words[w2] |= m2

    def passes(token: str) -> bool:
        w1, m1, w2, m2 = hasher.probe(token)
        return words[w1] & m1 == m1 and words[w2] & m2 == m2

    assert all(map(passes, present))
    absent = [f"other{i}" for i in range(200_000)]
    passed = sum(map(passes, absent)) / len(absent)
    model = false_positive_rate(options, len(present))
    assert 0.5 * model < passed < 1.5 * model, (passed, model)
    assert passed < 0.01


def test_random_tokens_pass_absent_filters_as_the_model_says() -> None:
    # hex ids (request ids, trace ids): the tokens that a CRC must not cluster
    rng = random.Random(7)
    options = IndexOptions(bloom_bytes=4096)
    hasher = BloomHasher(options)
    words = [0] * (options.bloom_bytes // 4)
    for _ in range(2000):
        w1, m1, w2, m2 = hasher.probe(f"{rng.getrandbits(128):032x}")
        words[w1] |= m1
        words[w2] |= m2
    absent = [hasher.probe(f"{rng.getrandbits(128):032x}") for _ in range(100_000)]
    passed = sum(words[a] & b == b and words[c] & d == d for a, b, c, d in absent) / 100_000
    model = false_positive_rate(options, 2000)
    assert 0.5 * model < passed < 1.5 * model, (passed, model)


def test_the_filter_hash_is_pinned() -> None:
    # the hash is the filters' on-disk format: changing it must bump FILTER_FORMAT (and say so
    # in docs/search-index.md), as stored filters would stop matching their tokens
    assert FILTER_FORMAT == 2
    probe = BloomHasher(IndexOptions()).probe
    assert probe("error") == (15473, 3221225544, 4474, 2151694340)
    assert probe("timeout") == (13714, 42467344, 11553, 33882120)
    for token in ("a", "error", "é", "x" * 100):
        w1, m1, w2, m2 = probe(token)
        assert m1.bit_count() == m2.bit_count() == 4
        assert 0 <= w1 < 16384
        assert 0 <= w2 < 16384


def test_filters_past_the_hash_width_are_refused() -> None:
    IndexOptions(bloom_bytes=512 * 1024)
    with pytest.raises(ValueError, match="at most"):
        IndexOptions(bloom_bytes=1024 * 1024)


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_the_ascii_tokenizer_is_the_regex_one(text: str) -> None:
    hasher = BloomHasher(IndexOptions(bloom_bytes=4096))
    logs = [NewLog(message=text)]
    expected = BloomHasher(IndexOptions(bloom_bytes=4096))
    words: dict[int, int] = {}
    for token in tokens(text):
        w1, m1, w2, m2 = expected.probe(token)
        words[w1] = words.get(w1, 0) | m1
        words[w2] = words.get(w2, 0) | m2
    bits = hasher.batch_bits(logs)
    assert bits[:1] == b"s"
    pairs = {int.from_bytes(bits[i : i + 4], "big"): int.from_bytes(bits[i + 4 : i + 8], "big")
             for i in range(1, len(bits), 8)}  # fmt: skip
    assert pairs == words
