"""OpenTelemetry OTLP/HTTP logs: an `ExportLogsServiceRequest` (protobuf or JSON) -> `NewLog`s,
and the answers the OTLP specification asks for. Pure: no I/O.

Mapping (docs/ingest.md has the table):

- severity: `severity_number` 1-4 trace, 5-8 debug, 9-12 info, 13-16 warning, 17-20 error,
  21-24 critical; 0 (unspecified) falls back to `severity_text` read as a level name
  (`LogLevel.parse`), and to info when that names no level.
- `service.name` resource attribute -> `service`. A name our service pattern refuses
  (`unknown_service:python`) has each run of other characters replaced by `_`; the original
  stays in the attribute `service.name`.
- body -> message: a string as is; a number or boolean as its JSON text; a map or an array as
  its JSON text (bytes as base64); no body -> the record's `event_name`, else refused.
- attributes: resource, then scope, then log record (a later key wins), plus
  `otel.scope.name`/`otel.scope.version` and `span_id` (hex). Nested maps are flattened with
  dotted keys (`http.request.header.accept`); arrays are kept as their JSON text; bytes as
  base64; empty values are dropped. String values longer than the limit are cut (on a UTF-8
  boundary), as OpenTelemetry's own attribute length limit does.
- `trace_id` (hex, lowercase) -> `trace_id`; an all-zero id means none.
- `time_unix_nano`, else `observed_time_unix_nano`, else the receive time -> timestamp.

A body that does not decode (bad protobuf, bad JSON or wrong JSON types, bad hex ids, bad
int64 text) is refused whole (`BodyError`, 400); records that decode but break our rules are
refused one by one and reported in `partial_success` (see `aygolog.ingest.body.split_valid`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from aygolog.ingest.body import BodyError, cut, fit_service, flatten
from aygolog.models import AttributeValue, Limits, LogLevel, NewLog
from aygolog.validation import DEFAULT_LIMITS

__all__ = [
    "JSON",
    "PROTOBUF",
    "GrpcCode",
    "OtlpBatch",
    "decode_request",
    "encode_status",
    "encode_success",
    "media_type",
]

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
_MAX_DEPTH: Final = 32  # nesting of maps/arrays in one value; OTel SDKs send 1-3


class GrpcCode:
    """The `google.rpc.Code` values OTLP/HTTP answers carry."""

    INVALID_ARGUMENT: Final = 3
    RESOURCE_EXHAUSTED: Final = 8
    UNAVAILABLE: Final = 14


@dataclass
class OtlpBatch:
    """A decoded request: its records as `NewLog`s, in order."""

    logs: list[NewLog]
    digest: str
    """SHA-256 (hex) of the decoded body: an exporter's retry sends the same bytes."""
    all_timed: bool
    """Every record carries its own time (so two equal bodies are the same records)."""


# --- JSON (the OTLP/JSON mapping: lowerCamelCase, hex ids, int64 as string or number) ---------


class _JAnyValue(msgspec.Struct, rename="camel"):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: int | str | None = None
    double_value: float | str | None = None
    array_value: _JArray | None = None
    kvlist_value: _JKvList | None = None
    bytes_value: str | None = None


class _JKeyValue(msgspec.Struct, rename="camel"):
    key: str = ""
    value: _JAnyValue | None = None


class _JArray(msgspec.Struct, rename="camel"):
    values: list[_JAnyValue] | None = None


class _JKvList(msgspec.Struct, rename="camel"):
    values: list[_JKeyValue] | None = None


class _JResource(msgspec.Struct, rename="camel"):
    attributes: list[_JKeyValue] | None = None


class _JScope(msgspec.Struct, rename="camel"):
    name: str = ""
    version: str = ""
    attributes: list[_JKeyValue] | None = None


class _JLogRecord(msgspec.Struct, rename="camel"):
    time_unix_nano: int | str | None = None
    observed_time_unix_nano: int | str | None = None
    severity_number: int | str | None = None
    severity_text: str = ""
    body: _JAnyValue | None = None
    attributes: list[_JKeyValue] | None = None
    trace_id: str = ""
    span_id: str = ""
    event_name: str = ""


class _JScopeLogs(msgspec.Struct, rename="camel"):
    scope: _JScope | None = None
    log_records: list[_JLogRecord] | None = None


class _JResourceLogs(msgspec.Struct, rename="camel"):
    resource: _JResource | None = None
    scope_logs: list[_JScopeLogs] | None = None


class _JRequest(msgspec.Struct, rename="camel"):
    resource_logs: list[_JResourceLogs] | None = None


