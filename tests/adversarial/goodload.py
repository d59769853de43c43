"""The good clients as a process of their own: `python goodload.py URL TAG PHASE WORKERS RATE
TIMEOUT`.

Run by `harness.GoodClients`, so that an attacker's CPU use in the test's interpreter (the GIL)
does not show up as good-client latency. Prints `ready` once its clients exist, then one JSON
line per request as it ends, `[worker, op, started (time.monotonic()), seconds, ok, outcome,
message]`, until its stdin is closed (or `MAX_SECONDS` passed).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from typing import Any, Final

import httpx

MAX_SECONDS: Final = 60.0
"""The longest this process runs, whatever its parent does."""


async def main(url: str, tag: str, phase: int, workers: int, rate: float, wait: float) -> None:
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    interval = 1.0 / rate
    counter = iter(range(10**9))
    ends = time.monotonic() + MAX_SECONDS
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        # Plain HTTP on loopback: no CA certificates to load, no proxy settings to read.
        httpx.AsyncClient(base_url=url, timeout=wait, limits=limits, verify=False, trust_env=False)
        for _ in range(workers)
    ]
    print("ready", flush=True)

    async def write(client: httpx.AsyncClient) -> list[Any]:
        message = f"{tag} p{phase}#{next(counter)}"
        body = {"message": message, "service": tag, "level": "info"}
        started = time.monotonic()
        try:
            response = await client.post(
                "/api/log", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
            )
            ok = response.status_code in (200, 201) and response.json()["message"] == message
            outcome = str(response.status_code)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            ok, outcome = False, type(exc).__name__
        return ["write", started, time.monotonic() - started, ok, outcome, message]

    async def read(client: httpx.AsyncClient) -> list[Any]:
        started = time.monotonic()
        try:
            response = await client.get("/api/logs", params={"service": tag, "limit": 10})
            ok = response.status_code == 200 and isinstance(response.json()["items"], list)
            outcome = str(response.status_code)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            ok, outcome = False, type(exc).__name__
        return ["read", started, time.monotonic() - started, ok, outcome, None]

    async def worker(index: int) -> None:
        client = clients[index]
        next_at = time.monotonic() + index * interval / workers
        while not stop.is_set() and time.monotonic() < ends:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at + interval, time.monotonic())
            sample = await (write(client) if index % 2 == 0 else read(client))
            print(json.dumps([index, *sample]), flush=True)

    try:
        await asyncio.gather(*(worker(i) for i in range(workers)))
    finally:
        for client in clients:
            await client.aclose()


if __name__ == "__main__":
    url, tag, phase, workers, rate, timeout = sys.argv[1:7]
    asyncio.run(main(url, tag, int(phase), int(workers), float(rate), float(timeout)))
