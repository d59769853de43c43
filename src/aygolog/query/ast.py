"""The nodes of a parsed query: a filter expression (`Expr`) and the pipes (`Query`).

The parser builds these in a normal form, which `format_query` prints and `parse` reads back
to the same nodes: `And`/`Or` have two or more items, none of them of their own kind (nested
ones are flattened); `_time` nodes appear only at the top level (alone or as items of the
top-level `And`). `_msg:` and `message:` are sugar for the free-text nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from aygolog.models import LogLevel

__all__ = [
    "And",
    "CompareOp",
    "CountSpec",
    "Exists",
    "Expr",
    "FieldEquals",
    "FieldRegex",
    "Level",
    "LevelOp",
    "Not",
    "NumberCompare",
    "Or",
    "Query",
    "Regex",
    "Text",
    "TimeLast",
    "TimeRange",
]

CompareOp = Literal[">=", ">", "<=", "<"]
LevelOp = Literal[":", ">=", ">", "<=", "<"]


@dataclass(frozen=True, slots=True)
class CountSpec:
    """`| count() by (a, b) step 1m`: group by these fields, in buckets of `step` (None: one
    total over the whole range)."""

    by: tuple[str, ...] = ()
    step: timedelta | None = None


class Text(msgspec.Struct, frozen=True):
    """A free word or a quoted phrase: its tokens, consecutive, among the message's tokens
    (whole tokens, case-insensitive; see `tokens.tokens`)."""

    text: str


class Regex(msgspec.Struct, frozen=True):
    """`~"..."`: a regular expression searched in the message, case-insensitive."""

    pattern: str


class Level(msgspec.Struct, frozen=True):
    """`level:error` (op ":"), `level>=warning` and the other comparisons."""

    op: LevelOp
    level: LogLevel


class FieldEquals(msgspec.Struct, frozen=True):
    """`service:x`, `instance:x`, `trace_id:x`, or an attribute `key:value` (numbers by value,
    booleans as true/false, strings exactly)."""

    field: str
    value: str


class NumberCompare(msgspec.Struct, frozen=True):
    """`status:>=500`: a numeric attribute compared with a number."""

    field: str
    op: CompareOp
    value: float


class FieldRegex(msgspec.Struct, frozen=True):
    """`path:~"^/api/"`: a regular expression searched in a field's text, case-insensitive."""

    field: str
    pattern: str


class Exists(msgspec.Struct, frozen=True):
    """`user:*`: the field is present."""

    field: str


class TimeLast(msgspec.Struct, frozen=True):
    """`_time:15m`: received in the last `duration` (up to now)."""

    duration: timedelta


class TimeRange(msgspec.Struct, frozen=True):
    """`_time:[start, end)`: received between two instants; brackets say inclusive."""

    start: datetime
    end: datetime
    start_inclusive: bool = True
    end_inclusive: bool = False


class Not(msgspec.Struct, frozen=True):
    """`NOT x` or `-x`."""

    item: Expr


class And(msgspec.Struct, frozen=True):
    """`a b` or `a AND b` (two or more items, none an `And`)."""

    items: tuple[Expr, ...]


class Or(msgspec.Struct, frozen=True):
    """`a OR b` (two or more items, none an `Or`)."""

    items: tuple[Expr, ...]


Expr = (
    Text
    | Regex
    | Level
    | FieldEquals
    | NumberCompare
    | FieldRegex
    | Exists
    | TimeLast
    | TimeRange
    | Not
    | And
    | Or
)


class Query(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed query: a filter expression (None: everything) and its pipes."""

    filter: Expr | None = None
    limit: int | None = None
    """From `| limit N`."""
    count: CountSpec | None = None
    """From `| count() ...`."""
