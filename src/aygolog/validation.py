"""Turning untrusted input into checked `NewLog`s, with every problem named.

The fast path decodes a whole body with one typed msgspec decoder; only when that fails does
a slower pass look at each item on its own, so that a refused batch lists every bad item
(index, field, reason), not just the first.

Every JSON decode goes through `_decode`, which turns any way a body can be broken into a
`MalformedInput` (400) or a `ValidationError` (422) naming the problem: broken syntax, bytes
that are not UTF-8 (overlong forms and encoded surrogates included), and deep nesting. Nothing
is decoded without a type, so nothing deeper than the schema (3 levels: array, object,
attributes) is ever built: a typed decoder stops at the first level the schema does not allow,
and the slow pass splits a batch into raw items, not trees. Skipping over a deeply nested raw
item is bounded by the interpreter's recursion limit, and that too is a 400.

A gzipped body (`gunzip`) is inflated to at most the body limit: past it the caller answers 413
without having held more than that in memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final, TypeVar

import msgspec

from aygolog.errors import MalformedInput, ValidationError
from aygolog.models import AttributeValue, FieldError, Limits, LogLevel, NewLog

__all__ = [
    "DEFAULT_LIMITS",
    "SERVICE_PATTERN",
    "decode_log",
    "decode_logs",
    "decode_ndjson",
    "decode_seed_log",
    "parse_timestamp",
    "validate_logs",
]

DEFAULT_LIMITS: Final = Limits()
SERVICE_PATTERN: Final = re.compile(r"[A-Za-z0-9._/-]+")
_TRACE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]+")


class _WireLog(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A log as it arrives: loosely typed where we accept several spellings."""

    message: str | None = None
    name: str | None = None  # the seed's body: {"name": "..."}
    level: str | int | None = None
    service: str | None = None
    timestamp: datetime | int | float | None = None
    attributes: dict[str, AttributeValue] | None = None
    trace_id: str | None = None


class _SeedWireLog(_WireLog, kw_only=True, forbid_unknown_fields=True):
    """The seed's `POST /api/log` body: its model also carried `sourceInstance`."""

    source_instance: str | None = msgspec.field(default=None, name="sourceInstance")


_SEED_NAMES: Final = {
    name.lower(): name
    for name in ("message", "name", "level", "service", "timestamp", "attributes", "trace_id",
                 "sourceInstance")
}  # fmt: skip
_ONE: Final = msgspec.json.Decoder(_WireLog)
_SEED_ONE: Final = msgspec.json.Decoder(_SeedWireLog)
_OBJECT: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_MANY: Final = msgspec.json.Decoder(list[_WireLog])
_ITEMS: Final = msgspec.json.Decoder(list[msgspec.Raw])
_T = TypeVar("_T")


def _decode(
    decoder: msgspec.json.Decoder[_T], data: bytes | str | msgspec.Raw, index: int | None = None
) -> _T:
    """`decoder.decode(data)`, with every failure a `ValidationError` naming the problem.

    Raises:
        MalformedInput: broken JSON, not UTF-8, or nested deeper than the interpreter's
            recursion limit (about 1,000 levels; the typed decoders never get that far).
        ValidationError: well-formed JSON of the wrong shape.
    """

    def malformed(reason: str) -> MalformedInput:
        return MalformedInput([FieldError(field="$", reason=reason, index=index)])

    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ValidationError([_from_msgspec(exc, index)]) from None
    except msgspec.DecodeError as exc:
        raise malformed(f"malformed JSON: {exc}") from None
    except UnicodeDecodeError:
        raise malformed(_not_utf8(data)) from None
    except RecursionError:
        raise malformed("JSON nested too deeply (a log body needs 3 levels)") from None


def _not_utf8(data: bytes | str | msgspec.Raw) -> str:
    """Where and why `data` is not UTF-8 (JSON text must be)."""
    if not isinstance(data, str):
        data = bytes(memoryview(data))
        try:
            data.decode()
        except UnicodeDecodeError as exc:
            bad = data[exc.start : exc.end].hex(" ")
            return f"not valid UTF-8 at byte {exc.start} ({bad}: {exc.reason}); JSON must be UTF-8"
    return "not valid UTF-8; JSON must be UTF-8"


def decode_log(body: bytes | str, *, limits: Limits = DEFAULT_LIMITS) -> NewLog:
    """Decode and check one JSON object.

    Raises:
        ValidationError: malformed JSON, a wrong type, or a value out of bounds.
    """
    return _one(_decode(_ONE, body), limits)


def decode_seed_log(body: bytes | str, *, limits: Limits = DEFAULT_LIMITS) -> NewLog:
    """`decode_log` as the seed's ASP.NET service bound its body: field names in any case
    (`{"Name": "x"}`), and the seed model's `sourceInstance` accepted (and not stored: the
    instance that stores an entry is recorded in `instance`).

    Raises:
        ValidationError: as `decode_log`; a name given twice in different cases too.
    """
    try:
        wire = _decode(_SEED_ONE, body)
    except MalformedInput:
        raise
    except ValidationError as exc:
        wire = _case_insensitive(body, exc)
    return _one(wire, limits)


