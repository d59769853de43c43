"""The seed's list (`GET /api/log`, the newest page, default size) through the LB over 1M entries.

    .venv/bin/python benchmarks/list_page.py [--entries 1000000] [--instances 2] [--seconds 10]
        [--connections 32] [--write-rate 0]

Starts a private Redis-compatible server, fills it with `--entries` logs (the store's
`append_many` in batches of 10,000, 4 at once), an `aygolog lb` and `--instances` `aygolog api`
registered with it; then `wrk -t2 -cN -dS --latency` GETs `/api/log` through the LB. Prints
requests/s, non-2xx answers, p50/p99, and the CPU time each process spent per request (utime +
stime from /proc/PID/stat, the process and its children, before and after the wrk run), so the
figure says where the time goes. `--write-rate R` also writes R logs/s (one POST each, through
the LB) during the run, so that the newest page keeps changing. Bar (issue 16): >= 2,000 req/s.
Bounded: the fill takes a few seconds per million, the run `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _common import sample_logs
from aygolog.embedded import EmbeddedRedis
from aygolog.errors import Unavailable
from aygolog.store import RedisStreamLogStore, Retention, StoreOptions
from support import ServiceProcess, children, wait_until

TOKEN = "bench-token"
PREFIX = "listbench"
_TICKS = os.sysconf("SC_CLK_TCK")


def pid_of(service: ServiceProcess) -> int:
    assert service.process is not None
    return service.process.pid


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its live children, in seconds."""
    total = 0.0
    for one in (pid, *children(pid)):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


async def fill(url: str, entries: int) -> None:
    client = aioredis.Redis.from_url(url)
    store = RedisStreamLogStore(
        client,
        instance="filler",
        prefix=PREFIX,
        options=StoreOptions(retention=Retention(max_entries=None)),
    )
    batch = sample_logs(10_000)
    todo = entries // len(batch)
    gate = asyncio.Semaphore(4)

    async def one(n: int) -> None:
        async with gate:
            for attempt in range(3):  # a busy machine can time a batch out; the key dedupes
                try:
                    await store.append_many(batch, idempotency_key=f"fill-{n}")
                    return
                except Unavailable:
                    if attempt == 2:
                        raise

    await asyncio.gather(*(one(n) for n in range(todo)))
    await client.aclose()


def wrk(url: str, seconds: float, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": requests,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50": _ms(out, "50%"),
        "p99": _ms(out, "99%"),
        "errors": errors.group(1) if errors else "none",  # type: ignore[dict-item]
    }


def _ms(out: str, pct: str) -> float:
    match = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)\b", out)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def writer(url: str, rate: int, stop: threading.Event, sent: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=5) as client:
        began = time.monotonic()
        while not stop.is_set():
            due = began + sent[0] / rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            client.post("/api/log", json={"message": f"live write {sent[0]}"}).raise_for_status()
            sent[0] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--write-rate", type=int, default=0)
    parser.add_argument("--path", default="/api/log")
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        started = time.monotonic()
        asyncio.run(fill(server.url, args.entries))
        print(f"filled {args.entries:,} entries in {time.monotonic() - started:.1f} s", flush=True)
        common = {
            "AYGOLOG_REDIS_URL": server.url,
            "AYGOLOG_REDIS_PREFIX": PREFIX,
            "AYGOLOG_REGISTRATION_TOKEN": TOKEN,
            "AYGOLOG_RETENTION_MAX_ENTRIES": "0",
        }
        lb = ServiceProcess("lb", env=common).start()
        apis = [
            ServiceProcess(
                "api",
                env={
                    **common,
                    "AYGOLOG_LB_URL": lb.url,
                    "AYGOLOG_HEARTBEAT_INTERVAL": "1",
                    "AYGOLOG_INSTANCE_NAME": f"api-{i}",
                },
            )
            for i in range(args.instances)
        ]
        try:
            for api in apis:
                api.spawn()
            for api in apis:
                api.wait_ready(60)

            def registered() -> bool:
                services = httpx.get(lb.url + "/api/registration/services", timeout=2).json()
                return bool(sum(s.get("status") == "healthy" for s in services) >= len(apis))

            assert wait_until(registered, 30), "the instances did not register"
            check = httpx.get(lb.url + args.path, timeout=10)
            print(f"GET {args.path}: {check.status_code}, {len(check.json())} items,"
                  f" {len(check.content):,} bytes")  # fmt: skip
            warm_up = ["wrk", "-t2", f"-c{args.connections}", "-d2s", lb.url + args.path]
            subprocess.run(warm_up, capture_output=True, check=True)
            procs = {"lb": pid_of(lb)}
            procs.update({f"api-{i}": pid_of(a) for i, a in enumerate(apis)})
            assert server.pid is not None
            procs["redis"] = server.pid
            pids = ", ".join(f"{name} {pid} {children(pid)}" for name, pid in procs.items())
            print(f"  pids (for py-spy): {pids}", flush=True)
            stop, sent = threading.Event(), [0]
            thread = None
            if args.write_rate:
                thread = threading.Thread(
                    target=writer, args=(lb.url, args.write_rate, stop, sent), daemon=True
                )
                thread.start()
            before = {name: cpu_seconds(pid) for name, pid in procs.items()}
            load = os.getloadavg()[0]
            result = wrk(lb.url + args.path, args.seconds, args.connections)
            after = {name: cpu_seconds(pid) for name, pid in procs.items()}
            stop.set()
            if thread is not None:
                thread.join(10)
            served = max(1, int(result["requests"]))
            per = {name: (after[name] - before[name]) / served * 1e6 for name in procs}
            print(
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load average before"
                f" {load:.2f} after {os.getloadavg()[0]:.2f}; {args.instances} instance(s),"
                f" wrk -t2 -c{args.connections} -d{args.seconds:g}s GET {args.path}"
                + (f", writing {sent[0] / args.seconds:.0f} logs/s" if args.write_rate else "")
            )
            print(
                f"  {result['rate']:,.0f} req/s, non-2xx {result['non2xx']:,.0f}, socket errors"
                f" {result['errors']}, p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms"
            )
            print(
                "  CPU per request: "
                + ", ".join(f"{name} {us:.0f} µs" for name, us in per.items())
                + f"; total {sum(per.values()):.0f} µs"
            )
        finally:
            for api in apis:
                api.close()
            lb.close()


if __name__ == "__main__":
    main()
