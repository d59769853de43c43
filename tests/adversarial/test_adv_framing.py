"""Bad framing at the LB: Content-Length with Transfer-Encoding, bad chunk sizes, two Host headers,
HTTP/2.0 and bare request lines, and their like.

Each case on its own connection (`test_bad_framing`, all sent at once): the LB answers it
itself with the status HTTP says (400 mostly; 505 for a version it does not speak; 417 for an
unknown expectation), answers it once (nothing smuggled behind it is answered), closes the
connection when the framing cannot be trusted, and proxies nothing: a log entry hidden in the
request is never stored.

All cases together as a flood (`test_bad_framing_flood`): the good clients beside it are served
as usual, and no instance is ejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httptools
import pytest

from support import LiveStack

from .harness import (
    FIGURES,
    GoodClients,
    RawConnection,
    StatusWatch,
    check_good,
    check_stored_once,
    ejections,
    report,
    stored_messages,
    under_attack,
)

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(90)]

PLACEHOLDER = b"evil-XXXXXXXX"
"""The service of every log entry hidden in a bad request, replaced by a fresh `evil-<hex>` tag
of the same length when a case is sent: nothing under that tag may be stored."""

ENTRY = b'{"service": "%s", "message": "smuggled"}' % PLACEHOLDER
GET = b"GET /api/logs HTTP/1.1\r\nHost: adversary\r\n"
POST = b"POST /api/log HTTP/1.1\r\nHost: adversary\r\nContent-Type: application/json\r\n"
SMUGGLED = (
    b"POST /api/log HTTP/1.1\r\nHost: adversary\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(ENTRY), ENTRY)
)


def evil_tag() -> str:
    tag = f"evil-{uuid.uuid4().hex[:8]}"
    assert len(tag) == len(PLACEHOLDER)
    return tag


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@dataclass(frozen=True)
class Case:
    """One badly framed request and the answers HTTP allows for it."""

    name: str
    data: bytes
    expected: frozenset[int]
    closes: bool = True
    """The connection must be closed after the answer (the framing cannot be trusted)."""
    silent_close_ok: bool = False
    """Closing without any answer is acceptable too (a bare HTTP/0.9 line)."""


def _case(
    name: str, data: bytes, *expected: int, closes: bool = True, silent: bool = False
) -> Case:
    return Case(name, data, frozenset(expected), closes, silent)


CASES = [
    _case(
        "content-length-and-chunked",
        POST + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(chunked(ENTRY))
        + chunked(ENTRY) + SMUGGLED,
        400,
    ),
    _case(
        "chunked-and-content-length",
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + chunked(ENTRY),
        400,
    ),
    _case(
        "chunked-then-smuggled-by-length",
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
    ),
    _case(
        "transfer-encoding-not-chunked",
        POST + b"Transfer-Encoding: gzip\r\n\r\n" + ENTRY,
        400, 501,
    ),
    _case(
        "transfer-encoding-space-before-colon",
        POST + b"Transfer-Encoding : chunked\r\n\r\n" + chunked(ENTRY),
        400,
    ),
    _case(
        "transfer-encoding-xchunked",
        POST + b"Transfer-Encoding: xchunked\r\n\r\n" + chunked(ENTRY),
        400, 501,
    ),
    _case(
        "chunk-size-not-hex",
        POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + ENTRY + b"\r\n0\r\n\r\n",
        400,
    ),
    _case(
        "chunk-size-overflow",
        POST + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffffff\r\n" + ENTRY
        + b"\r\n0\r\n\r\n",
        400, 413,
    ),
    _case(
        "chunk-size-negative",
        POST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\n" + ENTRY + b"\r\n0\r\n\r\n",
        400,
    ),
    _case(
        "chunk-data-longer-than-size",
        POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\n" + ENTRY + b"\r\n0\r\n\r\n",
        400,
    ),
    _case(
        "two-different-content-lengths",
        POST + b"Content-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(ENTRY) + ENTRY,
        400,
    ),
    _case(
        "content-length-with-sign",
        POST + b"Content-Length: +%d\r\n\r\n" % len(ENTRY) + ENTRY,
        400,
    ),
    _case(
        "content-length-not-a-number",
        POST + b"Content-Length: 4x\r\n\r\n" + ENTRY,
        400,
    ),
    _case(
        "two-host-headers",
        b"POST /api/log HTTP/1.1\r\nHost: adversary\r\nHost: other\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(ENTRY), ENTRY),
        400,
    ),
    _case(
        "http11-without-host",
        b"POST /api/log HTTP/1.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(ENTRY), ENTRY),
        400,
    ),
    _case("http2-request-line", b"GET /api/logs HTTP/2.0\r\nHost: adversary\r\n\r\n", 505, 400),
    _case("http3-request-line", b"GET /api/logs HTTP/3\r\nHost: adversary\r\n\r\n", 505, 400),
    _case("bare-request-line", b"GET /api/logs\r\n\r\n", 400, 505, silent=True),
    _case(
        "transfer-encoding-in-http10",
        b"POST /api/log HTTP/1.0\r\nHost: adversary\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked(ENTRY),
        400,
    ),
    _case(
        "expect-unknown",
        POST + b"Expect: foo\r\nContent-Length: %d\r\n\r\n" % len(ENTRY) + ENTRY,
        417,
        closes=False,
    ),
    _case("nul-in-header-value", GET + b"X-A: b\x00c\r\n\r\n", 400),
    _case("space-in-header-name", GET + b"X A: b\r\n\r\n", 400),
    _case("bare-cr-in-head", b"GET /api/logs HTTP/1.1\r\nHost: adversary\rX-A: b\r\n\r\n", 400),
    _case("bad-method", b"G@T /api/logs HTTP/1.1\r\nHost: adversary\r\n\r\n", 400),
    _case("binary-garbage", bytes(range(256)) * 4, 400, silent=True),
]  # fmt: skip


class _Statuses:
    """httptools callbacks: the status of every response in a byte string."""

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.statuses: list[int] = []

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.statuses.append(self.parser.get_status_code())


def statuses_in(data: bytes) -> tuple[list[int], bool]:
    """The statuses of the responses in `data`, and whether it all parsed as HTTP/1.x."""
    collector = _Statuses()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return collector.statuses, False
    return collector.statuses, True


@dataclass
class Outcome:
    statuses: list[int]
    parsed: bool
    closed: bool
    raw: bytes


async def send_case(url: str, case: Case, evil: str, *, wait: float = 3.0) -> Outcome:
    """Send one case (its hidden entry's service: `evil`) on a fresh connection; read what comes
    back until closed (or `wait` s)."""
    conn = await RawConnection.open(url)
    try:
        with contextlib.suppress(ConnectionError, TimeoutError):
            await conn.send(case.data.replace(PLACEHOLDER, evil.encode()), within=wait)
        raw = b""
        closed = False
        ends = time.monotonic() + wait
        while time.monotonic() < ends:
            try:
                async with asyncio.timeout(ends - time.monotonic()):
                    data = await conn.reader.read(65536)
            except TimeoutError:
                break
            except ConnectionError:
                closed = True
                break
            if not data:
                closed = True
                break
            raw += data
            statuses, _ = statuses_in(raw)
            if statuses and not case.closes:
                break  # one answer is all we wait for
        statuses, parsed = statuses_in(raw)
        return Outcome(statuses, parsed, closed, raw)
    finally:
        conn.close()


def problems(case: Case, outcome: Outcome) -> list[str]:
    """What is wrong with how the LB answered `case` (empty: all right)."""
    found = []
    if not outcome.statuses:
        if not (case.silent_close_ok and outcome.closed and not outcome.raw):
            found.append(f"no answer (closed={outcome.closed}, got {outcome.raw[:80]!r})")
    else:
        if outcome.statuses[0] not in case.expected:
            found.append(f"status {outcome.statuses[0]}, expected one of {sorted(case.expected)}")
        if len(outcome.statuses) > 1:
            found.append(f"{len(outcome.statuses)} answers {outcome.statuses}: smuggled request?")
        if case.closes and not outcome.closed:
            found.append("the connection stayed open after a framing error")
    return found


async def test_bad_framing(live: LiveStack) -> None:
    """Each badly framed request, on its own connection (all at once): the right status from the
    LB itself, once, then closed; nothing of it stored."""
    tags = {case.name: evil_tag() for case in CASES}
    outcomes = await asyncio.gather(*(send_case(live.url, c, tags[c.name]) for c in CASES))
    failures = []
    for case, outcome in zip(CASES, outcomes, strict=True):
        found = problems(case, outcome)
        stored = await stored_messages(live.url, tags[case.name])
        if stored:
            found.append(f"its hidden entry was stored {sum(stored.values())} time(s)")
        line = f"  {case.name}: statuses {outcome.statuses}, closed {outcome.closed}"
        print(line + (f" -- WRONG: {'; '.join(found)}" if found else ""))
        if found:
            failures.append(f"{case.name}: {'; '.join(found)} (answer {outcome.raw[:120]!r})")
    wrong = len(failures)
    FIGURES.append(f"ADV bad-framing cases: {len(CASES) - wrong} of {len(CASES)} right")
    assert not failures, f"{wrong} of {len(CASES)} cases wrong:\n" + "\n".join(failures)


async def test_bad_framing_flood(live: LiveStack, good: GoodClients) -> None:
    """Every bad-framing case, over and over on 30 connections at a time, beside good clients."""
    evil = evil_tag()
    baseline = await good.run()
    ejected_before = await ejections(live.url)
    answered: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    cases = itertools.cycle(CASES)
    seconds, limit = 4.0, 1500
    sent = 0

    async def worker() -> None:
        nonlocal sent
        ends = time.monotonic() + seconds
        while time.monotonic() < ends and sent < limit:
            sent += 1
            case = next(cases)
            outcome = await send_case(live.url, case, evil, wait=2.0)
            answered[str(outcome.statuses[0]) if outcome.statuses else "closed"] += 1
            if problems(case, outcome):
                wrong[case.name] += 1

    async def flood() -> None:
        await asyncio.gather(*(worker() for _ in range(30)))

    async with StatusWatch(live.url) as watch:
        attacked, _ = await under_attack(good, flood(), min_seconds=seconds)
    ejected = await ejections(live.url) - ejected_before
    report(
        "bad-framing-flood",
        baseline,
        attacked,
        requests=sent,
        answers=dict(answered),
        wrong=dict(wrong),
        ejections=ejected,
        not_healthy_seen=dict(watch.seen),
    )
    await check_good(good, baseline, attacked)
    assert ejected == 0, f"{ejected} ejections during the flood"
    assert not watch.seen, f"instances left rotation during the flood: {dict(watch.seen)}"
    assert not await stored_messages(live.url, evil), "a badly framed request was stored"
    await check_stored_once(live.url, good)
