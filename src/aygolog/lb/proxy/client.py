"""`_Client`: one client connection, from the bytes received to the answers written."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import httptools
import msgspec

from aygolog.errors import NoHealthyInstance
from aygolog.lb.framing import ChunkedScanner, FramingError, HeadScanner
from aygolog.lb.proxy.config import CLIENT_CLOSED_REQUEST, ASGIApp, Target
from aygolog.lb.proxy.exchange import _AsgiExchange, _Exchange, _Failed, _stale
from aygolog.lb.proxy.wire import (
    _BODY_METHODS,
    _CONNECTION_KEEPS,
    _CONTINUE,
    _CORS_ANY,
    _CORS_EXPOSE,
    _CORS_MAX_AGE,
    _CORS_METHODS,
    _END_TO_END,
    _FRAME_CHUNKED,
    _FRAME_CLOSE,
    _FRAME_LENGTH,
    _FRAME_NONE,
    _H_ACCEPT,
    _H_CODING,
    _H_CONNECTION,
    _H_EXPECT,
    _H_FORWARDED_HOST,
    _H_HOST,
    _H_IDEMPOTENCY,
    _H_LENGTH,
    _H_ORIGIN,
    _H_PROTO,
    _H_REQUEST_ID,
    _H_XFF,
    _HEADER_KINDS,
    _IDEMPOTENT,
    _LINGER,
    _LINGER_BYTES,
    _METHODS,
    _NO_EXCLUDE,
    _PLAIN_ADDED,
    _READ,
    _READ_METHODS,
    _REQUEST_ID,
    _RESPONSE_CHANGED,
    _RESPONSE_OWN,
    _SSE,
    _WRITE,
    _IdleTimer,
    _merge_vary,
    _refusal,
    _Request,
    _status_line,
    _Stop,
    _tokens,
)
from aygolog.lb.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamFailure,
    UpstreamResponse,
)

if TYPE_CHECKING:
    from aygolog.lb.proxy.server import ProxyServer


log = logging.getLogger("aygolog.lb.proxy")


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
