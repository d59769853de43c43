"""`_Client`: one client connection: its limits and deadlines, parsing, the request queue, the
proxy's own answers and the ASGI hand-off; proxying is in `relay`, API keys and CORS in `gate`."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import httptools
import msgspec

from aygolog.errors import NoHealthyInstance
from aygolog.lb.framing import ChunkedScanner, FramingError, HeadScanner
from aygolog.lb.proxy import gate, relay
from aygolog.lb.proxy.config import ASGIApp
from aygolog.lb.proxy.exchange import _AsgiExchange, _Exchange
from aygolog.lb.proxy.wire import (
    _BODY_METHODS,
    _CONNECTION_KEEPS,
    _CONTINUE,
    _CORS_EXPOSE,
    _END_TO_END,
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
    _LINGER,
    _LINGER_BYTES,
    _METHODS,
    _NO_EXCLUDE,
    _REQUEST_ID,
    _SSE,
    _refusal,
    _Request,
    _status_line,
    _Stop,
    _tokens,
)

if TYPE_CHECKING:
    from aygolog.lb.proxy.server import ProxyServer


log = logging.getLogger("aygolog.lb.proxy")


class _Client(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time."""

    # Proxying (`relay`) and API keys and CORS (`gate`), written as functions of the client there.
    _allow_origin = gate._allow_origin
    _refuse_preflight = gate._refuse_preflight
    _gate = gate._gate
    _preflight = gate._preflight
    _proxy = relay._proxy
    _exchange = relay._exchange
    _response_head = relay._response_head
    _relay_whole = relay._relay_whole
    _relay_rest = relay._relay_rest
    _relay = relay._relay
    _upstream_request = relay._upstream_request
    _client_head = relay._client_head

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
