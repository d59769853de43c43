"""Proxying a request to the instances: attempts, retries and the retry budget, and relaying
the answer to the client (whole in one write, streamed, or SSE)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aygolog.errors import NoHealthyInstance
from aygolog.lb.proxy.config import CLIENT_CLOSED_REQUEST, Target
from aygolog.lb.proxy.exchange import _Exchange, _Failed, _stale
from aygolog.lb.proxy.wire import (
    _BODY_METHODS,
    _CONNECTION_KEEPS,
    _CORS_EXPOSE,
    _FRAME_CHUNKED,
    _FRAME_CLOSE,
    _FRAME_LENGTH,
    _FRAME_NONE,
    _IDEMPOTENT,
    _PLAIN_ADDED,
    _RESPONSE_CHANGED,
    _RESPONSE_OWN,
    _SSE,
    _IdleTimer,
    _merge_vary,
    _Request,
    _status_line,
    _tokens,
)
from aygolog.lb.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamFailure,
    UpstreamResponse,
)

if TYPE_CHECKING:
    from aygolog.lb.proxy.client import _Client


async def _proxy(
    client: _Client,
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
    server = client.server
    config = client.config
    budget = server.budget
    if first is None and failed is None:
        budget.record_request()
    idempotent = method in _IDEMPOTENT or req.has_idempotency_key
    exclude: set[str] = set()
    retries = 0
    attempts = 0
    failure: UpstreamError | None = None
    failed_name = ""
    client.cancel_on_lost = True
    try:
        while True:
            outcome: bool | UpstreamError | None
            if failed is not None:
                target = failed.target
                attempts += 1
                if failed.stale:
                    if client.lost:
                        seconds = time.perf_counter() - failed.began
                        server.picker.finished(target.name, CLIENT_CLOSED_REQUEST, seconds, None)
                        return False
                    outcome = await client._exchange(
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
                        return client._no_instance(req, exc)
                attempts += 1
                outcome = await client._exchange(req, target, url, idempotent)
            if outcome is None:
                return False
            if isinstance(outcome, bool):
                return outcome
            failure, failed_name = outcome, target.name
            exclude.add(target.name)
            if retries >= config.max_retries or not outcome.retryable(idempotent):
                break
            if client.lost:
                return False
            if not budget.try_spend():
                server.stats.retries_denied += 1
                break
            retries += 1
            server.stats.retries += 1
    finally:
        client.cancel_on_lost = False
    assert failure is not None
    # `attempts`, not `retries + 1`: a retry may find no other instance to go to.
    tried = f" (after {attempts} attempts)" if attempts > 1 else ""
    if failure.failure is UpstreamFailure.TIMEOUT:
        return client._error(req, 504, f"instance {failed_name}: {failure.failure}{tried}")
    return client._error(req, 502, f"instance {failed_name} failed: {failure.failure}{tried}")


async def _exchange(
    client: _Client,
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
    server = client.server
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
        data = client._upstream_request(req, target, url)
        while True:
            try:
                conn = await pool.acquire(fresh=fresh)
            except UpstreamError as exc:
                conn = None
                picker.finished(name, None, time.perf_counter() - began, exc.failure)
                return exc
            response = conn.request(data, head_only=req.head)
            try:
                await client._response_head(conn, response, req.event_stream)
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
        return await client._relay(req, conn, response, name, began)
    except asyncio.CancelledError:
        # The client went away (or the server is cutting connections).
        if conn is not None:
            conn.close()
        seconds = time.perf_counter() - began
        picker.finished(name, status or CLIENT_CLOSED_REQUEST, seconds, None)
        raise


async def _response_head(
    client: _Client, conn: UpstreamConnection, response: UpstreamResponse, event_stream: bool
) -> None:
    if response.status:
        return
    if response.error is not None:
        raise response.error
    head = response.wait_head()
    timeout = client.config.response_timeout
    if event_stream or timeout <= 0:
        await head
        return
    handle = client.loop.call_later(
        timeout, conn.abort, UpstreamFailure.TIMEOUT, f"no response within {timeout:g} s"
    )
    try:
        await head
    finally:
        handle.cancel()


def _relay_whole(
    client: _Client,
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
            keep = req.keep_alive and not client.server.closing and not client.eof
            client._write(
                b"".join(
                    (
                        first[:end],
                        b"x-served-by: ",
                        client.server._name(name),
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
            client.server.picker.finished(name, status, time.perf_counter() - began, None)
            return keep
    head, framing, keep, _ = client._client_head(req, response, name)
    if framing == _FRAME_NONE:
        client._write(head)
    else:
        if framing == _FRAME_CHUNKED:
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        client._write(head + body)
    conn.pool.release(conn)
    client.server.picker.finished(name, status, time.perf_counter() - began, None)
    return keep


async def _relay_rest(client: _Client, exchange: _Exchange) -> bool:
    """Relay a response whose head came, in callbacks, without its whole body."""
    conn = exchange.conn
    response = exchange.response
    assert response is not None
    name = exchange.target.name
    if client.lost:
        conn.close()
        client.server.picker.finished(
            name, response.status, time.perf_counter() - exchange.began, None
        )
        return False
    client.cancel_on_lost = True
    try:
        kept = await client._relay(exchange.req, conn, response, name, exchange.began)
    except asyncio.CancelledError:
        conn.close()
        client.server.picker.finished(
            name, response.status, time.perf_counter() - exchange.began, None
        )
        raise
    finally:
        client.cancel_on_lost = False
    return bool(kept)


async def _relay(
    client: _Client,
    req: _Request,
    conn: UpstreamConnection,
    response: UpstreamResponse,
    name: str,
    began: float,
) -> bool | None:
    """Send the instance's response to the client; return as `_exchange` does."""
    if response.complete:
        return client._relay_whole(req, conn, response, name, began)
    picker = client.server.picker
    pool = conn.pool
    status = response.status
    head, framing, keep, event_stream = client._client_head(req, response, name)
    # Stream the body as it comes.
    transport = client.transport
    assert transport is not None
    client._write(head)
    if event_stream:
        if client.eof:  # the client has already left
            conn.close()
            client.abort()
            picker.finished(name, status, time.perf_counter() - began, None)
            return None
        client.streaming_sse = True
    timer: _IdleTimer | None = None
    timeout = client.config.response_timeout
    if not (req.event_stream or event_stream) and timeout > 0:
        timer = _IdleTimer(
            client.loop,
            timeout,
            lambda: conn.abort(UpstreamFailure.TIMEOUT, f"no data for {timeout:g} s"),
        )
    chunked = framing == _FRAME_CHUNKED

    def sink(chunk: bytes) -> None:
        if client.lost or not chunk:
            return
        if chunked:
            transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            transport.write(chunk)
        if timer is not None:
            timer.touch()
        if client.write_paused and client.on_resume is None:
            conn.pause_reading()
            client.on_resume = conn.resume_reading

    try:
        await response.stream(sink)
    except UpstreamError as exc:
        # The head is out: the only honest thing left is to cut the client off.
        client.cancel_on_lost = False
        conn.close()
        client.abort()
        picker.finished(name, status, time.perf_counter() - began, exc.failure)
        return None
    finally:
        client.streaming_sse = False
        if timer is not None:
            timer.cancel()
        client.on_resume = None
    if chunked:
        client._write(b"0\r\n\r\n")
    pool.release(conn)
    picker.finished(name, status, time.perf_counter() - began, None)
    return keep


def _upstream_request(client: _Client, req: _Request, target: Target, url: bytes) -> bytes:
    """The request as sent to the instance: hop-by-hop headers out, X-Forwarded-* in."""
    server = client.server
    trust = client.config.trust_forwarded
    xff = client.client_ip if req.xff is None else req.xff + b", " + client.client_ip
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
    client: _Client, req: _Request, response: UpstreamResponse, name: str
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
    strip_cors = client.server._cors  # the proxy answers for CORS, not the instances
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
    keep = req.keep_alive and not client.server.closing and not client.eof
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
        client.server._name(name),
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
