"""Models and input checking: every refusal names the field (and batch index) and the reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aygolog.errors import MalformedInput, ValidationError
from aygolog.models import Direction, FieldError, Limits, LogLevel, LogQuery, NewLog
from aygolog.store.base import MAX_ID_PART, format_stream_id, id_bounds, parse_stream_id
from aygolog.validation import (
    decode_log,
    decode_logs,
    decode_ndjson,
    decode_seed_log,
    parse_timestamp,
    validate_logs,
)


def body(obj: object) -> bytes:
    return msgspec.json.encode(obj)


def test_seed_body_is_accepted_as_the_message() -> None:
    log = decode_log(b'{"name": "from the seed form"}')
    assert log == NewLog(message="from the seed form")


def test_full_log() -> None:
    log = decode_log(
        body(
            {
                "message": "m",
                "level": "WARN",
                "service": "api/v1",
                "timestamp": "2024-05-01T10:00:00+02:00",
                "attributes": {"a": "x", "n": 3, "f": 1.5, "b": True},
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            }
        )
    )
    assert log.level is LogLevel.WARNING
    assert log.timestamp == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert log.attributes == {"a": "x", "n": 3, "f": 1.5, "b": True}


@pytest.mark.parametrize(
    ("alias", "level"),
    [
        ("warn", LogLevel.WARNING), ("Warning", LogLevel.WARNING), ("ERR", LogLevel.ERROR),
        ("fatal", LogLevel.CRITICAL), ("information", LogLevel.INFO), ("verbose", LogLevel.TRACE),
        ("crit", LogLevel.CRITICAL), (" debug ", LogLevel.DEBUG), (10, LogLevel.DEBUG),
        (20, LogLevel.INFO), (30, LogLevel.WARNING), (40, LogLevel.ERROR), (50, LogLevel.CRITICAL),
        (5, LogLevel.TRACE), (99, LogLevel.CRITICAL),
    ],
)  # fmt: skip
def test_level_aliases(alias: str | int, level: LogLevel) -> None:
    assert LogLevel.parse(alias) is level


def test_level_order() -> None:
    assert [lv.severity for lv in LogLevel] == [0, 1, 2, 3, 4, 5]
    assert LogLevel.from_severity(3) is LogLevel.WARNING


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (1_700_000_000.5, datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
        (1_700_000_000_123, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        (1_700_000_000_123_456, datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),
        (1_700_000_000_123_456_000, datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),
        ("2023-11-14T22:13:20Z", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-14T22:13:20", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ],
)
def test_timestamps(value: int | float | str, expected: datetime) -> None:
    assert parse_timestamp(value) == expected


TOO_FAR = (datetime.now(UTC) + timedelta(hours=2)).isoformat()  # far past the 10-minute limit
LIMITS = Limits()

# (body, field, reason fragment): each must be refused with that field named.
BAD_ONE: list[tuple[bytes, str, str]] = [
    (b"{}", "message", "required"),
    (b'{"message": ""}', "message", "empty"),
    (b'{"message": "   "}', "message", "empty"),
    (b'{"message": 5}', "message", "expected"),
    (b'{"message": null, "name": null}', "message", "required"),
    (body({"message": "x" * (64 * 1024 + 1)}), "message", "65536 bytes"),
    (body({"message": "é" * (32 * 1024 + 1)}), "message", "65536 bytes"),
    (b'{"message": "m", "level": "loud"}', "level", "unknown level"),
    (b'{"message": "m", "level": true}', "level", "expected"),
    (b'{"message": "m", "level": -1}', "level", "unknown level"),
    (b'{"message": "m", "service": "has space"}', "service", "letters, digits"),
    (body({"message": "m", "service": "s" * 129}), "service", "1-128"),
    (b'{"message": "m", "service": 3}', "service", "expected"),
    (b'{"message": "m", "timestamp": "yesterday"}', "timestamp", "RFC 3339"),
    (b'{"message": "m", "timestamp": -5}', "timestamp", "1970"),
    (b'{"message": "m", "timestamp": true}', "timestamp", "expected"),
    (body({"message": "m", "timestamp": TOO_FAR}), "timestamp", "future"),
    (b'{"message": "m", "attributes": []}', "attributes", "expected"),
    (b'{"message": "m", "attributes": {"a": {"b": 1}}}', "attributes", "expected"),
    (b'{"message": "m", "attributes": {"a": null}}', "attributes", "expected"),
    (b'{"message": "m", "attributes": {"a": [1]}}', "attributes", "expected"),
    (body({"message": "m", "attributes": {f"k{i}": i for i in range(65)}}), "attributes",
     "more than 64"),
    (body({"message": "m", "attributes": {"k" * 129: 1}}), "attributes.", "1-128"),
    (body({"message": "m", "attributes": {"": 1}}), "attributes.", "1-128"),
    (body({"message": "m", "attributes": {"v": "x" * 4097}}), "attributes.v", "4096 bytes"),
    (b'{"message": "m", "trace_id": "not valid!"}', "trace_id", "letters"),
    (b'{"message": "m", "unknown": 1}', "unknown", "unknown field"),
    (b'{"message": "m"', "$", "malformed JSON"),
    (b"[]", "$", "expected"),
    (b'"just a string"', "$", "expected"),
    (b"", "$", "malformed JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "field", "reason"), BAD_ONE)
def test_bad_single_log_names_the_field(raw: bytes, field: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode_log(raw)
    errors = info.value.errors
    assert errors, "a refusal must say why"
    assert any(e.field.startswith(field) and reason in e.reason for e in errors), errors


def test_batch_lists_every_bad_item() -> None:
    raw = body(
        [
            {"message": "ok"},
            {"message": "m", "level": "loud"},
            {"message": "ok too"},
            {"level": "info"},
            {"message": 7},
            {"message": "m", "extra": 1},
        ]
    )
    with pytest.raises(ValidationError) as info:
        decode_logs(raw)
    by_index = {(e.index, e.field) for e in info.value.errors}
    assert by_index == {(1, "level"), (3, "message"), (4, "message"), (5, "extra")}
    assert "item 1: level" in str(info.value)


def test_a_batch_checks_every_item_whatever_the_items_before_it_were() -> None:
    """What is worked out once per batch (services found valid, the latest time allowed, the
    levels' own names) never lets a later item through unchecked, nor refuses a good one."""
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    items: list[dict[str, object]] = [
        {"message": f"m{i}", "service": "svc", "level": "info", "timestamp": soon} for i in range(5)
    ]
    items += [
        {"message": "bad service", "service": "svc two"},
        {"message": "bad time", "service": "svc", "timestamp": "2999-01-01T00:00:00Z"},
        {"message": "alias", "service": "svc", "level": " WARN "},
        {"message": "offset", "timestamp": "2024-05-01T10:00:00+02:00"},
        {"message": "bad level", "service": "svc", "level": "INFO!"},
    ]
    with pytest.raises(ValidationError) as info:
        decode_logs(body(items))
    assert {(e.index, e.field) for e in info.value.errors} == {
        (5, "service"), (6, "timestamp"), (9, "level"),
    }  # fmt: skip
    good = decode_logs(body(items[:5] + items[7:9]))
    assert [log.level for log in good[-2:]] == [LogLevel.WARNING, LogLevel.INFO]
    assert good[-1].timestamp == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert good[0].timestamp is not None
    assert good[0].timestamp.tzinfo is UTC


def test_batch_not_an_array() -> None:
    with pytest.raises(ValidationError) as info:
        decode_logs(b'{"message": "m"}')
    assert info.value.errors == [
        FieldError(field="$", reason="expected a JSON array of log objects")
    ]


def test_good_batch() -> None:
    logs = decode_logs(body([{"message": f"m{i}", "level": "error"} for i in range(3)]))
    assert [log.message for log in logs] == ["m0", "m1", "m2"]
    assert {log.level for log in logs} == {LogLevel.ERROR}


def test_ndjson() -> None:
    logs = decode_ndjson(b'{"message": "a"}\n\n{"name": "b", "level": "warn"}\r\n')
    assert [(log.message, log.level) for log in logs] == [
        ("a", LogLevel.INFO),
        ("b", LogLevel.WARNING),
    ]


def test_ndjson_lists_every_bad_line() -> None:
    with pytest.raises(ValidationError) as info:
        decode_ndjson(b'{"message": "a"}\n{oops\n\n{"message": ""}\n{"message": 1}\n')
    assert [(e.index, e.field) for e in info.value.errors] == [
        (1, "$"),
        (2, "message"),
        (3, "message"),
    ]


def test_limits_are_configurable() -> None:
    small = Limits(max_message_bytes=10, max_attributes=1)
    with pytest.raises(ValidationError):
        decode_log(b'{"message": "longer than ten"}', limits=small)
    with pytest.raises(ValidationError):
        decode_log(b'{"message": "m", "attributes": {"a": 1, "b": 2}}', limits=small)
    assert decode_log(b'{"message": "short"}', limits=small).message == "short"


def test_validate_logs_built_in_code() -> None:
    with pytest.raises(ValidationError) as info:
        validate_logs([NewLog(message="ok"), NewLog(message="", service="bad service")])
    assert {(e.index, e.field) for e in info.value.errors} == {(1, "message"), (1, "service")}


def test_query_level_severities() -> None:
    assert LogQuery().level_severities() is None
    assert LogQuery(min_level=LogLevel.ERROR).level_severities() == frozenset({4, 5})
    both = LogQuery(levels=frozenset({LogLevel.INFO, LogLevel.ERROR}))
    assert both.level_severities() == frozenset({2, 4})


@given(
    message=st.text(min_size=1, max_size=200).filter(str.strip),
    level=st.sampled_from(list(LogLevel)),
    attributes=st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.one_of(st.text(max_size=50), st.integers(-(2**53), 2**53), st.booleans(),
                  st.floats(allow_nan=False, allow_infinity=False)),
        max_size=10,
    ),
)  # fmt: skip
def test_roundtrip_through_the_wire(
    message: str, level: LogLevel, attributes: dict[str, str | int | float | bool]
) -> None:
    log = NewLog(message=message, level=level, attributes=attributes)
    assert decode_log(msgspec.json.encode(log)) == log


