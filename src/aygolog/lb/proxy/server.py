"""`ProxyServer`: the listening socket, its client connections and their sweeper; `serve`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Mapping
from ssl import SSLContext
from typing import Any

from aygolog.lb.proxy.client import _Client
from aygolog.lb.proxy.config import ASGIApp, Picker, ProxyConfig, ProxyStats, RetryBudget, Route
from aygolog.lb.proxy.wire import _FORWARDED_PROTO_HOST, _REQUEST_OWN, _SCOPE_BITS
from aygolog.lb.upstream import (
    UpstreamPools,
)

log = logging.getLogger("aygolog.lb.proxy")


class ProxyServer:
    """The data plane: proxies what `route` selects, hands the rest to `asgi_app`.

    Args:
        picker: chooses the instance per attempt and hears the outcome.
        route: `route(method, path)`, True to proxy (path is percent-decoded, without query).
        asgi_app: answers what is not proxied; without one, such requests get 404.
        config: limits and timeouts.
        asgi_state: the lifespan state of `asgi_app`; each request's scope gets a shallow copy.
        pools: the upstream connection pools (made from `config` when not given).
        retry_budget: shared retry budget (made from `config` when not given).
    """

    def __init__(
        self,
        *,
        picker: Picker,
        route: Route,
        asgi_app: ASGIApp | None = None,
        config: ProxyConfig | None = None,
        asgi_state: Mapping[str, Any] | None = None,
        pools: UpstreamPools | None = None,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self.config = config = config or ProxyConfig()
        self.picker = picker
        self.route = route
        self.asgi_app = asgi_app
        self.asgi_state = asgi_state
        self.pools = pools or UpstreamPools(
            max_idle=config.max_idle_per_upstream,
            connect_timeout=config.connect_timeout,
            idle_timeout=config.upstream_idle_timeout,
        )
        self.budget = retry_budget or RetryBudget(
            ratio=config.retry_ratio,
            min_per_second=config.retry_min_per_second,
            window=config.retry_window,
        )
        self.stats = ProxyStats()
        self.closing = False
        self._scheme = config.scheme.encode()
        self._request_own = (
            _REQUEST_OWN if config.trust_forwarded else _REQUEST_OWN | _FORWARDED_PROTO_HOST
        )
        self._api_keys: dict[bytes, int] | None = None
        if config.api_keys:
            self._api_keys = {
                key.encode(): _SCOPE_BITS[scope] for key, scope in config.api_keys.items()
            }
        self._cors = bool(config.cors_origins)
        self._cors_any = "*" in config.cors_origins
        self._cors_origins = frozenset(o.rstrip("/").encode() for o in config.cors_origins)
        self._cors_exact = frozenset(p for p in config.cors_paths if not p.endswith("/"))
        self._cors_prefixes = tuple(p for p in config.cors_paths if p.endswith("/"))
        self._gated = self._api_keys is not None or self._cors
        """Whether proxied requests need the API-key or CORS step (off: no work at all)."""
        self._gate_without_origin = self._api_keys is None and self._cors_any
        """Whether that step does nothing for a request without `Origin` (no keys, CORS for any
        origin: no `Vary: Origin` either)."""
        self._server: asyncio.Server | None = None
        self._connections: set[_Client] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._all_closed: asyncio.Future[None] | None = None
        self._names: dict[str, bytes] = {}
        self._port: int | None = None
        # Request ids: 16 random hex digits for this process, then a 16-digit counter (unique
        # across processes and restarts without the cost of `uuid4`, and still 32 hex digits).
        self._id_prefix = os.urandom(8).hex().encode()
        self._id_count = itertools.count(1).__next__

    @property
    def server(self) -> asyncio.Server:
        """The listening `asyncio.Server` (after `start`)."""
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return self._server

    @property
    def port(self) -> int:
        """The port listened on (useful after starting on port 0)."""
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    async def start(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8080,
        *,
        reuse_port: bool = False,
        backlog: int = 2048,
        ssl: SSLContext | None = None,
    ) -> asyncio.Server:
        """Listen on (host, port) on the running loop and serve until `aclose`.

        `reuse_port` lets several processes listen on the same port (SO_REUSEPORT, one per
        worker); `ssl` serves HTTP/1.1 over TLS with that server context.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Client(self, loop),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=backlog,
            ssl=ssl,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep(), name="aygolog-proxy-sweep")
        return self._server

    async def aclose(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (within `grace` seconds, by default
        `config.shutdown_timeout`), then close everything."""
        if self._server is None or self.closing:
            return
        self.closing = True
        loop = asyncio.get_running_loop()
        self._server.close()
        for conn in list(self._connections):
            if conn.idle:
                conn.close()
        if self._connections:
            self._all_closed = loop.create_future()
            wait = self.config.shutdown_timeout if grace is None else grace
            try:
                async with asyncio.timeout(wait):
                    await self._all_closed
            except TimeoutError:
                log.warning("%d connections still busy at shutdown: cut", len(self._connections))
        tasks = [conn.task for conn in self._connections if conn.task is not None]
        for conn in list(self._connections):
            conn.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.pools.aclose()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._server.wait_closed()

    async def __aenter__(self) -> ProxyServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- internals ------------------------------------------------------------------------------

    def _cors_path(self, path: str) -> bool:
        return path in self._cors_exact or path.startswith(self._cors_prefixes)

    def _request_id(self) -> bytes:
        return b"%s%016x" % (self._id_prefix, self._id_count())

    def _name(self, name: str) -> bytes:
        encoded = self._names.get(name)
        if encoded is None:
            if len(self._names) > 4096:
                self._names.clear()
            encoded = self._names[name] = name.encode()
        return encoded

    def _opened(self, conn: _Client) -> None:
        self._connections.add(conn)
        self.stats.connections = len(self._connections)

    def _closed(self, conn: _Client) -> None:
        self._connections.discard(conn)
        self.stats.connections = len(self._connections)
        waiter = self._all_closed
        if not self._connections and waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sweep(self) -> None:
        """Close idle and too-slow client connections, and time out the exchanges run in
        callbacks: one timer for all, once a second (more often for a `response_timeout` under
        4 s, so that none is more than a quarter late), instead of a timer per request."""
        timeout = self.config.response_timeout
        interval = min(1.0, timeout / 4) if timeout > 0 else 1.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            clock = time.perf_counter()
            for conn in list(self._connections):
                exchange = conn.exchange
                if exchange is not None:
                    exchange.tick(clock)
                conn.tick(now)


async def serve(
    host: str | None,
    port: int,
    *,
    picker: Picker,
    route: Route,
    asgi_app: ASGIApp | None = None,
    config: ProxyConfig | None = None,
    asgi_state: Mapping[str, Any] | None = None,
    reuse_port: bool = False,
) -> ProxyServer:
    """Start a `ProxyServer` on (host, port) on the running loop; `await server.aclose()` stops
    it gracefully."""
    server = ProxyServer(
        picker=picker, route=route, asgi_app=asgi_app, config=config, asgi_state=asgi_state
    )
    await server.start(host, port, reuse_port=reuse_port)
    return server
