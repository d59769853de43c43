"""The ServiceRegistry contract, run against the in-memory and the Redis implementation alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from importlib.resources import files

import pytest
import redis.asyncio as aioredis

from aygolog.embedded import EmbeddedRedis
from aygolog.errors import NotFound, Unavailable, ValidationError
from aygolog.models import EventKind, InstanceStatus, Registration, RegistryEvent
from aygolog.registry import (
    DEFAULT_PURGE_AFTER,
    DEFAULT_TTL,
    InMemoryServiceRegistry,
    RedisServiceRegistry,
    ServiceRegistry,
    check_registration,
)
from aygolog.registry.base import from_ms

SHORT_TTL = timedelta(seconds=0.3)
PAST_TTL = 0.4
"""Seconds to wait (or advance the fake clock) for an instance with SHORT_TTL to expire."""


class FakeClock:
    """Seconds since the epoch that move only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Backend:
    """Registries that share one state: one Redis client each, or the same in-memory registry."""

    def __init__(self, kind: str, redis_url: str, prefix: str) -> None:
        self.kind = kind
        self.clock = FakeClock()
        self._url = redis_url
        self._prefix = prefix
        self._memory: InMemoryServiceRegistry | None = None
        self._opened: list[ServiceRegistry] = []

    def connect(
        self, *, ttl: timedelta = DEFAULT_TTL, purge_after: timedelta = DEFAULT_PURGE_AFTER
    ) -> ServiceRegistry:
        """Another client of the shared registry (memory: the same object every time)."""
        if self.kind == "memory":
            if self._memory is None:
                self._memory = InMemoryServiceRegistry(
                    ttl=ttl, purge_after=purge_after, clock=self.clock
                )
            assert (self._memory.ttl, self._memory.purge_after) == (ttl, purge_after)
            return self._memory
        registry = RedisServiceRegistry.from_url(
            self._url, prefix=self._prefix, ttl=ttl, purge_after=purge_after
        )
        self._opened.append(registry)
        return registry

    async def wait(self, seconds: float) -> None:
        """Let time pass: the fake clock jumps; Redis's clock is waited for."""
        if self.kind == "memory":
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    async def aclose(self) -> None:
        for registry in self._opened:
            await registry.aclose()
        if self._memory is not None:
            await self._memory.aclose()


@pytest.fixture(params=["memory", "redis"])
async def backend(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis, prefix: str
) -> AsyncIterator[Backend]:
    """Each implementation of `ServiceRegistry` in turn: the contract suite runs against both."""
    made = Backend(request.param, redis_server.url, prefix)
    yield made
    await made.aclose()


@pytest.fixture
def registry(backend: Backend) -> ServiceRegistry:
    """A registry with the default TTL."""
    return backend.connect()


def reg(name: str = "api-1", port: int = 5001, **kwargs: object) -> Registration:
    """A registration of http://10.0.0.5:<port>."""
    return Registration(name=name, url=f"http://10.0.0.5:{port}", **kwargs)  # type: ignore[arg-type]


async def next_event(events: AsyncIterator[RegistryEvent], wait: float = 2.0) -> RegistryEvent:
    """The next event, or TimeoutError after `wait` seconds."""
    return await asyncio.wait_for(anext(events), wait)


async def events_until(
    events: AsyncIterator[RegistryEvent], last: Callable[[RegistryEvent], bool]
) -> list[RegistryEvent]:
    """Events up to and including the first for which `last` is true."""
    got: list[RegistryEvent] = []
    while True:
        got.append(await next_event(events))
        if last(got[-1]):
            return got


def is_marker(event: RegistryEvent) -> bool:
    return event.name == "marker"


# -- register, get, list, update, deregister, heartbeat --------------------------------------


