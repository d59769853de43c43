"""The Log API's routes. Handlers read `ApiState` from the app state; no globals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, HeaderParameter, QueryParameter
from litestar.response import Stream
from litestar.types import ExceptionHandlersMap

from aygolog.errors import MalformedInput, ValidationError
from aygolog.metrics import Metrics
from aygolog.models import (
    BatchResult,
    CountResult,
    Direction,
    FieldError,
    Limits,
    LogEntry,
    LogPage,
    LogQuery,
    LogStats,
    NewLog,
    SeedLog,
)
from aygolog.query import Plan, QuerySyntaxError, plan_for
from aygolog.querystring import parse_query_params
from aygolog.server.openapi import Health, Readiness, answers, documented, event_stream
from aygolog.server.reads import PageCache, ReadGate
from aygolog.server.tail import Dropped, End, TailHub
from aygolog.store import LogStore
from aygolog.store.base import parse_stream_id, stored_entry
from aygolog.validation import decode_logs, decode_ndjson, decode_seed_log
from aygolog.web import JSON, error_response, json_response, request_body

__all__ = ["ROUTES", "ApiState"]

_encode_seed: Final = msgspec.json.Encoder().encode
_encode_entry: Final = msgspec.json.Encoder().encode
_NDJSON: Final = ("application/x-ndjson", "application/jsonl", "application/json-seq")


@dataclass(kw_only=True)
class ApiState:
    """Everything the handlers need, built by `create_log_api`."""

    instance: str
    store: LogStore
    hub: TailHub
    metrics: Metrics
    limits: Limits = field(default_factory=Limits)
    max_batch_items: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024
    keepalive_seconds: float = 15.0
    frames: dict[str, tuple[LogEntry, bytes]] = field(default_factory=dict)
    """The SSE frames of the latest live-tail entries, by id, each with the entry it encodes
    (an entry fanned out to thousands of streams is encoded once; an id seen again with another
    entry, as after a wiped store, is encoded afresh)."""
    reads: ReadGate = field(default_factory=lambda: ReadGate(8, 2.0))
    """Bounds the queries running against the store at once."""
    pages: PageCache = field(default_factory=PageCache)
    """The seed's list pages, kept while the store's version does not change."""
    started_at: float = field(default_factory=time.time)
    registration: dict[str, Any] = field(default_factory=dict)
    """What the registration agent reports (state, lb_url, last error)."""

    def __post_init__(self) -> None:
        metrics = self.metrics
        self.ingested = metrics.counter(
            "aygolog_entries_ingested_total", "Log entries stored through this instance"
        )
        self.batch_sizes = metrics.histogram(
            "aygolog_batch_size",
            "Entries per batch request",
            buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000),
        )
        refused = metrics.counter(
            "aygolog_reads_refused_total",
            "Store queries answered 503 after waiting AYGOLOG_READ_QUEUE_TIMEOUT for a turn",
        )
        self.reads.on_refused = refused.inc
        self.dropped = metrics.counter(
            "aygolog_tail_dropped_total", "Live-tail events dropped for slow subscribers"
        )
        metrics.gauge(
            "aygolog_reads_in_progress",
            "Store queries running now (bounded by AYGOLOG_MAX_CONCURRENT_READS)",
            read=lambda: {(): float(self.reads.in_use)},
        )
        metrics.gauge(
            "aygolog_tail_subscribers",
            "Open live-tail subscriptions",
            read=lambda: {(): float(self.hub.subscribers)},
        )


def _api(state: State) -> ApiState:
    api: ApiState = state.api
    return api


def _content_type(request: Request[Any, Any, Any]) -> str:
    return request.headers.get("content-type", JSON).split(";", 1)[0].strip().lower()


def _unsupported(kind: str, allowed: str) -> Response[bytes]:
    return error_response(
        415,
        f"unsupported content type {kind!r}; send {allowed}",
        [FieldError(field="content-type", reason=f"expected {allowed}")],
    )


async def _read_body(request: Request[Any, Any, Any], api: ApiState) -> bytes | Response[bytes]:
    length = request.headers.get("content-length")
    # isascii: str.isdigit() is true for "²", which int() refuses (the server in front may not).
    if length and length.isascii() and length.isdigit() and int(length) > api.max_body_bytes:
        return _too_large(api)
    body = await request.body()
    if len(body) > api.max_body_bytes:
        return _too_large(api)
    return body


def _too_large(api: ApiState) -> Response[bytes]:
    return error_response(
        413,
        "request body too large",
        [FieldError(field="$", reason=f"at most {api.max_body_bytes} bytes")],
    )


def _is_json(kind: str) -> bool:
    return kind == JSON or kind.endswith("+json")


@post(
    "/api/log",
    status_code=201,
    summary="Store one log entry",
    description='Body: a NewLog object. The seed\'s `{"name": ...}` is taken as the message. '
    "An Idempotency-Key header makes a retry store once (answered 200 with the first entry).",
    responses=answers(
        {
            201: (LogEntry, "Stored: the entry as stored, with its id and `instance`"),
            200: (LogEntry, "A replay: this Idempotency-Key stored this entry before; nothing new"),
        },
        *(400, 409, 413, 415, 422, 503),
        auth=True,
    ),
    operation_class=documented(
        request_body(
            {JSON: NewLog},
            'One log entry. The seed\'s body {"name": "..."} is accepted: name is taken as '
            "the message.",
        )
    ),
)
async def create_log(
    request: Request[Any, Any, Any],
    state: State,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[bytes]:
    """POST /api/log: one entry; 201 with the stored entry, including `instance`.

    As the seed's ASP.NET service did, field names match in any case here (`{"Name": "x"}`)
    and the seed model's `sourceInstance` is accepted (the storing instance is `instance`).
    """
    api = _api(state)
    kind = _content_type(request)
    if not _is_json(kind):
        return _unsupported(kind, JSON)
    body = await _read_body(request, api)
    if isinstance(body, Response):
        return body
    log = decode_seed_log(body, limits=api.limits)
    if idempotency_key is None:
        entry = await api.store.append(log)
    else:
        result = await api.store.append_many((log,), idempotency_key=idempotency_key)
        if result.replayed:
            return json_response(stored_entry(log, result.ids[0], result.instance), 200)
        entry = stored_entry(log, result.ids[0], result.instance)
    api.ingested.inc()
    api.batch_sizes.observe(1)
    return json_response(entry, 201)


@post(
    "/api/logs",
    status_code=201,
    summary="Store a batch, all or nothing",
    description="Body: a JSON array of NewLog objects, or NDJSON (application/x-ndjson). "
    "An Idempotency-Key header makes a retried batch store once (answered 200, replayed=true).",
    responses=answers(
        {
            201: (BatchResult, "Stored, all of them: their ids in order, and `instance`"),
            200: (BatchResult, "A replay (`replayed: true`): this Idempotency-Key stored it"),
        },
        *(400, 409, 413, 415, 422, 503),
        auth=True,
    ),
    operation_class=documented(
        request_body(
            {JSON: list[NewLog], "application/x-ndjson": NewLog},
            "Up to 10,000 entries (configurable) and 10 MiB: a JSON array, or NDJSON with one "
            "entry a line.",
        )
    ),
)
async def create_logs(
    request: Request[Any, Any, Any],
    state: State,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[bytes]:
    """POST /api/logs: a JSON array or NDJSON; 201 with the ids, in order."""
    api = _api(state)
    kind = _content_type(request)
    body = await _read_body(request, api)
    if isinstance(body, Response):
        return body
    if kind in _NDJSON:
        logs = decode_ndjson(body, limits=api.limits)
    elif _is_json(kind):
        logs = decode_logs(body, limits=api.limits)
    else:
        return _unsupported(kind, "application/json (an array) or application/x-ndjson")
    if len(logs) > api.max_batch_items:
        return error_response(
            413,
            "too many entries in one batch",
            [FieldError(field="$", reason=f"at most {api.max_batch_items} entries")],
        )
    if not logs:
        raise ValidationError([FieldError(field="$", reason="the batch is empty")])
    result: BatchResult = await api.store.append_many(logs, idempotency_key=idempotency_key)
    if not result.replayed:
        api.ingested.inc(amount=len(logs))
    api.batch_sizes.observe(len(logs))
    return json_response(result, 200 if result.replayed else 201)


def _query_params(
    level: list[str] | None,
    min_level: str | None,
    service: list[str] | None,
    q: str | None,
    since: str | None,
    until: str | None,
    attr: list[str] | None,
    limit: int,
    cursor: str | None,
    direction: str | None,
    query: str | None = None,
) -> LogQuery:
    return parse_query_params(
        level=level,
        min_level=min_level,
        service=service,
        q=q,
        since=since,
        until=until,
        attr=attr,
        limit=limit,
        cursor=cursor,
        direction=direction,
        query=query,
    )


def _query_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """What the store (or `plan_for`) refused: a 400 when it is the query string (it does not
    parse, is too long, or asks what this route does not answer), else a 422 as elsewhere."""
    assert isinstance(exc, ValidationError)
    if isinstance(exc, QuerySyntaxError):
        return error_response(400, "the query does not parse", exc.errors)
    if isinstance(exc, MalformedInput) or all(e.field == "query" for e in exc.errors):
        return error_response(400, "this query cannot be answered here", exc.errors)
    return error_response(422, "invalid input", exc.errors)


def _overflow(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # A safety net: the parser should refuse numbers too large to compute with (it let
    # `_time:999999999999d` through as an OverflowError, a 500); the parameters' own times
    # are refused by `parse_time` already, so here it can only be the query string.
    reason = "a number in it is too large"
    return error_response(
        400, "the query does not parse", [FieldError(field="query", reason=reason)]
    )


_QUERY_ERRORS: Final[ExceptionHandlersMap] = {
    ValidationError: _query_error,
    OverflowError: _overflow,
}
"""Route-level: the store parses the query string (once per request) and its errors about it
are a 400; the app maps other validation errors to 422."""


def _refuse(reason: str) -> Response[bytes]:
    return error_response(
        400, "this query cannot be answered here", [FieldError(field="query", reason=reason)]
    )


@get(
    "/api/log",
    summary="The seed's list: the newest entries, each with `name` and `timestamp`",
    responses=answers({200: (list[SeedLog], "The newest entries first")}, 400, 503, auth=True),
    operation_class=documented(),
)
async def list_logs_seed(
    state: State, limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
) -> Response[bytes]:
    """GET /api/log: a flat list, newest first (the seed's React client reads name/timestamp).

    The encoded page is kept with the store's version and served again while the version is
    the same (one small Redis call instead of reading, decoding and encoding the page; see
    `PageCache` for why it is never stale).
    """
    api = _api(state)
    async with api.reads.slot():
        version = await api.store.version()
    body = api.pages.get(limit, version)
    if body is None:

        async def read() -> bytes:
            async with api.reads.slot():
                page = await api.store.query(LogQuery(limit=limit))
            return _encode_seed([SeedLog.from_entry(e) for e in page.items])

        body = await api.pages.load(limit, version, read)
    return Response(body, media_type=JSON)


_QUERY_DOC: Final = "A query in the query language (docs/query.md), ANDed with the other filters"


@get(
    "/api/logs",
    summary="Search stored entries, one page at a time",
    description="`query` takes the query language (docs/query.md); the other filters are "
    "sugar ANDed with it. A query that does not parse is a 400 naming `query`, the position "
    "and what was expected; a `| count()` query is a 400 pointing to `/api/logs/count`. "
    "`| limit N` caps the page at N and makes it the last (no `next_cursor`).",
    responses=answers(
        {200: (LogPage, "One page; `next_cursor` is null on the last")}, 400, 422, 503, auth=True
    ),
    operation_class=documented(),
    exception_handlers=_QUERY_ERRORS,
)
async def query_logs(
    state: State,
    text: Annotated[str | None, QueryParameter(name="query", description=_QUERY_DOC)] = None,
    level: FromQuery[list[str] | None] = None,
    min_level: FromQuery[str | None] = None,
    service: FromQuery[list[str] | None] = None,
    q: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    attr: FromQuery[list[str] | None] = None,
    limit: FromQuery[int] = 100,
    cursor: FromQuery[str | None] = None,
    direction: FromQuery[str | None] = None,
) -> Response[bytes]:
    """GET /api/logs: `query`, filters, `limit` (<= 1000) and `cursor`; items and
    `next_cursor`."""
    search = _query_params(
        level, min_level, service, q, since, until, attr, limit, cursor, direction, text
    )
    api = _api(state)
    async with api.reads.slot():
        page = await api.store.query(search)
    return json_response(page)


@get(
    "/api/logs/count",
    summary="Count matching entries, grouped and in time buckets",
    description="`query` may end in `| count() by (field, ...) step 1m` (`by` and `step` "
    "optional; without the pipe: one total). Buckets are aligned to multiples of `step` from "
    "the Unix epoch over the time range (`since`/`until` or `_time`; without a start, the hour "
    "before its end; without an end, now), at most 11,000 of them (else a 422 naming `step`). "
    'Groups by level, service, instance, trace_id or any attribute (missing: "").',
    responses=answers(
        {200: (CountResult, "Bucket start times and one series of counts per group")},
        *(400, 422, 503),
        auth=True,
    ),
    operation_class=documented(),
    exception_handlers=_QUERY_ERRORS,
)
async def count_logs(
    state: State,
    text: Annotated[str | None, QueryParameter(name="query", description=_QUERY_DOC)] = None,
    level: FromQuery[list[str] | None] = None,
    min_level: FromQuery[str | None] = None,
    service: FromQuery[list[str] | None] = None,
    q: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    attr: FromQuery[list[str] | None] = None,
) -> Response[bytes]:
    """GET /api/logs/count: a `CountResult` for `query` (and the filters)."""
    counted = _query_params(level, min_level, service, q, since, until, attr, 100, None, None, text)
    api = _api(state)
    async with api.reads.slot():
        result = await api.store.count(counted)
    return json_response(result)


@get(
    "/api/logs/stats",
    summary="Totals per level, service and instance; ingest rate",
    responses=answers({200: (LogStats, "The totals")}, 503, auth=True),
    operation_class=documented(),
)
async def log_stats(state: State) -> LogStats:
    """GET /api/logs/stats."""
    return await _api(state).store.stats()


@get(
    "/api/logs/stream",
    summary="Live tail as Server-Sent Events",
    description="`query` takes the query language's filters (docs/query.md); a time range "
    "(`_time`) or a pipe (`| count()`, `| limit`) means nothing to a live tail: a 400.",
    responses={
        **event_stream("`data:` one LogEntry as JSON, `id:` its stream id; `event: dropped`"),
        **answers({}, 400, 422, auth=True),
    },
    operation_class=documented(),
    exception_handlers=_QUERY_ERRORS,
)
async def stream_logs(
    state: State,
    text: Annotated[str | None, QueryParameter(name="query", description=_QUERY_DOC)] = None,
    level: FromQuery[list[str] | None] = None,
    min_level: FromQuery[str | None] = None,
    service: FromQuery[list[str] | None] = None,
    q: FromQuery[str | None] = None,
    attr: FromQuery[list[str] | None] = None,
    last_event_id_query: Annotated[str | None, QueryParameter(name="last_event_id")] = None,
    last_event_id_header: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
) -> Stream | Response[bytes]:
    """GET /api/logs/stream: new entries as SSE; event id = stream id.

    `Last-Event-ID` (header, or `last_event_id` query parameter) resumes after that entry with
    no gap and no duplicate. A subscriber that falls behind gets an `event: dropped` with the
    count. A comment is sent every 15 s to keep the connection open.
    """
    api = _api(state)
    tailed = _query_params(level, min_level, service, q, None, None, attr, 1000, None, None, text)
    refused = _tail_refusal(plan_for(tailed))
    if refused is not None:
        return refused
    resume = last_event_id_header or last_event_id_query
    if resume:
        parse_stream_id(resume, "last_event_id")
    # A plain byte stream of ready-made frames: Litestar's ServerSentEvent hops to a thread
    # when a stream opens and formats every event per subscriber.
    return Stream(
        _events(api, tailed, resume),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _tail_refusal(plan: Plan) -> Response[bytes] | None:
    if plan.since is not None or plan.until is not None:
        return _refuse("a live tail follows new entries: it takes no time range (`_time`)")
    if plan.count is not None:
        return _refuse("a live tail cannot count: use GET /api/logs/count")
    if plan.limit is not None:
        return _refuse("a live tail has no end: it takes no `| limit`")
    return None


_CONNECTED: Final = b": connected\r\nretry: 2000\r\n\r\n"
_KEEPALIVE: Final = b": keep-alive\r\n\r\n"
_FRAMES_KEPT: Final = 512


def _log_event(api: ApiState, entry: LogEntry) -> bytes:
    """The entry's SSE frame (`id:` and one `data:` line: JSON holds no raw line break),
    encoded once however many subscribers it goes to."""
    frames = api.frames
    kept = frames.get(entry.id)
    if kept is not None and kept[0] is entry:  # the very object the hub fanned out
        return kept[1]
    frame = b"id: %s\r\ndata: %s\r\n\r\n" % (entry.id.encode(), _encode_entry(entry))
    if len(frames) >= _FRAMES_KEPT:
        frames.clear()
    frames[entry.id] = (entry, frame)
    return frame


def _dropped_event(count: int) -> bytes:
    return b"event: dropped\r\ndata: %s\r\n\r\n" % msgspec.json.encode({"count": count})


async def _events(api: ApiState, query: LogQuery, resume: str | None) -> AsyncIterator[bytes]:
    subscription = await api.hub.subscribe(query)
    try:
        yield _CONNECTED
        last = parse_stream_id(resume) if resume else None
        if last is not None and api.hub.last_id != "$":
            # An id past the newest entry (a wiped store, a made-up id) must not hide the new
            # entries: everything the reader delivers from now on is after its position.
            last = min(last, parse_stream_id(api.hub.last_id))
        if resume:
            # Catch up from the store, then switch to the live queue, skipping what was sent.
            cursor: str | None = resume
            while cursor is not None:
                async with api.reads.slot(patient=True):
                    page = await api.store.query(
                        msgspec.structs.replace(
                            query, cursor=cursor, direction=Direction.FORWARD, limit=1000
                        )
                    )
                for entry in page.items:
                    last = parse_stream_id(entry.id)
                    yield _log_event(api, entry)
                cursor = page.next_cursor
        while True:
            item = await subscription.get(api.keepalive_seconds)
            if item is None:
                yield _KEEPALIVE
            elif isinstance(item, End):
                return  # the instance is stopping; the client resumes (Last-Event-ID) elsewhere
            elif isinstance(item, Dropped):
                api.dropped.inc(amount=item.count)
                yield _dropped_event(item.count)
            else:
                if last is not None and parse_stream_id(item.id) <= last:
                    continue
                last = None  # past the catch-up: ids only grow from here
                yield _log_event(api, item)
    finally:
        subscription.close()


@get(
    "/health",
    summary="Liveness",
    responses=answers({200: (Health, "The process serves requests")}),
)
async def health(state: State) -> dict[str, Any]:
    """GET /health: 200 while the process serves requests."""
    api = _api(state)
    return {
        "status": "ok",
        "instance": api.instance,
        "uptime_seconds": round(time.time() - api.started_at, 3),
    }


@get(
    "/health/ready",
    summary="Readiness: Redis answers, the live tail follows it",
    responses={
        **answers({200: (Readiness, "Ready: Redis answers")}),
        503: ResponseSpec(
            data_container=Readiness,
            description="Not ready: Redis does not answer (`redis.error` says why)",
            generate_examples=False,
        ),
    },
    operation_class=documented(),
)
async def ready(state: State) -> Response[bytes]:
    """GET /health/ready: 200 when Redis answers, else 503 with the reason."""
    api = _api(state)
    checks: dict[str, Any] = {"registration": api.registration or {"state": "disabled"}}
    status = 200
    try:
        started = time.perf_counter()
        await asyncio.wait_for(api.store.ping(), 2.0)
        checks["redis"] = {
            "ok": True,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    except Exception as exc:
        checks["redis"] = {"ok": False, "error": str(exc) or type(exc).__name__}
        status = 503
    checks["tail"] = {"following": api.hub.connected.is_set(), "subscribers": api.hub.subscribers}
    body = {"status": "ok" if status == 200 else "unavailable", "instance": api.instance, **checks}
    headers = {"Retry-After": "1"} if status == 503 else None
    return json_response(body, status, headers)


@get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
async def metrics(state: State) -> Response[str]:
    """GET /metrics: Prometheus text format."""
    return Response(_api(state).metrics.render(), media_type=Metrics.content_type)


ROUTES: Final = [
    create_log,
    create_logs,
    list_logs_seed,
    query_logs,
    count_logs,
    log_stats,
    stream_logs,
    health,
    ready,
    metrics,
]
