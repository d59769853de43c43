"""Service registries: the `ServiceRegistry` protocol, `InMemoryServiceRegistry`, and
`RedisServiceRegistry`, plus `check_registration`, the one check of what may register.

`RedisServiceRegistry` needs the `server` extra (redis-py); it is imported on first use, so the
SDK-only install can import this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aygolog.registry.base import (
    DEFAULT_PURGE_AFTER,
    DEFAULT_TTL,
    MAX_WEIGHT,
    NAME_PATTERN,
    ServiceRegistry,
    check_registration,
)
from aygolog.registry.memory import InMemoryServiceRegistry

if TYPE_CHECKING:
    from aygolog.registry.redis import RedisServiceRegistry

__all__ = [
    "DEFAULT_PURGE_AFTER",
    "DEFAULT_TTL",
    "MAX_WEIGHT",
    "NAME_PATTERN",
    "InMemoryServiceRegistry",
    "RedisServiceRegistry",
    "ServiceRegistry",
    "check_registration",
]


def __getattr__(name: str) -> Any:
    if name == "RedisServiceRegistry":
        from aygolog.registry.redis import RedisServiceRegistry

        return RedisServiceRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
