"""Routes for the foreign ingest protocols: read the body, decode it with `aygolog.ingest`,
check it with the rules of `POST /api/logs`, store it with one `append_many`, answer in the
protocol's own shapes."""

from __future__ import annotations

import re
import time
from typing import Any, Final

import msgspec
from litestar import Request, Response, head, post, route
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from aygolog.errors import Conflict, Unavailable, ValidationError
from aygolog.ingest import ES_BULK_PATH, ES_PREFIX, LOKI_PATH, OTLP_PATHS, SEQ_PATHS
from aygolog.ingest.body import BodyError, decode_content, split_valid
from aygolog.ingest.bulk import (
    CONTENT_TYPES,
    PRODUCT_HEADERS,
    bulk_response,
    decode_bulk,
    error_body,
    probe_answer,
    version_document,
)
from aygolog.ingest.clef import decode_events
from aygolog.ingest.loki import decode_push
from aygolog.ingest.otlp import (
    JSON,
    PROTOBUF,
    GrpcCode,
    decode_request,
    encode_status,
    encode_success,
    media_type,
)
from aygolog.models import BatchResult, NewLog
from aygolog.server.routes import ApiState

__all__ = ["INGEST_ROUTES"]

_CODES: Final = {413: GrpcCode.RESOURCE_EXHAUSTED, 503: GrpcCode.UNAVAILABLE}


def _otlp_status(
    kind: str, status: int, message: str, retry_after: float | None = None
) -> Response[bytes]:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    code = _CODES.get(status, GrpcCode.INVALID_ARGUMENT)
    return Response(
        encode_status(kind, code, message), status_code=status, media_type=kind, headers=headers
    )


