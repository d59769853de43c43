"""Log API throughput and live-tail latency, with real `aygolog api` processes.

    .venv/bin/python benchmarks/log_api.py [--seconds 10] [--connections 32]

Needs `wrk` (Debian package). Starts a private Redis-compatible server and measures:

1. POST /api/log (one small log per request) against one instance, under granian and under
   uvicorn (uvloop + httptools): requests/s and p50/p99 latency (wrk -t2 -cN --latency).
2. POST /api/logs with a batch of 1000 logs against one instance (granian): logs/s.
3. Live-tail latency: logs written through instance A at 1,000 logs/s (100 POST /api/logs a
   second, 10 logs each: one Python client cannot send 1,000 requests/s through httpx), received
   as SSE events from instance B; p50 and p99 of (received - sent), one clock (this machine's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import _wrk
from _common import percentile, redis_target
from support import ServiceProcess


def wrk(url: str, body: bytes, seconds: float, connections: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of POSTing `body` to `url`; a non-2xx answer is an error,
    socket errors are printed."""
    result = _wrk.run(url, body=body, seconds=seconds, connections=connections)
    if result.non_2xx:
        raise RuntimeError(f"{result.non_2xx} failed requests:\n{result.output}")
    if result.socket_error_count:
        print(f"  socket errors (connect/read/write/timeout): {result.socket_errors_text()}")
    return result.requests_per_second, result.p50_ms, result.p99_ms


def env(redis_url: str, name: str) -> dict[str, str]:
    return {
        "AYGOLOG_REDIS_URL": redis_url,
        "AYGOLOG_INSTANCE_NAME": name,
        "AYGOLOG_REDIS_PREFIX": "bench",
    }


async def tail_latency(writer: str, reader: str, rate: int, seconds: float) -> list[float]:
    """Milliseconds from POST on `writer` to SSE event on `reader`, for each log."""
    latencies: list[float] = []
    sent_at: dict[str, float] = {}
    total = int(rate * seconds)
    done = asyncio.Event()

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=None) as client,
            client.stream("GET", reader + "/api/logs/stream?service=latency") as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    received = time.time()
                    message = json.loads(line[5:])["message"]
                    latencies.append((received - sent_at[message]) * 1000)
                    if len(latencies) == total:
                        done.set()
                        return

    reader_task = asyncio.create_task(read())
    await asyncio.sleep(0.5)
    per_request = 10
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=8), timeout=10) as client:
        pending = set()
        start = time.perf_counter()
        for first in range(0, total, per_request):
            # Pace the writes: log i goes out at start + i / rate.
            delay = start + first / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            messages = [f"m{i}" for i in range(first, first + per_request)]
            body = msgspec.json.encode([{"message": m, "service": "latency"} for m in messages])
            now = time.time()
            sent_at.update(dict.fromkeys(messages, now))
            task = asyncio.create_task(
                client.post(writer + "/api/logs", content=body, headers=headers)
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
    await asyncio.wait_for(done.wait(), 30)
    await reader_task
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    one = msgspec.json.encode(
        {"message": "GET /api/items/42 handled in 12 ms", "level": "info", "service": "web",
         "attributes": {"status": 200}}
    )  # fmt: skip
    batch = msgspec.json.encode(
        [{"message": f"GET /api/items/{i} handled in 12 ms", "service": "web",
          "attributes": {"status": 200}} for i in range(1000)]
    )  # fmt: skip
    rows: list[str] = []
    with redis_target(args.redis_url) as redis_url:
        for server in ("granian", "uvicorn"):
            api = ServiceProcess("api", env=env(redis_url, f"bench-{server}"),
                                 args=("--server", server)).start()  # fmt: skip
            try:
                rate, p50, p99 = wrk(api.url + "/api/log", one, args.seconds, args.connections)
                rows.append(f"| POST /api/log, one instance, {server} | {rate:,.0f} req/s "
                            f"| {p50:.2f} | {p99:.2f} |")  # fmt: skip
                print(rows[-1], flush=True)
                if server == "granian":
                    rate, p50, p99 = wrk(api.url + "/api/logs", batch, args.seconds, 4)
                    rows.append(f"| POST /api/logs, batch of 1000, one instance, granian, 4 "
                                f"connections | {rate * 1000:,.0f} logs/s | {p50:.2f} "
                                f"| {p99:.2f} |")  # fmt: skip
                    print(rows[-1], flush=True)
            finally:
                api.close()
        a = ServiceProcess("api", env=env(redis_url, "tail-a")).start()
        b = ServiceProcess("api", env=env(redis_url, "tail-b")).start()
        try:
            latencies = asyncio.run(tail_latency(a.url, b.url, 1000, args.seconds))
        finally:
            a.close()
            b.close()
        rows.append(
            f"| live tail, written on A, received on B, 1,000 logs/s for {args.seconds:g} s "
            f"| {len(latencies):,} events | {percentile(latencies, 50):.2f} "
            f"| {percentile(latencies, 99):.2f} |"
        )
        print(rows[-1], flush=True)
    print()
    print("| measurement | throughput | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
