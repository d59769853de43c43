"""Lexer and parser of the query language, and the printer back to text (INTERFACE: filled in
by the query-language work)."""

from __future__ import annotations

import msgspec

from aygolog.errors import ValidationError
from aygolog.models import FieldError

__all__ = ["Query", "QuerySyntaxError", "format_query", "parse"]


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


class Query(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed query: a filter expression (None: everything) and its pipes."""


def parse(text: str) -> Query:
    """Parse a query string.

    Raises:
        QuerySyntaxError: with the position and what was expected.
    """
    raise NotImplementedError


def format_query(query: Query) -> str:
    """Canonical text of `query`; `parse(format_query(q)) == q`."""
    raise NotImplementedError
