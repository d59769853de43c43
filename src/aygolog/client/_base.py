"""The SDK's pure core: request building, response parsing, retry decisions, routing, batching.

Nothing here does I/O or sleeps. `LogClient` and `AsyncLogClient` hold a `ClientCore` and add only
the sending (as httpx's own `BaseClient` does), so both behave the same by construction.

Retry rules (`RetryPolicy`, `Attempts`):

- connect error, connect or pool timeout (the request was never sent): retried, any request;
- 429 and 503 (refused before anything was done): retried, any request;
- 502, 504, a read/write error or timeout, a connection dropped mid-answer: retried only when the
  request is idempotent (a GET, or a POST with an `Idempotency-Key`: the SDK sends one with
  every `log` and every batch);
- any other 4xx, 500 and other 5xx: never retried.

How long: by default (`RetryPolicy()`) a call keeps retrying until `deadline` (30 s) after it
began, so it outlasts an ordinary restart of the load balancer, an instance or Redis; `retries`
caps the count as well (`retries=3` or `RetryPolicy(retries=3)`: at most 3 retries, still within
the deadline). No retry starts after the deadline: the wait before the last one is cut short to
end at it, so a call takes at most `deadline` plus one attempt's timeout.

The delay before retry `n` (0-based) is drawn uniformly from `[0, min(backoff_max,
backoff_base * 2**n)]` ("full jitter"; by default 0.1 s doubling up to 5 s). A `Retry-After`
(header, else the error body's `retry_after`) is a floor: the delay is `retry_after` plus that
jitter. A `Retry-After` longer than `max_retry_after`, or one that ends after the deadline, is not
waited out: the error is raised at once, carrying `retry_after`.
Every POST carries an `Idempotency-Key`, the same across its retries, so a retry after an answer
that was lost never stores twice; the load balancer retries such requests on another instance by
the same rule.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypedDict, TypeVar

import httpx
import msgspec

from aygolog.balancing import BalancerStrategy, make_strategy
from aygolog.client._sse import SSEParser
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
from aygolog.models import (
    AttributeValue,
    Direction,
    ErrorBody,
    FieldError,
    InstanceView,
    LogEntry,
    LogLevel,
    LogQuery,
    NewLog,
)
from aygolog.query import QuerySyntaxError
from aygolog.querystring import parse_time, query_to_params

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ITEMS",
    "Attempts",
    "Balance",
    "ClientCore",
    "PreparedBatch",
    "QueryFilters",
    "RequestSpec",
    "RetryPolicy",
    "Route",
    "Router",
    "ServiceView",
    "TailDropped",
    "TailFilters",
    "TailState",
    "coerce_attribute",
    "encode_log",
    "error_from_response",
    "make_query",
    "parse_retry_after",
    "prepare_batches",
    "to_new_log",
]

T = TypeVar("T")
Balance = Literal["lb", "client"]
MAX_BATCH_ITEMS: Final = 10_000
"""The Log API's default limit of entries per batch."""
MAX_BATCH_BYTES: Final = 9 * 1024 * 1024
"""Below the Log API's default 10 MiB body limit, with room for proxies' headers."""
DEFAULT_TIMEOUT: Final = httpx.Timeout(10.0, connect=3.0)

_RETRYABLE_STATUS: Final = frozenset({429, 502, 503, 504})
_NOT_PROCESSED_STATUS: Final = frozenset({429, 503})
# The request never left: safe to retry whatever it was.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The request may have been received (and a log stored): safe only for idempotent requests.
_MAYBE_SENT: Final = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)
_JSON: Final = "application/json"


# -- retries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long and how patiently to retry (see the module docstring for which failures).

    A value object like `httpx.Timeout`: the default keeps retrying for up to 30 s.

    Args:
        retries: the most retries after the first attempt (None: as many as fit in `deadline`);
            0 disables retrying.
        deadline: seconds after the call began after which no retry starts (None: no limit;
            then `retries` must be set).
        backoff_base: the jitter window of the first retry, in seconds; it doubles each time.
        backoff_max: the jitter window never exceeds this.
        max_retry_after: a `Retry-After` longer than this is not waited out.
    """

    retries: int | None = None
    deadline: float | None = 30.0
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if (self.retries is not None and self.retries < 0) or (
            self.deadline is not None and not self.deadline >= 0
        ):
            raise ValueError("retries and deadline must not be negative")
        if not (self.backoff_base >= 0 and self.backoff_max >= 0 and self.max_retry_after >= 0):
            raise ValueError("backoff times and max_retry_after must not be negative")
        if self.retries is None and self.deadline is None:
            raise ValueError("set retries, deadline or both: without either it never gives up")

    def window(self, retry: int) -> float:
        """The jitter window before retry number `retry` (0-based)."""
        if self.backoff_base == 0:
            return 0.0
        return min(self.backoff_max, self.backoff_base * 2.0 ** min(retry, 60))

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry`: `retry_after` (if any) + full jitter."""
        return max(0.0, retry_after or 0.0) + rng.uniform(0.0, self.window(retry))


