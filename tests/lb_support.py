"""Helpers for the load balancer's in-process tests over real sockets: a tiny stand-in for a Log
API instance, and the whole load balancer (data plane + control plane) on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar

from aygolog.lb import HealthCheckOptions, create_load_balancer, run_load_balancer
from aygolog.registry import InMemoryServiceRegistry, ServiceRegistry
from aygolog.settings import LoadBalancerSettings

TOKEN = "lb-support-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class TinyInstance:
    """An HTTP/1.1 server standing in for a Log API instance: `/health` answers
    `health_status`, everything else 200 with `[]`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health_status = 200
        self.served = 0
        self.probe_hosts: list[str] = []
        """The Host header of each /health request."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> TinyInstance:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                if target == b"/health":
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"host:"):
                            self.probe_hosts.append(line[5:].strip().decode())
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                status, body = (self.health_status, b"{}") if target == b"/health" else (200, b"[]")
                if target != b"/health":
                    self.served += 1
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"\r\n%s" % (status, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@asynccontextmanager
async def serving(
    registry: ServiceRegistry | None = None, **values: Any
) -> AsyncIterator[tuple[str, Litestar]]:
    """The whole load balancer on a free loopback port, with `registry` (default: a new
    in-memory one), health probes every 50 ms and `values` as its settings."""
    values = {"registration_token": TOKEN, "strategy": "round_robin", **values}
    lb_settings = LoadBalancerSettings(host="127.0.0.1", port=0, **values)
    app = create_load_balancer(
        lb_settings,
        registry=registry or InMemoryServiceRegistry(),
        health_options=HealthCheckOptions(interval=0.05, timeout=0.5),
    )
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_load_balancer(lb_settings, app=app, stop=stop, started=port.set_result, grace=0.5)
    )
    try:
        yield f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}", app
    finally:
        stop.set()
        await task


async def wait_for(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Wait until `check()` is true (AssertionError after `within` seconds)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)