async def test_register_then_get_and_list(registry: ServiceRegistry) -> None:
    async with registry.watch() as events:
        before = datetime.now(UTC)
        instance = await registry.register(
            Registration(
                name="api-2",
                url="http://10.0.0.5:5002",
                ip="10.0.0.5",
                port=5002,
                weight=3,
                metadata={"zone": "a"},
            )
        )
        event = await next_event(events)
    assert instance.name == "api-2"
    assert instance.url == "http://10.0.0.5:5002"
    assert (instance.ip, instance.port, instance.weight) == ("10.0.0.5", 5002, 3)
    assert instance.metadata == {"zone": "a"}
    assert instance.status is InstanceStatus.HEALTHY
    assert instance.registered_at == instance.last_heartbeat
    assert abs((instance.registered_at - before).total_seconds()) < 5
    assert await registry.get("api-2") == instance
    assert await registry.get("nobody") is None
    await registry.register(reg("api-1"))
    assert [i.name for i in await registry.instances()] == ["api-1", "api-2"]
    # The event carries the instance exactly as the registry reports it.
    assert event.kind is EventKind.REGISTERED
    assert event.name == "api-2"
    assert event.instance == instance
    assert event.at == instance.last_heartbeat


async def test_register_again_updates_and_keeps_registered_at(
    backend: Backend, registry: ServiceRegistry
) -> None:
    first = await registry.register(reg(weight=1, metadata={"v": "1"}))
    await backend.wait(0.02)
    async with registry.watch() as events:
        second = await registry.register(reg(port=6001, weight=5, metadata={"v": "2"}))
        event = await next_event(events)
    assert second.registered_at == first.registered_at
    assert second.last_heartbeat > first.last_heartbeat
    assert (second.url, second.weight, second.metadata) == ("http://10.0.0.5:6001", 5, {"v": "2"})
    assert await registry.get("api-1") == second
    assert len(await registry.instances()) == 1
    assert event.kind is EventKind.UPDATED
    assert event.instance == second


async def test_deregister(registry: ServiceRegistry) -> None:
    await registry.register(reg("api-1"))
    await registry.register(reg("api-2"))
    async with registry.watch() as events:
        assert await registry.deregister("api-1") is True
        event = await next_event(events)
    assert await registry.deregister("api-1") is False
    assert await registry.get("api-1") is None
    assert [i.name for i in await registry.instances()] == ["api-2"]
    assert (event.kind, event.name) == (EventKind.DEREGISTERED, "api-1")
    assert event.instance is not None
    assert event.instance.url == "http://10.0.0.5:5001"


async def test_heartbeat_refreshes_and_unknown_is_not_found(
    backend: Backend, registry: ServiceRegistry
) -> None:
    registered = await registry.register(reg())
    await backend.wait(0.02)
    beat = await registry.heartbeat("api-1")
    assert beat.last_heartbeat > registered.last_heartbeat
    assert beat.registered_at == registered.registered_at
    assert await registry.get("api-1") == beat
    with pytest.raises(NotFound):
        await registry.heartbeat("nobody")
    await registry.deregister("api-1")
    with pytest.raises(NotFound):
        await registry.heartbeat("api-1")


async def test_ping(registry: ServiceRegistry) -> None:
    await registry.ping()
    assert isinstance(registry, ServiceRegistry)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registration", "field"),
    [
        (reg(""), "name"),
        (reg("has space"), "name"),
        (reg("a/b"), "name"),
        (reg("x" * 129), "name"),
        (Registration(name="a", url="file:///etc/passwd"), "url"),
        (Registration(name="a", url="http://user:secret@10.0.0.5:5001"), "url"),
        (Registration(name="a", url="ftp://10.0.0.5"), "url"),
        (Registration(name="a", url="10.0.0.5:5001"), "url"),
        (Registration(name="a", url="http://:5001"), "url"),
        (Registration(name="a", url="http://10.0.0.5:99999"), "url"),
        (Registration(name="a", url="http://10.0.0.5:5001/api"), "url"),
        (Registration(name="a", url="http://10.0.0.5:5001/?x=1"), "url"),
        (Registration(name="a", url="http://10.0.0.5 :5001"), "url"),
        (reg(weight=-1), "weight"),
        (reg(weight=1001), "weight"),
        (reg(metadata={"": "empty key"}), "metadata"),
        (Registration(name="a", url="http://10.0.0.5", port=0), "port"),
    ],
)
async def test_bad_registration_names_the_field_and_stores_nothing(
    registry: ServiceRegistry, registration: Registration, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await registry.register(registration)
    assert [e.field for e in info.value.errors] == [field]
    assert await registry.instances() == []


def test_check_registration_reports_every_bad_field() -> None:
    with pytest.raises(ValidationError) as info:
        check_registration(Registration(name="", url="gopher://x", weight=5000, port=0))
    assert [e.field for e in info.value.errors] == ["name", "url", "weight", "port"]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5",  # port implied by the scheme
        "https://logs.example.com/",
        "http://log_api_1:8080",  # docker-compose service names have underscores
        "http://[::1]:5001",
    ],
)
def test_check_registration_accepts(url: str) -> None:
    check_registration(Registration(name="api-1.eu:a_b", url=url, weight=0))
    check_registration(Registration(name="n", url=url, weight=1000))