DEFAULT_RETRY: Final = RetryPolicy()
"""Retry for up to 30 s, backoff from 0.1 s doubling up to 5 s, with full jitter."""
NO_RETRY: Final = RetryPolicy(retries=0)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One API call, before a base URL is chosen for it."""

    method: str
    path: str
    params: Sequence[tuple[str, str]] = ()
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = False
    """Whether repeating it cannot store twice (GETs, batches with an Idempotency-Key)."""
    balanced: bool = True
    """Whether it may go straight to an instance (with `balance="client"`)."""


def parse_retry_after(
    headers: Mapping[str, str], content: bytes = b"", *, now: float | None = None
) -> float | None:
    """Seconds from a `Retry-After` header (seconds or HTTP date), else the body's `retry_after`."""
    value = headers.get("retry-after")
    if value:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                current = time.time() if now is None else now
                return max(0.0, when.timestamp() - current)
        else:
            if math.isfinite(seconds):
                return max(0.0, seconds)
    body = _error_body(content)
    if body is not None and body.retry_after is not None and math.isfinite(body.retry_after):
        return max(0.0, body.retry_after)
    return None


class Attempts:
    """The retry decisions for one call: after each failure, wait how long, or give up.

    `on_response` and `on_error` return the seconds to sleep before the next attempt, or signal
    the end: `on_response` returns None (the caller parses the response, raising its error), and
    `on_error` raises the typed error.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        spec: RequestSpec,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.spec = spec
        self.rng = rng
        self.clock = clock
        self.started = clock()
        self.retries = 0
        """Retries decided so far; the next attempt is a retry when this is above 0."""

    def _next(self, retry_after: float | None) -> float | None:
        policy = self.policy
        if policy.retries is not None and self.retries >= policy.retries:
            return None
        if retry_after is not None and retry_after > policy.max_retry_after:
            return None
        delay = policy.delay(self.retries, retry_after, self.rng)
        if policy.deadline is not None:
            remaining = self.started + policy.deadline - self.clock()
            if remaining <= 0 or (retry_after is not None and retry_after > remaining):
                return None  # past the deadline, or the server will not be ready within it
            delay = min(delay, remaining)
        self.retries += 1
        return delay

    def gave_up(self, exc: BaseException) -> None:
        """Say on `exc` how long the call retried before it gave up (when it retried at all)."""
        if self.retries:
            elapsed = self.clock() - self.started
            exc.add_note(f"gave up after {self.retries} retries over {elapsed:.1f} s")

    def on_response(self, status: int, headers: Mapping[str, str], content: bytes) -> float | None:
        """Seconds to wait before retrying after this answer, or None to stop here."""
        if status not in _RETRYABLE_STATUS:
            return None
        if status not in _NOT_PROCESSED_STATUS and not self.spec.idempotent:
            return None
        return self._next(parse_retry_after(headers, content))

    def on_error(self, exc: Exception, url: str) -> float:
        """Seconds to wait before retrying after a transport error; raises when not retrying."""
        retryable = isinstance(exc, _NOT_SENT) or (
            isinstance(exc, _MAYBE_SENT) and self.spec.idempotent
        )
        delay = self._next(None) if retryable else None
        if delay is None:
            error = transport_error(exc, url, self.spec)
            self.gave_up(error)
            raise error from exc
        return delay


def transport_error(exc: Exception, url: str, spec: RequestSpec) -> AygologError:
    """The typed error for a request that got no HTTP answer."""
    what = f"{spec.method} {url}{spec.path}"
    if not isinstance(exc, httpx.TransportError) or isinstance(
        exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError
    ):  # a bad URL, a bad request, an undecodable answer: not an outage
        return AygologError(f"{what}: {type(exc).__name__}: {exc}")
    kind = type(exc).__name__
    if isinstance(exc, _MAYBE_SENT) and not spec.idempotent:
        return Unavailable(f"{what}: {kind}: {exc} (it may or may not have been stored)")
    return Unavailable(f"{what}: {kind}: {exc}".rstrip(": "))


# -- responses -------------------------------------------------------------------------------

_ERROR_DECODER: Final = msgspec.json.Decoder(ErrorBody)


def _error_body(content: bytes) -> ErrorBody | None:
    if not content or not content.lstrip().startswith(b"{"):
        return None
    try:
        return _ERROR_DECODER.decode(content)
    except msgspec.MsgspecError:
        return None


_SYNTAX_REASON: Final = re.compile(r"at (\d+): expected (.*), found (.*)", re.DOTALL)


def error_from_response(
    status: int, headers: Mapping[str, str], content: bytes, where: str
) -> AygologError:
    """The typed error for a non-2xx answer (`where` names the request, for the message)."""
    body = _error_body(content)
    if body is not None:
        text, detail = body.error, body.detail
    else:
        text = content[:200].decode("utf-8", "replace").strip() or "no body"
        detail = []
    message = f"{where}: HTTP {status}: {text}"
    if status == 400 and len(detail) == 1 and detail[0].field == "query":
        syntax = _SYNTAX_REASON.fullmatch(detail[0].reason)
        if syntax is not None:  # the server's QuerySyntaxError, with its position, again
            return QuerySyntaxError(int(syntax[1]), syntax[2], syntax[3])
    if status in (400, 413, 415, 422):
        errors = detail or [FieldError(field="$", reason=text)]
        cls = MalformedInput if status == 400 else ValidationError
        return cls(errors, message)
    if status in (401, 403):
        return AuthError(message)
    if status == 404:
        return NotFound(message)
    if status == 409:
        return Conflict(message)
    if status == 429:
        return RateLimited(message, retry_after=parse_retry_after(headers, content))
    if status in (502, 503, 504):
        return Unavailable(message, retry_after=parse_retry_after(headers, content))
    return AygologError(message)


def decode_response(
    status: int, headers: Mapping[str, str], content: bytes, kind: type[T], where: str
) -> T:
    """The answer decoded as `kind`, or the typed error for a failure."""
    if not 200 <= status < 300:
        raise error_from_response(status, headers, content, where)
    try:
        return msgspec.json.decode(content, type=kind)
    except msgspec.MsgspecError as exc:
        snippet = content[:120].decode("utf-8", "replace")
        raise AygologError(f"{where}: unexpected answer ({exc}): {snippet!r}") from exc


# -- building logs and batches ---------------------------------------------------------------


def coerce_attribute(value: object) -> AttributeValue | None:
    """An attribute value as the wire takes it: scalars as they are, anything else as a string.

    None is dropped (returns None); a non-finite float becomes a string.
    """
    if value is None:
        return None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, LogLevel):
        return value.value
    return str(value)


def _attributes(values: Mapping[str, object] | None) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for key, value in (values or {}).items():
        coerced = coerce_attribute(value)
        if coerced is not None:
            out[str(key)] = coerced
    return out


def _level(value: LogLevel | str | int) -> LogLevel:
    return value if isinstance(value, LogLevel) else LogLevel.parse(value)


def _timestamp(value: datetime | float | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return parse_time(value)
    return datetime.fromtimestamp(value, UTC)


def build_log(
    message: str,
    *,
    level: LogLevel | str | int = LogLevel.INFO,
    service: str | None = None,
    timestamp: datetime | float | str | None = None,
    trace_id: str | None = None,
    attributes: Mapping[str, object] | None = None,
) -> NewLog:
    """A `NewLog` from friendly arguments (level names and aliases, epoch times, any values).

    Raises:
        ValidationError: the level or the timestamp cannot be understood.
    """
    errors: list[FieldError] = []
    parsed_level = LogLevel.INFO
    try:
        parsed_level = _level(level)
    except (ValueError, TypeError, AttributeError):
        errors.append(FieldError(field="level", reason=f"not a level: {str(level)[:40]!r}"))
    when = None
    try:
        when = _timestamp(timestamp)
    except (ValueError, OverflowError, OSError) as exc:
        errors.append(FieldError(field="timestamp", reason=str(exc)))
    except (TypeError, AttributeError):
        reason = "a datetime, epoch seconds or an RFC 3339 / relative time string"
        errors.append(FieldError(field="timestamp", reason=reason))
    if errors:
        raise ValidationError(errors)
    return NewLog(
        message=message,
        level=parsed_level,
        service=service,
        timestamp=when,
        attributes=_attributes(attributes),
        trace_id=trace_id,
    )


_NEW_LOG_FIELDS: Final = frozenset(NewLog.__struct_fields__) | {"name"}


def to_new_log(item: NewLog | Mapping[str, Any] | str, *, service: str | None = None) -> NewLog:
    """One `log_many` item as a `NewLog`: a `NewLog`, a message string, or a mapping of its fields.

    `service` fills in entries that name none.

    Raises:
        ValidationError: an unknown key, or a value `build_log` refuses.
    """
    if isinstance(item, NewLog):
        if item.service is None and service is not None:
            return msgspec.structs.replace(item, service=service)
        return item
    if isinstance(item, str):
        return NewLog(message=item, service=service)
    unknown = sorted(set(item) - _NEW_LOG_FIELDS)
    if unknown:
        raise ValidationError(
            [FieldError(field=str(key), reason="not a field of a log entry") for key in unknown]
        )
    message = item.get("message", item.get("name"))
    errors: list[FieldError] = []
    if not isinstance(message, str):
        errors.append(FieldError(field="message", reason="required, a string"))
    attributes = item.get("attributes")
    if attributes is not None and not isinstance(attributes, Mapping):
        errors.append(FieldError(field="attributes", reason="an object of key: value pairs"))
    errors.extend(
        FieldError(field=name, reason="a string")
        for name in ("service", "trace_id")
        if item.get(name) is not None and not isinstance(item.get(name), str)
    )
    if errors:
        raise ValidationError(errors)
    assert isinstance(message, str)
    return build_log(
        message,
        level=item.get("level", LogLevel.INFO),
        service=item.get("service") or service,
        timestamp=item.get("timestamp"),
        trace_id=item.get("trace_id"),
        attributes=item.get("attributes"),
    )


_encode: Final = msgspec.json.Encoder().encode


def encode_log(log: NewLog) -> bytes:
    """One entry's JSON, as it goes into a batch body."""
    return _encode(log)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """Encoded entries for one `POST /api/logs`, with the key that makes retrying it safe."""

    items: tuple[bytes, ...]
    idempotency_key: str

    @property
    def count(self) -> int:
        """How many entries it holds."""
        return len(self.items)

    @property
    def body(self) -> bytes:
        """The JSON array (built the same way every time, so the key's digest matches)."""
        return b"[" + b",".join(self.items) + b"]"

    def without(self, indexes: Iterable[int]) -> PreparedBatch:
        """The batch minus the items at `indexes`, under a new key (its body differs)."""
        skip = set(indexes)
        kept = tuple(item for i, item in enumerate(self.items) if i not in skip)
        return PreparedBatch(kept, new_idempotency_key())

    def split(self) -> tuple[PreparedBatch, PreparedBatch]:
        """Two halves, each under a new key (for a batch the server found too large)."""
        half = len(self.items) // 2
        return (
            PreparedBatch(self.items[:half], new_idempotency_key()),
            PreparedBatch(self.items[half:], new_idempotency_key()),
        )


