"""Sans-I/O limits on what a client sends, applied to the bytes received before httptools sees them.

`HeadScanner` collects one request head (request line, header lines, the empty line) and refuses
it as soon as the bytes received exceed a limit: the request line (414), one header line (431),
the whole head (431). It hands the head over in one piece, so httptools parses each head in one
call: its header buffers grow by concatenation, which is quadratic when one header arrives in many
reads (a 64 MiB header froze the LB for seconds), and nothing else bounded them.

`ChunkedScanner` finds where a chunked request body ends, so that what follows it (a pipelined
request) goes through the head scanner again; it bounds chunk-size lines and the trailer section.

Both only find boundaries and count: meaning (validation, header values, body bytes) stays
httptools' job, so a disagreement can cost at worst a 4xx, never a different reading of a request.
The plain case (a whole head of a few KiB in one read) costs one `bytes.find`.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["ChunkedScanner", "FramingError", "HeadScanner"]

_HEAD_END: Final = b"\r\n\r\n"
_CRLF: Final = b"\r\n"
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")


class FramingError(Exception):
    """The client's bytes break a limit or the framing: answer `status` with `message`, close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _field_name(line: bytes | bytearray) -> str:
    name = bytes(line[:64]).partition(b":")[0].strip()
    return name.decode("latin-1") if name and name.isascii() else "?"


class HeadScanner:
    """Collects request heads from the bytes received, within limits.

    Args:
        max_head: largest head (request line + headers + the empty line), in bytes; 431 beyond.
        max_request_line: largest request line, in bytes; 414 beyond (its URL is too long).
        max_header_line: largest header line, in bytes; 431 beyond.
    """

    __slots__ = ("_buffer", "_fast", "_line_start", "_search", "_seen_line", "max_head",
                 "max_header_line", "max_request_line")  # fmt: skip

    def __init__(
        self, *, max_head: int = 64 * 1024, max_request_line: int = 16 * 1024,
        max_header_line: int = 16 * 1024,
    ) -> None:  # fmt: skip
        self.max_head = max_head
        self.max_request_line = max_request_line
        self.max_header_line = max_header_line
        # A head up to this size cannot break any limit: no need to look at its lines.
        self._fast = min(max_head, max_request_line, max_header_line)
        self._buffer = bytearray()
        self._line_start = 0
        self._search = 0
        self._seen_line = False

    @property
    def pending(self) -> bool:
        """Whether part of a head has been received and kept."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Take received bytes: (the complete head, the bytes after it), or None (kept).

        Raises:
            FramingError: a limit is broken (the bytes kept are dropped).
        """
        if not self._buffer:
            end = data.find(_HEAD_END)
            if 0 < end <= self._fast - 4 and data[0] not in _CRLF:
                end += 4
                return (data, b"") if end == len(data) else (data[:end], data[end:])
        buf = self._buffer
        buf += data
        try:
            return self._scan(buf)
        except FramingError:
            self.reset()
            raise

    def reset(self) -> None:
        """Forget the part of a head kept so far."""
        self._buffer = bytearray()
        self._line_start = self._search = 0
        self._seen_line = False

    def _scan(self, buf: bytearray) -> tuple[bytes, bytes] | None:
        start = self._line_start
        search = self._search
        while True:
            newline = buf.find(b"\n", search)
            if newline < 0:
                self._line_start, self._search = start, len(buf)
                self._check_line(buf, start, len(buf) - start)
                if len(buf) > self.max_head:
                    raise FramingError(
                        431, f"request headers too large (over {self.max_head} bytes)"
                    )
                return None
            length = newline + 1 - start
            if length == 1 or (length == 2 and buf[start] == 0x0D):
                if self._seen_line:
                    end = newline + 1
                    if end > self.max_head:
                        raise FramingError(
                            431, f"request headers too large (over {self.max_head} bytes)"
                        )
                    head, rest = bytes(buf[:end]), bytes(buf[end:])
                    self.reset()
                    return head, rest
                # An empty line before the request line is skipped (RFC 9112, 2.2); it counts.
            else:
                self._check_line(buf, start, length, whole=True)
                self._seen_line = True
            start = search = newline + 1

    def _check_line(self, buf: bytearray, start: int, length: int, *, whole: bool = False) -> None:
        if not self._seen_line:
            if whole and buf.find(b" HTTP/", start, start + length) < 0:
                # HTTP/0.9 (`GET /` and nothing more) would otherwise wait for an empty line.
                raise FramingError(
                    400, "the request line has no HTTP version (HTTP/0.9 is not supported)"
                )
            if length > self.max_request_line:
                raise FramingError(
                    414, f"request line too long (over {self.max_request_line} bytes)"
                )
        elif length > self.max_header_line:
            name = _field_name(buf[start : start + 64])
            raise FramingError(
                431, f"request header {name} too large (over {self.max_header_line} bytes)"
            )


# ChunkedScanner states
_SIZE: Final = 0  # in a chunk-size line
_DATA: Final = 1  # in chunk data (and its CRLF)
_TRAILER: Final = 2  # in the trailer section, after the last chunk


class ChunkedScanner:
    """Finds the end of a chunked request body in the bytes received.

    Args:
        max_line: largest chunk-size line (size and extensions), in bytes; 400 beyond.
        max_trailer: largest trailer section, in bytes; 431 beyond.
    """

    __slots__ = ("_left", "_line", "_state", "_trailer", "max_line", "max_trailer")

    def __init__(self, *, max_line: int = 4096, max_trailer: int = 64 * 1024) -> None:
        self.max_line = max_line
        self.max_trailer = max_trailer
        self._state = _SIZE
        self._line = bytearray()
        self._left = 0
        self._trailer = 0

    def reset(self) -> None:
        """Expect a new body."""
        self._state = _SIZE
        self._line = bytearray()
        self._left = 0
        self._trailer = 0

    def feed(self, data: bytes) -> int:
        """How many bytes of `data` end the body, or -1 if all of them belong to it.

        Raises:
            FramingError: a malformed chunk size, or a limit broken.
        """
        pos = 0
        size = len(data)
        while pos < size:
            state = self._state
            if state == _DATA:
                step = min(self._left, size - pos)
                self._left -= step
                pos += step
                if not self._left:
                    self._state = _SIZE
                continue
            newline = data.find(b"\n", pos)
            end = size if newline < 0 else newline + 1
            line = self._line
            line += data[pos:end]
            pos = end
            if state == _SIZE:
                if len(line) > self.max_line:
                    raise FramingError(
                        400, f"chunk size line too long (over {self.max_line} bytes)"
                    )
                if newline < 0:
                    return -1
                text = bytes(line).partition(b";")[0].strip()
                self._line = bytearray()
                if not _HEX.fullmatch(text):
                    raise FramingError(400, "malformed chunk size in the request body")
                chunk = int(text, 16)
                if chunk:
                    self._state, self._left = _DATA, chunk + 2
                else:
                    self._state = _TRAILER
            else:
                if self._trailer + len(line) > self.max_trailer:
                    raise FramingError(
                        431, f"request trailers too large (over {self.max_trailer} bytes)"
                    )
                if newline < 0:
                    return -1
                self._trailer += len(line)
                empty = len(line) <= 2 and not line.strip(b"\r\n")
                self._line = bytearray()
                if empty:
                    self.reset()
                    return pos
        return -1
