"""Reads on a Log API instance.

- `ReadGate`: at most so many store reads at once per instance, so a burst of large reads
  queues here instead of piling onto Redis (which answers one command at a time: more reads in
  flight add memory, in Redis's output buffers and here, not throughput).
- `PageCache`: the seed's list (`GET /api/log`) as encoded answers, each kept with the store
  version (`LogStore.version`) it was read at and served again only while the store still
  reports that version, so it is never staler than a fresh read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aygolog.errors import Unavailable

__all__ = ["PageCache", "ReadGate"]


class ReadGate:
    """A semaphore for store reads that refuses, rather than queues forever, when it is full.

    Args:
        limit: reads allowed at once.
        wait: seconds a read may wait for its turn before `slot` raises `Unavailable`.
    """

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self.wait = wait
        self._slots = asyncio.Semaphore(limit)
        self.in_use = 0
        """Slots held now."""
        self.refused = 0
        """Reads refused so far (waited `wait` seconds without a turn)."""
        self.on_refused: Callable[[], None] | None = None
        """Called each time a read is refused (for metrics)."""

    @contextlib.asynccontextmanager
    async def slot(self, *, patient: bool = False) -> AsyncIterator[None]:
        """Hold one of the slots for the body of the `async with`.

        Args:
            patient: wait as long as it takes (a live stream catching up: its answer has
                started, and a 503 can no longer be sent).

        Raises:
            Unavailable: no slot within `wait` seconds (answered 503 with Retry-After).
        """
        if patient or not self._slots.locked():
            await self._slots.acquire()  # a free slot is taken at once, no timer needed
        else:
            try:
                async with asyncio.timeout(self.wait):
                    await self._slots.acquire()
            except TimeoutError:
                self.refused += 1
                if self.on_refused is not None:
                    self.on_refused()
                raise Unavailable(
                    f"this instance is busy: {self.limit} reads are in progress and more are "
                    "waiting; retry shortly",
                    retry_after=1.0,
                ) from None
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._slots.release()


class PageCache:
    """Encoded pages of the newest entries, one per page size, each with the store version
    it was read at.

    The reader asks the store for its version first, then for the page only when no page is
    kept for that version. A page read after the version call holds at least what that version
    holds; while the store reports the same version nothing was added or removed, so the kept
    page is exactly what a fresh read would return. A log acknowledged by any instance has
    changed the version before its answer was sent, so the next read on every instance misses.

    When the version changes under many readers at once, one of them reads the new page and
    the others wait for it (`load`), rather than all reading the same page from the store.

    Args:
        max_pages: page sizes kept at once (the oldest kept is forgotten first).
        max_bytes: pages larger than this are not kept.
    """

    def __init__(self, max_pages: int = 4, max_bytes: int = 1024 * 1024) -> None:
        self.max_pages = max_pages
        self.max_bytes = max_bytes
        self._pages: dict[int, tuple[str, bytes]] = {}
        self._loading: dict[tuple[int, str], asyncio.Future[bytes]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, size: int, version: str) -> bytes | None:
        """The page kept for `size` if it was read at `version`, else None."""
        kept = self._pages.get(size)
        if kept is not None and kept[0] == version:
            self.hits += 1
            return kept[1]
        self.misses += 1
        return None

    async def load(self, size: int, version: str, read: Callable[[], Awaitable[bytes]]) -> bytes:
        """The page for `size` at `version`, read by `read()` once however many ask at once.

        `read` must read the page after `version` was read from the store (so the page is at
        least as new as `version`); a reader that saw the same `version` may share that page.
        An error of `read` is raised to every reader waiting for it; the next call reads again.
        """
        key = (size, version)
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key, read))
            loading.add_done_callback(_retrieve)
            self._loading[key] = loading
        # Shielded: a reader that goes away does not cancel the read the others wait for.
        return await asyncio.shield(loading)

    async def _load(self, key: tuple[int, str], read: Callable[[], Awaitable[bytes]]) -> bytes:
        try:
            body = await read()
            self.put(key[0], key[1], body)
            return body
        finally:
            del self._loading[key]

    def put(self, size: int, version: str, body: bytes) -> None:
        """Keep `body`, read at `version`, as the page for `size`."""
        if len(body) > self.max_bytes:
            return
        pages = self._pages
        pages.pop(size, None)
        if len(pages) >= self.max_pages:
            del pages[next(iter(pages))]
        pages[size] = (version, body)


def _retrieve(future: asyncio.Future[bytes]) -> None:
    # Every reader may have gone away: mark the error seen, so asyncio does not log it.
    if not future.cancelled():
        future.exception()
