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
from collections import deque
from collections.abc import Callable

from aygolog.errors import Unavailable
from aygolog.models import LogEntry, LogQuery
from aygolog.query import plan_for
from aygolog.store import LogStore

__all__ = ["END", "Dropped", "End", "Subscription", "TailHub"]

log = logging.getLogger("aygolog.server.tail")

_FAN_OUT_SLICE = 256
"""Subscribers offered an entry between two yields to the event loop."""


class Dropped:
    """Marks a gap: `count` entries for this subscriber were dropped because it fell behind."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class End:
    """The stream is over: the instance is stopping (the client resumes elsewhere)."""


END = End()


class Subscription:
    """One subscriber's queue and filter; iterate it for entries and `Dropped` markers.

    The queue is a deque and one waiter future (not an `asyncio.Queue` read through
    `asyncio.wait_for`, which made a task and a timer per read: with thousands of subscribers,
    most of an instance's time went there at each entry).
    """

    def __init__(self, hub: TailHub, query: LogQuery | None, size: int) -> None:
        self._hub = hub
        # The plan's predicate is None when every entry matches (nothing to call per entry).
        # Its time range, limit and count do not apply to a tail (the route refuses them).
        self._matches = None if query is None else plan_for(query).predicate
        self._items: deque[LogEntry | Dropped | End] = deque()
        self._size = size
        self._waiter: asyncio.Future[None] | None = None
        self.ended = False
        """Set when the hub drains: `get` returns `END` from then on."""
        self.dropped = 0
        """Entries dropped since the last `Dropped` marker was queued."""
        self.dropped_total = 0

    @property
    def waiting(self) -> int:
        """Entries and markers queued for this subscriber now."""
        return len(self._items)

    def _put(self, item: LogEntry | Dropped | End) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def offer(self, entry: LogEntry) -> bool:
        """Queue the entry if it matches; count it as dropped if the queue is full."""
        if self._matches is not None and not self._matches(entry):
            return True
        waiting = len(self._items)
        # The gap marker goes where the gap is: after what was queued before it, before this.
        if self.dropped and waiting < self._size - 1:
            self._put(Dropped(self.dropped))
            self.dropped = 0
            waiting += 1
        if self.dropped or waiting >= self._size:
            self.dropped += 1
            self.dropped_total += 1
            return False
        self._put(entry)
        return True

    async def get(
        self,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> LogEntry | Dropped | End | None:
        """The next entry or `Dropped` marker, in order; None after `timeout` with nothing;
        `END` once the hub drains."""
        if self.ended:
            return END
        items = self._items
        if not items:
            if self.dropped:
                count, self.dropped = self.dropped, 0
                return Dropped(count)
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not items:
                return None
        return items.popleft()

    def end(self) -> None:
        """Make `get` return `END` now (also to a caller waiting in it)."""
        self.ended = True
        self._put(END)

    def close(self) -> None:
        """Stop receiving entries."""
        self._hub.unsubscribe(self)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
        self.draining = False
        """Set by `drain`: open streams end, new ones end at once."""
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

    async def subscribe(self, query: LogQuery | None = None) -> Subscription:
        """A new subscription receiving entries that match `query` from now on.

        Raises:
            QuerySyntaxError: `query.query` does not parse.

        The reader runs only while someone is subscribed (reading every entry costs CPU in
        proportion to the ingest rate); the first subscriber starts it and waits until it
        follows the store, so nothing written after this returns is missed.
        """
        subscription = Subscription(self, query, self._queue_size)
        if self.draining:
            subscription.end()
            return subscription
        self._subscriptions.add(subscription)
        if self._task is None or self._task.done():
            self._last_id = "$"
            self.connected.clear()
            self._task = asyncio.create_task(self._run(), name="aygolog-tail-reader")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), 5.0)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscription (safe to call twice); the last one out stops the reader."""
        self._subscriptions.discard(subscription)
        if not self._subscriptions and self._task is not None:
            self._task.cancel()
            self._task = None
            self.connected.clear()

    def drain(self) -> None:
        """End every open stream, and any opened later (the instance is about to stop: a live
        stream would hold the server's graceful shutdown until it is killed)."""
        self.draining = True
        for subscription in list(self._subscriptions):
            subscription.end()

    async def stop(self) -> None:
        """Stop the reader and drop every subscription (in the app's shutdown)."""
        self._subscriptions.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                if self._last_id == "$":
                    # Pin "now" to the newest id, so that nothing written after a subscriber
                    # was told "connected" is missed, and a reconnect resumes from here.
                    newest = await self._store.query(LogQuery(limit=1))
                    self._last_id = newest.items[0].id if newest.items else "0-0"
                self.connected.set()
                async for entry in self._store.tail(self._last_id):
                    delay = 0.1
                    self._last_id = entry.id
                    await self._fan_out(entry)
            except Unavailable as exc:
                if self.connected.is_set():
                    log.warning("live tail lost the store (%s); retrying", exc)
                self.connected.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _fan_out(self, entry: LogEntry) -> None:
        # In slices, yielding to the loop between them: the wake-ups of thousands of streams
        # would otherwise all be queued ahead of anything else ready (a `/health`, the answer
        # to the POST that wrote this entry), which then waited for the whole fan-out.
        subscriptions = list(self._subscriptions)
        dropped = 0
        for start in range(0, len(subscriptions), _FAN_OUT_SLICE):
            if start:
                await asyncio.sleep(0)
            for subscription in subscriptions[start : start + _FAN_OUT_SLICE]:
                if not subscription.offer(entry):
                    dropped += 1
        if dropped and self._on_drop is not None:
            self._on_drop(dropped)
