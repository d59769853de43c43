"""AygologHandler through a real LB, real instances and Redis: a burst with default settings."""

from __future__ import annotations

import io
import logging
import uuid

import httpx
import pytest

from aygolog.client import AygologHandler, LogClient
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
