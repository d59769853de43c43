"""`plan_for`: the old parameters give what `store.base.matches` gives, every language form
selects the right entries, and the necessary conditions hold for whatever matches."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aygolog.models import AttributeValue, LogEntry, LogLevel, LogQuery
from aygolog.query import QuerySyntaxError, format_query, log_tokens, plan_for, tokens
from aygolog.query.ast import (
    And,
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
)
from aygolog.query.predicates import MAX_CLAUSES, attribute_equals
from test_query_strategies import ATTRIBUTE_KEYS, VALUES, WORDS, entries, exprs

# -- the old parameters ------------------------------------------------------------------


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

    The stores' definition before the query language (they run `plan_for(query)` now): the
    reference the plan is held to, so the old parameters select what they selected before.
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


old_queries = st.builds(
    LogQuery,
    levels=st.none() | st.frozensets(st.sampled_from(list(LogLevel)), max_size=3),
    min_level=st.none() | st.sampled_from(list(LogLevel)),
    services=st.none() | st.frozensets(st.sampled_from(["api", "auth", "", "a b"]), max_size=2),
    text=st.none() | st.sampled_from([*WORDS, "TIME", "ÉR", "out ref", "é"]) | st.text(max_size=3),
    attributes=st.dictionaries(
        st.sampled_from(ATTRIBUTE_KEYS), st.sampled_from(VALUES), max_size=2
    ),
)


@settings(max_examples=500, deadline=None)
@given(old_queries, entries)
def test_old_parameters_match_like_store_matches(query: LogQuery, entry: LogEntry) -> None:
    assert plan_for(query).matches(entry) == matches(entry, query)


@settings(deadline=None)
@given(old_queries, entries)
def test_old_parameters_give_necessary_conditions(query: LogQuery, entry: LogEntry) -> None:
    _check_necessary(plan_for(query), entry)


@settings(deadline=None)
@given(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4)),
    st.one_of(st.sampled_from(VALUES), st.text(max_size=4), st.sampled_from(["1_0", " 5 ", "nan"])),
)
def test_attribute_equals_is_attribute_matches(value: AttributeValue | None, wanted: str) -> None:
    assert attribute_equals(wanted)(value) == attribute_matches(value, wanted)


def test_plan_of_the_old_parameters() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    plan = plan_for(
        LogQuery(
            levels=frozenset({LogLevel.ERROR, LogLevel.INFO}),
            min_level=LogLevel.WARNING,
            services=frozenset({"api"}),
            attributes={"user": "Ann-Lee", "status": "500"},
            since=since,
        )
    )
    assert plan.severities == frozenset({LogLevel.ERROR.severity})
    assert plan.services == frozenset({"api"})
    assert set(plan.clauses) == {frozenset({"ann"}), frozenset({"lee"})}
    assert plan.since == since
    assert plan.until is None
    assert not plan.empty
    assert plan_for(LogQuery()).predicate is None


# -- each language form against a set of entries ----------------------------------------

AT = datetime(2026, 1, 1, tzinfo=UTC)


def entry(message: str, level: LogLevel = LogLevel.INFO, **kwargs: object) -> LogEntry:
    return LogEntry(
        id=message, message=message, level=level, timestamp=AT, received_at=AT,
        instance=str(kwargs.pop("instance", "api-1")), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


ENTRIES = [
    entry("Connection timeout after 30s", LogLevel.ERROR, service="checkout"),
    entry("connection refused by db", LogLevel.WARNING, service="auth", trace_id="abc-123"),
    entry("timeouts are retried", LogLevel.DEBUG, service="checkout", instance="api-2"),
    entry(
        "GET /api/v1/orders done",
        attributes={"status": 500, "path": "/api/v1/orders", "user": "ann"},
    ),
    entry("GET /health done", attributes={"status": 200, "path": "/health", "ok": True}),
    entry("payment failed: card declined", LogLevel.CRITICAL, service="pay"),
    entry("api-2 restarted", LogLevel.INFO, attributes={"status": "500", "region": "eu west"}),
    entry("Überweisung fehlgeschlagen", LogLevel.ERROR, attributes={"ratio": 0.5}),
]

# (query, the messages (ids) of ENTRIES it selects)
FORMS = [
    ("timeout", ["Connection timeout after 30s"]),
    ("TIMEOUT", ["Connection timeout after 30s"]),
    ("timeouts", ["timeouts are retried"]),
    ("api-2", ["api-2 restarted"]),
    ("api", ["GET /api/v1/orders done", "api-2 restarted"]),
    ("/api/v1", ["GET /api/v1/orders done"]),
    ('"connection refused"', ["connection refused by db"]),
    ('"refused connection"', []),
    ("überweisung", ["Überweisung fehlgeschlagen"]),
    ('~"time"', ["Connection timeout after 30s", "timeouts are retried"]),
    ('~"^get .*done$"', ["GET /api/v1/orders done", "GET /health done"]),
    ("connection -refused", ["Connection timeout after 30s"]),
    ("connection NOT refused", ["Connection timeout after 30s"]),
    ("timeout OR refused", ["Connection timeout after 30s", "connection refused by db"]),
    ("done (health OR orders)", ["GET /api/v1/orders done", "GET /health done"]),
    ("connection AND db", ["connection refused by db"]),
    ("level:error", ["Connection timeout after 30s", "Überweisung fehlgeschlagen"]),
    (
        "level>=warning",
        [
            "Connection timeout after 30s",
            "connection refused by db",
            "payment failed: card declined",
            "Überweisung fehlgeschlagen",
        ],
    ),
    ("level<info", ["timeouts are retried"]),
    ("level:(crit OR debug)", ["timeouts are retried", "payment failed: card declined"]),
    ("-level:info level<=warning", ["connection refused by db", "timeouts are retried"]),
    ("service:checkout", ["Connection timeout after 30s", "timeouts are retried"]),
    ("service:(auth OR pay)", ["connection refused by db", "payment failed: card declined"]),
    ('service:~"^CHECK"', ["Connection timeout after 30s", "timeouts are retried"]),
    ("service:* level:info", []),
    ("instance:api-2", ["timeouts are retried"]),
    ("trace_id:abc-123", ["connection refused by db"]),
    ("trace_id:*", ["connection refused by db"]),
    ("status:500", ["GET /api/v1/orders done", "api-2 restarted"]),
    ("status:500.0", ["GET /api/v1/orders done"]),
    ("status:>=500", ["GET /api/v1/orders done"]),
    ("status:<500", ["GET /health done"]),
    ("ratio:<1", ["Überweisung fehlgeschlagen"]),
    ("ok:true", ["GET /health done"]),
    ('path:~"^/api/"', ["GET /api/v1/orders done"]),
    ("user:*", ["GET /api/v1/orders done"]),
    ("-user:* status:*", ["GET /health done", "api-2 restarted"]),
    ('region:"eu west"', ["api-2 restarted"]),
    ("region:eu", []),
    ("_msg:refused", ["connection refused by db"]),
    ("level:error OR service:pay", [e.message for e in ENTRIES if e.id[0] in "CpÜ"]),
]


@pytest.mark.parametrize(("text", "selected"), FORMS)
def test_language_form(text: str, selected: list[str]) -> None:
    plan = plan_for(LogQuery(query=text))
    assert [e.message for e in ENTRIES if plan.matches(e)] == selected
    for e in ENTRIES:
        _check_necessary(plan, e)


def test_query_and_parameters_are_anded() -> None:
    plan = plan_for(LogQuery(query="connection", min_level=LogLevel.WARNING))
    assert [e.message for e in ENTRIES if plan.matches(e)] == [
        "Connection timeout after 30s",
        "connection refused by db",
    ]


def test_necessary_conditions_of_a_query() -> None:
    plan = plan_for(
        LogQuery(
            query="level>=warning service:(api OR auth) (timeout OR refused) db user:Ann -x",
            services=frozenset({"auth", "pay"}),
        )
    )
    assert plan.severities == frozenset({3, 4, 5})
    assert plan.services == frozenset({"auth"})
    assert set(plan.clauses) == {
        frozenset({"timeout", "refused"}),
        frozenset({"db"}),
        frozenset({"ann"}),
    }
    assert not plan.empty
    assert plan_for(LogQuery(query="status:500 ok:true x:1e3 -y")).clauses == ()
    assert plan_for(LogQuery(query='~"abc" OR d')).clauses == ()
    assert plan_for(LogQuery(query="(a b) OR (c d)")).clauses == (
        frozenset({"a", "c"}),
        frozenset({"a", "d"}),
        frozenset({"b", "c"}),
        frozenset({"b", "d"}),
    )


@pytest.mark.parametrize(
    ("text", "exact"),
    [
        ("level:error", True),
        ("level:(error OR critical) service:(a OR b) -level:debug", True),
        ("_time:5m service:a", True),
        ("", True),
        ("level:error OR service:a", False),
        ("-service:a", False),
        ("service:*", False),
        ("level:error x", False),
        ('service:~"a"', False),
    ],
)
def test_exact_plans(text: str, exact: bool) -> None:
    assert plan_for(LogQuery(query=text)).exact is exact
    assert not plan_for(LogQuery(query=text, text="x")).exact
    assert not plan_for(LogQuery(query=text, attributes={"a": "b"})).exact


def test_clauses_are_bounded() -> None:
    def group(prefix: str, j: int) -> str:
        return "(" + " ".join(f"{prefix}{j}x{i}" for i in range(8)) + ")"

    text = " ".join(f"({group('a', j)} OR {group('b', j)})" for j in range(16))
    plan = plan_for(LogQuery(query=text))
    assert len(plan.clauses) == MAX_CLAUSES
    wide = " OR ".join(group("c", j) for j in range(3))  # 8**3 clauses in full
    (clause,) = plan_for(LogQuery(query=wide)).clauses
    assert clause == {"c0x0", "c1x0", "c2x0"}


@pytest.mark.parametrize(
    "text",
    [
        "level:error level:info",
        "level>error level<warning",
        "service:a service:b",
        "_time:[2026-01-01T00:00:00Z, 2026-01-01T00:00:00Z)",
    ],
)
def test_provably_empty(text: str) -> None:
    assert plan_for(LogQuery(query=text)).empty


def test_empty_when_query_and_parameters_disagree() -> None:
    assert plan_for(LogQuery(query="level:debug", min_level=LogLevel.ERROR)).empty
    assert not plan_for(LogQuery(query="level:debug OR x", min_level=LogLevel.ERROR)).empty


# -- time and pipes --------------------------------------------------------------------


def test_time_goes_into_the_range() -> None:
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    plan = plan_for(LogQuery(query="_time:15m error"), now=now)
    assert plan.since == now - timedelta(minutes=15)
    assert plan.until is None
    assert plan.matches(entry("an error"))
    assert not plan.matches(entry("fine"))
    plan = plan_for(LogQuery(query="_time:15m"), now=now)
    assert plan.predicate is None
    assert plan.since == now - timedelta(minutes=15)

    ten, eleven = (datetime(2026, 11, 29, h, tzinfo=UTC) for h in (10, 11))
    inclusive = plan_for(LogQuery(query="_time:[2026-11-29T10:00Z, 2026-11-29T11:00Z]"))
    assert (inclusive.since, inclusive.until) == (ten, eleven)
    exclusive = plan_for(LogQuery(query="_time:(2026-11-29T10:00Z, 2026-11-29T11:00Z)"))
    assert exclusive.since == ten + timedelta(milliseconds=1)
    assert exclusive.until == eleven - timedelta(microseconds=1)
    narrowed = plan_for(
        LogQuery(
            query="_time:[2026-11-29T10:00Z, 2026-11-29T11:00Z]",
            since=ten + timedelta(minutes=5),
            until=eleven + timedelta(minutes=5),
        )
    )
    assert (narrowed.since, narrowed.until) == (ten + timedelta(minutes=5), eleven)


def test_pipes_go_into_the_plan() -> None:
    assert plan_for(LogQuery(query="x | limit 20")).limit == 20
    plan = plan_for(LogQuery(query="* | count() by (level) step 1m"))
    assert plan.count is not None
    assert plan.count.by == ("level",)
    assert plan.count.step == timedelta(minutes=1)
    assert plan.predicate is None


def test_a_syntax_error_names_the_query_field() -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        plan_for(LogQuery(query="level:nope"))
    assert caught.value.errors[0].field == "query"


# -- against an independent tree-walking reference ----------------------------------------


def reference(expr: Expr, e: LogEntry) -> bool:
    """What a query means, written the slow, obvious way."""
    if isinstance(expr, And):
        return all(reference(item, e) for item in expr.items)
    if isinstance(expr, Or):
        return any(reference(item, e) for item in expr.items)
    if isinstance(expr, Not):
        return not reference(expr.item, e)
    if isinstance(expr, Text):
        want, have = tokens(expr.text), tokens(e.message)
        return any(have[i : i + len(want)] == want for i in range(len(have)))
    if isinstance(expr, Regex):
        return re.search(expr.pattern, e.message, re.IGNORECASE) is not None
    if isinstance(expr, Level):
        mine, level = e.level.severity, expr.level.severity
        return {
            ":": mine == level,
            ">=": mine >= level,
            ">": mine > level,
            "<=": mine <= level,
            "<": mine < level,
        }[expr.op]
    fields: dict[str, AttributeValue | None] = {
        **e.attributes,
        "service": e.service,
        "instance": e.instance,
        "trace_id": e.trace_id,
    }
    if isinstance(expr, FieldEquals):
        if expr.field in ("service", "instance", "trace_id"):
            return (fields[expr.field] or "") == expr.value
        return attribute_matches(e.attributes.get(expr.field), expr.value)
    if isinstance(expr, NumberCompare):
        value = e.attributes.get(expr.field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return {
            ">=": value >= expr.value,
            ">": value > expr.value,
            "<=": value <= expr.value,
            "<": value < expr.value,
        }[expr.op]
    if isinstance(expr, FieldRegex):
        value = fields.get(expr.field)
        return isinstance(value, str) and re.search(expr.pattern, value, re.IGNORECASE) is not None
    assert isinstance(expr, Exists)
    return fields.get(expr.field) is not None


@settings(max_examples=1000, deadline=None)
@given(exprs, entries)
def test_plan_matches_the_reference(expr: Expr, e: LogEntry) -> None:
    plan = plan_for(LogQuery(query=format_query(Query(filter=expr))))
    assert plan.matches(e) == reference(expr, e)


@settings(max_examples=1000, deadline=None)
@given(exprs, entries)
def test_necessary_conditions_hold(expr: Expr, e: LogEntry) -> None:
    _check_necessary(plan_for(LogQuery(query=format_query(Query(filter=expr)))), e)


def _check_necessary(plan: object, e: LogEntry) -> None:
    from aygolog.query import Plan

    assert isinstance(plan, Plan)
    if plan.exact:
        assert plan.matches(e) == (
            (plan.severities is None or e.level.severity in plan.severities)
            and (plan.services is None or (e.service or "") in plan.services)
        )
    if not plan.matches(e):
        return
    assert not plan.empty
    if plan.severities is not None:
        assert e.level.severity in plan.severities
    if plan.services is not None:
        assert (e.service or "") in plan.services
    have = log_tokens(e.message, e.attributes, e.trace_id)
    for clause in plan.clauses:
        assert clause & have, (clause, have)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("(a+)+$", "a" * 40 + "!"), ("(a|aa)*b", "a" * 60), (".*.*.*x", "a" * 65536)],
)
def test_hostile_regexes_run_in_linear_time(pattern: str, message: str) -> None:
    # Python's re backtracks on these for minutes (docs/query.md); on RE2 the test ends at once,
    # on a backtracking engine it would hit the per-test timeout.
    plan = plan_for(LogQuery(query=f'~"{pattern}"'))
    assert not plan.matches(entry(message))
    assert (
        plan_for(LogQuery(query=f'path:~"{pattern}"')).matches(
            entry("x", attributes={"path": message})
        )
        is False
    )


@pytest.mark.parametrize("pattern", ["(a)\\\\1", "(?=a)", "(?<!a)b", "a{1001}"])
def test_what_re2_cannot_run_is_a_syntax_error(pattern: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        plan_for(LogQuery(query=f'~"{pattern}"'))
    assert caught.value.position == 1
    assert "RE2" in caught.value.expected


def test_without_re2_regexes_parse_but_do_not_run() -> None:
    # A base install (the SDK) has no RE2: queries still parse and print, but a plan with a
    # regex is refused rather than run on a backtracking engine.
    script = """
import sys
sys.modules["re2"] = None  # as if google-re2 were not installed
from aygolog.models import LogQuery
from aygolog.query import QuerySyntaxError, format_query, parse, plan_for
assert format_query(parse('~"(a"')) == '~"(a"'
assert plan_for(LogQuery(query="level:error x")).matches is not None
try:
    plan_for(LogQuery(query='path:~"^/api/"'))
except QuerySyntaxError as exc:
    print(exc.expected)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "install aygolog[server] (google-re2)" in done.stdout, done.stderr
