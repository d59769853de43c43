"""`RedisServiceRegistry`: the registry in Redis, shared by every load balancer.

Layout (all keys share the deployment's hash tag, so the scripts stay valid on a cluster):

- `{prefix}:services`: a hash, name -> the `Registration` as JSON with `registered_at` added.
- `{prefix}:heartbeats`: a sorted set, name -> last heartbeat in ms since the epoch.
- `{prefix}:expired`: a set of the names already announced as expired.
- `{prefix}:events`: the pub/sub channel of `RegistryEvent`s, as msgspec JSON.

Every change is one Lua script (`lua/*.lua`, each prefixed with `lua/common.lua`) that also
publishes its event, so changes and events happen in the same order for every watcher, and no
list is ever read, changed and written back. The scripts read the time with Redis's TIME: one
clock for every load balancer. Reads are one MULTI (TIME, HGETALL, ZRANGE), a consistent snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from importlib.resources import files
from typing import Any, Final, Self

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import NoScriptError, RedisError

from aygolog.errors import NotFound, Unavailable
from aygolog.models import Registration, RegistryEvent, ServiceInstance
from aygolog.redis import KeySpace, create_single_redis
from aygolog.registry.base import (
    DEFAULT_PURGE_AFTER,
    DEFAULT_TTL,
    check_registration,
    from_ms,
    status_at,
)

__all__ = ["RedisServiceRegistry"]


class _Script:
    """A Lua script (with the common helpers in front) and its SHA1 for EVALSHA."""

    def __init__(self, name: str) -> None:
        lua = files("aygolog.registry").joinpath("lua")
        self.source = lua.joinpath("common.lua").read_text() + lua.joinpath(name).read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class _Stored(Registration, kw_only=True):
    """A value of the services hash."""

    registered_at: datetime


_REGISTER: Final = _Script("register.lua")
_HEARTBEAT: Final = _Script("heartbeat.lua")
_DEREGISTER: Final = _Script("deregister.lua")
_SWEEP: Final = _Script("sweep.lua")
_ENCODE: Final = msgspec.json.Encoder().encode
_DECODE_INSTANCE: Final = msgspec.json.Decoder(ServiceInstance).decode
_DECODE_STORED: Final = msgspec.json.Decoder(_Stored).decode
_DECODE_EVENT: Final = msgspec.json.Decoder(RegistryEvent).decode
_RETRY_AFTER: Final = 1.0
_SUBSCRIBE_TIMEOUT: Final = 5.0


class RedisServiceRegistry:
    """A `ServiceRegistry` in Redis (see the module docstring for the layout).

    Args:
        redis: an async client created with `decode_responses=False`. The registry does not
            close it unless it was made by `from_url`. Each `watch()` takes one more connection
            from its pool for as long as the watch lasts.
        prefix: the key prefix of this deployment.
        ttl: how old a heartbeat may be before the instance counts as expired.
        purge_after: how long an expired instance stays listed before `sweep()` removes it.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "aygolog",
        ttl: timedelta = DEFAULT_TTL,
        purge_after: timedelta = DEFAULT_PURGE_AFTER,
    ) -> None:
        self._redis = redis
        keys = KeySpace(prefix)
        self._services = keys.key("services")
        self._heartbeats = keys.key("heartbeats")
        self._expired = keys.key("expired")
        self._channel = keys.key("events")
        self._keys = (self._services, self._heartbeats, self._expired)
        self._ttl = ttl
        self._purge_after = purge_after
        self._ttl_ms = _ms(ttl)
        self._purge_ms = _ms(purge_after)
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "aygolog",
        ttl: timedelta = DEFAULT_TTL,
        purge_after: timedelta = DEFAULT_PURGE_AFTER,
    ) -> Self:
        """A registry with its own client for `url`, closed by `aclose()`."""
        client = create_single_redis(url)
        registry = cls(client, prefix=prefix, ttl=ttl, purge_after=purge_after)
        registry._owns_client = True
        return registry

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
        reply = await self._eval(
            _REGISTER,
            [self._channel, self._ttl_ms, registration.name, _ENCODE(registration)],
        )
        return _DECODE_INSTANCE(reply)

    async def heartbeat(self, name: str) -> ServiceInstance:
        """Refresh the instance's heartbeat; emits `registered` if it had expired.

        Raises:
            NotFound: no such instance.
        """
        reply = await self._eval(_HEARTBEAT, [self._channel, self._ttl_ms, name])
        if reply is None:
            raise NotFound(f"no instance named {name!r} is registered")
        return _DECODE_INSTANCE(reply)

    async def deregister(self, name: str) -> bool:
        """Remove the instance (emits `deregistered`); False when there was none."""
        return bool(await self._eval(_DEREGISTER, [self._channel, self._ttl_ms, name]))

    async def get(self, name: str) -> ServiceInstance | None:
        """The named instance with its current status, or None."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.hget(self._services, name)
            pipe.zscore(self._heartbeats, name)
            now, stored, heartbeat = await self._call(pipe.execute())
        if stored is None or heartbeat is None:
            return None
        return self._instance(stored, int(heartbeat), _now_ms(now))

    async def instances(self) -> list[ServiceInstance]:
        """Every registered instance, healthy or expired, sorted by name."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.hgetall(self._services)
            pipe.zrange(self._heartbeats, 0, -1, withscores=True)
            now, records, heartbeats = await self._call(pipe.execute())
        now_ms = _now_ms(now)
        beats = {name: int(score) for name, score in heartbeats}
        return [
            self._instance(records[name], beats[name], now_ms)
            for name in sorted(records)
            if name in beats
        ]

    async def sweep(self) -> list[str]:
        """Announce newly expired instances and purge long-expired ones (see `ServiceRegistry`)."""
        reply = await self._eval(_SWEEP, [self._channel, self._ttl_ms, self._purge_ms])
        return [name.decode() for name in reply]

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[RegistryEvent]]:
        """Changes from the moment the block is entered (see `ServiceRegistry.watch`).

        The subscription is confirmed by Redis before the block is entered.

        Raises:
            Unavailable: Redis cannot be reached, or the subscription was lost.
        """
        pubsub = self._redis.pubsub()
        try:
            try:
                await pubsub.subscribe(self._channel)
                # Wait for Redis to confirm: only then are later publishes sure to reach us.
                while True:
                    message = await pubsub.get_message(timeout=_SUBSCRIBE_TIMEOUT)
                    if message is None:
                        raise Unavailable(
                            "Redis did not confirm the subscription", retry_after=_RETRY_AFTER
                        )
                    if message["type"] == "subscribe":
                        break
            except RedisError as exc:
                raise Unavailable(f"Redis: {exc}", retry_after=_RETRY_AFTER) from exc
            yield _PubSubEvents(pubsub)
        finally:
            with contextlib.suppress(RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    async def ping(self) -> None:
        """Return when Redis answers; raise `Unavailable` when it does not."""
        await self._call(self._redis.ping())

    async def aclose(self) -> None:
        """Close the client if this registry made it."""
        if self._owns_client:
            await self._redis.aclose()

    def _instance(self, stored: bytes, heartbeat_ms: int, now_ms: int) -> ServiceInstance:
        record = _DECODE_STORED(stored)
        return ServiceInstance(
            name=record.name,
            url=record.url,
            registered_at=record.registered_at,
            last_heartbeat=from_ms(heartbeat_ms),
            status=status_at(heartbeat_ms, now_ms, self._ttl_ms),
            ip=record.ip,
            port=record.port,
            weight=record.weight,
            metadata=record.metadata,
        )

    async def _eval(self, script: _Script, args: Sequence[Any]) -> Any:
        keys = self._keys
        try:
            try:
                return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await self._redis.eval(script.source, len(keys), *keys, *args)
        except RedisError as exc:
            raise Unavailable(f"Redis: {exc}", retry_after=_RETRY_AFTER) from exc

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise Unavailable(f"Redis: {exc}", retry_after=_RETRY_AFTER) from exc


class _PubSubEvents:
    """The events of one Redis watch, decoded from its pub/sub connection."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    def __aiter__(self) -> _PubSubEvents:
        return self

    async def __anext__(self) -> RegistryEvent:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except RedisError as exc:
                raise Unavailable(
                    f"Redis: {exc} (registry events may have been missed)", retry_after=_RETRY_AFTER
                ) from exc
            if message is None:
                continue
            if message["type"] == "message":
                return _DECODE_EVENT(message["data"])
            if message["type"] == "subscribe":
                # redis-py reconnected and subscribed again: whatever was published in between
                # is lost, so say so rather than carry on as if nothing had happened.
                raise Unavailable(
                    "the registry's event subscription was re-established; events may have been"
                    " missed: reload the instances and watch again",
                    retry_after=_RETRY_AFTER,
                )


def _now_ms(time_reply: tuple[int, int]) -> int:
    seconds, micros = time_reply
    return int(seconds) * 1000 + int(micros) // 1000


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)
