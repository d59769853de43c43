"""HTTP plumbing shared by the Log API and the load balancer: JSON responses and error mapping.

Every error answer has the body of `aygolog.models.ErrorBody`:
`{"error": "...", "detail": [{"field": ..., "index": ..., "reason": ...}], "retry_after": ...}`.
Nothing a client sends produces a stack trace: unexpected exceptions are logged here and answered
with a plain 500.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema

from aygolog.errors import (
    AuthError,
    AygologError,
    Conflict,
    MalformedInput,
    NotFound,
    RateLimited,
    Unavailable,
    ValidationError,
)
from aygolog.models import ErrorBody, FieldError

__all__ = [
    "JSON",
    "error_response",
    "exception_handlers",
    "json_response",
    "request_body",
]

log = logging.getLogger("aygolog.web")
JSON: Final = "application/json"
_encode: Final = msgspec.json.Encoder().encode


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response[bytes]:
    """A JSON response encoded by msgspec."""
    return Response(_encode(content), status_code=status_code, media_type=JSON, headers=headers)


def error_response(
    status_code: int,
    error: str,
    detail: Sequence[FieldError] = (),
    *,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    """A JSON error answer; a `Retry-After` header too when `retry_after` is given."""
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    body = ErrorBody(error=error, detail=list(detail), retry_after=retry_after)
    return json_response(body, status_code, all_headers)


def _aygolog_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, MalformedInput):
        return error_response(400, "malformed request body", exc.errors)
    if isinstance(exc, ValidationError):
        return error_response(422, "invalid input", exc.errors)
    if isinstance(exc, Conflict):
        return error_response(409, str(exc))
    if isinstance(exc, NotFound):
        return error_response(404, str(exc))
    if isinstance(exc, AuthError):
        return error_response(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, RateLimited):
        return error_response(429, str(exc), retry_after=exc.retry_after or 1.0)
    if isinstance(exc, Unavailable):
        return error_response(503, str(exc), retry_after=exc.retry_after or 1.0)
    return _unexpected(request, exc)


def _http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    detail: list[FieldError] = []
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        detail += (
            FieldError(
                field=str(item.get("key") or "$"), reason=str(item.get("message") or "invalid")
            )
            for item in exc.extra
            if isinstance(item, dict)
        )
    message = exc.detail or "error"
    if isinstance(exc, ValidationException):
        message = "invalid request"
    headers = dict(exc.headers or {})
    if exc.status_code == 413 and not detail:
        message = "request body too large"
    return error_response(exc.status_code, message, detail, headers=headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; the server log has the details")


ExceptionHandler = Callable[[Request[Any, Any, Any], Exception], Response[bytes]]


def exception_handlers() -> dict[type[Exception] | int, ExceptionHandler]:
    """Litestar exception handlers giving every error the `ErrorBody` shape."""
    return {
        AygologError: _aygolog_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }


# -- OpenAPI for routes that read the raw body themselves ------------------------------------

_CAMEL: Final[dict[str, str]] = {
    "anyOf": "any_of",
    "oneOf": "one_of",
    "allOf": "all_of",
    "additionalProperties": "additional_properties",
    "maxLength": "max_length",
    "minLength": "min_length",
    "maxItems": "max_items",
    "minItems": "min_items",
}
_LOCAL_REF: Final = "#/$defs/{name}"


def _schema(node: Any, defs: Mapping[str, Any]) -> Any:
    """msgspec's JSON Schema (a dict) as Litestar's OpenAPI objects, references inlined."""
    if isinstance(node, list):
        return [_schema(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _schema(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    values: dict[str, Any] = {}
    for key, value in node.items():
        name = _CAMEL[key] if key in _CAMEL else str(key)
        if key == "properties":
            values[name] = {prop: _schema(sub, defs) for prop, sub in value.items()}
        elif isinstance(value, (dict, list)) and key not in ("default", "enum", "required"):
            values[name] = _schema(value, defs)
        else:
            values[name] = value
    return Schema(**values)


def request_body(media: Mapping[str, Any], description: str) -> type[Operation]:
    """An `operation_class` documenting a body that the handler parses itself.

    Args:
        media: content type -> msgspec type, e.g. {"application/json": NewLog}.
        description: what the body is.
    """
    content = {}
    for media_type, kind in media.items():
        (schema,), defs = msgspec.json.schema_components([kind], ref_template=_LOCAL_REF)
        content[media_type] = OpenAPIMediaType(schema=_schema(schema, defs))
    body = RequestBody(content=content, description=description, required=True)

    @dataclass
    class _WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return _WithBody
