"""The Log API end to end: real `aygolog api` processes on one real Redis, over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from aygolog.embedded import EmbeddedRedis
from aygolog.models import LogEntry, LogPage
from support import ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(120)


def api_env(redis_url: str, prefix: str, name: str) -> dict[str, str]:
    host_port = redis_url.removeprefix("redis://").removesuffix("/0")
    return {
        # The seed's own variable names.
        "ConnectionStrings__Redis": host_port,
        "ServiceRegistration__ServiceName": name,
        "AYGOLOG_REDIS_PREFIX": prefix,
    }


@pytest.fixture(scope="module")
def module_redis() -> Iterator[EmbeddedRedis]:
    """A server of this module's own, so a test may stop and restart it."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def two_apis(module_redis: EmbeddedRedis) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    prefix = "apitest"
    a = ServiceProcess("api", env=api_env(module_redis.url, prefix, "api-a"))
    b = ServiceProcess("api", env=api_env(module_redis.url, prefix, "api-b"))
    a.start()
    b.start()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def a(two_apis: tuple[ServiceProcess, ServiceProcess]) -> ServiceProcess:
    return two_apis[0]


@pytest.fixture
def b(two_apis: tuple[ServiceProcess, ServiceProcess]) -> ServiceProcess:
    return two_apis[1]


def count(api: ServiceProcess) -> int:
    stats = httpx.get(api.url + "/api/logs/stats").json()
    total: int = stats["total"]
    return total


# -- the seed's calls ----------------------------------------------------------------------


def test_seed_post_and_list(a: ServiceProcess, b: ServiceProcess) -> None:
    response = httpx.post(a.url + "/api/log", json={"name": "from the seed client"})
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["message"] == "from the seed client"
    assert stored["instance"] == "api-a"
    assert stored["level"] == "info"
    listed = httpx.get(b.url + "/api/log").json()
    assert isinstance(listed, list)
    assert listed[0]["name"] == "from the seed client"
    assert listed[0]["id"] == stored["id"]
    assert "timestamp" in listed[0]


def test_the_seed_list_is_never_staler_than_a_write_on_another_instance(
    a: ServiceProcess, b: ServiceProcess
) -> None:
    """`GET /api/log` keeps its encoded page while the store's version stays the same: a log
    acknowledged by one instance is in the next list from the other, every time."""
    with httpx.Client() as client:
        for i in range(20):
            for limit in (None, 3):
                params = {"limit": limit} if limit else {}
                client.get(b.url + "/api/log", params=params).raise_for_status()  # kept
                client.get(b.url + "/api/log", params=params).raise_for_status()  # served kept
            stored = client.post(a.url + "/api/log", json={"name": f"fresh {i}"}).json()
            for limit in (None, 3):
                params = {"limit": limit} if limit else {}
                listed = client.get(b.url + "/api/log", params=params).json()
                assert listed[0]["id"] == stored["id"], (i, limit)
                assert listed[0]["name"] == f"fresh {i}"
                assert len(listed) == min(limit or 100, count(a))


@pytest.mark.parametrize(
    "body",
    [
        {"Name": "seed case"},  # ASP.NET bound JSON names case-insensitively
        {"name": "seed case", "sourceInstance": "api-elsewhere"},  # the seed model's field
        {"NAME": "seed case", "SourceInstance": "x", "Level": "warn"},
    ],
)
def test_seed_bodies_as_aspnet_bound_them(
    a: ServiceProcess, b: ServiceProcess, body: dict[str, str]
) -> None:
    response = httpx.post(a.url + "/api/log", json=body)
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["message"] == "seed case"
    assert stored["instance"] == "api-a"
    listed = httpx.get(b.url + "/api/log", params={"limit": 1}).json()
    assert listed[0]["id"] == stored["id"]
    assert listed[0]["name"] == "seed case"
    assert listed[0]["sourceInstance"] == "api-a"  # the instance that stored it
    refused = httpx.post(a.url + "/api/logs", json=[body])  # snake_case everywhere else
    assert refused.status_code == 422


