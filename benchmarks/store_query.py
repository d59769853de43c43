"""Queries of `RedisStreamLogStore` with its search index ("after") and without ("before"),
over entries whose receive times are spread over the last 24 hours; and the index's cost.

    .venv/bin/python benchmarks/store_query.py --entries 10000000 --runs 30   # figures of record
    .venv/bin/python benchmarks/store_query.py --entries 1000000 --runs 10    # trying

What it does, in one run, on a private Redis-compatible server (or --redis-url):

1. Loads `--entries` entries without the index, then deletes them and loads the same entries
   with it: load time and `INFO memory` used_memory of each. The loader calls
   `RedisStreamLogStore.append_at` (the append's own Lua script, batches of 1,000) with explicit
   stream ids `--hours` apart in total, ending now: receive times spread evenly over the last
   24 hours, so `since=now-24h` means all of them. Each entry: ~110-byte message
   ("request handled: GET /api/items/<n> in <ms> ms for user u<0-4999>", 1 in 10,000 also
   "checkout_declined"), service one of 5 in turn, level error 1% (else info), attributes
   status (500 for errors, else 200) and request_id (a unique "r" + 12 hex digits).
2. The query shapes, newest 100 first, `--runs` times each with the index (median, p95, Redis
   CPU per query) and `--before-runs` times without it: the same stream read by a store made
   with `index=None`, which scans as before the index, with today's default bounds: a query
   reads at most `max_scan` = 2,000,000 entries, then answers with what it found and a cursor
   ("partial" in the table: at 10,000,000 entries a rare token is then not found).
3. The index's false-positive rate: tokens that are in no entry, checked against the filters of
   up to 300 blocks (what a rare-token query pays for each block it cannot skip).
4. `append_many(1000)` logs/s with and without the index (fresh streams, alternating, same run),
   and the p99 of one-log `append` while a rare-token search runs in a loop (another process
   with its own client) vs without.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import loadavg, percentile, redis_target, run_header, sample_logs
from aygolog.models import LogLevel, LogQuery, NewLog
from aygolog.query import plan_for
from aygolog.store import RedisStreamLogStore, Retention, StoreOptions
from aygolog.store.index import BloomHasher, IndexOptions, false_positive_rate

SERVICES = ("api", "auth", "billing", "storage", "web")
BATCH = 1000


def make_batch(start: int, count: int, rng: random.Random) -> list[NewLog]:
    """Entries `start` .. `start + count - 1` of the benchmark's data."""
    logs = []
    for i in range(start, start + count):
        error = rng.random() < 0.01
        rare = " checkout_declined" if i % 10_000 == 4_321 else ""
        logs.append(
            NewLog(
                message=f"request handled: GET /api/items/{rng.randrange(10**6)} in "
                f"{rng.randrange(1, 900)} ms for user u{rng.randrange(5000)}{rare}",
                level=LogLevel.ERROR if error else LogLevel.INFO,
                service=SERVICES[i % len(SERVICES)],
                attributes={
                    "status": 500 if error else 200,
                    "request_id": f"r{rng.getrandbits(48):012x}",
                },
            )
        )
    return logs


async def used_memory(client: aioredis.Redis) -> int:
    info: dict[str, Any] = await client.info("memory")
    return int(info["used_memory"])


