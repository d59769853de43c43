"""The load balancer's data plane: an HTTP/1.1 reverse proxy on asyncio (uvloop) and httptools.

`ProxyServer` accepts client connections and parses requests with httptools. For each request
`route(method, path)` says whether to proxy it; a proxied request goes to the instance the
`picker` chooses, over a pooled keep-alive connection (`aygolog.lb.upstream`); anything else is
handed, in-process, to an ASGI app (the LB's Litestar control plane: registration, `/health`,
`/metrics`). A raw server is used because the data plane must keep up with nginx: in this
project's calibration (ARCHITECTURE.md) a Litestar route in front of the same pooled sockets
reached 0.48x nginx's throughput, this design 0.66x.

The plain case costs no task, no future and no timer: a proxied request with an origin-form
target, for which an idle pooled connection to the instance picked exists, is written to the
instance from the client's parser callback (its head as received, with X-Forwarded-* and
X-Request-Id appended, when it has no header the proxy drops or sets), and a response that
arrives whole in one read goes to the client from the instance connection's callback, in one
write (its head as received, plus X-Served-By and X-Request-Id, when it has no header to drop or
change). Its `response_timeout` is checked by the server's sweeper, so a 504 there may come up to
a quarter of the timeout (at most 1 s) late. Anything else (a new connection to open, a body still
to come, SSE, a failure with its retries, the ASGI app, pipelined requests) goes on in a task.

Per client connection, requests are answered one at a time, in order (pipelining-safe). What a
client sends is bounded before httptools sees it (`aygolog.lb.framing`): the request line, each
header line and the whole head are limited on the bytes received (414/431 at once, however much
more the client sends), and each head goes to the parser whole. A request must arrive whole within
its deadlines, the head within `request_head_timeout` of its first byte and the body within
`request_body_timeout` of the end of the head (408 and close; no byte resets them); an idle
connection between requests is closed after `keep_alive_timeout`. Request
bodies are buffered up to `ProxyConfig.max_body_size` (413 beyond), which makes every request
replayable for a retry; responses are streamed as they arrive (SSE included), with back-pressure
from a slow client to the instance's connection. A client that closes its side of an event
stream has left: the proxy closes its connection to the instance at once (a quiet stream would
otherwise hold both until its next keep-alive comment).

Retries: a request is sent again to another instance (at most `max_retries` times, and only while
the `RetryBudget` allows) when the instance cannot have acted on it: no connection could be made,
or the connection failed before the request was fully sent and before any answer. After the
request was sent, only GET, HEAD and requests with an `Idempotency-Key` are retried. A failure on
a kept-alive connection before any answer (the instance closed it as we wrote) is first retried
once on a fresh connection to the same instance, under the same rule. Once response headers have
gone to the client nothing is retried: the client connection is cut instead.

Answers of the proxy itself: 502 (the instances failed), 503 with `Retry-After` (no instance to
send to), 504 (no response within `response_timeout`; never applied to SSE), 400/413/414/431 for
bad requests, 408 for slow ones, 417 for an `Expect` other than `100-continue`, 505 for an HTTP
version other than 1.0/1.1, 501 for a Transfer-Encoding other than chunked (HTTP/1.1 needs
exactly one Host; HTTP/1.0 may not use
Transfer-Encoding; headers the proxy relies on, such as Host, are never stripped by being named in
`Connection`), 401/403 for a missing or insufficient API key. Their JSON body is
`{"error": "...", "detail": []}`.

Optional, off by default and then costing one attribute test per request:

- API keys (`ProxyConfig.api_keys`): every proxied request needs `Authorization: Bearer <key>` or
  `X-Api-Key: <key>` (a dict lookup); 401 when missing or unknown, 403 when the key's scope does
  not allow the method (GET, HEAD and OPTIONS read; every other method writes). The key is
  passed on: instances given the same keys check them too (so going around the load balancer
  does not go around the keys).

CORS is on by default (`ProxyConfig.cors_origins`, `("*",)`: any origin, without credentials), on
the paths of `ProxyConfig.cors_paths` only (the log routes): a preflight (`OPTIONS` with `Origin`
and `Access-Control-Request-Method`) is answered by the proxy itself (204, or 403 for an origin not
allowed); proxied responses and the proxy's own errors to an allowed origin carry
`Access-Control-Allow-Origin` (`*`, or the origin when a list restricts them, then with
`Vary: Origin` merged into the instance's one `Vary`) and `Access-Control-Expose-Headers`; the
instances' own `Access-Control-*` headers are dropped. A preflight for any other path (the
registration API, the control plane) is refused with 403 and no CORS header. An empty
`cors_origins` turns CORS handling off (preflights are then proxied like any request).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from ssl import SSLContext
from typing import Any, Final, Protocol, cast
from urllib.parse import unquote

import httptools
import msgspec

from aygolog.errors import NoHealthyInstance
from aygolog.lb.framing import ChunkedScanner, FramingError, HeadScanner
from aygolog.lb.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamFailure,
    UpstreamPools,
    UpstreamResponse,
)

__all__ = [
    "ASGIApp",
    "Picker",
    "ProxyConfig",
    "ProxyServer",
    "ProxyStats",
    "RetryBudget",
    "Route",
    "Target",
    "serve",
]

log = logging.getLogger("aygolog.lb.proxy")

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
"""An ASGI 3 application (`app(scope, receive, send)`), e.g. a Litestar app."""

Route = Callable[[str, str], bool]
"""`route(method, path)`: True to proxy the request, False to give it to the ASGI app."""

# The status the proxy reports to `Picker.finished` when the client went away before the
# instance answered (nginx's convention): not an instance failure.
CLIENT_CLOSED_REQUEST: Final = 499


class Target(Protocol):
    """An instance to send a request to."""

    @property
    def name(self) -> str:
        """The instance's unique name (returned to the client in `X-Served-By`)."""
        ...

    @property
    def host(self) -> str:
        """Its host name or address."""
        ...

    @property
    def port(self) -> int:
        """Its port."""
        ...


class Picker(Protocol):
    """Chooses the instance for each request and hears how each exchange ended."""

    def pick(self, exclude: set[str]) -> Target:
        """The instance for the next attempt, other than those named in `exclude`.

        Raises:
            NoHealthyInstance: there is none.
        """
        ...

    def started(self, name: str) -> None:
        """An attempt on the named instance begins (before connecting)."""
        ...

    def finished(self, name: str, status: int | None, seconds: float, error: str | None) -> None:
        """An attempt on the named instance ended.

        Args:
            name: the instance.
            status: its HTTP status; None when it gave none; 499 when the client went away first.
            seconds: from `started` to the end of the response (or the failure).
            error: None, or the `UpstreamFailure` (a str) that ended the attempt: a failure of
                the instance or of the network to it (connect refused/timeout, reset, timeout,
                invalid response).
        """
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """Limits and timeouts of the proxy.

    Args:
        max_body_size: largest request body accepted (buffered), in bytes; 413 beyond.
        max_header_size: largest request head (request line plus headers), in bytes; 431
            beyond. Checked on the bytes received, before parsing (`aygolog.lb.framing`).
        max_request_line: largest request line, in bytes; 414 beyond.
        max_header_line: largest single header line, in bytes; 431 beyond.
        connect_timeout: seconds to open a connection to an instance.
        response_timeout: seconds to wait for the response headers, and at most between two
            body chunks; 504 when the headers do not come. Not applied to SSE. On a pooled
            connection it is checked by a sweeper, so the 504 may come up to a quarter of it
            (at most 1 s) late.
        max_retries: extra attempts per request at most.
        retry_ratio: the retry budget: retries may add this share of extra requests...
        retry_min_per_second: ...plus this many retries per second, over...
        retry_window: ...a sliding window of this many seconds.
        max_idle_per_upstream: idle keep-alive connections kept per instance.
        upstream_idle_timeout: an idle upstream connection older than this is closed.
        keep_alive_timeout: an idle client connection (between requests) is closed after this
            many seconds; a new one that sends nothing, after `request_head_timeout`.
        request_head_timeout: a request's head must arrive whole within this many seconds of its
            first byte (a total deadline, not reset by each byte); else 408 and close.
        request_body_timeout: its body must arrive whole within this many seconds of the end of
            the head (or of the `100 Continue`); else 408 and close.
        max_pipelined: requests queued on one client connection before it is read no further.
        scheme: the scheme clients used, sent as `X-Forwarded-Proto`.
        trust_forwarded: keep the `X-Forwarded-Proto/-Host` a client sent (behind a trusted
            TLS terminator) instead of setting them.
        shutdown_timeout: default seconds `aclose` lets in-flight requests finish.
        api_keys: key -> scope (`read`, `write`, `read+write`) for proxied requests; None or
            empty: no key needed.
        cors_origins: browser origins allowed (`https://host[:port]`, or `*` for any, the
            default); empty: no CORS handling (the instances' own CORS headers pass through).
        cors_paths: the paths CORS applies to; an entry ending in `/` is a prefix.
    """

    max_body_size: int = 10 * 1024 * 1024
    max_header_size: int = 64 * 1024
    max_request_line: int = 16 * 1024
    max_header_line: int = 16 * 1024
    connect_timeout: float = 1.0
    response_timeout: float = 30.0
    max_retries: int = 2
    retry_ratio: float = 0.2
    retry_min_per_second: float = 3.0
    retry_window: float = 10.0
    max_idle_per_upstream: int = 64
    upstream_idle_timeout: float = 4.0
    keep_alive_timeout: float = 75.0
    request_head_timeout: float = 10.0
    request_body_timeout: float = 60.0
    max_pipelined: int = 16
    scheme: str = "http"
    trust_forwarded: bool = False
    shutdown_timeout: float = 10.0
    api_keys: Mapping[str, str] | None = None
    cors_origins: tuple[str, ...] = ("*",)
    cors_paths: tuple[str, ...] = ("/api/log", "/api/logs", "/api/logs/")


