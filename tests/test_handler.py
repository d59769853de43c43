"""AygologHandler against an in-process fake server (httpx.MockTransport): mapping, batching,
overflow, retries, refusals, close and the spool. The live-stack tests are in test_client_live.py.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from aygolog.client import AygologHandler, LogClient, RetryPolicy, Spool
from aygolog.client._base import PreparedBatch, encode_log
from aygolog.models import Limits, LogLevel, NewLog

URL = "http://logs.test"
FAST = RetryPolicy(retries=0, backoff_base=0.01, backoff_max=0.05)


class FakeServer:
    """`POST /api/logs` with idempotency; `answer` may be replaced to inject failures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, list[dict[str, Any]]]] = []
        self.stored: dict[str, list[dict[str, Any]]] = {}
        self.answer: Callable[[str, list[dict[str, Any]]], httpx.Response | None] = (
            lambda key, items: None
        )
        self.gate = threading.Event()
        self.gate.set()
        self.minimal = True
        """Answer `Prefer: return=minimal` as the Log API does (False: as a server ignoring it)."""
        self.prefer: list[str | None] = []
        self.gzipped = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/logs", request.url
        self.gate.wait(10)
        key = request.headers["Idempotency-Key"]
        content = request.content
        if request.headers.get("Content-Encoding") == "gzip":
            content = gzip.decompress(content)
            self.gzipped += 1
        items = json.loads(content)
        with self.lock:
            self.requests.append((key, items))
            self.prefer.append(request.headers.get("Prefer"))
        special = self.answer(key, items)
        if special is not None:
            return special
        with self.lock:
            replayed = key in self.stored
            self.stored.setdefault(key, items)
        status = 200 if replayed else 201
        if self.minimal and request.headers.get("Prefer") == "return=minimal":
            body: dict[str, Any] = {"count": len(items), "instance": "fake", "replayed": replayed}
            return httpx.Response(
                status, json=body, headers={"Preference-Applied": "return=minimal"}
            )
        ids = [f"{len(self.stored)}-{i}" for i in range(len(items))]
        body = {"ids": ids, "instance": "fake", "replayed": replayed}
        return httpx.Response(status, json=body)

    @property
    def messages(self) -> list[str]:
        with self.lock:
            return [item["message"] for items in self.stored.values() for item in items]

    def items(self) -> list[dict[str, Any]]:
        with self.lock:
            return [item for items in self.stored.values() for item in items]


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def make(server: FakeServer) -> Iterator[Callable[..., AygologHandler]]:
    """Builds handlers on the fake server; closes them (and their clients) after the test."""
    made: list[tuple[AygologHandler, LogClient]] = []

    def build(**options: Any) -> AygologHandler:
        client = LogClient(URL, transport=httpx.MockTransport(server), retries=0)
        options.setdefault("backoff", FAST)
        options.setdefault("stream", io.StringIO())
        handler = AygologHandler(client, **options)
        made.append((handler, client))
        return handler

    yield build
    server.gate.set()
    for handler, client in made:
        handler.close(timeout=1)
        client.close()


def logger_with(handler: logging.Handler, name: str = "app") -> logging.Logger:
    log = logging.getLogger(f"test.{name}.{id(handler)}")
    log.handlers = [handler]
    log.setLevel(1)
    log.propagate = False
    return log


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


# -- mapping ---------------------------------------------------------------------------------