def new_idempotency_key() -> str:
    """A fresh random key (32 hex digits)."""
    return uuid.uuid4().hex


def body_size(count: int, item_bytes: int) -> int:
    """The size of a JSON array of `count` items totalling `item_bytes`."""
    return item_bytes + max(0, count - 1) + 2


def prepare_batches(
    items: Iterable[bytes],
    *,
    key: str,
    max_items: int = MAX_BATCH_ITEMS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[PreparedBatch]:
    """Encoded entries grouped into batches within both limits, lazily; batch i gets `key-i`.

    An entry larger than `max_bytes` on its own still gets a batch of its own (the server will
    refuse it with a clear error rather than the SDK dropping it silently).
    """
    if max_items < 1 or max_bytes < 3:
        raise ValueError("max_items must be at least 1 and max_bytes at least 3")
    current: list[bytes] = []
    size = 0
    number = 0
    for item in items:
        if current and (
            len(current) >= max_items or body_size(len(current) + 1, size + len(item)) > max_bytes
        ):
            yield PreparedBatch(tuple(current), f"{key}-{number}")
            number += 1
            current, size = [], 0
        current.append(item)
        size += len(item)
    if current:
        yield PreparedBatch(tuple(current), f"{key}-{number}")


def check_key(key: str) -> str:
    """Refuse a caller's idempotency key that the server would refuse once suffixed."""
    if not (1 <= len(key) <= 240) or not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise ValidationError(
            [FieldError(field="idempotency_key", reason="must be 1-240 printable ASCII characters")]
        )
    return key


def shift_errors(exc: ValidationError, offset: int) -> ValidationError:
    """The same error with batch indexes made relative to the whole `log_many` input."""
    if offset == 0:
        return exc
    errors = [
        msgspec.structs.replace(e, index=e.index + offset) if e.index is not None else e
        for e in exc.errors
    ]
    return type(exc)(errors, str(exc))


# -- queries ---------------------------------------------------------------------------------

LevelArg = LogLevel | str | int | Iterable[LogLevel | str | int] | None
TimeArg = datetime | float | str | None


class TailFilters(TypedDict, total=False):
    """The filters of a live tail (all must match)."""

    query: str
    """A query string (docs/query.md); the same as passing it first."""
    level: LevelArg
    """Levels: a name, a comma-separated string, or several."""
    min_level: LogLevel | str | int
    """This level or more severe."""
    service: str | Iterable[str]
    """Services: a name, a comma-separated string, or several."""
    text: str
    """Case-insensitive text in the message."""
    attributes: Mapping[str, object]
    """Attribute equality."""


class CountFilters(TailFilters, total=False):
    """The filters and time range of a count (all filters must match)."""

    since: TimeArg
    """From this time on: a datetime, epoch seconds, RFC 3339, or relative (`15m`)."""
    until: TimeArg
    """Up to this time, in the same forms as `since`."""


class QueryFilters(CountFilters, total=False):
    """The filters and paging of a query (all filters must match)."""

    limit: int
    """The page size, 1-1000 (default 100)."""
    cursor: str
    """The previous page's `next_cursor`."""
    direction: Direction | str
    """`backward` (newest first, the default) or `forward`."""


def _levels(value: LevelArg) -> frozenset[LogLevel] | None:
    if value is None:
        return None
    names: Iterable[LogLevel | str | int]
    if isinstance(value, LogLevel | int):
        names = [value]
    elif isinstance(value, str):
        names = [part for part in value.split(",") if part.strip()]
    else:
        names = value
    return frozenset(_level(v.strip() if isinstance(v, str) else v) for v in names)


def _services(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset(s.strip() for s in value.split(",") if s.strip())
    return frozenset(value)


def make_query(
    base: LogQuery | str | None = None,
    /,
    *,
    query: str | None = None,
    level: LevelArg = None,
    min_level: LogLevel | str | int | None = None,
    service: str | Iterable[str] | None = None,
    text: str | None = None,
    since: TimeArg = None,
    until: TimeArg = None,
    attributes: Mapping[str, object] | None = None,
    limit: int | None = None,
    cursor: str | None = None,
    direction: Direction | str | None = None,
) -> LogQuery:
    """A `LogQuery` from keyword filters, on top of `base` when given.

    `base` is a `LogQuery`, or a string in the query language (docs/query.md), which the
    server parses; `query=` sets that string too (keywords win). `since`/`until` take
    datetimes, epoch seconds, RFC 3339 or relative times (`15m`: 15 minutes before now,
    resolved now so that paging sees a fixed range).

    Raises:
        ValidationError: naming each filter that cannot be understood.
    """
    if isinstance(base, str):
        base = LogQuery(query=base)
    base = base or LogQuery()
    changes: dict[str, Any] = {}
    errors: list[FieldError] = []

    def attempt(name: str, convert: Callable[[], Any]) -> None:
        try:
            changes[name] = convert()
        except (ValueError, TypeError, OverflowError, OSError) as exc:
            errors.append(FieldError(field=name, reason=str(exc)))

    if level is not None:
        attempt("levels", lambda: _levels(level))
    if min_level is not None:
        attempt("min_level", lambda: _level(min_level))
    if service is not None:
        changes["services"] = _services(service)
    if text is not None:
        changes["text"] = text or None
    if since is not None:
        attempt("since", lambda: _timestamp(since))
    if until is not None:
        attempt("until", lambda: _timestamp(until))
    if attributes is not None:
        changes["attributes"] = {str(k): _attr_text(v) for k, v in attributes.items()}
    if limit is not None:
        changes["limit"] = limit
    if cursor is not None:
        changes["cursor"] = cursor or None
    if direction is not None:
        attempt("direction", lambda: Direction(str(direction).lower()))
    if query is not None:
        changes["query"] = query
    if "query" in changes or base.query is not None:
        text = changes.get("query", base.query)
        changes["query"] = text if text and text.strip() else None  # blank: no query
    if errors:
        raise ValidationError(errors)
    return msgspec.structs.replace(base, **changes) if changes else base


def _attr_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_TAIL_PARAMS: Final = frozenset({"query", "level", "min_level", "service", "q", "attr"})
_COUNT_PARAMS: Final = _TAIL_PARAMS | {"since", "until"}


def tail_params(query: LogQuery) -> list[tuple[str, str]]:
    """The live-tail filters of `query` (the stream takes no time range, limit or cursor)."""
    return [(k, v) for k, v in query_to_params(query) if k in _TAIL_PARAMS]


def count_params(query: LogQuery) -> list[tuple[str, str]]:
    """The parameters of a count: the query string, the filters and the time range."""
    return [(k, v) for k, v in query_to_params(query) if k in _COUNT_PARAMS]


# -- client-side balancing -------------------------------------------------------------------


ServiceView = InstanceView
"""What `services()` returns: the shared model `aygolog.models.InstanceView` (an alias)."""


_SERVICES_DECODER: Final = msgspec.json.Decoder(list[ServiceView])


@dataclass(frozen=True, slots=True)
class Route:
    """Where one attempt goes: the LB (`instance` None) or an instance directly."""

    url: str
    instance: str | None = None


class Router:
    """Chooses the base URL of each attempt: always the LB, or (`mode="client"`) an instance.

    In client mode it keeps a snapshot of healthy instances from the LB, due for a refresh every
    `refresh_interval` seconds. Retries, a failed refresh, an empty snapshot and instances that
    just failed all go to the LB, which has the full health picture. Thread-safe.
    """

    def __init__(
        self,
        lb_url: str,
        *,
        mode: Balance = "lb",
        strategy: BalancerStrategy | str = "p2c",
        refresh_interval: float = 5.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in ("lb", "client"):
            raise ValueError(f"balance must be 'lb' or 'client', not {mode!r}")
        self.lb = Route(lb_url)
        self.mode = mode
        self.strategy = make_strategy(strategy, rng=rng) if isinstance(strategy, str) else strategy
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._instances: list[ServiceView] = []
        self._failed: set[str] = set()
        self._next_refresh = 0.0
        self._refreshing = False

    @property
    def instances(self) -> list[ServiceView]:
        """The healthy instances in the current snapshot."""
        with self._lock:
            return list(self._instances)

    def begin_refresh(self) -> bool:
        """True when the caller should fetch the services list now (and then `end_refresh`)."""
        if self.mode != "client":
            return False
        with self._lock:
            if self._refreshing or self._clock() < self._next_refresh:
                return False
            self._refreshing = True
            return True

    def end_refresh(self, status: int | None, content: bytes = b"") -> None:
        """Take the services answer (status None: the request failed; use the LB meanwhile)."""
        instances: list[ServiceView] = []
        if status == 200:
            try:
                instances = [
                    s
                    for s in _SERVICES_DECODER.decode(content)
                    if s.status == "healthy" and s.url.startswith(("http://", "https://"))
                ]
            except msgspec.MsgspecError:
                instances = []
        with self._lock:
            gone = {s.name for s in self._instances} - {s.name for s in instances}
            for name in gone:
                self.strategy.forget(name)
            self._instances = instances
            self._failed.clear()
            self._next_refresh = self._clock() + self.refresh_interval
            self._refreshing = False

    def route(self, *, retry: bool = False) -> Route:
        """The route for the next attempt."""
        if self.mode != "client" or retry:
            return self.lb
        with self._lock:
            candidates = [s for s in self._instances if s.name not in self._failed]
            if not candidates:
                return self.lb
            chosen = self.strategy.pick(candidates)
            self.strategy.start(chosen.name)
            return Route(chosen.url.rstrip("/"), chosen.name)

    def done(self, route: Route, *, ok: bool) -> None:
        """Record the end of an attempt; a failed instance is skipped until the next refresh."""
        if route.instance is None:
            return
        with self._lock:
            self.strategy.finish(route.instance)
            if not ok:
                self._failed.add(route.instance)


# -- live tail -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TailDropped:
    """The server said a live-tail subscriber fell behind and `count` entries were skipped.

    `after` is the id of the last entry received before the gap. When `recovering` is True the
    tail reconnects with `Last-Event-ID: after` at once, and the server sends the skipped entries
    from the store, so nothing is lost after all (while they are retained).
    """

    count: int
    after: str | None
    recovering: bool


def _stream_id(value: str) -> tuple[int, int] | None:
    ms, sep, seq = value.partition("-")
    if not (ms.isdigit() and (not sep or seq.isdigit())):
        return None
    return int(ms), int(seq or 0)


_ENTRY_DECODER: Final = msgspec.json.Decoder(LogEntry)


class TailState:
    """The pure half of a live tail: parses SSE lines into entries, remembers where it is.

    It also refuses any entry whose id is not above the last one seen, so a server bug or a
    replay can never show an entry twice.
    """

    def __init__(self, *, last_event_id: str | None = None, recover_dropped: bool = True) -> None:
        self.parser = SSEParser(last_event_id)
        self.recover_dropped = recover_dropped
        self._last = _stream_id(last_event_id) if last_event_id else None

    @property
    def last_event_id(self) -> str | None:
        """What to send as `Last-Event-ID` on the next connection."""
        return self.parser.last_event_id

    def headers(self) -> dict[str, str]:
        """The headers of the next connection."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.parser.last_event_id:
            headers["Last-Event-ID"] = self.parser.last_event_id
        return headers

    def reset_line_state(self) -> None:
        """Forget a half-received event (the connection broke in the middle of it)."""
        self.parser = SSEParser(self.parser.last_event_id)

    def feed(self, line: str) -> LogEntry | TailDropped | None:
        """One line of the stream; an entry or a gap notice when the line completes one."""
        event = self.parser.feed(line)
        if event is None:
            return None
        if event.event == "dropped":
            try:
                count = int(msgspec.json.decode(event.data)["count"])
            except (msgspec.MsgspecError, KeyError, TypeError, ValueError):
                count = 0
            after = self.parser.last_event_id
            return TailDropped(
                count=count, after=after, recovering=self.recover_dropped and after is not None
            )
        if event.event != "message":
            return None
        try:
            entry = _ENTRY_DECODER.decode(event.data)
        except msgspec.MsgspecError:
            return None
        position = _stream_id(entry.id)
        if position is not None:
            if self._last is not None and position <= self._last:
                return None
            self._last = position
        return entry


# -- the core both clients share ---------------------------------------------------------------


class ClientCore:
    """Configuration and pure helpers shared by `LogClient` and `AsyncLogClient`."""

    def __init__(
        self,
        base_url: str,
        *,
        retries: int | RetryPolicy = DEFAULT_RETRY,
        api_key: str | None = None,
        service: str | None = None,
        balance: Balance = "lb",
        strategy: BalancerStrategy | str = "p2c",
        refresh_interval: float = 5.0,
        max_batch_items: int = MAX_BATCH_ITEMS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url = base_url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"base_url {base_url!r} is not a valid URL: {exc}") from None
        if not parsed.host:
            raise ValueError(f"base_url {base_url!r} has no host")
        self.base_url = url
        self.policy = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries)
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self.service = service
        self.max_batch_items = max_batch_items
        self.max_batch_bytes = max_batch_bytes
        self.headers: dict[str, str] = {"Accept": _JSON}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.router = Router(
            url,
            mode=balance,
            strategy=strategy,
            refresh_interval=refresh_interval,
            rng=self.rng,
            clock=clock,
        )

    def attempts(self, spec: RequestSpec, policy: RetryPolicy | None = None) -> Attempts:
        """The retry state of one call."""
        return Attempts(policy or self.policy, spec, self.rng, self.clock)

    @staticmethod
    def where(spec: RequestSpec) -> str:
        """How a request is named in error messages."""
        return f"{spec.method} {spec.path}"

    @classmethod
    def answer(
        cls, spec: RequestSpec, attempts: Attempts, response: httpx.Response, kind: type[T]
    ) -> T:
        """The final response of a call decoded as `kind`; an error answer is raised as the
        `AygologError` it means, after `attempts` is told the call gave up."""
        try:
            return decode_response(
                response.status_code, response.headers, response.content, kind, cls.where(spec)
            )
        except AygologError as exc:
            attempts.gave_up(exc)
            raise

    # Requests.

    def log_request(self, log: NewLog) -> RequestSpec:
        """POST /api/log with a fresh Idempotency-Key (the same across this call's retries)."""
        if log.service is None and self.service is not None:
            log = msgspec.structs.replace(log, service=self.service)
        return RequestSpec(
            "POST",
            "/api/log",
            content=encode_log(log),
            headers={"Content-Type": _JSON, "Idempotency-Key": new_idempotency_key()},
            idempotent=True,
        )

    def batch_request(self, batch: PreparedBatch) -> RequestSpec:
        """POST /api/logs with the batch's Idempotency-Key (so every retry is safe)."""
        return RequestSpec(
            "POST",
            "/api/logs",
            content=batch.body,
            headers={"Content-Type": _JSON, "Idempotency-Key": batch.idempotency_key},
            idempotent=True,
        )

    def batches(
        self, entries: Iterable[NewLog | Mapping[str, Any] | str], key: str | None
    ) -> Iterator[PreparedBatch]:
        """`log_many`'s entries as batches under `key` (a fresh one when None), lazily."""
        items = (encode_log(to_new_log(e, service=self.service)) for e in entries)
        return prepare_batches(
            items,
            key=check_key(key) if key is not None else new_idempotency_key(),
            max_items=self.max_batch_items,
            max_bytes=self.max_batch_bytes,
        )

    @staticmethod
    def query_request(query: LogQuery) -> RequestSpec:
        """GET /api/logs."""
        return RequestSpec("GET", "/api/logs", params=query_to_params(query), idempotent=True)

    @staticmethod
    def count_request(query: LogQuery) -> RequestSpec:
        """GET /api/logs/count."""
        return RequestSpec("GET", "/api/logs/count", params=count_params(query), idempotent=True)

    @staticmethod
    def get_request(path: str, *, balanced: bool = True) -> RequestSpec:
        """A plain GET."""
        return RequestSpec("GET", path, idempotent=True, balanced=balanced)

    @staticmethod
    def tail_request(query: LogQuery) -> RequestSpec:
        """GET /api/logs/stream (headers come from the `TailState`)."""
        return RequestSpec("GET", "/api/logs/stream", params=tail_params(query), idempotent=True)

    @staticmethod
    def services_request() -> RequestSpec:
        """GET /api/registration/services, always from the LB."""
        return RequestSpec("GET", "/api/registration/services", idempotent=True, balanced=False)

    def route(self, spec: RequestSpec, attempts: Attempts) -> Route:
        """Where the next attempt of `spec` goes."""
        if not spec.balanced:
            return self.router.lb
        return self.router.route(retry=attempts.retries > 0)

    def headers_for(self, spec: RequestSpec) -> dict[str, str]:
        """The headers of one attempt."""
        return {**self.headers, **spec.headers}


# -- helpers both clients use ------------------------------------------------------------------

RETRYABLE_STREAM_STATUS: Final = _RETRYABLE_STATUS


class StreamRetry(Exception):
    """A retryable HTTP answer to the live-tail request (the tail reconnects after a while)."""

    def __init__(self, error: AygologError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def stream_status_error(
    status: int, headers: Mapping[str, str], content: bytes, spec: RequestSpec
) -> Exception:
    """What a non-200 answer to the stream request means: `StreamRetry`, or an error to raise."""
    error = error_from_response(status, headers, content, ClientCore.where(spec))
    if status in RETRYABLE_STREAM_STATUS:
        return StreamRetry(error, parse_retry_after(headers, content))
    return error


def give_up_error(exc: BaseException, url: str, spec: RequestSpec) -> AygologError:
    """The error a tail raises after its last allowed reconnect failed with `exc`."""
    if isinstance(exc, StreamRetry):
        return exc.error
    if isinstance(exc, AygologError):
        return exc
    if isinstance(exc, Exception):
        return transport_error(exc, url, spec)
    return Unavailable(str(exc))


def note_partial(exc: AygologError, results: Sequence[Any], batch: PreparedBatch) -> None:
    """Tell the caller of `log_many` which batches were stored before this one failed."""
    if results:
        stored = sum(len(r.ids) for r in results)
        exc.add_note(
            f"{len(results)} earlier batch(es) with {stored} entries were stored; the batch with"
            f" key {batch.idempotency_key!r} failed. Calling log_many again with the same"
            " idempotency_key and entries stores only the rest."
        )


def with_cursor(query: LogQuery, cursor: str) -> LogQuery:
    """The query for the page after `cursor`."""
    return msgspec.structs.replace(query, cursor=cursor)