@dataclass(slots=True)
class ProxyStats:
    """Counters of the proxy (for `/metrics`)."""

    connections: int = 0
    """Client connections open now."""
    proxied: int = 0
    """Requests routed to the instances."""
    forwarded: int = 0
    """Requests given to the ASGI app."""
    retries: int = 0
    """Extra attempts on another instance."""
    retries_denied: int = 0
    """Retries the budget refused."""
    stale_retries: int = 0
    """Requests re-sent on a fresh connection after a kept-alive one failed before any answer."""


class RetryBudget:
    """Caps retries to `ratio` extra requests over a sliding `window`, plus a floor.

    A retry is allowed while retries in the window stay within `ratio` x requests in the window
    plus `min_per_second` x `window`, so a failing instance cannot multiply the load by the
    retry count, while a quiet LB can still retry now and then (as Finagle's RetryBudget).
    """

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 3.0,
        window: float = 10.0,
        buckets: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.floor = min_per_second * window
        self._clock = clock
        self._slot_length = window / buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._request_sum = 0
        self._retry_sum = 0
        self._slot = int(clock() / self._slot_length)

    def record_request(self) -> None:
        """Count one original request."""
        if int(self._clock() / self._slot_length) != self._slot:
            self._advance()
        self._requests[self._slot % len(self._requests)] += 1
        self._request_sum += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget if there is one left."""
        self._advance()
        if self._retry_sum + 1 > self.ratio * self._request_sum + self.floor:
            return False
        self._retries[self._slot % len(self._retries)] += 1
        self._retry_sum += 1
        return True

    def _advance(self) -> None:
        slot = int(self._clock() / self._slot_length)
        gap = slot - self._slot
        if gap <= 0:
            return
        count = len(self._requests)
        if gap >= count:
            self._requests = [0] * count
            self._retries = [0] * count
            self._request_sum = self._retry_sum = 0
        else:
            for step in range(1, gap + 1):
                index = (self._slot + step) % count
                self._request_sum -= self._requests[index]
                self._retry_sum -= self._retries[index]
                self._requests[index] = self._retries[index] = 0
        self._slot = slot


# -- wire constants -----------------------------------------------------------------------------

_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the proxy drops or sets itself.
_REQUEST_OWN: Final = _HOP_BY_HOP | {
    b"content-length",
    b"expect",
    b"x-request-id",
    b"x-forwarded-for",
}
_FORWARDED_PROTO_HOST: Final = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})
# Response headers the proxy drops or sets itself.
_RESPONSE_OWN: Final = _HOP_BY_HOP | {b"content-length", b"x-served-by", b"x-request-id"}
# A response header line the proxy must drop or change (hop-by-hop, its own, CORS); a response
# head without one goes to the client as received, with the proxy's headers added.
_RESPONSE_CHANGED: Final = re.compile(
    rb"\n(?:connection|keep-alive|proxy-[^:\r\n]*|te|trailer|transfer-encoding|upgrade|"
    rb"x-served-by|x-request-id|access-control-[^:\r\n]*)[ \t]*:",
    re.IGNORECASE,
)
_CONNECTION_KEEPS: Final = frozenset({b"keep-alive", b"close"})
# What a plain request head gets added (`_Client._upstream_request`), then its body.
_PLAIN_ADDED: Final = (
    b"%sx-forwarded-for: %s\r\nx-forwarded-proto: %s\r\nx-forwarded-host: %s\r\n"
    b"x-request-id: %s\r\n\r\n%s"
)
# Request headers the proxy acts on or relies on: naming one in `Connection` does not strip it
# (`Connection: host` must not send a request upstream without its Host).
_END_TO_END: Final = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"idempotency-key", b"authorization",
     b"x-api-key"}
)  # fmt: skip
_READ: Final = 1
_WRITE: Final = 2
_SCOPE_BITS: Final = {"read": _READ, "write": _WRITE, "read+write": _READ | _WRITE}
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_CORS_EXPOSE: Final = b"access-control-expose-headers: x-served-by, x-request-id, retry-after\r\n"
_CORS_ANY: Final = b"*"
_CORS_METHODS: Final = b"GET, HEAD, POST, OPTIONS"
_CORS_MAX_AGE: Final = 600
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
_IDEMPOTENT: Final = frozenset({"GET", "HEAD"})
_METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}
# What `on_headers_complete` does with a request header (one dict lookup per header; most
# headers are none of these).
_H_LENGTH: Final = 1
_H_CODING: Final = 2
_H_HOST: Final = 3
_H_XFF: Final = 4
_H_REQUEST_ID: Final = 5
_H_IDEMPOTENCY: Final = 6
_H_ACCEPT: Final = 7
_H_EXPECT: Final = 8
_H_CONNECTION: Final = 9
_H_ORIGIN: Final = 10
_H_PROTO: Final = 11
_H_FORWARDED_HOST: Final = 12
_H_HOP: Final = 13  # another hop-by-hop header: dropped
_HEADER_KINDS: Final = {
    b"content-length": _H_LENGTH,
    b"transfer-encoding": _H_CODING,
    b"host": _H_HOST,
    b"x-forwarded-for": _H_XFF,
    b"x-request-id": _H_REQUEST_ID,
    b"idempotency-key": _H_IDEMPOTENCY,
    b"accept": _H_ACCEPT,
    b"expect": _H_EXPECT,
    b"connection": _H_CONNECTION,
    b"origin": _H_ORIGIN,
    b"x-forwarded-proto": _H_PROTO,
    b"x-forwarded-host": _H_FORWARDED_HOST,
    **{name: _H_HOP for name in _HOP_BY_HOP if name not in (b"connection", b"transfer-encoding")},
}
_NO_EXCLUDE: Final[set[str]] = set()  # `Picker.pick` of a first attempt (never changed)
_REQUEST_ID: Final = re.compile(rb"[\x21-\x7e]{1,200}")
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_SSE: Final = b"text/event-stream"
_LINGER: Final = 2.0  # seconds to drain a rejected client's input before closing (as nginx)
_LINGER_BYTES: Final = 1024 * 1024  # ...reading at most this much of it (413: a largest body)

# Response framing towards the client.
_FRAME_NONE: Final = 0  # no body (HEAD, 1xx, 204, 304)
_FRAME_LENGTH: Final = 1  # Content-Length, body passed as is
_FRAME_CHUNKED: Final = 2  # re-framed as chunked
_FRAME_CLOSE: Final = 3  # HTTP/1.0 client: body delimited by closing the connection


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def _merge_vary(values: list[bytes]) -> bytes:
    """One `Vary` value: the instance's tokens (first spelling kept, no repeats) and `origin`."""
    seen: set[bytes] = set()
    tokens: list[bytes] = []
    for value in [*values, b"origin"]:
        for token in value.split(b","):
            token = token.strip()
            if token and token.lower() not in seen:
                seen.add(token.lower())
                tokens.append(token)
    return b"*" if b"*" in seen else b", ".join(tokens)