def _one(wire: _WireLog, limits: Limits) -> NewLog:
    """One decoded entry normalised and checked, or `ValidationError` naming what is wrong."""
    checker = _Checker(limits)
    log = checker.check(wire, None)
    if log is None:
        raise ValidationError(checker.errors)
    return log


def _case_insensitive(body: bytes | str, refusal: ValidationError) -> _SeedWireLog:
    """Decode again with field names matched regardless of case, or raise `refusal`."""
    try:
        fields = _decode(_OBJECT, body)
    except ValidationError:
        raise refusal from None
    renamed: dict[str, msgspec.Raw] = {}
    for key, value in fields.items():
        name = _SEED_NAMES.get(key.lower(), key)
        if name in renamed:
            raise ValidationError(
                [FieldError(field=name, reason="given more than once (names ignore case here)")]
            )
        renamed[name] = value
    if renamed.keys() == fields.keys():
        raise refusal
    return _decode(_SEED_ONE, msgspec.json.encode(renamed))


def decode_logs(body: bytes | str, *, limits: Limits = DEFAULT_LIMITS) -> list[NewLog]:
    """Decode and check a JSON array of log objects, all or nothing.

    Raises:
        ValidationError: lists every bad item with its index.
    """
    try:
        wires = _decode(_MANY, body)
    except MalformedInput:
        raise
    except ValidationError:
        return _slow_batch(body, limits)
    return _normalise_all(wires, limits)


def decode_ndjson(body: bytes, *, limits: Limits = DEFAULT_LIMITS) -> list[NewLog]:
    """Decode and check newline-delimited JSON (one object a line; blank lines are skipped).

    The index in an error is the item's position among the non-blank lines.
    """
    checker = _Checker(limits)
    out: list[NewLog] = []
    errors = checker.errors
    index = 0
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            log = checker.check(_decode(_ONE, line, index), index)
        except ValidationError as exc:
            errors.extend(exc.errors)
        else:
            if log is not None:
                out.append(log)
        index += 1
    if errors:
        raise ValidationError(errors)
    return out


def validate_logs(
    logs: Iterable[NewLog], *, limits: Limits = DEFAULT_LIMITS, now: datetime | None = None
) -> list[NewLog]:
    """Check `NewLog`s built in code (the store does this before writing).

    Raises:
        ValidationError: lists every bad item with its index.
    """
    checker = _Checker(limits, now)
    errors = checker.errors
    out: list[NewLog] = []
    for index, log in enumerate(logs):
        wire = _WireLog(
            message=log.message,
            level=log.level.value if isinstance(log.level, LogLevel) else log.level,
            service=log.service,
            timestamp=log.timestamp,
            attributes=log.attributes,
            trace_id=log.trace_id,
        )
        checked = checker.check(wire, index)
        if checked is not None:
            out.append(checked)
    if errors:
        raise ValidationError(errors)
    return out


