"""Hostile and non-conforming clients against the LB's data plane, over real sockets.

Issue 15: a huge header must not freeze the proxy (limits on the bytes received), slow clients
are closed at a total deadline, and requests HTTP/1.1 forbids are refused with the right status.
The proxy under test and its upstreams are the ones of `test_lb_proxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from aygolog.lb.proxy import ProxyConfig
from test_lb_proxy import HOST, Upstream, harness, raw_exchange, read_response


async def _send_forever(writer: asyncio.StreamWriter, piece: bytes, limit: int) -> int:
    """Write `piece` again and again (up to `limit` bytes) until the peer closes; bytes sent."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < limit:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
    return sent


# -- item 1: limits on the bytes received ------------------------------------------------------


async def test_a_huge_header_gets_431_at_once_and_others_are_still_served() -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(h.proxy.port, b"GET /api/log HTTP/1.1\r\nX-Big: ")
        sender = asyncio.create_task(_send_forever(writer, b"b" * 65536, 512 * 1024 * 1024))
        try:
            began = time.monotonic()
            status, headers, body = await asyncio.wait_for(read_response(reader), 5)
            assert status == 431
            assert json.loads(body)["error"] == "request header X-Big too large (over 16384 bytes)"
            assert headers["connection"] == "close"
            assert time.monotonic() - began < 2
            # Meanwhile, other clients are answered.
            for _ in range(5):
                assert (await h.client.get("/api/log")).status_code == 200
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            writer.close()


@pytest.mark.parametrize(
    ("head", "status", "error"),
    [
        (b"GET /api/log?q=" + b"a" * 20_000, 414, "request line too long (over 16384 bytes)"),
        (
            b"GET /api/log HTTP/1.1\r\nHost: lb\r\nCookie: " + b"c" * 20_000,
            431,
            "request header Cookie too large (over 16384 bytes)",
        ),
        (
            b"GET /api/log HTTP/1.1\r\nHost: lb\r\n" + b"X-Many: 0123456789\r\n" * 3500,
            431,
            "request headers too large (over 65536 bytes)",
        ),
    ],
)
async def test_head_limits_answer_before_the_head_ends(
    head: bytes, status: int, error: str
) -> None:
    # The head never ends: the limit must be applied to what has arrived.
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(h.proxy.port, head)
        got, _, body = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert (got, json.loads(body)["error"]) == (status, error)
        assert h.upstreams["a"].seen == []


async def test_pipelined_request_after_a_chunked_body_is_scanned_too() -> None:
    config = ProxyConfig(max_header_line=1000)
    async with harness(Upstream("a"), config=config) as h:
        reader, writer = await raw_exchange(
            h.proxy.port,
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\n"
            b"GET /api/log HTTP/1.1\r\nHost: lb\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n",
        )
        first = await read_response(reader)
        second = await read_response(reader)
        writer.close()
        assert first[0] == 201
        assert json.loads(first[2])["body"] == "{}"
        assert second[0] == 431


@pytest.mark.parametrize(
    "reads",
    [
        # A body, then the start of a pipelined head, in one read; the head ends in the next.
        [
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\n\r\n{}"
            b"GET /api/log?n=2 HTTP/1.1\r\nHost: lb\r\n",
            b"\r\n",
        ],
        [
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\n\r\n{}GET /api/l",
            b"og?n=2 HTTP/1.1\r\nHost: lb\r\n\r\n",
        ],
        # A body over three reads, then the next request.
        [
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\n\r\n",
            b"{",
            b"}GET /api/log?n=2 HTTP/1.1\r\nHost: lb\r\n\r\n",
        ],
        # A chunked body begun in the head's read.
        [
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{",
            b"\r\n1\r\n}\r\n0\r\n\r\nGET /api/log?n=2 HTTP/1.1\r\nHost: lb\r\n\r\n",
        ],
    ],
)
async def test_requests_split_anywhere_across_reads(reads: list[bytes]) -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await asyncio.open_connection(HOST, h.proxy.port)
        for data in reads:
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.05)  # one read each
        first = await asyncio.wait_for(read_response(reader), 5)
        second = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert (first[0], json.loads(first[2])["body"]) == (201, "{}")
        assert (second[0], json.loads(second[2])["target"]) == (200, "/api/log?n=2")


