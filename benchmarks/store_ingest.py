"""Ingest throughput of `RedisStreamLogStore.append_many`, next to `redis-benchmark -P 64` XADD.

    .venv/bin/python benchmarks/store_ingest.py [--redis-url URL] [--seconds 3]

Starts a private Redis-compatible server unless --redis-url is given, so both figures come from
the same server in the same run. "1 writer" awaits each batch before sending the next; "4
writers" keeps four batches in flight on a connection pool, the way a Log API instance serving
several clients does (the client encodes one batch while Redis runs another). Each is measured
with the search index (the default) and without it (`index=None`), one after the other, and
reports the client's and Redis's CPU time per log next to the rate (CPU time is what a busy,
shared machine distorts least). `--cpu-only 1000` measures one batch size, `--rounds` times
alternating without and with the index, and prints the CPU figures only.
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
from typing import NamedTuple
from urllib.parse import urlparse

import redis.asyncio as aioredis

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import loadavg, redis_target, sample_logs
from aygolog.store import RedisStreamLogStore
from aygolog.store.index import IndexOptions


class Figures(NamedTuple):
    rate: float
    """Logs per second."""
    client_us: float
    """Client CPU (this process) per log, in microseconds."""
    redis_us: float
    """Redis CPU (INFO cpu, user + sys) per log, in microseconds."""


async def redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(url: str, batch: int, writers: int, seconds: float, index: bool) -> Figures:
    """Rate and CPU per log for one batch size and writer count, with or without the index."""
    client = aioredis.Redis.from_url(url, max_connections=writers + 2)
    prefix = f"b{uuid.uuid4().hex[:8]}"
    options = IndexOptions() if index else None
    store = RedisStreamLogStore(client, instance="bench", prefix=prefix, index=options)
    logs = sample_logs(batch)
    await store.append_many(logs)  # load the script, warm up
    stored = 0
    server_start, client_start = await redis_cpu(client), time.process_time()
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal stored
        while time.perf_counter() < deadline:
            await store.append_many(logs)
            stored += batch

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - client_start
    server_cpu = await redis_cpu(client) - server_start
    total = (await store.stats()).total
    assert total == stored + batch, f"counted {stored + batch} logs but the store holds {total}"
    keys = [key async for key in client.scan_iter(match=f"{{{prefix}}}:*")]
    await client.delete(*keys)  # free the memory between runs
    await client.aclose()
    return Figures(stored / elapsed, client_cpu / stored * 1e6, server_cpu / stored * 1e6)


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


def cpu_only(redis_url: str | None, batch: int, rounds: int, seconds: float) -> None:
    """One batch size, one writer, `rounds` times without then with the index."""
    with redis_target(redis_url) as url:
        for _ in range(rounds):
            off = asyncio.run(measure(url, batch, 1, seconds, False))
            on = asyncio.run(measure(url, batch, 1, seconds, True))
            print(f"append_many({batch}): client/Redis CPU per log {off.client_us:.2f}/"
                  f"{off.redis_us:.2f} us without the index, {on.client_us:.2f}/"
                  f"{on.redis_us:.2f} with; {off.rate:,.0f} / {on.rate:,.0f} logs/s"
                  f" ({on.rate / off.rate:.2f}x)", flush=True)  # fmt: skip
    print(f"load average: {loadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cpu-only", type=int, default=0, metavar="BATCH")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average: {loadavg()}", flush=True)
    if args.cpu_only:
        cpu_only(args.redis_url, args.cpu_only, args.rounds, args.seconds)
        return
    with redis_target(args.redis_url) as url:
        rows = []
        for batch in (1, 100, 1000):
            for writers in (1, 4):
                off = asyncio.run(measure(url, batch, writers, args.seconds, False))
                on = asyncio.run(measure(url, batch, writers, args.seconds, True))
                rows.append((batch, writers, off, on))
                print(f"append_many({batch}) with {writers} writer(s): {off.rate:,.0f} logs/s"
                      f" without the index, {on.rate:,.0f} with ({on.rate / off.rate:.2f}x); CPU"
                      f" per log, client/Redis: {off.client_us:.1f}/{off.redis_us:.1f} us"
                      f" without, {on.client_us:.1f}/{on.redis_us:.1f} with",
                      flush=True)  # fmt: skip
        xadd = redis_benchmark_xadd(url)
    print()
    print(
        "| batch size | writers | logs/s without index | with index | ratio |"
        " client us/log without, with | Redis us/log without, with |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch, writers, off, on in rows:
        print(f"| {batch} | {writers} | {off.rate:,.0f} | {on.rate:,.0f} |"
              f" {on.rate / off.rate:.2f} | {off.client_us:.1f}, {on.client_us:.1f} |"
              f" {off.redis_us:.1f}, {on.redis_us:.1f} |")  # fmt: skip
    if xadd is not None:
        print(f"| redis-benchmark -P 64 XADD (same server) | | {xadd:,.0f} | | |")


if __name__ == "__main__":
    main()
