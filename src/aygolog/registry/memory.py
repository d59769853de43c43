"""`InMemoryServiceRegistry`: the in-process twin of the Redis registry, with the same semantics.

For tests, examples and a single load balancer. Times are kept in whole milliseconds, as in
Redis, so both registries report the same instants.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import msgspec

from aygolog.errors import NotFound
from aygolog.models import (
    EventKind,
    InstanceStatus,
    Registration,
    RegistryEvent,
    ServiceInstance,
)
from aygolog.registry.base import (
    DEFAULT_PURGE_AFTER,
    DEFAULT_TTL,
    check_registration,
    from_ms,
    status_at,
)

__all__ = ["InMemoryServiceRegistry"]


class _Record(msgspec.Struct, kw_only=True):
    registration: Registration
    registered_ms: int
    heartbeat_ms: int


class InMemoryServiceRegistry:
    """A `ServiceRegistry` held in this process.

    Args:
        ttl: how old a heartbeat may be before the instance counts as expired.
        purge_after: how long an expired instance stays listed before `sweep()` removes it.
        clock: seconds since the epoch; injectable so tests need not sleep.
    """

    def __init__(
        self,
        *,
        ttl: timedelta = DEFAULT_TTL,
        purge_after: timedelta = DEFAULT_PURGE_AFTER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = ttl
        self._purge_after = purge_after
        self._ttl_ms = _ms(ttl)
        self._purge_ms = _ms(purge_after)
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._expired: set[str] = set()
        self._watchers: set[asyncio.Queue[RegistryEvent | None]] = set()

    @property
    def ttl(self) -> timedelta:
        """How old a heartbeat may be before the instance counts as expired."""
        return self._ttl

    @property
    def purge_after(self) -> timedelta:
        """How long an expired instance stays listed before `sweep()` removes it."""
        return self._purge_after

    async def register(self, registration: Registration) -> ServiceInstance:
        """Add or update an instance and refresh its heartbeat (see `ServiceRegistry`)."""
        check_registration(registration)
        now = self._now_ms()
        name = registration.name
        old = self._records.get(name)
        kind = EventKind.REGISTERED
        registered_ms = now
        if old is not None:
            registered_ms = old.registered_ms
            if name not in self._expired and now - old.heartbeat_ms <= self._ttl_ms:
                kind = EventKind.UPDATED
        self._expired.discard(name)
        stored = msgspec.structs.replace(registration, metadata=dict(registration.metadata))
        record = _Record(registration=stored, registered_ms=registered_ms, heartbeat_ms=now)
        self._records[name] = record
        instance = self._instance(record, now)
        self._publish(kind, instance, now)
        return instance

    async def heartbeat(self, name: str) -> ServiceInstance:
        """Refresh the instance's heartbeat; emits `registered` if it had expired.

        Raises:
            NotFound: no such instance.
        """
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"no instance named {name!r} is registered")
        now = self._now_ms()
        came_back = name in self._expired or now - record.heartbeat_ms > self._ttl_ms
        self._expired.discard(name)
        record.heartbeat_ms = now
        instance = self._instance(record, now)
        if came_back:
            self._publish(EventKind.REGISTERED, instance, now)
        return instance

    async def deregister(self, name: str) -> bool:
        """Remove the instance (emits `deregistered`); False when there was none."""
        record = self._records.pop(name, None)
        if record is None:
            return False
        self._expired.discard(name)
        now = self._now_ms()
        self._publish(EventKind.DEREGISTERED, self._instance(record, now), now)
        return True

    async def get(self, name: str) -> ServiceInstance | None:
        """The named instance with its current status, or None."""
        record = self._records.get(name)
        return None if record is None else self._instance(record, self._now_ms())

    async def instances(self) -> list[ServiceInstance]:
        """Every registered instance, healthy or expired, sorted by name."""
        now = self._now_ms()
        return [self._instance(self._records[name], now) for name in sorted(self._records)]

    async def sweep(self) -> list[str]:
        """Announce newly expired instances and purge long-expired ones (see `ServiceRegistry`)."""
        now = self._now_ms()
        by_age = sorted(self._records.items(), key=lambda item: (item[1].heartbeat_ms, item[0]))
        purge_before = now - self._ttl_ms - self._purge_ms
        for name, record in by_age:
            if record.heartbeat_ms < purge_before:
                del self._records[name]
                self._expired.discard(name)
                self._publish(EventKind.DEREGISTERED, self._instance(record, now), now)
        newly: list[str] = []
        for name, record in by_age:
            if (
                name in self._records
                and now - record.heartbeat_ms > self._ttl_ms
                and name not in self._expired
            ):
                self._expired.add(name)
                newly.append(name)
                self._publish(EventKind.EXPIRED, self._instance(record, now), now)
        return newly

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[RegistryEvent]]:
        """Changes from the moment the block is entered (see `ServiceRegistry.watch`)."""
        queue: asyncio.Queue[RegistryEvent | None] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            yield _QueueEvents(queue)
        finally:
            self._watchers.discard(queue)

    async def ping(self) -> None:
        """Always answers: the registry is in this process."""

    async def aclose(self) -> None:
        """End every watch's iteration."""
        for queue in self._watchers:
            queue.put_nowait(None)
        self._watchers.clear()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _instance(self, record: _Record, now: int) -> ServiceInstance:
        reg = record.registration
        status: InstanceStatus = status_at(record.heartbeat_ms, now, self._ttl_ms)
        return ServiceInstance(
            name=reg.name,
            url=reg.url,
            registered_at=from_ms(record.registered_ms),
            last_heartbeat=from_ms(record.heartbeat_ms),
            status=status,
            ip=reg.ip,
            port=reg.port,
            weight=reg.weight,
            metadata=dict(reg.metadata),
        )

    def _publish(self, kind: EventKind, instance: ServiceInstance, now: int) -> None:
        event = RegistryEvent(kind=kind, name=instance.name, at=from_ms(now), instance=instance)
        for queue in self._watchers:
            queue.put_nowait(event)


class _QueueEvents:
    """The events of one in-memory watch; ends when the registry is closed."""

    def __init__(self, queue: asyncio.Queue[RegistryEvent | None]) -> None:
        self._queue = queue

    def __aiter__(self) -> _QueueEvents:
        return self

    async def __anext__(self) -> RegistryEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)