async def redis_cpu(client: aioredis.Redis) -> float:
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    batch = []
    async for key in client.scan_iter(match=f"{{{prefix}}}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            await client.unlink(*batch)
            batch = []
    if batch:
        await client.unlink(*batch)


async def load(
    store: RedisStreamLogStore, entries: int, start_ms: int, span_ms: int
) -> tuple[float, str]:
    """Load the benchmark data; seconds taken, and the request id of the entry at 40%."""
    rng = random.Random(11)
    wanted_at = int(entries * 0.4)
    needle = ""
    last_ms, seq = -1, 0
    began = time.perf_counter()
    for first in range(0, entries, BATCH):
        count = min(BATCH, entries - first)
        logs = make_batch(first, count, rng)
        ids = []
        for i in range(first, first + count):
            ms = start_ms + i * span_ms // entries
            seq = seq + 1 if ms == last_ms else 0
            last_ms = ms
            ids.append(f"{ms}-{seq}")
        if first <= wanted_at < first + count:
            needle = str(logs[wanted_at - first].attributes["request_id"])
        await store.append_at(logs, ids)
        if first and first % 1_000_000 == 0:
            print(f"  loaded {first:,} in {time.perf_counter() - began:.0f} s", flush=True)
    return time.perf_counter() - began, needle


async def time_query(
    store: RedisStreamLogStore, query: LogQuery, runs: int, client: aioredis.Redis, count: bool
) -> tuple[float, float, float, str]:
    """Median and p95 ms, Redis CPU ms per run, and how many items (or counted entries),
    with " partial" when a scan bound stopped it."""
    timings = []
    items = ""
    cpu0 = await redis_cpu(client)
    for _ in range(runs):
        t0 = time.perf_counter()
        if count:
            result = await store.count(query)
            items = f"{sum(sum(s.counts) for s in result.series)}"
            items += "" if result.complete else " partial"
        else:
            page = await store.query(query)
            items = f"{len(page.items)}"
            items += " partial" if page.next_cursor and len(page.items) < query.limit else ""
        timings.append((time.perf_counter() - t0) * 1000)
    cpu = (await redis_cpu(client) - cpu0) * 1000 / runs
    return statistics.median(timings), percentile(timings, 95), cpu, items


async def ingest_rate(url: str, index: IndexOptions | None, seconds: float) -> float:
    client = aioredis.Redis.from_url(url)
    prefix = f"i{uuid.uuid4().hex[:8]}"
    store = RedisStreamLogStore(client, instance="bench", prefix=prefix, index=index)
    logs = sample_logs(BATCH)
    await store.append_many(logs)
    stored = 0
    cpu0 = time.process_time()
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        await store.append_many(logs)
        stored += BATCH
    rate = stored / (time.perf_counter() - began)
    client_cpu = (time.process_time() - cpu0) / stored * 1e6
    await delete_prefix(client, prefix)
    await client.aclose()
    print(
        f"  append_many(1000) index {'on ' if index else 'off'}: {rate:,.0f} "
        f"logs/s, client CPU {client_cpu:.1f} us/log",
        flush=True,
    )
    return rate


def search_loop(url: str, prefix: str, query: LogQuery, stop: Any, done: Any) -> None:
    """Run `query` until `stop` is set (in a process of its own: no GIL shared with the
    appends being timed)."""

    async def loop() -> None:
        client = aioredis.Redis.from_url(url)
        store = RedisStreamLogStore(client, instance="bench", prefix=prefix)
        while not stop.is_set():
            await store.query(query)
            with done.get_lock():
                done.value += 1
        await client.aclose()

    asyncio.run(loop())


async def append_p99(url: str, seconds: float) -> tuple[float, float, int]:
    client = aioredis.Redis.from_url(url)
    prefix = f"p{uuid.uuid4().hex[:8]}"
    store = RedisStreamLogStore(client, instance="bench", prefix=prefix)
    log = sample_logs(1)[0]
    await store.append(log)
    timings = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        await store.append(log)
        timings.append((time.perf_counter() - t0) * 1000)
    await delete_prefix(client, prefix)
    await client.aclose()
    return statistics.median(timings), percentile(timings, 99), len(timings)


async def false_positives(
    client: aioredis.Redis, prefix: str, options: IndexOptions
) -> tuple[float, int, float]:
    """Measured rate over up to 300 blocks, the blocks checked, and the model's rate at the
    blocks' mean distinct-token count estimated from their filters' fill."""
    hasher = BloomHasher(options)
    members: Any = await client.zrange(f"{{{prefix}}}:ixb", 0, -1)
    sample = members[:: max(1, len(members) // 300)][:300]
    absent = [hasher.probe(f"absent{i}zz") for i in range(1000)]
    passed = checked = 0
    fill = 0.0
    for member in sample:
        raw: Any = await client.get(f"{{{prefix}}}:ix:f:{int(member)}")
        if raw is None:
            continue
        swapped = [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4)]
        fill += sum(bin(w).count("1") for w in swapped) / (len(swapped) * 32)
        for w1, m1, w2, m2 in absent:
            passed += swapped[w1] & m1 == m1 and swapped[w2] & m2 == m2
        checked += 1
    rate = passed / (checked * len(absent)) if checked else 0.0
    return rate, checked, fill / checked if checked else 0.0


async def run(args: argparse.Namespace, url: str) -> None:
    client = aioredis.Redis.from_url(url)
    entries = args.entries
    now_ms = int(time.time() * 1000)
    span_ms = int(args.hours * 3_600_000)
    start_ms = now_ms - span_ms
    options = StoreOptions(retention=Retention(max_entries=None))
    index = IndexOptions()
    print(f"load average before loading: {loadavg()}", flush=True)

    # 1. load without, then with the index
    plain = f"q{uuid.uuid4().hex[:8]}"
    base = await used_memory(client)
    store_off = RedisStreamLogStore(
        client, instance="bench", prefix=plain, options=options, index=None
    )
    seconds_off, _ = await load(store_off, entries, start_ms, span_ms)
    memory_off = await used_memory(client) - base
    print(
        f"loaded {entries:,} without the index in {seconds_off:.1f} "
        f"s ({entries / seconds_off:,.0f} logs/s); used_memory +{memory_off / 2**20:,.1f} "
        "MiB",
        flush=True,
    )
    await delete_prefix(client, plain)
    await asyncio.sleep(1)
    prefix = f"q{uuid.uuid4().hex[:8]}"
    base = await used_memory(client)
    store_on = RedisStreamLogStore(
        client, instance="bench", prefix=prefix, options=options, index=index
    )
    seconds_on, needle = await load(store_on, entries, start_ms, span_ms)
    memory_on = await used_memory(client) - base
    blocks = await client.zcard(f"{{{prefix}}}:ixb")
    print(
        f"loaded {entries:,} with the index in {seconds_on:.1f} s "
        f"({entries / seconds_on:,.0f} logs/s); used_memory +{memory_on / 2**20:,.1f} "
        f"MiB; {blocks:,} blocks",
        flush=True,
    )
    index_share = (memory_on - memory_off) / memory_off
    print(
        f"index memory: {(memory_on - memory_off) / 2**20:,.1f} MiB "
        f"= {index_share:.3f} bytes per byte of stream ({(memory_on - memory_off) / entries:.1f} "
        "bytes per entry)",
        flush=True,
    )

    # 2. queries
    today = StoreOptions(retention=Retention(max_entries=None))
    store_before = RedisStreamLogStore(
        client, instance="bench", prefix=prefix, options=today, index=None
    )
    since = datetime.fromtimestamp(now_ms / 1000, UTC) - timedelta(hours=24)
    shapes: list[tuple[str, LogQuery, bool]] = [
        ("a token that occurs once (request_id:<id>)",
         LogQuery(query=f"request_id:{needle}", limit=100), False),
        ("a token in 0.01% (checkout_declined)", LogQuery(query="checkout_declined", limit=100),
         False),
        ("level:error (1%)", LogQuery(query="level:error", limit=100), False),
        ("level:error status:500", LogQuery(query="level:error status:500", limit=100), False),
        ('a phrase: "user u42"', LogQuery(query='"user u42"', limit=100), False),
        ("service:auth (20%)", LogQuery(query="service:auth", limit=100), False),
        ("newest 100, no filter", LogQuery(limit=100), False),
        ("| count() by (level) step 1m, last 24 h",
         LogQuery(query="| count() by (level) step 1m", since=since), True),
    ]  # fmt: skip
    rows = []
    for name, query, count in shapes:
        plan = plan_for(query)
        after = await time_query(store_on, query, args.runs, client, count)
        before = await time_query(store_before, query, args.before_runs, client, count)
        rows.append((name, after, before))
        print(
            f"{name}: index {after[0]:.1f} ms (p95 {after[1]:.1f}, Redis "
            f"CPU {after[2]:.1f} ms), {after[3]} | without {before[0]:.1f} "
            f"ms (p95 {before[1]:.1f}, Redis CPU {before[2]:.1f} ms), "
            f"{before[3]}  [clauses {len(plan.clauses)}, severities {plan.severities}]",
            flush=True,
        )

    # 3. the filter's false positives
    measured, checked, fill = await false_positives(client, prefix, index)
    print(
        f"bloom false positives: {measured:.4f} over {checked} blocks "
        f"x 1,000 absent tokens (mean fill {fill:.3f} of the bits)",
        flush=True,
    )
    print(
        f"model: {false_positive_rate(index, 4096 * 3):.4f} at 3 new tokens per entry", flush=True
    )

    # 4. write-path cost and interference
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(2):
        for on in (False, True):
            rates[on].append(await ingest_rate(url, index if on else None, args.seconds))
    off_rate, on_rate = statistics.mean(rates[False]), statistics.mean(rates[True])
    quiet = await append_p99(url, args.seconds)
    spawn = multiprocessing.get_context("spawn")
    stop, done = spawn.Event(), spawn.Value("i", 0)
    rare = LogQuery(query=f"request_id:{needle}", limit=100)
    searcher = spawn.Process(target=search_loop, args=(url, prefix, rare, stop, done))
    searcher.start()
    for _ in range(300):  # until the searcher (a fresh interpreter) has run once
        if done.value or not searcher.is_alive():
            break
        await asyncio.sleep(0.1)
    busy = await append_p99(url, args.seconds)
    stop.set()
    searcher.join()
    await delete_prefix(client, prefix)
    await client.aclose()

    print()
    print(
        f"| query over {entries:,} entries (24 h) | index median ms "
        "| p95 | Redis CPU ms | without index median ms | p95 | Redis "
        "CPU ms | items (index / without) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, after, before in rows:
        print(
            f"| {name} | {after[0]:.1f} | {after[1]:.1f} | {after[2]:.1f} "
            f"| {before[0]:.1f} | {before[1]:.1f} | {before[2]:.1f} | "
            f"{after[3]} / {before[3]} |"
        )
    print()
    print(f"| load of {entries:,} | seconds | logs/s | used_memory MiB |")
    print("|---|---:|---:|---:|")
    print(
        f"| without index | {seconds_off:.1f} | {entries / seconds_off:,.0f} "
        f"| {memory_off / 2**20:,.1f} |"
    )
    print(
        f"| with index | {seconds_on:.1f} | {entries / seconds_on:,.0f} "
        f"| {memory_on / 2**20:,.1f} |"
    )
    print(
        f"index: {index_share:.3f} bytes per byte of stream; {blocks:,} "
        f"blocks of ~{index.block_entries} entries, {index.bloom_bytes} "
        f"B filters, 4 bits in each of 2 words per token; false "
        f"positives {measured:.4f}"
    )
    print(
        f"append_many(1000), 1 writer, {args.seconds:.0f} s x2 each: "
        f"without index {off_rate:,.0f} logs/s, with {on_rate:,.0f} "
        f"({on_rate / off_rate:.2f}x)"
    )
    print(
        f"append (one log) {args.seconds:.0f} s: alone median {quiet[0]:.3f} "
        f"ms p99 {quiet[1]:.3f} ms ({quiet[2]:,} calls); with a rare-token "
        f"search in a loop ({done.value} searches) median {busy[0]:.3f} "
        f"ms p99 {busy[1]:.3f} ms ({busy[1] / quiet[1]:.2f}x)"
    )
    print(f"load average after: {loadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--before-runs", type=int, default=5, help="runs without the index (full scans are slow)"
    )
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="per ingest measurement")
    args = parser.parse_args()
    print(run_header("benchmarks/store_query.py " + " ".join(sys.argv[1:])))
    with redis_target(args.redis_url) as url:
        asyncio.run(run(args, url))


if __name__ == "__main__":
    main()
