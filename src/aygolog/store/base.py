"""The `LogStore` protocol, its configuration, and the paging rules every store shares.

What a `LogQuery` selects is defined once, by its plan (`aygolog.query.plan_for`): every store
runs `Plan.matches` (or an index that finds the same entries), and the contract tests hold the
stores to the same answers. Counts (`LogStore.count`) follow `aygolog.store.counting`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol, runtime_checkable

import msgspec

from aygolog.errors import ValidationError
from aygolog.models import (
    AttributeValue,
    BatchResult,
    CountResult,
    Direction,
    FieldError,
    LogEntry,
    LogPage,
    LogQuery,
    LogStats,
    NewLog,
)
from aygolog.query import Plan, plan_for

__all__ = [
    "MAX_ID_PART",
    "MAX_QUERY_LIMIT",
    "LogStore",
    "Retention",
    "StoreOptions",
    "attribute_matches",
    "check_idempotency_key",
    "check_query",
    "format_stream_id",
    "id_bounds",
    "id_ms",
    "matches",
    "page_limit",
    "parse_stream_id",
    "received_at",
    "search_plan",
    "stored_entry",
    "time_bounds",
]

MAX_QUERY_LIMIT: Final = 1000
MAX_ID_PART: Final = 2**64 - 1
"""The largest millisecond or sequence part of a Redis stream id (each is an unsigned 64-bit)."""
# ASCII digits only: `\d` would take other scripts' digits, which int() reads and Redis refuses.
_STREAM_ID: Final = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
StreamKey = tuple[int, int]
"""A stream id as numbers: (milliseconds, sequence)."""
_IDEMPOTENCY_KEY: Final = re.compile(r"[\x21-\x7e]{1,255}")


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """How much a store keeps: by count (approximate, `MAXLEN ~`) and by age (`MINID`).

    None switches a bound off.
    """

    max_entries: int | None = 1_000_000
    max_age: timedelta | None = None


class StoreOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Tuning of a log store; the defaults suit most deployments."""

    retention: Retention = Retention()
    idempotency_ttl: timedelta = timedelta(hours=24)
    scan_chunk: int = 1000
    """At most this many entries per XRANGE inside one scan call (fewer when entries are big:
    each XRANGE reads about 1 MiB; and, unfiltered, no more than the page still needs)."""
    scan_budget: int = 20_000
    """At most this many entries are scanned by one server-side call, so Redis never stalls."""
    max_scan: int = 2_000_000
    """At most this many entries are scanned for one query; past it the page comes back short,
    with a cursor to continue from."""
    max_page_bytes: int = 4 * 1024 * 1024
    """A page ends early, with a cursor to continue from, once the entries it holds reach this
    many bytes (of stored JSON; at least one entry): `limit=1000` of 64 KiB messages would
    otherwise be ~60 MiB read out of Redis and sent in one answer."""