# -- concurrency and events ---------------------------------------------------------------


async def test_concurrent_registrations_over_separate_connections_are_all_kept(
    backend: Backend,
) -> None:
    registries = [backend.connect() for _ in range(50)]
    names = [f"api-{i:02d}" for i in range(50)]
    await asyncio.gather(*(r.register(reg(n)) for r, n in zip(registries, names, strict=True)))
    listed = await backend.connect().instances()
    assert [i.name for i in listed] == names


async def test_a_watch_on_another_connection_sees_a_registration_within_100ms(
    backend: Backend, registry: ServiceRegistry
) -> None:
    watcher = backend.connect()
    async with watcher.watch() as events:
        start = time.perf_counter()
        await registry.register(reg())
        event = await next_event(events)
        elapsed = time.perf_counter() - start
    assert (event.kind, event.name) == (EventKind.REGISTERED, "api-1")
    assert elapsed < 0.1


async def test_a_watcher_receives_every_event_of_a_burst(
    backend: Backend, registry: ServiceRegistry
) -> None:
    names = [f"burst-{i:03d}" for i in range(100)]
    async with backend.connect().watch() as events:
        await asyncio.gather(*(registry.register(reg(n)) for n in names))
        got = [await next_event(events) for _ in names]
    assert sorted(e.name for e in got) == names
    assert {e.kind for e in got} == {EventKind.REGISTERED}


# -- expiry -------------------------------------------------------------------------------


async def test_expired_is_announced_exactly_once_across_concurrent_sweeps(
    backend: Backend,
) -> None:
    first, second = backend.connect(ttl=SHORT_TTL), backend.connect(ttl=SHORT_TTL)
    names = ["api-1", "api-2", "api-3"]
    for name in names:
        await first.register(reg(name))
    async with backend.connect(ttl=SHORT_TTL).watch() as events:
        assert await first.sweep() == []
        await backend.wait(PAST_TTL)
        listed = await second.instances()
        assert [i.status for i in listed] == [InstanceStatus.EXPIRED] * 3
        swept = await asyncio.gather(*(r.sweep() for r in (first, second, first, second)))
        assert sorted(name for names_ in swept for name in names_) == names
        await first.register(reg("marker"))
        got = await events_until(events, is_marker)
    expired = [e for e in got if e.kind is EventKind.EXPIRED]
    assert sorted(e.name for e in expired) == names
    assert len(got) == 4  # three expired, then the marker: nothing else
    assert all(e.instance and e.instance.status is InstanceStatus.EXPIRED for e in expired)
    assert await second.sweep() == []
    assert (await first.get("api-1")) is not None  # expired, not yet purged


