"""The words of the query language: bounds, field names, keywords and the patterns of its
lexical pieces, shared by the parser (`syntax.py`) and the printer (`printer.py`)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

from aygolog.models import LogLevel

__all__ = [
    "BARE_RE",
    "BUILTIN_FIELDS",
    "DATE_RE",
    "DURATION_RE",
    "FIELD_RE",
    "INTEGER_RE",
    "KEYWORDS",
    "LEVELS_HINT",
    "LEVEL_FIELD",
    "MAX_DEPTH",
    "MAX_DURATION",
    "MAX_LIMIT",
    "MAX_QUERY_CHARS",
    "MAX_TERMS",
    "MESSAGE_FIELDS",
    "NAME_RE",
    "NO_SECONDS_RE",
    "NUMBER_RE",
    "RESERVED_FIELDS",
    "TIME_FIELD",
    "UNITS",
]

MAX_QUERY_CHARS: Final = 4096
MAX_DEPTH: Final = 32
"""Parentheses and NOTs nested in each other."""
MAX_TERMS: Final = 256
MAX_LIMIT: Final = 1000
"""`| limit N` at most this (the stores' page size bound, `store.base.MAX_QUERY_LIMIT`)."""
MAX_DURATION: Final = timedelta(days=3650)

LEVEL_FIELD: Final = "level"
TIME_FIELD: Final = "_time"
MESSAGE_FIELDS: Final = frozenset({"_msg", "message"})
BUILTIN_FIELDS: Final = frozenset({"service", "instance", "trace_id"})
RESERVED_FIELDS: Final = frozenset({LEVEL_FIELD, TIME_FIELD, *MESSAGE_FIELDS})
KEYWORDS: Final = frozenset({"AND", "OR", "NOT"})

FIELD_RE: Final = re.compile(r"([^\W\d][\w.\-]*)(:|>=|<=|>|<)")
INTEGER_RE: Final = re.compile(r"\d{1,7}")
NAME_RE: Final = re.compile(r"[^\W\d][\w.\-]*")
BARE_RE: Final = re.compile(r'[^\s()"|]+')
NUMBER_RE: Final = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
DURATION_RE: Final = re.compile(r"(\d{1,12})(ms|s|m|h|d|w)")
DATE_RE: Final = re.compile(r"\d{4}-\d\d-\d\d")
NO_SECONDS_RE: Final = re.compile(r"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d)((?:[Zz]|[+-]\d\d:\d\d)?)")
UNITS: Final = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
LEVELS_HINT: Final = "a level (" + ", ".join(LogLevel) + ", or an alias)"
