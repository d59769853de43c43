"""Clients that hold connections: never reading large answers, idling on keep-alive connections,
keeping live-tail streams open.

The LB must not buffer what a client does not read (back-pressure, memory flat), must keep
serving new and existing good clients with hundreds of idle connections open, and must fan live
entries out to hundreds of streams without the good clients noticing. When such clients go away,
everything they held at the LB (requests in flight to the instances) is released within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import httpx
import pytest

from support import LiveStack

from .harness import (
    GoodClients,
    RawConnection,
    RssSampler,
    check_good,
    check_stored_once,
    plain_client,
    raw_connections,
    report,
    services,
    under_attack,
)

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(90)]

HOLD_SECONDS = 2.5
"""How long the attackers hold their connections."""
RELEASE_SECONDS = 3.0
"""Once the attackers are gone, the LB's requests in flight must be back to 0 within this."""


async def in_flight(url: str) -> int:
    """Requests the LB has in flight to the instances, over all of them."""
    return sum(int(s.get("in_flight", 0)) for s in await services(url))


async def wait_released(url: str, within: float = RELEASE_SECONDS) -> tuple[int, float]:
    """Wait until the LB has nothing in flight; (what is left, seconds waited)."""
    started = time.monotonic()
    left = await in_flight(url)
    while left and time.monotonic() - started < within:
        await asyncio.sleep(0.1)
        left = await in_flight(url)
    return left, time.monotonic() - started


async def reads_running(url: str) -> int:
    """Queries running now on all the instances (their `aygolog_reads_in_progress`)."""
    running = 0
    async with plain_client(url, 5.0) as client:
        for instance in await services(url):
            text = (await client.get(f"{instance['url'].rstrip('/')}/metrics")).text
            for line in text.splitlines():
                if line.startswith("aygolog_reads_in_progress"):
                    running += int(float(line.split()[-1]))
    return running


async def lb_client_connections(url: str) -> int:
    """The LB's gauge of client connections open now."""
    async with plain_client(url, 5.0) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("aygolog_lb_client_connections "):
            return int(float(line.split()[1]))
    return -1


async def fresh_connection_requests(url: str, count: int) -> tuple[int, float]:
    """`count` requests, each on a new connection: (how many succeeded, the slowest)."""
    ok, slowest = 0, 0.0
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with plain_client(url, 10.0, limits=no_reuse) as client:
        for _ in range(count):
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get("/api/logs", params={"limit": 1})
                ok += response.status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
    return ok, slowest


async def test_clients_that_never_read(live: LiveStack, good: GoodClients) -> None:
    """30 clients each pipelining 8 requests for ~1.3 MiB pages and never reading a byte.

    The attackers' first answers are 30 heavy reads (~40 MB of JSON made and sent): a burst
    any legitimate client may cause, which costs the good clients CPU on this 2-core machine
    (capacity, not hostility; its figure is printed as `burst`). What a client that never reads
    must not do is hold anything once its answer is stuck: the good clients are judged while
    the attackers hold their connections, from the moment their answers are in flight; the LB
    must not buffer the unread answers (each stays in the instance's socket: the LB reads an
    answer no faster than its client does) nor read the pipelined requests behind them.
    """
    assert live.lb is not None
    assert live.lb.process is not None
    big = f"big-{uuid.uuid4().hex[:8]}"
    entries = [{"service": big, "message": f"{i} " + "x" * 4096} for i in range(300)]
    async with plain_client(live.url, 30.0) as client:
        seeded = await client.post("/api/logs", json=entries)
        assert seeded.status_code == 201, seeded.text
    baseline = await good.run()
    request = b"GET /api/logs?service=%s&limit=300 HTTP/1.1\r\nHost: adversary\r\n\r\n" % (
        big.encode()
    )
    attackers, pipelined = 30, 8
    stuck: dict[str, float] = {}

    async def attack() -> int:
        stuck["began"] = time.monotonic()
        async with raw_connections(live.url, attackers) as conns:
            for conn in conns:
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await conn.send(request * pipelined, within=2.0)
            # Held: the attackers' answers are in flight (some fit whole in the kernel's socket
            # buffers, so not every one of them) and every instance has run its queries (only
            # the sending is stuck), or 10 s have gone by.
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                if await in_flight(live.url) >= attackers // 2 and not await reads_running(
                    live.url
                ):
                    break
                await asyncio.sleep(0.1)
            stuck["since"] = time.monotonic()
            await asyncio.sleep(HOLD_SECONDS)
            stuck["until"] = time.monotonic()
            return await in_flight(live.url)

    async with RssSampler(live.lb.process.pid) as rss:
        burst, held = await under_attack(good, attack())
        attacked = await good.phase(stuck["since"], stuck["until"])
        left, waited = await wait_released(live.url)
    report(
        "never-reading-clients",
        baseline,
        attacked,
        attackers=f"{attackers} x {pipelined} pipelined 1.3 MiB pages",
        held_after=f"{stuck['since'] - stuck['began']:.1f} s",
        burst=f"p99 {burst.p99 * 1000:.0f} ms ok {burst.success_rate:.1%}",
        lb_in_flight_during=held,
        lb_rss_growth=f"{rss.growth_mib:.1f} MiB",
        in_flight_after=f"{left} after {waited:.1f} s",
    )
    assert burst.success_rate == 1.0, f"good requests failed in the burst: {burst}"
    await check_good(good, baseline, attacked)
    # one stuck answer per attacker, plus the good clients' own (one each at most)
    assert held <= attackers + good.workers, (
        f"{held} requests in flight: the LB read past unread answers"
    )
    # 30 unread answers of 1.3 MiB each would be 39 MiB: the LB holds at most 256 KiB of each.
    assert rss.growth_mib < 16, f"the LB buffered unread answers: RSS +{rss.growth_mib:.1f} MiB"
    assert left == 0, f"{left} requests still in flight {waited:.1f} s after the clients left"
    await check_stored_once(live.url, good)


