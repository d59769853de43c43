"""A `LogStore` wrapper that times every call and counts failures, for `/metrics`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

from aygolog.errors import Unavailable
from aygolog.metrics import Metrics
from aygolog.models import (
    BatchResult,
    CountResult,
    LogEntry,
    LogPage,
    LogQuery,
    LogStats,
    NewLog,
)
from aygolog.store import LogStore

__all__ = ["InstrumentedStore"]

_T = TypeVar("_T")


class InstrumentedStore:
    """Delegates to `inner`, recording latency per operation and Redis errors."""

    def __init__(self, inner: LogStore, metrics: Metrics) -> None:
        self._inner = inner
        self._latency = metrics.histogram(
            "aygolog_store_seconds", "Log store (Redis) call latency by operation", ("op",)
        )
        self._errors = metrics.counter(
            "aygolog_redis_errors_total", "Log store (Redis) calls that failed", ("op",)
        )

    @property
    def instance(self) -> str:
        """The instance name of the wrapped store."""
        return self._inner.instance

    async def _timed(self, op: str, call: Awaitable[_T]) -> _T:
        started = time.perf_counter()
        try:
            return await call
        except Unavailable:
            self._errors.inc(op)
            raise
        finally:
            self._latency.observe(time.perf_counter() - started, op)

    async def append(self, log: NewLog, *, idempotency_key: str | None = None) -> LogEntry:
        """See `LogStore.append`."""
        call = self._inner.append(log, idempotency_key=idempotency_key)
        return await self._timed("append", call)

    async def append_many(
        self, logs: Sequence[NewLog], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """See `LogStore.append_many`."""
        call = self._inner.append_many(logs, idempotency_key=idempotency_key)
        return await self._timed("append_many", call)

    async def query(self, query: LogQuery) -> LogPage:
        """See `LogStore.query`."""
        return await self._timed("query", self._inner.query(query))

    async def count(self, query: LogQuery) -> CountResult:
        """See `LogStore.count`."""
        return await self._timed("count", self._inner.count(query))

    async def version(self) -> str:
        """See `LogStore.version`."""
        return await self._timed("version", self._inner.version())

    def tail(self, after_id: str = "$") -> AsyncIterator[LogEntry]:
        """See `LogStore.tail` (not timed: it blocks by design)."""
        return self._inner.tail(after_id)

    async def stats(self) -> LogStats:
        """See `LogStore.stats`."""
        return await self._timed("stats", self._inner.stats())

    async def ping(self) -> None:
        """See `LogStore.ping`."""
        await self._timed("ping", self._inner.ping())

    async def aclose(self) -> None:
        """See `LogStore.aclose`."""
        await self._inner.aclose()