async def _read(request: Request[Any, Any, Any], limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isascii() and length.isdigit() and int(length) > limit:
        raise BodyError(413, f"request body larger than {limit} bytes")
    try:
        body = await request.body()
    except HTTPException as exc:  # Litestar's own body limit (request_max_body_size)
        if exc.status_code == 413:
            raise BodyError(413, f"request body larger than {limit} bytes") from None
        raise
    if len(body) > limit:
        raise BodyError(413, f"request body larger than {limit} bytes")
    return body


async def _body(request: Request[Any, Any, Any], api: ApiState) -> bytes:
    """The request body within the limit, its `Content-Encoding` undone (BodyError if not)."""
    raw = await _read(request, api.max_body_bytes)
    return decode_content(raw, request.headers.get("content-encoding"), api.max_body_bytes)


async def _store(api: ApiState, logs: list[NewLog], key: str | None) -> BatchResult | None:
    """One `append_many` of a protocol's accepted entries, counted in the metrics; None when
    `key` stored other entries of the same bytes before (a record's time crossed a limit in
    between: what was stored then stays).

    Raises:
        Unavailable: Redis is down (the protocol answers 503 + Retry-After).
        ValidationError: the store's own checks (ours should have caught it).
    """
    try:
        result = await api.store.append_many(logs, idempotency_key=key)
    except Conflict:
        return None
    if not result.replayed:
        api.ingested.inc(amount=len(logs))
    api.batch_sizes.observe(len(logs))
    return result


@post(
    list(OTLP_PATHS),
    status_code=200,
    summary="OpenTelemetry OTLP/HTTP logs (protobuf or JSON, gzip)",
    description="An ExportLogsServiceRequest; answers an ExportLogsServiceResponse (with "
    "partial_success when records were refused) or a google.rpc.Status, in the request's "
    "encoding. See docs/ingest.md.",
    # Not in /schema/openapi.json: its bodies are OTLP's protobuf/JSON messages, which
    # opentelemetry-proto defines; docs/ingest.md documents the route.
    include_in_schema=False,
)
async def otlp_logs(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """POST /v1/logs: store an OTLP logs export; records that break our rules are reported."""
    api: ApiState = state.api
    kind = media_type(request.headers.get("content-type"))
    if kind not in (PROTOBUF, JSON):
        return _otlp_status(
            JSON, 415, f"unsupported content type {kind!r}; send {PROTOBUF} or {JSON}"
        )
    try:
        body = await _body(request, api)
        batch = decode_request(body, kind, limits=api.limits)
    except BodyError as exc:
        return _otlp_status(kind, exc.status, exc.reason)
    if len(batch.logs) > api.max_batch_items:
        return _otlp_status(kind, 413, f"more than {api.max_batch_items} log records")
    checked = split_valid(batch.logs, limits=api.limits)
    message = checked.summary()
    if checked.accepted:
        # An exporter retries a batch after a 503 or a timeout with the very same bytes: a key
        # made from them stores it once. Only when every record carries its own time, so that
        # two equal bodies are surely the same records (not two "hello"s sent a second apart).
        key = f"otlp-{batch.digest}" if batch.all_timed else None
        try:
            await _store(api, checked.accepted, key)
        except Unavailable as exc:
            return _otlp_status(kind, 503, str(exc), exc.retry_after or 1.0)
        except ValidationError as exc:
            return _otlp_status(kind, 400, str(exc))
    return Response(encode_success(kind, checked.refused_count, message), media_type=kind)


def _loki_error(status: int, message: str, retry_after: float | None = None) -> Response[str]:
    # Loki answers errors as plain text (its distributor's http.Error).
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    return Response(message + "\n", status_code=status, media_type="text/plain", headers=headers)


@post(
    LOKI_PATH,
    # 200 here because Litestar refuses a 204 route that may answer a body (the errors); every
    # success below sets 204 itself, as Loki answers.
    status_code=200,
    summary="Loki push (JSON or snappy-compressed protobuf, gzip)",
    description="A Loki PushRequest; answers 204, or a plain-text error. See docs/ingest.md.",
    # Not in /schema/openapi.json: its bodies are Loki's push messages; docs/ingest.md
    # documents the route.
    include_in_schema=False,
)
async def loki_push(request: Request[Any, Any, Any], state: State) -> Response[str]:
    """POST /loki/api/v1/push: store every entry of a Loki push, or none (Loki has no partial
    success: one entry our rules refuse makes the whole push a 400 that names it)."""
    api: ApiState = state.api
    try:
        body = await _body(request, api)
        kind = media_type(request.headers.get("content-type"))
        batch = decode_push(body, kind, max_bytes=api.max_body_bytes, limits=api.limits)
    except BodyError as exc:
        return _loki_error(exc.status, exc.reason)
    if len(batch.logs) > api.max_batch_items:
        return _loki_error(413, f"more than {api.max_batch_items} entries in one push")
    checked = split_valid(batch.logs, limits=api.limits)
    if checked.refused:
        first = checked.refused[0]
        where = batch.place(first.index) if first.index is not None else "an entry"
        others = checked.refused_count - 1
        more = f" (and {others} more entries)" if others else ""
        return _loki_error(400, f"{where}: {first.field}: {first.reason}{more}; nothing stored")
    if not checked.accepted:
        return Response("", status_code=204)
    # A client retries a push after a 5xx or a timeout with the same bytes; every Loki entry
    # carries its own timestamp, so equal bodies are the same entries: a key made from them
    # stores the push once.
    try:
        await _store(api, checked.accepted, f"loki-{batch.digest}")
    except Unavailable as exc:
        return _loki_error(503, str(exc), exc.retry_after or 1.0)
    except ValidationError as exc:
        return _loki_error(400, str(exc))
    return Response("", status_code=204)


def _es(
    content: dict[str, Any], status: int = 200, retry_after: float | None = None
) -> Response[dict[str, Any]]:
    # Every answer carries the product header: the official clients refuse a server without it.
    headers = dict(PRODUCT_HEADERS)
    if retry_after:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _es_error(
    status: int, error_type: str, reason: str, retry_after: float | None = None
) -> Response[dict[str, Any]]:
    return _es(error_body(status, error_type, reason), status, retry_after)


_BODY_ERRORS: Final = {
    400: "parse_exception",
    413: "content_too_long_exception",
    415: "illegal_argument_exception",
}
_INDEX_BULK: Final = re.compile(r"([^/_][^/]*)/_bulk")


async def _bulk(
    request: Request[Any, Any, Any], api: ApiState, index: str | None
) -> Response[dict[str, Any]]:
    """Store the documents of a bulk request; answer ES's bulk response."""
    started = time.perf_counter()
    kind = media_type(request.headers.get("content-type"))
    if kind not in CONTENT_TYPES:
        # Elasticsearch's own answer to a content type it does not read (406, a flat error).
        reason = f"Content-Type header [{request.headers.get('content-type', '')}] is not supported"
        return _es({"error": reason, "status": 406}, 406)
    try:
        body = await _body(request, api)
        batch = decode_bulk(body, index, limits=api.limits)
    except BodyError as exc:
        error_type = _BODY_ERRORS.get(exc.status, "illegal_argument_exception")
        if exc.reason.startswith("Validation Failed"):
            error_type = "action_request_validation_exception"
        return _es_error(exc.status, error_type, exc.reason)
    if len(batch.logs) > api.max_batch_items:
        reason = f"more than {api.max_batch_items} documents in one bulk request"
        return _es_error(413, "content_too_long_exception", reason)
    checked = split_valid(batch.logs, limits=api.limits)
    ids: list[str] = []
    if checked.accepted:
        # A shipper retries a bulk after a 503 or a timeout with the same bytes: a key made from
        # them stores it once, when every document carries its own @timestamp (two equal bodies
        # are then surely the same logs).
        key = f"es-{batch.digest}" if batch.all_timed else None
        try:
            result = await _store(api, checked.accepted, key)
        except Unavailable as exc:
            return _es_error(503, "unavailable_exception", str(exc), exc.retry_after or 1.0)
        except ValidationError as exc:
            return _es_error(400, "illegal_argument_exception", str(exc))
        if result is not None:
            ids = result.ids
    took = round((time.perf_counter() - started) * 1000)
    return _es(bulk_response(batch, checked.refused, ids, took))


@route(
    ES_BULK_PATH,
    http_method=["POST", "PUT"],
    status_code=200,
    summary="Elasticsearch _bulk (NDJSON create/index actions, gzip)",
    description="See docs/ingest.md; the full subset lives under /es.",
    include_in_schema=False,
)
async def es_root_bulk(request: Request[Any, Any, Any], state: State) -> Response[dict[str, Any]]:
    """POST or PUT /_bulk: as `POST /es/_bulk`, for shippers configured with the bare host."""
    return await _bulk(request, state.api, None)


@route(
    [ES_PREFIX, ES_PREFIX + "/{rest:path}"],
    http_method=["GET", "POST", "PUT", "DELETE"],
    status_code=200,
    summary="Elasticsearch subset: GET /es, POST /es/_bulk, /es/{index}/_bulk, start-up probes",
    description="See docs/ingest.md.",
    # Not in /schema/openapi.json: these are Elasticsearch's shapes, documented in ingest.md.
    include_in_schema=False,
)
async def es_any(request: Request[Any, Any, Any], state: State) -> Response[dict[str, Any]]:
    """Everything under /es: the bulk API, the version document, and the shippers' probes."""
    rest = str(request.path_params.get("rest", "")).strip("/")
    method = request.method
    writes = method in ("POST", "PUT")  # ES takes both; its Python client sends PUT
    if writes and rest == "_bulk":
        return await _bulk(request, state.api, None)
    bulk = _INDEX_BULK.fullmatch(rest)
    if writes and bulk:
        return await _bulk(request, state.api, bulk.group(1))
    if method == "GET" and not rest:
        return _es(version_document())
    answer = probe_answer(method, rest)
    if answer is None:
        reason = f"no handler found for uri [{request.url.path}] and method [{method}]"
        return _es_error(404, "resource_not_found_exception", reason)
    return _es(answer)


@head([ES_PREFIX, ES_PREFIX + "/{rest:path}"], include_in_schema=False)
async def es_head(request: Request[Any, Any, Any]) -> Response[None]:
    """HEAD on /es and the probes: 200 (the cluster, templates and policies "exist")."""
    rest = str(request.path_params.get("rest", "")).strip("/")
    found = not rest or probe_answer("GET", rest) is not None
    return Response(None, status_code=200 if found else 404, headers=PRODUCT_HEADERS)


def _seq_error(status: int, message: str, retry_after: float | None = None) -> Response[bytes]:
    # Seq answers errors as {"Error": "..."}.
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    return Response(
        msgspec.json.encode({"Error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


_SEQ_ACCEPTED: Final = b'{"MinimumLevelAccepted":null}'


async def _seq_ingest(
    request: Request[Any, Any, Any], api: ApiState, *, clef: bool
) -> Response[bytes]:
    """Store every event of a Seq body, or none (Seq's ingestion has no partial success: one
    event our rules refuse makes the whole body a 400 that names it)."""
    accepted = Response(_SEQ_ACCEPTED, status_code=201, media_type="application/json")
    try:
        body = await _body(request, api)
        kind = media_type(request.headers.get("content-type"))
        batch = decode_events(body, kind, clef=clef, limits=api.limits)
    except BodyError as exc:
        return _seq_error(exc.status, exc.reason)
    if len(batch.logs) > api.max_batch_items:
        return _seq_error(413, f"more than {api.max_batch_items} events in one request")
    checked = split_valid(batch.logs, limits=api.limits)
    if checked.refused:
        first = checked.refused[0]
        where = batch.places[first.index] if first.index is not None else "an event"
        others = checked.refused_count - 1
        more = f" (and {others} more events)" if others else ""
        return _seq_error(400, f"{where}: {first.field}: {first.reason}{more}; nothing stored")
    if not checked.accepted:
        return accepted
    # A client retries after a 5xx or a timeout with the same bytes: when every event carries
    # its own time, equal bodies are the same events and a key made from them stores them once.
    key = f"seq-{batch.digest}" if batch.all_timed else None
    try:
        await _store(api, checked.accepted, key)
    except Unavailable as exc:
        return _seq_error(503, str(exc), exc.retry_after or 1.0)
    except ValidationError as exc:
        return _seq_error(400, str(exc))
    return accepted


@post(
    SEQ_PATHS[0],
    status_code=201,
    summary="Seq CLEF ingestion (newline-delimited CLEF, gzip)",
    description='Newline-delimited CLEF events; answers 201 {"MinimumLevelAccepted": null} '
    'or Seq\'s {"Error": "..."}. See docs/ingest.md.',
    # Not in /schema/openapi.json: its body is CLEF; docs/ingest.md documents the route.
    include_in_schema=False,
)
async def seq_clef(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """POST /ingest/clef: store newline-delimited CLEF events."""
    return await _seq_ingest(request, state.api, clef=True)


@post(
    SEQ_PATHS[1],
    status_code=201,
    summary="Seq raw events (legacy JSON, or CLEF with ?clef or its media type)",
    description='{"Events": [...]} or newline-delimited CLEF; answers 201 '
    '{"MinimumLevelAccepted": null} or Seq\'s {"Error": "..."}. See docs/ingest.md.',
    include_in_schema=False,
)
async def seq_raw(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """POST /api/events/raw: Seq's legacy JSON, or CLEF with `?clef` or its media type."""
    return await _seq_ingest(request, state.api, clef="clef" in request.query_params)


INGEST_ROUTES: Final = [otlp_logs, loki_push, es_root_bulk, es_any, es_head, seq_clef, seq_raw]
