"""Reads cannot overload Redis: a page is capped in bytes, and each instance runs only so many
queries at once (more wait briefly, then get 503 with Retry-After)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from aygolog.embedded import EmbeddedRedis
from aygolog.errors import Unavailable
from aygolog.server.reads import PageCache, ReadGate
from support import ServiceProcess

pytestmark = pytest.mark.timeout(120)

MESSAGE = "m" * (60 * 1024)  # 60 KiB: 40 of them make 2.4 MB


async def test_the_gate_refuses_after_waiting_and_a_patient_reader_waits() -> None:
    gate = ReadGate(2, 0.05)
    refused: list[int] = []
    gate.on_refused = lambda: refused.append(1)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot():
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert gate.in_use == 2
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        async with gate.slot():
            pass
    assert time.monotonic() - started >= 0.04
    assert info.value.retry_after == 1.0
    assert "busy" in str(info.value)
    assert gate.refused == 1
    assert refused == [1]

    async def patient() -> str:
        async with gate.slot(patient=True):
            return "got a turn"

    waiting = asyncio.create_task(patient())
    await asyncio.sleep(0.1)  # longer than `wait`: still waiting, not refused
    assert not waiting.done()
    release.set()
    assert await waiting == "got a turn"
    await asyncio.gather(*holders)
    assert gate.in_use == 0


@pytest.fixture(scope="module")
def api(redis_server: EmbeddedRedis) -> Iterator[ServiceProcess]:
    env = {
        "AYGOLOG_REDIS_URL": redis_server.url,
        "AYGOLOG_REDIS_PREFIX": f"reads{uuid.uuid4().hex[:8]}",
        "AYGOLOG_INSTANCE_NAME": "api-reads",
        "AYGOLOG_MAX_PAGE_BYTES": str(1024 * 1024),
        "AYGOLOG_MAX_CONCURRENT_READS": "1",
        "AYGOLOG_READ_QUEUE_TIMEOUT": "0.05",
    }
    process = ServiceProcess("api", env=env).start()
    batch = [{"message": f"{i} {MESSAGE}", "service": "big"} for i in range(40)]
    assert httpx.post(process.url + "/api/logs", json=batch, timeout=30).status_code == 201
    yield process
    process.close()


def test_a_page_ends_at_the_byte_cap_with_a_cursor(api: ServiceProcess) -> None:
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        response = httpx.get(api.url + "/api/logs", params=params, timeout=30)
        assert response.status_code == 200, response.text
        sizes.append(len(response.content))
        page = response.json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 40
    assert len(sizes) >= 3  # 2.4 MB in pages of about 1 MiB
    assert max(sizes) < 1024 * 1024 + 70 * 1024  # the cap plus at most one entry


def test_reads_over_the_limit_wait_then_get_503_with_retry_after(api: ServiceProcess) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.get(api.url + "/api/logs", params={"limit": "1000"})
                        for _ in range(30)
                    )
                )
            )

    answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 503}, codes
    assert 200 in codes
    assert 503 in codes, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1"
    assert "busy" in busy.json()["error"]
    metrics = httpx.get(api.url + "/metrics").text
    assert "aygolog_reads_refused_total" in metrics
    assert httpx.get(api.url + "/api/logs", params={"limit": "1"}).status_code == 200


def test_the_page_cache_serves_a_page_only_at_the_version_it_was_read_at() -> None:
    cache = PageCache(max_pages=2, max_bytes=10)
    assert cache.get(100, "v1") is None
    cache.put(100, "v1", b"[1]")
    assert cache.get(100, "v1") == b"[1]"
    assert cache.get(100, "v2") is None  # the store changed: read again
    assert cache.get(10, "v1") is None  # another page size
    cache.put(100, "v2", b"[2]")
    assert cache.get(100, "v1") is None
    assert cache.get(100, "v2") == b"[2]"
    cache.put(10, "v2", b"[3]")
    cache.put(5, "v2", b"[4]")  # a third size: the oldest kept (100) goes
    assert cache.get(100, "v2") is None
    assert cache.get(10, "v2") == b"[3]"
    cache.put(1, "v2", b"x" * 11)  # too big to keep
    assert cache.get(1, "v2") is None
    assert (cache.hits, cache.misses) == (3, 6)


async def test_readers_missing_the_same_version_read_the_page_once() -> None:
    """When a write changes the version under many readers, one reads the page, the others
    wait for it (all of them reading it was a burst of full queries at every write)."""
    cache = PageCache()
    reads: list[int] = []
    release = asyncio.Event()

    async def read() -> bytes:
        reads.append(1)
        await release.wait()
        return b"[page]"

    readers = [asyncio.create_task(cache.load(100, "v1", read)) for _ in range(10)]
    gone = asyncio.create_task(cache.load(100, "v1", read))
    await asyncio.sleep(0.01)
    gone.cancel()  # a reader that goes away does not cancel the read the others wait for
    release.set()
    assert await asyncio.gather(*readers) == [b"[page]"] * 10
    assert len(reads) == 1
    assert cache.get(100, "v1") == b"[page]"
    await cache.load(100, "v2", read)  # a new version is read again
    assert len(reads) == 2


async def test_a_failed_page_read_fails_every_waiting_reader_and_the_next_reads_again() -> None:
    cache = PageCache()
    calls: list[int] = []

    async def failing() -> bytes:
        calls.append(1)
        await asyncio.sleep(0.01)
        raise Unavailable("redis is down", retry_after=1.0)

    results = await asyncio.gather(
        *(cache.load(10, "v", failing) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results)
    assert len(calls) == 1
    assert cache.get(10, "v") is None

    async def working() -> bytes:
        return b"[]"

    assert await cache.load(10, "v", working) == b"[]"
