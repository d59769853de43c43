"""`ReadGate`: at most so many store reads at once per instance, so a burst of large reads
queues here instead of piling onto Redis (which answers one command at a time: more reads in
flight add memory, in Redis's output buffers and here, not throughput)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aygolog.errors import Unavailable

__all__ = ["ReadGate"]


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
        if patient:
            await self._slots.acquire()
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
