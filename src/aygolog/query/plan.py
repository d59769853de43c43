"""`Plan`: what a store runs for a query, and `plan_for`, which builds it from a `LogQuery`
(its query string ANDed with the older parameters, which are sugar for the same plan)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from aygolog.models import LogEntry, LogLevel, LogQuery
from aygolog.query.ast import And, CountSpec, Expr, TimeLast, TimeRange
from aygolog.query.predicates import (
    Predicate,
    all_of,
    attribute_equals,
    compile_filter,
    dedupe_clauses,
    exact_services,
    exact_severities,
    necessary_clauses,
    necessary_services,
    necessary_severities,
    value_tokens,
)
from aygolog.query.regex import RegexError
from aygolog.query.syntax import QuerySyntaxError, parse

__all__ = ["CountSpec", "Plan", "plan_for"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Plan:
    """A query made runnable.

    `matches` is exact (the time range and cursor excepted). The other filter fields are
    *necessary* conditions derived from it, for stores and indexes to skip what cannot match:
    an entry that `matches` always has a severity in `severities` (None: any), a service in
    `services` ("" for an entry without one; None: any), and for every clause of `clauses` at
    least one of the clause's tokens among `log_tokens(...)` of the entry. `empty` is True when
    nothing can match. `since`/`until` bound the receive time (inclusive), merged from the
    parameters and `_time`.
    """

    predicate: Callable[[LogEntry], bool] | None = None
    """None: every entry matches."""
    severities: frozenset[int] | None = None
    services: frozenset[str] | None = None
    clauses: tuple[frozenset[str], ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    """From `| limit N`, else None (the caller's page size applies)."""
    count: CountSpec | None = None
    """From `| count() ...`; None for a plain search."""
    empty: bool = False
    exact: bool = False
    """True when `severities` and `services` say it all: an entry with a severity in
    `severities` and a service in `services` matches (e.g. `level:error service:(a OR b)`), so
    a store may filter on those alone (in Lua, or by per-block counters) without `matches`.
    `plan_for` sets it; False (the default) is always safe."""

    def matches(self, entry: LogEntry) -> bool:
        """Whether `entry` passes the filter (the time range and cursor excepted)."""
        return self.predicate is None or self.predicate(entry)


def plan_for(query: LogQuery, *, now: datetime | None = None) -> Plan:
    """The plan of `query`: its `query` string ANDed with its other filter parameters.

    `now` is when a relative `_time:15m` ends (default: the current time).

    Raises:
        QuerySyntaxError: the query string does not parse (field "query", with the position).
    """
    parsed = parse(query.query) if query.query else None
    predicates: list[Predicate] = []
    severities = query.level_severities()
    if severities is not None:
        # Members, not severities: `level in set` skips the property call (~3x faster).
        wanted = frozenset(LogLevel.from_severity(s) for s in severities)
        predicates.append(lambda entry: entry.level in wanted)
    services = query.services
    if services is not None:
        allowed = services
        predicates.append(lambda entry: (entry.service or "") in allowed)
    if query.text:
        needle = query.text.encode().lower()
        # ASCII case folding of bytes, as store.base.matches (and the Redis Lua scan) does.
        predicates.append(lambda entry: needle in entry.message.encode().lower())
    clauses: list[frozenset[str]] = []
    for key, value in query.attributes.items():
        predicates.append(_attribute(key, value))
        clauses += [frozenset({t}) for t in value_tokens(key, value)]
    since, until = query.since, query.until
    exact = not query.text and not query.attributes
    expr = parsed.filter if parsed else None
    if expr is not None:
        items = expr.items if isinstance(expr, And) else (expr,)
        rest: list[Expr] = []
        for item in items:
            if isinstance(item, TimeLast):
                since = _later(since, (now or datetime.now(UTC)) - item.duration)
            elif isinstance(item, TimeRange):
                start = item.start if item.start_inclusive else _next_ms(item.start)
                end = item.end if item.end_inclusive else item.end - timedelta(microseconds=1)
                since, until = _later(since, start), _earlier(until, end)
            else:
                rest.append(item)
        if rest:
            filtered = rest[0] if len(rest) == 1 else And(tuple(rest))
            try:
                predicates.append(compile_filter(filtered))
            except RegexError as exc:
                raise QuerySyntaxError(0, str(exc), "a regular expression") from None
            exact = exact and all(
                exact_severities(item) is not None or exact_services(item) is not None
                for item in rest
            )
            severities = _meet(severities, necessary_severities(filtered))
            services = _meet(services, necessary_services(filtered))
            clauses += necessary_clauses(filtered)
    empty = (
        severities == frozenset()
        or services == frozenset()
        or (since is not None and until is not None and since > until)
    )
    return Plan(
        predicate=all_of(predicates) if predicates else None,
        severities=severities,
        services=services,
        clauses=tuple(dedupe_clauses(clauses)),
        since=since,
        until=until,
        limit=parsed.limit if parsed else None,
        count=parsed.count if parsed else None,
        empty=empty,
        exact=exact,
    )


def _attribute(key: str, value: str) -> Predicate:
    equals = attribute_equals(value)
    return lambda entry: equals(entry.attributes.get(key))


def _meet(a: frozenset[_T] | None, b: frozenset[_T] | None) -> frozenset[_T] | None:
    if a is None:
        return b
    return a if b is None else a & b


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def _earlier(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def _next_ms(at: datetime) -> datetime:
    """The first millisecond after `at` (receive times are whole milliseconds)."""
    return _EPOCH + ((at - _EPOCH) // _MS + 1) * _MS
