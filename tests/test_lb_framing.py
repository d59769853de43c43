"""The sans-I/O request limits of the LB (`aygolog.lb.framing`): tables and hypothesis."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aygolog.lb.framing import ChunkedScanner, FramingError, HeadScanner

HEAD = b"GET /api/log?limit=5 HTTP/1.1\r\nHost: lb\r\nAccept: */*\r\n\r\n"


def scanner() -> HeadScanner:
    return HeadScanner(max_head=1000, max_request_line=200, max_header_line=300)


def test_a_whole_head_in_one_read_is_handed_over_with_what_follows() -> None:
    assert scanner().feed(HEAD) == (HEAD, b"")
    assert scanner().feed(HEAD + b"body") == (HEAD, b"body")


@given(st.lists(st.integers(min_value=1, max_value=len(HEAD)), max_size=8))
def test_a_head_in_any_pieces_is_handed_over_whole(cuts: list[int]) -> None:
    data = HEAD + HEAD
    points = sorted({0, *cuts, len(data)})
    heads = []
    head_scanner = scanner()
    for start, end in itertools.pairwise(points):
        piece = data[start:end]
        while piece:
            got = head_scanner.feed(piece)
            if got is None:
                break
            head, piece = got
            heads.append(head)
    assert heads[0] == HEAD
    assert b"".join(heads) + bytes(head_scanner._buffer) == data


@pytest.mark.parametrize(
    ("pieces", "status", "words"),
    [
        # A request line that does not end: refused as soon as it is over the limit.
        ([b"GET /" + b"a" * 250], 414, "request line too long"),
        ([b"GET /" + b"a" * 100, b"a" * 100], 414, "request line too long"),
        # One header line over its limit, named.
        ([b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 400], 431, "request header X-Big too large"),
        ([b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 400 + b"\r\n\r\n"], 431, "X-Big"),
        # Many small headers: the whole head is over its limit, even without an end.
        ([b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 200], 431, "request headers too large"),
        ([b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 200 + b"\r\n"], 431, "headers too large"),
        # Empty lines before the request line count too.
        ([b"\r\n" * 600], 431, "headers too large"),
    ],
)
def test_limits_hold_on_the_bytes_received(pieces: list[bytes], status: int, words: str) -> None:
    head_scanner = scanner()
    for piece in pieces[:-1]:
        assert head_scanner.feed(piece) is None
    with pytest.raises(FramingError) as caught:
        head_scanner.feed(pieces[-1])
    assert caught.value.status == status
    assert words in caught.value.message
    assert not head_scanner.pending  # nothing kept after a refusal


def test_a_huge_header_is_refused_within_the_limit_plus_one_read() -> None:
    head_scanner = HeadScanner()  # 64 KiB
    fed = 0
    read = b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 1000
    with contextlib.suppress(FramingError):
        while head_scanner.feed(read) is None:
            fed += len(read)
            read = b"b" * 65536
    assert not head_scanner.pending
    assert fed <= 64 * 1024


def test_bare_lf_heads_end_so_that_the_parser_can_refuse_them() -> None:
    data = b"GET / HTTP/1.1\nHost: a\n\nrest"
    assert scanner().feed(data) == (b"GET / HTTP/1.1\nHost: a\n\n", b"rest")


def test_empty_lines_before_a_request_are_part_of_its_head() -> None:
    head_scanner = scanner()
    got = head_scanner.feed(b"\r\n")
    assert got is None
    assert head_scanner.feed(HEAD) == (b"\r\n" + HEAD, b"")


BODY = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"


@pytest.mark.parametrize("after", [b"", b"GET / HTTP/1.1\r\n\r\n"])
def test_chunked_body_end_is_found(after: bytes) -> None:
    assert ChunkedScanner().feed(BODY + after) == len(BODY)


@given(st.lists(st.integers(min_value=1, max_value=len(BODY)), max_size=10))
def test_chunked_body_end_is_found_in_any_pieces(cuts: list[int]) -> None:
    data = BODY + b"NEXT"
    points = sorted({0, *cuts, len(data)})
    chunked = ChunkedScanner()
    for start, end in itertools.pairwise(points):
        found = chunked.feed(data[start:end])
        if found >= 0:
            assert start + found == len(BODY)
            return
    raise AssertionError("the end was not found")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"zz\r\n", 400, "malformed chunk size"),
        (b"-1\r\n", 400, "malformed chunk size"),
        (b"5" + b";x" * 3000, 400, "chunk size line too long"),
        (b"0\r\n" + b"X-T: 1\r\n" * 20_000, 431, "request trailers too large"),
    ],
)
def test_chunked_framing_errors(body: bytes, status: int, words: str) -> None:
    with pytest.raises(FramingError) as caught:
        ChunkedScanner().feed(body)
    assert (caught.value.status, words in caught.value.message) == (status, True)
