"""`InMemoryLogStore`: the in-process twin of the Redis store, with the same semantics.

For tests, examples and single-process use. Ids are made the way Redis makes stream ids
(receive time in ms, then a sequence), so cursors and time ranges behave alike.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import msgspec

from aygolog.errors import Conflict
from aygolog.models import (
    BatchResult,
    CountResult,
    Direction,
    LogEntry,
    LogPage,
    LogQuery,
    LogStats,
    NewLog,
)
from aygolog.query import plan_for
from aygolog.store.base import (
    StoreOptions,
    check_idempotency_key,
    check_query,
    id_bounds,
    id_ms,
    page_limit,
    parse_stream_id,
    search_plan,
    stored_entry,
)
from aygolog.store.counting import Tally, count_frame

__all__ = ["InMemoryLogStore"]

_Key = tuple[int, int]


class InMemoryLogStore:
    """A `LogStore` held in this process.

    Args:
        instance: the name of the instance writing through this store.
        options: retention and idempotency settings (scan tuning does not apply).
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        *,
        instance: str = "memory",
        options: StoreOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._instance = instance
        self._options = options or StoreOptions()
        self._clock = clock
        self._keys: list[_Key] = []
        self._entries: list[LogEntry] = []
        self._sizes: list[int] = []
        """Bytes of each entry as the Redis store keeps it (its `NewLog` as JSON)."""
        self._last: _Key = (0, 0)
        self._counters: Counter[str] = Counter()
        self._idempotency: dict[str, tuple[float, str, BatchResult]] = {}
        self._arrived = asyncio.Event()
        self._recent: deque[float] = deque()

    @property
    def instance(self) -> str:
        """The name of the instance writing through this store."""
        return self._instance

    async def append(self, log: NewLog, *, idempotency_key: str | None = None) -> LogEntry:
        """Store one entry and return it as stored (see `LogStore.append`)."""
        if idempotency_key is None:
            return self._store(log)
        result = await self.append_many((log,), idempotency_key=idempotency_key)
        return stored_entry(log, result.ids[0], result.instance)

    async def append_many(
        self, logs: Sequence[NewLog], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """Store a batch, all or nothing (see `LogStore.append_many`)."""
        digest = ""
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            digest = _digest(logs)
            now = self._clock()
            seen = self._idempotency.get(idempotency_key)
            if seen is not None and seen[0] > now:
                if seen[1] != digest:
                    raise Conflict(
                        f"idempotency key {idempotency_key!r} was used for a different batch"
                    )
                return msgspec.structs.replace(seen[2], replayed=True)
        result = BatchResult(ids=[self._store(log).id for log in logs], instance=self._instance)
        if idempotency_key is not None:
            expires = self._clock() + self._options.idempotency_ttl.total_seconds()
            self._idempotency[idempotency_key] = (expires, digest, result)
        return result

    async def query(self, query: LogQuery) -> LogPage:
        """Entries matching `query` (see `LogQuery`)."""
        check_query(query)
        plan = search_plan(query)
        bounds = None if plan.empty else id_bounds(query, plan)
        if bounds is None:
            return LogPage(items=[])
        candidates = self._range(*bounds)
        if query.direction is Direction.BACKWARD:
            candidates = candidates[::-1]
        size, more = page_limit(query, plan)
        matches = plan.matches
        items: list[LogEntry] = []
        page_bytes, max_bytes = 0, self._options.max_page_bytes
        for index in candidates:
            entry = self._entries[index]
            if matches(entry):
                items.append(entry)
                page_bytes += self._sizes[index]
                if len(items) == size:
                    return LogPage(items=items, next_cursor=entry.id if more else None)
                if page_bytes >= max_bytes:
                    return LogPage(items=items, next_cursor=entry.id)
        return LogPage(items=items)

    async def count(self, query: LogQuery) -> CountResult:
        """Entries matching `query`, counted per its `| count()` pipe (see `LogStore.count`)."""
        plan = plan_for(query)
        frame = count_frame(plan, now=datetime.fromtimestamp(self._clock(), UTC))
        tally = Tally(frame)
        if frame.bounds is not None:
            matches = plan.matches
            for index in self._range(*frame.bounds):
                entry = self._entries[index]
                if matches(entry):
                    tally.add(entry, id_ms(entry.id))
        return tally.result()

    def _range(self, low: _Key, high: _Key) -> range:
        """The indexes of the entries with ids from `low` to `high`, inclusive."""
        return range(bisect.bisect_left(self._keys, low), bisect.bisect_right(self._keys, high))

    async def version(self) -> str:
        """Changes whenever an entry is added or removed (see `LogStore.version`)."""
        return f"{self._last[0]}-{self._last[1]}:{len(self._keys)}"

    async def tail(self, after_id: str = "$") -> AsyncIterator[LogEntry]:
        """New entries after `after_id` as they arrive ("$": from now; "0": from the start)."""
        last = self._last if after_id == "$" else parse_stream_id(after_id, "after_id")
        while True:
            start = bisect.bisect_right(self._keys, last)
            if start == len(self._keys):
                arrived = self._arrived
                await arrived.wait()
                continue
            for entry in self._entries[start:]:
                last = parse_stream_id(entry.id)
                yield entry

    async def stats(self) -> LogStats:
        """Ingest counters, and how many entries are held now."""
        counters = self._counters
        return LogStats(
            total=counters["total"],
            retained=len(self._entries),
            by_level={k[2:]: v for k, v in counters.items() if k.startswith("l:")},
            by_service={k[2:]: v for k, v in counters.items() if k.startswith("s:")},
            by_instance={k[2:]: v for k, v in counters.items() if k.startswith("i:")},
            ingest_rate=round(len(self._recent_since(self._clock() - 60)) / 60, 3),
        )

    async def ping(self) -> None:
        """Always answers: the store is in this process."""

    async def aclose(self) -> None:
        """Nothing to release."""

    def _store(self, log: NewLog) -> LogEntry:
        ms = int(self._clock() * 1000)
        key: _Key = (ms, 0) if ms > self._last[0] else (self._last[0], self._last[1] + 1)
        entry = stored_entry(log, f"{key[0]}-{key[1]}", self._instance)
        self._keys.append(key)
        self._entries.append(entry)
        self._sizes.append(len(msgspec.json.encode(log)))
        self._last = key
        self._counters.update(("total", f"l:{log.level.value}", f"i:{self._instance}"))
        if log.service:
            self._counters[f"s:{log.service}"] += 1
        self._trim(ms)
        self._recent.append(ms / 1000)
        # Wake every tail waiting now; later waiters get a fresh event.
        self._arrived.set()
        self._arrived = asyncio.Event()
        return entry

    def _recent_since(self, floor: float) -> deque[float]:
        while self._recent and self._recent[0] < floor:
            self._recent.popleft()
        return self._recent

    def _trim(self, now_ms: int) -> None:
        retention = self._options.retention
        drop = 0
        if retention.max_entries is not None:
            drop = max(0, len(self._entries) - retention.max_entries)
        if retention.max_age is not None:
            floor = (now_ms - int(retention.max_age.total_seconds() * 1000), 0)
            drop = max(drop, bisect.bisect_left(self._keys, floor))
        self._recent_since(now_ms / 1000 - 60)
        if drop:
            del self._keys[:drop]
            del self._entries[:drop]
            del self._sizes[:drop]


def _digest(logs: Sequence[NewLog]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for log in logs:
        digest.update(msgspec.json.encode(log))
        digest.update(b"\x00")
    return digest.hexdigest()
