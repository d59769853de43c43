"""The search index of the Redis store: per-block summaries and bloom filters, hashed here.

The stream is cut into blocks of about `IndexOptions.block_entries` consecutive entries (a batch
goes whole into one block). `lua/append.lua` keeps, per block, a summary (first and last id,
count per severity and per service, counts per minute, severity, service and instance) and a
bloom filter over the block's tokens (`aygolog.query.log_tokens`), in the same EVALSHA as the
entries. `lua/scan.lua` reads the summaries and filters of the blocks in a query's range and
scans only the blocks that may hold a match.

Hashing happens here, never in Lua: a token's blake2b (16 bytes) picks two 32-bit words of the
filter and 4 bits inside each (a blocked bloom filter: two reads per
token per block, in one `BITFIELD` call). With the defaults (4,096 entries, 64 KiB filters, 4
bits per word) and about 3 new tokens per entry (12,000 per block), a token that is not in a
block passes its filter about once in 60,000 blocks (see `false_positive_rate`; the benchmark
measures it): a rare-token search over 10,000,000 entries (2,441 blocks) scans the blocks that
hold the token and almost never another. The filters cost 16 bytes per entry.
"""

from __future__ import annotations

import hashlib
import math
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aygolog.models import NewLog
from aygolog.query.tokens import tokens

__all__ = ["BloomHasher", "IndexOptions", "false_positive_rate"]

_CACHE_TOKENS: Final = 100_000
_BITS: Final = 4
"""Bits per word per token (two lookups of `_TWO_BITS`; a repeat sets fewer)."""

_PAIR: Final = struct.Struct(">II")
_QUAD: Final = struct.Struct("<IIII").unpack
_QUAD_OUT: Final = struct.Struct(">IIII").pack
_blake2b: Final = hashlib.blake2b
_TWO_BITS: Final = tuple(1 << (x & 31) | 1 << (x >> 5) for x in range(1024))
"""10 hash bits -> a mask of (up to) two of 32 bits; two lookups make a token's 4 bits."""
# ASCII text: one bytes.translate lower-cases word characters ([A-Za-z0-9_], what `\\w` is in
# ASCII) and blanks the rest, then split() gives the tokens: ~4x faster than the regex.
_ASCII_WORDS: Final = (
    bytes(
        (c | 0x20 if 65 <= c <= 90 else c) if chr(c).isalnum() or c == 95 else 32
        for c in range(128)
    )
    + b" " * 128
)
_SWAP: Final = array("I", [1]).tobytes()[0] == 1  # little-endian: words go out big-endian


@dataclass(frozen=True, slots=True)
class IndexOptions:
    """Shape of the search index (all writers of one stream must agree on the filter size)."""

    block_entries: int = 4096
    """A new block starts once the current one holds this many entries."""
    bloom_bytes: int = 65536
    """Size of each block's bloom filter; a power of two, at least 4."""
    block_budget: int = 64
    """At most this many block summaries are read by one server-side call."""

    def __post_init__(self) -> None:
        words = self.bloom_bytes // 4
        if self.bloom_bytes < 4 or words & (words - 1) or self.bloom_bytes % 4:
            raise ValueError("bloom_bytes must be a power of two, at least 4")
        if self.block_entries < 1 or self.block_budget < 1:
            raise ValueError("block_entries and block_budget must be positive")


class BloomHasher:
    """Token -> two (word, mask) probes of a blocked bloom filter, and the bits of a batch."""

    def __init__(self, options: IndexOptions) -> None:
        self._last = options.bloom_bytes // 4 - 1
        self._dense_from = options.bloom_bytes // 16
        """Distinct words from which the whole filter is sent (one BITOP) rather than pairs."""
        self._cache: dict[bytes, tuple[int, int, int, int]] = {}

    def probe(self, token: str) -> tuple[int, int, int, int]:
        """The two (word index, bit mask) probes of `token`, flat."""
        a, b, c, d = _QUAD(_blake2b(token.encode(), digest_size=16).digest())
        last, m = self._last, _TWO_BITS
        return a & last, m[b & 1023] | m[b >> 10 & 1023], c & last, m[d & 1023] | m[d >> 10 & 1023]

    def probes(self, clause: Iterable[str]) -> bytes:
        """A clause's probes as `lua/scan.lua` takes them: per token, two (word, mask)
        big-endian pairs."""
        return b"".join(_QUAD_OUT(*self.probe(t)) for t in sorted(clause))

    def batch_bits(self, logs: Sequence[NewLog]) -> bytes:
        """The filter bits of every token of `logs`, as `lua/append.lua` takes them: "d" and
        the whole filter, or "s" and (word, mask) pairs; "D"/"S" when the batch's text is not
        all ASCII."""
        parts: list[str] = []
        for log in logs:
            parts.append(log.message)
            parts.extend(v for v in log.attributes.values() if isinstance(v, str))
            if log.trace_id:
                parts.append(log.trace_id)
        # one tokenizer pass over the batch: the union of each entry's `log_tokens` ("\n" is
        # not a word character, so no token spans two values)
        text = "\n".join(parts)
        ascii_only = text.isascii()
        if ascii_only:
            found = set(text.encode().translate(_ASCII_WORDS).split())
        else:
            found = {t.encode() for t in tokens(text)}
        # the hot loop of the write path (~3 new tokens per entry): `probe`, inlined, with a
        # cache for the tokens that recur (words, user names, status texts); a big batch ORs
        # straight into the whole filter, a small one collects (word, mask) pairs
        dense = 2 * len(found) >= self._dense_from
        words: Any = array("I", bytes((self._last + 1) * 4)) if dense else {}
        last, m, quad, blake = self._last, _TWO_BITS, _QUAD, _blake2b
        cache = self._cache
        if len(cache) > _CACHE_TOKENS:  # unique tokens (request ids) would grow it forever
            cache.clear()
        known = cache.get
        for token in found:
            probe = known(token)
            if probe is None:
                a, b, c, d = quad(blake(token, digest_size=16).digest())
                probe = cache[token] = (
                    a & last,
                    m[b & 1023] | m[b >> 10 & 1023],
                    c & last,
                    m[d & 1023] | m[d >> 10 & 1023],
                )
            a, b, c, d = probe
            if dense:
                words[a] |= b
                words[c] |= d
            else:
                words[a] = words.get(a, 0) | b
                words[c] = words.get(c, 0) | d
        # upper case: the batch has non-ASCII text, which the scan must leave to Python
        if not dense:
            kind = b"s" if ascii_only else b"S"
            return kind + b"".join(_PAIR.pack(w, mask) for w, mask in words.items())
        filter_words: array[int] = words
        if _SWAP:
            filter_words.byteswap()
        return (b"d" if ascii_only else b"D") + filter_words.tobytes()


def false_positive_rate(options: IndexOptions, tokens_per_block: int) -> float:
    """The chance that a token absent from a block passes its filter, when the block holds
    `tokens_per_block` distinct tokens (each word's load is Poisson; bits may repeat; the two
    probes are taken as independent)."""
    return _word_rate(options, 2 * tokens_per_block) ** 2


def _word_rate(options: IndexOptions, probes: int) -> float:
    k = _BITS
    load = probes / (options.bloom_bytes // 4)
    rate = 0.0
    weight = math.exp(-load)
    for others in range(1, 80):
        weight *= load / others
        # each other token sets each bit of the word with chance 1 - (31/32)^k
        bit_set = 1 - (1 - 1 / 32) ** (k * others)
        rate += weight * bit_set**k
    return rate
