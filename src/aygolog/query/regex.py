"""User regular expressions, run in linear time by RE2 (the `google-re2` wheel).

A regex in a query runs on the server against every candidate entry, so a backtracking engine
(Python's `re`) would let one query such as `~"(a+)+$"` or `~".*.*.*x"` hold a worker for
minutes on a 64 KiB message. RE2 matches in time linear in the text, refuses what it cannot do
that way (backreferences, lookarounds), and bounds its memory (`max_mem`). RE2 comes with the
`server` extra; without it, queries still parse (only the length is checked) but a plan with a
regex is refused rather than run on a backtracking engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Final

__all__ = ["MAX_PATTERN_CHARS", "RegexError", "check_regex", "compile_regex"]

MAX_PATTERN_CHARS: Final = 256
_MAX_MEM: Final = 1 << 20
"""RE2's memory budget per pattern; a pattern whose automaton needs more is refused."""


class RegexError(ValueError):
    """A pattern is too long, invalid, or cannot run here; the message says which."""


def _re2() -> Any:
    try:
        return importlib.import_module("re2")
    except ImportError:
        return None


_RE2: Final = _re2()


def _options() -> Any:
    options = _RE2.Options()
    options.case_sensitive = False
    options.log_errors = False  # RE2 would print each refused pattern to stderr
    options.max_mem = _MAX_MEM
    options.never_capture = True  # only "does it match" is asked: no groups to keep
    return options


def check_regex(pattern: str) -> None:
    """Refuse a pattern that is too long or (when RE2 is here) does not compile.

    Raises:
        RegexError: saying why.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexError(f"a regular expression of at most {MAX_PATTERN_CHARS} characters")
    if not pattern:
        raise RegexError("a non-empty regular expression")
    if _RE2 is not None:
        _compile(pattern)


def _compile(pattern: str) -> Any:
    try:
        return _RE2.compile(pattern, _options())
    except _RE2.error as exc:
        detail = exc.args[0] if exc.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise RegexError(f"a valid RE2 regular expression ({detail})") from None


def compile_regex(pattern: str) -> Callable[[str], bool]:
    """A case-insensitive search for `pattern`: text -> whether it occurs.

    Raises:
        RegexError: the pattern is refused (see `check_regex`) or RE2 is not installed.
    """
    check_regex(pattern)
    if _RE2 is None:
        raise RegexError(
            "regular expressions to be run by RE2: install aygolog[server] (google-re2)"
        )
    compiled = _compile(pattern)
    low = getattr(compiled, "_regexp", None)
    anchor = getattr(getattr(low, "Anchor", None), "UNANCHORED", None)
    if low is None or anchor is None:  # another google-re2 layout: the public, slower call
        search = compiled.search
        return lambda text: search(text) is not None
    # The public search() decodes match offsets back to str positions and builds a Match
    # (4x the time of the match itself, measured); only "is there one" is wanted here.
    match = low.Match

    def found(text: str) -> bool:
        data = text.encode("utf-8", "surrogatepass")
        return bool(match(anchor, data, 0, len(data))[0][0] >= 0)

    return found
