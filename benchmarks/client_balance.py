"""The SDK through the load balancer against client-side balancing, same stack, same run.

    .venv/bin/python benchmarks/client_balance.py [--seconds 10] [--processes 2] [--tasks 16]

Starts a private Redis-compatible server, an `aygolog lb` and 3 `aygolog api` instances; then
`--processes` client processes, each with `--tasks` concurrent `AsyncLogClient.log()` calls (or
`log_many` batches of `--batch` entries with `--batch N`), for `--seconds`, first with
`balance="lb"` (every request through the LB), then with `balance="client"` (the SDK reads the
LB's service list and sends straight to the instances with power-of-two-choices), then both again.
Prints logs/s and request latency p50/p99 per mode, and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _common import percentile, sample_logs
from aygolog.client import AsyncLogClient
from aygolog.client._base import Balance
from support import LiveStack


async def _drive(
    url: str, balance: Balance, seconds: float, tasks: int, batch: int
) -> tuple[int, list[float]]:
    logs = sample_logs(max(batch, 1) * 50)
    latencies: list[float] = []
    sent = 0
    async with AsyncLogClient(url, balance=balance, strategy="p2c", service="bench") as client:
        await client.log("warm-up")
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal sent
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                if batch:
                    start = (i * batch) % (len(logs) - batch)
                    await client.log_many(logs[start : start + batch])
                    sent += batch
                else:
                    log = logs[i % len(logs)]
                    await client.log(log.message, log.level, attributes=log.attributes)
                    sent += 1
                latencies.append(time.perf_counter() - started)
                i += tasks

        await asyncio.gather(*(worker(n) for n in range(tasks)))
    return sent, latencies


def _process(args: tuple[str, Balance, float, int, int]) -> tuple[int, list[float]]:
    return asyncio.run(_drive(*args))


def measure(
    url: str, balance: Balance, seconds: float, processes: int, tasks: int, batch: int
) -> tuple[float, float, float]:
    """logs/s, p50 ms, p99 ms over all client processes."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        started = time.perf_counter()
        results = pool.map(_process, [(url, balance, seconds, tasks, batch)] * processes)
        elapsed = time.perf_counter() - started - 0.3  # the pool's start-up, roughly
    sent = sum(r[0] for r in results)
    latencies = [lat for r in results for lat in r[1]]
    rate = sent / max(seconds, min(elapsed, seconds * 1.5))
    return rate, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--batch", type=int, default=0, help="log_many batches of N (0: log())")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        stack = LiveStack(Path(data), prefix="bench").start()
        try:
            rows: dict[Balance, list[tuple[float, float, float]]] = {"lb": [], "client": []}
            modes: tuple[Balance, ...] = ("lb", "client")
            for _ in range(args.rounds):
                for balance in modes:
                    row = measure(
                        stack.url, balance, args.seconds, args.processes, args.tasks, args.batch
                    )
                    rows[balance].append(row)
                    print(
                        f"balance={balance}: {row[0]:,.0f} logs/s, "
                        f"p50 {row[1]:.2f} ms, p99 {row[2]:.2f} ms",
                        flush=True,
                    )
        finally:
            stack.close()
    what = f"log_many({args.batch})" if args.batch else "log()"
    print(
        f"\n| {what}, {args.processes} processes x {args.tasks} tasks, {args.seconds:g} s "
        "| logs/s (best of rounds) | p50 ms | p99 ms |"
    )
    print("|---|---:|---:|---:|")
    names = {"lb": 'through the LB (`balance="lb"`)', "client": 'client-side (`balance="client"`)'}
    for balance, results in rows.items():
        best = max(results)
        print(f"| {names[balance]} | {best[0]:,.0f} | {best[1]:.2f} | {best[2]:.2f} |")


if __name__ == "__main__":
    main()
