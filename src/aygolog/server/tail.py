"""Live tail fan-out: one stream reader per Log API instance, a bounded queue per subscriber.

The reader follows the store (`LogStore.tail`, an XREAD BLOCK loop on Redis), so an entry
written through any instance reaches the subscribers of every instance. Each subscriber has its
own bounded queue with its own filter: when a queue is full, new entries for it are counted as
dropped (never waited for), so one slow subscriber cannot slow the reader or anyone else. The
subscriber learns how many it missed with its next item.

If the store becomes unreachable, the reader retries with backoff and resumes from the last id it
saw, so subscribers see no gap once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aygolog.errors import Unavailable
from aygolog.models import LogEntry, LogQuery
from aygolog.store import LogStore, matches

__all__ = ["Dropped", "Subscription", "TailHub"]

log = logging.getLogger("aygolog.server.tail")


class Dropped:
    """Marks a gap: `count` entries for this subscriber were dropped because it fell behind."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class Subscription:
    """One subscriber's queue and filter; iterate it for entries and `Dropped` markers."""

    def __init__(self, hub: TailHub, query: LogQuery | None, size: int) -> None:
        self._hub = hub
        self._query = query
        self._severities = query.level_severities() if query is not None else None
        self._queue: asyncio.Queue[LogEntry] = asyncio.Queue(size)
        self.dropped = 0
        """Entries dropped since the last `Dropped` marker was taken."""
        self.dropped_total = 0

    def offer(self, entry: LogEntry) -> bool:
        """Queue the entry if it matches; count it as dropped if the queue is full."""
        if self._query is not None and not matches(entry, self._query, self._severities):
            return True
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1
            self.dropped_total += 1
            return False
        return True

    async def get(self, timeout: float | None = None) -> LogEntry | Dropped | None:  # noqa: ASYNC109
        """The next entry, a `Dropped` marker if entries were lost, or None after `timeout`."""
        if self.dropped:
            count, self.dropped = self.dropped, 0
            return Dropped(count)
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def get_nowait(self) -> LogEntry | None:
        """The next queued entry, or None when the queue is empty."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        """Stop receiving entries."""
        self._hub.unsubscribe(self)


class TailHub:
    """Runs the instance's one stream reader and fans entries out to subscriptions.

    Args:
        store: the store to follow.
        queue_size: how many entries a subscriber may have waiting before new ones are dropped.
        on_drop: called with the count each time entries are dropped (for metrics).
    """

    def __init__(
        self,
        store: LogStore,
        *,
        queue_size: int = 1000,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._queue_size = queue_size
        self._on_drop = on_drop
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_id = "$"
        self.connected = asyncio.Event()
        """Set while the reader is following the store."""

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)

    @property
    def last_id(self) -> str:
        """The id of the last entry the reader saw ("$" before the first)."""
        return self._last_id

    def subscribe(self, query: LogQuery | None = None) -> Subscription:
        """A new subscription receiving entries that match `query` from now on."""
        subscription = Subscription(self, query, self._queue_size)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscription (safe to call twice)."""
        self._subscriptions.discard(subscription)

    async def start(self) -> None:
        """Start the reader (in the app's lifespan)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="aygolog-tail-reader")

    async def stop(self) -> None:
        """Stop the reader."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                stream: AsyncIterator[LogEntry] = self._store.tail(self._last_id)
                self.connected.set()
                async for entry in stream:
                    delay = 0.1
                    self._last_id = entry.id
                    self._fan_out(entry)
            except Unavailable as exc:
                if self.connected.is_set():
                    log.warning("live tail lost the store (%s); retrying", exc)
                self.connected.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _fan_out(self, entry: LogEntry) -> None:
        dropped = 0
        for subscription in self._subscriptions:
            if not subscription.offer(entry):
                dropped += 1
        if dropped and self._on_drop is not None:
            self._on_drop(dropped)
