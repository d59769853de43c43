"""The query language's contract: every form of query and count, run against the in-memory and
the Redis store (the `store` fixture) on the same data, each held to the same expected answer.

The expected answers are written out by hand (they say what the language means); the counts
with a `step` are computed from the stored entries' own receive times, which differ from store
to store.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from aygolog.errors import ValidationError
from aygolog.models import CountResult, LogEntry, LogLevel, LogQuery, NewLog
from aygolog.query import QuerySyntaxError
from aygolog.store import LogStore
from aygolog.store.base import id_ms

E, W, INF, C, D = LogLevel.ERROR, LogLevel.WARNING, LogLevel.INFO, LogLevel.CRITICAL, LogLevel.DEBUG

DATA = [  # 1-based numbers below refer to this order (stored oldest first)
    NewLog(message="GET /api/orders took 1500ms", level=INF, service="shop", trace_id="abc123",
           attributes={"path": "/api/orders", "status": 200, "dur": 1500.5}),
    NewLog(message="Disk FULL on node-1", level=E, service="storage",
           attributes={"node": 1, "retry": True, "region": "eu"}),
    NewLog(message="user ana logged in", level=INF, service="auth", attributes={"user": "ana"}),
    NewLog(message="payment failed: card declined", level=C, service="billing",
           attributes={"status": 502, "user": "bob"}),
    NewLog(message="timeout calling payments", level=W, service="shop",
           attributes={"status": 504, "path": "/internal/pay"}),
    NewLog(message="no service here", level=D),
    NewLog(message="Timeouts are rising", level=W, service="db", attributes={"status": "n/a"}),
    NewLog(message="naïve café crème", level=INF, service="shop"),
]  # fmt: skip


async def load(store: LogStore) -> list[LogEntry]:
    """DATA in two batches a few ms apart (for time ranges); the entries, oldest first."""
    first = await store.append_many(DATA[:4])
    await asyncio.sleep(0.01)
    second = await store.append_many(DATA[4:])
    ids = first.ids + second.ids
    page = await store.query(LogQuery(limit=1000))
    by_id = {e.id: e for e in page.items}
    return [by_id[i] for i in ids]


async def numbers(store: LogStore, entries: list[LogEntry], q: str, **kw: object) -> list[int]:
    """The 1-based DATA numbers a query returns, in the order returned, following cursors."""
    where = {e.id: n for n, e in enumerate(entries, start=1)}
    found: list[int] = []
    cursor: str | None = None
    while True:
        query = LogQuery(query=q or None, limit=3, cursor=cursor, **kw)  # type: ignore[arg-type]
        page = await store.query(query)
        found += [where[e.id] for e in page.items]
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


ALL = [8, 7, 6, 5, 4, 3, 2, 1]

SEARCHES = [
    # words: whole tokens, any case; phrases; regexes in the message
    ("timeout", [5]),
    ("TIMEOUT", [5]),
    ("timeouts", [7]),
    ('~"timeout"', [7, 5]),
    ('"card declined"', [4]),
    ('"declined card"', []),
    ("card declined", [4]),
    ("café", [8]),
    ("node", [2]),
    # NOT, OR, parentheses
    ("-timeout level:warning", [7]),
    ("NOT level:info", [7, 6, 5, 4, 2]),
    ("timeout OR disk", [5, 2]),
    ("(timeout OR disk) level:error", [2]),
    # fields and comparisons
    ("level:error", [2]),
    ("level>=warning", [7, 5, 4, 2]),
    ("level<info", [6]),
    ("service:shop", [8, 5, 1]),
    ("service:(auth OR billing)", [4, 3]),
    ("instance:inst-a", ALL),
    ("trace_id:abc123", [1]),
    ("status:502", [4]),
    ("status:>=500", [5, 4]),
    ("dur:>1000", [1]),
    ("retry:true", [2]),
    ("node:1", [2]),
    ("region:eu", [2]),
    ('path:~"^/api/"', [1]),
    # exists
    ("user:*", [4, 3]),
    ("-user:* level:info", [8, 1]),
    # everything, and limit
    ("", ALL),
    ("* | limit 2", [8, 7]),
]


@pytest.mark.parametrize(("text", "expected"), SEARCHES, ids=[s[0] or "empty" for s in SEARCHES])
async def test_every_query_form(store: LogStore, text: str, expected: list[int]) -> None:
    entries = await load(store)
    assert await numbers(store, entries, text) == expected


async def test_the_query_ands_with_the_parameters(store: LogStore) -> None:
    entries = await load(store)
    assert await numbers(store, entries, "service:shop", min_level=W) == [5]
    assert await numbers(store, entries, "timeout OR disk", text="DISK") == [2]
    assert await numbers(store, entries, "-timeout", services=frozenset({"shop", "db"})) == [
        8,
        7,
        1,
    ]


async def test_time_ranges(store: LogStore) -> None:
    entries = await load(store)
    split = entries[4].received_at  # the first of the second batch
    low = _time_text(split)
    high = _time_text(split + timedelta(days=1))
    assert await numbers(store, entries, f"_time:[{low}, {high})") == [8, 7, 6, 5]
    assert await numbers(store, entries, f"level:warning _time:[{low}, {high})") == [7, 5]
    before = _time_text(entries[3].received_at - timedelta(days=1))
    assert await numbers(store, entries, f"_time:[{before}, {low})") == [4, 3, 2, 1]
    assert await numbers(store, entries, "_time:1h") == ALL
    # with `since`: the intersection
    assert await numbers(store, entries, "_time:1h", since=split) == [8, 7, 6, 5]
    forward = await numbers(store, entries, "_time:1h service:shop", direction="forward")
    assert forward == [1, 5, 8]


def _time_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def test_a_syntax_error_or_a_count_is_refused_by_query(store: LogStore) -> None:
    await load(store)
    with pytest.raises(QuerySyntaxError) as caught:
        await store.query(LogQuery(query="service:(a OR"))
    assert caught.value.errors[0].field == "query"
    with pytest.raises(ValidationError) as count:
        await store.query(LogQuery(query="| count()"))
    assert count.value.errors[0].field == "query"


def table(result: CountResult) -> dict[tuple[str, ...], list[int]]:
    return {tuple(s.labels.values()): s.counts for s in result.series}


async def test_counts_without_a_step(store: LogStore) -> None:
    await load(store)
    total = await store.count(LogQuery(query="| count()"))
    assert (total.step_seconds, len(total.buckets), table(total)) == (None, 1, {(): [8]})
    assert table(await store.count(LogQuery(query="timeout OR disk"))) == {(): [2]}
    assert table(await store.count(LogQuery(query="nothing-matches | count()"))) == {(): [0]}
    by_level = await store.count(LogQuery(query="| count() by (level)"))
    assert table(by_level) == {
        ("critical",): [1], ("debug",): [1], ("error",): [1], ("info",): [3], ("warning",): [2]
    }  # fmt: skip
    assert [s.labels["level"] for s in by_level.series] == sorted(["critical", "debug", "error",
                                                                   "info", "warning"])  # fmt: skip
    two = await store.count(LogQuery(query="level>=info | count() by (service, status)"))
    assert table(two) == {
        ("auth", ""): [1], ("billing", "502"): [1], ("db", "n/a"): [1], ("shop", ""): [1],
        ("shop", "200"): [1], ("shop", "504"): [1], ("storage", ""): [1],
    }  # fmt: skip
    assert table(await store.count(LogQuery(query="| count() by (instance)"))) == {
        ("inst-a",): [8]
    }  # fmt: skip
    assert table(await store.count(LogQuery(query="| count() by (user)", min_level=INF))) == {
        ("",): [5], ("ana",): [1], ("bob",): [1]
    }  # fmt: skip


async def test_counts_with_a_step_fall_into_epoch_aligned_buckets(store: LogStore) -> None:
    entries = await load(store)
    first, last = id_ms(entries[0].id), id_ms(entries[-1].id)
    low = datetime.fromtimestamp(first / 1000, UTC)
    high = datetime.fromtimestamp(last / 1000, UTC)
    span = f"_time:[{_time_text(low)}, {_time_text(high + timedelta(seconds=3))})"
    result = await store.count(LogQuery(query=f"{span} | count() by (level) step 1s"))
    start = first - first % 1000
    assert result.step_seconds == 1.0
    assert result.buckets[0] == datetime.fromtimestamp(start / 1000, UTC)
    gaps = {b - a for a, b in zip(result.buckets, result.buckets[1:], strict=False)}
    assert gaps == {timedelta(seconds=1)}
    # to the bucket of the range's end (3 s after the last entry, exclusive)
    assert (
        (last + 2999 - start) // 1000 + 1
        <= len(result.buckets)
        <= (last + 3000 - start) // 1000 + 1
    )
    expected: dict[tuple[str, ...], list[int]] = {}
    for e in entries:
        counts = expected.setdefault((e.level.value,), [0] * len(result.buckets))
        counts[(id_ms(e.id) - start) // 1000] += 1
    assert table(result) == expected
    assert result.complete
    # the parameters' range and the default hour
    hour = await store.count(LogQuery(query="| count() step 1m"))
    assert len(hour.buckets) in (60, 61)
    assert sum(hour.series[0].counts) == 8
    since = await store.count(LogQuery(query="| count() step 1m", since=entries[4].received_at))
    assert sum(since.series[0].counts) == 4


async def test_too_many_buckets_is_refused_naming_step(store: LogStore) -> None:
    await load(store)
    with pytest.raises(ValidationError) as caught:
        await store.count(LogQuery(query="_time:30d | count() step 1s"))
    assert caught.value.errors[0].field == "step"