async def test_many_idle_keepalive_connections(live: LiveStack, good: GoodClients) -> None:
    """500 idle connections (half after one request, half before any) while good clients run,
    and new clients still get through."""
    baseline = await good.run()
    count = 500
    health = b"GET /health HTTP/1.1\r\nHost: adversary\r\n\r\n"

    async def after_one_request(conn: RawConnection) -> bool:
        try:
            await conn.send(health, within=5.0)
            response = await conn.response(within=10.0)
        except (ConnectionError, TimeoutError):
            return False
        return response is not None and response.status == 200

    timings: dict[str, str] = {}

    async def attack() -> tuple[int, int, tuple[int, float]]:
        started = time.monotonic()
        async with raw_connections(live.url, count) as conns:
            timings["opened_in"] = f"{time.monotonic() - started:.1f} s"
            answered = await asyncio.gather(*(after_one_request(c) for c in conns[: count // 2]))
            timings["first_requests_in"] = f"{time.monotonic() - started:.1f} s"
            open_now = await lb_client_connections(live.url)
            fresh = await fresh_connection_requests(live.url, 20)
            await asyncio.sleep(HOLD_SECONDS)
            return sum(answered), open_now, fresh

    attacked, (answered, open_now, (fresh_ok, fresh_slowest)) = await under_attack(good, attack())
    report(
        "idle-keepalive-500",
        baseline,
        attacked,
        **timings,
        idle_after_one_request=f"{answered} of {count // 2} answered",
        lb_client_connections=open_now,
        fresh_connections=f"{fresh_ok}/20 ok, slowest {fresh_slowest * 1000:.0f} ms",
    )
    await check_good(good, baseline, attacked)
    assert answered == count // 2, "idle connections' first requests failed"
    assert fresh_ok == 20, f"new clients failed beside the idle connections: {fresh_ok}/20"
    assert fresh_slowest <= max(1.0, 3 * baseline.p99), "new clients waited too long"
    await check_stored_once(live.url, good)


async def _follow(conn: RawConnection, feed: str, stop: asyncio.Event) -> tuple[int, int]:
    """Follow `feed` on `conn` until `stop`: (the stream's status, how often `feed` was seen)."""
    await conn.send(
        b"GET /api/logs/stream?service=%s HTTP/1.1\r\nHost: adversary\r\n"
        b"Accept: text/event-stream\r\n\r\n" % feed.encode(),
        within=5.0,
    )
    response = await conn.response(within=10.0, body=False)
    if response is None:
        return 0, 0
    tag = feed.encode()
    seen = 0
    tail = b""
    while not stop.is_set():
        try:
            async with asyncio.timeout(0.5):
                data = await conn.reader.read(65536)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if not data:
            break
        chunk = tail + data
        seen += chunk.count(tag)
        tail = chunk[-len(tag) :]
    return response.status, seen


async def _feed(url: str, feed: str, stop: asyncio.Event, every: float = 0.2) -> int:
    """Write an entry to `feed` every `every` seconds until `stop`; how many were stored."""
    stored = 0
    async with plain_client(url, 10.0) as client:
        while not stop.is_set():
            response = await client.post(
                "/api/log", json={"service": feed, "message": f"{feed} {stored}"}
            )
            stored += response.status_code == 201
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stop.wait()
    return stored


async def test_many_live_tail_streams(live: LiveStack, good: GoodClients) -> None:
    """300 live-tail streams open and reading (fed 5 entries a second) while good clients run;
    closing them releases everything at the LB.

    The streams follow their own feed, not the good writers: 300 streams of every good write
    would be 9,000 events a second, a capacity test (issue 16), not a hostile-client one.
    """
    baseline = await good.run()
    count = 300
    feed = f"feed-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()

    async def attack() -> tuple[list[tuple[int, int]], int, int]:
        async with raw_connections(live.url, count) as conns:
            followers = [asyncio.create_task(_follow(c, feed, stop)) for c in conns]
            feeder = asyncio.create_task(_feed(live.url, feed, stop))
            try:
                await asyncio.sleep(HOLD_SECONDS)
                held = await in_flight(live.url)
            finally:
                stop.set()
                results = await asyncio.gather(*followers, return_exceptions=True)
                fed = await feeder
        ok = [r if isinstance(r, tuple) else (0, 0) for r in results]
        return ok, held, fed

    attacked, (results, held, fed) = await under_attack(good, attack())
    left, waited = await wait_released(live.url)
    opened = sum(status == 200 for status, _ in results)
    reached = sum(seen > 0 for _, seen in results)
    report(
        "live-tail-streams-300",
        baseline,
        attacked,
        streams_opened=f"{opened}/{count}",
        streams_fed=f"{reached}/{count} ({fed} entries fed)",
        lb_in_flight_during=held,
        in_flight_after=f"{left} after {waited:.1f} s",
    )
    await check_good(good, baseline, attacked)
    assert opened == count, f"only {opened} of {count} streams opened"
    assert fed > 0
    assert reached == count, f"only {reached} of {count} streams got the fed entries"
    assert left == 0, (
        f"{left} streams still in flight at the LB {waited:.1f} s after their clients left"
    )
    await check_stored_once(live.url, good)
