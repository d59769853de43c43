"""HTTP/1.1 constants and small helpers of the proxy, and `_Request`, one parsed client request."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    pass


# -- wire constants -----------------------------------------------------------------------------

_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the proxy drops or sets itself.
_REQUEST_OWN: Final = _HOP_BY_HOP | {
    b"content-length",
    b"expect",
    b"x-request-id",
    b"x-forwarded-for",
}
_FORWARDED_PROTO_HOST: Final = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})
# Response headers the proxy drops or sets itself.
_RESPONSE_OWN: Final = _HOP_BY_HOP | {b"content-length", b"x-served-by", b"x-request-id"}
# A response header line the proxy must drop or change (hop-by-hop, its own, CORS); a response
# head without one goes to the client as received, with the proxy's headers added.
_RESPONSE_CHANGED: Final = re.compile(
    rb"\n(?:connection|keep-alive|proxy-[^:\r\n]*|te|trailer|transfer-encoding|upgrade|"
    rb"x-served-by|x-request-id|access-control-[^:\r\n]*)[ \t]*:",
    re.IGNORECASE,
)
_CONNECTION_KEEPS: Final = frozenset({b"keep-alive", b"close"})
# What a plain request head gets added (`_Client._upstream_request`), then its body.
_PLAIN_ADDED: Final = (
    b"%sx-forwarded-for: %s\r\nx-forwarded-proto: %s\r\nx-forwarded-host: %s\r\n"
    b"x-request-id: %s\r\n\r\n%s"
)
# Request headers the proxy acts on or relies on: naming one in `Connection` does not strip it
# (`Connection: host` must not send a request upstream without its Host).
_END_TO_END: Final = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"idempotency-key", b"authorization",
     b"x-api-key"}
)  # fmt: skip
_READ: Final = 1
_WRITE: Final = 2
_SCOPE_BITS: Final = {"read": _READ, "write": _WRITE, "read+write": _READ | _WRITE}
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_CORS_EXPOSE: Final = b"access-control-expose-headers: x-served-by, x-request-id, retry-after\r\n"
_CORS_ANY: Final = b"*"
_CORS_METHODS: Final = b"GET, HEAD, POST, OPTIONS"
_CORS_MAX_AGE: Final = 600
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
_IDEMPOTENT: Final = frozenset({"GET", "HEAD"})
_METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}
# What `on_headers_complete` does with a request header (one dict lookup per header; most
# headers are none of these).
_H_LENGTH: Final = 1
_H_CODING: Final = 2
_H_HOST: Final = 3
_H_XFF: Final = 4
_H_REQUEST_ID: Final = 5
_H_IDEMPOTENCY: Final = 6
_H_ACCEPT: Final = 7
_H_EXPECT: Final = 8
_H_CONNECTION: Final = 9
_H_ORIGIN: Final = 10
_H_PROTO: Final = 11
_H_FORWARDED_HOST: Final = 12
_H_HOP: Final = 13  # another hop-by-hop header: dropped
_HEADER_KINDS: Final = {
    b"content-length": _H_LENGTH,
    b"transfer-encoding": _H_CODING,
    b"host": _H_HOST,
    b"x-forwarded-for": _H_XFF,
    b"x-request-id": _H_REQUEST_ID,
    b"idempotency-key": _H_IDEMPOTENCY,
    b"accept": _H_ACCEPT,
    b"expect": _H_EXPECT,
    b"connection": _H_CONNECTION,
    b"origin": _H_ORIGIN,
    b"x-forwarded-proto": _H_PROTO,
    b"x-forwarded-host": _H_FORWARDED_HOST,
    **{name: _H_HOP for name in _HOP_BY_HOP if name not in (b"connection", b"transfer-encoding")},
}
_NO_EXCLUDE: Final[set[str]] = set()  # `Picker.pick` of a first attempt (never changed)
_REQUEST_ID: Final = re.compile(rb"[\x21-\x7e]{1,200}")
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_SSE: Final = b"text/event-stream"
_LINGER: Final = 2.0  # seconds to drain a rejected client's input before closing (as nginx)
_LINGER_BYTES: Final = 1024 * 1024  # ...reading at most this much of it (413: a largest body)

# Response framing towards the client.
_FRAME_NONE: Final = 0  # no body (HEAD, 1xx, 204, 304)
_FRAME_LENGTH: Final = 1  # Content-Length, body passed as is
_FRAME_CHUNKED: Final = 2  # re-framed as chunked
_FRAME_CLOSE: Final = 3  # HTTP/1.0 client: body delimited by closing the connection


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def _merge_vary(values: list[bytes]) -> bytes:
    """One `Vary` value: the instance's tokens (first spelling kept, no repeats) and `origin`."""
    seen: set[bytes] = set()
    tokens: list[bytes] = []
    for value in [*values, b"origin"]:
        for token in value.split(b","):
            token = token.strip()
            if token and token.lower() not in seen:
                seen.add(token.lower())
                tokens.append(token)
    return b"*" if b"*" in seen else b", ".join(tokens)


