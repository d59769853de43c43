"""The query parser and printer: a table of valid and invalid queries, and round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aygolog.errors import ValidationError
from aygolog.models import LogLevel, LogQuery
from aygolog.query import Query, QuerySyntaxError, format_query, parse, plan_for
from aygolog.query.ast import (
    And,
    CountSpec,
    Exists,
    FieldEquals,
    FieldRegex,
    Level,
    Not,
    NumberCompare,
    Or,
    Regex,
    Text,
    TimeLast,
    TimeRange,
)
from aygolog.query.lexicon import MAX_DEPTH, MAX_LIMIT, MAX_QUERY_CHARS, MAX_TERMS
from aygolog.store.base import MAX_QUERY_LIMIT
from test_query_strategies import queries

# (text, the canonical text it prints back as)
CANONICAL = [
    ("timeout", "timeout"),
    ("  timeout  ", "timeout"),
    ("Timeout", "Timeout"),
    ("api-2", "api-2"),
    ('"connection refused"', '"connection refused"'),
    ('"timeout"', "timeout"),
    ("a b c", "a b c"),
    ("a AND b", "a b"),
    ("a OR b", "a OR b"),
    ("a OR b c", "a OR b c"),
    ("(a OR b) c", "(a OR b) c"),
    ("a (b OR c)", "a (b OR c)"),
    ("((a))", "a"),
    ("(a b) c", "a b c"),
    ("a OR (b OR c)", "a OR b OR c"),
    ("-a", "NOT a"),
    ("NOT a b", "NOT a b"),
    ("NOT (a b)", "NOT (a b)"),
    ("NOT NOT a", "NOT NOT a"),
    ("a -b", "a NOT b"),
    ("or and not", "or and not"),
    ('"OR"', '"OR"'),
    ('~"time.*out"', '~"time.*out"'),
    ('~"say \\"hi\\""', '~"say \\"hi\\""'),
    ('~"\\d+"', '~"\\\\d+"'),
    ("level:error", "level:error"),
    ("level:ERR", "level:error"),
    ("level:warn", "level:warning"),
    ("level>=warning", "level>=warning"),
    ("level:>=warning", "level>=warning"),
    ("level<info", "level<info"),
    ("level:(error OR critical)", "level:error OR level:critical"),
    ("level:(error OR critical) db", "(level:error OR level:critical) db"),
    ("service:checkout", "service:checkout"),
    ("service:(a OR b)", "service:a OR service:b"),
    ("service:(a NOT b)", "service:a NOT service:b"),
    ("service:(-b)", "NOT service:b"),
    ("instance:api-2", "instance:api-2"),
    ("trace_id:abc123", "trace_id:abc123"),
    ("status:500", "status:500"),
    ('key:"a b"', 'key:"a b"'),
    ('key:""', 'key:""'),
    ('key:"*"', 'key:"*"'),
    ("url:http://x/y", "url:http://x/y"),
    ("http.status:>=500", "http.status:>=500"),
    ("status>=500", "status:>=500"),
    ("status:<1.5", "status:<1.5"),
    ("status:>-2e3", "status:>-2000"),
    ('path:~"^/api/"', 'path:~"^/api/"'),
    ("user:*", "user:*"),
    ("_msg:timeout", "timeout"),
    ('message:"a b"', '"a b"'),
    ('_msg:~"x"', '~"x"'),
    ("_time:15m", "_time:15m"),
    ("_time:90s", "_time:90s"),
    ("_time:120s", "_time:2m"),
    (
        "_time:[2026-11-29T10:00Z, 2026-11-29T11:00Z)",
        "_time:[2026-11-29T10:00:00Z, 2026-11-29T11:00:00Z)",
    ),
    ("_time:(2026-11-29, 2026-11-30]", "_time:(2026-11-29T00:00:00Z, 2026-11-30T00:00:00Z]"),
    ("error _time:1h", "error _time:1h"),
    ("a | limit 20", "a | limit 20"),
    ("| limit 5", "* | limit 5"),
    ("* | count()", "* | count()"),
    ("* | count() by (level)", "* | count() by (level)"),
    ("* | count() by ( service ,level ) step 1m", "* | count() by (service, level) step 1m"),
    ("level:error | count() step 60s", "level:error | count() step 1m"),
    ("", ""),
    ("*", ""),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_canonical_text(text: str, canonical: str) -> None:
    query = parse(text)
    assert format_query(query) == canonical
    assert parse(canonical) == query


# (text, the AST it parses to)
TREES = [
    ("timeout", Text("timeout")),
    ("a b", And((Text("a"), Text("b")))),
    ("a OR b c", Or((Text("a"), And((Text("b"), Text("c")))))),
    ("NOT a OR b", Or((Not(Text("a")), Text("b")))),
    ("-(a OR b)", Not(Or((Text("a"), Text("b"))))),
    ("level>=warn", Level(">=", LogLevel.WARNING)),
    ("level:(error OR fatal)", Or((Level(":", LogLevel.ERROR), Level(":", LogLevel.CRITICAL)))),
    ("status:>=500", NumberCompare("status", ">=", 500.0)),
    ("status:500", FieldEquals("status", "500")),
    ('path:~"^/api/"', FieldRegex("path", "^/api/")),
    ("user:*", Exists("user")),
    ('~"a+"', Regex("a+")),
    ("_time:15m", TimeLast(timedelta(minutes=15))),
    (
        "_time:[2026-11-29T10:00Z, 2026-11-29T11:00:00.5Z]",
        TimeRange(
            datetime(2026, 11, 29, 10, tzinfo=UTC),
            datetime(2026, 11, 29, 11, 0, 0, 500000, tzinfo=UTC),
            True,
            True,
        ),
    ),
]


@pytest.mark.parametrize(("text", "tree"), TREES)
def test_tree(text: str, tree: object) -> None:
    assert parse(text).filter == tree


def test_pipes() -> None:
    assert parse("x | limit 20") == Query(filter=Text("x"), limit=20)
    assert parse("| count() by (service, level) step 1m").count == CountSpec(
        by=("service", "level"), step=timedelta(minutes=1)
    )
    assert parse("| count()").count == CountSpec()


# (text, error position, a part of what was expected)
INVALID = [
    ("(a", 2, "')'"),
    ("a)", 1, "a term, OR, ')' or '|'"),
    ("a OR", 4, "a term"),
    ("OR a", 0, "a term"),
    ("a AND", 5, "a term"),
    ("NOT", 3, "a term"),
    ("()", 1, "a term"),
    ('"abc', 4, "'\"' to close the string opened at 0"),
    ('""', 0, "letters or digits"),
    ("!!!", 0, "letters or digits"),
    ("- a", 0, "letters or digits"),
    ("x*", 0, "no wildcards"),
    ("~x", 1, "'\"' after ~"),
    ('~""', 1, "non-empty regular expression"),
    ('~"(a"', 1, "valid RE2 regular expression"),
    ('~"(a)\\1"', 1, "valid RE2 regular expression"),
    ('~"' + "a" * 300 + '"', 1, "at most 256 characters"),
    ("level:bogus", 6, "a level"),
    ("level>=nope", 7, "a level"),
    ("level:*", 6, "level:* would match everything"),
    ('level:~"x"', 6, "level takes no regex"),
    ("a:", 2, "a value"),
    ("a: b", 2, "a value"),
    ("service:()", 9, "a value"),
    ("service:(a", 10, "')'"),
    ("status:>=abc", 9, "a number"),
    ("status:>=nan", 9, "a number"),
    ("status:>=", 9, "a value to compare with"),
    ("service:>=5", 8, "a comparison only on level or a numeric attribute"),
    ("_time:", 6, "a duration"),
    ("_time:15", 6, "a duration"),
    (
        "_time:999999999999d",
        6,
        "at most 3650d",
    ),  # past what a timedelta holds: not an OverflowError
    ("_time:0m", 6, "above 0"),
    ("_time:[x, 2026-11-29T10:00Z)", 7, "a time"),
    ("_time:[2026-11-29T10:00Z 2026-11-29T11:00Z)", 7, "a time"),
    ("_time:[2026-11-29T11:00Z, 2026-11-29T10:00Z]", 43, "start is not after its end"),
    ("a OR _time:5m", 5, "_time only at the top level"),
    ("NOT _time:5m", 4, "_time only at the top level"),
    ("a | limit 0", 10, "1-1000"),
    ("a | limit 1001", 10, "1-1000"),
    ("a | limit", 9, "a number of entries"),
    ("a | head 5", 4, "a pipe: limit or count()"),
    ("a | count", 9, "'('"),
    ("a | count() by level", 15, "'('"),
    ("a | count() by ()", 16, "a field name"),
    ("a | count() by (level, level)", 23, "not grouped by yet"),
    ("a | count() step 0s", 17, "above 0"),
    ("a | count() step 10ms", 20, "a step of at least 1s"),
    ("a | limit 5 | limit 6", 12, "one '| limit' at most"),
    ("a | count() | limit 6", 12, "do not combine"),
    ("a | limit 5 x", 12, "'|'"),
    ("* x", 2, "'|'"),
]


@pytest.mark.parametrize(("text", "position", "expected"), INVALID)
def test_invalid(text: str, position: int, expected: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        parse(text)
    assert caught.value.position == position, caught.value.errors
    assert expected in caught.value.expected
    (error,) = caught.value.errors
    assert error.field == "query"
    assert error.reason.startswith(f"at {position}: expected ")


def test_the_error_is_a_validation_error_naming_the_unknown_level() -> None:
    with pytest.raises(ValidationError) as caught:
        parse("level:eror2")
    assert "unknown level 'eror2'" in caught.value.errors[0].reason


def test_table_sizes() -> None:
    assert len(CANONICAL) + len(TREES) + len(INVALID) >= 60


def test_the_limit_bound_is_the_stores() -> None:
    assert MAX_LIMIT == MAX_QUERY_LIMIT


def test_bounds_on_size_nesting_and_terms() -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        parse("a " * (MAX_QUERY_CHARS // 2 + 1))
    assert caught.value.position == MAX_QUERY_CHARS
    deep = "(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(QuerySyntaxError) as caught:
        parse(deep)
    assert caught.value.position == MAX_DEPTH
    assert parse("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH).filter == Text("a")
    with pytest.raises(QuerySyntaxError, match="nested"):
        parse("NOT " * 100 + "a")
    with pytest.raises(QuerySyntaxError, match="nested"):
        parse("-" * 4000 + "a")
    with pytest.raises(QuerySyntaxError, match=f"at most {MAX_TERMS} terms"):
        parse("a " * (MAX_TERMS + 1))


@settings(max_examples=300, deadline=None)
@given(queries())
def test_round_trip(query: Query) -> None:
    text = format_query(query)
    assert parse(text) == query, text
    assert format_query(parse(text)) == text


_GRAMMAR_BITS = st.sampled_from(
    [
        *'()"|~*-:<>=[],\\ ',
        *("AND", "OR", "NOT", "level", "_time", "service", "status", "by", "count()", "limit"),
        *("step", "15m", "1m", "500", "error", "2026-11-29T10:00Z", "_msg"),
    ]
)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=40) | st.lists(_GRAMMAR_BITS, max_size=25).map("".join))
def test_any_text_parses_or_raises_a_syntax_error(text: str) -> None:
    position: int | None = None
    try:
        query = parse(text)
    except QuerySyntaxError as exc:
        position = exc.position
    if position is not None:
        assert 0 <= position <= len(text)
        return
    assert parse(format_query(query)) == query
    plan_for(LogQuery(query=text))  # whatever parses, plans
