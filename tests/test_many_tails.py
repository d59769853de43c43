"""One instance holds thousands of live tails and still answers `/health` (issue 16, item 3).

A real `aygolog api` (default settings) and N raw SSE clients on loopback: all N subscribe,
`/health` is timed while they are open, one log written reaches every one of them, and after
they all close the worker's open files come back down. N is 2,000 here; by hand:

    AYGOLOG_TEST_TAILS=5000 .venv/bin/pytest -q -s tests/test_many_tails.py

With granian's default backpressure (1,024 requests per worker) the tails above that number
and `/health` waited in the accept queue.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aygolog.cli import raise_open_files_limit
from aygolog.embedded import EmbeddedRedis
from support import ServiceProcess, children

TAILS = int(os.environ.get("AYGOLOG_TEST_TAILS", "2000"))
pytestmark = pytest.mark.timeout(240)

_REQUEST = b"GET /api/logs/stream HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"


class Tail:
    """One raw SSE client: connects, waits for the `: connected` comment, then reads."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.seen = b""

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(_REQUEST)
        await self.until(b": connected")
        assert self.seen.startswith(b"HTTP/1.1 200"), self.seen[:200]

    async def until(self, marker: bytes) -> None:
        assert self.reader is not None
        while marker not in self.seen:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {self.seen[-200:]!r}")
            self.seen += chunk

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def api(redis_server: EmbeddedRedis, prefix: str) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        "api",
        env={
            "AYGOLOG_REDIS_URL": redis_server.url,
            "AYGOLOG_REDIS_PREFIX": prefix,
            "AYGOLOG_INSTANCE_NAME": "api-tails",
        },
    )
    try:
        yield service.start(timeout=60)
    finally:
        service.close()


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts files in /proc")
async def test_thousands_of_live_tails_and_health_still_answers(api: ServiceProcess) -> None:
    if raise_open_files_limit() < TAILS + 200:
        pytest.skip(f"the open-files limit is below {TAILS + 200}")
    assert api.process is not None
    (worker,) = children(api.process.pid)
    files_before = open_files(worker)
    tails = [Tail() for _ in range(TAILS)]
    started = time.monotonic()
    try:
        gate = asyncio.Semaphore(200)  # connect 200 at a time, as a crowd would, not a SYN flood

        async def open_one(tail: Tail) -> None:
            async with gate:
                await asyncio.wait_for(tail.open(api.port), 60)

        await asyncio.gather(*(open_one(t) for t in tails))
        opened = time.monotonic() - started
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            ready = (await client.get("/health/ready")).json()
            assert ready["tail"]["subscribers"] == TAILS
            times = []
            for _ in range(100):
                sent = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                times.append(time.perf_counter() - sent)
                await asyncio.sleep(0.01)
            p99 = statistics.quantiles(times, n=100)[98]
            written = time.perf_counter()
            marker = f"fan-out-{os.getpid()}-{time.time_ns()}"
            assert (await client.post("/api/log", json={"message": marker})).status_code == 201
            await asyncio.wait_for(asyncio.gather(*(t.until(marker.encode()) for t in tails)), 60)
            fan_out = time.perf_counter() - written
        files_open = open_files(worker)
    finally:
        for tail in tails:
            tail.close()
        await asyncio.sleep(0)  # let the loop close the sockets
        closed = time.monotonic()
    while open_files(worker) > files_before + 10 and time.monotonic() - closed < 30:  # noqa: ASYNC110 - polling /proc
        await asyncio.sleep(0.05)
    freed = time.monotonic() - closed
    files_after = open_files(worker)
    print(
        f"\n{TAILS} live tails on one instance: opened in {opened:.1f} s; /health p50"
        f" {statistics.median(times) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max"
        f" {max(times) * 1000:.1f} ms; one log reached all {TAILS} in {fan_out:.2f} s; worker"
        f" open files {files_before} -> {files_open} -> {files_after} {freed:.2f} s after the"
        " clients closed"
    )
    assert p99 < 1.0  # a generous bound on a shared 2-core machine; the figure is printed
    assert fan_out < 10.0
    assert files_after <= files_before + 10, "the worker kept the closed streams' sockets"