def _tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")} - {b""}


def _refusal(
    version: str, version11: bool, hosts: int, chunked: bool, expect: bytes | None
) -> tuple[int, str] | None:
    """Why a parsed request head is refused (status, message), or None (RFC 9110/9112)."""
    if not version11 and version != "1.0":
        if version == "0.9":
            return 400, "the request line has no HTTP version (HTTP/0.9 is not supported)"
        return 505, f"HTTP/{version} is not supported: send HTTP/1.1"
    if hosts > 1:
        return 400, "Host: more than one Host header"
    if not hosts and version11:
        return 400, "Host: an HTTP/1.1 request needs a Host header"
    if chunked and not version11:
        return 400, "Transfer-Encoding: not allowed in an HTTP/1.0 request"
    if expect is not None and expect.strip().lower() != b"100-continue":
        return 417, "Expect: only 100-continue is supported"
    return None


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing this connection's input."""


class _Request:
    """One client request, parsed (its body buffered)."""

    __slots__ = (
        "body",
        "chunks",
        "connection_tokens",
        "continue_sent",
        "cors_origin",
        "cors_vary",
        "event_stream",
        "expect_continue",
        "forwarded_host",
        "forwarded_proto",
        "has_idempotency_key",
        "head",
        "headers",
        "host",
        "keep_alive",
        "method",
        "origin",
        "plain",
        "raw",
        "reject",
        "request_id",
        "size",
        "url",
        "version11",
        "xff",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.raw = b""
        """The head as received (the request line, the header lines and the empty line)."""
        self.plain = False
        """The head may go to the instance as received, with the proxy's headers added: HTTP/1.1,
        an origin-form target, and no header the proxy drops or sets itself."""
        self.headers: list[tuple[bytes, bytes]] = []
        self.version11 = True
        self.keep_alive = False
        self.chunks: list[bytes] = []
        self.body = b""
        self.size = 0
        self.reject: tuple[int, str] | None = None
        self.expect_continue = False
        self.continue_sent = False
        self.host: bytes | None = None
        self.xff: bytes | None = None
        self.request_id = b""
        self.has_idempotency_key = False
        self.event_stream = False
        self.connection_tokens: set[bytes] | None = None
        self.forwarded_proto = False
        self.forwarded_host = False
        self.head = False
        self.origin: bytes | None = None
        """The request's `Origin` header."""
        self.cors_origin: bytes | None = None
        """What `Access-Control-Allow-Origin` says (`*` or the origin), when CORS applies to the
        request and its origin is allowed."""
        self.cors_vary = False
        """The answer depends on `Origin` (CORS restricted to a list): say so in `Vary`."""


class _IdleTimer:
    """Calls `expire` once nothing has been `touch`ed for `timeout` seconds."""

    __slots__ = ("_expire", "_handle", "_loop", "last", "timeout")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float, expire: Callable[[], None]
    ) -> None:
        self._loop = loop
        self.timeout = timeout
        self._expire = expire
        self.last = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_later(timeout, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        idle = self._loop.time() - self.last
        if idle >= self.timeout:
            self._handle = None
            self._expire()
        else:
            self._handle = self._loop.call_later(self.timeout - idle, self._check)