def test_health(a: ServiceProcess) -> None:
    assert httpx.get(a.url + "/health").json()["status"] == "ok"
    ready = httpx.get(a.url + "/health/ready")
    assert ready.status_code == 200
    assert ready.json()["redis"]["ok"] is True


# -- batches ---------------------------------------------------------------------------------


def test_json_batch(a: ServiceProcess) -> None:
    batch = [{"message": f"j{i}", "level": "warn", "service": "batch"} for i in range(50)]
    response = httpx.post(a.url + "/api/logs", json=batch)
    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["ids"]) == 50
    assert body["instance"] == "api-a"
    page = httpx.get(a.url + "/api/logs", params={"service": "batch", "limit": 100}).json()
    assert [i["message"] for i in page["items"]] == [f"j{i}" for i in reversed(range(50))]


def test_ndjson_batch(a: ServiceProcess) -> None:
    lines = "\n".join(json.dumps({"message": f"n{i}", "service": "nd"}) for i in range(20))
    response = httpx.post(
        a.url + "/api/logs",
        content=lines.encode(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 201, response.text
    page = httpx.get(a.url + "/api/logs", params={"service": "nd"}).json()
    assert len(page["items"]) == 20


def test_idempotent_retry_is_stored_once(a: ServiceProcess, b: ServiceProcess) -> None:
    batch = [{"message": f"idem{i}", "service": "idem"} for i in range(10)]
    headers = {"Idempotency-Key": "retry-me-1"}
    first = httpx.post(a.url + "/api/logs", json=batch, headers=headers)
    again = httpx.post(b.url + "/api/logs", json=batch, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["ids"] == first.json()["ids"]
    assert again.json()["replayed"] is True
    page = httpx.get(a.url + "/api/logs", params={"service": "idem"}).json()
    assert len(page["items"]) == 10
    conflict = httpx.post(a.url + "/api/logs", json=batch[:3], headers=headers)
    assert conflict.status_code == 409


def test_one_log_with_an_idempotency_key_is_stored_once(
    a: ServiceProcess, b: ServiceProcess
) -> None:
    log = {"message": "once", "service": "idem-one", "attributes": {"k": 1}}
    headers = {"Idempotency-Key": "one-retry-1"}
    first = httpx.post(a.url + "/api/log", json=log, headers=headers)
    again = httpx.post(b.url + "/api/log", json=log, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert first.json()["instance"] == "api-a"
    page = httpx.get(a.url + "/api/logs", params={"service": "idem-one"}).json()
    assert [e["id"] for e in page["items"]] == [first.json()["id"]]
    other = httpx.post(a.url + "/api/log", json={**log, "message": "two"}, headers=headers)
    assert other.status_code == 409


def test_paging(a: ServiceProcess) -> None:
    httpx.post(a.url + "/api/logs", json=[{"message": f"p{i}", "service": "pg"} for i in range(45)])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"service": "pg", "limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = msgspec.json.decode(
            httpx.get(a.url + "/api/logs", params=params).content, type=LogPage
        )
        seen += [e.message for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"p{i}" for i in reversed(range(45))]


def test_query_filters_over_http(a: ServiceProcess) -> None:
    httpx.post(
        a.url + "/api/logs",
        json=[
            {"message": "Timeout talking to db", "level": "error", "service": "qf",
             "attributes": {"region": "eu", "code": 504}},
            {"message": "fine", "level": "info", "service": "qf"},
        ],
    )  # fmt: skip

    def query(**params: Any) -> list[str]:
        page = httpx.get(a.url + "/api/logs", params={"service": "qf", **params})
        assert page.status_code == 200, page.text
        return [i["message"] for i in page.json()["items"]]

    assert query(level="error,critical") == ["Timeout talking to db"]
    assert query(min_level="warn") == ["Timeout talking to db"]
    assert query(q="TIMEOUT") == ["Timeout talking to db"]
    assert query(attr="code:504") == ["Timeout talking to db"]
    assert query(since="5m") == ["fine", "Timeout talking to db"]
    assert query(until="1h") == []


def test_stats_and_metrics(a: ServiceProcess) -> None:
    httpx.post(a.url + "/api/log", json={"message": "for stats", "level": "critical"})
    stats = httpx.get(a.url + "/api/logs/stats").json()
    assert stats["by_level"]["critical"] >= 1
    assert stats["ingest_rate"] > 0
    text = httpx.get(a.url + "/metrics").text
    assert "aygolog_http_requests_total{" in text
    assert 'route="/api/log"' in text
    assert "aygolog_entries_ingested_total" in text
    assert "aygolog_store_seconds_bucket" in text


def test_openapi_schema_is_complete(a: ServiceProcess) -> None:
    schema = httpx.get(a.url + "/schema/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/log", "/api/logs", "/api/logs/stream", "/api/logs/stats", "/health"):
        assert path in paths
    assert "422" in paths["/api/logs"]["post"]["responses"]
    assert "ErrorBody" in json.dumps(schema["components"])
    # Request bodies are documented although the handlers parse them themselves.
    one = paths["/api/log"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert one["required"] == ["message"]
    assert set(one["properties"]) >= {"message", "level", "service", "attributes", "trace_id"}
    assert "warning" in one["properties"]["level"]["enum"]
    batch = paths["/api/logs"]["post"]["requestBody"]["content"]
    assert set(batch) == {"application/json", "application/x-ndjson"}
    assert batch["application/json"]["schema"]["type"] == "array"
    assert batch["application/json"]["schema"]["items"]["required"] == ["message"]


# -- live tail across instances ----------------------------------------------------------------


class SseReader:
    """Reads an SSE stream in a thread; collects (event, id, data)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[tuple[str, str | None, str]] = []
        self.connected = threading.Event()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, headers or {}), daemon=True)
        self._thread.start()
        assert self.connected.wait(10), "SSE stream did not connect"

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            self._read(url, headers)
        except httpx.HTTPError:
            if not self.stop.is_set():
                raise

    def _read(self, url: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", url, headers=headers, timeout=None) as response:
            event, event_id, data = "message", None, []
            for line in response.iter_lines():
                if line.startswith(":"):
                    self.connected.set()
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and any(data):
                    self.events.append((event, event_id, "\n".join(data)))
                    event, event_id, data = "message", None, []
                if self.stop.is_set():
                    return

    def entries(self) -> list[LogEntry]:
        return [msgspec.json.decode(d, type=LogEntry) for e, _, d in self.events if e == "message"]

    def wait_for(self, count: int, timeout: float = 10) -> list[LogEntry]:
        deadline = time.monotonic() + timeout
        while len(self.entries()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.entries()

    def close(self) -> None:
        self.stop.set()


def test_sse_across_instances(a: ServiceProcess, b: ServiceProcess) -> None:
    reader = SseReader(b.url + "/api/logs/stream?service=sse1")
    try:
        for i in range(5):
            httpx.post(a.url + "/api/log", json={"message": f"s{i}", "service": "sse1"})
        httpx.post(a.url + "/api/log", json={"message": "other", "service": "not-this"})
        got = reader.wait_for(5)
        assert [e.message for e in got] == [f"s{i}" for i in range(5)]
        assert {e.instance for e in got} == {"api-a"}
        assert [eid for _, eid, _ in reader.events] == [e.id for e in got]
    finally:
        reader.close()


def test_resume_with_last_event_id_has_no_gap_or_duplicate(a: ServiceProcess) -> None:
    reader = SseReader(a.url + "/api/logs/stream?service=resume")
    for i in range(3):
        httpx.post(a.url + "/api/log", json={"message": f"r{i}", "service": "resume"})
    first = reader.wait_for(3)
    reader.close()  # a forced disconnect
    for i in range(3, 8):
        httpx.post(a.url + "/api/log", json={"message": f"r{i}", "service": "resume"})
    resumed = SseReader(
        a.url + "/api/logs/stream?service=resume", headers={"Last-Event-ID": first[-1].id}
    )
    try:
        for i in range(8, 10):
            httpx.post(a.url + "/api/log", json={"message": f"r{i}", "service": "resume"})
        rest = resumed.wait_for(7)
        ids = [e.id for e in first[:3]] + [e.id for e in rest]
        assert [e.message for e in first[:3] + rest] == [f"r{i}" for i in range(10)]
        assert len(set(ids)) == 10
    finally:
        resumed.close()


def subscribers(api: ServiceProcess) -> float:
    text = httpx.get(api.url + "/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith("aygolog_tail_subscribers "))
    return float(line.split()[1])


def test_a_client_that_goes_away_frees_its_subscription_at_once(a: ServiceProcess) -> None:
    """Each open live tail holds a queue and a file descriptor: a client gone must free them
    within a second, not at the next keep-alive write (15 s later). Other tests' streams may
    still be closing meanwhile, so the count is compared with what it was, not with 0."""
    clients = []
    for _ in range(5):
        client = socket.create_connection(("127.0.0.1", a.port))
        client.sendall(b"GET /api/logs/stream HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b"connected" in client.recv(4096) or b"connected" in client.recv(4096)
        clients.append(client)
    with_them = subscribers(a)
    assert with_them >= 5
    started = time.monotonic()
    for client in clients:
        client.close()
    assert wait_until(lambda: subscribers(a) <= with_them - 5, 5)
    assert time.monotonic() - started < 1.5


def test_slow_subscriber_gets_dropped_while_fast_gets_everything(a: ServiceProcess) -> None:
    batches, per_batch = 8, 1000
    text = "y" * 4000  # big entries, so the kernel's socket buffers cannot hide the backlog

    async def run() -> tuple[int, int]:
        fast: list[str] = []
        dropped = 0
        async with httpx.AsyncClient(timeout=None) as client:
            slow_ctx = client.stream("GET", a.url + "/api/logs/stream?service=slowfast")
            slow = await slow_ctx.__aenter__()
            slow_lines = slow.aiter_lines()
            await slow_lines.__anext__()  # connected; then it stops reading for a while

            async def read_fast() -> None:
                url = a.url + "/api/logs/stream?service=slowfast"
                async with client.stream("GET", url) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            fast.append(line)
                            if len(fast) == batches * per_batch:
                                return

            fast_task = asyncio.create_task(read_fast())
            await asyncio.sleep(0.3)
            for chunk in range(batches):
                batch = [{"message": f"{text}{chunk}-{i}", "service": "slowfast"}
                         for i in range(per_batch)]  # fmt: skip
                await client.post(a.url + "/api/logs", json=batch)
                while len(fast) < (chunk + 1) * per_batch and not fast_task.done():  # noqa: ASYNC110  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(fast_task, 30)
            # Now the slow one reads: it must be told how many it missed.
            async for line in slow_lines:
                if line.startswith("event: dropped"):
                    data = await slow_lines.__anext__()
                    dropped = json.loads(data.removeprefix("data:").strip())["count"]
                    break
            with contextlib.suppress(Exception):
                await slow_ctx.__aexit__(None, None, None)
        return len(fast), dropped

    fast, dropped = asyncio.run(run())
    assert fast == batches * per_batch
    assert dropped > 0


# -- bad input: >= 30 cases, each with status, error body, and nothing stored -------------------

BIG = "x" * (64 * 1024 + 1)
BAD_INPUT: list[tuple[str, str, bytes, str, int, str]] = [
    # (path, content type, body, expected status, field or index hint)
    ("/api/log", "application/json", b"{not json", "", 400, "$"),
    ("/api/log", "application/json", b"", "", 400, "$"),
    ("/api/log", "application/json", b"[]", "", 422, "$"),
    ("/api/log", "application/json", b"{}", "", 422, "message"),
    ("/api/log", "application/json", b'{"message": ""}', "", 422, "message"),
    ("/api/log", "application/json", b'{"message": 42}', "", 422, "message"),
    ("/api/log", "application/json", b'{"name": null}', "", 422, "message"),
    ("/api/log", "application/json", b'{"message": "m", "level": "loud"}', "", 422, "level"),
    ("/api/log", "application/json", b'{"message": "m", "level": []}', "", 422, "level"),
    ("/api/log", "application/json", b'{"message": "m", "service": "a b"}', "", 422, "service"),
    ("/api/log", "application/json", b'{"message": "m", "timestamp": "soon"}', "", 422,
     "timestamp"),
    ("/api/log", "application/json", b'{"message": "m", "timestamp": 99999999999999999999999}',
     "", 422, "timestamp"),
    ("/api/log", "application/json", b'{"message": "m", "timestamp": "2999-01-01T00:00:00Z"}',
     "", 422, "timestamp"),
    ("/api/log", "application/json", b'{"message": "m", "attributes": {"a": {"b": 1}}}', "", 422,
     "attributes"),
    ("/api/log", "application/json", b'{"message": "m", "attributes": "a=b"}', "", 422,
     "attributes"),
    ("/api/log", "application/json",
     json.dumps({"message": "m", "attributes": {f"k{i}": 1 for i in range(65)}}).encode(), "",
     422, "attributes"),
    ("/api/log", "application/json",
     json.dumps({"message": "m", "attributes": {"k" * 129: 1}}).encode(), "", 422, "attributes"),
    ("/api/log", "application/json",
     json.dumps({"message": "m", "attributes": {"v": "x" * 4097}}).encode(), "", 422,
     "attributes.v"),
    ("/api/log", "application/json", json.dumps({"message": BIG}).encode(), "", 422, "message"),
    ("/api/log", "application/json", b'{"message": "m", "extra": true}', "", 422, "extra"),
    ("/api/log", "application/json", b'{"message": "m", "trace_id": "bad id!"}', "", 422,
     "trace_id"),
    ("/api/log", "text/plain", b'{"message": "m"}', "", 415, "content-type"),
    ("/api/log", "application/x-www-form-urlencoded", b"name=m", "", 415, "content-type"),
    ("/api/log", "application/json", b"x" * (10 * 1024 * 1024 + 1), "", 413, "$"),
    ("/api/logs", "application/json", b'{"message": "not an array"}', "", 422, "$"),
    ("/api/logs", "application/json", b"[]", "", 422, "$"),
    ("/api/logs", "application/json", b'[{"message": "ok"}, {"message": ""}]', "", 422, "1"),
    ("/api/logs", "application/json", b'[{"message": "ok"}, 5, {"level": "x"}]', "", 422, "1,2"),
    ("/api/logs", "application/json", b'[{"message": "ok"}', "", 400, "$"),
    ("/api/logs", "application/x-ndjson", b'{"message": "ok"}\n{oops}\n', "", 422, "1"),
    ("/api/logs", "application/x-ndjson", b'{"message": "ok"}\n{"message": 1}\n', "", 422, "1"),
    ("/api/logs", "text/csv", b"message\nm\n", "", 415, "content-type"),
    ("/api/logs", "application/json",
     json.dumps([{"message": "m"}] * 10_001).encode(), "", 413, "$"),
    ("/api/logs", "application/json", b'[{"message": "m"}]', "bad key with spaces", 422,
     "idempotency_key"),
    ("/api/log", "application/json", b'{"message": "m"}', "bad key with spaces", 422,
     "idempotency_key"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "ctype", "body", "idem", "status", "where"),
    BAD_INPUT,
    ids=[f"{i}-{c[0]}-{c[4]}" for i, c in enumerate(BAD_INPUT)],
)
def test_bad_input_is_refused_and_nothing_is_stored(
    a: ServiceProcess, path: str, ctype: str, body: bytes, idem: str, status: int, where: str
) -> None:
    before = count(a)
    headers = {"Content-Type": ctype}
    if idem:
        headers["Idempotency-Key"] = idem
    response = httpx.post(a.url + path, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert isinstance(error["error"], str)
    assert error["error"]
    assert error["error"]
    assert "Traceback" not in response.text
    detail = error.get("detail", [])
    if status in (400, 413, 415, 422):
        assert detail, error
        if where.replace(",", "").isdigit():
            assert {str(d.get("index")) for d in detail} == set(where.split(","))
        else:
            assert any(d["field"].startswith(where) for d in detail), detail
    assert count(a) == before


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"level": "loud"}, "level"),
        ({"since": "yesterday-ish"}, "since"),
        ({"since": "999999999999d"}, "since"),
        ({"cursor": "nope"}, "cursor"),
        ({"direction": "sideways"}, "direction"),
        ({"attr": "novalue"}, "attr"),
    ],
)
def test_bad_query_params(a: ServiceProcess, params: dict[str, str], field: str) -> None:
    response = httpx.get(a.url + "/api/logs", params=params)
    assert response.status_code in (400, 422), response.text
    assert any(d["field"] == field for d in response.json()["detail"]), response.text


def test_unknown_route_and_method(a: ServiceProcess) -> None:
    missing = httpx.get(a.url + "/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]
    wrong = httpx.delete(a.url + "/api/log")
    assert wrong.status_code == 405
    assert wrong.json()["error"]


# -- Redis stopped and restarted -----------------------------------------------------------------


def test_redis_down_gives_503_then_recovers(module_redis: EmbeddedRedis, a: ServiceProcess) -> None:
    module_redis.kill()
    try:
        write = httpx.post(a.url + "/api/log", json={"message": "while down"})
        assert write.status_code == 503
        assert int(write.headers["Retry-After"]) >= 1
        assert write.json()["error"]
        read = httpx.get(a.url + "/api/logs")
        assert read.status_code == 503
        assert "Retry-After" in read.headers
        assert httpx.get(a.url + "/health/ready").status_code == 503
        assert httpx.get(a.url + "/health").status_code == 200
    finally:
        module_redis.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        response = httpx.post(a.url + "/api/log", json={"message": "back again"})
        if response.status_code == 201:
            break
        time.sleep(0.1)
    assert response.status_code == 201
    assert httpx.get(a.url + "/api/log").json()[0]["name"] == "back again"


@pytest.mark.parametrize("whole_group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_with_a_live_stream_open_stops_gracefully_and_ends_it(
    module_redis: EmbeddedRedis, whole_group: bool
) -> None:
    """An open SSE stream must not hold the shutdown until granian kills the worker (5 s)."""
    api = ServiceProcess("api", env=api_env(module_redis.url, "drain", "api-drain")).start()
    lines: list[str] = []
    ended = threading.Event()

    def follow() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("GET", api.url + "/api/logs/stream", timeout=10) as response,
        ):
            for line in response.iter_lines():
                lines.append(line)  # noqa: PERF402 - read while it streams
        ended.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 5
        while ": connected" not in lines and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ": connected" in lines
        assert api.process is not None
        started = time.monotonic()
        if whole_group:  # as `aygolog up` and a terminal's Ctrl-C do
            os.killpg(api.process.pid, signal.SIGTERM)
        else:  # as `docker stop` does: PID 1 only
            api.process.send_signal(signal.SIGTERM)
        code = api.process.wait(10)
        took = time.monotonic() - started
        assert ended.wait(2), "the stream did not end"
        assert code == 0, api.output()
        assert took < 2.5, f"took {took:.2f} s"
        assert "refused to gracefully stop" not in api.output()
        assert "draining" in api.output()
    finally:
        api.close()
