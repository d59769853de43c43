"""Well-framed requests with bad content: bad cursors, invalid JSON, invalid UTF-8, deep nesting.

Each on its own (`test_bad_requests_get_4xx`): a 4xx with a JSON body naming the problem, never a
5xx or a traceback (a user's bad input is the user's fault); `cursor=0-0`, a valid id at the very
start, may be an empty 200 page instead.

A flood of 1,000 of them beside good clients (`test_bad_request_flood`, issue 15's item 2
acceptance): 0 instances ejected (the LB's per-instance `ejections` counters do not move and its
instance list never shows one out of rotation), 0 good requests failed, and good p99 in bounds.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest

from support import LiveStack

from .harness import (
    FIGURES,
    GoodClients,
    RawConnection,
    RawResponse,
    StatusWatch,
    check_good,
    check_stored_once,
    ejections,
    report,
    stored_messages,
    under_attack,
)

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(90)]

BIG_ID = b"18446744073709551616-0"  # 2**64: overflows a stream id's milliseconds


@dataclass(frozen=True)
class Bad:
    """One bad request (HTTP/1.1, well framed)."""

    name: str
    method: bytes
    target: bytes
    body: bytes = b""
    headers: bytes = b""
    content_type: bytes = b"application/json"
    stream: bool = False
    """An SSE route: only the head of the answer is read."""
    ok_200: bool = False
    """Valid but unusual input: an empty 200 answer is right too (never a 5xx)."""

    def request(self, *, keep_alive: bool = True) -> bytes:
        head = b"%s %s HTTP/1.1\r\nHost: adversary\r\n%s" % (self.method, self.target, self.headers)
        if not keep_alive:
            head += b"Connection: close\r\n"
        if self.method == b"POST":
            head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (
                self.content_type,
                len(self.body),
            )
        return head + b"\r\n" + self.body


EVIL = f"evil-{uuid.uuid4().hex[:8]}"
"""The service of the log entries inside bad requests: none may be stored."""


def _entry(message: bytes) -> bytes:
    return b'{"service": "%s", "message": "%s"}' % (EVIL.encode(), message)


DEEP = 100_000
BAD = [
    # The smallest stream id: a valid cursor before everything (an empty page), or refused.
    Bad("cursor-0-0", b"GET", b"/api/logs?cursor=0-0", ok_200=True),
    Bad("cursor-not-an-id", b"GET", b"/api/logs?cursor=not-an-id"),
    Bad("cursor-overflow", b"GET", b"/api/logs?cursor=" + BIG_ID),
    Bad("cursor-negative", b"GET", b"/api/logs?cursor=-1-0"),
    Bad("limit-zero", b"GET", b"/api/logs?limit=0"),
    Bad("limit-not-a-number", b"GET", b"/api/logs?limit=lots"),
    Bad("limit-too-big-seed-route", b"GET", b"/api/log?limit=100000000"),
    Bad("since-not-a-time", b"GET", b"/api/logs?since=yesterday-ish"),
    Bad("since-far-past", b"GET", b"/api/logs?since=99999999999d"),
    Bad("level-unknown", b"GET", b"/api/logs?level=loud"),
    Bad("direction-unknown", b"GET", b"/api/logs?direction=sideways"),
    Bad("json-invalid", b"POST", b"/api/log", b'{"message": '),
    Bad("json-not-an-object", b"POST", b"/api/log", b"[1, 2, 3]"),
    Bad("json-invalid-utf8", b"POST", b"/api/log", _entry(b"\xff\xfe\xfd")),
    Bad("json-overlong-utf8", b"POST", b"/api/log", _entry(b"\xc0\xaf")),
    Bad("json-lone-surrogate-utf8", b"POST", b"/api/log", _entry(b"\xed\xa0\x80")),
    Bad("json-deep-array", b"POST", b"/api/log", b"[" * DEEP),
    Bad(
        "json-deep-attributes",
        b"POST",
        b"/api/log",
        b'{"message": "x", "attributes": {"a": ' + b"[" * DEEP + b"]" * DEEP + b"}}",
    ),
    Bad("batch-deep-array", b"POST", b"/api/logs", b"[" * DEEP),
    Bad("batch-invalid-utf8", b"POST", b"/api/logs", b"[" + _entry(b"\xff") + b"]"),
    Bad(
        "ndjson-invalid-utf8",
        b"POST",
        b"/api/logs",
        _entry(b"ok") + b"\n" + _entry(b"\xc3\x28"),
        content_type=b"application/x-ndjson",
    ),
    Bad("message-wrong-type", b"POST", b"/api/log", b'{"message": {"a": 1}}'),
    Bad("timestamp-huge", b"POST", b"/api/log", b'{"message": "x", "timestamp": 1e400}'),
    Bad("body-wrong-content-type", b"POST", b"/api/log", b"hello", content_type=b"text/plain"),
    Bad("stream-last-event-id-overflow", b"GET", b"/api/logs/stream",
        headers=b"Last-Event-ID: " + BIG_ID + b"\r\nAccept: text/event-stream\r\n", stream=True),
    Bad("stream-last-event-id-garbage", b"GET", b"/api/logs/stream?last_event_id=zz-top",
        headers=b"Accept: text/event-stream\r\n", stream=True),
    Bad("stream-level-unknown", b"GET", b"/api/logs/stream?level=loud",
        headers=b"Accept: text/event-stream\r\n", stream=True),
]  # fmt: skip


def _problem(bad: Bad, response: RawResponse | None) -> str:
    """What is wrong with the answer to `bad` ("" when it is a proper 4xx)."""
    if response is None:
        return "closed without an answer"
    if bad.ok_200 and response.status == 200:
        return ""
    if not 400 <= response.status < 500:
        return f"status {response.status} ({response.json_error()})"
    if not bad.stream and b"Traceback" in response.body:
        return f"status {response.status} with a traceback"
    if not bad.stream and b"error" not in response.body:
        return f"status {response.status} without a JSON error body: {response.body[:100]!r}"
    return ""


async def _ask(url: str, bad: Bad) -> RawResponse | None:
    conn = await RawConnection.open(url)
    try:
        await conn.send(bad.request(keep_alive=False))
        return await conn.response(within=10.0, body=not bad.stream)
    except (ConnectionError, TimeoutError):
        return None
    finally:
        conn.close()


async def test_bad_requests_get_4xx(live: LiveStack) -> None:
    """Each bad request (all at once, one connection each): a 4xx with a JSON error."""
    responses = await asyncio.gather(*(_ask(live.url, bad) for bad in BAD))
    failures = []
    for bad, response in zip(BAD, responses, strict=True):
        problem = _problem(bad, response)
        status = None if response is None else response.status
        print(f"  {bad.name}: {status}" + (f" -- WRONG: {problem}" if problem else ""))
        if problem:
            failures.append(f"{bad.name}: {problem}")
    FIGURES.append(f"ADV bad-request cases: {len(BAD) - len(failures)} of {len(BAD)} got a 4xx")
    stored = await stored_messages(live.url, EVIL)
    assert not stored, f"entries of bad requests were stored: {dict(stored)}"
    assert not failures, f"{len(failures)} of {len(BAD)} wrong:\n" + "\n".join(failures)


async def test_bad_request_flood(live: LiveStack, good: GoodClients) -> None:
    """1,000 bad requests on 20 keep-alive connections beside good clients: 0 instances
    ejected, 0 good requests failed."""
    baseline = await good.run()
    ejected_before = await ejections(live.url)
    flood = [bad for bad in BAD if not bad.stream]
    requests = itertools.cycle(flood)
    total, workers = 1000, 20
    statuses: Counter[str] = Counter()
    sent = 0

    async def worker() -> None:
        nonlocal sent
        conn: RawConnection | None = None
        try:
            while sent < total:
                sent += 1
                bad = next(requests)
                try:
                    if conn is None:
                        conn = await RawConnection.open(live.url)
                    await conn.send(bad.request())
                    response = await conn.response(within=10.0)
                except (ConnectionError, TimeoutError) as exc:
                    response, error = None, type(exc).__name__
                else:
                    error = "closed"
                statuses[str(response.status) if response else error] += 1
                closing = response is None or response.headers.get(b"connection") == b"close"
                if closing and conn is not None:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    async def attack() -> float:
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.monotonic() - started

    async with StatusWatch(live.url) as watch:
        attacked, seconds = await under_attack(good, attack())
        await asyncio.sleep(0.5)  # an ejection after the last answer shows up here
    ejected = await ejections(live.url) - ejected_before
    report(
        "bad-request-flood",
        baseline,
        attacked,
        bad_requests=f"{sent} in {seconds:.1f} s",
        answers=dict(sorted(statuses.items())),
        ejections=ejected,
        not_healthy_seen=dict(watch.seen),
    )
    assert ejected == 0, f"{ejected} ejections caused by bad requests"
    assert not watch.seen, f"instances left rotation: {dict(watch.seen)}"
    await check_good(good, baseline, attacked)
    server_faults = {s: n for s, n in statuses.items() if s in {"500", "502", "504"}}
    assert not server_faults, f"bad requests answered as server faults: {server_faults}"
    assert not await stored_messages(live.url, EVIL), "entries of bad requests were stored"
    await check_stored_once(live.url, good)