def _tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")} - {b""}


def _refusal(
    version: str, version11: bool, hosts: int, chunked: bool, expect: bytes | None
) -> tuple[int, str] | None:
    """Why a parsed request head is refused (status, message), or None (RFC 9110/9112)."""
    if not version11 and version != "1.0":
        if version == "0.9":
            return 400, "the request line has no HTTP version (HTTP/0.9 is not supported)"
        return 505, f"HTTP/{version} is not supported: send HTTP/1.1"
    if hosts > 1:
        return 400, "Host: more than one Host header"
    if not hosts and version11:
        return 400, "Host: an HTTP/1.1 request needs a Host header"
    if chunked and not version11:
        return 400, "Transfer-Encoding: not allowed in an HTTP/1.0 request"
    if expect is not None and expect.strip().lower() != b"100-continue":
        return 417, "Expect: only 100-continue is supported"
    return None


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing this connection's input."""


class _Request:
    """One client request, parsed (its body buffered)."""

    __slots__ = (
        "body",
        "chunks",
        "connection_tokens",
        "continue_sent",
        "cors_origin",
        "cors_vary",
        "event_stream",
        "expect_continue",
        "forwarded_host",
        "forwarded_proto",
        "has_idempotency_key",
        "head",
        "headers",
        "host",
        "keep_alive",
        "method",
        "origin",
        "plain",
        "raw",
        "reject",
        "request_id",
        "size",
        "url",
        "version11",
        "xff",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.raw = b""
        """The head as received (the request line, the header lines and the empty line)."""
        self.plain = False
        """The head may go to the instance as received, with the proxy's headers added: HTTP/1.1,
        an origin-form target, and no header the proxy drops or sets itself."""
        self.headers: list[tuple[bytes, bytes]] = []
        self.version11 = True
        self.keep_alive = False
        self.chunks: list[bytes] = []
        self.body = b""
        self.size = 0
        self.reject: tuple[int, str] | None = None
        self.expect_continue = False
        self.continue_sent = False
        self.host: bytes | None = None
        self.xff: bytes | None = None
        self.request_id = b""
        self.has_idempotency_key = False
        self.event_stream = False
        self.connection_tokens: set[bytes] | None = None
        self.forwarded_proto = False
        self.forwarded_host = False
        self.head = False
        self.origin: bytes | None = None
        """The request's `Origin` header."""
        self.cors_origin: bytes | None = None
        """What `Access-Control-Allow-Origin` says (`*` or the origin), when CORS applies to the
        request and its origin is allowed."""
        self.cors_vary = False
        """The answer depends on `Origin` (CORS restricted to a list): say so in `Vary`."""


class _IdleTimer:
    """Calls `expire` once nothing has been `touch`ed for `timeout` seconds."""

    __slots__ = ("_expire", "_handle", "_loop", "last", "timeout")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float, expire: Callable[[], None]
    ) -> None:
        self._loop = loop
        self.timeout = timeout
        self._expire = expire
        self.last = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_later(timeout, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        idle = self._loop.time() - self.last
        if idle >= self.timeout:
            self._handle = None
            self._expire()
        else:
            self._handle = self._loop.call_later(self.timeout - idle, self._check)


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


class _Client(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time."""

    def __init__(self, server: ProxyServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.config = server.config
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        config = self.config
        self.scanner = HeadScanner(
            max_head=config.max_header_size,
            max_request_line=config.max_request_line,
            max_header_line=config.max_header_line,
        )
        self.chunked: ChunkedScanner | None = None
        self.body_left = 0
        """Body bytes still to come: 0 while reading a head, -1 while reading a chunked body."""
        self.head_began = -1.0
        """When the first byte of the head being read arrived (-1: no head being read)."""
        self.in_head = False
        """The parser has begun a head it has not finished."""
        self.raw_head = b""
        """The head being parsed, as received."""
        self.body_began = 0.0
        """When the body being read was asked for (end of its head, or `100 Continue`)."""
        self.idle_since = loop.time()
        self.answered = False
        """Whether a request has been answered (until then, silence is held to the head
        deadline, not the keep-alive timeout)."""
        self.streaming_sse = False
        """An event stream is being relayed: the client's EOF means it left (close at once)."""
        self.linger_budget = _LINGER_BYTES
        self.client_ip = b""
        self.client_addr: tuple[str, int] | None = None
        self.server_addr: tuple[str, int] | None = None
        self.queue: collections.deque[_Request] = collections.deque()
        self.parsing: _Request | None = None
        self.task: asyncio.Task[None] | None = None
        """The task answering requests, when the plain path in callbacks could not."""
        self.exchange: _Exchange | None = None
        """The exchange with an instance run in callbacks (the plain path), if one is on."""
        self.lost = False
        self.eof = False
        self.ignore_input = False
        self.reading_paused = False
        self.write_paused = False
        self.cancel_on_lost = False
        self.on_resume: Callable[[], None] | None = None
        self.parse_error: tuple[int, str] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._disconnect: asyncio.Future[None] | None = None
        self._linger: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        """No request in progress, queued or being read."""
        return (
            self.task is None and self.exchange is None and not self.queue and self.parsing is None
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _stopped(self) -> bool:
        """Whether input is ignored now (a parser callback may have just decided so)."""
        return self.ignore_input

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def tick(self, now: float) -> None:
        """Called about once a second: close the connection if it has been idle too long, or answer
        408 and close it if a request has not arrived whole within its deadline."""
        if (
            self.task is not None
            or self.exchange is not None
            or self.queue
            or self.lost
            or self.ignore_input
        ):
            return
        config = self.config
        if self.body_left:
            timeout = config.request_body_timeout
            if now - self.body_began >= timeout:
                self._timed_out(f"the request body did not arrive within {timeout:g} s")
        elif self.head_began >= 0:
            timeout = config.request_head_timeout
            if now - self.head_began >= timeout:
                self._timed_out(f"the request headers did not arrive within {timeout:g} s")
        elif now - self.idle_since >= (
            config.keep_alive_timeout if self.answered else config.request_head_timeout
        ):
            # Between requests, or (with the head deadline) before a first byte: no answer.
            self.close()

    def _timed_out(self, message: str) -> None:
        req = self.parsing or _Request()
        self._reject(req, 408, message)

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client_addr = (str(peer[0]), int(peer[1]))
            self.client_ip = str(peer[0]).encode()
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            self.server_addr = (str(sock[0]), int(sock[1]))
        self.server._opened(self)
        if self.server.closing:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.scanner.reset()
        self.server._closed(self)
        if self._linger is not None:
            self._linger.cancel()
        if self.task is not None and self.cancel_on_lost:
            self.task.cancel()
        if self.exchange is not None:
            self.exchange.cancel()
        for waiter in (self._drain, self._disconnect):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.on_resume = None

    def eof_received(self) -> bool:
        self.eof = True
        if self.streaming_sse:
            # A client leaving an event stream only closes its side (no write of ours fails
            # until the next event, which may be many seconds away): close now, which cancels
            # the exchange and closes the instance's connection too.
            return False
        # Keep the write side open to answer what was asked before the client half-closed.
        return self.task is not None or self.exchange is not None or bool(self.queue)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        resume, self.on_resume = self.on_resume, None
        if resume is not None:
            resume()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.ignore_input:
            if self._linger is not None:
                # Drain a rejected client's input for a while, but not at any rate: past a
                # budget, stop reading (the client can still read our answer) until the close.
                self.linger_budget -= len(data)
                if self.linger_budget < 0 and self.transport is not None and not self.lost:
                    self.transport.pause_reading()
            return
        parser = self.parser
        scanner = self.scanner
        try:
            # Heads go to the parser whole, after the scanner checked their size (a whole head
            # in one read costs it one `find`); bodies go as they come, cut where they end, so
            # that the next head is scanned again.
            while data:
                left = self.body_left
                if not left:
                    got = scanner.feed(data)
                    if got is None:
                        if self.head_began < 0:  # (a head that comes whole needs no deadline)
                            self.head_began = self.loop.time()
                        return
                    head, data = got
                    self.raw_head = head
                    parser.feed_data(head)
                elif left > 0:
                    if len(data) <= left:
                        self.body_left = left - len(data)
                        parser.feed_data(data)
                        return
                    self.body_left = 0
                    parser.feed_data(data[:left])
                    data = data[left:]
                else:
                    assert self.chunked is not None
                    end = self.chunked.feed(data)
                    if end < 0:
                        parser.feed_data(data)
                        return
                    self.body_left = 0
                    parser.feed_data(data[:end])
                    data = data[end:]
                if self._stopped():
                    return
        except FramingError as exc:
            self._reject(self.parsing or _Request(), exc.status, exc.message)
        except httptools.HttpParserUpgrade:
            # Protocol upgrades (WebSocket, h2c) are not supported: the request was served as
            # a plain one (Upgrade is hop-by-hop) and the connection closes after it.
            self.ignore_input = True
            if self.queue:
                self.queue[-1].keep_alive = False
        except httptools.HttpParserError as exc:
            if self.parse_error is None and isinstance(exc.__context__, _Stop):
                return  # stopped on purpose after a rejected request
            status, message = self.parse_error or (400, f"malformed HTTP request: {exc}")
            req = self.parsing or _Request()
            self._reject(req, status, message)

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.ignore_input:
            raise _Stop
        self.parsing = _Request()
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        req = self.parsing
        if req is not None:
            req.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        if req is not None and not req.method:  # not after the head: trailers are dropped
            req.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        req = self.parsing
        if req is None:
            return
        self.head_began = -1.0
        self.in_head = False
        parser = self.parser
        req.method = method = parser.get_method()
        req.head = method == b"HEAD"
        version = parser.get_http_version()
        req.version11 = version11 = version == "1.1"
        req.keep_alive = parser.should_keep_alive()
        server = self.server
        length = -1
        chunked = False
        coding: bytes | None = None
        hosts = 0
        expect: bytes | None = None
        plain = version11 and req.url[:1] == b"/"
        trust = self.config.trust_forwarded
        kinds = _HEADER_KINDS
        for name, value in req.headers:
            kind = kinds.get(name)
            if kind is None:
                if plain and name[:6] == b"proxy-":
                    plain = False
                continue
            if kind == _H_LENGTH:
                length = int(value)
            elif kind == _H_HOST:
                hosts += 1
                if req.host is None:
                    req.host = value
            elif kind == _H_ACCEPT:
                if _SSE in value:
                    req.event_stream = True
            elif kind == _H_ORIGIN:
                req.origin = value
            elif kind == _H_IDEMPOTENCY:
                req.has_idempotency_key = True
            elif kind == _H_CODING:
                plain = False
                if chunked or value.strip().lower() != b"chunked":
                    coding = value  # a coding the proxy cannot pass on (it re-frames bodies)
                chunked = True
            elif kind == _H_XFF:
                plain = False
                req.xff = value if req.xff is None else req.xff + b", " + value
            elif kind == _H_REQUEST_ID:
                plain = False
                if _REQUEST_ID.fullmatch(value):
                    req.request_id = value
            elif kind == _H_EXPECT:
                plain = False
                expect = value
            elif kind == _H_CONNECTION:
                plain = False
                extra = _tokens(value) - _CONNECTION_KEEPS - _END_TO_END
                if extra:
                    req.connection_tokens = (req.connection_tokens or set()) | extra
            elif kind == _H_PROTO:
                req.forwarded_proto = True
                plain = plain and trust
            elif kind == _H_FORWARDED_HOST:
                req.forwarded_host = True
                plain = plain and trust
            else:  # _H_HOP
                plain = False
        if not req.request_id:
            req.request_id = server._request_id()
        refused = (
            None
            if version11 and hosts == 1 and expect is None and coding is None
            else _refusal(version, version11, hosts, chunked, expect)
        )
        if refused is None and coding is not None and version11:
            refused = (501, "Transfer-Encoding: only chunked is supported")
        if refused is not None:
            self._reject(req, *refused)
            return
        if plain and (length >= 0 or method not in _BODY_METHODS):
            # (A body method without Content-Length gets `content-length: 0` from the builder.)
            req.plain = True
            req.raw = self.raw_head
        if expect is not None and version11:
            req.expect_continue = True
        if length > self.config.max_body_size:
            self._reject(req, 413, "request body too large")
            return
        if chunked:
            self.body_left = -1
            if self.chunked is None:
                self.chunked = ChunkedScanner(max_trailer=self.config.max_header_size)
            else:
                self.chunked.reset()
        elif length > 0:
            self.body_left = length
        else:
            return  # no body
        self.body_began = self.loop.time()
        if req.expect_continue and self.task is None and self.exchange is None and not self.queue:
            self._send_continue(req)

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        if req is None:
            return
        req.size += len(body)
        if req.size > self.config.max_body_size:
            self._reject(req, 413, "request body too large")
            return
        req.chunks.append(body)

    def on_message_complete(self) -> None:
        req = self.parsing
        if req is None:
            return
        self.parsing = None
        self.body_left = 0
        chunks = req.chunks
        if chunks:
            req.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            req.chunks = []
        self._enqueue(req)

    # -- request queue --------------------------------------------------------------------------

    def _reject(self, req: _Request, status: int, message: str) -> None:
        """Answer `req` (in its turn) with an error and read nothing more from this client."""
        req.reject = (status, message)
        req.keep_alive = False
        if status == 413:
            # Enough to swallow the too-large body of an ordinary client, which then reads its
            # 413; a client refused for its head gets less (it may be sending without end).
            self.linger_budget = self.config.max_body_size + self.config.max_header_size
        self.parsing = None
        self.ignore_input = True
        self.parse_error = None
        self.scanner.reset()
        self._enqueue(req)

    def _send_continue(self, req: _Request) -> None:
        req.continue_sent = True
        self.body_began = self.loop.time()
        if self.transport is not None and not self.lost:
            self.transport.write(_CONTINUE)

    def _enqueue(self, req: _Request) -> None:
        if self.task is None and self.exchange is None and not self.queue:
            self._begin(req)
            return
        self.queue.append(req)
        if self.task is None and self.exchange is None:
            self.task = self.loop.create_task(self._serve_queue())
        elif (
            len(self.queue) >= self.config.max_pipelined
            and not self.reading_paused
            and self.transport is not None
        ):
            self.transport.pause_reading()
            self.reading_paused = True

    def _begin(self, req: _Request) -> None:
        """Answer `req` (nothing else is being answered): in callbacks if it is a plain proxied
        request, else in a task."""
        pending = self._start(req)
        if pending is not None:
            self.task = self.loop.create_task(self._serve_queue(req, pending))

    def _done(self, req: _Request, keep: bool) -> None:
        """An answer given in callbacks is complete: go on with the connection."""
        if self.write_paused or self.queue:
            # Wait for the client to take the answer, or answer pipelined requests, in a task.
            self.task = self.loop.create_task(self._serve_queue(req, None, keep))
            return
        self._after(req, keep)

    def _after(self, req: _Request, keep: bool) -> bool:
        """After an answer: close the connection (False) or get ready for the next request."""
        self.idle_since = self.loop.time()
        self.answered = True
        if not keep or self.lost or self.server.closing or self.eof:
            # No lingering after a timeout: the client is too slow to be worth waiting.
            self._end(drain_input=req.reject is not None and req.reject[0] != 408)
            return False
        waiting = self.parsing
        if waiting is not None and waiting.expect_continue and not waiting.continue_sent:
            self._send_continue(waiting)
        return True

    async def _serve_queue(
        self,
        req: _Request | None = None,
        pending: Coroutine[Any, Any, bool] | None = None,
        keep: bool = True,
    ) -> None:
        """Answer the queued requests in turn; first finish `req` (by awaiting `pending`, or
        already answered with `keep`) when given."""
        try:
            if req is not None:
                if pending is not None:
                    keep = await pending
                if self.write_paused:
                    # Read no further request until the client has taken this answer.
                    await self._drain_writes()
                if not self._after(req, keep):
                    return
            while self.queue and not self.lost:
                req = self.queue.popleft()
                if self.reading_paused and len(self.queue) < self.config.max_pipelined // 2:
                    self.reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                keep = await self._handle(req)
                if self.write_paused:
                    await self._drain_writes()
                if not self._after(req, keep):
                    return
        except asyncio.CancelledError:
            pass  # the client went away, or the server is cutting connections
        except Exception:
            log.exception("unexpected error while answering a request")
            self.abort()
        finally:
            self.task = None
            if pending is not None:
                pending.close()  # (never started if the task was cancelled at once)

    def _end(self, *, drain_input: bool) -> None:
        """Close after the last answer; after a rejection, first read and drop what the client
        is still sending, so that the close does not reset the connection before the client has
        read our answer (a lingering close, as nginx does)."""
        transport = self.transport
        if transport is None or self.lost:
            return
        if drain_input and transport.can_write_eof():
            self.ignore_input = True
            if self.reading_paused:
                transport.resume_reading()
            transport.write_eof()
            self._linger = self.loop.call_later(_LINGER, transport.close)
        else:
            self.ignore_input = True  # (this may run inside `data_received`)
            transport.close()

    async def _drain_writes(self) -> None:
        if self.write_paused and not self.lost:
            self._drain = self.loop.create_future()
            await self._drain

    def _start(self, req: _Request) -> Coroutine[Any, Any, bool] | None:
        """Begin to answer `req` in callbacks: None when that is under way or done, else the
        coroutine that answers it (to be run in a task).

        The plain case, a proxied request with an origin-form target, an idle connection to the
        instance picked and nothing to answer from the proxy itself, runs with no task and no
        future: the request is written to the instance here, and the instance's response goes
        to the client from the instance connection's callback (`_Exchange`).
        """
        method = _METHODS.get(req.method)
        url = req.url
        if req.reject is not None or method is None or method == "OPTIONS" or url[:1] != b"/":
            return self._handle(req)
        mark = url.find(b"?")
        path = (url if mark < 0 else url[:mark]).decode("latin-1")
        if "%" in path:
            path = unquote(path)
        server = self.server
        if not server.route(method, path):
            return self._handle(req)
        server.stats.proxied += 1
        if server._gated and (req.origin is not None or not server._gate_without_origin):
            answered = self._gate(req, method, path)
            if answered is not None:
                self._done(req, answered)
                return None
        server.budget.record_request()
        try:
            target = server.picker.pick(_NO_EXCLUDE)
        except NoHealthyInstance as exc:
            self._done(req, self._no_instance(req, exc))
            return None
        pool = server.pools.get(target.host, target.port)
        conn = pool.take_idle()
        if conn is None:
            return self._proxy(req, method, url, first=target)
        _Exchange(self, req, method, url, target, conn)
        return None

    def _no_instance(self, req: _Request, exc: NoHealthyInstance) -> bool:
        return self._error(
            req, 503, str(exc) or "no healthy instance", retry_after=exc.retry_after or 1.0
        )

    async def _handle(self, req: _Request) -> bool:
        """Answer one request; True to keep the connection for the next."""
        if req.reject is not None:
            status, message = req.reject
            if req.origin is not None and self.server._cors:
                self._allow_origin(req, req.url.partition(b"?")[0].decode("latin-1"))
            return self._error(req, status, message)
        method = _METHODS.get(req.method) or req.method.decode("latin-1")
        url = req.url
        if url[:1] != b"/" and url != b"*":
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                return self._error(req, 400, "invalid request target")
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            if url[:1] != b"/":
                return self._error(req, 400, "invalid request target")
        mark = url.find(b"?")
        raw_path, query = (url, b"") if mark < 0 else (url[:mark], url[mark + 1 :])
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        server = self.server
        if method == "OPTIONS" and server._cors and not server._cors_path(path):
            refused = self._refuse_preflight(req, path)
            if refused is not None:
                return refused
        if server.route(method, path):
            server.stats.proxied += 1
            if server._gated:
                answered = self._gate(req, method, path)
                if answered is not None:
                    return answered
            return await self._proxy(req, method, url)
        server.stats.forwarded += 1
        if server.asgi_app is None:
            return self._error(req, 404, "not found")
        return await self._asgi(server.asgi_app, req, method, path, raw_path, query)

    # -- API keys and CORS (only when configured) ------------------------------------------------

    def _allow_origin(self, req: _Request, path: str) -> bool:
        """Whether CORS applies to `path`; if so, set what the answer says about the origin."""
        server = self.server
        if not server._cors_path(path):
            return False
        req.cors_vary = not server._cors_any
        origin = req.origin
        if origin is not None and (server._cors_any or origin in server._cors_origins):
            req.cors_origin = _CORS_ANY if server._cors_any else origin
        return True

    def _refuse_preflight(self, req: _Request, path: str) -> bool | None:
        """403 for a CORS preflight to a path without CORS (registration, control plane)."""
        if req.origin is None or not any(
            name == b"access-control-request-method" for name, _ in req.headers
        ):
            return None  # not a preflight
        return self._error(req, 403, f"CORS is not allowed on {path}")

    def _gate(self, req: _Request, method: str, path: str) -> bool | None:
        """CORS and API-key checks of a proxied request: an answer (keep-alive), or None to
        proxy it."""
        server = self.server
        origin = req.origin
        # (`_allow_origin` first: it also sets the CORS headers of the answer.)
        if (
            server._cors
            and self._allow_origin(req, path)
            and method == "OPTIONS"
            and origin is not None
        ):
            wanted_method = wanted_headers = None
            for name, value in req.headers:
                if name == b"access-control-request-method":
                    wanted_method = value
                elif name == b"access-control-request-headers":
                    wanted_headers = value
            if wanted_method is not None:
                return self._preflight(req, origin, wanted_headers)
        keys = server._api_keys
        if keys is not None:
            key: bytes | None = None
            for name, value in req.headers:
                if name == b"authorization":
                    scheme, _, rest = value.partition(b" ")
                    if scheme.lower() == b"bearer":
                        key = rest.strip()
                elif name == b"x-api-key":
                    key = value.strip()
            challenge = b"www-authenticate: Bearer\r\n"
            if not key:
                return self._error(
                    req,
                    401,
                    "an API key is needed: Authorization: Bearer <key> or X-Api-Key: <key>",
                    extra=challenge,
                )
            scope = keys.get(key)
            if scope is None:
                return self._error(req, 401, "unknown API key", extra=challenge)
            if not scope & (_READ if method in _READ_METHODS else _WRITE):
                needed = "read" if method in _READ_METHODS else "write"
                return self._error(
                    req, 403, f"this API key may not {needed} ({method} needs the {needed} scope)"
                )
        return None

    def _preflight(self, req: _Request, origin: bytes, wanted_headers: bytes | None) -> bool:
        """Answer a CORS preflight: 204 for an allowed origin, 403 otherwise."""
        if req.cors_origin is None:
            return self._error(
                req,
                403,
                f"origin {origin.decode('latin-1')!r} is not allowed (AYGOLOG_CORS_ORIGINS)",
            )
        keep = req.keep_alive and not self.server.closing and not self.eof
        parts = [
            _status_line(204),
            b"access-control-allow-origin: ",
            req.cors_origin,
            b"\r\naccess-control-allow-methods: ",
            _CORS_METHODS,
            b"\r\naccess-control-max-age: %d\r\n" % _CORS_MAX_AGE,
            b"vary: origin, access-control-request-method, access-control-request-headers\r\n",
            b"x-request-id: ",
            req.request_id,
            b"\r\n",
        ]
        if wanted_headers:
            parts += (b"access-control-allow-headers: ", wanted_headers, b"\r\n")
        if not keep:
            parts.append(b"connection: close\r\n")
        elif not req.version11:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._write(b"".join(parts))
        return keep

    # -- answers of the proxy itself ------------------------------------------------------------

    def _error(
        self,
        req: _Request,
        status: int,
        message: str,
        *,
        retry_after: float | None = None,
        extra: bytes = b"",
    ) -> bool:
        keep = req.keep_alive and not self.server.closing and not self.eof
        content: dict[str, Any] = {"error": message, "detail": []}
        parts = [
            _status_line(status),
            b"content-type: application/json\r\n",
            extra,
        ]
        if req.cors_origin is not None:
            parts += (b"access-control-allow-origin: ", req.cors_origin, b"\r\n", _CORS_EXPOSE)
        if req.cors_vary:
            parts.append(b"vary: origin\r\n")
        if retry_after is not None:
            content["retry_after"] = retry_after
            parts.append(b"retry-after: %d\r\n" % max(1, math.ceil(retry_after)))
        body = msgspec.json.encode(content)
        parts.append(b"content-length: %d\r\n" % len(body))
        if req.request_id:
            parts += (b"x-request-id: ", req.request_id, b"\r\n")
        if not keep:
            parts.append(b"connection: close\r\n")
        elif not req.version11:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if not req.head:
            parts.append(body)
        self._write(b"".join(parts))
        return keep

    def _write(self, data: bytes) -> None:
        if not self.lost and self.transport is not None:
            self.transport.write(data)

    # -- proxying -------------------------------------------------------------------------------

    async def _proxy(
        self,
        req: _Request,
        method: str,
        url: bytes,
        *,
        first: Target | None = None,
        failed: _Failed | None = None,
    ) -> bool:
        """Send `req` to the instances (with retries) and relay the answer.

        Args:
            first: the instance already picked for the first attempt (the request counted in
                the retry budget).
            failed: a first attempt made in callbacks failed before anything reached the client:
                go on from there (the request counted in the retry budget).
        """
        server = self.server
        config = self.config
        budget = server.budget
        if first is None and failed is None:
            budget.record_request()
        idempotent = method in _IDEMPOTENT or req.has_idempotency_key
        exclude: set[str] = set()
        retries = 0
        attempts = 0
        failure: UpstreamError | None = None
        failed_name = ""
        self.cancel_on_lost = True
        try:
            while True:
                outcome: bool | UpstreamError | None
                if failed is not None:
                    target = failed.target
                    attempts += 1
                    if failed.stale:
                        if self.lost:
                            seconds = time.perf_counter() - failed.began
                            server.picker.finished(
                                target.name, CLIENT_CLOSED_REQUEST, seconds, None
                            )
                            return False
                        outcome = await self._exchange(
                            req, target, url, idempotent, began=failed.began
                        )
                    else:
                        outcome = failed.error
                    failed = None
                else:
                    if first is not None:
                        target, first = first, None
                    else:
                        try:
                            target = server.picker.pick(exclude)
                        except NoHealthyInstance as exc:
                            if failure is not None:
                                break
                            return self._no_instance(req, exc)
                    attempts += 1
                    outcome = await self._exchange(req, target, url, idempotent)
                if outcome is None:
                    return False
                if isinstance(outcome, bool):
                    return outcome
                failure, failed_name = outcome, target.name
                exclude.add(target.name)
                if retries >= config.max_retries or not outcome.retryable(idempotent):
                    break
                if self.lost:
                    return False
                if not budget.try_spend():
                    server.stats.retries_denied += 1
                    break
                retries += 1
                server.stats.retries += 1
        finally:
            self.cancel_on_lost = False
        assert failure is not None
        # `attempts`, not `retries + 1`: a retry may find no other instance to go to.
        tried = f" (after {attempts} attempts)" if attempts > 1 else ""
        if failure.failure is UpstreamFailure.TIMEOUT:
            return self._error(req, 504, f"instance {failed_name}: {failure.failure}{tried}")
        return self._error(req, 502, f"instance {failed_name} failed: {failure.failure}{tried}")

    async def _exchange(
        self,
        req: _Request,
        target: Target,
        url: bytes,
        idempotent: bool,
        *,
        began: float | None = None,
    ) -> bool | UpstreamError | None:
        """One attempt on one instance.

        Args:
            began: the attempt began in callbacks, on a kept-alive connection that the instance
                closed as it was used: make it again on a fresh connection (it is `started`).

        Returns True/False (answered; keep the client connection or not), None (the answer was
        cut after its head went out), or the `UpstreamError` that happened before anything was
        sent to the client (the caller may retry).
        """
        server = self.server
        picker = server.picker
        name = target.name
        pool = server.pools.get(target.host, target.port)
        fresh = began is not None
        if began is None:
            picker.started(name)
            began = time.perf_counter()
        conn: UpstreamConnection | None = None
        status: int | None = None
        try:
            data = self._upstream_request(req, target, url)
            while True:
                try:
                    conn = await pool.acquire(fresh=fresh)
                except UpstreamError as exc:
                    conn = None
                    picker.finished(name, None, time.perf_counter() - began, exc.failure)
                    return exc
                response = conn.request(data, head_only=req.head)
                try:
                    await self._response_head(conn, response, req.event_stream)
                except UpstreamError as exc:
                    conn.close()
                    conn = None
                    if not fresh and _stale(exc, idempotent):
                        # The instance closed this kept-alive connection as we used it.
                        fresh = True
                        server.stats.stale_retries += 1
                        continue
                    picker.finished(name, None, time.perf_counter() - began, exc.failure)
                    return exc
                break
            status = response.status
            return await self._relay(req, conn, response, name, began)
        except asyncio.CancelledError:
            # The client went away (or the server is cutting connections).
            if conn is not None:
                conn.close()
            seconds = time.perf_counter() - began
            picker.finished(name, status or CLIENT_CLOSED_REQUEST, seconds, None)
            raise

    async def _response_head(
        self, conn: UpstreamConnection, response: UpstreamResponse, event_stream: bool
    ) -> None:
        if response.status:
            return
        if response.error is not None:
            raise response.error
        head = response.wait_head()
        timeout = self.config.response_timeout
        if event_stream or timeout <= 0:
            await head
            return
        handle = self.loop.call_later(
            timeout, conn.abort, UpstreamFailure.TIMEOUT, f"no response within {timeout:g} s"
        )
        try:
            await head
        finally:
            handle.cancel()

    def _relay_whole(
        self,
        req: _Request,
        conn: UpstreamConnection,
        response: UpstreamResponse,
        name: str,
        began: float,
    ) -> bool:
        """Send a complete response to the client in one write; True to keep the connection."""
        status = response.status
        body = response.take_body()
        first = response.first
        if (
            first is not None
            and response.keep_alive
            and len(first) == response.received
            and first[:9] == b"HTTP/1.1 "
            and status >= 200
            and status != 204
            and status != 304
            and not req.head
            and req.cors_origin is None
            and not req.cors_vary
        ):
            end = first.find(b"\r\n\r\n") + 2
            if (
                end > 1
                and len(first) - end - 2 == len(body)
                and _RESPONSE_CHANGED.search(first, 0, end) is None
            ):
                # All of it came in one read, with a Content-Length (an HTTP/1.1 response to
                # keep the connection for, without Transfer-Encoding) and no header to change.
                keep = req.keep_alive and not self.server.closing and not self.eof
                self._write(
                    b"".join(
                        (
                            first[:end],
                            b"x-served-by: ",
                            self.server._name(name),
                            b"\r\nx-request-id: ",
                            req.request_id,
                            b"\r\n"
                            if keep and req.version11
                            else b"\r\nconnection: keep-alive\r\n"
                            if keep
                            else b"\r\nconnection: close\r\n",
                            first[end:],
                        )
                    )
                )
                conn.pool.release(conn)
                self.server.picker.finished(name, status, time.perf_counter() - began, None)
                return keep
        head, framing, keep, _ = self._client_head(req, response, name)
        if framing == _FRAME_NONE:
            self._write(head)
        else:
            if framing == _FRAME_CHUNKED:
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            self._write(head + body)
        conn.pool.release(conn)
        self.server.picker.finished(name, status, time.perf_counter() - began, None)
        return keep

    async def _relay_rest(self, exchange: _Exchange) -> bool:
        """Relay a response whose head came, in callbacks, without its whole body."""
        conn = exchange.conn
        response = exchange.response
        assert response is not None
        name = exchange.target.name
        if self.lost:
            conn.close()
            self.server.picker.finished(
                name, response.status, time.perf_counter() - exchange.began, None
            )
            return False
        self.cancel_on_lost = True
        try:
            kept = await self._relay(exchange.req, conn, response, name, exchange.began)
        except asyncio.CancelledError:
            conn.close()
            self.server.picker.finished(
                name, response.status, time.perf_counter() - exchange.began, None
            )
            raise
        finally:
            self.cancel_on_lost = False
        return bool(kept)

    async def _relay(
        self,
        req: _Request,
        conn: UpstreamConnection,
        response: UpstreamResponse,
        name: str,
        began: float,
    ) -> bool | None:
        """Send the instance's response to the client; return as `_exchange` does."""
        if response.complete:
            return self._relay_whole(req, conn, response, name, began)
        picker = self.server.picker
        pool = conn.pool
        status = response.status
        head, framing, keep, event_stream = self._client_head(req, response, name)
        # Stream the body as it comes.
        transport = self.transport
        assert transport is not None
        self._write(head)
        if event_stream:
            if self.eof:  # the client has already left
                conn.close()
                self.abort()
                picker.finished(name, status, time.perf_counter() - began, None)
                return None
            self.streaming_sse = True
        timer: _IdleTimer | None = None
        timeout = self.config.response_timeout
        if not (req.event_stream or event_stream) and timeout > 0:
            timer = _IdleTimer(
                self.loop,
                timeout,
                lambda: conn.abort(UpstreamFailure.TIMEOUT, f"no data for {timeout:g} s"),
            )
        chunked = framing == _FRAME_CHUNKED

        def sink(chunk: bytes) -> None:
            if self.lost or not chunk:
                return
            if chunked:
                transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                transport.write(chunk)
            if timer is not None:
                timer.touch()
            if self.write_paused and self.on_resume is None:
                conn.pause_reading()
                self.on_resume = conn.resume_reading

        try:
            await response.stream(sink)
        except UpstreamError as exc:
            # The head is out: the only honest thing left is to cut the client off.
            self.cancel_on_lost = False
            conn.close()
            self.abort()
            picker.finished(name, status, time.perf_counter() - began, exc.failure)
            return None
        finally:
            self.streaming_sse = False
            if timer is not None:
                timer.cancel()
            self.on_resume = None
        if chunked:
            self._write(b"0\r\n\r\n")
        pool.release(conn)
        picker.finished(name, status, time.perf_counter() - began, None)
        return keep

    def _upstream_request(self, req: _Request, target: Target, url: bytes) -> bytes:
        """The request as sent to the instance: hop-by-hop headers out, X-Forwarded-* in."""
        server = self.server
        trust = self.config.trust_forwarded
        xff = self.client_ip if req.xff is None else req.xff + b", " + self.client_ip
        if req.plain:
            # The head as received (its header lines as the client wrote them), then ours.
            raw = req.raw
            if not (req.forwarded_proto or req.forwarded_host):
                return _PLAIN_ADDED % (
                    raw[: len(raw) - 2],
                    xff,
                    server._scheme,
                    req.host or b"",  # (an HTTP/1.1 request has one)
                    req.request_id,
                    req.body,
                )
            parts = [raw[: len(raw) - 2], b"x-forwarded-for: ", xff, b"\r\n"]
            if not (req.forwarded_proto and trust):
                parts += (b"x-forwarded-proto: ", server._scheme, b"\r\n")
            if req.host is not None and not (req.forwarded_host and trust):
                parts += (b"x-forwarded-host: ", req.host, b"\r\n")
            parts += (b"x-request-id: ", req.request_id, b"\r\n\r\n", req.body)
            return b"".join(parts)
        own = server._request_own
        drop = req.connection_tokens
        parts = [req.method, b" ", url, b" HTTP/1.1\r\n"]
        for name, value in req.headers:
            if name in own or (drop is not None and name in drop) or name.startswith(b"proxy-"):
                continue
            parts += (name, b": ", value, b"\r\n")
        if req.host is None:
            parts.append(b"host: %s:%d\r\n" % (target.host.encode(), target.port))
        parts += (b"x-forwarded-for: ", xff, b"\r\n")
        if not (req.forwarded_proto and trust):
            parts += (b"x-forwarded-proto: ", server._scheme, b"\r\n")
        if req.host is not None and not (req.forwarded_host and trust):
            parts += (b"x-forwarded-host: ", req.host, b"\r\n")
        parts += (b"x-request-id: ", req.request_id, b"\r\n")
        body = req.body
        if body or req.method in _BODY_METHODS:
            parts.append(b"content-length: %d\r\n" % len(body))
        parts += (b"\r\n", body)
        return b"".join(parts)

    def _client_head(
        self, req: _Request, response: UpstreamResponse, name: str
    ) -> tuple[bytes, int, bool, bool]:
        """The response head for the client, its framing, keep-alive, and whether it is SSE."""
        status = response.status
        headers = response.headers
        drop: set[bytes] | None = None
        for header, value in headers:
            if header.lower() == b"connection":
                extra = _tokens(value) - _CONNECTION_KEEPS
                if extra:
                    drop = (drop or set()) | extra
        parts = [_status_line(status)]
        length: bytes | None = None
        event_stream = False
        strip_cors = self.server._cors  # the proxy answers for CORS, not the instances
        vary: list[bytes] | None = [] if req.cors_vary else None
        for header, value in headers:
            lower = header.lower()
            if (
                lower in _RESPONSE_OWN
                or lower.startswith(b"proxy-")
                or (strip_cors and lower.startswith(b"access-control-"))
            ):
                if lower == b"content-length":
                    length = value
                continue
            if drop is not None and lower in drop:
                continue
            if vary is not None and lower == b"vary":
                vary.append(value)  # merged with ours below: one Vary header
                continue
            if lower == b"content-type" and value[:17].lower() == _SSE:
                event_stream = True
            parts += (header, b": ", value, b"\r\n")
        keep = req.keep_alive and not self.server.closing and not self.eof
        if req.head or status < 200 or status in (204, 304):
            framing = _FRAME_NONE
            if length is not None:
                parts += (b"content-length: ", length, b"\r\n")
        elif length is not None:
            framing = _FRAME_LENGTH
            parts += (b"content-length: ", length, b"\r\n")
        elif req.version11:
            framing = _FRAME_CHUNKED
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            framing = _FRAME_CLOSE
            keep = False
        parts += (
            b"x-served-by: ",
            self.server._name(name),
            b"\r\nx-request-id: ",
            req.request_id,
            b"\r\n",
        )
        if req.cors_origin is not None:
            parts += (b"access-control-allow-origin: ", req.cors_origin, b"\r\n", _CORS_EXPOSE)
        if vary is not None:
            parts += (b"vary: ", _merge_vary(vary), b"\r\n")
        if not keep:
            parts.append(b"connection: close\r\n")
        elif not req.version11:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return b"".join(parts), framing, keep, event_stream

    # -- the ASGI app -----------------------------------------------------------------------------

    async def _asgi(
        self,
        app: ASGIApp,
        req: _Request,
        method: str,
        path: str,
        raw_path: bytes,
        query: bytes,
    ) -> bool:
        server = self.server
        headers = req.headers
        if not any(name == b"x-request-id" for name, _ in headers):
            headers = [*headers, (b"x-request-id", req.request_id)]
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1" if req.version11 else "1.0",
            "method": method,
            "scheme": self.config.scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": self.client_addr,
            "server": self.server_addr,
        }
        if server.asgi_state is not None:
            scope["state"] = dict(server.asgi_state)
        exchange = _AsgiExchange(self, req)
        try:
            await app(scope, exchange.receive, exchange.send)
        except Exception:
            log.exception("the ASGI app failed on %s %s", method, path)
            if not exchange.started or exchange.head_pending:
                return self._error(req, 500, "internal error; the server log has the details")
            self.abort()
            return False
        if exchange.complete:
            return exchange.keep
        if not exchange.started:
            log.error("the ASGI app sent no response to %s %s", method, path)
            return self._error(req, 500, "internal error; the server log has the details")
        if not self.lost:
            log.error("the ASGI app did not finish its response to %s %s", method, path)
            self.abort()
        return False

    def _response_done(self) -> None:
        if self._disconnect is not None and not self._disconnect.done():
            self._disconnect.set_result(None)

    async def _wait_disconnect(self) -> None:
        if self.lost:
            return
        if self._disconnect is None or self._disconnect.done():
            self._disconnect = self.loop.create_future()
        await self._disconnect


def _stale(exc: UpstreamError, idempotent: bool) -> bool:
    """Whether a failure is a kept-alive connection the instance closed as it was used (try the
    same instance again, once, on a fresh connection)."""
    return (
        exc.reused
        and exc.received == 0
        and exc.failure is UpstreamFailure.RESET
        and exc.retryable(idempotent)
    )


@dataclass(slots=True)
class _Failed:
    """A first attempt made in callbacks that failed before anything reached the client."""

    target: Target
    began: float
    error: UpstreamError
    stale: bool
    """The connection was a stale kept-alive one: the attempt is not over (not `finished`)."""


class _Exchange:
    """One attempt on an instance run in callbacks (the plain path of `_Client._start`).

    Made, it writes the request on an idle pooled connection and listens to the response
    (`aygolog.lb.upstream.ResponseListener`): a complete response goes to the client in one
    write from the instance connection's `data_received`; anything else (a body still to come,
    SSE, a failure: retries, 502/504) is handed to a task that goes on with the same state.
    """

    __slots__ = ("began", "client", "conn", "method", "req", "response", "target", "url")

    def __init__(
        self,
        client: _Client,
        req: _Request,
        method: str,
        url: bytes,
        target: Target,
        conn: UpstreamConnection,
    ) -> None:
        self.client = client
        self.req = req
        self.method = method
        self.url = url
        self.target = target
        self.conn = conn
        self.response: UpstreamResponse | None = None
        # Begin at once: the request goes out now (the listener may be told before `request`
        # returns, if the connection turns out closed).
        client.exchange = self
        client.server.picker.started(target.name)
        self.began = time.perf_counter()
        data = client._upstream_request(req, target, url)
        self.response = conn.request(data, head_only=req.head, listener=self)

    def tick(self, clock: float) -> None:
        """Called by the server's sweeper: fail the exchange if the response is late (504)."""
        timeout = self.client.config.response_timeout
        if timeout > 0 and not self.req.event_stream and clock - self.began >= timeout:
            self.conn.abort(UpstreamFailure.TIMEOUT, f"no response within {timeout:g} s")

    def _over(self) -> _Client:
        client = self.client
        client.exchange = None
        return client

    def cancel(self) -> None:
        """The client went away: drop the instance's connection (nginx's 499)."""
        self._over()
        response = self.response
        if response is not None:
            response.listener = None
        self.conn.close()
        status = response.status if response is not None else 0
        seconds = time.perf_counter() - self.began
        self.client.server.picker.finished(
            self.target.name, status or CLIENT_CLOSED_REQUEST, seconds, None
        )

    # -- ResponseListener -----------------------------------------------------------------------

    def upstream_complete(self, response: UpstreamResponse) -> None:
        client = self._over()
        req = self.req
        keep = client._relay_whole(req, self.conn, response, self.target.name, self.began)
        client._done(req, keep)

    def upstream_partial(self, response: UpstreamResponse) -> None:
        client = self._over()
        client.task = client.loop.create_task(
            client._serve_queue(self.req, client._relay_rest(self))
        )

    def upstream_failed(self, response: UpstreamResponse, error: UpstreamError) -> None:
        if response.status:  # after the head: relaying it will cut the client off
            self.upstream_partial(response)
            return
        client = self._over()
        self.conn.close()
        req = self.req
        stale = _stale(error, self.method in _IDEMPOTENT or req.has_idempotency_key)
        if stale:
            client.server.stats.stale_retries += 1
        else:
            seconds = time.perf_counter() - self.began
            client.server.picker.finished(self.target.name, None, seconds, error.failure)
        failed = _Failed(self.target, self.began, error, stale)
        client.task = client.loop.create_task(
            client._serve_queue(req, client._proxy(req, self.method, self.url, failed=failed))
        )


class _AsgiExchange:
    """`receive` and `send` of one ASGI http request."""

    __slots__ = (
        "body_taken",
        "chunked",
        "client",
        "complete",
        "head",
        "head_pending",
        "keep",
        "length_given",
        "no_body",
        "req",
        "started",
    )

    def __init__(self, client: _Client, req: _Request) -> None:
        self.client = client
        self.req = req
        self.body_taken = False
        self.started = False
        self.head_pending = False
        self.complete = False
        self.chunked = False
        self.keep = req.keep_alive and not client.server.closing and not client.eof
        self.head: list[bytes] = []
        self.length_given = False
        self.no_body = req.head

    async def receive(self) -> dict[str, Any]:
        if not self.body_taken:
            self.body_taken = True
            return {"type": "http.request", "body": self.req.body, "more_body": False}
        if not self.complete:
            await self.client._wait_disconnect()
        return {"type": "http.disconnect"}

    async def send(self, message: Mapping[str, Any]) -> None:
        kind = message["type"]
        client = self.client
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.head_pending = True
            status = int(message["status"])
            if status < 200 or status in (204, 304):
                self.no_body = True
            parts = [_status_line(status)]
            has_request_id = False
            for name, value in message.get("headers", ()):
                lower = bytes(name).lower()
                if lower in _HOP_BY_HOP:
                    if lower == b"connection" and b"close" in _tokens(bytes(value)):
                        self.keep = False
                    continue
                if lower == b"content-length":
                    self.length_given = True
                elif lower == b"x-request-id":
                    has_request_id = True
                parts += (bytes(name), b": ", bytes(value), b"\r\n")
            if not has_request_id:
                parts += (b"x-request-id: ", self.req.request_id, b"\r\n")
            self.head = parts
            return
        if kind != "http.response.body":
            return  # e.g. trailers or extensions this server does not offer
        if not self.started or self.complete:
            raise RuntimeError("http.response.body sent before the start or after the end")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        out: list[bytes] = []
        if self.head_pending:
            self.head_pending = False
            parts = self.head
            if not self.length_given and not self.no_body:
                if not more:
                    parts.append(b"content-length: %d\r\n" % len(body))
                elif self.req.version11:
                    self.chunked = True
                    parts.append(b"transfer-encoding: chunked\r\n")
                else:
                    self.keep = False
            if not self.keep:
                parts.append(b"connection: close\r\n")
            elif not self.req.version11:
                parts.append(b"connection: keep-alive\r\n")
            parts.append(b"\r\n")
            out = parts
            self.head = []
        if body and not self.no_body:
            if self.chunked:
                out += (b"%x\r\n" % len(body), body, b"\r\n")
            else:
                out.append(body)
        if not more:
            if self.chunked:
                out.append(b"0\r\n\r\n")
            self.complete = True
        if out:
            client._write(b"".join(out))
        if self.complete:
            client._response_done()
        if client.write_paused:
            await client._drain_writes()


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
