"""Slow clients: a head sent a byte a second (slowloris), a body sent a byte a second.

A request must arrive whole within its deadline (head and body separately; the suite's LB has both
set to a few seconds, see conftest.py), whatever trickles in meanwhile: each slow connection is
closed (408, or just closed) by the deadline plus a little, so 150 of them hold nothing for long,
and the good clients beside them are served as usual.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from support import LiveStack

from .conftest import BODY_DEADLINE, HEAD_DEADLINE
from .harness import (
    GoodClients,
    RawConnection,
    check_good,
    check_stored_once,
    raw_connections,
    report,
    stored_messages,
    under_attack,
)

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(90)]

SLACK = 2.0
"""Seconds past the deadline a slow connection may still be open (timer granularity, load)."""


async def _trickle(conn: RawConnection, head: bytes, drip: bytes, give_up: float) -> float | None:
    """Send `head`, then `drip` one byte a second; seconds until the server closed the
    connection, or None if it was still open after `give_up` seconds."""
    started = time.monotonic()
    try:
        await conn.send(head, within=2.0)
        for byte in drip:
            if await conn.closed_by_peer(within=1.0):
                return time.monotonic() - started
            if time.monotonic() - started > give_up:
                return None
            await conn.send(bytes([byte]), within=2.0)
    except (ConnectionError, TimeoutError):
        return time.monotonic() - started
    return None


async def _slow_attack(
    live: LiveStack,
    good: GoodClients,
    attack: str,
    head: bytes,
    drip: bytes,
    count: int,
    deadline: float,
) -> None:
    baseline = await good.run()
    give_up = deadline + SLACK

    async def attack_all() -> list[float | None]:
        async with raw_connections(live.url, count) as conns:
            return await asyncio.gather(*(_trickle(c, head, drip, give_up) for c in conns))

    attacked, closed_after = await under_attack(good, attack_all(), min_seconds=give_up)
    still_open = sum(t is None for t in closed_after)
    times = sorted(t for t in closed_after if t is not None)
    report(
        attack,
        baseline,
        attacked,
        connections=count,
        deadline=f"{deadline:g} s",
        still_open_after=f"{still_open} at {give_up:g} s",
        closed_after=f"{times[0]:.1f}-{times[-1]:.1f} s" if times else "-",
    )
    await check_good(good, baseline, attacked)
    assert still_open == 0, (
        f"{still_open} of {count} slow connections still open {give_up:g} s after they started "
        f"(deadline {deadline:g} s)"
    )
    too_early = [t for t in times if t < deadline - 0.5]
    assert not too_early, f"slow connections closed before the deadline: {too_early[:5]}"
    await check_stored_once(live.url, good)


async def test_slow_head(live: LiveStack, good: GoodClients) -> None:
    """150 connections each sending their head one byte a second (slowloris)."""
    head = b"GET /api/logs HTTP/1.1\r\nHost: adversary\r\nX-Slow: "
    await _slow_attack(live, good, "slow-head-150", head, b"a" * 60, 150, HEAD_DEADLINE)


async def test_slow_body(live: LiveStack, good: GoodClients) -> None:
    """100 connections each sending a whole head, then their body one byte a second."""
    evil = f"evil-{uuid.uuid4().hex[:8]}"
    body = b'{"service": "%s", "message": "slow body"}' % evil.encode()
    head = (
        b"POST /api/log HTTP/1.1\r\nHost: adversary\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    await _slow_attack(live, good, "slow-body-100", head, body, 100, BODY_DEADLINE)
    assert not await stored_messages(live.url, evil), "a body that missed its deadline was stored"