# -- hostile bodies: always a ValidationError (a 4xx), never another exception ---------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"message": "\xff\xfe"}', "not valid UTF-8 at byte 13"),
        (b'{"message": "\xc0\xaf"}', "not valid UTF-8"),  # an overlong "/"
        (b'{"message": "\xed\xa0\x80"}', "not valid UTF-8"),  # a surrogate, UTF-8 encoded
        (b'{"message": "\xf4\x90\x80\x80"}', "not valid UTF-8"),  # past U+10FFFF
        (b'{"message": "x", "attributes": {"\xff": 1}}', "not valid UTF-8"),
        (b'{"message": "\\ud800"}', "malformed JSON"),  # a lone surrogate escape
        (DEEP, "expected"),
        (b'{"message": "m", "attributes": ' + DEEP + b"}", "expected"),
    ],
)
def test_one_broken_body_is_refused_naming_the_problem(data: bytes, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode_log(data)
    assert reason in info.value.errors[0].reason


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b'[{"message": "\xff"}]', MalformedInput, "not valid UTF-8 at byte 14"),
        (b'[{"message": "ok"}, {"message": "\xc0\xaf"}]', MalformedInput, "not valid UTF-8"),
        (DEEP, MalformedInput, "nested too deeply"),
        (b'[1, {"message": "m", "attributes": ' + DEEP + b"}]", MalformedInput, "too deeply"),
        (b'[{"message": "m", "attributes": [[[1]]]}]', ValidationError, "expected 'object"),
    ],
)
def test_a_broken_batch_is_refused_naming_the_problem(
    data: bytes, error: type[ValidationError], reason: str
) -> None:
    with pytest.raises(ValidationError) as info:
        decode_logs(data)
    assert type(info.value) is error
    assert reason in info.value.errors[0].reason


