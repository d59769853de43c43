"""The SDK's HTTP behaviour against mocked responses (respx): retries, errors, batches, tails."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import msgspec
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st

from aygolog.client import AsyncLogClient, LogClient, RetryPolicy, TailDropped
from aygolog.client._base import (
    Attempts,
    RequestSpec,
    parse_retry_after,
    prepare_batches,
    to_new_log,
)
from aygolog.client._sse import SSEParser
from aygolog.errors import (
    AuthError,
    AygologError,
    Conflict,
    MalformedInput,
    NotFound,
    RateLimited,
    Unavailable,
    ValidationError,
)
from aygolog.models import FieldError, LogLevel, NewLog

URL = "http://lb.test"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def entry(i: int | str, message: str | None = None, **extra: Any) -> dict[str, Any]:
    """A stored entry as the server returns it."""
    eid = f"{i}-0" if isinstance(i, int) else i
    return {
        "id": eid,
        "message": message or f"m{eid}",
        "level": "info",
        "timestamp": NOW.isoformat(),
        "received_at": NOW.isoformat(),
        "instance": "api-1",
        **extra,
    }


def batch_result(n: int, *, replayed: bool = False) -> dict[str, Any]:
    return {"ids": [f"{i}-0" for i in range(n)], "instance": "api-1", "replayed": replayed}


def error(status: int, text: str = "nope", **headers: str) -> httpx.Response:
    body: dict[str, Any] = {"error": text}
    return httpx.Response(status, json=body, headers=headers)


class Sleeps(list[float]):
    """Records the client's sleeps instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class AsyncSleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
def client(sleeps: Sleeps) -> Iterator[LogClient]:
    policy = RetryPolicy(retries=3, backoff_base=0.1, backoff_max=1.0)
    with LogClient(URL, retries=policy, sleep=sleeps, rng=random.Random(7)) as c:
        yield c


