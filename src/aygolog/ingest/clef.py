"""Seq ingestion (`POST /ingest/clef`, `POST /api/events/raw`): CLEF or Seq's legacy
`{"Events": [...]}` JSON -> `NewLog`s. Pure: no I/O.

Mapping (docs/ingest.md has the table):

- `@t` (an ISO 8601 string; without an offset it is read as UTC) -> timestamp; missing -> the
  receive time. A number or any other type is refused.
- `@m` -> message; else `@mt` rendered with the event's properties (`render_template`); `@x`
  (the exception) is appended to the message on a new line, as a text formatter prints it.
- `@l` -> level by `LogLevel.parse` (Verbose, Debug, Information, Warning, Error, Fatal and the
  usual aliases); missing -> info; a name that is no level -> info, kept as the attribute `@l`.
- `@tr` -> `trace_id`; `@sp` -> the attribute `span_id`; `@i` (event type) -> `event_id`.
- `@ra` (resource attributes) and every other property -> attributes: nested objects flattened
  with dotted keys, arrays as their JSON text (the OTLP decoder's flattening). `@@name` is
  Seq's escape for a property named `@name`. `@r` (renderings) is dropped: we render ourselves.
- service: the first of `service.name` (in `@ra` or a property), `Application`,
  `ApplicationName`, `service`; a name our pattern refuses has its other characters replaced by
  `_` and the original stays as an attribute.
- legacy JSON: `Timestamp`, `Level`, `MessageTemplate`, `RenderedMessage`, `Exception` and
  `Properties` read as `@t`, `@l`, `@mt`, `@m`, `@x` and the properties.

A body that does not decode (a line that is not a JSON object, a reserved field of the wrong
type) is refused whole (`BodyError`, 400) naming the line or event.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from aygolog.ingest.body import BodyError, fit_service, flatten
from aygolog.models import AttributeValue, Limits, LogLevel, NewLog
from aygolog.validation import DEFAULT_LIMITS

__all__ = ["CLEF", "JSON", "SeqBatch", "decode_events", "render_template"]

CLEF: Final = "application/vnd.serilog.clef"
JSON: Final = "application/json"
# Media types a CLEF body may come with: Seq's own, and what generic shippers send.
_CLEF_TYPES: Final = frozenset({CLEF, "", "application/x-ndjson", "text/plain", JSON})
_SERVICE_KEYS: Final = ("service.name", "Application", "ApplicationName", "service")
_HOLE: Final = re.compile(
    r"\{\{|\}\}|\{([@$]?)([A-Za-z0-9_][A-Za-z0-9_.]*)(?:,(-?[0-9]{1,9}))?(?::([^{}]*))?\}"
)
_MAX_ALIGN: Final = 1024
_LEGACY: Final = {
    "Timestamp": "@t",
    "Level": "@l",
    "MessageTemplate": "@mt",
    "RenderedMessage": "@m",
    "Exception": "@x",
}
# The reserved names this decoder reads (or drops: `@r`); other `@` names stay as attributes.
_RESERVED: Final = frozenset({"@t", "@m", "@mt", "@l", "@x", "@tr", "@sp", "@i", "@r", "@ra"})
_encode_json: Final = msgspec.json.Encoder().encode
_decode_json: Final = msgspec.json.Decoder()


@dataclass
class SeqBatch:
    """A decoded body: its events as `NewLog`s, in order, and where each came from."""

    logs: list[NewLog]
    places: list[str]
    """Where each event was: `line 3` (CLEF) or `Events[2]` (legacy JSON)."""
    digest: str
    """SHA-256 (hex) of the decoded body: a client's retry sends the same bytes."""
    all_timed: bool
    """Every event carries `@t` (so two equal bodies are the same events)."""


def _text(value: object, *, json: bool = False) -> str:
    if isinstance(value, str) and not json:
        return value
    return _encode_json(value).decode()


def render_template(template: str, properties: dict[str, Any], max_chars: int | None = None) -> str:
    """A Serilog message template with its holes filled from `properties`.

    `{Name}` and `{$Name}` give a string property as is and other values as JSON text;
    `{@Name}` gives JSON text (strings quoted); `{Name,10}` / `{Name,-10}` pad right/left
    aligned (at most 1,024 wide); a `:format` is ignored (.NET format strings have no Python
    equivalent); `{{` and `}}` are braces; a hole naming no property stays as written, as
    Serilog leaves it.

    With `max_chars`, holes stop being filled once their text passes it (`{Big}` a million
    times must not cost gigabytes); the result is then longer than `max_chars`, for the
    message limit to refuse.
    """
    budget = [max_chars]

    def fill(found: re.Match[str]) -> str:
        whole = found.group(0)
        if whole in ("{{", "}}"):
            return whole[0]
        sigil, name, align = found.group(1), found.group(2), found.group(3)
        if name not in properties:
            return whole
        left = budget[0]
        if left is not None and left < 0:
            return ""
        text = _text(properties[name], json=sigil == "@")
        if align:
            # Bounded: a template is the sender's, and `{A,999999999}` must not cost a GB.
            width = max(-_MAX_ALIGN, min(int(align), _MAX_ALIGN))
            text = text.rjust(width) if width > 0 else text.ljust(-width)
        if left is not None:
            budget[0] = left - len(text)
        return text

    return _HOLE.sub(fill, template)


