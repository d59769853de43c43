"""`AsyncLogClient`: the asyncio twin of `LogClient`; decisions live in `_base`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
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

__all__ = ["AsyncLogClient", "AsyncTail"]

T = TypeVar("T")


class AsyncLogClient:
    """The asyncio client of the aygolog API; the same arguments and methods as `LogClient`.

    `sleep` (for tests) is an async function; `aclose()` closes it, `async with` too.
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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
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
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._http = httpx.AsyncClient(timeout=self.timeout, transport=transport)

    @property
    def base_url(self) -> str:
        """The load balancer's (or the instance's) URL."""
        return self._core.base_url

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of every call."""
        return self._core.policy

    # -- plumbing -------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        router = self._core.router
        if not router.begin_refresh():
            return
        status: int | None = None
        content = b""
        try:
            response = await self._http.get(
                router.lb.url + "/api/registration/services",
                headers=self._core.headers,
                timeout=2.0,
            )
            status, content = response.status_code, response.content
        except httpx.HTTPError:
            status = None
        finally:
            router.end_refresh(status, content)

    async def _send(
        self,
        spec: RequestSpec,
        *,
        attempts: Attempts,
        timeout: float | None = None,  # noqa: ASYNC109 - httpx's per-request timeout
    ) -> httpx.Response:
        core = self._core
        while True:
            if spec.balanced:
                await self._refresh()
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
                response = await self._http.send(request)
            except httpx.RequestError as exc:
                core.router.done(route, ok=False)
                await self._sleep(attempts.on_error(exc, route.url))
                continue
            core.router.done(route, ok=response.status_code < 500)
            delay = attempts.on_response(response.status_code, response.headers, response.content)
            if delay is None:
                return response
            await self._sleep(delay)

    async def _call(
        self,
        spec: RequestSpec,
        kind: type[T],
        *,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpx's per-request timeout
    ) -> T:
        attempts = self._core.attempts(spec, policy)
        response = await self._send(spec, attempts=attempts, timeout=timeout)
        return self._core.answer(spec, attempts, response, kind)

    # -- the API --------------------------------------------------------------------------------

    async def log(
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
        """Store one entry; see `LogClient.log`."""
        log = build_log(
            message,
            level=level,
            service=service,
            timestamp=timestamp,
            trace_id=trace_id,
            attributes={**(attributes or {}), **extra},
        )
        return await self._call(self._core.log_request(log), LogEntry)

    async def log_many(
        self,
        entries: Iterable[NewLog | Mapping[str, Any] | str],
        *,
        idempotency_key: str | None = None,
    ) -> list[BatchResult]:
        """Store many entries in batches, each under its own idempotency key; see `LogClient`."""
        results: list[BatchResult] = []
        offset = 0
        for batch in self._core.batches(entries, idempotency_key):
            try:
                results.append(await self.send_batch(batch))
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

    async def send_batch(
        self,
        batch: PreparedBatch,
        *,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpx's per-request timeout
    ) -> BatchResult:
        """Send one prepared batch, retried under its own idempotency key."""
        spec = self._core.batch_request(batch)
        return await self._call(spec, BatchResult, policy=policy, timeout=timeout)

    async def query(
        self, query: LogQuery | str | None = None, /, **filters: Unpack[QueryFilters]
    ) -> LogPage:
        """One page of stored entries matching the filters; see `LogClient.query`."""
        built = make_query(query, **filters)
        return await self._call(self._core.query_request(built), LogPage)

    async def count(
        self, query: LogQuery | str | None = None, /, **filters: Unpack[CountFilters]
    ) -> CountResult:
        """Count matching entries; see `LogClient.count`."""
        built = make_query(query, **filters)
        return await self._call(self._core.count_request(built), CountResult)

    async def iter_logs(
        self,
        query: LogQuery | str | None = None,
        /,
        *,
        max_items: int | None = None,
        **filters: Unpack[QueryFilters],
    ) -> AsyncIterator[LogEntry]:
        """Every matching entry, following `next_cursor`; see `LogClient.iter_logs`."""
        built = make_query(query, **filters)
        seen = 0
        while True:
            page = await self.query(built)
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
    ) -> AsyncTail:
        """Follow new entries live; see `AsyncTail` and `LogClient.tail`."""
        return AsyncTail(
            self,
            make_query(query, **filters),
            last_event_id=last_event_id,
            on_dropped=on_dropped,
            recover_dropped=recover_dropped,
            max_reconnects=max_reconnects,
            idle_timeout=idle_timeout,
        )

    async def services(self) -> list[ServiceView]:
        """The instances registered with the load balancer: status, load, failures."""
        return await self._call(self._core.services_request(), list[ServiceView])

    async def stats(self) -> LogStats:
        """Totals per level, service and instance, and the ingest rate."""
        return await self._call(self._core.get_request("/api/logs/stats"), LogStats)

    async def health(self) -> dict[str, Any]:
        """The `/health` answer of the LB (or instance): one attempt, no retries."""
        spec = self._core.get_request("/health", balanced=False)
        return await self._call(spec, dict[str, Any], policy=NO_RETRY)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncTail:
    """The asyncio live tail: `async for entry in tail`; the behaviour of `Tail`.

    `connected` is an `asyncio.Event`. `aclose()` (or `async with`) stops it.
    """

    def __init__(
        self,
        client: AsyncLogClient,
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
        self.connected = asyncio.Event()
        self.dropped = 0
        self.reconnects = 0
        self._closed = False
        self._response: httpx.Response | None = None
        self._gen = self._run()

    @property
    def last_event_id(self) -> str | None:
        """The id of the last entry received: where a new tail would resume."""
        return self._state.last_event_id

    @property
    def closed(self) -> bool:
        """Whether `aclose()` was called."""
        return self._closed

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LogEntry:
        return await anext(self._gen)

    async def _run(self) -> AsyncGenerator[LogEntry, None]:
        client, spec = self._client, self._spec
        core = client._core
        policy = core.policy
        failures = 0
        while not self._closed:
            route = core.router.route(retry=failures > 0)
            retry_after: float | None = None
            recovering = False
            opened = 0.0
            error: BaseException
            try:
                async with client._http.stream(
                    "GET",
                    route.url + spec.path,
                    params=list(spec.params),
                    headers={**core.headers, **self._state.headers()},
                    timeout=self._timeout,
                ) as response:
                    if response.status_code != 200:
                        raise stream_status_error(
                            response.status_code, response.headers, await response.aread(), spec
                        )
                    self._response = response
                    opened = time.monotonic()
                    async for line in response.aiter_lines():
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
                core.router.done(route, ok=recovering or self._closed)
            if self.closed:
                return
            if recovering:
                continue
            if opened and time.monotonic() - opened > policy.backoff_max:
                failures = 0
            if self._max_reconnects is not None and self.reconnects >= self._max_reconnects:
                raise give_up_error(error, route.url, spec) from error
            await client._sleep(policy.delay(failures, retry_after, core.rng))
            failures += 1
            self.reconnects += 1

    async def aclose(self) -> None:
        """Stop following."""
        self._closed = True
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                await response.aclose()
        with contextlib.suppress(RuntimeError):  # being iterated by another task right now
            await self._gen.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
