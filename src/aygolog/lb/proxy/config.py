"""What the proxy is configured with and reports: its settings, its picker and targets, its
statistics, and the retry budget."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

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
