"""Small pages and big pages: what one read costs Redis.

    .venv/bin/python benchmarks/read_pages.py small [--entries 100000] [--runs 1000]
    .venv/bin/python benchmarks/read_pages.py big

`small`: the seed's list (`GET /api/log`) as a store call: an unfiltered page of 10 and of 100,
timed `--runs` times in a row over a filled stream (queries/s, median, p95).
`big`: an `aygolog api` process over 1,000 entries of ~64 KiB; `GET /api/logs?limit=1000` once
(size, items, time), then 20 at once (statuses, Redis's peak memory), then a small read.
Each starts a private Redis; bounded to well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from aygolog.embedded import EmbeddedRedis
from aygolog.models import LogQuery, NewLog
from aygolog.store import RedisStreamLogStore, Retention, StoreOptions
from support import ServiceProcess

_BIG = "z" * (64 * 1024 - 200)


async def small(url: str, entries: int, runs: int) -> None:
    client = aioredis.Redis.from_url(url)
    options = StoreOptions(retention=Retention(max_entries=None))
    store = RedisStreamLogStore(client, instance="b", prefix="pages", options=options)
    batch = [NewLog(message=f"message number {i} with some text", service="s") for i in range(1000)]
    for _ in range(entries // 1000):
        await store.append_many(batch)
    for limit in (10, 100):
        query = LogQuery(limit=limit)
        for _ in range(50):
            await store.query(query)
        times = []
        began = time.perf_counter()
        for _ in range(runs):
            started = time.perf_counter()
            await store.query(query)
            times.append(time.perf_counter() - started)
        total = time.perf_counter() - began
        times.sort()
        print(
            f"limit={limit}: {runs / total:.0f} queries/s one at a time, median "
            f"{statistics.median(times) * 1000:.2f} ms, p95 {times[int(runs * 0.95)] * 1000:.2f} ms"
        )
    await client.aclose()


def big(url: str) -> None:
    api = ServiceProcess("api", env={"AYGOLOG_REDIS_URL": url, "AYGOLOG_INSTANCE_NAME": "b"})
    api.start()
    try:
        for b in range(10):
            batch = [{"message": f"{b}-{i} {_BIG}"} for i in range(100)]
            httpx.post(api.url + "/api/logs", json=batch, timeout=60).raise_for_status()
        admin = redis.Redis.from_url(url)
        admin.config_resetstat()
        params = {"limit": "1000"}
        started = time.perf_counter()
        one = httpx.get(api.url + "/api/logs", params=params, timeout=120)
        print(
            f"one read: {one.status_code}, {len(one.content) / 2**20:.1f} MiB, "
            f"{len(one.json()['items'])} items, {time.perf_counter() - started:.2f} s"
        )

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as client:
                reads = (client.get(api.url + "/api/logs", params=params) for _ in range(20))
                return list(await asyncio.gather(*reads))

        started = time.perf_counter()
        answers = asyncio.run(burst())
        took = time.perf_counter() - started
        codes: dict[int, int] = {}
        for answer in answers:
            codes[answer.status_code] = codes.get(answer.status_code, 0) + 1
        peak = int(admin.info("memory")["used_memory_peak"]) / 2**20
        print(f"20 at once: {took:.2f} s, statuses {codes}, Redis used_memory_peak {peak:.0f} MiB")
        started = time.perf_counter()
        after = httpx.get(api.url + "/api/log", params={"limit": "1"}, timeout=60)
        took = time.perf_counter() - started
        print(f"a small read right after: {after.status_code} in {took:.3f} s")
        admin.close()
    finally:
        api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["small", "big"])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        if args.what == "small":
            asyncio.run(small(server.url, args.entries, args.runs))
        else:
            big(server.url)


if __name__ == "__main__":
    main()