def test_a_broken_ndjson_line_is_named_by_its_index() -> None:
    with pytest.raises(ValidationError) as info:
        decode_ndjson(b'{"message": "a"}\n{"message": "\xff"}\n' + DEEP + b"\n")
    assert [(e.index, e.reason[:17]) for e in info.value.errors] == [
        (1, "not valid UTF-8 a"),
        (2, "expected 'object'"),
    ]


_JSONISH = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children)
        ),
        max_leaves=30,
    ).map(lambda value: msgspec.json.encode(value)),
    st.builds(
        lambda head, tail, cut: (head + tail)[:cut],
        st.sampled_from([b'{"message": "', b'[{"message": "', b'{"name": "', b"[", b"{"]),
        st.binary(max_size=100),
        st.integers(0, 120),
    ),
)


@given(data=_JSONISH)
def test_any_bytes_are_a_log_or_a_validation_error(data: bytes) -> None:
    for decode in (decode_log, decode_logs, decode_ndjson):
        errors: list[FieldError] = []
        try:
            decode(data)
        except ValidationError as exc:
            errors = exc.errors or [FieldError(field="?", reason="")]
        assert all(e.reason for e in errors)


# -- stream ids: one strict parser -------------------------------------------------------------


@given(ms=st.integers(0, MAX_ID_PART), seq=st.integers(0, MAX_ID_PART))
def test_every_valid_stream_id_parses_back(ms: int, seq: int) -> None:
    assert parse_stream_id(f"{ms}-{seq}") == (ms, seq)
    assert parse_stream_id(str(ms)) == (ms, 0)
    assert format_stream_id((ms, seq)) == f"{ms}-{seq}"