_JSON_REQUEST: Final = msgspec.json.Decoder(_JRequest)
_encode_json: Final = msgspec.json.Encoder().encode
_INT64: Final = re.compile(r"-?[0-9]{1,19}")
_SEVERITY_NAMES: Final = {
    f"SEVERITY_NUMBER_{name}{suffix}": base + offset
    for base, name in ((1, "TRACE"), (5, "DEBUG"), (9, "INFO"), (13, "WARN"), (17, "ERROR"),
                       (21, "FATAL"))
    for offset, suffix in enumerate(("", "2", "3", "4"))
} | {"SEVERITY_NUMBER_UNSPECIFIED": 0}  # fmt: skip
_LEVELS: Final = (
    LogLevel.TRACE,
    LogLevel.DEBUG,
    LogLevel.INFO,
    LogLevel.WARNING,
    LogLevel.ERROR,
    LogLevel.CRITICAL,
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _json_int(value: int | str | None, where: str, low: int, high: int) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        if not _INT64.fullmatch(value):
            raise BodyError(400, f"{where}: {value[:40]!r} is not an integer")
        value = int(value)
    if not low <= value <= high:
        raise BodyError(400, f"{where}: {value} is out of range")
    return value


def _json_value(value: _JAnyValue | None, where: str, depth: int = 0) -> object:
    """A JSON AnyValue as a Python value (dict/list for maps and arrays; None when empty)."""
    if value is None:
        return None
    if depth > _MAX_DEPTH:
        raise BodyError(400, f"{where}: nested more than {_MAX_DEPTH} levels")
    if value.string_value is not None:
        return value.string_value
    if value.bool_value is not None:
        return value.bool_value
    if value.int_value is not None:
        return _json_int(value.int_value, f"{where}.intValue", -(2**63), 2**63 - 1)
    if value.double_value is not None:
        double = value.double_value
        if isinstance(double, str):
            # proto3 JSON spells the non-finite doubles as strings.
            if double not in ("NaN", "Infinity", "-Infinity"):
                raise BodyError(400, f"{where}.doubleValue: {double[:40]!r} is not a number")
            return double
        return double
    if value.array_value is not None:
        return [_json_value(v, where, depth + 1) for v in value.array_value.values or ()]
    if value.kvlist_value is not None:
        return {
            kv.key: _json_value(kv.value, where, depth + 1)
            for kv in value.kvlist_value.values or ()
        }
    if value.bytes_value is not None:
        try:
            raw = base64.b64decode(value.bytes_value, validate=True)
        except binascii.Error:
            raise BodyError(400, f"{where}.bytesValue: not base64") from None
        return base64.b64encode(raw).decode()
    return None


def _json_pairs(pairs: list[_JKeyValue] | None, where: str) -> Iterator[tuple[str, object]]:
    for kv in pairs or ():
        yield kv.key, _json_value(kv.value, f"{where}.{kv.key[:40]}")


def _hex_id(text: str, size: int, where: str) -> str | None:
    if not text:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise BodyError(400, f"{where}: {text[:40]!r} is not hex") from None
    if len(raw) != size:
        raise BodyError(400, f"{where}: must be {size} bytes ({size * 2} hex digits)")
    return None if not any(raw) else raw.hex()


def _from_json(body: bytes, limits: Limits) -> tuple[list[NewLog], bool]:
    try:
        request = _JSON_REQUEST.decode(body)
    except msgspec.ValidationError as exc:
        raise BodyError(400, f"invalid OTLP/JSON: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BodyError(400, f"malformed JSON: {exc}") from None
    logs: list[NewLog] = []
    all_timed = True
    for r, resource_logs in enumerate(request.resource_logs or ()):
        where = f"resourceLogs[{r}]"
        resource = dict(
            _json_pairs(resource_logs.resource.attributes if resource_logs.resource else None,
                        f"{where}.resource.attributes")
        )  # fmt: skip
        for s, scope_logs in enumerate(resource_logs.scope_logs or ()):
            here = f"{where}.scopeLogs[{s}]"
            scope = scope_logs.scope
            service, base = _base(
                resource,
                _scope_attributes(
                    scope.name if scope else "",
                    scope.version if scope else "",
                    _json_pairs(scope.attributes if scope else None, f"{here}.scope.attributes"),
                ),
                limits,
            )
            for i, record in enumerate(scope_logs.log_records or ()):
                at = f"{here}.logRecords[{i}]"
                time = _json_int(record.time_unix_nano, f"{at}.timeUnixNano", 0, 2**64 - 1)
                observed = _json_int(
                    record.observed_time_unix_nano, f"{at}.observedTimeUnixNano", 0, 2**64 - 1
                )
                severity = record.severity_number
                if isinstance(severity, str) and severity in _SEVERITY_NAMES:
                    severity = _SEVERITY_NAMES[severity]
                number = _json_int(severity, f"{at}.severityNumber", -(2**31), 2**31 - 1)
                all_timed = all_timed and bool(time or observed)
                logs.append(
                    _record(
                        service=service,
                        base=base,
                        attributes=_json_pairs(record.attributes, f"{at}.attributes"),
                        time=time or observed,
                        severity_number=number,
                        severity_text=record.severity_text,
                        body=_json_value(record.body, f"{at}.body"),
                        event_name=record.event_name,
                        trace_id=_hex_id(record.trace_id, 16, f"{at}.traceId"),
                        span_id=_hex_id(record.span_id, 8, f"{at}.spanId"),
                        limits=limits,
                    )
                )
    return logs, all_timed


# --- protobuf -------------------------------------------------------------------------------


def _proto_value(value: AnyValue, where: str, depth: int = 0) -> object:
    if depth > _MAX_DEPTH:
        raise BodyError(400, f"{where}: nested more than {_MAX_DEPTH} levels")
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "array_value":
        return [_proto_value(v, where, depth + 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {
            kv.key: _proto_value(kv.value, where, depth + 1) for kv in value.kvlist_value.values
        }
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None


def _proto_pairs(pairs: Iterable[KeyValue], where: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for kv in pairs:
        value = kv.value
        kind = value.WhichOneof("value")
        # The scalars inline (most attributes); `where` is only built for nested values.
        if kind == "string_value":
            out.append((kv.key, value.string_value))
        elif kind == "int_value":
            out.append((kv.key, value.int_value))
        else:
            out.append((kv.key, _proto_value(value, f"{where}.{kv.key[:40]}")))
    return out


def _proto_id(raw: bytes, size: int, here: str, i: int, name: str) -> str | None:
    if not raw:
        return None
    if len(raw) != size:
        where = f"{here}.log_records[{i}].{name}"
        raise BodyError(400, f"{where}: must be {size} bytes, not {len(raw)}")
    return raw.hex() if any(raw) else None


def _from_protobuf(body: bytes, limits: Limits) -> tuple[list[NewLog], bool]:
    request = ExportLogsServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BodyError(400, f"malformed protobuf ExportLogsServiceRequest: {exc}") from None
    logs: list[NewLog] = []
    all_timed = True
    for r, resource_logs in enumerate(request.resource_logs):
        where = f"resource_logs[{r}]"
        resource = dict(
            _proto_pairs(resource_logs.resource.attributes, f"{where}.resource.attributes")
        )
        for s, scope_logs in enumerate(resource_logs.scope_logs):
            here = f"{where}.scope_logs[{s}]"
            scope = scope_logs.scope
            service, base = _base(
                resource,
                _scope_attributes(
                    scope.name,
                    scope.version,
                    _proto_pairs(scope.attributes, f"{here}.scope.attributes"),
                ),
                limits,
            )
            limit = limits.max_attribute_value_bytes
            # The plain case inline (string body, scalar attributes, a severity number): this
            # loop runs once per record and decides the route's cost per batch.
            for i, record in enumerate(scope_logs.log_records):
                time = record.time_unix_nano or record.observed_time_unix_nano
                if not time:
                    all_timed = False
                payload = record.body
                kind = payload.WhichOneof("value")
                if kind == "string_value":
                    message = payload.string_value or record.event_name
                elif kind is None:
                    message = record.event_name
                else:
                    where = f"{here}.log_records[{i}].body"
                    message = _message(_proto_value(payload, where), record.event_name)
                flat = dict(base)
                for kv in record.attributes:
                    value = kv.value
                    kind = value.WhichOneof("value")
                    if kind == "string_value":
                        text = value.string_value
                        flat[kv.key] = text if len(text) * 4 <= limit else cut(text, limit)
                    elif kind == "int_value":
                        flat[kv.key] = value.int_value
                    else:
                        where = f"{here}.log_records[{i}].attributes.{kv.key[:40]}"
                        flatten(kv.key, _proto_value(value, where), flat, limit)
                span_id = _proto_id(record.span_id, 8, here, i, "span_id")
                if span_id is not None:
                    flat["span_id"] = span_id
                number = record.severity_number
                logs.append(
                    NewLog(
                        message=message,
                        level=_LEVELS[(number - 1) >> 2]
                        if 1 <= number <= 24
                        else _level(number, record.severity_text),
                        service=service,
                        timestamp=_EPOCH + timedelta(microseconds=time // 1000) if time else None,
                        attributes=flat,
                        trace_id=_proto_id(record.trace_id, 16, here, i, "trace_id"),
                    )
                )
    return logs, all_timed


# --- the mapping both encodings share -------------------------------------------------------


def _scope_attributes(
    name: str, version: str, pairs: Iterable[tuple[str, object]]
) -> dict[str, object]:
    out: dict[str, object] = {}
    if name:
        out["otel.scope.name"] = name
    if version:
        out["otel.scope.version"] = version
    out.update(pairs)
    return out


def _level(number: int, text: str) -> LogLevel:
    if 1 <= number <= 24:
        return _LEVELS[(number - 1) // 4]
    if number > 24:
        return LogLevel.CRITICAL  # past FATAL4: newer severities are only ever more severe
    try:
        return LogLevel.parse(text) if text else LogLevel.INFO
    except ValueError:
        return LogLevel.INFO


def _message(body: object, event_name: str) -> str:
    if body is None or body == "":
        return event_name
    if isinstance(body, str):
        return body
    return _encode_json(body).decode()


def _service(resource: dict[str, object], limits: Limits) -> tuple[str | None, str | None]:
    """(service, the original name when it had to be changed to fit our pattern)."""
    name = resource.get("service.name")
    if name is None or name == "":
        return None, None
    text = name if isinstance(name, str) else _encode_json(name).decode()
    fitted = fit_service(text, limits)
    return fitted, (None if fitted == text else text)


def _base(
    resource: dict[str, object], scope: dict[str, object], limits: Limits
) -> tuple[str | None, dict[str, AttributeValue]]:
    """(service, the flat attributes of a resource and scope), shared by their records."""
    limit = limits.max_attribute_value_bytes
    service, original = _service(resource, limits)
    flat: dict[str, AttributeValue] = {}
    for key, value in resource.items():
        if key != "service.name":
            flatten(key, value, flat, limit)
    if original is not None:
        flat["service.name"] = cut(original, limit)
    for key, value in scope.items():
        flatten(key, value, flat, limit)
    return service, flat


def _record(
    *,
    service: str | None,
    base: dict[str, AttributeValue],
    attributes: Iterable[tuple[str, object]],
    time: int,
    severity_number: int,
    severity_text: str,
    body: object,
    event_name: str,
    trace_id: str | None,
    span_id: str | None,
    limits: Limits,
) -> NewLog:
    limit = limits.max_attribute_value_bytes
    flat = dict(base)
    for key, value in attributes:
        if type(value) is str and len(value) * 4 <= limit:  # the common case, inline
            flat[key] = value
        else:
            flatten(key, value, flat, limit)
    if span_id is not None:
        flat["span_id"] = span_id
    return NewLog(
        message=_message(body, event_name),
        level=_level(severity_number, severity_text),
        service=service,
        timestamp=_EPOCH + timedelta(microseconds=time // 1000) if time else None,
        attributes=flat,
        trace_id=trace_id,
    )


# --- the public surface ----------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header, lowercased."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_request(
    body: bytes,
    content_type: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> OtlpBatch:
    """Decode an `ExportLogsServiceRequest` (its `Content-Encoding` already undone).

    Args:
        body: the request body.
        content_type: `application/x-protobuf` or `application/json` (bare media type).
        limits: the attribute value length to cut strings at, the service name length.

    Raises:
        BodyError: 415 for another content type, 400 for a body that does not decode.
    """
    if content_type == PROTOBUF:
        logs, all_timed = _from_protobuf(body, limits)
    elif content_type == JSON:
        logs, all_timed = _from_json(body, limits)
    else:
        raise BodyError(
            415, f"unsupported content type {content_type!r}; send {PROTOBUF} or {JSON}"
        )
    return OtlpBatch(logs, hashlib.sha256(body).hexdigest(), all_timed)


def encode_success(content_type: str, rejected: int = 0, message: str = "") -> bytes:
    """An `ExportLogsServiceResponse`, with `partial_success` when records were refused."""
    if content_type == PROTOBUF:
        response = ExportLogsServiceResponse()
        if rejected or message:
            response.partial_success.rejected_log_records = rejected
            response.partial_success.error_message = message
        return response.SerializeToString()
    if not (rejected or message):
        return b"{}"
    # proto3 JSON writes int64 as a string.
    partial = {"rejectedLogRecords": str(rejected), "errorMessage": message}
    return _encode_json({"partialSuccess": partial})


def encode_status(content_type: str, code: int, message: str) -> bytes:
    """A `google.rpc.Status` with `code` and `message`, in the request's encoding."""
    if content_type == PROTOBUF:
        # Status is two fields here (1: int32 code, 2: string message); writing them by hand
        # spares the server a dependency on googleapis-common-protos.
        text = message.encode()
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text
    return _encode_json({"code": code, "message": message})


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
