"""A filter expression compiled to closures (`compile_filter`), and the necessary conditions
derived from it for stores and indexes (`necessary_severities`, `necessary_services`,
`necessary_clauses`).

The closures are built once per query: running one on an entry walks no tree and re-parses
nothing. Every necessary condition is conservative: an entry the predicate accepts always
meets it (tests/test_query_plan.py checks this with hypothesis), since an index that skips a
block on a condition that is not truly necessary loses data.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from aygolog.models import AttributeValue, LogEntry, LogLevel
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
    Regex,
    Text,
    TimeLast,
    TimeRange,
)
from aygolog.query.regex import compile_regex
from aygolog.query.tokens import tokens

__all__ = [
    "MAX_CLAUSES",
    "Predicate",
    "all_of",
    "attribute_equals",
    "compile_filter",
    "cost",
    "dedupe_clauses",
    "exact_services",
    "exact_severities",
    "necessary_clauses",
    "necessary_services",
    "necessary_severities",
    "value_tokens",
]

Predicate = Callable[[LogEntry], bool]
MAX_CLAUSES: Final = 64
"""At most this many clauses per plan (and per OR, whose clauses are the product of its
items'); past it, fewer are kept: dropping a necessary clause is safe, it only skips less."""

_ALL_SEVERITIES: Final = frozenset(level.severity for level in LogLevel)
_COMPARE: Final = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def compile_filter(expr: Expr) -> Predicate:
    """`expr` as one closure: entry -> whether it matches (`_time` nodes excepted: the plan
    takes them out into its time range first).

    Raises:
        RegexError: a regular expression cannot be run (see `regex.compile_regex`).
    """
    if isinstance(expr, And):
        return all_of([compile_filter(item) for item in sorted(expr.items, key=cost)])
    if isinstance(expr, Or):
        return _any_of([compile_filter(item) for item in sorted(expr.items, key=cost)])
    if isinstance(expr, Not):
        inner = compile_filter(expr.item)
        return lambda entry: not inner(entry)
    if isinstance(expr, Text):
        return _text(expr.text)
    if isinstance(expr, Regex):
        found = compile_regex(expr.pattern)
        return lambda entry: found(entry.message)
    if isinstance(expr, Level):
        allowed = frozenset(LogLevel.from_severity(s) for s in _level_severities(expr))
        return lambda entry: entry.level in allowed
    if isinstance(expr, FieldEquals):
        return _equals(expr.field, expr.value)
    if isinstance(expr, NumberCompare):
        return _compare(expr)
    if isinstance(expr, FieldRegex):
        return _field_regex(expr)
    if isinstance(expr, Exists):
        return _exists(expr.field)
    if isinstance(expr, TimeLast | TimeRange):
        raise ValueError("_time belongs in the plan's time range, not in its predicate")
    raise TypeError(f"not a query node: {expr!r}")  # pragma: no cover


def all_of(predicates: Sequence[Predicate]) -> Predicate:
    """All of `predicates` (short-circuit, in order)."""
    # Nested pairs: a call per item costs less than all() over a generator (measured ~2x).
    combined = predicates[-1]
    for predicate in reversed(predicates[:-1]):
        combined = _both(predicate, combined)
    return combined


def _both(first: Predicate, second: Predicate) -> Predicate:
    return lambda entry: first(entry) and second(entry)


def _any_of(predicates: Sequence[Predicate]) -> Predicate:
    combined = predicates[-1]
    for predicate in reversed(predicates[:-1]):
        combined = _either(predicate, combined)
    return combined


def _either(first: Predicate, second: Predicate) -> Predicate:
    return lambda entry: first(entry) or second(entry)


def cost(expr: Expr) -> int:
    """A rough rank of what testing `expr` costs, to test the cheap items of an AND first."""
    if isinstance(expr, Level | Exists):
        return 0
    if isinstance(expr, FieldEquals | NumberCompare):
        return 1
    if isinstance(expr, Text):
        return 2
    if isinstance(expr, Not):
        return cost(expr.item)
    if isinstance(expr, And | Or):
        return max(map(cost, expr.items))
    return 3


def _text(text: str) -> Predicate:
    # Tokens are maximal \w runs of the lower-cased message, so "these tokens, consecutive" is
    # "these words, separated by non-word runs, with no word character on either side". The
    # pattern starts with the literal first word and checks what precedes it by a lookbehind
    # after it: a leading \b would cost re its literal-prefix scan (4-5x slower, measured).
    words = tokens(text)
    head = re.escape(words[0])
    pattern = rf"{head}(?<!\w{head})" + "".join(rf"\W+{re.escape(w)}" for w in words[1:])
    search = re.compile(pattern + r"\b").search
    first = words[0]

    def matches(entry: LogEntry) -> bool:
        message = entry.message.lower()
        return first in message and search(message) is not None

    return matches


def _level_severities(expr: Level) -> frozenset[int]:
    severity = expr.level.severity
    if expr.op == ":":
        return frozenset({severity})
    compare = _COMPARE[expr.op]
    return frozenset(s for s in _ALL_SEVERITIES if compare(s, severity))


def attribute_equals(wanted: str) -> Callable[[AttributeValue | None], bool]:
    """The old attribute filter (`attr=key:value`) with `wanted` read once: numbers by value,
    booleans as true/false, strings exactly."""
    try:
        number: float | None = float(wanted)
    except ValueError:
        number = None

    def equals(value: AttributeValue | None) -> bool:
        if value is None:
            return False
        if isinstance(value, bool):
            return wanted == ("true" if value else "false")
        if isinstance(value, str):
            return value == wanted
        return number is not None and number == value

    return equals


def _equals(field: str, value: str) -> Predicate:
    if field == "service":
        return lambda entry: (entry.service or "") == value
    if field == "instance":
        return lambda entry: entry.instance == value
    if field == "trace_id":
        return lambda entry: (entry.trace_id or "") == value
    equals = attribute_equals(value)
    return lambda entry: equals(entry.attributes.get(field))


def _compare(expr: NumberCompare) -> Predicate:
    compare, field, wanted = _COMPARE[expr.op], expr.field, expr.value

    def matches(entry: LogEntry) -> bool:
        value = entry.attributes.get(field)
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and compare(value, wanted)
        )

    return matches


