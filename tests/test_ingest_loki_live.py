"""Loki push through a live stack (the LB, 3 Log API instances, Redis) with the real Python
Loki clients (`python-logging-loki`, `loki-logger-handler`), read back through aygolog's API."""

from __future__ import annotations

import gzip
import json
import logging
import time
import uuid
from typing import Any

import httpx
import logging_loki
import pytest
from loki_logger_handler.loki_logger_handler import LokiLoggerHandler

from aygolog.models import LogEntry, LogLevel
from ingest_support import LEVELS, stored
from support import LiveStack
from test_ingest_loki import BAD_INPUTS, JS, NOW_NS, PB, Entries, json_push, pb_push, snap

pytestmark = pytest.mark.timeout(180)

PATH = "/loki/api/v1/push"


def wait_for(url: str, service: str, count: int, seconds: float = 30) -> list[LogEntry]:
    deadline = time.monotonic() + seconds
    while True:
        entries = stored(url, service)
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


def quiet_logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def test_python_logging_loki_records_are_stored_with_their_labels(stack: LiveStack) -> None:
    service = f"loki-pll-{uuid.uuid4().hex[:8]}"
    handler = logging_loki.LokiHandler(
        url=f"{stack.url}{PATH}", tags={"service_name": service, "env": "test"}, version="1"
    )
    log = quiet_logger(f"loki.pll.{service}", handler)
    records = 200
    for i in range(records):
        number, _ = LEVELS[i % len(LEVELS)]
        log.log(number, "order %d paid", i, extra={"tags": {"user": f"u{i % 7}"}})
    handler.close()

    entries = stored(stack.url, service)
    assert sorted(e.message for e in entries) == sorted(f"order {i} paid" for i in range(records))
    for entry in entries:
        i = int(entry.message.split()[1])
        assert entry.level is LEVELS[i % len(LEVELS)][1]
        assert entry.service == service
        # `severity` became the level; the logger's name and the other tags are attributes.
        assert entry.attributes == {"env": "test", "logger": log.name, "user": f"u{i % 7}"}
    assert len({e.instance for e in entries}) > 1  # one request per record, spread by the LB


def test_loki_logger_handler_records_are_stored_with_labels_and_metadata(
    stack: LiveStack,
) -> None:
    service = f"loki-llh-{uuid.uuid4().hex[:8]}"
    handler = LokiLoggerHandler(
        url=f"{stack.url}{PATH}",
        labels={"application": "shop", "service": service},
        label_keys={"level"},  # the record's level name becomes a label
        timeout=0.2,  # seconds between the handler's flushes
        compressed=True,  # gzip, the handler's default
        enable_structured_loki_metadata=True,
        loki_metadata={"env": "test"},
        loki_metadata_keys=["order"],
    )
    log = quiet_logger(f"loki.llh.{service}", handler)
    records = 2_000
    for i in range(records):
        number, _ = LEVELS[i % len(LEVELS)]
        log.log(number, "order %d paid", i, extra={"order": i, "user": f"u{i % 7}"})
    entries = wait_for(stack.url, service, records)
    assert not handler.error

    assert len(entries) == records
    seen = set()
    for entry in entries:
        line: dict[str, Any] = json.loads(entry.message)  # the handler sends JSON lines
        i = int(line["message"].split()[1])
        seen.add(i)
        assert line["user"] == f"u{i % 7}"
        assert (entry.level, entry.service) == (LEVELS[i % len(LEVELS)][1], service)
        assert entry.attributes == {"application": "shop", "env": "test", "order": str(i)}
        assert abs(entry.timestamp.timestamp() - line["timestamp"]) < 1e-5
    assert seen == set(range(records))


def test_snappy_protobuf_is_stored_like_its_json_twin(stack: LiveStack) -> None:
    tag = uuid.uuid4().hex[:8]
    entries: Entries = [
        (NOW_NS + i, f"line {i}", {"trace_id": f"t{i}"} if i % 2 else {}) for i in range(50)
    ]
    labels = {"job": "", "level": "warn", "region": 'eu "west"'}
    text = '{job="%s", level="warn", region="eu \\"west\\""}'
    with httpx.Client(base_url=stack.url) as client:
        for kind, service in ((PB, f"pb-{tag}"), (JS, f"js-{tag}")):
            if kind == PB:
                body = pb_push((text % service, entries))
            else:
                values = [[str(ns), line, meta] for ns, line, meta in entries]
                body = json_push(({**labels, "job": service}, values))
            answer = client.post(PATH, content=body, headers={"Content-Type": kind})
            assert (answer.status_code, answer.content) == (204, b""), answer.text

    def shape(entry: LogEntry) -> tuple[Any, ...]:
        return (entry.message, entry.level, entry.timestamp, entry.attributes, entry.trace_id)

    from_pb, from_json = stored(stack.url, f"pb-{tag}"), stored(stack.url, f"js-{tag}")
    assert len(from_pb) == 50
    assert [shape(e) for e in from_pb] == [shape(e) for e in from_json]
    assert from_pb[1].attributes == {"region": 'eu "west"', "trace_id": "t1"}
    assert from_pb[1].level is LogLevel.WARNING


# The size cases of BAD_INPUTS are sized for a 200 kB limit; the stack has the default 10 MiB.
LIVE_BAD = [case for case in BAD_INPUTS if case[3] != 413] + [
    ("gzip bomb", {"Content-Type": JS, "Content-Encoding": "gzip"},
     gzip.compress(b" " * 30_000_000), 413),
    ("snappy bomb", {"Content-Type": PB}, snap(b"\0" * 30_000_000), 413),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [case[1:] for case in LIVE_BAD],
    ids=[case[0] for case in LIVE_BAD],
)
def test_bad_input_through_the_lb_keeps_lokis_answer(
    stack: LiveStack, headers: dict[str, str], body: bytes, status: int
) -> None:
    with httpx.Client(base_url=stack.url) as client:
        answer = client.post(PATH, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text.strip()
