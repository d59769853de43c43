"""Redis errors in words a user understands.

An answer never carries Redis's own text (it names internal script hashes and line numbers and
says nothing of what to do): `unavailable()` turns a `RedisError` into an `Unavailable` saying
what happened to the log store and what to do about it, and logs Redis's text on the server
(at most once per kind of failure every `LOG_EVERY` seconds, with a count of the ones not
logged, so a full store under load does not flood the log).

| Redis says | the answer says | retry after |
|---|---|---|
| OOM (used memory > maxmemory) | the log store is full: raise maxmemory or keep less | 5 s |
| LOADING | the log store is loading its data | 1 s |
| READONLY | the log store is a read-only replica | 5 s |
| NOPERM, NOAUTH, WRONGPASS | the log store refused this instance's user or password | 5 s |
| BUSY | the log store is busy running a script | 1 s |
| timeout | the log store did not answer in time | 1 s |
| all pooled connections busy (pool timeout) | too many requests are waiting for the store | 1 s |
| connection errors | the log store cannot be reached | 1 s |
| anything else | the log store failed; the server log has the details | 1 s |
"""

from __future__ import annotations

import logging
import time
from typing import Final

from redis import exceptions as rex

from aygolog.errors import Unavailable

__all__ = ["LOG_EVERY", "POOL_BUSY", "STORE_FULL", "unavailable"]

log = logging.getLogger("aygolog.store")

LOG_EVERY: Final = 10.0
"""Seconds between two server-log lines about the same kind of Redis failure."""

STORE_FULL: Final = (
    "the log store is full: Redis reached its memory limit (maxmemory), so nothing new can be "
    "stored. Raise Redis's maxmemory, or keep fewer logs (AYGOLOG_RETENTION_MAX_ENTRIES, "
    "AYGOLOG_RETENTION_MAX_AGE)"
)

POOL_BUSY: Final = (
    "too many requests are waiting for the log store (Redis): every connection of this "
    "instance was busy (AYGOLOG_REDIS_MAX_CONNECTIONS, AYGOLOG_REDIS_POOL_TIMEOUT)"
)
_POOL_EXHAUSTED: Final = "No connection available"
"""What redis-py's asyncio BlockingConnectionPool raises (as a ConnectionError) on its timeout."""

_last_logged: dict[str, float] = {}
_not_logged: dict[str, int] = {}


def _describe(exc: rex.RedisError) -> tuple[str, str, float]:
    """(kind, what the user is told, seconds to retry after)."""
    text = str(exc)
    if isinstance(exc, rex.OutOfMemoryError) or text.startswith("OOM"):
        return "oom", STORE_FULL, 5.0
    if isinstance(exc, rex.BusyLoadingError) or text.startswith("LOADING"):
        return "loading", "the log store (Redis) is loading its data after a restart", 1.0
    if isinstance(exc, rex.ReadOnlyError) or text.startswith("READONLY"):
        return (
            "readonly",
            "the log store (Redis) is a read-only replica: point AYGOLOG_REDIS_URL at the primary",
            5.0,
        )
    if isinstance(
        exc, (rex.NoPermissionError, rex.AuthenticationError, rex.AuthorizationError)
    ) or text.startswith(("NOPERM", "NOAUTH", "WRONGPASS", "ACL failure")):
        return (
            "auth",
            "the log store (Redis) refused this instance's user or password, or a command "
            "(ACL): check the user and password in AYGOLOG_REDIS_URL",
            5.0,
        )
    if isinstance(exc, rex.MaxConnectionsError):
        return "pool", POOL_BUSY, 1.0
    if isinstance(exc, rex.TimeoutError):
        return "timeout", "the log store (Redis) did not answer in time", 1.0
    if isinstance(exc, rex.ConnectionError) and text.startswith(_POOL_EXHAUSTED):
        # redis-py's BlockingConnectionPool after its timeout: Redis is up, this instance's
        # connections (AYGOLOG_REDIS_MAX_CONNECTIONS) were all busy for AYGOLOG_REDIS_POOL_TIMEOUT
        return "pool", POOL_BUSY, 1.0
    if isinstance(exc, rex.ConnectionError):
        return "connection", "the log store (Redis) cannot be reached", 1.0
    if text.startswith("BUSY"):
        return "busy", "the log store (Redis) is busy running a script", 1.0
    return "other", "the log store (Redis) failed this request; the server log has the details", 1.0


def unavailable(exc: rex.RedisError, op: str) -> Unavailable:
    """The `Unavailable` to raise (`from exc`) for a Redis failure during `op`.

    Args:
        exc: what redis-py raised.
        op: what the store was doing, for the server log (e.g. "append", "query").
    """
    kind, message, retry_after = _describe(exc)
    now = time.monotonic()
    last = _last_logged.get(kind)
    if last is None or now - last >= LOG_EVERY:
        skipped = _not_logged.pop(kind, 0)
        more = f" ({skipped} more like it not logged)" if skipped else ""
        log.warning("Redis %s failed (%s): %s%s", op, type(exc).__name__, exc, more)
        _last_logged[kind] = now
    else:
        _not_logged[kind] = _not_logged.get(kind, 0) + 1
    return Unavailable(message, retry_after=retry_after)