def _field_text(field: str) -> Callable[[LogEntry], str | None]:
    """Where a field's text is: the built-in fields, else a string attribute's value."""
    if field == "service":
        return lambda entry: entry.service
    if field == "instance":
        return lambda entry: entry.instance
    if field == "trace_id":
        return lambda entry: entry.trace_id

    def attribute(entry: LogEntry) -> str | None:
        value = entry.attributes.get(field)
        return value if isinstance(value, str) else None

    return attribute


def _field_regex(expr: FieldRegex) -> Predicate:
    found = compile_regex(expr.pattern)
    text_of = _field_text(expr.field)

    def matches(entry: LogEntry) -> bool:
        text = text_of(entry)
        return text is not None and found(text)

    return matches


def _exists(field: str) -> Predicate:
    if field == "instance":
        return lambda entry: True
    if field in ("service", "trace_id"):
        text_of = _field_text(field)
        return lambda entry: text_of(entry) is not None
    return lambda entry: field in entry.attributes


# -- necessary conditions ------------------------------------------------------------------


def exact_severities(expr: Expr) -> frozenset[int] | None:
    """The severities `expr` accepts when it depends on the level alone, else None."""
    if isinstance(expr, Level):
        return _level_severities(expr)
    if isinstance(expr, Not):
        inner = exact_severities(expr.item)
        return None if inner is None else _ALL_SEVERITIES - inner
    if isinstance(expr, And | Or):
        return _combine(expr, [exact_severities(item) for item in expr.items])
    return None


_T = TypeVar("_T")


