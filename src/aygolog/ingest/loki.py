"""Loki push (`POST /loki/api/v1/push`): a JSON or snappy-compressed protobuf `PushRequest` ->
`NewLog`s. Pure: no I/O.

Mapping (docs/ingest.md has the table):

- labels: the first of `service_name`, `service`, `job`, `app` that is present and not empty
  -> `service` (a name our service pattern refuses has each run of other characters replaced by
  `_`, and the original stays as an attribute under its label name); the first of `level`,
  `detected_level`, `severity` -> `level`, read by `LogLevel.parse` (a value that names no
  level gives info, and the label stays as an attribute); every other label -> an attribute
  (a label with an empty value is dropped, as Loki does).
- structured metadata (JSON: the third element of a value; protobuf: `structuredMetadata`)
  -> attributes; on a clash with a label the entry's metadata wins.
- line -> message; the entry's timestamp (nanoseconds) -> timestamp (kept to the microsecond).

A body that does not decode (bad JSON or JSON of the wrong types, e.g. a timestamp as a number;
bad snappy; bad protobuf; a labels string that is not `{name="value", ...}`; a missing or
out-of-range timestamp) is refused whole (`BodyError`, 400).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import cramjam
import msgspec
from google.protobuf.message import DecodeError

from aygolog.ingest.body import BodyError, fit_service
from aygolog.ingest.loki_push_pb2 import PushRequest
from aygolog.models import AttributeValue, Limits, LogLevel, NewLog
from aygolog.validation import DEFAULT_LIMITS

__all__ = [
    "JSON",
    "LEVEL_LABELS",
    "PROTOBUF",
    "SERVICE_LABELS",
    "LokiBatch",
    "decode_push",
    "parse_labels",
]

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
SERVICE_LABELS: Final = ("service_name", "service", "job", "app")
LEVEL_LABELS: Final = ("level", "detected_level", "severity")
_MAX_NS: Final = 2**63 - 1  # Go's time.Time in nanoseconds, what Loki reads
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NS: Final = re.compile(r"[0-9]{1,19}")


@dataclass
class LokiBatch:
    """A decoded push: its entries as `NewLog`s in order, and where each came from."""

    logs: list[NewLog]
    starts: list[int]
    """The index in `logs` of each stream's first entry."""
    digest: str
    """SHA-256 (hex) of the decoded body: a client's retry sends the same bytes."""
    entries: str = "values"
    """What the encoding calls a stream's entries (`values` in JSON, `entries` in protobuf)."""

    def place(self, index: int) -> str:
        """Where `logs[index]` was in the body: `streams[s].values[e]`."""
        stream = bisect.bisect_right(self.starts, index) - 1
        return f"streams[{stream}].{self.entries}[{index - self.starts[stream]}]"


# --- the labels string of the protobuf form: {name="value", ...} -----------------------------

_PAIR: Final = re.compile(
    r'\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*("(?:[^"\\]|\\.)*")\s*(?:,|\Z)', re.S
)


def parse_labels(text: str) -> dict[str, str]:
    """`{job="api", level="info"}` (LogQL's selector syntax, `=` only) as a dict.

    Values are double-quoted with JSON's escapes (`\\"`, `\\\\`, `\\n`, `\\uXXXX`), which is
    what Loki's clients write.

    Raises:
        BodyError: 400, the text is not a label set.
    """
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise BodyError(400, f'labels {text[:80]!r}: expected {{name="value", ...}}')
    inner = body[1:-1]
    labels: dict[str, str] = {}
    at = 0
    while inner[at:].strip():
        found = _PAIR.match(inner, at)
        if found is None:
            raise BodyError(400, f"labels {text[:80]!r}: cannot read {inner[at:][:20]!r}")
        try:
            labels[found.group(1)] = json.loads(found.group(2))
        except ValueError:
            raise BodyError(400, f"labels {text[:80]!r}: bad escape in a value") from None
        at = found.end()
    return labels


# --- the mapping both encodings share -------------------------------------------------------


def _stream_base(
    labels: dict[str, str], limits: Limits
) -> tuple[str | None, LogLevel, dict[str, AttributeValue]]:
    """(service, level, attributes) of a stream, from its labels."""
    # Loki reads a label with an empty value as no label at all.
    attributes: dict[str, AttributeValue] = {name: value for name, value in labels.items() if value}
    service = None
    for name in SERVICE_LABELS:
        value = labels.get(name)
        if value:
            service = fit_service(value, limits)
            if service == value:
                del attributes[name]
            break
    level = LogLevel.INFO
    for name in LEVEL_LABELS:
        value = labels.get(name)
        if value:
            try:
                level = LogLevel.parse(value)
            except ValueError:
                break  # info, and the label stays
            del attributes[name]
            break
    return service, level, attributes


