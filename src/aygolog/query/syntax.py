"""Lexer and parser of the query language (`parse`; the grammar is in docs/query.md), and,
re-exported from `printer.py`, the printer back to text (`format_query`).

A hand-written recursive descent over the characters (no separate token list): what a
character means depends on where it is (`-` negates at a term's start but is part of
`api-2`; `:` ends a field name but not a value), and the position of every error is exact.
Input is bounded (characters, nesting, terms), so no query can exhaust the stack.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from aygolog.errors import ValidationError
from aygolog.models import FieldError, LogLevel
from aygolog.query.ast import (
    And,
    CompareOp,
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
from aygolog.query.lexicon import (
    BARE_RE,
    BUILTIN_FIELDS,
    DATE_RE,
    DURATION_RE,
    FIELD_RE,
    INTEGER_RE,
    KEYWORDS,
    LEVEL_FIELD,
    LEVELS_HINT,
    MAX_DEPTH,
    MAX_DURATION,
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    MAX_TERMS,
    MESSAGE_FIELDS,
    NAME_RE,
    NO_SECONDS_RE,
    NUMBER_RE,
    RESERVED_FIELDS,
    TIME_FIELD,
    UNITS,
)
from aygolog.query.printer import format_query
from aygolog.query.regex import RegexError, check_regex
from aygolog.query.tokens import tokens
from aygolog.querystring import parse_time

__all__ = [
    "MAX_DEPTH",
    "MAX_LIMIT",
    "MAX_QUERY_CHARS",
    "MAX_TERMS",
    "Query",
    "QuerySyntaxError",
    "format_query",
    "parse",
]


class QuerySyntaxError(ValidationError):
    """The query string does not parse. `position` is the 0-based character offset where it
    went wrong, `expected` what the parser wanted there; `errors` has one `FieldError` for the
    field "query" whose reason says both (e.g. "at 12: expected ')', found end of query")."""

    def __init__(self, position: int, expected: str, found: str) -> None:
        self.position = position
        self.expected = expected
        self.found = found
        reason = f"at {position}: expected {expected}, found {found}"
        super().__init__([FieldError(field="query", reason=reason)])


def parse(text: str) -> Query:
    """Parse a query string.

    Raises:
        QuerySyntaxError: with the position and what was expected.
    """
    return _Parser(text).query()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self.terms = 0
        self.times: list[tuple[Expr, int]] = []

    # -- characters --------------------------------------------------------------------------

    def found(self, pos: int) -> str:
        if pos >= len(self.text):
            return "end of query"
        if self.text[pos] == '"':
            end = self.text.find('"', pos + 1)
            return repr(self.text[pos : end + 1 if end > 0 else len(self.text)][:30])
        match = BARE_RE.match(self.text, pos)
        return repr(match.group()[:30] if match else self.text[pos])

    def fail(self, expected: str, pos: int | None = None) -> QuerySyntaxError:
        at = self.pos if pos is None else pos
        return QuerySyntaxError(at, expected, self.found(at))

    def skip_space(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos].isspace():
            pos += 1
        self.pos = pos

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_end_of_term(self, pos: int) -> bool:
        return pos >= len(self.text) or self.text[pos].isspace() or self.text[pos] in '()"|'

    def negates(self, pos: int) -> bool:
        """Whether a "-" before `pos` negates what follows (-word, -"phrase", -(group))."""
        return pos < len(self.text) and not self.text[pos].isspace() and self.text[pos] not in ")|"

    def keyword(self) -> str | None:
        match = BARE_RE.match(self.text, self.pos)
        if match and match.group() in KEYWORDS:
            return match.group()
        return None

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.fail(repr(char))
        self.pos += 1

    def quoted(self) -> str:
        """A "..." string at pos; `\\"` and `\\\\` are escapes, other backslashes stay."""
        start = self.pos
        self.expect('"')
        text, pos = self.text, self.pos
        out: list[str] = []
        while pos < len(text):
            char = text[pos]
            if char == '"':
                self.pos = pos + 1
                return "".join(out)
            if char == "\\" and pos + 1 < len(text) and text[pos + 1] in '"\\':
                out.append(text[pos + 1])
                pos += 2
                continue
            out.append(char)
            pos += 1
        raise self.fail(f"'\"' to close the string opened at {start}", len(text))

    def bare(self, what: str) -> str:
        match = BARE_RE.match(self.text, self.pos)
        if match is None:
            raise self.fail(what)
        self.pos = match.end()
        return match.group()

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"at most {MAX_DEPTH} nested parentheses or NOTs")

    def count_term(self, pos: int) -> None:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.fail(f"at most {MAX_TERMS} terms", pos)

    # -- the query ---------------------------------------------------------------------------

    def query(self) -> Query:
        if len(self.text) > MAX_QUERY_CHARS:
            raise QuerySyntaxError(
                MAX_QUERY_CHARS, f"a query of at most {MAX_QUERY_CHARS} characters", "more"
            )
        self.skip_space()
        expr: Expr | None = None
        if self.text.startswith("*", self.pos) and self.at_end_of_term(self.pos + 1):
            self.pos += 1
        elif self.pos < len(self.text) and self.peek() != "|":
            expr = self.or_expr(None)
        self.skip_space()
        self.check_times(expr)
        limit: int | None = None
        count: CountSpec | None = None
        while self.peek() == "|":
            start = self.pos
            self.pos += 1
            self.skip_space()
            name_at = self.pos
            name = NAME_RE.match(self.text, self.pos)
            if name and name.group() == "limit":
                if limit is not None:
                    raise self.fail("one '| limit' at most", start)
                self.pos = name.end()
                limit = self.limit()
            elif name and name.group() == "count":
                if count is not None:
                    raise self.fail("one '| count()' at most", start)
                self.pos = name.end()
                count = self.count()
            else:
                raise self.fail("a pipe: limit or count()", name_at)
            if limit is not None and count is not None:
                raise self.fail("end of query ('| limit' and '| count()' do not combine)", start)
            self.skip_space()
        if self.pos < len(self.text):
            raise self.fail("a term, OR, ')' or '|'" if expr is not None else "a term or '|'")
        return Query(filter=expr, limit=limit, count=count)

    def check_times(self, expr: Expr | None) -> None:
        top = expr.items if isinstance(expr, And) else (expr,)
        for node, pos in self.times:
            if not any(node is item for item in top):
                raise QuerySyntaxError(
                    pos,
                    "_time only at the top level, ANDed with the rest of the query",
                    "_time under OR or NOT",
                )

    def limit(self) -> int:
        self.skip_space()
        start = self.pos
        match = INTEGER_RE.match(self.text, self.pos)
        if match is None or not self.at_end_of_term(match.end()):
            raise self.fail(f"a number of entries, 1-{MAX_LIMIT}")
        value = int(match.group())
        if not 1 <= value <= MAX_LIMIT:
            raise self.fail(f"a number of entries, 1-{MAX_LIMIT}", start)
        self.pos = match.end()
        return value

    def count(self) -> CountSpec:
        self.skip_space()
        self.expect("(")
        self.skip_space()
        self.expect(")")
        self.skip_space()
        by: list[str] = []
        step: timedelta | None = None
        word = NAME_RE.match(self.text, self.pos)
        if word and word.group() == "by":
            self.pos = word.end()
            self.skip_space()
            self.expect("(")
            while True:
                self.skip_space()
                at = self.pos
                name = NAME_RE.match(self.text, self.pos)
                if name is None:
                    raise self.fail("a field name to group by")
                if name.group() in by or name.group() in (TIME_FIELD, *MESSAGE_FIELDS):
                    raise self.fail("a field name not grouped by yet, nor _time or _msg", at)
                by.append(name.group())
                self.pos = name.end()
                self.skip_space()
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.expect(")")
                break
            self.skip_space()
            word = NAME_RE.match(self.text, self.pos)
        if word and word.group() == "step":
            self.pos = word.end()
            self.skip_space()
            step = self.duration("a step such as 30s, 1m, 1h or 1d")
            if step < timedelta(seconds=1):
                raise self.fail("a step of at least 1s", self.pos - 1)
        return CountSpec(by=tuple(by), step=step)

    def duration(self, what: str) -> timedelta:
        start = self.pos
        match = DURATION_RE.match(self.text, self.pos)
        if match is None or not self.at_end_of_term(match.end()):
            raise self.fail(what)
        try:
            value = int(match.group(1)) * UNITS[match.group(2)]
        except OverflowError:  # past what a timedelta holds (~2.7 million years)
            value = MAX_DURATION * 2
        if not timedelta(0) < value <= MAX_DURATION:
            raise self.fail(f"{what}, above 0 and at most {MAX_DURATION.days}d", start)
        self.pos = match.end()
        return value

    # -- expressions (`field` is set inside `field:( ... )`) ---------------------------------

    def or_expr(self, field: str | None) -> Expr:
        items = [self.and_expr(field)]
        while True:
            self.skip_space()
            if self.keyword() != "OR":
                break
            self.pos += 2
            self.skip_space()
            items.append(self.and_expr(field))
        return items[0] if len(items) == 1 else Or(tuple(_flatten(items, Or)))

    def and_expr(self, field: str | None) -> Expr:
        items = [self.unary(field)]
        while True:
            self.skip_space()
            char = self.peek()
            if not char or char in ")|":
                break
            word = self.keyword()
            if word == "OR":
                break
            if word == "AND":
                self.pos += 3
                self.skip_space()
            items.append(self.unary(field))
        return items[0] if len(items) == 1 else And(tuple(_flatten(items, And)))

    def unary(self, field: str | None) -> Expr:
        self.skip_space()
        word = self.keyword()
        if word == "NOT" or (self.peek() == "-" and self.negates(self.pos + 1)):
            self.nest()
            self.pos += 3 if word == "NOT" else 1
            self.skip_space()
            item = self.unary(field)
            self.depth -= 1
            return Not(item)
        if word is not None:
            raise self.fail("a term")
        if self.peek() == "(":
            self.nest()
            self.pos += 1
            self.skip_space()
            if self.peek() == ")":
                raise self.fail("a term")
            inner = self.or_expr(field)
            self.skip_space()
            self.expect(")")
            self.depth -= 1
            return inner
        start = self.pos
        self.count_term(start)
        if field is not None:
            return self.value(field)
        return self.term()

    def term(self) -> Expr:
        start = self.pos
        char = self.peek()
        if not char or char in ")|":
            raise self.fail("a term")
        if char == "~":
            self.pos += 1
            return Regex(self.regex())
        if char == '"':
            return self.text_term(self.quoted(), start)
        match = FIELD_RE.match(self.text, self.pos)
        if match:
            name, op = match.groups()
            self.pos = match.end()
            if op != ":":
                return self.compare(name, op, start)
            if name == TIME_FIELD:
                node = self.time()
                self.times.append((node, start))
                return node
            if self.peek() == "(":
                self.nest()
                self.pos += 1
                self.skip_space()
                if self.peek() == ")":
                    raise self.fail("a value")
                inner = self.or_expr(name)
                self.skip_space()
                self.expect(")")
                self.depth -= 1
                return inner
            return self.value(name)
        word = self.bare("a term")
        if "*" in word:
            raise self.fail('a word without * (no wildcards; use ~"..." for patterns)', start)
        return self.text_term(word, start)

    def text_term(self, text: str, start: int) -> Text:
        if not tokens(text):
            raise self.fail("a word or phrase with letters or digits", start)
        return Text(text)

    def regex(self) -> str:
        start = self.pos
        if self.peek() != '"':
            raise self.fail('\'"\' after ~ (a regular expression is quoted: ~"...")')
        pattern = self.quoted()
        try:
            check_regex(pattern)
        except RegexError as exc:
            raise self.fail(str(exc), start) from None
        return pattern

    def value(self, field: str) -> Expr:
        """The value after `field:` (or inside `field:( ... )`)."""
        start = self.pos
        char = self.peek()
        if char == "~":
            self.pos += 1
            pattern = self.regex()
            if field in MESSAGE_FIELDS:
                return Regex(pattern)
            if field == LEVEL_FIELD:
                raise self.fail("a level name or comparison (level takes no regex)", start)
            return FieldRegex(field, pattern)
        if char == "*" and self.at_end_of_term(self.pos + 1):
            if field == LEVEL_FIELD or field in MESSAGE_FIELDS:
                raise self.fail(f"a value ({field}:* would match everything)", start)
            self.pos += 1
            return Exists(field)
        for op in (">=", "<=", ">", "<"):
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return self.compare(field, op, start)
        if char == '"':
            text = self.quoted()
        elif char and char not in ")|" and not char.isspace():
            text = self.bare("a value")
        else:
            raise self.fail("a value")
        if field == LEVEL_FIELD:
            return Level(":", self.level(text, start))
        if field in MESSAGE_FIELDS:
            return self.text_term(text, start)
        return FieldEquals(field, text)

    def compare(self, field: str, op: str, start: int) -> Expr:
        at = self.pos
        text = self.quoted() if self.peek() == '"' else self.bare("a value to compare with")
        cmp: CompareOp = ">=" if op == ">=" else "<=" if op == "<=" else ">" if op == ">" else "<"
        if field == LEVEL_FIELD:
            return Level(cmp, self.level(text, at))
        if field in RESERVED_FIELDS or field in BUILTIN_FIELDS:
            raise self.fail(
                f"a comparison only on level or a numeric attribute, not {field}", start
            )
        number = NUMBER_RE.fullmatch(text)
        value = float(text) if number else math.nan
        if not math.isfinite(value):
            raise self.fail("a number", at)
        return NumberCompare(field, cmp, value)

    def level(self, text: str, at: int) -> LogLevel:
        try:
            return LogLevel.parse(text)
        except ValueError:
            raise QuerySyntaxError(at, LEVELS_HINT, f"unknown level {text[:40]!r}") from None

    def time(self) -> Expr:
        char = self.peek()
        if not char or char not in "[(":
            return TimeLast(self.duration("a duration such as 15m, 2h or 7d, or [start, end]"))
        self.pos += 1
        start = self.time_point(",")
        self.expect(",")
        end = self.time_point("])")
        closing = self.peek()
        if closing not in ("]", ")"):
            raise self.fail("']' or ')' to close the time range")
        self.pos += 1
        if start > end:
            raise self.fail("a time range whose start is not after its end", self.pos - 1)
        return TimeRange(start, end, char == "[", closing == "]")

    def time_point(self, stops: str) -> datetime:
        self.skip_space()
        at = self.pos
        end = at
        while end < len(self.text) and self.text[end] not in stops:
            end += 1
        raw = self.text[at:end].strip()
        # The examples people copy write minutes without seconds (10:00Z) or a bare date.
        if DATE_RE.fullmatch(raw):
            raw += "T00:00:00Z"
        elif short := NO_SECONDS_RE.fullmatch(raw):
            raw = f"{short.group(1)}:00{short.group(2)}"
        try:
            value = parse_time(raw)
        except ValueError:
            raise self.fail("a time: RFC 3339, epoch seconds, or relative such as 2h", at) from None
        self.pos = end
        return value


def _flatten(items: list[Expr], kind: type[And] | type[Or]) -> list[Expr]:
    flat: list[Expr] = []
    for item in items:
        if isinstance(item, kind):
            flat.extend(item.items)
        else:
            flat.append(item)
    return flat
