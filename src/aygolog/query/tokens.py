"""The one tokenizer: what a "word" is, for whole-word matching and for the search index.

A token is a maximal run of word characters (`\\w`: letters, digits, underscore, in any
script), lower-cased. `log_tokens` says which tokens of an entry are indexed: the message's,
each string attribute value's and the trace id's (numbers and booleans are not tokenized).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from aygolog.models import AttributeValue

__all__ = ["log_tokens", "tokens"]

_WORD: Final = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """The tokens of `text`, in order, lower-cased (repeats kept)."""
    return _WORD.findall(text.lower())


def log_tokens(
    message: str, attributes: Mapping[str, AttributeValue], trace_id: str | None
) -> set[str]:
    """The indexed tokens of one entry: message, string attribute values, trace id."""
    found = set(_WORD.findall(message.lower()))
    for value in attributes.values():
        if isinstance(value, str):
            found.update(_WORD.findall(value.lower()))
    if trace_id:
        found.update(_WORD.findall(trace_id.lower()))
    return found
