"""`Plan`: what a store runs for a query (INTERFACE: the fields are fixed; `plan_for` is filled
in by the query-language work)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from aygolog.models import LogEntry, LogQuery

__all__ = ["CountSpec", "Plan", "plan_for"]


@dataclass(frozen=True, slots=True)
class CountSpec:
    """`| count() by (a, b) step 1m`: group by these fields, in buckets of `step` (None: one
    total over the whole range)."""

    by: tuple[str, ...] = ()
    step: timedelta | None = None


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

    def matches(self, entry: LogEntry) -> bool:
        """Whether `entry` passes the filter (the time range and cursor excepted)."""
        return self.predicate is None or self.predicate(entry)


def plan_for(query: LogQuery) -> Plan:
    """The plan of `query`: its `query` string ANDed with its other filter parameters.

    Raises:
        QuerySyntaxError: the query string does not parse (field "query", with the position).
    """
    raise NotImplementedError
