"""Seq ingestion through a live stack (the LB, 3 Log API instances, Redis) with the real `seqlog`
package in both of its modes (legacy `{"Events": [...]}` JSON and CLEF), read back through
aygolog's API; and Seq's error answers through the LB."""

from __future__ import annotations

import gzip
import logging
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import seqlog
from seqlog.feature_flags import FeatureFlag, configure_feature
from seqlog.structured_logging import SeqLogHandler, StructuredLogger

from aygolog.client import LogClient
from aygolog.models import LogEntry, LogLevel, LogQuery
from ingest_support import LEVELS, stored
from support import LiveStack
from test_ingest_clef import BAD_INPUTS

pytestmark = pytest.mark.timeout(180)


def wait_for(url: str, service: str, count: int, handler: SeqLogHandler) -> list[LogEntry]:
    deadline = time.monotonic() + 60
    while True:
        handler.flush()  # the consumer thread may still hold a partial batch
        entries = stored(url, service)
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.3)


@pytest.fixture
def seq_mode(request: pytest.FixtureRequest) -> Iterator[bool]:
    """seqlog's CLEF switch is a process-wide feature flag: set it, and put it back."""
    use_clef: bool = request.param
    configure_feature(FeatureFlag.USE_CLEF, use_clef)
    yield use_clef
    configure_feature(FeatureFlag.USE_CLEF, False)
    seqlog.reset_global_log_properties()


@pytest.mark.parametrize("seq_mode", [False, True], ids=["legacy-json", "clef"], indirect=True)
def test_seqlog_events_are_stored_with_levels_and_properties(
    stack: LiveStack, seq_mode: bool
) -> None:
    service = f"seq-{'clef' if seq_mode else 'raw'}-{uuid.uuid4().hex[:8]}"
    seqlog.set_global_log_properties(Application=service, env="test")
    handler = SeqLogHandler(stack.url, batch_size=100, auto_flush_timeout=0.2)
    handler.setFormatter(logging.Formatter())  # as seqlog.log_to_seq does: it formats @x
    log = StructuredLogger(f"seq.{service}")
    log.handlers = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    records = 1_000
    for i in range(records):
        number, _ = LEVELS[i % len(LEVELS)]
        log.log(number, "Order {OrderId} paid by {User}", OrderId=i, User=f"u{i % 7}")
    try:
        raise ValueError("card declined")
    except ValueError:
        log.exception("Order {OrderId} failed", OrderId=records)
    log.warning("legacy %s style %d", "printf", 7)
    entries = wait_for(stack.url, service, records + 2, handler)
    handler.close()

    assert len(entries) == records + 2
    by_message = {e.message.split("\n")[0]: e for e in entries}
    assert len(by_message) == records + 2  # every event once
    for i in range(records):
        entry = by_message[f"Order {i} paid by u{i % 7}"]
        assert entry.level is LEVELS[i % len(LEVELS)][1]
        assert entry.service == service  # from the Application property
        attributes = dict(entry.attributes)
        assert isinstance(attributes.pop("ThreadId"), int)
        assert attributes == {
            "env": "test",
            "LoggerName": log.name,
            "OrderId": i,
            "User": f"u{i % 7}",
            "ThreadName": "MainThread",
        }
    failed = by_message[f"Order {records} failed"]
    assert failed.level is LogLevel.ERROR
    assert failed.message.endswith("ValueError: card declined")  # @x appended
    printf = by_message["legacy printf style 7"]
    assert printf.level is LogLevel.WARNING
    assert len({e.instance for e in entries}) > 1  # batches spread over the instances by the LB


# The size cases of BAD_INPUTS are sized for a 200 kB limit; the stack has the default 10 MiB.
LIVE_BAD = [case for case in BAD_INPUTS if case[4] != 413] + [
    ("gzip bomb", "/ingest/clef", {"Content-Encoding": "gzip"},
     gzip.compress(b" " * 30_000_000), 413),
]  # fmt: skip


def test_bad_input_through_the_lb_keeps_seqs_answer_and_stores_nothing(
    stack: LiveStack,
) -> None:
    with LogClient(stack.url) as client:
        before = client.query(LogQuery(limit=1)).items
    with httpx.Client(base_url=stack.url) as http:
        for name, path, headers, body, status in LIVE_BAD:
            answer = http.post(path, content=body, headers=headers)
            assert answer.status_code == status, (name, answer.text)
            assert answer.headers["content-type"].startswith("application/json"), name
            assert list(answer.json()) == ["Error"], name
    with LogClient(stack.url) as client:
        after = client.query(LogQuery(limit=1)).items
    assert [e.id for e in after] == [e.id for e in before]  # nothing new stored