def sequence(*responses: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    """A side effect answering each call with the next item (an exception is raised)."""
    items = list(responses)

    def answer(request: httpx.Request) -> httpx.Response:
        item = items.pop(0) if len(items) > 1 else items[0]
        if isinstance(item, Exception):
            raise item
        return item

    return answer


# -- retry and no-retry rules ----------------------------------------------------------------

ALWAYS_RETRIED: list[httpx.Response | Exception] = [
    httpx.ConnectError("refused"),
    httpx.ConnectTimeout("slow connect"),
    httpx.PoolTimeout("pool"),
    error(503, "redis down", **{"Retry-After": "1"}),
    error(429, "slow down", **{"Retry-After": "1"}),
]
RETRIED_WHEN_IDEMPOTENT: list[httpx.Response | Exception] = [
    error(502, "bad gateway"),
    error(504, "gateway timeout"),
    httpx.ReadTimeout("slow answer"),
    httpx.ReadError("reset"),
    httpx.RemoteProtocolError("closed mid-answer"),
    httpx.WriteError("broken pipe"),
]


def ids(items: list[httpx.Response | Exception]) -> list[str]:
    return [i.__class__.__name__ if isinstance(i, Exception) else str(i.status_code) for i in items]


@pytest.mark.parametrize("failure", ALWAYS_RETRIED, ids=ids(ALWAYS_RETRIED))
def test_single_log_retried_when_surely_not_processed(
    mock: respx.MockRouter, client: LogClient, sleeps: Sleeps, failure: httpx.Response | Exception
) -> None:
    route = mock.post("/api/log").mock(
        side_effect=sequence(failure, failure, httpx.Response(201, json=entry(1, "hi")))
    )
    stored = client.log("hi")
    assert stored.message == "hi"
    assert route.call_count == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("failure", RETRIED_WHEN_IDEMPOTENT, ids=ids(RETRIED_WHEN_IDEMPOTENT))
def test_single_log_retried_with_the_same_key_when_it_may_have_been_stored(
    mock: respx.MockRouter, client: LogClient, sleeps: Sleeps, failure: httpx.Response | Exception
) -> None:
    route = mock.post("/api/log").mock(
        side_effect=sequence(failure, httpx.Response(200, json=entry(1)))
    )
    assert client.log("maybe stored").id == entry(1)["id"]
    assert route.call_count == 2
    keys = {call.request.headers["Idempotency-Key"] for call in route.calls}
    assert len(keys) == 1
    assert len(sleeps) == 1
    client.log("another")
    assert route.calls[-1].request.headers["Idempotency-Key"] not in keys


def test_a_request_without_a_key_is_not_retried_when_it_may_have_been_processed() -> None:
    post = RequestSpec("POST", "/api/log")
    for status in (502, 504):
        assert Attempts(RetryPolicy(), post, random.Random(0)).on_response(status, {}, b"") is None


@pytest.mark.parametrize(
    "failure",
    ALWAYS_RETRIED + RETRIED_WHEN_IDEMPOTENT,
    ids=ids(ALWAYS_RETRIED + RETRIED_WHEN_IDEMPOTENT),
)
def test_gets_and_keyed_batches_are_retried(
    mock: respx.MockRouter, client: LogClient, failure: httpx.Response | Exception
) -> None:
    get = mock.get("/api/logs").mock(
        side_effect=sequence(failure, httpx.Response(200, json={"items": []}))
    )
    post = mock.post("/api/logs").mock(
        side_effect=sequence(failure, httpx.Response(201, json=batch_result(2)))
    )
    assert client.query().items == []
    assert client.log_many(["a", "b"])[0].count == 2
    assert get.call_count == 2
    assert post.call_count == 2


NEVER_RETRIED = [
    (400, MalformedInput),
    (401, AuthError),
    (403, AuthError),
    (404, NotFound),
    (409, Conflict),
    (413, ValidationError),
    (415, ValidationError),
    (422, ValidationError),
    (500, AygologError),
    (501, AygologError),
]


@pytest.mark.parametrize(("status", "kind"), NEVER_RETRIED, ids=[str(s) for s, _ in NEVER_RETRIED])
def test_other_errors_are_never_retried(
    mock: respx.MockRouter,
    client: LogClient,
    sleeps: Sleeps,
    status: int,
    kind: type[AygologError],
) -> None:
    route = mock.post("/api/logs").mock(return_value=error(status, "refused"))
    with pytest.raises(kind) as caught:
        client.log_many(["x"])
    assert type(caught.value) is kind
    assert f"HTTP {status}" in str(caught.value)
    assert route.call_count == 1
    assert sleeps == []


def test_validation_error_carries_the_servers_field_errors(
    mock: respx.MockRouter, client: LogClient
) -> None:
    detail = [
        {"field": "level", "index": 1, "reason": "unknown level 'loud'"},
        {"field": "message", "index": 3, "reason": "must not be empty"},
    ]
    mock.post("/api/logs").mock(
        return_value=httpx.Response(422, json={"error": "invalid input", "detail": detail})
    )
    with pytest.raises(ValidationError) as caught:
        client.log_many(["a", "b", "c", "d"])
    assert caught.value.errors == [
        FieldError(field="level", index=1, reason="unknown level 'loud'"),
        FieldError(field="message", index=3, reason="must not be empty"),
    ]


def test_validation_indexes_count_from_the_start_of_log_many(
    mock: respx.MockRouter, sleeps: Sleeps
) -> None:
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(201, json=batch_result(3))
        detail = [{"field": "message", "index": 1, "reason": "bad"}]
        return httpx.Response(422, json={"error": "invalid input", "detail": detail})

    mock.post("/api/logs").mock(side_effect=answer)
    client = LogClient(URL, max_batch_items=3, sleep=sleeps)
    with client, pytest.raises(ValidationError) as caught:
        client.log_many([f"m{i}" for i in range(6)])
    assert caught.value.errors[0].index == 4
    notes = caught.value.__notes__
    assert any("1 earlier batch(es) with 3 entries were stored" in n for n in notes)


def test_retries_exhausted_raise_with_retry_after(
    mock: respx.MockRouter, client: LogClient, sleeps: Sleeps
) -> None:
    route = mock.get("/api/logs/stats").mock(
        return_value=error(503, "redis", **{"Retry-After": "2"})
    )
    with pytest.raises(Unavailable) as caught:
        client.stats()
    assert caught.value.retry_after == 2
    assert route.call_count == 4  # 1 + 3 retries
    assert len(sleeps) == 3
    rate = mock.get("/api/logs").mock(return_value=error(429, "slow", **{"Retry-After": "1"}))
    with pytest.raises(RateLimited) as limited:
        client.query()
    assert limited.value.retry_after == 1
    assert rate.call_count == 4


def test_connection_failure_after_retries_is_unavailable(
    mock: respx.MockRouter, client: LogClient
) -> None:
    mock.post("/api/log").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(Unavailable, match="ConnectError"):
        client.log("x")


def test_retries_zero_means_one_attempt(mock: respx.MockRouter, sleeps: Sleeps) -> None:
    route = mock.get("/api/logs").mock(return_value=error(503))
    with LogClient(URL, retries=0, sleep=sleeps) as client, pytest.raises(Unavailable):
        client.query()
    assert route.call_count == 1


# -- Retry-After and jitter --------------------------------------------------------------------


class Extreme(random.Random):
    """A random source that always returns the top (or the bottom) of the range."""

    def __init__(self, top: bool) -> None:
        super().__init__(0)
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


@pytest.mark.parametrize("top", [True, False])
def test_full_jitter_bounds_double_up_to_the_cap(mock: respx.MockRouter, top: bool) -> None:
    mock.get("/api/logs").mock(return_value=error(502))
    sleeps = Sleeps()
    policy = RetryPolicy(retries=6, backoff_base=0.25, backoff_max=2.0)
    client = LogClient(URL, retries=policy, sleep=sleeps, rng=Extreme(top))
    with client, pytest.raises(Unavailable):
        client.query()
    expected = [0.25, 0.5, 1.0, 2.0, 2.0, 2.0] if top else [0.0] * 6
    assert sleeps == expected


@given(
    retry=st.integers(0, 80),
    retry_after=st.none() | st.floats(0, 100),
    base=st.floats(0, 5),
    cap=st.floats(0, 30),
    seed=st.integers(0, 2**32),
)
def test_delay_is_retry_after_plus_full_jitter(
    retry: int, retry_after: float | None, base: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(backoff_base=base, backoff_max=cap)
    delay = policy.delay(retry, retry_after, random.Random(seed))
    floor = retry_after or 0.0
    assert floor <= delay <= floor + min(cap, base * 2.0**retry) + 1e-9


def test_jitter_is_spread_not_constant() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=1.0)
    rng = random.Random(1)
    delays = [policy.delay(0, None, rng) for _ in range(200)]
    assert min(delays) < 0.1
    assert max(delays) > 0.9


def test_retry_after_is_honoured_as_a_floor(mock: respx.MockRouter) -> None:
    mock.post("/api/log").mock(
        side_effect=sequence(
            error(503, "down", **{"Retry-After": "3"}),
            error(429, "slow", **{"Retry-After": "1.5"}),
            httpx.Response(201, json=entry(1)),
        )
    )
    sleeps = Sleeps()
    policy = RetryPolicy(retries=3, backoff_base=0.5, backoff_max=8)
    with LogClient(URL, retries=policy, sleep=sleeps, rng=Extreme(True)) as client:
        client.log("x")
    assert sleeps == [3 + 0.5, 1.5 + 1.0]


def test_retry_after_beyond_the_limit_is_not_waited_out(
    mock: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = mock.get("/api/logs").mock(
        return_value=error(503, "maintenance", **{"Retry-After": "600"})
    )
    client = LogClient(URL, retries=RetryPolicy(max_retry_after=60), sleep=sleeps)
    with client, pytest.raises(Unavailable) as caught:
        client.query()
    assert caught.value.retry_after == 600
    assert route.call_count == 1
    assert sleeps == []


def test_retry_after_forms() -> None:
    now = NOW.timestamp()
    date = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": "7"}) == 7
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30)
    assert parse_retry_after({"retry-after": "-3"}) == 0
    assert parse_retry_after({}, b'{"error": "x", "retry_after": 2.5}') == 2.5
    assert parse_retry_after({"retry-after": "soon"}, b"not json") is None
    assert parse_retry_after({}) is None


def test_attempts_decisions_without_io() -> None:
    post = RequestSpec("POST", "/api/log")
    attempts = Attempts(RetryPolicy(retries=2), post, random.Random(0))
    assert attempts.on_response(201, {}, b"") is None
    assert attempts.on_response(502, {}, b"") is None  # may have been stored
    assert attempts.on_response(503, {}, b"") is not None
    assert attempts.on_response(503, {}, b"") is not None
    assert attempts.on_response(503, {}, b"") is None  # retries used up
    with pytest.raises(Unavailable):
        Attempts(RetryPolicy(), post, random.Random(0)).on_error(httpx.ReadTimeout("t"), URL)
    for exc in (httpx.UnsupportedProtocol("ftp"), httpx.DecodingError("bad gzip")):
        with pytest.raises(AygologError) as caught:
            Attempts(RetryPolicy(), post, random.Random(0)).on_error(exc, URL)
        assert type(caught.value) is AygologError


# -- idempotency keys and batching ---------------------------------------------------------


def test_a_batch_keeps_its_idempotency_key_across_retries(
    mock: respx.MockRouter, client: LogClient
) -> None:
    route = mock.post("/api/logs").mock(
        side_effect=sequence(
            error(503),
            httpx.ReadTimeout("lost answer"),
            error(502),
            httpx.Response(200, json=batch_result(3, replayed=True)),
        )
    )
    results = client.log_many(["a", "b", "c"])
    assert results[0].replayed is True
    keys = [call.request.headers["Idempotency-Key"] for call in route.calls]
    assert len(keys) == 4
    assert len(set(keys)) == 1
    bodies = {call.request.content for call in route.calls}
    assert len(bodies) == 1  # the same bytes each time, so the server's digest matches


def test_each_batch_has_its_own_key_and_a_callers_key_is_suffixed(
    mock: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = mock.post("/api/logs").mock(side_effect=lambda r: httpx.Response(
        201, json=batch_result(len(json.loads(r.content)))
    ))  # fmt: skip
    with LogClient(URL, max_batch_items=4, sleep=sleeps) as client:
        assert [r.count for r in client.log_many([f"m{i}" for i in range(10)])] == [4, 4, 2]
        fresh = [c.request.headers["Idempotency-Key"] for c in route.calls]
        assert len(set(fresh)) == 3
        route.reset()
        client.log_many([f"m{i}" for i in range(10)], idempotency_key="import-42")
        keys = [c.request.headers["Idempotency-Key"] for c in route.calls]
        assert keys == ["import-42-0", "import-42-1", "import-42-2"]
        with pytest.raises(ValidationError):
            client.log_many(["x"], idempotency_key="has space")


def test_batches_split_by_bytes_and_keep_order() -> None:
    items = [msgspec.json.encode(NewLog(message="x" * n)) for n in (10, 500, 100, 10, 900, 5)]
    batches = list(prepare_batches(items, key="k", max_items=100, max_bytes=600))
    assert [b.idempotency_key for b in batches] == ["k-0", "k-1", "k-2", "k-3"]
    assert all(len(b.body) <= 600 for b in batches if b.count > 1)
    assert [i for b in batches for i in b.items] == items  # nothing lost, order kept
    assert [b.count for b in batches] == [2, 2, 1, 1]  # the 900-byte entry alone
    assert json.loads(batches[0].body)[1]["message"] == "x" * 500


@given(sizes=st.lists(st.integers(1, 300), max_size=60), max_items=st.integers(1, 10))
def test_batches_respect_both_limits(sizes: list[int], max_items: int) -> None:
    items = [b"x" * n for n in sizes]
    batches = list(prepare_batches(items, key="k", max_items=max_items, max_bytes=1000))
    assert [i for b in batches for i in b.items] == items
    for b in batches:
        assert 1 <= b.count <= max_items
        assert len(b.body) <= 1000 or b.count == 1


def test_log_many_accepts_newlogs_mappings_and_strings(
    mock: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = mock.post("/api/logs").mock(return_value=httpx.Response(201, json=batch_result(3)))
    with LogClient(URL, service="svc", sleep=sleeps) as client:
        client.log_many([
            NewLog(message="a", level=LogLevel.ERROR),
            {"message": "b", "level": "warn", "attributes": {"k": [1]}, "timestamp": 1_700_000_000},
            "c",
        ])  # fmt: skip
        with pytest.raises(ValidationError, match="colour"):
            client.log_many([{"message": "x", "colour": "red"}])
    sent = json.loads(route.calls[0].request.content)
    assert sent[0] == {"message": "a", "level": "error", "service": "svc"}
    assert sent[1]["level"] == "warning"
    assert sent[1]["attributes"] == {"k": "[1]"}
    assert sent[1]["timestamp"].startswith("2023-11-14T22:13:20")
    assert sent[2] == {"message": "c", "service": "svc"}


def test_log_builds_the_entry(mock: respx.MockRouter, sleeps: Sleeps) -> None:
    route = mock.post("/api/log").mock(return_value=httpx.Response(201, json=entry(1)))
    with LogClient(URL, api_key="k3y", sleep=sleeps) as client:
        client.log(
            "paid", "warn", "shop", trace_id="abc", order=42, ok=True, price=9.5, none=None,
            tags=["a"], attributes={"region": "eu"},
        )  # fmt: skip
        with pytest.raises(ValidationError, match="level"):
            client.log("x", level="loud")
    request = route.calls[0].request
    assert request.headers["Authorization"] == "Bearer k3y"
    assert json.loads(request.content) == {
        "message": "paid",
        "level": "warning",
        "service": "shop",
        "attributes": {"region": "eu", "order": 42, "ok": True, "price": 9.5, "tags": "['a']"},
        "trace_id": "abc",
    }


# -- queries ---------------------------------------------------------------------------------


def test_query_parameters(mock: respx.MockRouter, client: LogClient) -> None:
    route = mock.get("/api/logs").mock(return_value=httpx.Response(200, json={"items": []}))
    client.query(
        level=["error", "crit"], service="a,b", text="timeout", since=NOW,
        attributes={"code": 504, "ok": False}, limit=50, direction="forward",
    )  # fmt: skip
    params = route.calls[0].request.url.params
    assert params["level"] == "critical,error"
    assert params.get_list("service") == ["a", "b"]
    assert params["q"] == "timeout"
    assert params["since"] == NOW.isoformat()
    assert params.get_list("attr") == ["code:504", "ok:false"]
    assert params["limit"] == "50"
    assert params["direction"] == "forward"
    with pytest.raises(ValidationError) as caught:
        client.query(min_level="loud", since="yesterday-ish")
    assert {e.field for e in caught.value.errors} == {"min_level", "since"}


def test_iter_logs_follows_cursors(mock: respx.MockRouter, client: LogClient) -> None:
    pages = {
        None: {"items": [entry(5), entry(4)], "next_cursor": "4-0"},
        "4-0": {"items": [entry(3), entry(2)], "next_cursor": "2-0"},
        "2-0": {"items": [entry(1)], "next_cursor": None},
    }
    route = mock.get("/api/logs").mock(
        side_effect=lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")])
    )
    assert [e.id for e in client.iter_logs(limit=2)] == ["5-0", "4-0", "3-0", "2-0", "1-0"]
    assert all(c.request.url.params["limit"] == "2" for c in route.calls)
    assert [e.id for e in client.iter_logs(limit=2, max_items=3)] == ["5-0", "4-0", "3-0"]


def test_services_stats_health(mock: respx.MockRouter, client: LogClient) -> None:
    at = NOW.isoformat()
    mock.get("/api/registration/services").mock(return_value=httpx.Response(200, json=[
        {"name": "api-1", "url": "http://a:1", "registered_at": at, "last_heartbeat": at,
         "status": "healthy", "in_flight": 3, "served": 10, "health_check": "passing"},
        {"name": "api-2", "url": "http://b:1", "status": "unhealthy", "weight": 2},
    ]))  # fmt: skip
    mock.get("/api/logs/stats").mock(return_value=httpx.Response(200, json={
        "total": 3, "retained": 3, "by_level": {"info": 3}, "by_service": {}, "by_instance": {},
    }))  # fmt: skip
    health = mock.get("/health").mock(return_value=error(503))
    first, second = client.services()
    assert (first.name, first.status, first.in_flight, first.served) == ("api-1", "healthy", 3, 10)
    assert first.last_heartbeat == NOW
    assert (second.name, second.status, second.weight) == ("api-2", "unhealthy", 2)
    assert client.stats().total == 3
    with pytest.raises(Unavailable):
        client.health()
    assert health.call_count == 1  # a health check reports, it does not retry


def test_unexpected_success_body_is_an_error(mock: respx.MockRouter, client: LogClient) -> None:
    mock.get("/api/logs").mock(return_value=httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(AygologError, match="unexpected answer"):
        client.query()


def test_non_json_error_body(mock: respx.MockRouter, client: LogClient) -> None:
    mock.get("/api/logs/stats").mock(return_value=httpx.Response(401, text="go away"))
    with pytest.raises(AuthError, match="go away"):
        client.stats()


# -- live tail -------------------------------------------------------------------------------


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that yields `chunks`, then fails (`end` is raised) or just ends."""

    def __init__(self, chunks: list[bytes], end: Exception | None = None) -> None:
        self.chunks = chunks
        self.end = end

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.end is not None:
            raise self.end

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.end is not None:
            raise self.end


def sse(*events: tuple[str, str | None, str] | str) -> list[bytes]:
    """SSE bytes: (event, id, data) tuples, or raw strings."""
    out = [b": connected\nretry: 2000\n\n"]
    for ev in events:
        if isinstance(ev, str):
            out.append(ev.encode())
            continue
        kind, eid, data = ev
        text = (f"event: {kind}\n" if kind != "message" else "") + (f"id: {eid}\n" if eid else "")
        out.append((text + f"data: {data}\n\n").encode())
    return out


def msg(i: int) -> tuple[str, str, str]:
    return ("message", f"{i}-0", json.dumps(entry(i)))


def stream_response(chunks: list[bytes], end: Exception | None = None) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Chunks(chunks, end)
    )


def test_tail_reconnects_with_last_event_id_without_gap_or_duplicate(
    mock: respx.MockRouter, client: LogClient, sleeps: Sleeps
) -> None:
    seen_headers: list[str | None] = []
    answers = [
        stream_response(sse(msg(1), msg(2), 'id: 3-0\ndata: {"half'), httpx.ReadError("reset")),
        error(503, "no instance", **{"Retry-After": "1"}),
        stream_response(sse(msg(2), msg(3), msg(4))),  # 2 again: a replay must not show twice
        stream_response(sse(msg(5))),
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        seen_headers.append(request.headers.get("Last-Event-ID"))
        return answers.pop(0)

    route = mock.get("/api/logs/stream").mock(side_effect=answer)
    got = []
    with client.tail(service="checkout", level="error") as tail:
        for item in tail:
            got.append(item.id)
            if len(got) == 5:
                break
    assert got == ["1-0", "2-0", "3-0", "4-0", "5-0"]
    assert seen_headers == [None, "2-0", "2-0", "4-0"]  # the half event's id was not taken
    assert tail.reconnects == 3
    assert sleeps[1] >= 1  # Retry-After honoured
    assert route.calls[0].request.url.params["service"] == "checkout"
    assert route.calls[0].request.headers["Accept"] == "text/event-stream"


def test_tail_dropped_event_is_reported_and_recovered(
    mock: respx.MockRouter, client: LogClient, sleeps: Sleeps
) -> None:
    headers: list[str | None] = []
    answers = [
        stream_response(sse(msg(1), ("dropped", None, '{"count": 7}'), msg(9))),
        stream_response(sse(msg(2), msg(3))),
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("Last-Event-ID"))
        return answers.pop(0)

    mock.get("/api/logs/stream").mock(side_effect=answer)
    notices: list[TailDropped] = []
    with client.tail(on_dropped=notices.append) as tail:
        got = [next(tail).id for _ in range(3)]
    assert got == ["1-0", "2-0", "3-0"]
    assert notices == [TailDropped(count=7, after="1-0", recovering=True)]
    assert tail.dropped == 7
    assert headers == [None, "1-0"]
    assert sleeps == []  # recovery reconnects at once


def test_tail_without_recovery_keeps_going(mock: respx.MockRouter, client: LogClient) -> None:
    mock.get("/api/logs/stream").mock(
        return_value=stream_response(sse(msg(1), ("dropped", None, '{"count": 2}'), msg(9)))
    )
    notices: list[TailDropped] = []
    with client.tail(on_dropped=notices.append, recover_dropped=False) as tail:
        assert [next(tail).id, next(tail).id] == ["1-0", "9-0"]
    assert notices == [TailDropped(count=2, after="1-0", recovering=False)]


def test_tail_gives_up_on_client_errors_and_after_max_reconnects(
    mock: respx.MockRouter, client: LogClient
) -> None:
    mock.get("/api/logs/stream").mock(return_value=error(401, "bad key"))
    with client.tail() as tail, pytest.raises(AuthError):
        next(tail)
    mock.get("/api/logs/stream").mock(side_effect=httpx.ConnectError("refused"))
    with client.tail(max_reconnects=2) as tail, pytest.raises(Unavailable):
        next(tail)
    assert tail.reconnects == 2


def test_tail_resumes_from_a_given_id(mock: respx.MockRouter, client: LogClient) -> None:
    route = mock.get("/api/logs/stream").mock(return_value=stream_response(sse(msg(8))))
    with client.tail(last_event_id="7-0") as tail:
        assert next(tail).id == "8-0"
    assert route.calls[0].request.headers["Last-Event-ID"] == "7-0"


def test_sse_parser_rules() -> None:
    parser = SSEParser()
    lines = [
        ": comment", "retry: 1500", "", "event: note", "data: a", "data:b", "data", "id: 9",
        "ignored-field: x", "", "id: bad\0id", "data: c", "", "id:", "", "data: d", "",
    ]  # fmt: skip
    events = [e for line in lines if (e := parser.feed(line)) is not None]
    assert [(e.event, e.id, e.data) for e in events] == [
        ("note", "9", "a\nb\n"),
        ("message", "9", "c"),  # an id with NUL is ignored
        ("message", None, "d"),  # an empty id resets it
    ]
    assert parser.retry == 1500
    assert parser.comments == 1


# -- client-side balancing ----------------------------------------------------------------------


def services_body(*names: str, status: str = "healthy") -> list[dict[str, Any]]:
    at = NOW.isoformat()
    return [
        {"name": n, "url": f"http://{n}.test", "status": status, "registered_at": at,
         "last_heartbeat": at}
        for n in names
    ]  # fmt: skip


def test_client_balancing_sends_to_healthy_instances_and_falls_back(sleeps: Sleeps) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{URL}/api/registration/services").mock(
            return_value=httpx.Response(
                200, json=services_body("a", "b") + services_body("c", status="ejected")
            )
        )
        hits = {name: mock.get(f"http://{name}.test/api/logs").mock(
            return_value=httpx.Response(200, json={"items": []})) for name in "abc"}  # fmt: skip
        lb = mock.get(f"{URL}/api/logs").mock(return_value=httpx.Response(200, json={"items": []}))
        with LogClient(URL, balance="client", strategy="round_robin", sleep=sleeps) as client:
            for _ in range(6):
                client.query()
            assert (hits["a"].call_count, hits["b"].call_count, hits["c"].call_count) == (3, 3, 0)
            assert lb.call_count == 0
            # An instance fails: the retry goes to the LB, and it is skipped until the refresh.
            hits["a"].mock(side_effect=httpx.ConnectError("gone"))
            client.query()
            client.query()
            assert lb.call_count >= 1
            assert hits["a"].call_count == 4
            assert hits["b"].call_count >= 4


def test_client_balancing_uses_the_lb_when_the_list_is_unavailable(sleeps: Sleeps) -> None:
    with respx.mock(assert_all_called=False) as mock:
        services = mock.get(f"{URL}/api/registration/services").mock(
            side_effect=httpx.ConnectError("down")
        )
        lb = mock.get(f"{URL}/api/logs").mock(return_value=httpx.Response(200, json={"items": []}))
        with LogClient(URL, balance="client", refresh_interval=60, sleep=sleeps) as client:
            client.query()
            client.query()
        assert lb.call_count == 2
        assert services.call_count == 1  # not retried on every request


# -- the async twin --------------------------------------------------------------------------


async def test_async_client_retries_with_the_same_key_and_tails() -> None:
    sleeps = AsyncSleeps()
    with respx.mock(base_url=URL, assert_all_called=False) as mock:
        post = mock.post("/api/logs").mock(
            side_effect=sequence(
                httpx.ConnectError("refused"), error(503), httpx.Response(201, json=batch_result(2))
            )
        )
        single = mock.post("/api/log").mock(
            side_effect=sequence(error(502), httpx.Response(201, json=entry(1)))
        )
        headers: list[str | None] = []
        answers = [
            stream_response(sse(msg(1)), httpx.RemoteProtocolError("cut")),
            stream_response(sse(msg(1), msg(2))),
        ]

        def answer(request: httpx.Request) -> httpx.Response:
            headers.append(request.headers.get("Last-Event-ID"))
            return answers.pop(0)

        mock.get("/api/logs/stream").mock(side_effect=answer)
        mock.get("/api/logs").mock(side_effect=lambda r: httpx.Response(200, json=(
            {"items": [entry(2)], "next_cursor": "2-0"} if "cursor" not in r.url.params
            else {"items": [entry(1)]})))  # fmt: skip
        async with AsyncLogClient(URL, sleep=sleeps, rng=random.Random(3)) as client:
            results = await client.log_many(["a", "b"])
            assert results[0].count == 2
            keys = {c.request.headers["Idempotency-Key"] for c in post.calls}
            assert post.call_count == 3
            assert len(keys) == 1
            assert len(sleeps) == 2
            assert (await client.log("retried after a 502, same key")).id == "1-0"
            assert single.call_count == 2
            assert len({c.request.headers["Idempotency-Key"] for c in single.calls}) == 1
            assert [e.id async for e in client.iter_logs()] == ["2-0", "1-0"]
            async with client.tail() as tail:
                got = [(await anext(tail)).id, (await anext(tail)).id]
            assert got == ["1-0", "2-0"]
            assert headers == [None, "1-0"]
            assert tail.reconnects == 1


def test_tail_handles_crlf_and_arbitrary_chunking(
    mock: respx.MockRouter, client: LogClient
) -> None:
    whole = b"".join(sse(msg(1), msg(2), ("dropped", None, '{"count": 0}'), msg(3)))
    crlf = whole.replace(b"\n", b"\r\n")
    chunks = [crlf[i : i + 3] for i in range(0, len(crlf), 3)]
    mock.get("/api/logs/stream").mock(return_value=stream_response(chunks))
    with client.tail(recover_dropped=False) as tail:
        assert [next(tail).id for _ in range(3)] == ["1-0", "2-0", "3-0"]


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"message": "x", "attributes": "s"}, "attributes"),
        ({"message": "x", "timestamp": {"a": 1}}, "timestamp"),
        ({"message": "x", "level": [1]}, "level"),
        ({"message": "x", "service": 5}, "service"),
        ({"message": 3}, "message"),
    ],
)
def test_items_of_the_wrong_type_are_validation_errors(item: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        to_new_log(item)
    assert [e.field for e in caught.value.errors] == [field]


@pytest.mark.parametrize("url", ["http://[::1", "http://", "ftp://host", "http://host:port"])
def test_a_bad_base_url_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        LogClient(url)