def _combine(expr: And | Or, parts: list[frozenset[_T] | None]) -> frozenset[_T] | None:
    """The exact set of an AND (intersection) or OR (union) of parts; None if a part has none."""
    sets = [part for part in parts if part is not None]
    if len(sets) < len(parts):
        return None
    return frozenset.intersection(*sets) if isinstance(expr, And) else frozenset.union(*sets)


def necessary_severities(expr: Expr) -> frozenset[int] | None:
    """Severities every matching entry has (None: any)."""
    exact = exact_severities(expr)
    if exact is not None:
        return exact
    if isinstance(expr, And):
        found = [s for s in map(necessary_severities, expr.items) if s is not None]
        return frozenset.intersection(*found) if found else None
    if isinstance(expr, Or):
        parts = [necessary_severities(item) for item in expr.items]
        if any(part is None for part in parts):
            return None
        return frozenset.union(*(p for p in parts if p is not None))
    return None


def exact_services(expr: Expr) -> frozenset[str] | None:
    """The services ("" for none) `expr` accepts when it depends on the service alone and
    names them (no NOT, regex or `service:*`), else None."""
    if isinstance(expr, FieldEquals) and expr.field == "service":
        return frozenset({expr.value})
    if isinstance(expr, And | Or):
        return _combine(expr, [exact_services(item) for item in expr.items])
    return None


def necessary_services(expr: Expr) -> frozenset[str] | None:
    """Services every matching entry has ("" for none; None: any)."""
    if isinstance(expr, FieldEquals) and expr.field == "service":
        return frozenset({expr.value})
    if isinstance(expr, And):
        found = [s for s in map(necessary_services, expr.items) if s is not None]
        return frozenset.intersection(*found) if found else None
    if isinstance(expr, Or):
        parts = [necessary_services(item) for item in expr.items]
        if any(part is None for part in parts):
            return None
        return frozenset.union(*(p for p in parts if p is not None))
    return None


def value_tokens(field: str, value: str) -> list[str]:
    """The tokens an entry surely has when `field` equals `value` (see `attribute_equals`):
    a string attribute's or the trace id's; none for service/instance (not indexed) nor for a
    value that could equal a number or a boolean (those are not tokenized)."""
    if field in ("service", "instance"):
        return []
    if field != "trace_id":
        if value in ("true", "false"):
            return []
        try:
            float(value)
        except ValueError:
            pass
        else:
            return []
    return tokens(value)


def necessary_clauses(expr: Expr) -> list[frozenset[str]]:
    """CNF over tokens: every matching entry has, for each clause, one of its tokens among
    `log_tokens(...)`. Only positive words/phrases and string equalities contribute."""
    if isinstance(expr, Text):
        return dedupe_clauses([frozenset({t}) for t in tokens(expr.text)])
    if isinstance(expr, FieldEquals):
        return dedupe_clauses([frozenset({t}) for t in value_tokens(expr.field, expr.value)])
    if isinstance(expr, And):
        return dedupe_clauses([c for item in expr.items for c in necessary_clauses(item)])
    if isinstance(expr, Or):
        parts = [necessary_clauses(item) for item in expr.items]
        if any(not part for part in parts):
            return []
        size = 1
        for part in parts:
            size *= len(part)
        if size > MAX_CLAUSES:
            return [frozenset().union(*(min(part, key=len) for part in parts))]
        return dedupe_clauses([frozenset().union(*combo) for combo in itertools.product(*parts)])
    return []


def dedupe_clauses(clauses: list[frozenset[str]]) -> list[frozenset[str]]:
    """The clauses without repeats nor ones implied by others, at most MAX_CLAUSES."""
    # A clause that holds another is implied by it: keep the smaller (it skips more). Past
    # MAX_CLAUSES, keep the smallest: every clause is necessary, so any subset is too, and an
    # index tests each clause per block.
    unique = sorted(dict.fromkeys(clauses), key=len)[:MAX_CLAUSES]
    return [c for c in unique if not any(other < c for other in unique)]
