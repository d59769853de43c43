"""Query latency of `RedisStreamLogStore` over 1,000,000 entries, 1% of them errors.

    .venv/bin/python benchmarks/store_query.py [--redis-url URL] [--entries 1000000] [--runs 50]

Fills a fresh stream, then times each query shape `--runs` times (median, p95), one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

import redis.asyncio as aioredis

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import median, percentile, redis_target, sample_logs
from aygolog.models import LogLevel, LogQuery
from aygolog.store import RedisStreamLogStore, Retention, StoreOptions

QUERIES = {
    "newest 100, no filter": LogQuery(limit=100),
    "newest 100, level=error (1%)": LogQuery(levels=frozenset({LogLevel.ERROR}), limit=100),
    "newest 100, min_level=warning (1%)": LogQuery(min_level=LogLevel.WARNING, limit=100),
    "newest 100, service=auth (20%)": LogQuery(services=frozenset({"auth"}), limit=100),
    "newest 100, text 'user u42' (~2%)": LogQuery(text="user u42", limit=100),
    "newest 100, level=error + attribute status=500": LogQuery(
        levels=frozenset({LogLevel.ERROR}), attributes={"status": "500"}, limit=100
    ),
}


async def run(url: str, entries: int, runs: int) -> list[tuple[str, float, float, int]]:
    client = aioredis.Redis.from_url(url)
    options = StoreOptions(retention=Retention(max_entries=None))
    prefix = f"q{uuid.uuid4().hex[:8]}"
    store = RedisStreamLogStore(client, instance="bench", prefix=prefix, options=options)
    logs = sample_logs(entries)
    start = time.perf_counter()
    for i in range(0, entries, 1000):
        await store.append_many(logs[i : i + 1000])
    print(f"filled {entries:,} entries in {time.perf_counter() - start:.1f} s", flush=True)
    results = []
    for name, query in QUERIES.items():
        timings = []
        count = 0
        for _ in range(runs):
            t0 = time.perf_counter()
            page = await store.query(query)
            timings.append((time.perf_counter() - t0) * 1000)
            count = len(page.items)
        results.append((name, median(timings), percentile(timings, 95), count))
        print(f"{name}: median {median(timings):.1f} ms, p95 {percentile(timings, 95):.1f} ms,"
              f" {count} items", flush=True)  # fmt: skip
    await client.delete(f"{{{prefix}}}:logs")
    await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with redis_target(args.redis_url) as url:
        results = asyncio.run(run(url, args.entries, args.runs))
    print()
    print(f"| query over {args.entries:,} entries | median ms | p95 ms | items |")
    print("|---|---:|---:|---:|")
    for name, med, p95, count in results:
        print(f"| {name} | {med:.1f} | {p95:.1f} | {count} |")


if __name__ == "__main__":
    main()