def _timestamp(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BodyError(400, f"{where}: @t must be an ISO 8601 timestamp string")
    try:
        stamp = datetime.fromisoformat(value.strip())
        # In UTC here: year 1 at +14:00 (or 9999 at -14:00) has no UTC time (OverflowError).
        return stamp.astimezone(UTC) if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise BodyError(
            400, f"{where}: @t {value[:40]!r} is not an ISO 8601 timestamp (in years 1-9999 UTC)"
        ) from None


def _string(event: dict[str, Any], name: str, where: str) -> str | None:
    value = event.get(name)
    if value is None or isinstance(value, str):
        return value
    raise BodyError(400, f"{where}: {name} must be a string")


def _service(
    resource: dict[str, Any], properties: dict[str, Any], limits: Limits
) -> tuple[str | None, str | None, str | None]:
    """(service, the property it came from, the original when it had to be changed)."""
    for key in _SERVICE_KEYS:
        for source in (resource, properties):
            value = source.get(key)
            if isinstance(value, str) and value:
                fitted = fit_service(value, limits)
                if fitted == value:
                    return value, key, None
                return fitted or None, key, value
    return None, None, None


def _event(event: dict[str, Any], where: str, limits: Limits) -> tuple[NewLog, bool]:
    """One CLEF event -> (entry, whether it carried `@t`)."""
    stamp = _timestamp(event.get("@t"), where)
    message = _string(event, "@m", where)
    template = _string(event, "@mt", where)
    level_name = _string(event, "@l", where)
    exception = _string(event, "@x", where)
    trace_id = _string(event, "@tr", where)
    span_id = _string(event, "@sp", where)
    resource = event.get("@ra") or {}
    if not isinstance(resource, dict):
        raise BodyError(400, f"{where}: @ra must be an object")
    properties: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("@@"):
            properties[key[1:]] = value
        elif key not in _RESERVED:
            properties[key] = value
    if message is None:
        message = (
            render_template(template, properties, limits.max_message_bytes)
            if template is not None
            else ""
        )
    if exception:
        message = f"{message}\n{exception}" if message else exception
    limit = limits.max_attribute_value_bytes
    flat: dict[str, AttributeValue] = {}
    service, used, original = _service(resource, properties, limits)
    for key, value in resource.items():
        flatten(key, value, flat, limit)
    for key, value in properties.items():
        kind = type(value)
        if kind is int or (kind is str and len(value) * 4 <= limit):  # the common case, inline
            flat[key] = value
        else:
            flatten(key, value, flat, limit)
    if used is not None:
        # Dotted flattening may have spread a nested `service` object; drop only the key used.
        flat.pop(used, None)
        if original is not None:
            flatten(used, original, flat, limit)
    level = LogLevel.INFO
    if level_name:
        try:
            level = LogLevel.parse(level_name)
        except ValueError:
            flat["@l"] = level_name[:limit]
    if span_id:
        flat["span_id"] = span_id
    event_id = event.get("@i")
    if event_id is not None:
        flat["event_id"] = _text(event_id)[:limit]
    entry = NewLog(
        message=message,
        level=level,
        service=service,
        timestamp=stamp,
        attributes=flat,
        trace_id=trace_id or None,
    )
    return entry, stamp is not None


def _object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = _decode_json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BodyError(400, f"{where}: malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BodyError(400, f"{where}: expected a JSON object (one CLEF event per line)")
    return value


def _from_clef(body: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    events: list[dict[str, Any]] = []
    places: list[str] = []
    for number, line in enumerate(body.split(b"\n"), 1):
        if line.strip():  # blank lines (and the \r of \r\n) are allowed between events
            where = f"line {number}"
            events.append(_object(line, where))
            places.append(where)
    return events, places


def _from_legacy(body: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    document = _object(body, "body")
    raw = document.get("Events")
    if not isinstance(raw, list):
        raise BodyError(400, 'body: expected {"Events": [...]}')
    events: list[dict[str, Any]] = []
    places: list[str] = []
    for index, item in enumerate(raw):
        where = f"Events[{index}]"
        if not isinstance(item, dict):
            raise BodyError(400, f"{where}: expected an object")
        properties = item.get("Properties") or {}
        if not isinstance(properties, dict):
            raise BodyError(400, f"{where}.Properties: expected an object")
        # Properties first, escaped, so that they can never stand for a reserved field.
        event = {("@" + key if key.startswith("@") else key): v for key, v in properties.items()}
        event.update({_LEGACY[key]: v for key, v in item.items() if key in _LEGACY})
        events.append(event)
        places.append(where)
    return events, places


def decode_events(
    body: bytes, content_type: str, *, clef: bool, limits: Limits = DEFAULT_LIMITS
) -> SeqBatch:
    """Decode a Seq ingestion body (its `Content-Encoding` already undone).

    Args:
        body: the request body.
        content_type: the bare media type.
        clef: the body is CLEF whatever its JSON-ish media type (`/ingest/clef`, or `?clef`).
            Otherwise `application/vnd.serilog.clef` means CLEF and `application/json` (or
            none) the legacy `{"Events": [...]}` document.
        limits: the attribute value length to cut strings at, the service name length.

    Raises:
        BodyError: 415 for another media type, 400 for a body that does not decode.
    """
    if content_type == CLEF or (clef and content_type in _CLEF_TYPES):
        events, places = _from_clef(body)
    elif content_type in (JSON, ""):
        events, places = _from_legacy(body)
    else:
        accepted = f"{CLEF} or {JSON}" if not clef else CLEF
        raise BodyError(415, f"unsupported content type {content_type!r}; send {accepted}")
    logs: list[NewLog] = []
    all_timed = True
    for event, where in zip(events, places, strict=True):
        entry, timed = _event(event, where, limits)
        logs.append(entry)
        all_timed = all_timed and timed
    return SeqBatch(logs, places, hashlib.sha256(body).hexdigest(), all_timed)