def _timestamp(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


# --- JSON ------------------------------------------------------------------------------------


class _JStream(msgspec.Struct):
    stream: dict[str, str] = {}
    values: list[list[str | dict[str, str]]] = []


class _JPush(msgspec.Struct):
    streams: list[_JStream] = []


_JSON_PUSH: Final = msgspec.json.Decoder(_JPush)


def _from_json(body: bytes, limits: Limits) -> tuple[list[NewLog], list[int]]:
    try:
        push = _JSON_PUSH.decode(body)
    except msgspec.ValidationError as exc:
        raise BodyError(400, f"invalid Loki push JSON: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BodyError(400, f"malformed JSON: {exc}") from None
    logs: list[NewLog] = []
    starts: list[int] = []
    for s, stream in enumerate(push.streams):
        starts.append(len(logs))
        service, level, base = _stream_base(stream.stream, limits)
        for e, value in enumerate(stream.values):
            if len(value) not in (2, 3):
                shape = '["<ns>", "<line>"] or ["<ns>", "<line>", {metadata}]'
                raise BodyError(400, f"streams[{s}].values[{e}]: expected {shape}")
            ns, line = value[0], value[1]
            if not isinstance(ns, str) or not _NS.fullmatch(ns) or int(ns) > _MAX_NS:
                why = "the timestamp must be nanoseconds as a string"
                raise BodyError(400, f"streams[{s}].values[{e}][0]: {why}")
            if not isinstance(line, str):
                raise BodyError(400, f"streams[{s}].values[{e}][1]: the log line must be a string")
            attributes = dict(base)
            if len(value) == 3:
                metadata = value[2]
                if not isinstance(metadata, dict):
                    why = "structured metadata must be an object"
                    raise BodyError(400, f"streams[{s}].values[{e}][2]: {why}")
                attributes.update(metadata)
            logs.append(
                NewLog(
                    message=line,
                    level=level,
                    service=service,
                    timestamp=_timestamp(int(ns)),
                    attributes=attributes,
                )
            )
    return logs, starts


# --- protobuf (snappy block format) ----------------------------------------------------------


def _snappy_length(body: bytes) -> int:
    """The decompressed length a raw snappy block declares (its varint preamble)."""
    length = shift = 0
    for byte in body[:5]:
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return length
        shift += 7
    raise BodyError(400, "broken snappy body: no length preamble")


def _unsnappy(body: bytes, max_bytes: int) -> bytes:
    length = _snappy_length(body)
    if length > max_bytes:
        raise BodyError(413, f"decompressed body larger than {max_bytes} bytes")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise BodyError(400, f"broken snappy body: {exc}") from None


def _from_protobuf(body: bytes, limits: Limits) -> tuple[list[NewLog], list[int]]:
    push = PushRequest()
    try:
        push.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BodyError(400, f"malformed protobuf PushRequest: {exc}") from None
    logs: list[NewLog] = []
    starts: list[int] = []
    for s, stream in enumerate(push.streams):
        starts.append(len(logs))
        service, level, base = _stream_base(parse_labels(stream.labels), limits)
        for e, entry in enumerate(stream.entries):
            if not entry.HasField("timestamp"):
                raise BodyError(400, f"streams[{s}].entries[{e}]: no timestamp")
            stamp = entry.timestamp
            if stamp.seconds < 0 or not 0 <= stamp.nanos < 1_000_000_000:
                raise BodyError(400, f"streams[{s}].entries[{e}].timestamp: out of range")
            ns = stamp.seconds * 1_000_000_000 + stamp.nanos
            if ns > _MAX_NS:
                raise BodyError(400, f"streams[{s}].entries[{e}].timestamp: out of range")
            attributes = dict(base)
            for pair in entry.structuredMetadata:
                attributes[pair.name] = pair.value
            logs.append(
                NewLog(
                    message=entry.line,
                    level=level,
                    service=service,
                    timestamp=_timestamp(ns),
                    attributes=attributes,
                )
            )
    return logs, starts


# --- the public surface ----------------------------------------------------------------------


def decode_push(
    body: bytes, content_type: str, *, max_bytes: int, limits: Limits = DEFAULT_LIMITS
) -> LokiBatch:
    """Decode a Loki push body (its `Content-Encoding` already undone).

    Args:
        body: the request body.
        content_type: the bare media type: `application/json`, or `application/x-protobuf`
            (or none, which Loki reads as protobuf too) for snappy-compressed protobuf.
        max_bytes: the most a snappy body may decompress to.
        limits: the service name length.

    Raises:
        BodyError: 415 for another content type, 413 for a snappy body that declares more than
            `max_bytes`, 400 for a body that does not decode.
    """
    if content_type == JSON:
        logs, starts = _from_json(body, limits)
        entries = "values"
    elif content_type in (PROTOBUF, ""):
        body = _unsnappy(body, max_bytes)
        logs, starts = _from_protobuf(body, limits)
        entries = "entries"
    else:
        raise BodyError(
            415, f"unsupported content type {content_type!r}; send {JSON} or {PROTOBUF}"
        )
    return LokiBatch(logs, starts, hashlib.sha256(body).hexdigest(), entries)
