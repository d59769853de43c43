"""`LogClient`: the blocking client. Decisions live in `_base`; this module only sends."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import httpx

from aygolog.balancing import BalancerStrategy
from aygolog.client._base import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    NO_RETRY,
    Attempts,
    Balance,
    ClientCore,
    CountFilters,
    PreparedBatch,
    QueryFilters,
    RequestSpec,
    RetryPolicy,
    ServiceView,
    StreamRetry,
    TailDropped,
    TailFilters,
    TailState,
    build_log,
    give_up_error,
    make_query,
    note_partial,
    shift_errors,
    stream_status_error,
    with_cursor,
)
from aygolog.errors import AygologError, Unavailable, ValidationError
from aygolog.models import (
    BatchResult,
    CountResult,
    LogEntry,
    LogLevel,
    LogPage,
    LogQuery,
    LogStats,
    NewLog,
)

__all__ = ["LogClient", "Tail"]

T = TypeVar("T")


class LogClient:
    """A blocking client of the aygolog API (the load balancer, or one Log API instance).

    Args:
        base_url: e.g. `http://127.0.0.1:8080`.
        timeout: seconds, or an `httpx.Timeout` (default 10 s, connect 3 s).
        retries: a `RetryPolicy`, or a number of retries. The default retries failures
            that are safe to retry for up to 30 s (backoff from 0.1 s doubling up to 5 s,
            full jitter, `Retry-After` honoured), so a restart of the load balancer, an
            instance or Redis does not fail a call.
        api_key: sent as `Authorization: Bearer <key>`.
        service: the service of entries that name none.
        balance: `"lb"` sends everything to `base_url`; `"client"` reads the LB's
            `/api/registration/services` and sends straight to healthy instances, falling back
            to the LB for retries and whenever the list is unavailable.
        strategy: the balancing strategy (a name from `aygolog.balancing`, or an instance).
        refresh_interval: seconds between refreshes of the instance list (client balancing).
        max_batch_items, max_batch_bytes: how `log_many` splits its input.
        headers: extra headers for every request.
        transport: an httpx transport (tests, custom TLS, ...).
        sleep, rng, clock: for tests: the sleep between retries, the jitter's random source
            and the monotonic clock that the retry deadline is measured on.

    Thread-safe: one client may be shared by many threads.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int | RetryPolicy = DEFAULT_RETRY,
        api_key: str | None = None,
        service: str | None = None,
        balance: Balance = "lb",
        strategy: BalancerStrategy | str = "p2c",
        refresh_interval: float = 5.0,
        max_batch_items: int = MAX_BATCH_ITEMS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core = ClientCore(
            base_url,
            retries=retries,
            api_key=api_key,
            service=service,
            balance=balance,
            strategy=strategy,
            refresh_interval=refresh_interval,
            max_batch_items=max_batch_items,
            max_batch_bytes=max_batch_bytes,
            rng=rng,
            clock=clock,
        )
        self._core.headers.update(headers or {})
        self._sleep_injected = sleep is not None
        self._sleep = sleep if sleep is not None else time.sleep
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._http = httpx.Client(timeout=self.timeout, transport=transport)

    @property
    def base_url(self) -> str:
        """The load balancer's (or the instance's) URL."""
        return self._core.base_url

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of every call."""
        return self._core.policy

    # -- plumbing -------------------------------------------------------------------------------

    def _refresh(self) -> None:
        router = self._core.router
        if not router.begin_refresh():
            return
        status: int | None = None
        content = b""
        try:
            response = self._http.get(
                router.lb.url + "/api/registration/services",
                headers=self._core.headers,
                timeout=2.0,
            )
            status, content = response.status_code, response.content
        except httpx.HTTPError:
            status = None
        finally:
            router.end_refresh(status, content)

    def _send(
        self,
        spec: RequestSpec,
        *,
        attempts: Attempts,
        timeout: float | None = None,
    ) -> httpx.Response:
        core = self._core
        while True:
            if spec.balanced:
                self._refresh()
            route = core.route(spec, attempts)
            request = self._http.build_request(
                spec.method,
                route.url + spec.path,
                params=list(spec.params),
                content=spec.content,
                headers=core.headers_for(spec),
                timeout=timeout if timeout is not None else self.timeout,
            )
            try:
                response = self._http.send(request)
            except httpx.RequestError as exc:
                core.router.done(route, ok=False)
                self._sleep(attempts.on_error(exc, route.url))
                continue
            core.router.done(route, ok=response.status_code < 500)
            delay = attempts.on_response(response.status_code, response.headers, response.content)
            if delay is None:
                return response
            self._sleep(delay)

    def _call(
        self,
        spec: RequestSpec,
        kind: type[T],
        *,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> T:
        attempts = self._core.attempts(spec, policy)
        response = self._send(spec, attempts=attempts, timeout=timeout)
        return self._core.answer(spec, attempts, response, kind)

    # -- the API --------------------------------------------------------------------------------

    def log(
        self,
        message: str,
        level: LogLevel | str | int = LogLevel.INFO,
        service: str | None = None,
        *,
        timestamp: datetime | float | str | None = None,
        trace_id: str | None = None,
        attributes: Mapping[str, object] | None = None,
        **extra: object,
    ) -> LogEntry:
        """Store one entry; returns it as stored (with its id and the instance that stored it).

        Attributes come from `attributes` and the other keyword arguments; values that are not
        str/int/float/bool are sent as strings, None values are left out.

        Raises:
            ValidationError: the server refused the entry (`errors` names the fields).
            Unavailable: no answer, or 502/503/504 after the retries.
        """
        log = build_log(
            message,
            level=level,
            service=service,
            timestamp=timestamp,
            trace_id=trace_id,
            attributes={**(attributes or {}), **extra},
        )
        return self._call(self._core.log_request(log), LogEntry)

    def log_many(
        self,
        entries: Iterable[NewLog | Mapping[str, Any] | str],
        *,
        idempotency_key: str | None = None,
    ) -> list[BatchResult]:
        """Store many entries in as few requests as the server's limits allow, in order.

        Items are `NewLog`s, mappings of their fields, or message strings. Each batch carries
        an `Idempotency-Key` (`<key>-<n>`), the same across its retries, so a retry never
        stores twice. Pass your own `idempotency_key` to make the whole call safe to repeat:
        after a failure, calling again with the same key and entries stores only the rest.

        Raises:
            ValidationError: an item was refused; indexes count from the start of `entries`.
                Earlier batches are stored (a note on the error says how many).
        """
        results: list[BatchResult] = []
        offset = 0
        for batch in self._core.batches(entries, idempotency_key):
            try:
                results.append(self.send_batch(batch))
            except ValidationError as exc:
                shifted = shift_errors(exc, offset)
                note_partial(shifted, results, batch)
                if shifted is exc:
                    raise
                raise shifted from exc
            except AygologError as exc:
                note_partial(exc, results, batch)
                raise
            offset += batch.count
        return results

    def send_batch(
        self,
        batch: PreparedBatch,
        *,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> BatchResult:
        """Send one prepared batch, retried under its own idempotency key."""
        spec = self._core.batch_request(batch)
        return self._call(spec, BatchResult, policy=policy, timeout=timeout)

    def query(
        self, query: LogQuery | str | None = None, /, **filters: Unpack[QueryFilters]
    ) -> LogPage:
        """One page of stored entries matching the filters (newest first by default).

        Pass a query string (`"level>=warning service:shop timeout"`, docs/query.md), a
        `LogQuery`, keyword filters (see `QueryFilters`), or a query and keywords (keywords
        win; they AND with the string). A string that does not parse raises `ValidationError`
        naming "query", with the position; a `| count()` query is asked with `count`.
        """
        built = make_query(query, **filters)
        return self._call(self._core.query_request(built), LogPage)

    def count(
        self, query: LogQuery | str | None = None, /, **filters: Unpack[CountFilters]
    ) -> CountResult:
        """Count matching entries: `count("level:error | count() by (service) step 5m")`.

        The query's `| count() by (...) step ...` pipe sets the groups and the buckets (see
        `GET /api/logs/count`); without one, a single total.
        """
        built = make_query(query, **filters)
        return self._call(self._core.count_request(built), CountResult)

    def iter_logs(
        self,
        query: LogQuery | str | None = None,
        /,
        *,
        max_items: int | None = None,
        **filters: Unpack[QueryFilters],
    ) -> Iterator[LogEntry]:
        """Every matching entry, following `next_cursor` page after page, up to `max_items`.

        `limit` is the page size. Relative times (`since="15m"`) are resolved once, up front.
        """
        built = make_query(query, **filters)
        seen = 0
        while True:
            page = self.query(built)
            for entry in page.items:
                if max_items is not None and seen >= max_items:
                    return
                seen += 1
                yield entry
            if page.next_cursor is None or not page.items:
                return
            built = with_cursor(built, page.next_cursor)

    def tail(
        self,
        query: LogQuery | str | None = None,
        /,
        *,
        last_event_id: str | None = None,
        on_dropped: Callable[[TailDropped], None] | None = None,
        recover_dropped: bool = True,
        max_reconnects: int | None = None,
        idle_timeout: float = 45.0,
        **filters: Unpack[TailFilters],
    ) -> Tail:
        """Follow new entries live; see `Tail`. Use it in a `with` block, or close it.

        Args:
            last_event_id: start after this entry (e.g. a previous tail's `last_event_id`).
            on_dropped: called when the server reports skipped entries (see `TailDropped`).
            recover_dropped: reconnect at once after such a report, to get them from the store.
            max_reconnects: give up after this many reconnects in a row (None: never).
            idle_timeout: reconnect when nothing (not even a keep-alive) came for this long.
        """
        return Tail(
            self,
            make_query(query, **filters),
            last_event_id=last_event_id,
            on_dropped=on_dropped,
            recover_dropped=recover_dropped,
            max_reconnects=max_reconnects,
            idle_timeout=idle_timeout,
        )

    def services(self) -> list[ServiceView]:
        """The instances registered with the load balancer: status, load, failures."""
        return self._call(self._core.services_request(), list[ServiceView])

    def stats(self) -> LogStats:
        """Totals per level, service and instance, and the ingest rate."""
        return self._call(self._core.get_request("/api/logs/stats"), LogStats)

    def health(self) -> dict[str, Any]:
        """The `/health` answer of the LB (or instance): one attempt, no retries."""
        spec = self._core.get_request("/health", balanced=False)
        return self._call(spec, dict[str, Any], policy=NO_RETRY)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Tail:
    """A live tail: iterate it for `LogEntry`s as they are stored, until closed.

    It reconnects after any failure with backoff (full jitter; reset once entries flow again),
    resuming with `Last-Event-ID`, so nothing is skipped and nothing is repeated. When the
    server reports that this subscriber fell behind (`event: dropped`), `on_dropped` gets a
    `TailDropped`, `dropped` grows, and (with `recover_dropped`, the default) the tail reconnects
    at once from the last entry it got, so the server sends the skipped entries from the store.

    Attributes:
        connected: set once a stream is open and the server has subscribed (its first line
            arrived); wait on it before producing entries you expect to see.
        dropped: entries the server reported skipped (recovered or not).
        reconnects: how many times it reconnected.

    `close()` may be called from another thread; the iteration then ends.
    """

    def __init__(
        self,
        client: LogClient,
        query: LogQuery,
        *,
        last_event_id: str | None = None,
        on_dropped: Callable[[TailDropped], None] | None = None,
        recover_dropped: bool = True,
        max_reconnects: int | None = None,
        idle_timeout: float = 45.0,
    ) -> None:
        self._client = client
        self._spec = client._core.tail_request(query)
        self._state = TailState(last_event_id=last_event_id, recover_dropped=recover_dropped)
        self._on_dropped = on_dropped
        self._max_reconnects = max_reconnects
        timeout = client.timeout
        self._timeout = httpx.Timeout(
            connect=timeout.connect, read=idle_timeout, write=timeout.write, pool=timeout.pool
        )
        self.connected = threading.Event()
        self.dropped = 0
        self.reconnects = 0
        self._closed = threading.Event()
        self._response: httpx.Response | None = None
        self._gen = self._run()

    @property
    def last_event_id(self) -> str | None:
        """The id of the last entry received: where a new tail would resume."""
        return self._state.last_event_id

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> LogEntry:
        return next(self._gen)

    def _wait(self, delay: float) -> None:
        if self._client._sleep_injected:
            self._client._sleep(delay)
        else:
            self._closed.wait(delay)

    def _run(self) -> Generator[LogEntry, None, None]:
        client, spec = self._client, self._spec
        core = client._core
        policy = core.policy
        failures = 0
        while not self._closed.is_set():
            route = core.router.route(retry=failures > 0)
            retry_after: float | None = None
            recovering = False
            opened = 0.0
            error: BaseException
            try:
                with client._http.stream(
                    "GET",
                    route.url + spec.path,
                    params=list(spec.params),
                    headers={**core.headers, **self._state.headers()},
                    timeout=self._timeout,
                ) as response:
                    if response.status_code != 200:
                        raise stream_status_error(
                            response.status_code, response.headers, response.read(), spec
                        )
                    self._response = response
                    opened = time.monotonic()
                    for line in response.iter_lines():
                        if not self.connected.is_set():
                            # The server subscribes, then sends a first line (": connected"):
                            # only now can nothing stored from here on be missed.
                            self.connected.set()
                        item = self._state.feed(line)
                        if item is None:
                            continue
                        if isinstance(item, TailDropped):
                            self.dropped += item.count
                            if self._on_dropped is not None:
                                self._on_dropped(item)
                            if item.recovering:
                                recovering = True
                                break
                            continue
                        failures = 0
                        yield item
                error = Unavailable("the live tail stream ended")
            except StreamRetry as exc:
                error, retry_after = exc, exc.retry_after
            except (httpx.RequestError, httpx.StreamError) as exc:
                error = exc
            finally:
                self._response = None
                self.connected.clear()
                self._state.reset_line_state()
                core.router.done(route, ok=recovering or self._closed.is_set())
            if self._closed.is_set():
                return
            if recovering:
                continue
            if opened and time.monotonic() - opened > policy.backoff_max:
                failures = 0  # it ran fine for a good while: start the backoff afresh
            if self._max_reconnects is not None and self.reconnects >= self._max_reconnects:
                raise give_up_error(error, route.url, spec) from error
            self._wait(policy.delay(failures, retry_after, core.rng))
            failures += 1
            self.reconnects += 1

    def close(self) -> None:
        """Stop following; safe to call from another thread."""
        self._closed.set()
        response = self._response
        if response is not None:
            # Closing the response does not wake a thread blocked reading its socket; shutting
            # the socket down does (the reader then sees end of stream and `_closed`).
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                response.close()
        with contextlib.suppress(ValueError):  # running in another thread: it sees _closed
            self._gen.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
