"""One way to connect to Redis, and one way to name keys.

`create_redis(url)` makes an async client from any address `parse_redis_url` accepts: the seed's
`host:port`, `redis://`, `rediss://` (TLS), `unix://`, `redis+sentinel://` and .NET
StackExchange.Redis strings; `cluster=True` makes a Redis Cluster client. `create_sync_redis` is
its blocking twin. hiredis parses replies when it is installed (the `server` extra installs it).

Defaults, chosen so that "Redis is down" shows up fast instead of as a hang:

- connect timeout 2 s; reply timeout 5 s (blocking reads such as XREAD BLOCK must block less);
- a connection error is retried once after a short back-off (a pooled connection that went stale
  when Redis restarted), a timeout is not retried (the command may have run: an XADD would be
  written twice);
- idle connections are checked with a PING after 30 s;
- the services' pool (`redis_from_settings`) is bounded and waits: a request that finds every
  connection busy waits up to `AYGOLOG_REDIS_POOL_TIMEOUT` for one, instead of failing at once.

`KeySpace` names every key of a deployment: `KeySpace("aygolog").key("logs")` is
`"{aygolog}:logs"`. The braces are a Redis Cluster hash tag: all the keys of a deployment hash to
one slot, so a Lua script or MULTI may use several of them on a cluster too.

This module imports redis-py; `aygolog.settings` does not, so the SDK can be installed without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel

# The parsing lives in `aygolog.settings` so that settings validate addresses without redis-py.
from aygolog.settings import RedisSettings, RedisTarget, _check_key_prefix, parse_redis_url

__all__ = [
    "KeySpace",
    "RedisTarget",
    "create_redis",
    "create_single_redis",
    "create_sync_redis",
    "parse_redis_url",
    "redis_from_settings",
]

_CONNECT_TIMEOUT: Final = 2.0
_SOCKET_TIMEOUT: Final = 5.0
_HEALTH_CHECK_INTERVAL: Final = 30
_RETRIES: Final = 1
_BACKOFF_BASE: Final = 0.05
_BACKOFF_CAP: Final = 0.5


@dataclass(frozen=True, slots=True)
class KeySpace:
    """The Redis key names of one deployment: `{prefix}:name`, all in one cluster hash slot.

    Args:
        prefix: 1-100 letters, digits or `. _ : / @ -` (no braces, spaces or glob characters).
    """

    prefix: str = "aygolog"

    def __post_init__(self) -> None:
        _check_key_prefix(self.prefix)

    @property
    def tag(self) -> str:
        """The hash tag every key starts with: `{prefix}`."""
        return f"{{{self.prefix}}}"

    def key(self, name: str, *more: str) -> str:
        """The key `{prefix}:name[:more...]`, e.g. `key("idem", k)` -> `{aygolog}:idem:<k>`."""
        if not name:
            raise ValueError("a key name must not be empty")
        return ":".join((self.tag, name, *more))


def create_redis(
    url: str | RedisTarget,
    *,
    cluster: bool = False,
    decode_responses: bool = False,
    socket_connect_timeout: float = _CONNECT_TIMEOUT,
    socket_timeout: float | None = _SOCKET_TIMEOUT,
    health_check_interval: int = _HEALTH_CHECK_INTERVAL,
    pool_timeout: float | None = None,
    **kwargs: Any,
) -> aioredis.Redis | aioredis.RedisCluster:
    """An async client for `url`; nothing connects until the first command.

    Args:
        url: any address `parse_redis_url` accepts, or its result. Options in a URL's query
            (`?socket_timeout=10`) win over the arguments.
        cluster: make a `RedisCluster` client (redis:// or rediss://, database 0); one node's
            address is enough, the client finds the others.
        decode_responses: return `str` instead of `bytes`.
        socket_connect_timeout: seconds to wait for a connection.
        socket_timeout: seconds to wait for a reply.
        health_check_interval: PING a connection idle for this many seconds before using it.
        pool_timeout: when set, a command that finds all `max_connections` connections busy
            waits this many seconds for one (a `BlockingConnectionPool`) instead of failing at
            once; for one server only (redis://, rediss://, unix://), else ignored.
        **kwargs: passed to redis-py (e.g. `max_connections`, `retry`, `client_name`); for
            Sentinel, `sentinel_kwargs` configures the connections to the sentinels.

    Raises:
        ValueError: the address is invalid, or cannot be used as asked (a unix socket as a cluster).
    """
    options = {
        "decode_responses": decode_responses,
        "socket_connect_timeout": socket_connect_timeout,
        "socket_timeout": socket_timeout,
        "health_check_interval": health_check_interval,
        **kwargs,
    }
    if pool_timeout is not None:
        options["_pool_timeout"] = pool_timeout
    client: aioredis.Redis | aioredis.RedisCluster = _build(url, cluster, options, _ASYNC)
    return client


def create_sync_redis(
    url: str | RedisTarget,
    *,
    cluster: bool = False,
    decode_responses: bool = False,
    socket_connect_timeout: float = _CONNECT_TIMEOUT,
    socket_timeout: float | None = _SOCKET_TIMEOUT,
    health_check_interval: int = _HEALTH_CHECK_INTERVAL,
    **kwargs: Any,
) -> redis.Redis | redis.RedisCluster:
    """A blocking client for `url`: `create_redis` for scripts, the CLI and tests."""
    options = {
        "decode_responses": decode_responses,
        "socket_connect_timeout": socket_connect_timeout,
        "socket_timeout": socket_timeout,
        "health_check_interval": health_check_interval,
        **kwargs,
    }
    client: redis.Redis | redis.RedisCluster = _build(url, cluster, options, _SYNC)
    return client


def create_single_redis(url: str) -> aioredis.Redis:
    """An async client for one Redis server (or a sentinel-managed primary), not a cluster.

    Raises:
        TypeError: the address describes a cluster.
    """
    client = create_redis(url)
    if not isinstance(client, aioredis.Redis):
        raise TypeError("this needs a single-node client; pass a cluster client explicitly")
    return client


DEFAULT_URL: Final = "redis://127.0.0.1:6379/0"
"""Where a service looks for Redis when neither AYGOLOG_REDIS_URL nor ConnectionStrings__Redis
is set."""


def redis_from_settings(settings: RedisSettings) -> aioredis.Redis:
    """The single-node (or sentinel) async client a service's `RedisSettings` describe.

    Its pool holds at most `settings.max_connections` connections; a command that finds them
    all busy waits up to `settings.pool_timeout` seconds for one (redis-py's default pool fails
    at once with "Too many connections"), then fails with a `ConnectionError`: a 503.

    Raises:
        TypeError: the settings describe a cluster (the services need one primary).
    """
    client = create_redis(
        settings.url or DEFAULT_URL,
        cluster=settings.cluster,
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=settings.socket_timeout,
        max_connections=settings.max_connections,
        pool_timeout=settings.pool_timeout,
    )
    if not isinstance(client, aioredis.Redis):
        raise TypeError("aygolog's services need a single-node or sentinel Redis client")
    return client


@dataclass(frozen=True)
class _Flavour:
    """The redis-py classes of one flavour, blocking or async."""

    redis: Any
    cluster: Any
    retry: Any
    sentinel: Any


_ASYNC: Final = _Flavour(aioredis.Redis, aioredis.RedisCluster, AsyncRetry, AsyncSentinel)
_SYNC: Final = _Flavour(redis.Redis, redis.RedisCluster, SyncRetry, SyncSentinel)


def _build(
    url: str | RedisTarget, cluster: bool, options: dict[str, Any], flavour: _Flavour
) -> Any:
    target = url if isinstance(url, RedisTarget) else parse_redis_url(url)
    pool_timeout = options.pop("_pool_timeout", None)
    if cluster:
        _check_cluster(target)
        return flavour.cluster.from_url(target.url, **options)
    options.setdefault(
        "retry", flavour.retry(_backoff(), _RETRIES, supported_errors=(RedisConnectionError,))
    )
    if target.scheme == "redis+sentinel":
        sentinel = flavour.sentinel(
            list(target.hosts),
            sentinel_kwargs=_sentinel_kwargs(options),
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
        )
        return sentinel.master_for(target.service_name or "", redis_class=flavour.redis)
    if pool_timeout is not None and flavour is _ASYNC:
        pool = aioredis.BlockingConnectionPool.from_url(target.url, timeout=pool_timeout, **options)
        return aioredis.Redis.from_pool(pool)  # the client closes the pool with itself
    return flavour.redis.from_url(target.url, **options)


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=_BACKOFF_BASE, cap=_BACKOFF_CAP)


def _check_cluster(target: RedisTarget) -> None:
    if target.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"a Redis Cluster needs a redis:// or rediss:// address, not {target.redacted_url!r}"
        )
    if target.db != 0:
        raise ValueError(f"a Redis Cluster has only database 0, not {target.db}")


def _sentinel_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The sentinels' own connection options: given, else the master's timeouts and retry policy
    (without its credentials: sentinels usually have none; pass `sentinel_kwargs` if they do)."""
    given: dict[str, Any] | None = options.pop("sentinel_kwargs", None)
    if given is not None:
        return given
    keep = ("socket_connect_timeout", "socket_timeout", "retry")
    return {name: options[name] for name in keep}
