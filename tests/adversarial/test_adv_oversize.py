"""Oversize requests sent at full speed: a 64 MiB header, a 64 MiB URL, oversize bodies.

The LB must answer from the first bytes (431 for a head too large, 414 for a URL, 413 for a body
over `AYGOLOG_MAX_BODY_BYTES`) without buffering what the attacker keeps sending, so its memory
stays flat and the good clients beside it do not notice.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from support import LiveStack

from .harness import (
    Attempt,
    GoodClients,
    RssSampler,
    check_good,
    check_stored_once,
    oversize_attempt,
    repeat_for,
    report,
    stored_messages,
    under_attack,
)

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(90)]

MiB = 2**20
ATTACK_SECONDS = 2.5
RSS_GROWTH_MIB = 10.0
"""The LB's peak memory may grow at most this much during an attack (issue 15's acceptance)."""
MAX_BODY = 10 * MiB  # AYGOLOG_MAX_BODY_BYTES's default


def _failed(expected: set[int]) -> Callable[[Attempt], bool]:
    return lambda attempt: attempt.status not in expected


def _summary(attempts: list[Attempt]) -> str:
    statuses = Counter(a.status for a in attempts)
    worst = max(attempts, key=lambda a: a.seconds)
    return (
        f"{len(attempts)} attempts {dict(statuses)}, slowest answer {worst.seconds:.2f} s, "
        f"max accepted {max(a.accepted_mib for a in attempts):.1f} MiB"
    )


def _check_attempts(attempts: list[Attempt], expected: set[int]) -> None:
    bad = [a for a in attempts if a.status not in expected]
    assert not bad, f"expected {sorted(expected)}, got: {bad[:3]}"
    # Loopback socket buffers hold a few MiB; more than that taken means the LB kept reading.
    assert max(a.accepted_mib for a in attempts) <= 16, "the LB read far past its limit"
    assert max(a.seconds for a in attempts) <= 2.0, "the answer took too long"


async def _oversize(
    live: LiveStack, good: GoodClients, attack: str, head: bytes, total: int, expected: int
) -> None:
    assert live.lb is not None
    assert live.lb.process is not None
    baseline = await good.run()
    filler = b"a" * MiB

    async def one() -> Attempt:
        return await oversize_attempt(live.url, head, filler, total)

    async with RssSampler(live.lb.process.pid) as rss:
        attacked, attempts = await under_attack(
            good,
            repeat_for(ATTACK_SECONDS, one, limit=20, stop_on=_failed({expected})),
            min_seconds=ATTACK_SECONDS,
        )
    report(
        attack,
        baseline,
        attacked,
        attacker=_summary(attempts),
        lb_rss_growth=f"{rss.growth_mib:.1f} MiB",
    )
    _check_attempts(attempts, {expected})
    await check_good(good, baseline, attacked)
    assert rss.growth_mib < RSS_GROWTH_MIB, f"LB RSS grew {rss.growth_mib:.1f} MiB"
    await check_stored_once(live.url, good)


async def test_oversize_header_sent_fast(live: LiveStack, good: GoodClients) -> None:
    """One 64 MiB header at full speed, again and again: 431 at once, LB memory flat."""
    head = b"GET /api/logs HTTP/1.1\r\nHost: adversary\r\nX-Big: "
    await _oversize(live, good, "oversize-header-64MiB", head, 64 * MiB, 431)


async def test_oversize_url_sent_fast(live: LiveStack, good: GoodClients) -> None:
    """A 64 MiB request target at full speed: 414 at once."""
    head = b"GET /api/logs?q="
    await _oversize(live, good, "oversize-url-64MiB", head, 64 * MiB, 414)


async def test_many_small_headers(live: LiveStack, good: GoodClients) -> None:
    """A head of 8 MiB made of small headers (each well under any per-header limit): 431."""
    head = b"GET /api/logs HTTP/1.1\r\nHost: adversary\r\n"
    assert live.lb is not None
    baseline = await good.run()
    filler = b"X-A: b\r\n" * (MiB // 8)

    async def one() -> Attempt:
        return await oversize_attempt(live.url, head, filler, 8 * MiB)

    attacked, attempts = await under_attack(
        good,
        repeat_for(ATTACK_SECONDS, one, limit=20, stop_on=_failed({431})),
        min_seconds=ATTACK_SECONDS,
    )
    report("oversize-head-many-headers-8MiB", baseline, attacked, attacker=_summary(attempts))
    _check_attempts(attempts, {431})
    await check_good(good, baseline, attacked)
    await check_stored_once(live.url, good)


async def test_oversize_bodies(live: LiveStack, good: GoodClients) -> None:
    """Bodies over the limit, declared (Content-Length: 1 GiB, or 1 byte over) or chunked
    (64 MiB sent at full speed): 413, and nothing of them stored."""
    assert live.lb is not None
    assert live.lb.process is not None
    evil = f"evil-{uuid.uuid4().hex[:8]}"
    baseline = await good.run()
    start = b'{"service": "%s", "message": "' % evil.encode()
    declared_huge = (
        b"POST /api/log HTTP/1.1\r\nHost: adversary\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % 2**30 + start
    )
    # A valid JSON entry one byte over the limit: stored if the limit does not hold.
    just_over = MAX_BODY + 1
    padding = just_over - len(start) - 2
    declared_over = (
        b"POST /api/log HTTP/1.1\r\nHost: adversary\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % just_over + start
    )
    chunked = (
        b"POST /api/log HTTP/1.1\r\nHost: adversary\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (MiB, b"a" * MiB)
    kinds = [
        ("declared-1GiB", declared_huge, b"a" * MiB, 64 * MiB),
        ("declared-limit+1", declared_over + b"a" * padding + b'"}', b"", 0),
        ("chunked-64MiB", chunked, chunk, 64 * MiB),
    ]
    counter = iter(range(1000))
    by_kind: dict[str, list[Attempt]] = {name: [] for name, *_ in kinds}

    async def one() -> Attempt:
        name, head, filler, total = kinds[next(counter) % len(kinds)]
        attempt = await oversize_attempt(live.url, head, filler or b" ", total)
        by_kind[name].append(attempt)
        return attempt

    async with RssSampler(live.lb.process.pid) as rss:
        attacked, _ = await under_attack(
            good,
            repeat_for(ATTACK_SECONDS, one, limit=30, stop_on=_failed({413})),
            min_seconds=ATTACK_SECONDS,
        )
    report(
        "oversize-bodies",
        baseline,
        attacked,
        **{name: _summary(done) for name, done in by_kind.items() if done},
        lb_rss_growth=f"{rss.growth_mib:.1f} MiB",
    )
    bad = [(name, a) for name, done in by_kind.items() for a in done if a.status != 413]
    assert not bad, f"expected 413: {bad[:3]}"
    await check_good(good, baseline, attacked)
    assert not await stored_messages(live.url, evil), "an oversize body was stored"
    await check_stored_once(live.url, good)
