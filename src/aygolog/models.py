"""Wire and domain models: one definition of each, shared by the store, the registry, the Log API,
the load balancer, the SDK and the web page.

Field names are snake_case everywhere on the wire. Times are RFC 3339 strings in UTC.
Parsing and checking untrusted input lives in `aygolog.validation`; these classes are the
shapes that pass those checks.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

__all__ = [
    "AttributeValue",
    "BatchResult",
    "CountResult",
    "CountSeries",
    "Direction",
    "ErrorBody",
    "EventKind",
    "FieldError",
    "InstanceStatus",
    "InstanceView",
    "Limits",
    "LogEntry",
    "LogLevel",
    "LogPage",
    "LogQuery",
    "LogStats",
    "NewLog",
    "Registration",
    "RegistryEvent",
    "SeedLog",
    "ServiceInstance",
]

AttributeValue = str | int | float | bool
"""What an attribute value may be: a flat scalar."""


class LogLevel(enum.StrEnum):
    """Severity of a log entry, lowest first. `LogLevel.parse` also takes common aliases."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def severity(self) -> int:
        """0 for trace up to 5 for critical; compare levels with this."""
        return _SEVERITY[self]

    @classmethod
    def from_severity(cls, severity: int) -> LogLevel:
        """The level with that severity number (0-5)."""
        return _BY_SEVERITY[severity]

    @classmethod
    def parse(cls, value: str | int) -> LogLevel:
        """A level from its name or an alias (case-insensitive), or a Python `logging` number.

        Raises:
            ValueError: the value names no level.
        """
        if isinstance(value, bool):
            raise ValueError(f"unknown level {value!r}")
        if isinstance(value, int):
            return _from_logging_number(value)
        found = _ALIASES.get(value.strip().lower())
        if found is None:
            raise ValueError(f"unknown level {value!r}; expected one of {', '.join(LogLevel)}")
        return found


_SEVERITY: Final = {level: i for i, level in enumerate(LogLevel)}
_BY_SEVERITY: Final = dict(enumerate(LogLevel))
_ALIASES: Final[dict[str, LogLevel]] = {
    **{level.value: level for level in LogLevel},
    "verbose": LogLevel.TRACE,
    "trc": LogLevel.TRACE,
    "dbg": LogLevel.DEBUG,
    "information": LogLevel.INFO,
    "informational": LogLevel.INFO,
    "inf": LogLevel.INFO,
    "notice": LogLevel.INFO,
    "warn": LogLevel.WARNING,
    "wrn": LogLevel.WARNING,
    "err": LogLevel.ERROR,
    "eror": LogLevel.ERROR,
    "crit": LogLevel.CRITICAL,
    "fatal": LogLevel.CRITICAL,
    "ftl": LogLevel.CRITICAL,
    "alert": LogLevel.CRITICAL,
    "emerg": LogLevel.CRITICAL,
    "emergency": LogLevel.CRITICAL,
}


