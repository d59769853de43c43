"""Hypothesis strategies for query ASTs and log entries, shared by the query tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from aygolog.models import LogEntry, LogLevel
from aygolog.query.ast import (
    And,
    CountSpec,
    Exists,
    Expr,
    FieldEquals,
    FieldRegex,
    Level,
    Not,
    NumberCompare,
    Or,
    Query,
    Regex,
    Text,
    TimeLast,
    TimeRange,
)
from aygolog.query.lexicon import RESERVED_FIELDS
from aygolog.query.tokens import tokens

# Few distinct words, so that queries and entries meet often.
WORDS = ["timeout", "error", "db", "api", "x1", "conn", "refused", "é", "OR", "a-b"]
ATTRIBUTE_KEYS = ["status", "user", "path", "ok", "n.x"]
FIELDS = ["service", "instance", "trace_id", *ATTRIBUTE_KEYS]
VALUES = ["500", "5.0", "true", "false", "", "api", "auth", "a b", "x1", "/api/v1", "abc-123"]
PATTERNS = ["time", "^conn", "out$", "a.c", "[0-9]+", "API", "é"]

words = st.one_of(
    st.sampled_from(WORDS),
    st.text(min_size=1, max_size=8).filter(lambda t: bool(tokens(t))),
)
values = st.one_of(st.sampled_from(VALUES), st.text(max_size=8))
field_names = st.one_of(
    st.sampled_from(FIELDS),
    st.from_regex(r"[^\W\d][\w.\-]{0,6}", fullmatch=True).filter(
        lambda n: n not in RESERVED_FIELDS
    ),
)
numbers = st.one_of(
    st.sampled_from([500.0, 5.0, 0.0, -1.5]),
    st.floats(allow_nan=False, allow_infinity=False),
)
ops = st.sampled_from([">=", ">", "<=", "<"])

leaves: st.SearchStrategy[Expr] = st.one_of(
    st.builds(Text, words),
    st.builds(Regex, st.sampled_from(PATTERNS)),
    st.builds(Level, st.sampled_from([":", ">=", ">", "<=", "<"]), st.sampled_from(list(LogLevel))),
    st.builds(FieldEquals, field_names, values),
    st.builds(NumberCompare, field_names.filter(lambda n: n not in FIELDS[:3]), ops, numbers),
    st.builds(FieldRegex, field_names, st.sampled_from(PATTERNS)),
    st.builds(Exists, field_names),
)


def _and(items: list[Expr]) -> Expr:
    flat: list[Expr] = []
    for item in items:
        flat.extend(item.items if isinstance(item, And) else (item,))
    return And(tuple(flat))


def _or(items: list[Expr]) -> Expr:
    flat: list[Expr] = []
    for item in items:
        flat.extend(item.items if isinstance(item, Or) else (item,))
    return Or(tuple(flat))


exprs: st.SearchStrategy[Expr] = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.lists(inner, min_size=2, max_size=3).map(_and),
        st.lists(inner, min_size=2, max_size=3).map(_or),
    ),
    max_leaves=8,
)

_instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
_units = st.sampled_from(
    [timedelta(milliseconds=1), timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)]
)
durations = st.builds(lambda n, unit: n * unit, st.integers(1, 5000), _units)


@st.composite
def time_nodes(draw: st.DrawFn) -> Expr:
    if draw(st.booleans()):
        return TimeLast(draw(durations))
    a, b = sorted([draw(_instants), draw(_instants)])
    return TimeRange(a, b, draw(st.booleans()), draw(st.booleans()))


@st.composite
def queries(draw: st.DrawFn) -> Query:
    """Queries in the parser's normal form (`_time` only at the top level)."""
    expr: Expr | None = draw(st.none() | exprs)
    times = draw(st.lists(time_nodes(), max_size=2))
    if times:
        items = [*times, *([] if expr is None else [expr])]
        expr = items[0] if len(items) == 1 else _and(items)
    pipe = draw(st.sampled_from(["none", "limit", "count"]))
    limit = draw(st.integers(1, 1000)) if pipe == "limit" else None
    count = None
    if pipe == "count":
        by = draw(st.lists(st.sampled_from(["level", "service", "status"]), unique=True))
        step = draw(st.none() | durations.filter(lambda d: d >= timedelta(seconds=1)))
        count = CountSpec(by=tuple(by), step=step)
    return Query(filter=expr, limit=limit, count=count)


_ATTRIBUTE_VALUES = st.one_of(
    st.sampled_from(VALUES),
    st.integers(-5, 600),
    st.sampled_from([5.0, 500.0, 0.5]),
    st.booleans(),
)
entries = st.builds(
    LogEntry,
    id=st.just("1-0"),
    message=st.lists(st.sampled_from([*WORDS, "timeouts", "API", "-", " ", "!"]), max_size=6).map(
        " ".join
    )
    | st.text(max_size=12),
    level=st.sampled_from(list(LogLevel)),
    timestamp=st.just(datetime(2026, 1, 1, tzinfo=UTC)),
    received_at=st.just(datetime(2026, 1, 1, tzinfo=UTC)),
    instance=st.sampled_from(["api-1", "api-2", "api"]),
    service=st.sampled_from([None, "api", "auth", "a b", ""]),
    attributes=st.dictionaries(st.sampled_from(ATTRIBUTE_KEYS), _ATTRIBUTE_VALUES, max_size=3),
    trace_id=st.sampled_from([None, "abc-123", "x1", "api"]),
)


@settings(deadline=None)
@given(queries())
def test_generated_queries_are_in_normal_form(query: Query) -> None:
    def check(expr: Expr) -> None:
        if isinstance(expr, And | Or):
            assert len(expr.items) >= 2
            assert not any(isinstance(item, type(expr)) for item in expr.items)
            for item in expr.items:
                check(item)
        elif isinstance(expr, Not):
            check(expr.item)

    if query.filter is not None:
        check(query.filter)
