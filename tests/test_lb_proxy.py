"""The LB's data plane (`aygolog.lb.proxy`) over real sockets on 127.0.0.1.

Each test starts tiny in-process upstream HTTP servers (asyncio streams, so each behaviour, such
as dropping a request or closing an idle connection, is exact), a `ProxyServer` in front of them
with a static picker, and talks to it with httpx or, where the bytes matter, a raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from aygolog.errors import NoHealthyInstance
from aygolog.lb.app import proxied
from aygolog.lb.proxy import ProxyConfig, ProxyServer, RetryBudget
from aygolog.lb.upstream import UpstreamFailure

HOST = "127.0.0.1"
BIG_CHUNK = 64 * 1024
BIG_CHUNKS = 1024  # 64 MiB


# -- upstream servers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int


@dataclass
class Seen:
    """A request as an upstream received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None


class Upstream:
    """A tiny HTTP/1.1 server standing in for a Log API instance.

    Modes: "ok"; "drop" (reads a request, closes without answering); "drop-reused" (answers the
    first request of each connection, drops the next); "slow" (answers after 5 s); "idle-close"
    (closes each connection 50 ms after answering).
    """

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.accepts = 0
        self.disconnects = 0
        self.big_written = 0
        self.seen: list[Seen] = []
        self.sse_sent: list[float] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def target(self) -> Target:
        assert self._server is not None
        return Target(self.name, HOST, self._server.sockets[0].getsockname()[1])

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepts += 1
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = [
                    (name.lower(), value)
                    for name, value in (line.split(": ", 1) for line in lines[1:] if line)
                ]
                length = int(dict(headers).get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                seen = Seen(method, target, headers, body)
                self.seen.append(seen)
                if self.mode == "drop" or (self.mode == "drop-reused" and served):
                    return
                if self.mode == "slow":
                    await asyncio.sleep(5)
                served += 1
                if not await self._respond(seen, writer, reader):
                    return
                if self.mode == "idle-close":
                    await asyncio.sleep(0.05)
                    return
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            self.disconnects += 1
            writer.close()
            self._tasks.discard(task)

    async def _respond(
        self, seen: Seen, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> bool:
        path = seen.target.split("?", 1)[0]
        if path in ("/api/chunked", "/api/logs/chunked"):
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
                b"\r\n5\r\npart1\r\n5\r\npart2\r\n5\r\npart3\r\n0\r\n\r\n"
            )
            return True
        if path == "/api/sse":
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            await writer.drain()
            for i in range(3):
                await asyncio.sleep(0.25)
                event = f"id: {i}\ndata: event {i}\n\n".encode()
                self.sse_sent.append(time.monotonic())
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return True
        if path == "/api/quiet-sse":
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n"
            )
            await writer.drain()
            # Quiet: the proxy has nothing to write to its client; wait for it to close.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), 30)
            return False
        if path == "/api/big":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (BIG_CHUNK, b"b" * BIG_CHUNK)
            for _ in range(BIG_CHUNKS):
                writer.write(chunk)
                await writer.drain()
                self.big_written += BIG_CHUNK
            writer.write(b"0\r\n\r\n")
            return True
        if path == "/api/logs/vary":
            writer.write(
                b"HTTP/1.1 200 OK\r\nvary: Origin\r\nVary: accept-encoding, origin\r\n"
                b"access-control-allow-origin: *\r\ncontent-length: 2\r\n\r\n{}"
            )
            await writer.drain()
            return True
        if path == "/api/as-sent":
            writer.write(b"HTTP/1.1 201 Made\r\nX-Mixed-Case: v\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
            return True
        if path == "/api/slow":
            await asyncio.sleep(5)
        if path == "/api/until-close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
            await writer.drain()
            return False
        status = 500 if path == "/api/fail" else 201 if seen.method == "POST" else 200
        body = json.dumps(
            {
                "instance": self.name,
                "method": seen.method,
                "target": seen.target,
                "body": seen.body.decode(),
            }
        ).encode()
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"keep-alive: timeout=5\r\nconnection: keep-alive, x-hop\r\nx-hop: secret\r\n"
            b"proxy-authenticate: Basic\r\nx-served-by: spoofed\r\nx-upstream: %s\r\n"
            b"access-control-allow-origin: http://instance.example\r\n\r\n%s"
            % (status, len(body), self.name.encode(), b"" if seen.method == "HEAD" else body)
        )
        await writer.drain()
        return True


def dead_target(name: str) -> Target:
    """A target on a port where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    return Target(name, HOST, port)


# -- the proxy under test -------------------------------------------------------------------------


class StaticPicker:
    """Picks the first target not excluded, in a fixed order; records the callbacks."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.attempts: list[str] = []
        self.outcomes: list[tuple[str, int | None, str | None]] = []

    def pick(self, exclude: set[str]) -> Target:
        for target in self.targets:
            if target.name not in exclude:
                return target
        raise NoHealthyInstance("no healthy Log API instance", retry_after=1.0)

    def started(self, name: str) -> None:
        self.attempts.append(name)

    def finished(self, name: str, status: int | None, seconds: float, error: str | None) -> None:
        assert seconds >= 0
        self.outcomes.append((name, status, error))


def default_route(method: str, path: str) -> bool:
    return proxied(method, path)  # the LB's own router: /api/* and the ingest protocols' paths


