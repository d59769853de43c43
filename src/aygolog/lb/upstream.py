"""Pooled keep-alive HTTP/1.1 connections from the load balancer to the Log API instances.

`UpstreamPool` keeps the idle connections to one instance (host, port); `UpstreamPools` holds one
pool per address. A connection is an `asyncio.Protocol` with an httptools response parser, so an
idle connection that the instance closes is noticed at once (its EOF arrives as a callback) and
dropped from the pool before a request is written into it.

An exchange is `conn.request(data)`, which writes the whole request and returns an
`UpstreamResponse`: await `response.wait_head()` for the status and headers, then either take
the body (`response.complete`, the usual small answer, arrives with the head) or
`response.stream(sink)`, which hands each body chunk to `sink` the moment it is parsed, with no
buffering (SSE). The proxy's plain path awaits nothing: it gives `request` a `ResponseListener`,
which hears, in the connection's own callbacks, that the response is complete, that its head came
without the whole body (then it switches to `wait_head`/`stream`), or that it failed. No future
or task is made per exchange on that path.

Failures raise `UpstreamError`, which records how far the exchange got: whether the request had
been fully handed to the kernel (`sent`), how many response bytes had arrived (`received`), and
whether the connection had served earlier requests (`reused`). The proxy decides from these
whether a retry is safe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import time
from collections.abc import Callable, Iterator
from typing import Final, Protocol, cast

import httptools

from aygolog.errors import Unavailable

__all__ = [
    "ResponseListener",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamFailure",
    "UpstreamPool",
    "UpstreamPools",
    "UpstreamResponse",
]

DEFAULT_CONNECT_TIMEOUT: Final = 1.0
# Shorter than the keep-alive timeouts of common upstream servers (uvicorn 5 s, nginx 75 s), so
# the pool closes an idle connection before the instance does and never races its close.
DEFAULT_IDLE_TIMEOUT: Final = 4.0
DEFAULT_MAX_IDLE: Final = 64


class UpstreamFailure(enum.StrEnum):
    """Why an exchange with an instance failed: the `error` the proxy reports to its picker."""

    CONNECT_REFUSED = "connect refused"
    CONNECT_TIMEOUT = "connect timeout"
    CONNECT_FAILED = "connect failed"
    RESET = "connection reset"
    TIMEOUT = "response timeout"
    INVALID_RESPONSE = "invalid response"

    @property
    def before_connect(self) -> bool:
        """True when no connection was made, so nothing of the request reached the instance."""
        return self in _CONNECT_FAILURES


_CONNECT_FAILURES: Final = frozenset(
    {
        UpstreamFailure.CONNECT_REFUSED,
        UpstreamFailure.CONNECT_TIMEOUT,
        UpstreamFailure.CONNECT_FAILED,
    }
)


class UpstreamError(Unavailable):
    """An exchange with an instance failed; the attributes say how far it got.

    Attributes:
        failure: what went wrong.
        sent: the whole request had reached the instance's kernel (it may have acted on it).
        received: bytes of the response received before the failure.
        reused: the connection had served earlier requests (a kept-alive connection).
    """

    def __init__(
        self,
        failure: UpstreamFailure,
        message: str,
        *,
        sent: bool = False,
        received: int = 0,
        reused: bool = False,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.sent = sent
        self.received = received
        self.reused = reused

    def retryable(self, idempotent: bool) -> bool:
        """Whether the request may be sent again: always when the instance cannot have acted on
        it (no connection, or the request not fully sent and no answer begun); otherwise only
        when repeating it is harmless (`idempotent`)."""
        if self.failure.before_connect:
            return True
        if not self.sent and self.received == 0:
            return True
        return idempotent


class ResponseListener(Protocol):
    """Hears how a response goes, in the connection's callbacks (at most one call per response).

    Called after the bytes read have been parsed, never from inside the parser.
    """

    def upstream_complete(self, response: UpstreamResponse) -> None:
        """The whole response is in (`take_body` has it)."""
        ...

    def upstream_partial(self, response: UpstreamResponse) -> None:
        """The head is in but not the whole body: follow it with `stream` from now on."""
        ...

    def upstream_failed(self, response: UpstreamResponse, error: UpstreamError) -> None:
        """The exchange failed (before or after the head: see `response.status`)."""
        ...


_HOLD_BYTES: Final = 256 * 1024
"""Most body bytes a response holds before `stream` is called (then the instance is not read)."""


class UpstreamResponse:
    """One response being received from an instance.

    `wait_head()` resolves when the status and headers are in (or raises `UpstreamError`); then
    `status` (0 until then), `headers` (raw names as sent, values) and `keep_alive` are set. The
    body is either taken whole once `complete` is true (`take_body`) or followed with `stream`.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_head",
        "_interim",
        "_sink",
        "complete",
        "first",
        "head_only",
        "headers",
        "keep_alive",
        "listener",
        "received",
        "sent",
        "status",
    )

    def __init__(
        self, conn: UpstreamConnection, head_only: bool, listener: ResponseListener | None = None
    ) -> None:
        self._conn = conn
        self._head: asyncio.Future[None] | None = None
        self.listener = listener
        self.head_only = head_only
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.complete = False
        self.sent = False
        self.received = 0
        self.first: bytes | None = None
        """The first bytes read of the response (None after an interim 1xx answer): when they
        are all of it, the proxy can pass its head on as received."""
        self._interim = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._sink: Callable[[bytes], None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None

    @property
    def error(self) -> UpstreamError | None:
        """The failure that ended the exchange, if any."""
        return self._error

    def wait_head(self) -> asyncio.Future[None]:
        """A future that resolves when the head is in, or raises `UpstreamError`."""
        head = self._head
        if head is None:
            head = self._head = self._conn.loop.create_future()
            if self.status:
                head.set_result(None)
            elif self._error is not None:
                head.set_exception(self._error)
        return head

    def take_body(self) -> bytes:
        """The body received so far (all of it once `complete`), which is then forgotten."""
        chunks, self._chunks = self._chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def stream(self, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
        """Hand every body chunk to `sink` as it is parsed (those already received at once).

        Returns a future that resolves when the body is complete, or raises `UpstreamError`.
        """
        done: asyncio.Future[None] = self._conn.loop.create_future()
        self._done = done
        chunks, self._chunks = self._chunks, []
        if self._buffered >= _HOLD_BYTES:
            # Reading stopped while nobody took the body: read on, unless `sink` (a slow
            # client) stops it again below.
            self._conn.resume_reading()
        self._buffered = 0
        for chunk in chunks:
            sink(chunk)
        if self._error is not None:
            done.set_exception(self._error)
        elif self.complete:
            done.set_result(None)
        else:
            self._sink = sink
        return done

    # -- called by the connection ---------------------------------------------------------------

    def _on_body(self, chunk: bytes) -> None:
        sink = self._sink
        if sink is None:
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            if self._buffered >= _HOLD_BYTES:
                # Hold no more of a body than this before someone streams it: a big answer to
                # a client that does not read stays in the instance's socket, not in our memory.
                self._conn.pause_reading()
        else:
            sink(chunk)

    def _on_complete(self) -> None:
        self.complete = True
        self._sink = None
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _head_in(self) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        self._sink = None
        head = self._head
        if not self.status:
            if head is not None and not head.done():
                head.set_exception(error)
        elif self._done is not None and not self._done.done():
            self._done.set_exception(error)
        listener = self.listener
        if listener is not None:
            self.listener = None
            listener.upstream_failed(self, error)

    def _heard(self) -> None:
        """After a read was parsed: tell the listener if the response is complete, or if its
        head came without the rest."""
        listener = self.listener
        if listener is None or self._error is not None:
            return
        if self.complete:
            self.listener = None
            listener.upstream_complete(self)
        elif self.status:
            self.listener = None
            listener.upstream_partial(self)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to an instance, serving one exchange at a time."""

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.closed = False
        self.idle_since = 0.0
        self._response: UpstreamResponse | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._write_paused = False
        self._reading_paused = False

    # -- the exchange ---------------------------------------------------------------------------

    def request(
        self,
        data: bytes,
        *,
        head_only: bool = False,
        listener: ResponseListener | None = None,
    ) -> UpstreamResponse:
        """Write a complete request (head and body) and return its response, still to come.

        Args:
            data: the request's bytes.
            head_only: the request was HEAD, so the response has no body whatever it says.
            listener: told how the response goes (see `ResponseListener`); may be called before
                this returns if the connection is found closed.
        """
        transport = self.transport
        response = UpstreamResponse(self, head_only, listener)
        self._response = response
        if transport is None or self.closed or transport.is_closing():
            response._fail(self._error(UpstreamFailure.RESET, "the connection is closed"))
            return response
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        # The last response may have ended while reading was paused for a slow client.
        self.resume_reading()
        transport.write(data)
        # The write buffer limits are (0, 0): pause_writing has run if any byte is still queued.
        response.sent = not self._write_paused
        return response

    def abort(self, failure: UpstreamFailure, message: str) -> None:
        """Fail the exchange in progress (e.g. on a timeout) and close the connection."""
        response = self._response
        if response is not None:
            response._fail(self._error(failure, message))
        self.close()

    def pause_reading(self) -> None:
        """Stop reading the response (the client is not keeping up)."""
        if self.transport is not None and not self.closed and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the response again."""
        if self.transport is not None and not self.closed and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    @property
    def reusable(self) -> bool:
        """The last response is complete and both sides want to keep the connection."""
        response = self._response
        return (
            not self.closed
            and response is not None
            and response.complete
            and response.keep_alive
            and response.sent
        )

    def close(self) -> None:
        """Close the connection (no more exchanges on it)."""
        if not self.closed:
            self.closed = True
            self.pool._forget(self)
        if self.transport is not None:
            self.transport.close()

    def _error(self, failure: UpstreamFailure, message: str) -> UpstreamError:
        response = self._response
        return UpstreamError(
            failure,
            f"{self.pool.host}:{self.pool.port}: {message}",
            sent=response is not None and response.sent,
            received=0 if response is None else response.received,
            reused=self.reused,
        )

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = transport = cast(asyncio.Transport, transport)
        # Exact "sent" tracking: pause_writing as soon as a byte is queued, resume when drained.
        transport.set_write_buffer_limits(high=0, low=0)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._response is not None:
            self._response.sent = True

    def data_received(self, data: bytes) -> None:
        response = self._response
        parser = self._parser
        if response is None or parser is None or response.complete:
            # Bytes nobody asked for: the instance is not speaking HTTP/1.1 as agreed.
            self.close()
            return
        if not response.received:
            response.first = data
        response.received += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.close()
            response._fail(self._error(UpstreamFailure.INVALID_RESPONSE, f"bad response: {exc}"))
            return
        if response.listener is not None:
            response._heard()

    def eof_received(self) -> bool:
        response = self._response
        if (
            response is not None
            and response.status
            and not response.complete
            and response._error is None
            and self._until_close(response)
        ):
            response.keep_alive = False
            response._on_complete()
            self._lost("the instance closed the connection")
            response._heard()
            return False
        self._lost("the instance closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(f"connection lost: {exc}" if exc else "the instance closed the connection")

    def _lost(self, message: str) -> None:
        if not self.closed:
            self.closed = True
            self.pool._forget(self)
        response = self._response
        if response is not None and not response.complete:
            response._fail(self._error(UpstreamFailure.RESET, message))

    @staticmethod
    def _until_close(response: UpstreamResponse) -> bool:
        for name, _ in response.headers:
            lower = name.lower()
            if lower in (b"content-length", b"transfer-encoding"):
                return False
        return True

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        if response is not None:
            response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        parser = self._parser
        if response is None or parser is None:
            return
        status = parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                # We never ask to switch protocols (Upgrade is stripped), so this is a bad answer.
                raise _Refused("the instance switched protocols unasked")
            # An interim answer (103 Early Hints, an unasked 100 Continue): wait for the real one.
            response._interim = True
            response.first = None
            response.headers = []
            return
        response.status = status
        response.keep_alive = parser.should_keep_alive()
        response._head_in()
        if response.head_only:
            # httptools cannot be told that a HEAD response has no body: end it here and parse
            # the next response with a new parser.
            response._on_complete()
            self._parser = None

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is not None:
            response._on_body(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or response.complete:
            return
        if response._interim:
            response._interim = False
            return
        response._on_complete()


class _Refused(Exception):
    """Raised inside a parser callback to reject the response."""


class UpstreamPool:
    """Keep-alive connections to one instance: reuse idle ones, open new ones on demand.

    Args:
        host: the instance's host name or address.
        port: its port.
        max_idle: idle connections kept at most; more are closed when released.
        connect_timeout: seconds to wait for a new connection.
        idle_timeout: an idle connection older than this is closed instead of reused.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_idle: int = DEFAULT_MAX_IDLE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.connects = 0
        # Oldest on the left; taken from the right (the most recently used is the least likely
        # to have been closed by the instance).
        self._idle: collections.deque[UpstreamConnection] = collections.deque()
        self._all: set[UpstreamConnection] = set()

    @property
    def idle(self) -> int:
        """How many idle connections are kept."""
        return len(self._idle)

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """An idle connection, or a new one (always new when `fresh`).

        Raises:
            UpstreamError: the connection could not be made (refused, timed out, unreachable).
        """
        if not fresh:
            conn = self.take_idle()
            if conn is not None:
                return conn
        return await self._connect()

    def take_idle(self) -> UpstreamConnection | None:
        """An idle connection still fit to use, or None (then `acquire` opens one)."""
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.idle_timeout:
                conn.close()
                while idle:  # the rest are older still
                    idle.pop().close()
                return None
            transport = conn.transport
            if transport is None or transport.is_closing():
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        """Give a connection back after its exchange; it is closed unless it can serve again."""
        if not conn.reusable or len(self._idle) >= self.max_idle:
            conn.close()
            return
        now = time.monotonic()
        conn.idle_since = now
        conn._response = None
        if conn._reading_paused:
            conn.resume_reading()  # so that an idle connection's close is noticed
        idle = self._idle
        idle.append(conn)
        # Close an expired connection at the old end now and then, so an instance that gets few
        # requests is not left holding sockets for long.
        first = idle[0]
        if now - first.idle_since > self.idle_timeout:
            idle.popleft()
            first.close()

    async def aclose(self) -> None:
        """Close every connection of this pool."""
        for conn in list(self._all):
            conn.close()
        self._idle.clear()

    def _forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, loop), self.host, self.port
                )
        except TimeoutError as exc:
            raise UpstreamError(
                UpstreamFailure.CONNECT_TIMEOUT,
                f"{where}: no connection within {self.connect_timeout:g} s",
            ) from exc
        except ConnectionRefusedError as exc:
            raise UpstreamError(
                UpstreamFailure.CONNECT_REFUSED, f"{where}: connection refused"
            ) from exc
        except OSError as exc:
            raise UpstreamError(UpstreamFailure.CONNECT_FAILED, f"{where}: {exc}") from exc
        self.connects += 1
        self._all.add(conn)
        return conn


class UpstreamPools:
    """One `UpstreamPool` per instance address, made on first use with the same settings."""

    def __init__(
        self,
        *,
        max_idle: int = DEFAULT_MAX_IDLE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._pools: dict[tuple[str, int], UpstreamPool] = {}

    def get(self, host: str, port: int) -> UpstreamPool:
        """The pool of the instance at (host, port)."""
        pool = self._pools.get((host, port))
        if pool is None:
            pool = UpstreamPool(
                host,
                port,
                max_idle=self.max_idle,
                connect_timeout=self.connect_timeout,
                idle_timeout=self.idle_timeout,
            )
            self._pools[(host, port)] = pool
        return pool

    def __iter__(self) -> Iterator[UpstreamPool]:
        return iter(list(self._pools.values()))

    async def aclose(self) -> None:
        """Close every connection of every pool."""
        for pool in list(self._pools.values()):
            await pool.aclose()
        self._pools.clear()
