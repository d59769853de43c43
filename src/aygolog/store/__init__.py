"""Log stores: the `LogStore` protocol, `InMemoryLogStore`, and `RedisStreamLogStore`.

- `base.py`: the protocol, its options, stream ids and the paging rules;
- `counting.py`: the buckets and groups of `LogStore.count`;
- `memory.py`, `redis.py` (+ `lua/`): the two stores.

`RedisStreamLogStore` needs the `server` extra (redis-py); it is imported on first use, so the
SDK-only install can import this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aygolog.store.base import LogStore, Retention, StoreOptions
from aygolog.store.memory import InMemoryLogStore

if TYPE_CHECKING:
    from aygolog.store.redis import RedisStreamLogStore

__all__ = [
    "InMemoryLogStore",
    "LogStore",
    "RedisStreamLogStore",
    "Retention",
    "StoreOptions",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStreamLogStore":
        from aygolog.store.redis import RedisStreamLogStore

        return RedisStreamLogStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
