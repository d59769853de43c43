"""OTLP through a live stack (the LB, 3 Log API instances, Redis) with the real OpenTelemetry
Python SDK and exporter, read back through aygolog's own API."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from aygolog.models import LogLevel
from ingest_support import LEVELS, stored
from support import LiveStack

pytestmark = pytest.mark.timeout(180)

RECORDS = 5_000


@pytest.mark.parametrize("compression", [Compression.Gzip, Compression.NoCompression])
def test_sdk_logging_handler_records_are_stored_once_with_everything(
    stack: LiveStack, compression: Compression
) -> None:
    service = f"otel-{uuid.uuid4().hex[:10]}"
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPLogExporter(endpoint=f"{stack.url}/v1/logs", compression=compression)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, max_queue_size=RECORDS, max_export_batch_size=500)
    )
    tracer = TracerProvider().get_tracer("test")
    log = logging.getLogger(f"otlp.live.{service}")
    log.handlers = [LoggingHandler(logging.DEBUG, provider, log_code_attributes=True)]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    sent: dict[str, tuple[LogLevel, str, str]] = {}
    for block in range(RECORDS // 100):
        with tracer.start_as_current_span(f"block-{block}") as span:
            context = span.get_span_context()
            trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
            for i in range(block * 100, block * 100 + 100):
                number, level = LEVELS[i % len(LEVELS)]
                log.log(number, "order %d paid", i, extra={"order": i, "user": f"u{i % 7}"})
                sent[f"order {i} paid"] = (level, trace_id, span_id)
    assert provider.force_flush(60_000)
    provider.shutdown()

    entries = stored(stack.url, service)
    assert len(entries) == RECORDS
    assert {e.message for e in entries} == set(sent)
    for entry in entries:
        level, trace_id, span_id = sent[entry.message]
        i = int(entry.message.split()[1])
        assert (entry.level, entry.service, entry.trace_id) == (level, service, trace_id)
        assert entry.attributes["span_id"] == span_id
        assert entry.attributes["order"] == i
        assert entry.attributes["user"] == f"u{i % 7}"
        assert str(entry.attributes["code.function.name"]).startswith("test_sdk_logging")
        assert entry.attributes["telemetry.sdk.language"] == "python"
    assert len({e.instance for e in entries}) > 1  # the LB spread the batches


def _json_body(service: str, records: int) -> bytes:
    now = 1_765_000_000_000_000_000
    return json.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                    },
                    "scopeLogs": [
                        {
                            "scope": {"name": "hand", "version": "1"},
                            "logRecords": [
                                {
                                    "timeUnixNano": str(now + i),
                                    "observedTimeUnixNano": now + i,
                                    "severityNumber": 13,
                                    "severityText": "WARN",
                                    "body": {"stringValue": f"json {i}"},
                                    "attributes": [
                                        {"key": "i", "value": {"intValue": str(i)}},
                                        {
                                            "key": "http",
                                            "value": {
                                                "kvlistValue": {
                                                    "values": [
                                                        {
                                                            "key": "status",
                                                            "value": {"intValue": 200},
                                                        }
                                                    ]
                                                }
                                            },
                                        },
                                    ],
                                    "traceId": "5B8EFFF798038103D269B633813FC60C",
                                    "spanId": "eee19b7ec3c1b174",
                                    "flags": 1,
                                }
                                for i in range(records)
                            ],
                        }
                    ],
                }
            ]
        }
    ).encode()


def test_json_export_through_the_lb_and_its_retry_is_stored_once(stack: LiveStack) -> None:
    service = f"otel-json-{uuid.uuid4().hex[:8]}"
    body = gzip.compress(_json_body(service, 300))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    answers: list[Any] = []
    with httpx.Client(base_url=stack.url) as client:
        for path in ("/v1/logs", "/otlp/v1/logs", "/v1/logs"):  # the exporter's retries
            answer = client.post(path, content=body, headers=headers)
            answers.append((answer.status_code, answer.headers["content-type"], answer.json()))
    assert answers == [(200, "application/json", {})] * 3
    entries = stored(stack.url, service)
    assert sorted(e.message for e in entries) == sorted(f"json {i}" for i in range(300))
    first = next(e for e in entries if e.message == "json 7")
    assert first.level is LogLevel.WARNING
    assert first.trace_id == "5b8efff798038103d269b633813fc60c"
    assert first.attributes == {
        "otel.scope.name": "hand",
        "otel.scope.version": "1",
        "i": 7,
        "http.status": 200,
        "span_id": "eee19b7ec3c1b174",
    }
    assert first.timestamp.isoformat().startswith("2025-12-06T05:46:40")


def test_a_bad_body_through_the_lb_keeps_its_otlp_shape(stack: LiveStack) -> None:
    with httpx.Client(base_url=stack.url) as client:
        answer = client.post(
            "/v1/logs", content=b"\xff\xfe", headers={"Content-Type": "application/x-protobuf"}
        )
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/x-protobuf"
    assert answer.content.startswith(b"\x08\x03\x12")  # google.rpc.Status{code: 3, message}


JS = Path(__file__).parent / "otlp_js"


@pytest.mark.skipif(
    shutil.which("node") is None or not (JS / "node_modules").is_dir(),
    reason="needs node and `npm ci` in tests/otlp_js",
)
def test_the_npm_otlp_http_exporter_json_records_are_stored(stack: LiveStack) -> None:
    service = f"otel-js-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["node", "export_logs.mjs", f"{stack.url}/v1/logs", service, "1000"],
        cwd=JS,
        check=True,
        timeout=60,
    )
    entries = stored(stack.url, service)
    assert sorted(e.message for e in entries) == sorted(f"js {i}" for i in range(1000))
    levels = [LogLevel.DEBUG, LogLevel.INFO, LogLevel.WARNING, LogLevel.ERROR, LogLevel.CRITICAL]
    for entry in entries:
        i = int(entry.message.split()[1])
        assert entry.level is levels[i % 5]
        assert entry.service == service
        assert entry.attributes == {
            "otel.scope.name": "js-test",
            "otel.scope.version": "1.0.0",
            "i": i,
            "user": f"u{i % 7}",
            "ok": i % 2 == 0,
            "ratio": i / 4,
            "http.status": 200,
        }
