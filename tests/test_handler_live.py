"""AygologHandler through a real LB, real instances and Redis: a burst with default settings."""

from __future__ import annotations

import io
import json
import logging
import uuid
import zlib

import httpx
import pytest

from aygolog.client import AygologHandler, LogClient
from aygolog.server.routes import _wants_minimal
from support import LiveStack

pytestmark = pytest.mark.timeout(120)


def test_a_burst_with_default_settings_is_stored_once_each(stack: LiveStack) -> None:
    """20,000 `logging` calls in a tight loop (bounded: a fifth of the benchmark's burst): none
    dropped, each stored exactly once, with its level, logger and the handler's service."""
    service = f"burst-{uuid.uuid4().hex[:10]}"
    stream = io.StringIO()
    handler = AygologHandler(stack.url, service=service, stream=stream)
    log = logging.getLogger(f"live.burst.{service}")
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        for i in range(20_000):
            log.log(logging.WARNING if i % 2 else logging.INFO, "burst %d", i)
        assert handler.drain(30)
    finally:
        handler.close(timeout=5)
    assert handler.dropped == 0
    assert handler.sent == 20_000
    assert stream.getvalue() == ""
    with LogClient(stack.url) as client:
        entries = list(client.iter_logs(service=service, limit=1000, direction="forward"))
    assert sorted(e.message for e in entries) == sorted(f"burst {i}" for i in range(20_000))
    for entry in entries[::997]:
        number = int(entry.message.split()[1])
        assert entry.level.value == ("warning" if number % 2 else "info")
        assert entry.attributes == {"logger": log.name}


def test_prefer_return_minimal_leaves_the_ids_out_through_the_lb(stack: LiveStack) -> None:
    """`Prefer: return=minimal` (what the handler sends) is answered with the count and the
    instance, `Preference-Applied` set, through the LB; a retry under the same key is a replay
    in the same shape, and nothing is stored twice; without the preference the ids come back."""
    service = f"prefer-{uuid.uuid4().hex[:10]}"
    body = [{"message": f"minimal {i}", "service": service} for i in range(3)]
    headers = {"Idempotency-Key": uuid.uuid4().hex, "Prefer": "respond-async, RETURN=minimal"}
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        first = http.post("/api/logs", json=body, headers=headers)
        again = http.post("/api/logs", json=body, headers=headers)
        full = http.post("/api/logs", json=body[:1], headers={"Prefer": "return=representation"})
    assert first.status_code == 201, first.text
    assert first.headers["Preference-Applied"] == "return=minimal"
    answer = first.json()
    assert answer == {"count": 3, "instance": answer["instance"], "replayed": False}
    assert again.status_code == 200
    assert again.json() == {**answer, "replayed": True}
    assert full.status_code == 201
    assert "Preference-Applied" not in full.headers
    assert len(full.json()["ids"]) == 1
    with LogClient(stack.url) as client:
        stored = list(client.iter_logs(service=service, limit=100))
    assert sorted(e.message for e in stored) == ["minimal 0", "minimal 0", "minimal 1", "minimal 2"]


def test_gzip_batches_are_stored_and_bombs_are_refused_through_the_lb(stack: LiveStack) -> None:
    """A gzipped batch (`Content-Encoding: gzip`, as `AygologHandler(compress=True)` sends)
    is stored as sent; one that inflates past the body limit (10 MiB) is refused with 413,
    broken gzip with 400, another coding with 415, and nothing of them is stored."""
    service = f"gzip-{uuid.uuid4().hex[:10]}"
    items = [{"message": f"zipped {i}", "service": service} for i in range(500)]
    body = json.dumps(items).encode()
    bomb_items = json.dumps([{"message": "x" * 60_000, "service": service}] * 200).encode()
    bomb = zlib.compress(bomb_items, 9, wbits=31)
    assert len(bomb) < 100_000 < 10 * 1024**2 < len(bomb_items)
    plain = {"Content-Type": "application/json"}
    gz = {**plain, "Content-Encoding": "gzip"}
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        stored = http.post("/api/logs", content=zlib.compress(body, 1, wbits=31), headers=gz)
        # Two members (as `cat a.gz b.gz`) are one body.
        halves = json.dumps(items[:1]).encode()
        two = zlib.compress(halves[:10], 1, wbits=31) + zlib.compress(halves[10:], 1, wbits=31)
        joined = http.post("/api/logs", content=two, headers={**plain, "Content-Encoding": "GZip"})
        too_big = http.post(
            "/api/logs", content=bomb, headers={**plain, "Content-Encoding": "gzip"}
        )
        broken = http.post(
            "/api/logs",
            content=bomb[: len(bomb) // 2],
            headers={**plain, "Content-Encoding": "gzip"},
        )
        not_gzip = http.post(
            "/api/logs", content=body, headers={**plain, "Content-Encoding": "gzip"}
        )
        other = http.post("/api/logs", content=body, headers={**plain, "Content-Encoding": "br"})
    assert stored.status_code == 201, stored.text
    assert len(stored.json()["ids"]) == 500
    assert joined.status_code == 201, joined.text
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["detail"][0]["field"] == "$"
    for refused in (broken, not_gzip):
        assert refused.status_code == 400, refused.text
        assert refused.json()["detail"][0]["field"] == "content-encoding"
    assert other.status_code == 415
    assert other.json()["detail"][0]["field"] == "content-encoding"
    with LogClient(stack.url) as client:
        messages = sorted(e.message for e in client.iter_logs(service=service, limit=1000))
    assert messages == sorted([f"zipped {i}" for i in range(500)] + ["zipped 0"])


def test_a_compressing_handler_delivers_a_burst_once_each(stack: LiveStack) -> None:
    service = f"burstz-{uuid.uuid4().hex[:10]}"
    handler = AygologHandler(stack.url, service=service, stream=io.StringIO(), compress=True)
    log = logging.getLogger(f"live.burstz.{service}")
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        for i in range(5_000):
            log.info("zipped burst %d", i)
        assert handler.drain(30)
    finally:
        handler.close(timeout=5)
    assert (handler.dropped, handler.sent) == (0, 5_000)
    with LogClient(stack.url) as client:
        entries = list(client.iter_logs(service=service, limit=1000))
    assert sorted(e.message for e in entries) == sorted(f"zipped burst {i}" for i in range(5_000))


@pytest.mark.parametrize(
    ("prefer", "minimal"),
    [
        ("return=minimal", True),
        ('RETURN="minimal"', True),
        ("respond-async, wait=10, return=minimal; x=1", True),
        ("return=representation", False),
        ("return=minimalist", False),
        ("handling=lenient", False),
        ("", False),
    ],
)
def test_which_prefer_headers_ask_for_a_minimal_answer(prefer: str, minimal: bool) -> None:
    """The parsing behind the live test above (RFC 7240: names in any case, values may be
    quoted, preferences comma-separated with `;` parameters)."""
    assert _wants_minimal(prefer) is minimal
