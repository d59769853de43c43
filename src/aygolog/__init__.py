"""aygolog: distributed log management for Python.

The public names are re-exported here. Everything that needs the `server` extra (redis-py,
Litestar) stays in its own module, so `import aygolog` works with the SDK-only install:

- `aygolog.store.RedisStreamLogStore`, `aygolog.registry.RedisServiceRegistry`
- `aygolog.redis` (connection factory), `aygolog.server` (Log API), `aygolog.lb` (load balancer)
"""

from aygolog.balancing import (
    BalancerStrategy,
    LeastOutstanding,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    WeightedRoundRobin,
    make_strategy,
)
from aygolog.client import AsyncLogClient, AygologHandler, LogClient
from aygolog.embedded import EmbeddedRedis
from aygolog.errors import (
    AuthError,
    AygologError,
    Conflict,
    MalformedInput,
    NoHealthyInstance,
    NotFound,
    RateLimited,
    Unavailable,
    ValidationError,
)
from aygolog.models import (
    BatchResult,
    CountResult,
    CountSeries,
    Direction,
    ErrorBody,
    EventKind,
    FieldError,
    InstanceStatus,
    InstanceView,
    Limits,
    LogEntry,
    LogLevel,
    LogPage,
    LogQuery,
    LogStats,
    NewLog,
    Registration,
    RegistryEvent,
    SeedLog,
    ServiceInstance,
)
from aygolog.query import QuerySyntaxError
from aygolog.registry import InMemoryServiceRegistry, ServiceRegistry, check_registration
from aygolog.settings import (
    LoadBalancerSettings,
    LogApiSettings,
    RedisSettings,
    ServiceRegistrationSettings,
    UISettings,
)
from aygolog.store import InMemoryLogStore, LogStore, Retention, StoreOptions

__all__ = [
    "AsyncLogClient",
    "AuthError",
    "AygologError",
    "AygologHandler",
    "BalancerStrategy",
    "BatchResult",
    "Conflict",
    "CountResult",
    "CountSeries",
    "Direction",
    "EmbeddedRedis",
    "ErrorBody",
    "EventKind",
    "FieldError",
    "InMemoryLogStore",
    "InMemoryServiceRegistry",
    "InstanceStatus",
    "InstanceView",
    "LeastOutstanding",
    "Limits",
    "LoadBalancerSettings",
    "LogApiSettings",
    "LogClient",
    "LogEntry",
    "LogLevel",
    "LogPage",
    "LogQuery",
    "LogStats",
    "LogStore",
    "MalformedInput",
    "NewLog",
    "NoHealthyInstance",
    "NotFound",
    "PowerOfTwoChoices",
    "QuerySyntaxError",
    "Random",
    "RateLimited",
    "RedisSettings",
    "Registration",
    "RegistryEvent",
    "Retention",
    "RoundRobin",
    "SeedLog",
    "ServiceInstance",
    "ServiceRegistrationSettings",
    "ServiceRegistry",
    "StoreOptions",
    "UISettings",
    "Unavailable",
    "ValidationError",
    "WeightedRoundRobin",
    "__version__",
    "check_registration",
    "make_strategy",
]

__version__ = "0.1.0"
