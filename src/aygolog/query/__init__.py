"""The query language: one string, parsed once, run by every store (see docs/query.md).

- `syntax.py`: the lexer and parser (`parse`: text -> `Query`, `QuerySyntaxError`).
- `printer.py`: `format_query`: `Query` -> canonical text that parses back to the same `Query`.
- `lexicon.py`: bounds, field names, keywords, the patterns of the lexical pieces.
- `ast.py`: the nodes of a parsed query.
- `predicates.py`: a filter compiled once into closures, and the necessary conditions
  (severities, services, token clauses) derived from it.
- `regex.py`: user regular expressions, run by RE2 in linear time.
- `plan.py`: `Plan`, what a store runs: an exact predicate plus the necessary conditions an
  index can use (levels, services, token clauses, time range), and the pipes (limit, count).
  `plan_for(LogQuery)` merges the query string with the older parameters (which are sugar).
- `tokens.py`: the one tokenizer, shared by whole-word matching and the search index.
"""

from __future__ import annotations

from aygolog.query.plan import CountSpec, Plan, plan_for
from aygolog.query.syntax import Query, QuerySyntaxError, format_query, parse
from aygolog.query.tokens import log_tokens, tokens

__all__ = [
    "CountSpec",
    "Plan",
    "Query",
    "QuerySyntaxError",
    "format_query",
    "log_tokens",
    "parse",
    "plan_for",
    "tokens",
]
