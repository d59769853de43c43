"""`LogQuery` <-> URL query parameters: one definition, used by the Log API, the SDK and the UI.

Parameters (all optional, every one given must match):

| name | meaning | example |
|---|---|---|
| `query` | the query language (docs/query.md), at most 4,096 characters | `query=timeout` |
| `level` | levels, repeated or comma-separated (aliases allowed) | `level=error,warn` |
| `min_level` | this level or more severe | `min_level=warning` |
| `service` | services, repeated or comma-separated | `service=api&service=auth` |
| `q` | case-insensitive text in the message | `q=timeout` |
| `since`, `until` | RFC 3339, epoch s/ms, or relative (`30s`, `15m`, `2h`, `7d`) | `since=15m` |
| `attr` | attribute equality `key:value`, repeated | `attr=region:eu` |
| `limit` | page size, 1-1000 (default 100) | `limit=50` |
| `cursor` | the previous page's `next_cursor` | |
| `direction` | `backward` (newest first, default) or `forward` | |
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from aygolog.errors import ValidationError
from aygolog.models import Direction, FieldError, LogLevel, LogQuery
from aygolog.validation import parse_timestamp

__all__ = ["parse_query_params", "parse_time", "query_to_params"]

_RELATIVE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """RFC 3339, epoch seconds/ms/ns, or a time relative to now (`15m` = 15 minutes ago).

    Raises:
        ValueError: none of those.
    """
    text = value.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        try:
            ago = timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
            return (now or datetime.now(UTC)) - ago
        except OverflowError:
            raise ValueError(f"not a time: {value[:40]!r} is too far back") from None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return parse_timestamp(float(text) if "." in text else int(text))
    try:
        return parse_timestamp(text)
    except ValueError:
        raise ValueError(
            f"not a time: {value[:40]!r}; use RFC 3339, epoch seconds, or a relative time"
            " such as 15m, 2h or 7d"
        ) from None


def _split(values: Iterable[str] | None) -> list[str]:
    return [part.strip() for v in values or () for part in v.split(",") if part.strip()]


def parse_query_params(
    *,
    level: Sequence[str] | None = None,
    min_level: str | None = None,
    service: Sequence[str] | None = None,
    q: str | None = None,
    since: str | None = None,
    until: str | None = None,
    attr: Sequence[str] | None = None,
    limit: int = 100,
    cursor: str | None = None,
    direction: str | None = None,
    query: str | None = None,
) -> LogQuery:
    """A `LogQuery` from query parameters (see the module docstring).

    `query` is kept as text: it is parsed (and its length bounded) by `plan_for`, once.

    Raises:
        ValidationError: naming each bad parameter.
    """
    errors: list[FieldError] = []
    levels: frozenset[LogLevel] | None = None
    names = _split(level)
    if names:
        parsed = set()
        for name in names:
            try:
                parsed.add(LogLevel.parse(name))
            except ValueError as exc:
                errors.append(FieldError(field="level", reason=str(exc)))
        levels = frozenset(parsed)
    floor = None
    if min_level:
        try:
            floor = LogLevel.parse(min_level)
        except ValueError as exc:
            errors.append(FieldError(field="min_level", reason=str(exc)))
    services = frozenset(_split(service)) or None
    times: dict[str, datetime | None] = {"since": None, "until": None}
    for field, raw in (("since", since), ("until", until)):
        if raw:
            try:
                times[field] = parse_time(raw)
            except ValueError as exc:
                errors.append(FieldError(field=field, reason=str(exc)))
    attributes: dict[str, str] = {}
    for pair in attr or ():
        key, sep, value = pair.partition(":")
        if not sep or not key:
            errors.append(FieldError(field="attr", reason=f"expected key:value, got {pair[:40]!r}"))
        else:
            attributes[key] = value
    way = Direction.BACKWARD
    if direction:
        try:
            way = Direction(direction.lower())
        except ValueError:
            errors.append(FieldError(field="direction", reason="must be backward or forward"))
    if errors:
        raise ValidationError(errors)
    return LogQuery(
        levels=levels,
        min_level=floor,
        services=services,
        text=q or None,
        since=times["since"],
        until=times["until"],
        attributes=attributes,
        limit=limit,
        cursor=cursor or None,
        direction=way,
        query=query if query and query.strip() else None,
    )


def query_to_params(query: LogQuery) -> list[tuple[str, str]]:
    """The query parameters that `parse_query_params` turns back into `query`."""
    params: list[tuple[str, str]] = []
    if query.query:
        params.append(("query", query.query))
    if query.levels is not None:
        params.append(("level", ",".join(sorted(lv.value for lv in query.levels))))
    if query.min_level is not None:
        params.append(("min_level", query.min_level.value))
    if query.services is not None:
        params += [("service", s) for s in sorted(query.services)]
    if query.text:
        params.append(("q", query.text))
    if query.since is not None:
        params.append(("since", query.since.isoformat()))
    if query.until is not None:
        params.append(("until", query.until.isoformat()))
    params += [("attr", f"{k}:{v}") for k, v in query.attributes.items()]
    if query.limit != 100:
        params.append(("limit", str(query.limit)))
    if query.cursor:
        params.append(("cursor", query.cursor))
    if query.direction is not Direction.BACKWARD:
        params.append(("direction", query.direction.value))
    return params
