"""The search index of the Redis store: per-block summaries and bloom filters, hashed here.

The stream is cut into blocks of about `IndexOptions.block_entries` consecutive entries (a batch
goes whole into one block). `lua/append.lua` keeps, per block, a summary (first and last id,
count per severity and per service, counts per minute, severity, service and instance) and a
bloom filter over the block's tokens (`aygolog.query.log_tokens`), in the same EVALSHA as the
entries. `lua/scan.lua` reads the summaries and filters of the blocks in a query's range and
scans only the blocks that may hold a match.

Hashing happens here, never in Lua: two CRC-32s of a token (of its bytes, and of its bytes
reversed) each pick one 32-bit word of the filter (low bits) and 4 distinct bits inside it (top
15 bits, through a table of 4-bit masks): a blocked bloom filter, two reads per token per block
in one `BITFIELD` call. Format 2 (format 1, before 2026-12-06, used blake2b): the hash is the
on-disk format of the filters, so a change makes the existing filters wrong. With the defaults
(4,096 entries, 64 KiB filters, 4 bits per word) and about 3 new tokens per entry (12,000 per
block), a token that is not in a block passes its filter about once in 90,000 blocks (see
`false_positive_rate`; the benchmark measures it): a rare-token search over 10,000,000 entries
(2,441 blocks) scans the blocks that hold the token and almost never another.
The filters cost 16 bytes per entry.
"""

from __future__ import annotations

import math
import struct
import zlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Final

from aygolog.models import NewLog
from aygolog.query.tokens import tokens

__all__ = ["FILTER_FORMAT", "BloomHasher", "IndexOptions", "false_positive_rate"]

FILTER_FORMAT: Final = 2
"""The filters' hash: 2 is the CRC-32 pair (1, blake2b, was never released)."""

_CACHE_TOKENS: Final = 100_000
_BITS: Final = 4
"""Bits per word per token (always 4 distinct ones)."""
_MASK_SHIFT: Final = 17
"""A CRC's top 15 bits pick its mask; the bits below pick the word (so at most 2**17 words)."""
_MAX_BLOOM_BYTES: Final = 4 << _MASK_SHIFT

_PAIR: Final = struct.Struct(">II")
_QUAD_OUT: Final = struct.Struct(">IIII").pack
_crc32: Final = zlib.crc32


def _masks() -> tuple[int, ...]:
    # 32,768 of the 35,960 ways to pick 4 of 32 bits, evenly strided (not the first ones, which
    # would favour the low bits): 15 hash bits make a mask, so one CRC-32 gives word and mask
    every = [sum(1 << b for b in bits) for bits in combinations(range(32), _BITS)]
    count = 1 << (32 - _MASK_SHIFT)
    return tuple(every[i * len(every) // count] for i in range(count))


_MASKS: Final = _masks()
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
    """Size of each block's bloom filter; a power of two, from 4 to 512 KiB."""
    block_budget: int = 64
    """At most this many block summaries are read by one server-side call."""

    def __post_init__(self) -> None:
        words = self.bloom_bytes // 4
        if self.bloom_bytes < 4 or words & (words - 1) or self.bloom_bytes % 4:
            raise ValueError("bloom_bytes must be a power of two, at least 4")
        if self.bloom_bytes > _MAX_BLOOM_BYTES:
            raise ValueError(f"bloom_bytes must be at most {_MAX_BLOOM_BYTES}")
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
        raw = token.encode()
        h, g = _crc32(raw), _crc32(raw[::-1])
        last, shift = self._last, _MASK_SHIFT
        return h & last, _MASKS[h >> shift], g & last, _MASKS[g >> shift]

    def probes(self, clause: Iterable[str]) -> bytes:
        """A clause's probes as `lua/scan.lua` takes them: per token, two (word, mask)
        big-endian pairs."""
        return b"".join(_QUAD_OUT(*self.probe(t)) for t in sorted(clause))

    def batch_bits(self, logs: Sequence[NewLog]) -> bytes:
        """The filter bits of every token of `logs`, as `lua/append.lua` takes them: "d" and
        the whole filter, or "s" and (word, mask) pairs; "D"/"S" when the batch's text is not
        all ASCII."""
        parts: list[str] = []
        add = parts.append
        for log in logs:  # a plain loop: a generator per entry costs more than the hashing
            add(log.message)
            for value in log.attributes.values():
                if isinstance(value, str):
                    add(value)
            if log.trace_id:
                add(log.trace_id)
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
        last, masks, crc, shift = self._last, _MASKS, _crc32, _MASK_SHIFT
        cache = self._cache
        if len(cache) > _CACHE_TOKENS:  # unique tokens (request ids) would grow it forever
            cache.clear()
        known = cache.get
        for token in found:
            probe = known(token)
            if probe is None:
                h, g = crc(token), crc(token[::-1])
                probe = cache[token] = (h & last, masks[h >> shift], g & last, masks[g >> shift])
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
    `tokens_per_block` distinct tokens (each word's load is Poisson; each probe sets 4 distinct
    bits; the two probes are taken as independent)."""
    return _word_rate(options, 2 * tokens_per_block) ** 2


def _word_rate(options: IndexOptions, probes: int) -> float:
    k = _BITS
    load = probes / (options.bloom_bytes // 4)
    rate = 0.0
    weight = math.exp(-load)
    for others in range(1, 80):
        weight *= load / others
        # the chance that `others` random 4-bit masks cover ours (inclusion-exclusion over
        # the bits of ours that none of them sets)
        rate += weight * sum(
            (-1) ** j * math.comb(k, j) * (math.comb(32 - j, k) / math.comb(32, k)) ** others
            for j in range(k + 1)
        )
    return rate