@given(text=st.one_of(st.text(max_size=45), st.from_regex(r"[0-9]{1,22}(-[0-9]{1,22})?")))
def test_a_stream_id_parses_within_64_bits_or_is_refused(text: str) -> None:
    try:
        ms, seq = parse_stream_id(text, "last_event_id")
    except ValidationError as exc:
        fields = {e.field for e in exc.errors}
    else:
        fields = set()
    if fields:
        assert fields == {"last_event_id"}
        return
    assert 0 <= ms <= MAX_ID_PART
    assert 0 <= seq <= MAX_ID_PART
    assert text.isascii()


@given(
    cursor=st.one_of(
        st.none(),
        st.tuples(st.integers(0, MAX_ID_PART), st.integers(0, MAX_ID_PART)).map(format_stream_id),
    ),
    direction=st.sampled_from(list(Direction)),
    since=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    until=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
)
def test_id_bounds_are_a_valid_inclusive_range_or_none(
    cursor: str | None, direction: Direction, since: datetime | None, until: datetime | None
) -> None:
    bounds = id_bounds(LogQuery(cursor=cursor, direction=direction, since=since, until=until))
    if bounds is None:
        return
    low, high = bounds
    assert (0, 0) <= low <= high <= (MAX_ID_PART, MAX_ID_PART)
    if cursor is not None:
        key = parse_stream_id(cursor)
        assert (high < key) if direction is Direction.BACKWARD else (low > key)


# -- the seed's body, bound as ASP.NET did ------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"Name": "x"}',
        b'{"NAME": "x"}',
        b'{"name": "x", "sourceInstance": "api-1"}',
        b'{"Name": "x", "SourceInstance": "api-1", "Level": "warn"}',
        b'{"Message": "x", "Attributes": {"K": 1}}',
    ],
)
def test_the_seed_route_binds_names_in_any_case(data: bytes) -> None:
    log = decode_seed_log(data)
    assert log.message == "x"


def test_the_seed_route_keeps_values_and_attribute_keys_as_sent() -> None:
    log = decode_seed_log(b'{"Message": "x", "LEVEL": "Error", "Attributes": {"Key": "V"}}')
    assert log.level is LogLevel.ERROR
    assert log.attributes == {"Key": "V"}


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (b'{"Name": "x", "name": "y"}', "name", "more than once"),
        (b'{"Name": "x", "Extra": 1}', "Extra", "unknown field"),
        (b'{"Name": 5}', "name", "expected 'str"),
        (b'{"name": "x", "sourceInstance": 5}', "sourceInstance", "expected 'str"),
        (b"[]", "$", "expected 'object'"),
    ],
)
def test_the_seed_route_still_refuses_what_is_wrong(data: bytes, field: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode_seed_log(data)
    assert info.value.errors[0].field == field
    assert reason in info.value.errors[0].reason


def test_elsewhere_names_stay_snake_case() -> None:
    with pytest.raises(ValidationError):
        decode_log(b'{"Name": "x"}')
    with pytest.raises(ValidationError):
        decode_logs(b'[{"name": "x", "sourceInstance": "a"}]')


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_time_with_no_utc_equivalent_is_refused_not_an_overflow(stamp: str) -> None:
    """Year 1 at +14:00 has no UTC time: a 4xx naming the field, never an OverflowError (500)."""
    body = msgspec.json.encode([{"message": "x", "timestamp": stamp}])
    with pytest.raises(ValidationError) as info:
        decode_logs(body)
    assert info.value.errors[0].field == "timestamp"
    with pytest.raises(ValidationError):
        decode_log(msgspec.json.encode({"message": "x", "timestamp": stamp}))
