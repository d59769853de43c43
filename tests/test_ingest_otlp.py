"""OTLP/HTTP logs: the pure decoder (tables), and the route served in-process (uvicorn on
loopback) over a real Redis: answers in OTLP's shapes, refused bodies store nothing."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber

from aygolog.embedded import free_port
from aygolog.ingest.body import BodyError, decode_content
from aygolog.ingest.otlp import decode_request, encode_status
from aygolog.lb.app import proxied
from aygolog.models import LogLevel, LogQuery
from aygolog.store import RedisStreamLogStore
from ingest_support import count, serve

pytestmark = pytest.mark.timeout(60)

PB = "application/x-protobuf"
NOW_NS = int(datetime.now(UTC).timestamp() * 1e9)
TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"


def kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(kv(k, v) for k, v in value.items())
        return out
    return AnyValue(string_value=value)


def pb_request(*records: LogRecord, service: str = "checkout") -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend([kv("service.name", service), kv("host.name", "h1")])
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "shop.cart"
    scope_logs.scope.version = "1.2"
    scope_logs.log_records.extend(records)
    return request.SerializeToString()


def pb_record(message: Any = "paid", **fields: Any) -> LogRecord:
    attributes = fields.pop("attributes", {})
    record = LogRecord(
        time_unix_nano=NOW_NS, severity_number=SeverityNumber.SEVERITY_NUMBER_INFO, **fields
    )
    if message is not None:
        record.body.CopyFrom(any_value(message))
    record.attributes.extend(kv(k, v) for k, v in attributes.items())
    return record


def json_request(*records: dict[str, Any], service: str = "checkout") -> bytes:
    body = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeLogs": [{"scope": {"name": "shop.cart"}, "logRecords": list(records)}],
                "schemaUrl": "https://opentelemetry.io/schemas/1.24.0",  # unknown here: ignored
            }
        ]
    }
    return json.dumps(body).encode()


def json_record(**fields: Any) -> dict[str, Any]:
    return {
        "timeUnixNano": str(NOW_NS),
        "severityNumber": 17,
        "severityText": "ERROR",
        "body": {"stringValue": "card declined"},
        "traceId": TRACE,
        "spanId": SPAN,
        "attributes": [
            {"key": "amount", "value": {"doubleValue": 12.5}},
            {"key": "tries", "value": {"intValue": "3"}},
        ],
        "droppedAttributesCount": 0,
        **fields,
    }


# -- the decoder -----------------------------------------------------------------------------


def test_protobuf_record_maps_every_field() -> None:
    record = pb_record(
        "paid",
        severity_text="Information",
        trace_id=bytes.fromhex(TRACE),
        span_id=bytes.fromhex(SPAN),
        attributes={
            "user": "ana",
            "n": 7,
            "ok": True,
            "ratio": 0.5,
            "http": {"request": {"method": "GET"}},
            "tags": ["a", 1],
            "blob": b"\x00\x01",
        },
    )
    [log] = decode_request(pb_request(record), PB).logs
    assert log.message == "paid"
    assert log.level is LogLevel.INFO
    assert log.service == "checkout"
    assert log.trace_id == TRACE
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert log.timestamp == epoch + timedelta(microseconds=NOW_NS // 1000)
    assert log.attributes == {
        "host.name": "h1",
        "otel.scope.name": "shop.cart",
        "otel.scope.version": "1.2",
        "user": "ana",
        "n": 7,
        "ok": True,
        "ratio": 0.5,
        "http.request.method": "GET",
        "tags": '["a",1]',
        "blob": "AAE=",
        "span_id": SPAN,
    }


@pytest.mark.parametrize(
    ("number", "text", "level"),
    [
        (1, "", LogLevel.TRACE),
        (5, "", LogLevel.DEBUG),
        (8, "", LogLevel.DEBUG),
        (9, "", LogLevel.INFO),
        (13, "", LogLevel.WARNING),
        (17, "", LogLevel.ERROR),
        (21, "", LogLevel.CRITICAL),
        (24, "", LogLevel.CRITICAL),
        (0, "warn", LogLevel.WARNING),
        (0, "Fatal", LogLevel.CRITICAL),
        (0, "whatever", LogLevel.INFO),
        (0, "", LogLevel.INFO),
        (13, "debug", LogLevel.WARNING),  # the number wins
    ],
)
def test_severity_table(number: int, text: str, level: LogLevel) -> None:
    record = pb_record(severity_text=text)
    record.severity_number = number  # type: ignore[assignment]
    assert decode_request(pb_request(record), PB).logs[0].level is level


def test_bodies_that_are_not_strings_become_json_text() -> None:
    records = [pb_record(7), pb_record({"a": [1, "x"]}), pb_record(None, event_name="cart.paid")]
    logs = decode_request(pb_request(*records), PB).logs
    assert [log.message for log in logs] == ["7", '{"a":[1,"x"]}', "cart.paid"]


def test_a_service_name_we_would_refuse_is_fitted_and_kept_as_an_attribute() -> None:
    [log] = decode_request(pb_request(pb_record(), service="unknown_service:python"), PB).logs
    assert log.service == "unknown_service_python"
    assert log.attributes["service.name"] == "unknown_service:python"


def test_json_maps_like_protobuf() -> None:
    [log] = decode_request(json_request(json_record()), "application/json").logs
    assert (log.message, log.level, log.service, log.trace_id) == (
        "card declined",
        LogLevel.ERROR,
        "checkout",
        TRACE,
    )
    assert log.attributes == {
        "otel.scope.name": "shop.cart",
        "amount": 12.5,
        "tries": 3,
        "span_id": SPAN,
    }


def test_json_int64_as_number_and_enum_names_accepted() -> None:
    record = json_record(timeUnixNano=NOW_NS, severityNumber="SEVERITY_NUMBER_WARN2")
    [log] = decode_request(json_request(record), "application/json").logs
    assert log.level is LogLevel.WARNING
    assert log.timestamp is not None


def test_gzip_bomb_is_refused_within_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(BodyError) as refused:
        decode_content(bomb, "gzip", 1_000_000)
    assert refused.value.status == 413
    assert decode_content(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 10) == b"abcd"
    assert decode_content(zlib.compress(b"abc"), "deflate", 10) == b"abc"
    with pytest.raises(BodyError) as deflated:
        decode_content(zlib.compress(b"\0" * 1000), "Deflate", 999)
    assert deflated.value.status == 413


def test_status_encodes_as_google_rpc_status() -> None:
    status = Status.FromString(encode_status(PB, 3, "bad é"))
    assert (status.code, status.message) == (3, "bad é")


# -- the route, in-process over a real Redis ---------------------------------------------------


async def test_protobuf_export_is_stored_and_answered_in_protobuf(
    ingest_api: httpx.AsyncClient, redis_store: RedisStreamLogStore
) -> None:
    body = pb_request(pb_record("one"), pb_record("two"))
    answer = await ingest_api.post("/v1/logs", content=body, headers={"Content-Type": PB})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == PB
    assert not ExportLogsServiceResponse.FromString(answer.content).HasField("partial_success")
    page = await redis_store.query(LogQuery(limit=10))
    assert sorted(e.message for e in page.items) == ["one", "two"]
    # The exporter's retry of the same bytes (gzip this time, other path) is stored once.
    again = await ingest_api.post(
        "/otlp/v1/logs",
        content=gzip.compress(body),
        headers={"Content-Type": PB, "Content-Encoding": "gzip"},
    )
    assert again.status_code == 200
    assert await count(redis_store) == 2


async def test_json_export_with_refused_records_is_a_partial_success(
    ingest_api: httpx.AsyncClient, redis_store: RedisStreamLogStore
) -> None:
    future = int((datetime.now(UTC) + timedelta(hours=2)).timestamp() * 1e9)
    body = json_request(
        json_record(),
        json_record(body={"stringValue": "  "}),
        json_record(timeUnixNano=str(future)),
        json_record(body={"stringValue": "kept"}),
    )
    answer = await ingest_api.post(
        "/v1/logs", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    partial = answer.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == "2"
    assert "item 1: message" in partial["errorMessage"]
    assert "item 2: timestamp" in partial["errorMessage"]
    page = await redis_store.query(LogQuery(limit=10))
    assert sorted(e.message for e in page.items) == ["card declined", "kept"]
    assert {e.trace_id for e in page.items} == {TRACE}
    assert page.items[0].attributes["span_id"] == SPAN


def _deep_json() -> bytes:
    value: dict[str, Any] = {"stringValue": "x"}
    for _ in range(60):
        value = {"arrayValue": {"values": [value]}}
    return json_request(json_record(body=value))


BAD_INPUTS: list[tuple[str, dict[str, str], bytes, int]] = [
    ("bad protobuf", {"Content-Type": PB}, b"\xff\xff\xff\xff", 400),
    ("protobuf, wrong wire type", {"Content-Type": PB}, b"\x0a\x05\x12\x03\x08", 400),
    (
        "protobuf, trace id of 3 bytes",
        {"Content-Type": PB},
        pb_request(pb_record(trace_id=b"abc")),
        400,
    ),
    ("bad gzip", {"Content-Type": PB, "Content-Encoding": "gzip"}, b"\x1f\x8bnot gzip", 400),
    (
        "truncated gzip",
        {"Content-Type": PB, "Content-Encoding": "gzip"},
        gzip.compress(pb_request(pb_record()))[:-12],
        400,
    ),
    ("wrong content type", {"Content-Type": "text/plain"}, b"hello", 415),
    ("no content type", {}, json_request(json_record()), 415),
    ("brotli", {"Content-Type": PB, "Content-Encoding": "br"}, b"x", 415),
    ("oversize", {"Content-Type": PB}, b"\0" * 300_000, 413),
    (
        "gzip bomb",
        {"Content-Type": PB, "Content-Encoding": "gzip"},
        gzip.compress(b"\0" * 20_000_000),
        413,
    ),
    ("broken JSON", {"Content-Type": "application/json"}, b'{"resourceLogs": [', 400),
    ("bad hex trace id", {"Content-Type": "application/json"},
     json_request(json_record(traceId="zz" * 16)), 400),
    ("span id too short", {"Content-Type": "application/json"},
     json_request(json_record(spanId="abcd")), 400),
    ("time as words", {"Content-Type": "application/json"},
     json_request(json_record(timeUnixNano="yesterday")), 400),
    ("time as a float", {"Content-Type": "application/json"},
     json_request(json_record(timeUnixNano=1.5)), 400),
    ("resourceLogs not a list", {"Content-Type": "application/json"},
     b'{"resourceLogs": {"a": 1}}', 400),
    ("intValue as text", {"Content-Type": "application/json"},
     json_request(json_record(attributes=[{"key": "n", "value": {"intValue": "3x"}}])), 400),
    ("nested 60 deep", {"Content-Type": "application/json"}, _deep_json(), 400),
    ("JSON not UTF-8", {"Content-Type": "application/json"}, b'{"resourceLogs": ["\xff"]}', 400),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_otlp_status_and_stores_nothing(
    ingest_api: httpx.AsyncClient,
    redis_store: RedisStreamLogStore,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    answer = await ingest_api.post("/v1/logs", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    kind = headers.get("Content-Type")
    if kind == PB:
        assert answer.headers["content-type"] == PB
        refusal = Status.FromString(answer.content)
        assert (refusal.code, bool(refusal.message)) == ({413: 8}.get(status, 3), True)
    else:
        assert answer.headers["content-type"] == "application/json"
        refusal_json = answer.json()
        assert set(refusal_json) == {"code", "message"}
        assert refusal_json["message"]
    assert await count(redis_store) == 0


async def test_redis_down_is_503_with_retry_after() -> None:
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    store = RedisStreamLogStore(client, instance="otlp-down", prefix="down")
    async for url in serve(store):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            answer = await ingest_api.post(
                "/v1/logs", content=pb_request(pb_record()), headers={"Content-Type": PB}
            )
    await client.aclose()
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) >= 1
    assert Status.FromString(answer.content).code == 14


async def test_api_keys_cover_the_otlp_paths(redis_store: RedisStreamLogStore) -> None:
    async for url in serve(redis_store, api_keys={"w": "write"}):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            body = pb_request(pb_record())
            refused = await ingest_api.post("/v1/logs", content=body, headers={"Content-Type": PB})
            allowed = await ingest_api.post(
                "/otlp/v1/logs",
                content=body,
                headers={"Content-Type": PB, "Authorization": "Bearer w"},
            )
    assert (refused.status_code, allowed.status_code) == (401, 200)
    assert await count(redis_store) == 1


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/logs", True),
        ("/otlp/v1/logs", True),
        ("/api/logs", True),
        ("/v1/logsx", False),
        ("/v1/traces", False),
        ("/api/registration", False),
    ],
)
def test_the_lb_proxies_the_otlp_paths(path: str, expected: bool) -> None:
    assert proxied("POST", path) is expected


_VALID = pb_request(pb_record(attributes={"a": {"b": [1, 2.5, b"x"]}}, trace_id=b"t" * 16))


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        # A valid request with some bytes changed: deeper into the parser than noise gets.
        st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=4)).map(
            lambda cut: _VALID[: cut[0] % len(_VALID)] + cut[1] + _VALID[cut[0] % len(_VALID) :]
        ),
    ),
    kind=st.sampled_from([PB, "application/json"]),
)
def test_any_body_decodes_or_is_a_body_error(body: bytes, kind: str) -> None:
    status = 200
    try:
        decode_request(body, kind)
    except BodyError as exc:
        status = exc.status
    assert status in (200, 400)


async def test_protobuf_partial_success_and_too_many_records(
    redis_store: RedisStreamLogStore,
) -> None:
    async for url in serve(redis_store, max_batch_items=3):
        async with httpx.AsyncClient(base_url=url) as ingest_api:
            many = await ingest_api.post(
                "/v1/logs",
                content=pb_request(*(pb_record(f"m{i}") for i in range(4))),
                headers={"Content-Type": PB},
            )
            partial = await ingest_api.post(
                "/v1/logs",
                content=pb_request(pb_record("kept"), pb_record(None)),
                headers={"Content-Type": PB},
            )
    assert many.status_code == 413
    assert Status.FromString(many.content).code == 8
    assert partial.status_code == 200
    answer = ExportLogsServiceResponse.FromString(partial.content)
    assert answer.partial_success.rejected_log_records == 1
    assert "item 1: message" in answer.partial_success.error_message
    assert [e.message for e in (await redis_store.query(LogQuery(limit=10))).items] == ["kept"]
