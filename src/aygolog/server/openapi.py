"""What the Log API's routes answer, as OpenAPI declarations: status codes, bodies, headers.

The handlers build most answers themselves (`json_response`, `error_response`), so Litestar
cannot see their bodies; the route decorators take their `responses=` and `operation_class=`
from here. `tests/test_openapi_answers.py` provokes every declared answer of a real instance
and checks it against /schema/openapi.json, so a declaration here that stops being true fails.

- `answers(...)`: the `responses=` of a route: success bodies by status, then error statuses,
  every error with the `ErrorBody` shape (`{error, detail: [{field, reason, index}]}`).
- `documented(...)`: the `operation_class=` of a route: the headers that go with those answers
  (`Retry-After` on 503, `WWW-Authenticate` on 401), and optionally the request body.
- `Health`, `Readiness`: the bodies of `/health` and `/health/ready` (documentation models).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIHeader, OpenAPIResponse, OpenAPIType, Operation, Schema

from aygolog.models import ErrorBody

__all__ = ["API_KEY_ERRORS", "Health", "Readiness", "answers", "documented", "event_stream"]

API_KEY_ERRORS: Final = (401, 403)
"""Answered by every `/api/log*` route when `AYGOLOG_API_KEYS` is set."""

_ERRORS: Final = {
    400: "Malformed request: broken JSON, or a query parameter of the wrong type or range",
    401: "No API key, or an unknown one (only when AYGOLOG_API_KEYS is set)",
    403: "The API key lacks the scope: read for GET, write for POST (only with AYGOLOG_API_KEYS)",
    409: "The Idempotency-Key was used before for a different body",
    413: "Body too large, or too many entries in one batch",
    415: "Unsupported content type",
    422: "Invalid input: each bad field (and the item index in a batch), with the reason",
    503: "A dependency (Redis) is unavailable; retry after Retry-After seconds",
}

_HEADERS: Final[Mapping[int, Mapping[str, OpenAPIHeader]]] = {
    401: {
        "WWW-Authenticate": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING),
            description="`Bearer`: send the key as `Authorization: Bearer <key>`",
            required=True,
        )
    },
    503: {
        "Retry-After": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
            description="Seconds to wait before trying again",
            required=True,
        )
    },
}


class Health(msgspec.Struct, kw_only=True):
    """`GET /health`: the process serves requests."""

    status: Literal["ok"]
    instance: str
    uptime_seconds: float


class RedisCheck(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Whether Redis answered a PING within 2 s."""

    ok: bool
    latency_ms: float | None = None
    """When ok: how long the PING took."""
    error: str | None = None
    """When not ok: why."""


class TailCheck(msgspec.Struct, kw_only=True):
    """The live tail's reader of the stream."""

    following: bool
    subscribers: int


class Readiness(msgspec.Struct, kw_only=True):
    """`GET /health/ready`: 200 when Redis answers, 503 (with the same body) when not."""

    status: Literal["ok", "unavailable"]
    instance: str
    registration: dict[str, Any]
    """The registration agent's state (`{"state": "disabled"}` without a load balancer)."""
    redis: RedisCheck
    tail: TailCheck


def answers(
    ok: Mapping[int, tuple[Any, str]], *errors: int, auth: bool = False
) -> dict[int, ResponseSpec]:
    """The `responses=` of a route.

    Args:
        ok: status -> (body type, description) of each success answer.
        errors: the error statuses the route answers (each with an `ErrorBody`).
        auth: the route is under `/api/log*`, so it answers 401/403 when API keys are set.
    """
    specs = {
        status: ResponseSpec(data_container=kind, description=text, generate_examples=False)
        for status, (kind, text) in ok.items()
    }
    codes = sorted({*errors, *(API_KEY_ERRORS if auth else ())})
    for code in codes:
        specs[code] = ResponseSpec(
            data_container=ErrorBody, description=_ERRORS[code], generate_examples=False
        )
    return specs


def event_stream(description: str) -> dict[int, ResponseSpec]:
    """A 200 answer that is a Server-Sent Events stream (`text/event-stream`)."""
    return {
        200: ResponseSpec(
            data_container=str,
            description=description,
            media_type="text/event-stream",
            generate_examples=False,
        )
    }


def documented(
    base: type[Operation] = Operation, *, never: tuple[int, ...] = ()
) -> type[Operation]:
    """The `operation_class=` of a route: adds the headers that go with its answers.

    Args:
        base: an operation class to extend, e.g. `aygolog.web.request_body(...)`'s.
        never: statuses Litestar declares by itself that the route cannot answer (its 400
            for parameters that cannot fail to parse, e.g. only strings).
    """

    @dataclass
    class _WithHeaders(base):  # type: ignore[valid-type,misc]
        def __post_init__(self) -> None:
            post_init = getattr(super(), "__post_init__", None)
            if post_init is not None:
                post_init()
            for status in never:
                (self.responses or {}).pop(str(status), None)
            for status, response in (self.responses or {}).items():
                headers = _HEADERS.get(int(status))
                if headers and isinstance(response, OpenAPIResponse):
                    response.headers = {**(response.headers or {}), **headers}

    return _WithHeaders