def parse_timestamp(value: datetime | int | float | str) -> datetime:
    """A UTC datetime from RFC 3339 text or epoch seconds / ms / µs / ns (told apart by size).

    Raises:
        ValueError: unparseable or out of range.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00+14:00: no such time in UTC
            raise ValueError(f"time out of range in UTC: {value.isoformat()}") from None
    if isinstance(value, str):
        try:
            return parse_timestamp(msgspec.convert(value, datetime))
        except msgspec.ValidationError:
            raise ValueError(f"not an RFC 3339 time: {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"not a time: {value!r}")
    if value < 0:
        raise ValueError("must not be before 1970-01-01")
    magnitude = abs(value)
    if magnitude < 1e11:
        seconds = float(value)
    elif magnitude < 1e14:
        seconds = value / 1e3
    elif magnitude < 1e17:
        seconds = value / 1e6
    else:
        seconds = value / 1e9
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"time out of range: {value!r}") from None


def _normalise_all(wires: list[_WireLog], limits: Limits) -> list[NewLog]:
    checker = _Checker(limits)
    check = checker.check
    out: list[NewLog] = []
    for index, wire in enumerate(wires):
        log = check(wire, index)
        if log is not None:
            out.append(log)
    if checker.errors:
        raise ValidationError(checker.errors)
    return out


def _slow_batch(body: bytes | str, limits: Limits) -> list[NewLog]:
    """The typed decode failed: find every bad item, one at a time."""
    try:
        items = _decode(_ITEMS, body)
    except MalformedInput:
        raise
    except ValidationError:
        raise ValidationError(
            [FieldError(field="$", reason="expected a JSON array of log objects")]
        ) from None
    checker = _Checker(limits)
    errors = checker.errors
    for index, item in enumerate(items):
        try:
            wire = _decode(_ONE, item, index)
        except ValidationError as exc:
            errors.extend(exc.errors)
            continue
        checker.check(wire, index)
    raise ValidationError(errors or [FieldError(field="$", reason="invalid batch")])


class _Checker:
    """Checks decoded items against `limits` as of `now`, collecting every problem in `errors`.

    One per body: what is the same for every item of a batch (the latest time allowed, the
    services already found valid) is worked out once, not per item.
    """

    __slots__ = ("errors", "latest", "limits", "now", "services")

    def __init__(self, limits: Limits, now: datetime | None = None) -> None:
        self.limits = limits
        self.now = now if now is not None else datetime.now(UTC)
        self.latest = self.now + limits.max_future_skew
        self.errors: list[FieldError] = []
        self.services: set[str] = set()

    def bad(self, index: int | None, field: str, reason: str) -> None:
        self.errors.append(FieldError(field=field, reason=reason, index=index))

    def check(self, wire: _WireLog, index: int | None) -> NewLog | None:
        """One item as a `NewLog`; None (its problems added to `errors`) if it has any."""
        errors = self.errors
        before = len(errors)
        limits = self.limits
        bad = self.bad

        message = wire.message if wire.message is not None else wire.name
        if message is None:
            bad(index, "message", "required (the seed's `name` is accepted too)")
        elif not message.strip():
            bad(index, "message", "must not be empty")
        elif len(message) * 4 > limits.max_message_bytes and (
            len(message.encode()) > limits.max_message_bytes
        ):
            bad(index, "message", f"longer than {limits.max_message_bytes} bytes of UTF-8")

        level = LogLevel.INFO
        raw_level = wire.level
        if raw_level is not None:
            found = _LEVELS.get(raw_level) if type(raw_level) is str else None
            if found is not None:  # the common case: a level's own name
                level = found
            else:
                try:
                    level = LogLevel.parse(raw_level)
                except ValueError as exc:
                    bad(index, "level", str(exc))

        service = wire.service or None
        if service is not None and service not in self.services:
            if len(service) > limits.max_service_chars or not SERVICE_PATTERN.fullmatch(service):
                bad(
                    index,
                    "service",
                    f"must be 1-{limits.max_service_chars} characters of letters, digits and ._/-",
                )
            elif len(self.services) < 1024:
                self.services.add(service)

        timestamp: datetime | None = None
        raw_time = wire.timestamp
        if raw_time is not None:
            try:
                # RFC 3339 text in UTC ("Z") decodes to a datetime that needs no conversion.
                if type(raw_time) is datetime and raw_time.tzinfo is UTC:
                    timestamp = raw_time
                else:
                    timestamp = parse_timestamp(raw_time)
            except ValueError as exc:
                bad(index, "timestamp", str(exc))
            else:
                if timestamp > self.latest:
                    minutes = limits.max_future_skew.total_seconds() / 60
                    bad(index, "timestamp", f"more than {minutes:g} minutes in the future")

        attributes = wire.attributes or {}
        if attributes:
            if len(attributes) > limits.max_attributes:
                bad(index, "attributes", f"more than {limits.max_attributes} attributes")
            max_key = limits.max_attribute_key_chars
            max_value = limits.max_attribute_value_bytes
            for key, value in attributes.items():
                if not key or len(key) > max_key:
                    bad(index, f"attributes.{key[:40]}", f"key must be 1-{max_key} chars")
                if isinstance(value, str):
                    if len(value) * 4 > max_value and len(value.encode()) > max_value:
                        bad(
                            index,
                            f"attributes.{key[:40]}",
                            f"value longer than {max_value} bytes of UTF-8",
                        )
                elif isinstance(value, float) and not math.isfinite(value):
                    bad(index, f"attributes.{key[:40]}", "number must be finite")

        trace_id = wire.trace_id or None
        if trace_id is not None and (
            len(trace_id) > limits.max_trace_id_chars or not _TRACE_ID_PATTERN.fullmatch(trace_id)
        ):
            bad(
                index,
                "trace_id",
                f"must be 1-{limits.max_trace_id_chars} characters of letters, digits and ._:-",
            )

        if len(errors) > before or message is None:
            return None
        return NewLog(
            message=message,
            level=level,
            service=service,
            timestamp=timestamp,
            attributes=attributes,
            trace_id=trace_id,
        )


_LEVELS: Final = {level.value: level for level in LogLevel}


_PATH_RE: Final = re.compile(r"^\$(?:\[(\d+)\])?\.?(.*)$")
_FIELD_IN_REASON: Final = re.compile(r"field `([^`]*)`")


def _from_msgspec(exc: msgspec.ValidationError, index: int | None = None) -> FieldError:
    """Turn msgspec's "reason - at `$[3].level`" into a FieldError."""
    text = str(exc)
    reason, _, path = text.partition(" - at `")
    path = path.rstrip("`")
    field = ""
    if path:
        match = _PATH_RE.match(path)
        if match:
            if match.group(1) is not None and index is None:
                index = int(match.group(1))
            field = match.group(2)
    named = _FIELD_IN_REASON.search(reason)
    if named and reason.startswith("Object"):
        field = f"{field}.{named.group(1)}" if field else named.group(1)
    reason = reason.replace("`", "'")
    if reason.startswith("Object contains unknown field"):
        reason = "unknown field"
    elif reason.startswith("Invalid RFC3339"):
        reason = "expected an RFC 3339 time or epoch seconds/ms/ns"
    elif reason.startswith("Expected"):
        reason = reason[0].lower() + reason[1:]
    return FieldError(field=field or "$", reason=reason, index=index)