def test_record_mapping(make: Callable[..., AygologHandler], server: FakeServer) -> None:
    handler = make(service="billing", flush_interval=0.05)
    log = logger_with(handler, "mapping")
    logging.addLevelName(25, "NOTICE")
    log.warning("disk %s%% full", 91, extra={"host": "db1", "tags": ["a", "b"], "n": 3,
                                            "ratio": 0.5, "ok": True, "none": None})  # fmt: skip
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("division failed")
    log.log(25, "custom level", extra={"trace_id": "abc-123"})
    log.log(5, "below debug", stack_info=True)
    before = time.time()
    log.info("")
    assert handler.drain(5)
    items = {item["message"]: item for item in server.items()}
    warning = items["disk 91% full"]
    assert warning["level"] == "warning"
    assert warning["service"] == "billing"
    assert warning["attributes"] == {
        "logger": log.name, "host": "db1", "tags": "['a', 'b']", "n": 3, "ratio": 0.5, "ok": True,
    }  # fmt: skip
    error = items["division failed"]
    assert error["level"] == "error"
    assert "ZeroDivisionError: division by zero" in error["attributes"]["exception"]
    assert "Traceback" in error["attributes"]["exception"]
    assert "level" not in items["custom level"]  # NOTICE is an alias of info, the default
    assert items["custom level"]["trace_id"] == "abc-123"
    assert items["below debug"]["level"] == "trace"
    assert "test_record_mapping" in items["below debug"]["attributes"]["stack"]
    empty = items["(empty)"]
    stamp = empty["timestamp"]
    assert stamp.endswith(("Z", "+00:00"))
    assert abs(_epoch(stamp) - before) < 5


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_mapping_trims_to_the_limits(make: Callable[..., AygologHandler]) -> None:
    limits = Limits(max_message_bytes=100, max_attribute_value_bytes=50, max_attributes=4)
    handler = make(limits=limits)
    record = logging.LogRecord("big", logging.ERROR, __file__, 1, "é" * 200, (), None)
    record.__dict__.update({f"k{i}": "v" * 100 for i in range(10)})
    try:
        raise ValueError("the end of the traceback matters most")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    log = handler.map_record(record)
    assert len(log.message.encode()) <= 100
    assert log.message.endswith("…")
    assert len(log.attributes) == 4
    exception = log.attributes["exception"]
    assert isinstance(exception, str)
    assert len(exception.encode()) <= 50
    assert exception.startswith("…")
    assert exception.endswith("the end of the traceback matters most")
    assert log.level is LogLevel.ERROR


def test_formatter_only_when_asked(make: Callable[..., AygologHandler]) -> None:
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "hi %s", ("there",), None)
    plain = make()  # e.g. logging.basicConfig(handlers=[...]) sets a formatter on every handler
    plain.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    assert plain.map_record(record).message == "hi there"
    formatted = make(use_formatter=True)
    formatted.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    assert formatted.map_record(record).message == "[svc] hi there"


def test_structlog_event_dict_in_msg(make: Callable[..., AygologHandler]) -> None:
    """structlog's `wrap_for_formatter` puts the event dict in `record.msg`."""
    handler = make()
    event = {"event": "user logged in", "user": "ana", "attempt": 2, "_record": object(),
             "level": "info", "timestamp": "2026-01-01T00:00:00Z"}  # fmt: skip
    record = logging.LogRecord("auth", logging.INFO, __file__, 1, event, (), None)
    log = handler.map_record(record)
    assert log.message == "user logged in"
    assert log.attributes["user"] == "ana"
    assert log.attributes["attempt"] == 2
    assert set(log.attributes) == {"logger", "user", "attempt"}


