"""Ingest throughput of `RedisStreamLogStore.append_many`, next to `redis-benchmark -P 64` XADD.

    .venv/bin/python benchmarks/store_ingest.py [--redis-url URL] [--seconds 3]

Starts a private Redis-compatible server unless --redis-url is given, so both figures come from
the same server in the same run. "1 writer" awaits each batch before sending the next; "4
writers" keeps four batches in flight on a connection pool, the way a Log API instance serving
several clients does (the client encodes one batch while Redis runs another).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import time
import uuid
from urllib.parse import urlparse

import redis.asyncio as aioredis

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import redis_target, sample_logs
from aygolog.store import RedisStreamLogStore


async def measure(url: str, batch: int, writers: int, seconds: float) -> float:
    """Logs per second for one batch size and writer count."""
    client = aioredis.Redis.from_url(url, max_connections=writers + 2)
    prefix = f"b{uuid.uuid4().hex[:8]}"
    store = RedisStreamLogStore(client, instance="bench", prefix=prefix)
    logs = sample_logs(batch)
    await store.append_many(logs)  # load the script, warm up
    stored = 0
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal stored
        while time.perf_counter() < deadline:
            await store.append_many(logs)
            stored += batch

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - start
    total = (await store.stats()).total
    assert total == stored + batch, f"counted {stored + batch} logs but the store holds {total}"
    await client.delete(f"{{{prefix}}}:logs")  # free the memory between runs
    await client.aclose()
    return stored / elapsed


def redis_benchmark_xadd(url: str) -> float | None:
    """`redis-benchmark -P 64` XADD of one small field: Redis's own ceiling on this machine."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return None
    target = urlparse(url)
    out = subprocess.run(
        [tool, "-h", target.hostname or "127.0.0.1", "-p", str(target.port or 6379),
         "-n", "1000000", "-P", "64", "-q", "XADD", "{rb}:bench", "MAXLEN", "~", "1000000",
         "*", "d", "x" * 120],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.findall(r"([\d.]+) requests per second", out.stdout.replace("\r", "\n"))
    return float(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with redis_target(args.redis_url) as url:
        rows = []
        for batch in (1, 100, 1000):
            for writers in (1, 4):
                rate = asyncio.run(measure(url, batch, writers, args.seconds))
                rows.append((batch, writers, rate))
                print(f"append_many({batch}) with {writers} writer(s): {rate:,.0f} logs/s",
                      flush=True)  # fmt: skip
        xadd = redis_benchmark_xadd(url)
    print()
    print("| batch size | writers | logs/s |")
    print("|---:|---:|---:|")
    for batch, writers, rate in rows:
        print(f"| {batch} | {writers} | {rate:,.0f} |")
    if xadd is not None:
        print(f"| redis-benchmark -P 64 XADD (same server) | | {xadd:,.0f} |")


if __name__ == "__main__":
    main()