async def test_a_pipelined_head_begun_in_a_read_is_still_limited() -> None:
    config = ProxyConfig(max_header_line=1000)
    async with harness(Upstream("a"), config=config) as h:
        reader, writer = await asyncio.open_connection(HOST, h.proxy.port)
        writer.write(
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\n\r\n{}"
            b"GET /api/log HTTP/1.1\r\nHost: lb\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"X-Big: " + b"b" * 2000)
        first = await asyncio.wait_for(read_response(reader), 5)
        second = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert first[0] == 201
        assert (second[0], json.loads(second[2])["error"]) == (
            431,
            "request header X-Big too large (over 1000 bytes)",
        )


async def test_a_pipelined_request_line_begun_in_the_same_read_is_limited() -> None:
    # The first request and the start of the second arrive in one read: the second's request
    # line is checked like any other (it used to go to the parser unchecked).
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(
            h.proxy.port,
            b"GET /api/log HTTP/1.1\r\nHost: lb\r\n\r\nGET /api/log?q=" + b"a" * 20_000,
        )
        await asyncio.sleep(0.05)
        writer.write(b" HTTP/1.1\r\nHost: lb\r\n\r\n")
        first = await asyncio.wait_for(read_response(reader), 5)
        second = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert first[0] == 200
        assert (second[0], json.loads(second[2])["error"]) == (
            414,
            "request line too long (over 16384 bytes)",
        )
        assert len(h.upstreams["a"].seen) == 1


async def test_request_trailers_are_not_forwarded_as_headers() -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(
            h.proxy.port,
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\nHost: evil\r\nX-Trailer: 1\r\n\r\n",
        )
        status, _, _ = await read_response(reader)
        writer.close()
        assert status == 201
        seen = h.upstreams["a"].seen[0]
        assert seen.header("host") == "lb"
        assert seen.header("x-trailer") is None


# -- item 4: total deadlines for the head and the body ------------------------------------------


async def _trickle(
    port: int, first: bytes, seconds: float, step: float = 0.2
) -> tuple[float, bytes]:
    """Send `first`, then one byte every `step` s; (seconds until the LB closed, what it sent)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(first)
    began = time.monotonic()
    received = bytearray()

    async def read_all() -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)

    reading = asyncio.create_task(read_all())
    with contextlib.suppress(ConnectionError):
        while not reading.done() and time.monotonic() - began < seconds:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(step)
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(reading, 1)
    closed = time.monotonic() - began
    writer.close()
    return closed, bytes(received)


async def test_a_trickling_head_is_closed_at_its_deadline() -> None:
    # A byte every 0.2 s: the old per-byte idle timer never fired.
    config = ProxyConfig(request_head_timeout=2.0)
    async with harness(Upstream("a"), config=config) as h:
        closed, answer = await _trickle(h.proxy.port, b"GET /api/log HTTP/1.1\r\nX-Slow: ", 8)
        assert 1.9 < closed < 3.6
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"the request headers did not arrive within 2 s" in answer


async def test_a_trickling_body_is_closed_at_its_deadline() -> None:
    config = ProxyConfig(request_head_timeout=0.5, request_body_timeout=1.5)
    async with harness(Upstream("a"), config=config) as h:
        closed, answer = await _trickle(
            h.proxy.port, b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Length: 1000\r\n\r\n", 6
        )
        assert 1.4 < closed < 3.1
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"the request body did not arrive within 1.5 s" in answer
        assert h.upstreams["a"].seen == []


async def test_many_slow_clients_hold_no_connection_beyond_the_deadline() -> None:
    config = ProxyConfig(request_head_timeout=2.0)
    async with harness(Upstream("a"), config=config) as h:
        clients = 200
        results = await asyncio.gather(
            *(
                _trickle(h.proxy.port, b"GET /api/log HTTP/1.1\r\n", 8, step=0.5)
                for _ in range(clients)
            )
        )
        assert min(closed for closed, _ in results) > 1.9
        assert max(closed for closed, _ in results) < 4.0
        assert h.proxy.stats.connections == 0
        # A good client is still served.
        assert (await h.client.get("/api/log")).status_code == 200


async def test_a_silent_new_connection_is_held_to_the_head_deadline() -> None:
    config = ProxyConfig(request_head_timeout=1.0, keep_alive_timeout=60)
    async with harness(Upstream("a"), config=config) as h:
        reader, writer = await asyncio.open_connection(HOST, h.proxy.port)
        began = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, without an answer
        assert time.monotonic() - began < 2.6
        writer.close()


async def test_idle_keep_alive_has_its_own_timeout() -> None:
    config = ProxyConfig(request_head_timeout=0.5, keep_alive_timeout=2.5)
    async with harness(Upstream("a"), config=config) as h:
        reader, writer = await raw_exchange(
            h.proxy.port, b"GET /api/log HTTP/1.1\r\nHost: lb\r\n\r\n"
        )
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(1.5)  # idle past the head deadline: still open
        writer.write(b"GET /api/log HTTP/1.1\r\nHost: lb\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        began = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, without an answer
        assert 2.0 < time.monotonic() - began < 4.0
        writer.close()


# -- item 8: HTTP conformance -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (
            b"GET /api/log HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
            "Host: more than one Host header",
        ),
        (b"GET /api/log HTTP/1.1\r\n\r\n", 400, "Host: an HTTP/1.1 request needs a Host header"),
        (b"GET /api/log HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0 is not supported"),
        (b"GET /api/log\r\n\r\n", 400, "the request line has no HTTP version"),
        # A real HTTP/0.9 request is one line: answered at once, not at the head deadline.
        (b"GET /api/log\r\n", 400, "the request line has no HTTP version"),
        (
            b"POST /api/log HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "Transfer-Encoding: not allowed in an HTTP/1.0 request",
        ),
        (
            b"POST /api/log HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"0\r\n\r\n",
            501,
            "Transfer-Encoding: only chunked is supported",
        ),
        (
            b"POST /api/log HTTP/1.1\r\nHost: a\r\nExpect: foo\r\nContent-Length: 2\r\n\r\n{}",
            417,
            "Expect: only 100-continue is supported",
        ),
    ],
)
async def test_non_conforming_requests_are_refused(
    request_bytes: bytes, status: int, error: str
) -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(h.proxy.port, request_bytes)
        got, headers, body = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert got == status
        assert json.loads(body)["error"].startswith(error)
        assert headers["connection"] == "close"
        assert h.upstreams["a"].seen == []


async def test_http10_without_host_is_served() -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(h.proxy.port, b"GET /api/log HTTP/1.0\r\n\r\n")
        status, _, _ = await read_response(reader)
        writer.close()
        assert status == 200


async def test_connection_header_cannot_strip_end_to_end_headers() -> None:
    async with harness(Upstream("a")) as h:
        response = await h.client.post(
            "/api/log",
            content=b"{}",
            headers={
                "Connection": "host, content-length, idempotency-key, x-hop",
                "Idempotency-Key": "k1",
                "X-Hop": "dropped",
            },
        )
        assert response.status_code == 201
        seen = h.upstreams["a"].seen[0]
        assert seen.header("host") == f"{HOST}:{h.proxy.port}"
        assert seen.header("content-length") == "2"
        assert seen.header("idempotency-key") == "k1"
        assert seen.header("x-hop") is None
        assert seen.body == b"{}"