@runtime_checkable
class LogStore(Protocol):
    """Where logs are kept. Input is expected to be checked already (`aygolog.validation`)."""

    @property
    def instance(self) -> str:
        """The name of the Log API instance writing through this store."""
        ...

    async def append(self, log: NewLog, *, idempotency_key: str | None = None) -> LogEntry:
        """Store one entry and return it as stored.

        With an idempotency key, a repeat within the TTL stores nothing and returns the entry
        the first call stored (as `append_many` does for a batch of one).
        """
        ...

    async def append_many(
        self, logs: Sequence[NewLog], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """Store a batch, all or nothing, in one round trip.

        With an idempotency key, a repeat within the TTL stores nothing and returns the first
        call's result (`replayed=True`); the same key with a different batch raises `Conflict`.
        """
        ...

    async def query(self, query: LogQuery) -> LogPage:
        """Entries matching `query`, one page at a time (see `search_plan` and `page_limit`).

        Raises:
            ValidationError: a bad limit, cursor or time range; a query string that does not
                parse (`QuerySyntaxError`, field "query"), or one with a `| count()` pipe.
        """
        ...

    async def count(self, query: LogQuery) -> CountResult:
        """How many entries match `query`, grouped and bucketed by its `| count() by (...)
        step ...` pipe (without one: one total). See `aygolog.store.counting` for the rules.

        Raises:
            ValidationError: a query string that does not parse, or too many buckets ("step").
        """
        ...

    async def version(self) -> str:
        """A token that changes whenever an entry is added or removed (cheap: no entries read).

        A page read after this call is at least as new as the token, so a reader may keep the
        page with the token and serve it again while `version()` still returns the same token.
        """
        ...

    def tail(self, after_id: str = "$") -> AsyncIterator[LogEntry]:
        """New entries after `after_id` as they arrive ("$": from now; "0": from the start)."""
        ...

    async def stats(self) -> LogStats:
        """Counts of ingested entries per level, service and instance."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise `Unavailable` when it does not."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def parse_stream_id(value: str, field: str = "cursor") -> StreamKey:
    """("ms-seq" or "ms") -> (ms, seq), each part checked to fit Redis's unsigned 64 bits.

    The one parser of stream ids from outside (cursors, `Last-Event-ID`, tail positions): what
    it accepts, Redis accepts.

    Raises:
        ValidationError: not a stream id, or a part out of range; names `field`.
    """
    match = _STREAM_ID.fullmatch(value) if len(value) <= 41 else None
    if match is None:
        reason = f"not a stream id (ms-seq, e.g. 1700000000000-0): {value[:40]!r}"
    else:
        ms, seq = int(match.group(1)), int(match.group(2) or 0)
        if ms <= MAX_ID_PART and seq <= MAX_ID_PART:
            return ms, seq
        reason = f"stream id out of range (each part at most {MAX_ID_PART}): {value[:41]!r}"
    raise ValidationError([FieldError(field=field, reason=reason)])


def format_stream_id(key: StreamKey) -> str:
    """(ms, seq) -> "ms-seq"."""
    return f"{key[0]}-{key[1]}"


def _after(key: StreamKey) -> StreamKey | None:
    ms, seq = key
    if seq < MAX_ID_PART:
        return ms, seq + 1
    return (ms + 1, 0) if ms < MAX_ID_PART else None


def _before(key: StreamKey) -> StreamKey | None:
    ms, seq = key
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, MAX_ID_PART) if ms > 0 else None


def id_bounds(query: LogQuery, plan: Plan | None = None) -> tuple[StreamKey, StreamKey] | None:
    """The inclusive range of stream ids `query` may return, or None when it is empty.

    From the time range (receive times; before 1970 means from the start): `plan.since` and
    `plan.until` when a plan is given (the parameters intersected with the query string's
    `_time`), else the query's own `since`/`until`; and from the cursor (the page starts after
    it, in the query's direction). Every store pages by this, so a cursor at either end of the
    id space is an empty page, never an invalid Redis range.
    """
    since, until = (query.since, query.until) if plan is None else (plan.since, plan.until)
    bounds = time_bounds(since, until)
    if bounds is None:
        return None
    low, high = bounds
    if query.cursor is not None:
        cursor = parse_stream_id(query.cursor)
        if query.direction is Direction.BACKWARD:
            before = _before(cursor)
            if before is None:
                return None
            high = min(high, before)
        else:
            after = _after(cursor)
            if after is None:
                return None
            low = max(low, after)
    return (low, high) if low <= high else None


def time_bounds(
    since: datetime | None, until: datetime | None
) -> tuple[StreamKey, StreamKey] | None:
    """The inclusive range of stream ids received from `since` to `until` (None: open), or
    None when no id can be in it."""
    low: StreamKey = (0, 0)
    high: StreamKey = (MAX_ID_PART, MAX_ID_PART)
    if since is not None:
        low = (min(max(0, _ms(since)), MAX_ID_PART), 0)
    if until is not None:
        until_ms = _ms(until)
        if until_ms < 0:
            return None
        high = (min(until_ms, MAX_ID_PART), MAX_ID_PART)
    return (low, high) if low <= high else None


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def search_plan(query: LogQuery) -> Plan:
    """The plan of a search (`LogStore.query`): `plan_for(query)`, refusing a count.

    Raises:
        ValidationError: the query string does not parse (`QuerySyntaxError`), or it ends in
            `| count()` (a count is asked with `LogStore.count`, `GET /api/logs/count`).
    """
    plan = plan_for(query)
    if plan.count is not None:
        raise ValidationError(
            [
                FieldError(
                    field="query",
                    reason="a `| count()` query is a count, not a search: ask it with count() "
                    "(GET /api/logs/count)",
                )
            ]
        )
    return plan


def page_limit(query: LogQuery, plan: Plan) -> tuple[int, bool]:
    """How many entries this page may hold, and whether a full page gets a `next_cursor`.

    `| limit N` asks for N entries in all, so it caps the page (the smaller of N and `limit`
    applies) and the page is the last one: no cursor, as `head -n N`. Without the pipe, pages
    of `limit` follow one another by cursor. (A page cut early by `max_page_bytes` still gets
    a cursor: what it could not hold is not dropped.)
    """
    if plan.limit is None:
        return query.limit, True
    return min(query.limit, plan.limit), False


def id_ms(stream_id: str) -> int:
    """The millisecond part of a stream id."""
    return int(stream_id.partition("-")[0])


def received_at(stream_id: str) -> datetime:
    """When the entry with that id was received (the id's millisecond part)."""
    return datetime.fromtimestamp(id_ms(stream_id) / 1000, UTC)


def stored_entry(log: NewLog, entry_id: str, instance: str) -> LogEntry:
    """`log` as stored under `entry_id` by `instance` (the receive time is the id's)."""
    at = received_at(entry_id)
    return LogEntry(
        id=entry_id,
        message=log.message,
        level=log.level,
        timestamp=log.timestamp or at,
        received_at=at,
        instance=instance,
        service=log.service,
        attributes=log.attributes,
        trace_id=log.trace_id,
    )


def check_query(query: LogQuery) -> None:
    """Refuse a query whose limit, cursor or time range make no sense.

    Raises:
        ValidationError: naming the field.
    """
    errors: list[FieldError] = []
    if not 1 <= query.limit <= MAX_QUERY_LIMIT:
        errors.append(FieldError(field="limit", reason=f"must be 1-{MAX_QUERY_LIMIT}"))
    if query.cursor is not None:
        try:
            parse_stream_id(query.cursor)
        except ValidationError as exc:
            errors.extend(exc.errors)
    if query.since and query.until and query.since > query.until:
        errors.append(FieldError(field="since", reason="must not be after until"))
    if errors:
        raise ValidationError(errors)


def check_idempotency_key(key: str) -> None:
    """Refuse an idempotency key that is empty, too long or not printable ASCII."""
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationError(
            [FieldError(field="idempotency_key", reason="must be 1-255 printable ASCII characters")]
        )


def attribute_matches(value: AttributeValue | None, wanted: str) -> bool:
    """Whether an attribute equals a filter value: numbers by value, booleans as true/false."""
    if value is None:
        return False
    if isinstance(value, bool):
        return wanted == ("true" if value else "false")
    if isinstance(value, str):
        return value == wanted
    try:
        return float(wanted) == value
    except ValueError:
        return False


def matches(entry: LogEntry, query: LogQuery, severities: frozenset[int] | None = None) -> bool:
    """Whether `entry` passes the old parameters of `query` (not its query string).

    No store runs this any more: they run `plan_for(query)`, the one definition of matching.
    It stays only as the reference that `tests/test_query_plan.py` holds the plan to (the old
    parameters must select what they selected before); it belongs in that test.
    """
    if severities is None:
        severities = query.level_severities()
    if severities is not None and entry.level.severity not in severities:
        return False
    if query.services is not None and (entry.service or "") not in query.services:
        return False
    if query.text and query.text.encode().lower() not in entry.message.encode().lower():
        return False
    return all(attribute_matches(entry.attributes.get(k), v) for k, v in query.attributes.items())
