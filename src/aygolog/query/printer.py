"""The printer: `format_query` gives the canonical text of a `Query`, which `parse` reads back
to the same `Query` (see docs/query.md for what "canonical" means)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
    TimeLast,
)
from aygolog.query.lexicon import BARE_RE, FIELD_RE, KEYWORDS, TIME_FIELD, UNITS

__all__ = ["format_duration", "format_number", "format_query"]


def format_query(query: Query) -> str:
    """Canonical text of `query`; `parse(format_query(q)) == q`."""
    parts = [] if query.filter is None else [_format(query.filter)]
    if query.count is not None:
        count = "count()"
        if query.count.by:
            count += " by (" + ", ".join(query.count.by) + ")"
        if query.count.step is not None:
            count += " step " + format_duration(query.count.step)
        parts.append(count)
    if query.limit is not None:
        parts.append(f"limit {query.limit}")
    if query.filter is None and parts:
        parts.insert(0, "*")
    return " | ".join(parts)


def _format(expr: Expr) -> str:
    if isinstance(expr, Or):
        return " OR ".join(_format(item) for item in expr.items)
    if isinstance(expr, And):
        return " ".join(
            f"({_format(item)})" if isinstance(item, Or) else _format(item) for item in expr.items
        )
    if isinstance(expr, Not):
        inner = _format(expr.item)
        return f"NOT ({inner})" if isinstance(expr.item, And | Or) else f"NOT {inner}"
    if isinstance(expr, Text):
        return expr.text if _bare_word(expr.text) else _quote(expr.text)
    if isinstance(expr, Regex):
        return "~" + _quote(expr.pattern)
    if isinstance(expr, Level):
        return f"level{expr.op}{expr.level.value}"
    if isinstance(expr, FieldEquals):
        value = expr.value if _bare_value(expr.value) else _quote(expr.value)
        return f"{expr.field}:{value}"
    if isinstance(expr, NumberCompare):
        return f"{expr.field}:{expr.op}{format_number(expr.value)}"
    if isinstance(expr, FieldRegex):
        return f"{expr.field}:~{_quote(expr.pattern)}"
    if isinstance(expr, Exists):
        return f"{expr.field}:*"
    if isinstance(expr, TimeLast):
        return f"{TIME_FIELD}:{format_duration(expr.duration)}"
    opening = "[" if expr.start_inclusive else "("
    closing = "]" if expr.end_inclusive else ")"
    return f"{TIME_FIELD}:{opening}{_instant(expr.start)}, {_instant(expr.end)}{closing}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bare_word(text: str) -> bool:
    return (
        BARE_RE.fullmatch(text) is not None
        and text not in KEYWORDS
        and text[0] not in "-~"
        and "*" not in text
        and FIELD_RE.match(text) is None
    )


def _bare_value(text: str) -> bool:
    return BARE_RE.fullmatch(text) is not None and text[0] not in "~*<>"


def format_number(value: float) -> str:
    """A number as the shortest text that reads back to it (500, not 500.0)."""
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def format_duration(value: timedelta) -> str:
    """A duration in the largest unit that divides it (90s -> "90s", 120s -> "2m")."""
    for unit, size in UNITS.items():
        if value % size == timedelta(0):
            return f"{value // size}{unit}"
    return f"{value // timedelta(milliseconds=1)}ms"


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