def test_structlog_through_the_standard_library(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    import structlog  # a dev dependency: this test must run, not skip

    handler = make(service="sl", flush_interval=0.05)
    std = logger_with(handler, "structlog")
    log = structlog.wrap_logger(
        std,
        processors=[structlog.stdlib.add_log_level, structlog.stdlib.render_to_log_kwargs],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    log.bind(user="ana").warning("paid", amount=12)
    assert handler.drain(5)
    (item,) = server.items()
    assert item["message"] == "paid"
    assert item["level"] == "warning"
    assert item["attributes"]["user"] == "ana"
    assert item["attributes"]["amount"] == 12


def test_emit_never_raises(make: Callable[..., AygologHandler]) -> None:
    errors: list[logging.LogRecord] = []

    class Quiet(AygologHandler):
        def handleError(self, record: logging.LogRecord) -> None:
            errors.append(record)

    client = LogClient(URL, transport=httpx.MockTransport(FakeServer()))
    handler = Quiet(client, stream=io.StringIO())
    try:
        log = logger_with(handler, "raise")
        log.info("%d", "not a number")  # a broken format: getMessage raises
        assert len(errors) == 1
    finally:
        handler.close(timeout=1)
        client.close()


# -- batching --------------------------------------------------------------------------------


def test_emit_does_not_wait_for_the_network(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    server.gate.clear()  # every request hangs until the gate opens
    handler = make(batch_size=10, flush_interval=0.01)
    log = logger_with(handler, "fast")
    started = time.perf_counter()
    for i in range(2000):
        log.info("m%d", i)
    assert time.perf_counter() - started < 2.0
    server.gate.set()
    assert handler.drain(10)
    assert len(server.messages) == 2000


def test_batches_by_size_then_by_age(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    # max_batch_size=10: never more per request, however deep the queue (in order: one sender)
    handler = make(batch_size=10, max_batch_size=10, flush_interval=0.5, max_in_flight=1)
    log = logger_with(handler, "size")
    for i in range(25):
        log.info("s%d", i)
    assert wait_until(lambda: len(server.requests) >= 2, 2)
    assert [len(items) for _, items in server.requests[:2]] == [10, 10]
    time.sleep(0.1)
    assert len(server.requests) == 2  # the last 5 wait for their age
    assert wait_until(lambda: len(server.requests) == 3, 3)
    assert len(server.requests[2][1]) == 5
    assert server.messages == [f"s{i}" for i in range(25)]


@pytest.mark.parametrize("minimal", [True, False])
def test_batches_ask_for_a_minimal_answer_and_count_either_kind(
    make: Callable[..., AygologHandler], server: FakeServer, minimal: bool
) -> None:
    """Every batch asks for `Prefer: return=minimal` (the ids are of no use here); `sent`
    counts from the answer's `count`, or from its ids when a server ignores the preference."""
    server.minimal = minimal
    handler = make(batch_size=7, max_batch_size=7, max_in_flight=1, flush_interval=0.05)
    log = logger_with(handler, "minimal")
    for i in range(20):
        log.info("m%d", i)
    assert handler.drain(5)
    assert handler.sent == 20
    assert server.messages == [f"m{i}" for i in range(20)]
    assert server.prefer == ["return=minimal"] * 3


def test_compress_gzips_every_batch_and_its_retries(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    """With `compress=True` each request body is gzip (`Content-Encoding: gzip`), retries too,
    under the batch's one key."""
    failures = [503]
    server.answer = lambda key, items: (
        httpx.Response(failures.pop(), json={"error": "x"}) if failures else None
    )
    handler = make(compress=True, max_in_flight=1, flush_interval=0.05)
    log = logger_with(handler, "gzip")
    for i in range(30):
        log.info("z%d", i)
    assert wait_until(lambda: len(server.messages) == 30)
    assert server.messages == [f"z{i}" for i in range(30)]
    assert server.gzipped == len(server.requests) == 2
    assert server.requests[0][0] == server.requests[1][0]


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_overflow_policy_and_report(
    make: Callable[..., AygologHandler], server: FakeServer, policy: str
) -> None:
    stream = io.StringIO()
    handler = make(capacity=10, batch_size=5, flush_interval=0.01, overflow=policy,
                   stream=stream, report_interval=0.3, max_in_flight=1)  # fmt: skip
    log = logger_with(handler, "overflow")
    server.gate.clear()
    log.info("first")
    assert wait_until(lambda: handler.queued == 1 and not handler._queue)  # in flight, stuck
    for i in range(25):
        log.info("o%d", i)
    assert handler.dropped == 15
    time.sleep(0.05)
    log.info("one more")  # 16 dropped
    server.gate.set()
    assert handler.drain(5)
    kept = [f"o{i}" for i in range(15, 25)] if policy == "drop_oldest" else []
    if policy == "drop_oldest":
        assert server.messages == ["first", *kept[1:], "one more"]
    else:
        assert server.messages == ["first", *[f"o{i}" for i in range(10)]]
    assert handler.dropped == 16
    assert wait_until(lambda: "dropped" in stream.getvalue())
    assert stream.getvalue().count("dropped") == 1  # at most once per report_interval
    time.sleep(0.4)  # past report_interval, but nothing new was dropped: no new report
    assert stream.getvalue().count("dropped") == 1


def test_a_full_queue_waits_for_a_working_server_instead_of_dropping(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    """A burst faster than delivery, the server slow but answering: `emit` waits for room
    (up to `max_wait`) and nothing is dropped; the records go out in order."""

    def slow(key: str, items: list[dict[str, Any]]) -> None:
        time.sleep(0.02)

    server.answer = slow
    handler = make(capacity=10, batch_size=5, max_batch_size=5, max_in_flight=1,
                   flush_interval=0.01, max_wait=2.0)  # fmt: skip
    log = logger_with(handler, "pace")
    for i in range(200):
        log.info("p%d", i)
    assert handler.drain(10)
    assert handler.dropped == 0
    assert server.messages == [f"p{i}" for i in range(200)]
    assert handler.peak_queued == 10  # it did fill up: the waits were needed


def test_a_full_queue_does_not_wait_while_delivery_fails(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    """With the server failing, a full queue drops at once (the caller never waits on an
    outage), and with `max_wait=0` it never waits at all."""
    server.answer = lambda key, items: httpx.Response(503, headers={"Retry-After": "30"})
    handler = make(capacity=5, batch_size=5, max_in_flight=1, flush_interval=0.01)
    log = logger_with(handler, "outage")
    log.info("first")
    assert wait_until(lambda: handler.failed_attempts >= 1)
    started = time.monotonic()
    for i in range(50):
        log.info("o%d", i)
    assert time.monotonic() - started < handler.max_wait  # not even one wait
    assert handler.dropped == 45
    never = make(capacity=5, batch_size=5, max_in_flight=1, max_wait=0)
    server.gate.clear()  # requests hang: delivery is not failing, but max_wait=0
    quick = logger_with(never, "never")
    started = time.monotonic()
    for i in range(50):
        quick.info("n%d", i)
    assert time.monotonic() - started < 0.5
    assert never.dropped > 0


def test_retries_keep_the_idempotency_key(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    calls = {"n": 0}

    def flaky(key: str, items: list[dict[str, Any]]) -> httpx.Response | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused")
        if calls["n"] == 2:
            return httpx.Response(503, json={"error": "redis"}, headers={"Retry-After": "0"})
        if calls["n"] == 3:
            server.stored[key] = items  # stored, but the answer is lost
            raise httpx.ReadError("reset after storing")
        return None

    server.answer = flaky
    handler = make(flush_interval=0.01)
    log = logger_with(handler, "retry")
    for i in range(3):
        log.info("r%d", i)
    assert wait_until(lambda: calls["n"] >= 4)
    assert handler.drain(5)
    keys = {key for key, _ in server.requests}
    assert len(keys) == 1
    assert server.messages == ["r0", "r1", "r2"]  # once, although attempt 3 stored it
    assert handler.sent == 3


def test_refused_items_are_counted_and_the_rest_delivered(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    def refuse(key: str, items: list[dict[str, Any]]) -> httpx.Response | None:
        bad = [i for i, item in enumerate(items) if item["message"].startswith("bad")]
        if bad:
            detail = [{"field": "message", "index": i, "reason": "nope"} for i in bad]
            return httpx.Response(422, json={"error": "invalid input", "detail": detail})
        if len(items) > 4:
            return httpx.Response(413, json={"error": "too large"})
        return None

    server.answer = refuse
    stream = io.StringIO()
    handler = make(flush_interval=0.05, batch_size=20, stream=stream, report_interval=0)
    log = logger_with(handler, "refuse")
    for i in range(10):
        log.info("bad%d" if i in (2, 7) else "good%d", i)
    assert wait_until(lambda: len(server.messages) == 8)
    assert handler.drain(5)
    assert sorted(server.messages) == sorted(f"good{i}" for i in range(10) if i not in (2, 7))
    assert handler.invalid == 2
    assert wait_until(lambda: "refused by the server" in stream.getvalue())


def test_no_feedback_from_its_own_thread(server: FakeServer) -> None:
    client = LogClient(URL, transport=httpx.MockTransport(server))
    handler = AygologHandler(client, flush_interval=0.01, stream=io.StringIO())
    root = logging.getLogger()
    level = root.level
    httpx_level = logging.getLogger("httpx").level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.INFO)  # httpx logs each request at INFO
    try:
        logging.getLogger("user").info("one")
        assert handler.drain(5)
        time.sleep(0.2)
        assert handler.drain(5)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(httpx_level)
        handler.close(timeout=1)
        client.close()
    assert server.messages == ["one"]


# -- close and the spool -----------------------------------------------------------------------


def down(key: str, items: list[dict[str, Any]]) -> httpx.Response:
    raise httpx.ConnectError("connection refused")


def test_close_with_the_server_down_returns_in_time_and_reports(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    server.answer = down
    stream = io.StringIO()
    handler = make(flush_interval=0.05, stream=stream, close_timeout=1.0,
                   backoff=RetryPolicy(backoff_base=0.5, backoff_max=5.0))  # fmt: skip
    log = logger_with(handler, "down")
    for i in range(1234):
        log.info("d%d", i)
    time.sleep(0.2)
    started = time.monotonic()
    handler.close()
    took = time.monotonic() - started
    assert took < 1.0 + 1.0  # the close_timeout, not the 5 s backoff (margin for a busy machine)
    assert handler.undelivered == 1234
    # one line, or an early line from the sender that gave up first and the final one
    told = re.findall(r"(\d+) log records could not be delivered", stream.getvalue())
    assert sum(map(int, told)) == 1234
    log.info("after close")
    assert handler.dropped == 1


def test_spool_keeps_batches_and_their_keys_across_a_restart(
    make: Callable[..., AygologHandler], server: FakeServer, tmp_path: Path
) -> None:
    server.answer = down
    stream = io.StringIO()
    first = make(spool_dir=tmp_path, batch_size=50, flush_interval=0.02, stream=stream,
                 close_timeout=2.0)  # fmt: skip
    log = logger_with(first, "spool")
    for i in range(220):
        log.info("p%d", i)
    assert wait_until(lambda: first.spool is not None and first.spool.records == 220)
    started = time.monotonic()
    first.close()
    assert time.monotonic() - started < 2.5
    assert first.undelivered == 0
    assert "220 log records are spooled" in stream.getvalue()
    files = sorted(tmp_path.glob("*.batch"))
    assert files
    keys = {f.read_bytes().split(b"\n", 1)[0].split()[2].decode() for f in files}
    attempted = {key for key, _ in server.requests}
    assert attempted <= keys  # what was tried before spooling kept its key

    # A new process (a new handler) with the same directory sends them once the server is up.
    server.answer = lambda key, items: None
    second = make(spool_dir=tmp_path, flush_interval=0.02)
    assert wait_until(lambda: len(server.messages) == 220)
    assert sorted(server.messages) == sorted(f"p{i}" for i in range(220))
    assert set(server.stored) == keys
    assert wait_until(lambda: not list(tmp_path.glob("*.batch")))
    assert second.sent == 220


def test_spool_skips_unreadable_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.put(PreparedBatch((b'{"message":"a"}', b'{"message":"b"}'), "key-1"))
    (tmp_path / "00000000000000000000-1-000001.batch").write_bytes(b"garbage\n")
    reopened = Spool(tmp_path)
    assert list(tmp_path.glob("*.bad"))
    found = reopened.peek()
    assert found is not None
    assert found[1] == PreparedBatch((b'{"message":"a"}', b'{"message":"b"}'), "key-1")
    assert reopened.records == 2
    reopened.remove(found[0])
    assert reopened.peek() is None
    assert not Spool(tmp_path, max_bytes=10).put(PreparedBatch((b"x" * 20,), "k"))


def test_drop_reports_are_rate_limited(make: Callable[..., AygologHandler]) -> None:
    stream = io.StringIO()
    handler = make(stream=stream, report_interval=60)
    handler.dropped = 5
    handler._report()
    handler.dropped = 9
    handler._report()  # within the minute: nothing
    assert stream.getvalue().count("\n") == 1
    assert "dropped 5 log records" in stream.getvalue()
    handler._last_report -= 61  # a minute later
    handler._report()
    assert stream.getvalue().count("\n") == 2
    assert "dropped 4 log records" in stream.getvalue().splitlines()[1]


# -- throughput: cheap emit, encoding in the sender threads, several requests in flight -----------


def test_plain_records_are_encoded_by_the_senders_as_map_record_would(
    make: Callable[..., AygologHandler],
) -> None:
    handler = make(service="svc", limits=Limits(max_message_bytes=40, max_attribute_value_bytes=20))
    logging.addLevelName(27, "HANDLER_TEST_27")  # a name no alias knows: mapped by its number
    cases = [
        logging.LogRecord("app.module", logging.INFO, __file__, 1, "hello %s", ("world",), None),
        logging.LogRecord("app", logging.WARNING, __file__, 1, "   ", (), None),
        logging.LogRecord("x" * 50, logging.ERROR, __file__, 1, "é" * 100, (), None),
        logging.LogRecord("app", 27, __file__, 1, "custom", (), None),
        logging.LogRecord("app", 5, __file__, 1, "below debug", (), None),
        logging.LogRecord("app", logging.CRITICAL, __file__, 1, 42, (), None),
    ]
    for record in cases:
        item = (record.created, record.levelname, record.levelno, record.name, record.getMessage())
        assert handler._encode_plain(item) == encode_log(handler.map_record(record))


def test_emit_keeps_what_the_message_said_at_the_call(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    server.gate.clear()
    handler = make(flush_interval=0.01)
    log = logger_with(handler, "snapshot")
    basket = ["apple"]
    log.info("basket %s", basket)
    other = logging.StreamHandler(io.StringIO())  # formats first: the record gains `message`
    log.handlers.insert(0, other)
    log.info("formatted elsewhere first %d", 7)
    basket.append("pear")  # changed after the call
    server.gate.set()
    assert handler.drain(5)
    assert sorted(server.messages) == ["basket ['apple']", "formatted elsewhere first 7"]
    assert {item["attributes"]["logger"] for item in server.items()} == {log.name}


def test_a_subclass_mapping_is_used_for_every_record(server: FakeServer) -> None:
    class Shouting(AygologHandler):
        def map_record(self, record: logging.LogRecord) -> NewLog:
            log = super().map_record(record)
            return msgspec.structs.replace(log, message=log.message.upper())

    client = LogClient(URL, transport=httpx.MockTransport(server), retries=0)
    handler = Shouting(client, flush_interval=0.01, stream=io.StringIO())
    try:
        logger_with(handler, "shouting").info("quiet %s", "please")
        assert handler.drain(5)
    finally:
        handler.close(timeout=1)
        client.close()
    assert server.messages == ["QUIET PLEASE"]


@pytest.mark.parametrize("in_flight", [1, 3])
def test_up_to_max_in_flight_requests_at_once(server: FakeServer, in_flight: int) -> None:
    arrived: list[int] = []

    def transport(request: httpx.Request) -> httpx.Response:
        arrived.append(1)
        return server(request)

    server.gate.clear()
    client = LogClient(URL, transport=httpx.MockTransport(transport), retries=0)
    handler = AygologHandler(
        client, batch_size=10, max_batch_size=10, max_in_flight=in_flight, stream=io.StringIO()
    )
    try:
        log = logger_with(handler, f"inflight{in_flight}")
        for i in range(100):
            log.info("f%d", i)
        assert wait_until(lambda: len(arrived) == in_flight)
        time.sleep(0.1)
        assert len(arrived) == in_flight  # no more until one is answered
        assert handler.queued == 100
        server.gate.set()
        assert handler.drain(5)
    finally:
        handler.close(timeout=1)
        client.close()
    assert sorted(server.messages) == sorted(f"f{i}" for i in range(100))
    assert len(server.requests) == 10


def test_a_partial_batch_goes_out_within_the_default_flush_interval(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    """The last records of a burst wait at most `flush_interval` (now 0.2 s, was 1 s)."""
    handler = make()
    assert handler.flush_interval == 0.2
    log = logger_with(handler, "linger")
    log.info("alone")
    started = time.monotonic()
    assert wait_until(lambda: server.messages == ["alone"], 3)
    assert time.monotonic() - started < 0.6


# -- keeping up with a burst: larger batches when behind, cheaper emit and encoding -------------


def test_a_deep_queue_goes_out_in_larger_batches(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    """Behind (more than `batch_size` queued), a sender takes up to `max_batch_size` at once."""
    server.gate.clear()
    handler = make(batch_size=10, max_batch_size=50, flush_interval=0.01, max_in_flight=1)
    log = logger_with(handler, "deep")
    log.info("first")
    assert wait_until(lambda: handler.queued == 1 and not handler._queue)  # in flight, stuck
    for i in range(205):
        log.info("d%d", i)
    assert handler.peak_queued == 205
    server.gate.set()
    assert handler.drain(5)
    assert [len(items) for _, items in server.requests] == [1, 50, 50, 50, 50, 5]
    assert server.messages == ["first", *(f"d{i}" for i in range(205))]  # one sender: in order
    assert len({key for key, _ in server.requests}) == 6  # a key per batch


def test_idle_senders_share_a_deep_queue(make: Callable[..., AygologHandler]) -> None:
    handler = make(batch_size=10, max_batch_size=40, max_in_flight=3, flush_interval=60)
    records = [(time.monotonic(), b'{"message":"x"}') for _ in range(90)]
    with handler._cond:  # the senders wait for the lock: the queue is as we make it
        handler._queue.extend(records)
        assert len(handler._take()) == 30  # 90 queued, 3 idle senders: a third each
        handler._slots[0].preparing = 30
        assert len(handler._take()) == 30  # 60 left, 2 idle
        handler._slots[1].preparing = 30
        handler._queue.extend(records)  # 120 queued, 1 idle: all, up to max_batch_size
        assert len(handler._take()) == 40
        handler._queue.clear()
        handler._queue.extend(records[:15])  # a little over batch_size, 1 idle: all of it
        assert len(handler._take()) == 15
        handler._queue.extend(records[:5])  # under batch_size (sent for its age): all of it
        assert len(handler._take()) == 5
        handler._slots[0].preparing = handler._slots[1].preparing = 0


def test_max_batch_size_is_never_below_batch_size_nor_above_the_clients_limit(
    server: FakeServer,
) -> None:
    client = LogClient(URL, transport=httpx.MockTransport(server), max_batch_items=300)
    handlers = [
        AygologHandler(client, batch_size=100, max_batch_size=50, stream=io.StringIO()),
        AygologHandler(client, batch_size=100, stream=io.StringIO()),
    ]
    try:
        assert handlers[0].max_batch_size == 100
        assert handlers[0]._max_take == 100
        assert handlers[1]._max_take == 300  # capped by the client's max_batch_items
    finally:
        for handler in handlers:
            handler.close(timeout=1)
        client.close()


def test_plain_timestamps_are_encoded_as_datetime_would(
    make: Callable[..., AygologHandler],
) -> None:
    """The sender's own timestamp text equals msgspec's for `datetime.fromtimestamp(created)`,
    rounding included (half microseconds, whole seconds, the next second)."""
    handler = make(service="svc")
    rng = random.Random(16)
    now = time.time()
    created = [0.0, 1.0, 1.5, now, float(int(now)), int(now) + 0.9999996, int(now) + 0.0000005]
    created += [rng.uniform(0, 4e9) for _ in range(2000)]
    created += [int(now) + rng.randrange(1_000_000) / 1e6 for _ in range(2000)]
    for value in created:
        record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "at %r", (value,), None)
        record.created = value
        item = (record.created, record.levelname, record.levelno, record.name, record.getMessage())
        assert handler._encode_plain(item) == encode_log(handler.map_record(record)), value


def test_plain_encoding_with_many_loggers_and_levels(make: Callable[..., AygologHandler]) -> None:
    handler = make()  # no service: the field is left out
    for n in range(1500):  # more loggers than the cache of their JSON parts holds
        level = (logging.DEBUG, logging.INFO, logging.WARNING, 35)[n % 4]
        record = logging.LogRecord(f"app.{n}", level, __file__, 1, 'q"\\\n%d', (n,), None)
        item = (record.created, record.levelname, record.levelno, record.name, record.getMessage())
        assert handler._encode_plain(item) == encode_log(handler.map_record(record))
    assert len(handler._fixed) <= 1024


def test_emit_does_not_take_the_handlers_io_lock(
    make: Callable[..., AygologHandler], server: FakeServer
) -> None:
    """`handle` skips `logging`'s per-handler lock (`emit` has its own); filters still apply."""
    handler = make(flush_interval=0.01)
    handler.addFilter(lambda record: not record.getMessage().startswith("secret"))
    log = logger_with(handler, "nolock")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        lock = handler.lock
        assert lock is not None
        with lock:  # e.g. another thread inside a slow `flush`
            holding.set()
            release.wait(10)

    def log_two() -> None:
        log.info("kept")
        log.info("secret")

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(5)
        logging_thread = threading.Thread(target=log_two)
        logging_thread.start()
        logging_thread.join(5)
        assert not logging_thread.is_alive()  # it did not wait for the lock
    finally:
        release.set()
        holder.join(5)
    assert handler.drain(5)
    assert server.messages == ["kept"]


def test_refused_arguments_leave_nothing_for_logging_shutdown() -> None:
    """A handler whose arguments are refused never joins `logging`'s list of handlers, so the
    flush at interpreter exit does not trip over it."""
    program = (
        "from aygolog.client import AygologHandler\n"
        "AygologHandler('http://127.0.0.1:9', capacity=0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "ValueError: capacity, batch_size and max_in_flight must be at least 1" in result.stderr
    assert "atexit" not in result.stderr
    assert "AttributeError" not in result.stderr