def _from_logging_number(number: int) -> LogLevel:
    # Python's logging: DEBUG=10, INFO=20, WARNING=30, ERROR=40, CRITICAL=50; below 10 is trace.
    if number < 0:
        raise ValueError(f"unknown level {number}; logging numbers are 0 or more")
    if number < 10:
        return LogLevel.TRACE
    return LogLevel.from_severity(min(number // 10, 5))


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What one log entry may hold. Every limit is configurable; the defaults suit most apps."""

    max_message_bytes: int = 64 * 1024
    max_attributes: int = 64
    max_attribute_key_chars: int = 128
    max_attribute_value_bytes: int = 4 * 1024
    max_service_chars: int = 128
    max_trace_id_chars: int = 128
    max_future_skew: timedelta = timedelta(minutes=10)


class FieldError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One reason an input was refused: which field (and batch item) and why."""

    field: str
    reason: str
    index: int | None = None

    def describe(self) -> str:
        """A one-line human description, e.g. `item 3: level: unknown level 'x'`."""
        where = f"item {self.index}: " if self.index is not None else ""
        return f"{where}{self.field}: {self.reason}"


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The JSON body of every 4xx/5xx answer: what went wrong, and the fields at fault."""

    error: str
    detail: list[FieldError] = []
    retry_after: float | None = None


class NewLog(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A log entry as a client sends it (already checked: see `aygolog.validation`)."""

    message: str
    level: LogLevel = LogLevel.INFO
    service: str | None = None
    timestamp: datetime | None = None
    """When the event happened (UTC); None means "when the server received it"."""
    attributes: dict[str, AttributeValue] = {}
    trace_id: str | None = None


class LogEntry(msgspec.Struct, kw_only=True):
    """A stored log entry. `id` is the Redis stream id: receive time in ms, then a sequence."""

    id: str
    message: str
    level: LogLevel
    timestamp: datetime
    received_at: datetime
    instance: str
    service: str | None = None
    attributes: dict[str, AttributeValue] = {}
    trace_id: str | None = None


class SeedLog(LogEntry, kw_only=True):
    """A `LogEntry` with the seed model's fields, for `GET /api/log`: `name` (= message) and
    `sourceInstance` (= instance, the seed's only camelCase name on the wire)."""

    name: str
    source_instance: str | None = msgspec.field(default=None, name="sourceInstance")

    @classmethod
    def from_entry(cls, entry: LogEntry) -> SeedLog:
        """The entry with `name` and `sourceInstance` filled in."""
        return cls(
            name=entry.message, source_instance=entry.instance, **msgspec.structs.asdict(entry)
        )


class BatchResult(msgspec.Struct, kw_only=True):
    """What `append_many` stored: the ids in input order, and which instance stored them."""

    ids: list[str]
    instance: str
    replayed: bool = False
    """True when an idempotency key matched an earlier batch and nothing new was stored."""

    @property
    def count(self) -> int:
        """How many entries the batch held."""
        return len(self.ids)


class Direction(enum.StrEnum):
    """Which way a query pages: newest first (backward) or oldest first (forward)."""

    BACKWARD = "backward"
    FORWARD = "forward"


class LogQuery(msgspec.Struct, kw_only=True):
    """A search of stored entries. Every filter given must match (AND).

    The time range is on the receive time (the stream id), so it maps to an id range.
    """

    levels: frozenset[LogLevel] | None = None
    min_level: LogLevel | None = None
    services: frozenset[str] | None = None
    text: str | None = None
    """Case-insensitive (ASCII) substring of the message."""
    since: datetime | None = None
    until: datetime | None = None
    attributes: dict[str, str] = {}
    """Attribute equality; numbers compare by value ("5" matches 5 and 5.0), booleans as
    "true"/"false", strings exactly."""
    limit: int = 100
    cursor: str | None = None
    """The `next_cursor` of the previous page; the page starts after that entry."""
    direction: Direction = Direction.BACKWARD
    query: str | None = None
    """A query in the query language (docs/query.md), ANDed with the filters above."""

    def level_severities(self) -> frozenset[int] | None:
        """The severities a matching entry may have, or None when any level matches."""
        allowed: set[int] | None = None
        if self.levels is not None:
            allowed = {level.severity for level in self.levels}
        if self.min_level is not None:
            floor = self.min_level.severity
            at_least = set(range(floor, len(LogLevel)))
            allowed = at_least if allowed is None else allowed & at_least
        return None if allowed is None else frozenset(allowed)


class LogPage(msgspec.Struct, kw_only=True):
    """One page of query results; `next_cursor` is None when nothing more matches."""

    items: list[LogEntry]
    next_cursor: str | None = None


class CountSeries(msgspec.Struct, kw_only=True):
    """One group of a count: its labels (e.g. {"level": "error"}; {} without `by`) and one
    count per bucket of the `CountResult`."""

    labels: dict[str, str]
    counts: list[int]


class CountResult(msgspec.Struct, kw_only=True):
    """The answer to `| count() by (...) step ...`: bucket start times (one bucket for the
    whole range without `step`) and a series per group, newest group order unspecified."""

    buckets: list[datetime]
    step_seconds: float | None = None
    series: list[CountSeries]
    complete: bool = True
    """False when a scan limit stopped the count early (the counts are then lower bounds)."""


class LogStats(msgspec.Struct, kw_only=True):
    """Counts of entries ingested since the store began (not reduced by retention),
    and how many are retained now."""

    total: int
    retained: int
    by_level: dict[str, int]
    by_service: dict[str, int]
    by_instance: dict[str, int]
    ingest_rate: float = 0.0
    """Entries per second over about the last minute, across all instances."""


class InstanceStatus(enum.StrEnum):
    """Where an instance stands. The registry knows healthy/expired; the LB adds the others."""

    HEALTHY = "healthy"
    EXPIRED = "expired"
    EJECTED = "ejected"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"
    """Failing the load balancer's active health checks (its `/health` probe)."""


class InstanceView(msgspec.Struct, kw_only=True):
    """One instance as the load balancer reports it (`GET /api/registration/services`).

    `status` is an `InstanceStatus` value: `healthy`, `ejected` (until `ejected_until`),
    `unhealthy` (failing active health checks), `expired` (heartbeats stopped) or `draining`
    (deregistered or weight 0: no new requests, in-flight ones complete). It is kept a plain
    string, and only `name` and `url` are required, so that a client reads the list of a newer
    load balancer too; unknown fields are ignored.
    """

    name: str
    url: str
    status: str = InstanceStatus.HEALTHY.value
    weight: int = 1
    heartbeat_age: float | None = None
    """Seconds since the last heartbeat the load balancer has seen."""
    last_heartbeat: datetime | None = None
    registered_at: datetime | None = None
    in_flight: int | None = None
    served: int | None = None
    """Requests sent to it by this load balancer since it (re)appeared."""
    recent_failures: int | None = None
    """Failed requests (5xx or upstream error) in the load balancer's failure window."""
    ejections: int | None = None
    """How many times this load balancer has ejected it."""
    health_check: str | None = None
    """`passing` or `failing` (the active probe of its `/health`)."""
    ejected_until: datetime | None = None
    ip: str | None = None
    port: int | None = None
    metadata: dict[str, str] = {}


class Registration(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a Log API instance sends to register (the seed's ServiceRegistration)."""

    name: str
    url: str
    ip: str | None = None
    port: int | None = None
    weight: int = 1
    metadata: dict[str, str] = {}


class ServiceInstance(msgspec.Struct, kw_only=True):
    """A registered instance, with the status computed from its last heartbeat."""

    name: str
    url: str
    registered_at: datetime
    last_heartbeat: datetime
    status: InstanceStatus = InstanceStatus.HEALTHY
    ip: str | None = None
    port: int | None = None
    weight: int = 1
    metadata: dict[str, str] = {}

    def heartbeat_age(self, now: datetime | None = None) -> float:
        """Seconds since the last heartbeat."""
        return ((now or datetime.now(UTC)) - self.last_heartbeat).total_seconds()


class EventKind(enum.StrEnum):
    """What happened to a registered instance."""

    REGISTERED = "registered"
    UPDATED = "updated"
    DEREGISTERED = "deregistered"
    EXPIRED = "expired"


class RegistryEvent(msgspec.Struct, kw_only=True):
    """A change in the registry, as delivered by `ServiceRegistry.watch()`."""

    kind: EventKind
    name: str
    at: datetime
    instance: ServiceInstance | None = None
