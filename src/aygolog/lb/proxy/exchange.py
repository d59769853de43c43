"""The exchanges run in callbacks: `_Exchange` with an instance (the plain path) and
`_AsgiExchange` with the in-process ASGI app."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aygolog.lb.proxy.config import CLIENT_CLOSED_REQUEST, Target
from aygolog.lb.proxy.wire import _HOP_BY_HOP, _IDEMPOTENT, _Request, _status_line, _tokens
from aygolog.lb.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamFailure,
    UpstreamResponse,
)

if TYPE_CHECKING:
    from aygolog.lb.proxy.client import _Client


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