@dataclass
class Harness:
    proxy: ProxyServer
    picker: StaticPicker
    client: httpx.AsyncClient
    url: str
    upstreams: dict[str, Upstream] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def harness(
    *backends: Upstream | Target,
    config: ProxyConfig | None = None,
    asgi_app: Any = None,
    asgi_state: dict[str, Any] | None = None,
) -> AsyncIterator[Harness]:
    upstreams = [b for b in backends if isinstance(b, Upstream)]
    for upstream in upstreams:
        await upstream.start()
    targets = [b.target if isinstance(b, Upstream) else b for b in backends]
    picker = StaticPicker(targets)
    proxy = ProxyServer(
        picker=picker,
        route=default_route,
        asgi_app=asgi_app,
        config=config or ProxyConfig(),
        asgi_state=asgi_state,
    )
    await proxy.start(HOST, 0)
    url = f"http://{HOST}:{proxy.port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            yield Harness(proxy, picker, client, url, {u.name: u for u in upstreams})
    finally:
        await proxy.aclose(grace=1)
        for upstream in upstreams:
            await upstream.close()


async def raw_exchange(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off a raw connection (Content-Length, chunked or until close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
    if status == 100:
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, headers, bytes(body)
            body += chunk[:-2]
    return status, headers, await reader.read()


# -- tests --------------------------------------------------------------------------------------


async def test_get_and_post_are_proxied_with_body_headers_and_request_ids() -> None:
    async with harness(Upstream("a")) as h:
        got = await h.client.get("/api/log?limit=5", headers={"X-Custom": "kept"})
        assert got.status_code == 200
        assert got.json()["target"] == "/api/log?limit=5"
        assert got.headers["x-served-by"] == "a"
        generated = got.headers["x-request-id"]
        assert len(generated) == 32
        assert int(generated, 16) >= 0

        posted = await h.client.post(
            "/api/log", json={"name": "hello"}, headers={"X-Request-Id": "req-42"}
        )
        assert posted.status_code == 201
        assert json.loads(posted.json()["body"]) == {"name": "hello"}
        assert posted.headers["x-request-id"] == "req-42"
        assert posted.headers["x-served-by"] == "a"

        first, second = h.upstreams["a"].seen
        assert first.header("x-custom") == "kept"
        assert first.header("x-request-id") == generated
        assert second.header("x-request-id") == "req-42"
        assert second.header("content-length") == str(len(b'{"name":"hello"}'))
        assert h.picker.attempts == ["a", "a"]
        assert h.picker.outcomes == [("a", 200, None), ("a", 201, None)]


async def test_generated_request_ids_are_a_process_prefix_and_a_counter() -> None:
    async with harness(Upstream("a")) as h:
        ids = [(await h.client.get("/api/log")).headers["x-request-id"] for _ in range(3)]
        assert len(set(ids)) == 3
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
        assert {i[:16] for i in ids} == {ids[0][:16]}  # one prefix per process
        counters = [int(i[16:], 16) for i in ids]
        assert counters == sorted(counters)
        assert counters[2] - counters[0] == 2


async def test_plain_requests_are_answered_without_a_task_per_request() -> None:
    loop = asyncio.get_running_loop()
    made: list[str] = []
    factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        made.append(getattr(coro, "__qualname__", ""))
        if factory is not None:
            return factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(
            h.proxy.port, b"GET /api/log HTTP/1.1\r\nHost: lb\r\n\r\n"
        )
        assert (await read_response(reader))[0] == 200  # opens the pooled connection
        loop.set_task_factory(counting)
        try:
            for _ in range(20):
                writer.write(b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\n\r\n{}")
                status, headers, body = await read_response(reader)
                assert status == 201
                assert json.loads(body)["body"] == "{}"
                assert headers["x-served-by"] == "a"
        finally:
            loop.set_task_factory(factory)
        writer.close()
        assert [name for name in made if name.startswith("_Client.")] == []
        seen = h.upstreams["a"].seen[-1]
        assert seen.header("host") == "lb"
        assert seen.header("content-length") == "2"
        assert seen.header("x-forwarded-for") == "127.0.0.1"
        assert seen.header("x-forwarded-proto") == "http"
        assert seen.header("x-forwarded-host") == "lb"
        assert seen.header("x-request-id") is not None
        assert h.upstreams["a"].accepts == 1
        assert h.picker.outcomes[-1] == ("a", 201, None)
        assert len(h.picker.attempts) == len(h.picker.outcomes) == 21


async def test_forwarded_headers_are_appended_and_set() -> None:
    async with harness(Upstream("a")) as h:
        await h.client.get(
            "/api/log",
            headers={
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "spoofed.example",
            },
        )
        await h.client.get("/api/log")
        with_chain, plain = h.upstreams["a"].seen
        assert with_chain.header("x-forwarded-for") == "203.0.113.7, 127.0.0.1"
        assert with_chain.header("x-forwarded-proto") == "http"
        assert with_chain.header("x-forwarded-host") == f"{HOST}:{h.proxy.port}"
        assert plain.header("x-forwarded-for") == "127.0.0.1"
        assert with_chain.header("host") == f"{HOST}:{h.proxy.port}"


async def test_hop_by_hop_headers_are_removed_both_ways() -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(
            h.proxy.port,
            b"GET /api/log HTTP/1.1\r\nHost: lb\r\nConnection: keep-alive, X-Secret\r\n"
            b"X-Secret: 1\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\n"
            b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
        )
        status, headers, _ = await read_response(reader)
        writer.close()
        assert status == 200
        seen = h.upstreams["a"].seen[0]
        names = {name for name, _ in seen.headers}
        for hop in ("connection", "x-secret", "keep-alive", "te", "proxy-authorization"):
            assert hop not in names
        assert "upgrade" not in names
        assert seen.header("x-kept") == "yes"
        # The instance's own hop-by-hop headers (and the one its Connection names) are gone too.
        for hop in ("keep-alive", "x-hop", "proxy-authenticate", "connection"):
            assert hop not in headers
        assert headers["x-upstream"] == "a"
        assert headers["x-served-by"] == "a"  # set by the proxy, not the instance's "spoofed"


async def test_upstream_connections_are_kept_alive_and_reused() -> None:
    async with harness(Upstream("a")) as h:
        for i in range(20):
            response = await h.client.post("/api/log", json={"i": i})
            assert response.status_code == 201
        head = await h.client.head("/api/log")
        assert head.status_code == 200
        assert int(head.headers["content-length"]) > 0
        assert head.content == b""
        assert (await h.client.get("/api/log")).status_code == 200
        assert len(h.upstreams["a"].seen) == 22
        assert h.upstreams["a"].accepts == 1
        assert h.proxy.pools.get(HOST, h.upstreams["a"].target.port).connects == 1


async def test_concurrent_requests_use_a_few_pooled_connections() -> None:
    async with harness(Upstream("a")) as h:
        for _ in range(3):
            results = await asyncio.gather(*(h.client.get("/api/log") for _ in range(8)))
            assert all(r.status_code == 200 for r in results)
        assert 1 <= h.upstreams["a"].accepts <= 8


async def test_chunked_upstream_response_is_reframed() -> None:
    async with harness(Upstream("a")) as h:
        response = await h.client.get("/api/chunked")
        assert response.status_code == 200
        assert response.text == "part1part2part3"
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["x-served-by"] == "a"
        # The connection stays usable after the chunked answer.
        assert (await h.client.get("/api/log")).status_code == 200
        assert h.upstreams["a"].accepts == 1


async def test_slow_client_pushes_back_on_the_instance() -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(
            h.proxy.port, b"GET /api/big HTTP/1.1\r\nHost: lb\r\n\r\n"
        )
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        upstream = h.upstreams["a"]
        assert upstream.big_written < BIG_CHUNK * BIG_CHUNKS * 3 // 4
        status, _, body = await read_response(reader)
        assert status == 200
        assert len(body) == BIG_CHUNK * BIG_CHUNKS
        assert upstream.big_written == len(body)
        # The upstream connection goes back to the pool reading again, and serves the next one.
        writer.write(b"GET /api/log HTTP/1.1\r\nHost: lb\r\n\r\n")
        status, _, _ = await read_response(reader)
        writer.close()
        assert status == 200
        assert upstream.accepts == 1


async def test_until_close_upstream_response_reaches_http10_and_http11_clients() -> None:
    async with harness(Upstream("a")) as h:
        response = await h.client.get("/api/until-close")
        assert response.text == "all of it"
        assert response.headers["transfer-encoding"] == "chunked"
        reader, writer = await raw_exchange(
            h.proxy.port, b"GET /api/until-close HTTP/1.0\r\nHost: lb\r\n\r\n"
        )
        status, headers, body = await read_response(reader)
        writer.close()
        assert (status, body) == (200, b"all of it")
        assert "transfer-encoding" not in headers


@pytest.mark.parametrize("accept", ["text/event-stream", "*/*"])
async def test_sse_events_are_streamed_without_buffering_or_timeout(accept: str) -> None:
    # response_timeout is shorter than the gap between events: SSE must be exempt.
    config = ProxyConfig(response_timeout=0.2)
    async with harness(Upstream("a"), config=config) as h:
        async with h.client.stream("GET", "/api/sse", headers={"Accept": accept}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["x-served-by"] == "a"
            lines = response.aiter_lines()
            arrived = [time.monotonic() async for line in lines if line.startswith("data:")]
        sent = h.upstreams["a"].sse_sent
        assert len(arrived) == len(sent) == 3
        delays = [got - put for got, put in zip(arrived, sent, strict=True)]
        assert max(delays) < 0.05, delays


async def test_client_leaving_an_sse_stream_closes_the_upstream_connection() -> None:
    async with harness(Upstream("a")) as h:
        async with h.client.stream("GET", "/api/sse") as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break
        await h.client.aclose()
        upstream = h.upstreams["a"]
        for _ in range(40):
            if upstream.disconnects:
                break
            await asyncio.sleep(0.05)
        assert upstream.disconnects == 1
        # Not the instance's fault: reported with its status and no error.
        assert h.picker.outcomes == [("a", 200, None)]


async def test_client_leaving_a_quiet_sse_stream_closes_the_upstream_within_a_second() -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(
            h.proxy.port, b"GET /api/quiet-sse HTTP/1.1\r\nHost: lb\r\n\r\n"
        )
        received = b""
        while b"data: 1" not in received:
            received += await reader.read(65536)
        writer.close()  # only a FIN: no write of the proxy fails while the stream is quiet
        left = time.monotonic()
        upstream = h.upstreams["a"]
        for _ in range(150):
            if upstream.disconnects:
                break
            await asyncio.sleep(0.02)
        assert upstream.disconnects == 1
        assert time.monotonic() - left < 1.0
        assert h.picker.outcomes == [("a", 200, None)]
        assert h.proxy.stats.connections == 0


async def test_sse_on_a_pooled_connection_streams_and_closes_when_the_client_leaves() -> None:
    # After a first request, the stream goes out on the pooled connection: begun in callbacks,
    # its head comes without the body and a task relays the rest.
    config = ProxyConfig(response_timeout=0.2)
    async with harness(Upstream("a"), config=config) as h:
        reader, writer = await raw_exchange(
            h.proxy.port,
            b"GET /api/log HTTP/1.1\r\nHost: lb\r\n\r\n"
            b"GET /api/sse HTTP/1.1\r\nHost: lb\r\nAccept: text/event-stream\r\n\r\n",
        )
        assert (await read_response(reader))[0] == 200
        status, headers, body = await asyncio.wait_for(read_response(reader), 5)
        assert (status, headers["content-type"]) == (200, "text/event-stream")
        assert body.count(b"data: event") == 3
        writer.write(b"GET /api/quiet-sse HTTP/1.1\r\nHost: lb\r\n\r\n")
        received = b""
        while b"data: 1" not in received:
            received += await reader.read(65536)
        writer.close()
        left = time.monotonic()
        upstream = h.upstreams["a"]
        for _ in range(150):
            if upstream.disconnects:
                break
            await asyncio.sleep(0.02)
        assert upstream.disconnects == 1
        assert time.monotonic() - left < 1.0
        assert upstream.accepts == 1
        assert h.picker.outcomes == [("a", 200, None)] * 3


async def test_connect_refused_post_is_retried_on_another_instance() -> None:
    dead = dead_target("dead")
    async with harness(dead, Upstream("b")) as h:
        response = await h.client.post("/api/log", json={"name": "x"})
        assert response.status_code == 201
        assert response.headers["x-served-by"] == "b"
        assert h.picker.outcomes == [
            ("dead", None, UpstreamFailure.CONNECT_REFUSED),
            ("b", 201, None),
        ]
        assert h.proxy.stats.retries == 1


async def test_post_failing_after_it_was_sent_is_not_retried() -> None:
    async with harness(Upstream("a", "drop"), Upstream("b")) as h:
        response = await h.client.post("/api/log", json={"name": "x"})
        assert response.status_code == 502
        body = response.json()
        assert body["detail"] == []
        assert "a" in body["error"]
        assert response.headers["content-type"] == "application/json"
        assert h.upstreams["b"].seen == []
        assert h.picker.outcomes == [("a", None, UpstreamFailure.RESET)]


@pytest.mark.parametrize(
    ("method", "headers"),
    [("POST", {"Idempotency-Key": "k-1"}), ("GET", {})],
)
async def test_idempotent_request_failing_after_it_was_sent_is_retried(
    method: str, headers: dict[str, str]
) -> None:
    async with harness(Upstream("a", "drop"), Upstream("b")) as h:
        response = await h.client.request(method, "/api/log", headers=headers, content=b"{}")
        assert response.status_code in (200, 201)
        assert response.headers["x-served-by"] == "b"
        assert len(h.upstreams["a"].seen) == 1
        assert len(h.upstreams["b"].seen) == 1


async def test_stale_keepalive_connection_is_retried_once_on_a_fresh_one() -> None:
    async with harness(Upstream("a", "drop-reused")) as h:
        assert (await h.client.get("/api/log")).status_code == 200
        # The pooled connection drops the next request unanswered, as an instance closing an
        # idle connection would: a GET is re-sent on a fresh connection to the same instance.
        response = await h.client.get("/api/log")
        assert response.status_code == 200
        assert h.proxy.stats.stale_retries == 1
        assert h.upstreams["a"].accepts == 2
        assert [error for _, _, error in h.picker.outcomes] == [None, None]
        # A POST without Idempotency-Key may have been acted on: not re-sent.
        response = await h.client.post("/api/log", json={})
        assert response.status_code == 502


async def test_idle_connection_closed_by_the_instance_is_not_used() -> None:
    async with harness(Upstream("a", "idle-close")) as h:
        for _ in range(3):
            assert (await h.client.post("/api/log", json={})).status_code == 201
            await asyncio.sleep(0.15)  # the instance closes the pooled connection meanwhile
        assert h.upstreams["a"].accepts == 3
        assert h.proxy.stats.stale_retries == 0
        assert all(error is None for _, _, error in h.picker.outcomes)


async def test_no_instance_gives_503_with_retry_after() -> None:
    async with harness() as h:
        response = await h.client.post("/api/log", json={})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"] == "no healthy Log API instance"
        assert response.json()["detail"] == []


async def test_upstream_5xx_is_passed_through_and_reported() -> None:
    async with harness(Upstream("a"), Upstream("b")) as h:
        response = await h.client.get("/api/fail")
        assert response.status_code == 500
        assert response.headers["x-served-by"] == "a"
        assert h.picker.outcomes == [("a", 500, None)]


async def test_oversized_body_gives_413() -> None:
    config = ProxyConfig(max_body_size=1000)
    async with harness(Upstream("a"), config=config) as h:
        response = await h.client.post("/api/log", content=b"x" * 2000)
        assert response.status_code == 413
        assert response.json()["error"] == "request body too large"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"y" * 400

        response = await h.client.post("/api/log", content=chunks())
        assert response.status_code == 413
        assert (await h.client.post("/api/log", content=b"z" * 1000)).status_code == 201

        async def small_chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"w" * 100

        # A chunked request body within the limit goes on with a Content-Length.
        assert (await h.client.post("/api/log", content=small_chunks())).status_code == 201
        assert [len(s.body) for s in h.upstreams["a"].seen] == [1000, 300]
        assert h.upstreams["a"].seen[1].header("content-length") == "300"
        assert h.upstreams["a"].seen[1].header("transfer-encoding") is None


async def test_too_large_headers_give_431() -> None:
    config = ProxyConfig(max_header_size=2000)
    async with harness(Upstream("a"), config=config) as h:
        response = await h.client.get("/api/log", headers={"X-Big": "b" * 3000})
        assert response.status_code == 431


async def test_response_timeout_gives_504() -> None:
    config = ProxyConfig(response_timeout=0.3)
    async with harness(Upstream("a", "slow"), Upstream("b"), config=config) as h:
        began = time.monotonic()
        response = await h.client.post("/api/log", json={})
        assert response.status_code == 504
        assert 0.25 < time.monotonic() - began < 2
        assert h.picker.outcomes == [("a", None, UpstreamFailure.TIMEOUT)]
        assert h.upstreams["b"].seen == []


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_plain_and_streamed_answers_over_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    upstream = await Upstream("a").start()
    picker = StaticPicker([upstream.target])
    proxy = ProxyServer(picker=picker, route=default_route)
    await proxy.start(HOST, 0, ssl=context)
    try:
        url = f"https://{HOST}:{proxy.port}"
        trust = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=url, verify=trust, timeout=5) as client:
            for i in range(5):  # the first opens the pooled connection, the rest are plain
                posted = await client.post("/api/log", json={"i": i})
                assert posted.status_code == 201
                assert json.loads(posted.json()["body"]) == {"i": i}
                assert posted.headers["x-served-by"] == "a"
            chunked = await client.get("/api/chunked")
            assert chunked.text == "part1part2part3"
            async with client.stream("GET", "/api/sse") as response:
                events = [line async for line in response.aiter_lines() if line.startswith("data:")]
            assert events == ["data: event 0", "data: event 1", "data: event 2"]
        assert upstream.seen[0].header("x-forwarded-proto") == "http"  # config.scheme
        assert upstream.accepts == 1
        assert [status for _, status, _ in picker.outcomes] == [201] * 5 + [200, 200]
    finally:
        await proxy.aclose(grace=1)
        await upstream.close()


async def test_response_timeout_on_a_kept_alive_connection_gives_504() -> None:
    # The second request goes out on the pooled connection, in callbacks (no per-request timer:
    # the server's sweeper times it out).
    config = ProxyConfig(response_timeout=0.3)
    async with harness(Upstream("a"), config=config) as h:
        assert (await h.client.get("/api/log")).status_code == 200
        began = time.monotonic()
        response = await h.client.post("/api/slow", json={})
        assert response.status_code == 504
        assert 0.25 < time.monotonic() - began < 2
        assert h.picker.outcomes[-1] == ("a", None, UpstreamFailure.TIMEOUT)
        assert h.upstreams["a"].accepts == 1
        assert (await h.client.get("/api/log")).status_code == 200


async def test_a_response_without_headers_to_change_is_passed_on_as_sent() -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(
            h.proxy.port,
            b"GET /api/log HTTP/1.1\r\nHost: lb\r\n\r\n"  # opens the pooled connection
            b"GET /api/as-sent HTTP/1.1\r\nHost: lb\r\n\r\n",
        )
        await read_response(reader)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(
            b"HTTP/1.1 201 Made\r\nX-Mixed-Case: v\r\ncontent-length: 2\r\nx-served-by: a\r\n"
            b"x-request-id: "
        )
        assert b"connection" not in head.lower()
        assert await reader.readexactly(2) == b"{}"
        for request, connection in [
            (b"GET /api/as-sent HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "keep-alive"),
            (b"GET /api/as-sent HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n", "close"),
        ]:
            writer.write(request)
            status, headers, body = await read_response(reader)
            assert (status, headers["connection"], body) == (201, connection, b"{}")
            assert headers["x-mixed-case"] == "v"
        writer.close()


async def test_retry_budget_caps_retries() -> None:
    # No floor: retries may add at most 20% to the requests.
    config = ProxyConfig(retry_ratio=0.2, retry_min_per_second=0)
    async with harness(dead_target("dead"), Upstream("b"), config=config) as h:
        statuses = [(await h.client.post("/api/log", json={})).status_code for _ in range(10)]
        assert statuses.count(201) == 2
        assert statuses.count(502) == 8
        assert h.proxy.stats.retries == 2
        assert h.proxy.stats.retries_denied == 8


def test_retry_budget_window_slides() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.5, min_per_second=0.1, window=10.0, clock=lambda: now[0])
    assert budget.try_spend()  # the floor: 0.1/s over 10 s = 1 retry
    assert not budget.try_spend()
    for _ in range(4):
        budget.record_request()
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    now[0] = 10.5  # the first second's counts have left the window
    assert budget.try_spend()
    now[0] = 30.0
    assert budget.try_spend()
    assert not budget.try_spend()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(
            h.proxy.port,
            b"GET /api/chunked HTTP/1.1\r\nHost: lb\r\n\r\n"
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Length: 2\r\n\r\n{}"
            b"GET /health HTTP/1.1\r\nHost: lb\r\n\r\n",
        )
        first = await read_response(reader)
        second = await read_response(reader)
        third = await read_response(reader)
        writer.close()
        assert (first[0], first[2]) == (200, b"part1part2part3")
        assert second[0] == 201
        assert json.loads(second[2])["target"] == "/api/log"
        assert third[0] == 404  # no ASGI app here: not proxied, so not found


async def test_expect_100_continue() -> None:
    async with harness(Upstream("a"), config=ProxyConfig(max_body_size=100)) as h:
        reader, writer = await raw_exchange(
            h.proxy.port,
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\n\r\n",
        )
        status, _, _ = await read_response(reader)
        assert status == 100
        writer.write(b'{"name":1}\n')
        status, _, body = await read_response(reader)
        assert status == 201
        assert json.loads(body)["body"] == '{"name":1}\n'
        assert h.upstreams["a"].seen[0].header("expect") is None
        # Too large: refused at once, before the client sends the body.
        writer.write(
            b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Length: 500\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        status, headers, _ = await read_response(reader)
        assert status == 413
        assert headers["connection"] == "close"
        writer.close()


async def test_malformed_request_gives_400() -> None:
    async with harness(Upstream("a")) as h:
        reader, writer = await raw_exchange(h.proxy.port, b"GET /api/log HTTP/1.1\r\nBad\r\n\r\n")
        status, headers, body = await read_response(reader)
        writer.close()
        assert status == 400
        assert headers["connection"] == "close"
        assert "malformed" in json.loads(body)["error"]


async def test_non_proxied_requests_reach_the_asgi_app() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        message = await receive()
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one ", b"two ", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        body = json.dumps({"got": message["body"].decode(), "state": scope["state"]["k"]})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})

    async with harness(Upstream("a"), asgi_app=app, asgi_state={"k": "v"}) as h:
        response = await h.client.post("/api/registration?x=1", content=b"reg")
        assert response.status_code == 200
        assert response.json() == {"got": "reg", "state": "v"}
        assert "x-served-by" not in response.headers
        assert response.headers["x-request-id"]
        streamed = await h.client.get("/stream")
        assert streamed.text == "one two three"
        assert streamed.headers["transfer-encoding"] == "chunked"
        assert h.upstreams["a"].seen == []

    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["path"] == "/api/registration"
    assert scope["raw_path"] == b"/api/registration"
    assert scope["query_string"] == b"x=1"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == ""
    assert scope["client"][0] == HOST
    assert scope["server"] == (HOST, h.proxy.port)
    assert (b"content-length", b"3") in scope["headers"]


async def test_a_litestar_app_serves_what_is_not_proxied() -> None:
    from litestar import Litestar, get, post
    from litestar.params import JSONBody

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @post("/api/registration", status_code=201)
    async def register(data: JSONBody[dict[str, str]]) -> dict[str, str]:
        return data

    app = Litestar([health, register])
    async with harness(Upstream("a"), asgi_app=app) as h:
        assert (await h.client.get("/health")).json() == {"status": "ok"}
        response = await h.client.post("/api/registration", json={"name": "api-1"})
        assert (response.status_code, response.json()) == (201, {"name": "api-1"})
        assert (await h.client.get("/nowhere")).status_code == 404


async def test_graceful_close_lets_in_flight_requests_finish() -> None:
    async with harness(Upstream("a")) as h:
        stream = h.client.stream("GET", "/api/sse", headers={"Accept": "text/event-stream"})
        async with stream as response:
            closing = asyncio.create_task(h.proxy.aclose(grace=3))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient() as other:
                    await other.get(h.url + "/api/log")
            text = (await response.aread()).decode()
        await closing
        assert text.count("data: event") == 3


async def test_502_names_the_attempts_actually_made() -> None:
    # Two instances refuse: the second attempt finds no third instance, so 2 attempts, not 3.
    async with harness(dead_target("d1"), dead_target("d2")) as h:
        response = await h.client.post("/api/log", json={})
        assert response.status_code == 502
        assert response.json()["error"] == "instance d2 failed: connect refused (after 2 attempts)"
        assert h.picker.attempts == ["d1", "d2"]
    # Three instances drop a GET after it was sent: 1 try + max_retries (2) = 3 attempts.
    async with harness(Upstream("a", "drop"), Upstream("b", "drop"), Upstream("c", "drop")) as h:
        response = await h.client.get("/api/log")
        assert response.status_code == 502
        assert response.json()["error"] == "instance c failed: connection reset (after 3 attempts)"
        assert h.picker.attempts == ["a", "b", "c"]
    # One attempt, not retried (a POST already sent): no count in the message.
    async with harness(Upstream("a", "drop"), Upstream("b")) as h:
        response = await h.client.post("/api/log", json={})
        assert response.json()["error"] == "instance a failed: connection reset"
    # max_retries=1: two attempts although a third instance was there.
    config = ProxyConfig(max_retries=1)
    async with harness(dead_target("d1"), dead_target("d2"), Upstream("c"), config=config) as h:
        response = await h.client.get("/api/log")
        assert response.json()["error"] == "instance d2 failed: connect refused (after 2 attempts)"
        assert h.upstreams["c"].seen == []


KEYS = {"reader": "read", "writer": "write", "both": "read+write"}


async def test_api_keys_are_off_by_default() -> None:
    async with harness(Upstream("a"), config=ProxyConfig(cors_origins=())) as h:
        assert not h.proxy._gated  # no per-request work for keys or CORS
        assert (await h.client.get("/api/log")).status_code == 200
        response = await h.client.post("/api/log", json={}, headers={"X-Api-Key": "anything"})
        assert response.status_code == 201
        # With CORS turned off on the LB, the instance's own CORS headers pass through.
        assert response.headers["access-control-allow-origin"] == "http://instance.example"


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", {}, 401),
        ("POST", {}, 401),
        ("GET", {"Authorization": "Bearer nope"}, 401),
        ("GET", {"X-Api-Key": "nope"}, 401),
        ("GET", {"Authorization": "Basic reader"}, 401),
        ("GET", {"Authorization": "Bearer reader"}, 200),
        ("HEAD", {"X-Api-Key": "reader"}, 200),
        ("POST", {"Authorization": "Bearer reader"}, 403),
        ("POST", {"X-Api-Key": "writer"}, 201),
        ("GET", {"X-Api-Key": "writer"}, 403),
        ("DELETE", {"X-Api-Key": "reader"}, 403),
        ("GET", {"authorization": "bearer both"}, 200),
        ("POST", {"X-Api-Key": "both"}, 201),
    ],
)
async def test_api_keys_with_read_and_write_scopes(
    method: str, headers: dict[str, str], status: int
) -> None:
    async with harness(Upstream("a"), config=ProxyConfig(api_keys=KEYS)) as h:
        response = await h.client.request(method, "/api/log", headers=headers)
        assert response.status_code == status, response.text
        seen = h.upstreams["a"].seen
        if status >= 400:
            assert seen == []
            if method != "HEAD":
                assert response.json()["detail"] == []
                assert response.json()["error"]
            assert response.headers["content-type"] == "application/json"
            assert ("www-authenticate" in response.headers) == (status == 401)
        else:
            # The key is passed on: instances with the same keys check it too.
            sent = [s.header("authorization") or s.header("x-api-key") for s in seen]
            given = {name.lower(): value for name, value in headers.items()}
            assert sent == [given.get("authorization") or given.get("x-api-key")]
            assert response.headers["x-served-by"] == "a"


async def test_api_key_errors_name_the_scope() -> None:
    async with harness(Upstream("a"), config=ProxyConfig(api_keys=KEYS)) as h:
        missing = await h.client.get("/api/log")
        assert missing.json()["error"] == (
            "an API key is needed: Authorization: Bearer <key> or X-Api-Key: <key>"
        )
        assert missing.headers["www-authenticate"] == "Bearer"
        assert (await h.client.get("/api/log", headers={"X-Api-Key": "x"})).json()[
            "error"
        ] == "unknown API key"
        denied = await h.client.post("/api/log", headers={"X-Api-Key": "reader"}, json={})
        assert denied.json()["error"] == "this API key may not write (POST needs the write scope)"
        # A refused request leaves the client connection usable.
        assert (await h.client.get("/api/log", headers={"X-Api-Key": "reader"})).status_code == 200


ORIGIN = "http://ui.example:8000"


async def test_cors_preflight_is_answered_by_the_lb() -> None:
    config = ProxyConfig(cors_origins=(ORIGIN,), api_keys=KEYS)
    async with harness(Upstream("a"), config=config) as h:
        preflight = await h.client.options(
            "/api/log",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-api-key",
            },
        )
        # No API key needed: browsers send none with a preflight.
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "content-type, x-api-key"
        assert preflight.headers["access-control-max-age"] == "600"
        assert "origin" in preflight.headers["vary"]
        assert preflight.content == b""

        other = await h.client.options(
            "/api/log",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert other.status_code == 403
        assert "http://evil.example" in other.json()["error"]
        assert "access-control-allow-origin" not in other.headers
        assert h.upstreams["a"].seen == []  # neither reached an instance


async def test_cors_headers_on_proxied_responses_for_allowed_origins_only() -> None:
    config = ProxyConfig(cors_origins=(ORIGIN, "https://other.example"))
    async with harness(Upstream("a"), config=config) as h:
        allowed = await h.client.post("/api/log", json={}, headers={"Origin": ORIGIN})
        assert allowed.status_code == 201
        # The LB's header replaces the instance's own.
        assert allowed.headers.get_list("access-control-allow-origin") == [ORIGIN]
        assert allowed.headers["vary"] == "origin"
        assert "x-served-by" in allowed.headers["access-control-expose-headers"]

        stranger = await h.client.get("/api/log", headers={"Origin": "http://evil.example"})
        assert stranger.status_code == 200
        assert "access-control-allow-origin" not in stranger.headers
        plain = await h.client.get("/api/log")
        assert "access-control-allow-origin" not in plain.headers
        assert plain.headers["vary"] == "origin"  # without Origin, the answer still depends on it
        # A streamed response gets it too.
        streamed = await h.client.get(
            "/api/logs/chunked", headers={"Origin": "https://other.example"}
        )
        assert streamed.headers["access-control-allow-origin"] == "https://other.example"
        # A plain OPTIONS (no Access-Control-Request-Method) is not a preflight: proxied.
        await h.client.options("/api/log", headers={"Origin": ORIGIN})
        assert [s.method for s in h.upstreams["a"].seen][-1] == "OPTIONS"


async def test_cors_on_the_proxys_own_errors() -> None:
    config = ProxyConfig(cors_origins=("*",), api_keys=KEYS)
    async with harness(dead_target("dead"), config=config) as h:
        # The browser must be able to read a 401 or a 502.
        unauthorized = await h.client.get("/api/log", headers={"Origin": "http://any.example"})
        assert unauthorized.status_code == 401
        assert unauthorized.headers["access-control-allow-origin"] == "*"
        failed = await h.client.get(
            "/api/log", headers={"Origin": "http://any.example", "X-Api-Key": "reader"}
        )
        assert failed.status_code == 502
        assert failed.headers["access-control-allow-origin"] == "*"
        assert "www-authenticate" not in failed.headers
        # A refused request to a log route can be read by the browser too.
        too_large = await h.client.post(
            "/api/log", content=b"x" * (11 * 1024 * 1024), headers={"Origin": "http://a.example"}
        )
        assert too_large.status_code == 413
        assert too_large.headers["access-control-allow-origin"] == "*"
        # Errors before the request is known (a malformed head) carry no CORS header.
        reader, writer = await raw_exchange(
            h.proxy.port,
            b"GET /api/log HTTP/1.1\r\nHost: lb\r\nOrigin: http://x.example\r\nBad\r\n\r\n",
        )
        status, headers, _ = await read_response(reader)
        writer.close()
        assert status == 400
        assert "access-control-allow-origin" not in headers


SDK_HEADERS = "content-type, authorization, x-api-key, idempotency-key, last-event-id"


async def test_cors_is_on_by_default_for_any_origin_on_the_log_routes_only() -> None:
    async with harness(Upstream("a")) as h:
        for path in ("/api/log", "/api/logs", "/api/logs/stream"):
            preflight = await h.client.options(
                path,
                headers={
                    "Origin": "http://localhost:5173",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": SDK_HEADERS,
                },
            )
            assert preflight.status_code == 204, (path, preflight.text)
            assert preflight.headers["access-control-allow-origin"] == "*"
            assert preflight.headers["access-control-allow-headers"] == SDK_HEADERS
            assert "access-control-allow-credentials" not in preflight.headers
        actual = await h.client.get("/api/log", headers={"Origin": "http://localhost:5173"})
        assert actual.headers.get_list("access-control-allow-origin") == ["*"]
        assert "x-request-id" in actual.headers["access-control-expose-headers"]
        assert "vary" not in actual.headers  # the answer does not depend on the origin
        # Other paths (the registration API and the control plane, or anything else proxied)
        # are not exposed: preflights refused, no CORS header on answers.
        for path in ("/api/registration", "/api/registration/services", "/health", "/api/x"):
            refused = await h.client.options(
                path,
                headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "GET"},
            )
            assert refused.status_code == 403, path
            assert refused.json()["error"] == f"CORS is not allowed on {path}"
            assert "access-control-allow-origin" not in refused.headers
        other = await h.client.get("/api/x", headers={"Origin": "http://localhost:5173"})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers  # the instance's is dropped
        assert h.upstreams["a"].seen[-1].target == "/api/x"


async def test_one_vary_header_merged_with_the_instances() -> None:
    config = ProxyConfig(cors_origins=(ORIGIN,))
    async with harness(Upstream("a"), config=config) as h:
        response = await h.client.get("/api/logs/vary", headers={"Origin": ORIGIN})
        assert response.headers.get_list("vary") == ["Origin, accept-encoding"]
        assert response.headers["access-control-allow-origin"] == ORIGIN
        # Without an Origin the answer still varies by it (for caches).
        assert (await h.client.get("/api/log")).headers.get_list("vary") == ["origin"]


def test_runs_on_uvloop() -> None:
    async def scenario() -> None:
        async with harness(dead_target("dead"), Upstream("b")) as h:
            assert (await h.client.post("/api/log", json={"n": 1})).status_code == 201
            assert (await h.client.get("/api/chunked")).text == "part1part2part3"
            async with h.client.stream("GET", "/api/sse") as response:
                lines = [line async for line in response.aiter_lines() if line]
            assert lines[-1] == "data: event 2"

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


@pytest.fixture(autouse=True)
def _quiet_proxy_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test that makes the proxy log an unexpected error."""
    yield
    errors = [
        r for r in caplog.records if r.name.startswith("aygolog.lb") and r.levelname == "ERROR"
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/ingest/clef", {"X-Seq-ApiKey": "writer"}, 201),
        ("/ingest/clef?apiKey=writer", {}, 201),
        ("/api/events/raw?clef&apiKey=writer", {}, 201),
        ("/api/events/raw", {"X-Seq-ApiKey": "reader"}, 403),
        ("/ingest/clef?apiKey=nope", {}, 401),
        ("/api/logs", {"X-Seq-ApiKey": "writer"}, 401),  # Seq's forms only on Seq's paths
        ("/api/logs?apiKey=writer", {}, 401),
    ],
)
async def test_seq_clients_key_forms_on_seqs_paths_only(
    path: str, headers: dict[str, str], status: int
) -> None:
    """Seq's clients send their key as `X-Seq-ApiKey` or `?apiKey=`; the LB takes those on
    the Seq ingest paths (as the instances do), and nowhere else."""
    async with harness(Upstream("a"), config=ProxyConfig(api_keys=KEYS)) as h:
        response = await h.client.post(path, headers=headers, content=b"{}")
        assert response.status_code == status, response.text
        assert (h.upstreams["a"].seen != []) == (status == 201)