async def test_an_expired_instance_comes_back_by_heartbeat_or_registration(
    backend: Backend,
) -> None:
    registry = backend.connect(ttl=SHORT_TTL)
    first = await registry.register(reg("beats"))
    await registry.register(reg("registers"))
    await backend.wait(PAST_TTL)
    assert sorted(await registry.sweep()) == ["beats", "registers"]
    async with registry.watch() as events:
        beat = await registry.heartbeat("beats")
        again = await registry.register(reg("registers", port=7001))
        await registry.register(reg("marker"))
        got = await events_until(events, is_marker)
    assert beat.status is InstanceStatus.HEALTHY
    assert beat.registered_at == first.registered_at
    assert again.status is InstanceStatus.HEALTHY
    assert [(e.kind, e.name) for e in got] == [
        (EventKind.REGISTERED, "beats"),
        (EventKind.REGISTERED, "registers"),
        (EventKind.REGISTERED, "marker"),
    ]
    assert [i.status for i in await registry.instances()] == [InstanceStatus.HEALTHY] * 3
    assert await registry.sweep() == []


async def test_long_expired_instances_are_purged(backend: Backend) -> None:
    registry = backend.connect(ttl=SHORT_TTL, purge_after=timedelta(seconds=0.3))
    await registry.register(reg("gone"))
    async with registry.watch() as events:
        await backend.wait(PAST_TTL)
        assert await registry.sweep() == ["gone"]
        assert await registry.get("gone") is not None
        await backend.wait(0.35)
        assert await registry.sweep() == []
        await registry.register(reg("marker"))
        got = await events_until(events, is_marker)
    assert [(e.kind, e.name) for e in got] == [
        (EventKind.EXPIRED, "gone"),
        (EventKind.DEREGISTERED, "gone"),
        (EventKind.REGISTERED, "marker"),
    ]
    assert await registry.get("gone") is None
    assert [i.name for i in await registry.instances()] == ["marker"]
    with pytest.raises(NotFound):
        await registry.heartbeat("gone")


# -- Redis specifics ----------------------------------------------------------------------


async def test_lua_dates_match_python(redis_client: aioredis.Redis) -> None:
    common = files("aygolog.registry").joinpath("lua/common.lua").read_text()
    script = common + "return iso(tonumber(ARGV[1]))"
    instants = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2000, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
        datetime(2024, 12, 31, 23, 59, 59, 1000, tzinfo=UTC),
        datetime(2100, 3, 1, 0, 0, 0, 500000, tzinfo=UTC),
        datetime.now(UTC).replace(microsecond=123000),
    ]
    for at in instants:
        ms = int(at.timestamp() * 1000)
        raw = await redis_client.eval(script, 0, ms)
        assert datetime.fromisoformat(raw.decode().replace("Z", "+00:00")) == from_ms(ms) == at


async def test_redis_down_raises_unavailable_never_empty() -> None:
    server = EmbeddedRedis().start()
    client = aioredis.Redis.from_url(server.url)
    registry = RedisServiceRegistry(client, prefix="down")
    try:
        await registry.register(reg())
        async with registry.watch() as events:
            server.kill()
            with pytest.raises(Unavailable) as info:
                await registry.instances()
            assert info.value.retry_after == 1.0
            assert isinstance(info.value.__cause__, aioredis.RedisError)
            with pytest.raises(Unavailable):
                await registry.get("api-1")
            with pytest.raises(Unavailable):
                await registry.register(reg())
            with pytest.raises(Unavailable):
                await registry.heartbeat("api-1")
            with pytest.raises(Unavailable):
                await registry.sweep()
            with pytest.raises(Unavailable):
                await registry.ping()
            with pytest.raises(Unavailable):
                await next_event(events, wait=30)
        with pytest.raises(Unavailable):
            async with registry.watch():
                pass
    finally:
        await client.aclose()
        server.stop()


async def test_a_watch_says_so_when_its_subscription_was_lost() -> None:
    server = EmbeddedRedis().start()
    client = aioredis.Redis.from_url(server.url)
    registry = RedisServiceRegistry(client, prefix="restart")
    try:
        async with registry.watch() as events:
            server.kill()
            server.start()  # same port: redis-py reconnects and subscribes again
            with pytest.raises(Unavailable, match="missed"):
                await next_event(events, wait=30)
        # A new watch (after reloading the instances) works again.
        async with registry.watch() as events:
            await registry.register(reg())
            assert (await next_event(events)).name == "api-1"
    finally:
        await client.aclose()
        server.stop()
