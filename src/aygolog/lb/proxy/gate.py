"""API keys and CORS at the proxy (only when configured): the gate before a request is proxied,
and the answers to preflights."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aygolog.ingest import SEQ_PATHS
from aygolog.lb.proxy.wire import (
    _CORS_ANY,
    _CORS_MAX_AGE,
    _CORS_METHODS,
    _READ,
    _READ_METHODS,
    _WRITE,
    _Request,
    _status_line,
)

if TYPE_CHECKING:
    from aygolog.lb.proxy.client import _Client


def _allow_origin(client: _Client, req: _Request, path: str) -> bool:
    """Whether CORS applies to `path`; if so, set what the answer says about the origin."""
    server = client.server
    if not server._cors_path(path):
        return False
    req.cors_vary = not server._cors_any
    origin = req.origin
    if origin is not None and (server._cors_any or origin in server._cors_origins):
        req.cors_origin = _CORS_ANY if server._cors_any else origin
    return True


def _refuse_preflight(client: _Client, req: _Request, path: str) -> bool | None:
    """403 for a CORS preflight to a path without CORS (registration, control plane)."""
    if req.origin is None or not any(
        name == b"access-control-request-method" for name, _ in req.headers
    ):
        return None  # not a preflight
    return client._error(req, 403, f"CORS is not allowed on {path}")


def _gate(client: _Client, req: _Request, method: str, path: str) -> bool | None:
    """CORS and API-key checks of a proxied request: an answer (keep-alive), or None to
    proxy it."""
    server = client.server
    origin = req.origin
    # (`_allow_origin` first: it also sets the CORS headers of the answer.)
    if (
        server._cors
        and client._allow_origin(req, path)
        and method == "OPTIONS"
        and origin is not None
    ):
        wanted_method = wanted_headers = None
        for name, value in req.headers:
            if name == b"access-control-request-method":
                wanted_method = value
            elif name == b"access-control-request-headers":
                wanted_headers = value
        if wanted_method is not None:
            return client._preflight(req, origin, wanted_headers)
    keys = server._api_keys
    if keys is not None:
        key: bytes | None = None
        for name, value in req.headers:
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    key = rest.strip()
            elif name == b"x-api-key" or (name == b"x-seq-apikey" and path in SEQ_PATHS):
                key = value.strip()
        if not key and path in SEQ_PATHS:  # Seq's clients may put the key in the URL
            key = _seq_url_key(req.url)
        challenge = b"www-authenticate: Bearer\r\n"
        if not key:
            return client._error(
                req,
                401,
                "an API key is needed: Authorization: Bearer <key> or X-Api-Key: <key>",
                extra=challenge,
            )
        scope = keys.get(key)
        if scope is None:
            return client._error(req, 401, "unknown API key", extra=challenge)
        if not scope & (_READ if method in _READ_METHODS else _WRITE):
            needed = "read" if method in _READ_METHODS else "write"
            return client._error(
                req, 403, f"this API key may not {needed} ({method} needs the {needed} scope)"
            )
    return None


def _seq_url_key(url: bytes) -> bytes | None:
    """The `apiKey` parameter of a request target's query string (Seq's `?apiKey=`)."""
    mark = url.find(b"?")
    if mark < 0 or b"apiKey=" not in url:
        return None
    for name, value in parse_qsl(url[mark + 1 :].decode("latin-1")):
        if name == "apiKey" and value:
            return value.encode("latin-1")
    return None


def _preflight(client: _Client, req: _Request, origin: bytes, wanted_headers: bytes | None) -> bool:
    """Answer a CORS preflight: 204 for an allowed origin, 403 otherwise."""
    if req.cors_origin is None:
        return client._error(
            req,
            403,
            f"origin {origin.decode('latin-1')!r} is not allowed (AYGOLOG_CORS_ORIGINS)",
        )
    keep = req.keep_alive and not client.server.closing and not client.eof
    parts = [
        _status_line(204),
        b"access-control-allow-origin: ",
        req.cors_origin,
        b"\r\naccess-control-allow-methods: ",
        _CORS_METHODS,
        b"\r\naccess-control-max-age: %d\r\n" % _CORS_MAX_AGE,
        b"vary: origin, access-control-request-method, access-control-request-headers\r\n",
        b"x-request-id: ",
        req.request_id,
        b"\r\n",
    ]
    if wanted_headers:
        parts += (b"access-control-allow-headers: ", wanted_headers, b"\r\n")
    if not keep:
        parts.append(b"connection: close\r\n")
    elif not req.version11:
        parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    client._write(b"".join(parts))
    return keep
