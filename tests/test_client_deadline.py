"""The SDK's default retrying is deadline-based (respx, a fake clock that the sleeps advance).

Issue 15 item 10: three retries from 0.2 s gave up during a ~2 s restart of the load balancer.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import httpx
import pytest
import respx

from aygolog.client import AsyncLogClient, LogClient, RetryPolicy
from aygolog.client._base import DEFAULT_RETRY, Attempts, RequestSpec
from aygolog.errors import Unavailable

URL = "http://lb.test"


class Clock:
    """A monotonic clock that only the client's sleeps move."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def batch_result(n: int) -> dict[str, object]:
    return {"ids": [f"{i}-0" for i in range(n)], "instance": "api-1", "replayed": False}


def down_until(
    clock: Clock, up_at: float, answer: httpx.Response
) -> Callable[[httpx.Request], httpx.Response]:
    """Connection refused until `up_at` seconds after the start, then `answer`."""
    start = clock.now

    def respond(request: httpx.Request) -> httpx.Response:
        if clock.now - start < up_at:
            raise httpx.ConnectError("connection refused")
        return answer

    return respond


def test_the_default_outlasts_a_two_second_restart_with_one_key() -> None:
    clock = Clock()
    with respx.mock(base_url=URL) as mock:
        route = mock.post("/api/logs").mock(
            side_effect=down_until(clock, 2.0, httpx.Response(201, json=batch_result(3)))
        )
        with LogClient(URL, sleep=clock.sleep, clock=clock, rng=random.Random(5)) as client:
            results = client.log_many(["a", "b", "c"])
    assert [r.count for r in results] == [3]
    assert sum(clock.sleeps) >= 2.0
    assert route.call_count == len(clock.sleeps) + 1
    assert len({c.request.headers["Idempotency-Key"] for c in route.calls}) == 1


def test_the_default_keeps_trying_until_30_seconds_then_says_so() -> None:
    clock = Clock()
    with respx.mock(base_url=URL) as mock:
        route = mock.post("/api/log").mock(side_effect=httpx.ConnectError("refused"))
        with (
            LogClient(URL, sleep=clock.sleep, clock=clock, rng=random.Random(1)) as client,
            pytest.raises(Unavailable) as caught,
        ):
            client.log("x")
    assert sum(clock.sleeps) == pytest.approx(30.0)  # the last wait ends at the deadline
    assert max(clock.sleeps) <= 5.0  # capped backoff
    assert route.call_count == len(clock.sleeps) + 1 >= 10
    assert any(f"{len(clock.sleeps)} retries over 30.0 s" in n for n in caught.value.__notes__)


def test_backoff_windows_double_from_the_base_up_to_the_cap() -> None:
    assert RetryPolicy() == DEFAULT_RETRY
    assert (DEFAULT_RETRY.retries, DEFAULT_RETRY.deadline) == (None, 30.0)
    windows = [DEFAULT_RETRY.window(n) for n in range(8)]
    assert windows == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_a_retry_after_that_ends_past_the_deadline_is_not_waited_out() -> None:
    clock = Clock()
    answers = iter([httpx.ConnectError("refused")] * 100)

    def respond(request: httpx.Request) -> httpx.Response:
        if clock.now - 1000.0 < 20:
            raise next(answers)
        return httpx.Response(503, json={"error": "redis down"}, headers={"Retry-After": "15"})

    with respx.mock(base_url=URL) as mock:
        route = mock.get("/api/logs/stats").mock(side_effect=respond)
        with (
            LogClient(URL, sleep=clock.sleep, clock=clock, rng=random.Random(2)) as client,
            pytest.raises(Unavailable) as caught,
        ):
            client.stats()
    assert caught.value.retry_after == 15
    assert 20 <= clock.now - 1000.0 < 30  # raised at once: 15 s more would pass the deadline
    assert route.calls[-1].response is not None
    assert route.calls[-1].response.status_code == 503


def test_a_count_caps_retries_within_the_deadline_and_an_int_still_works() -> None:
    for retries in (3, RetryPolicy(retries=3)):
        clock = Clock()
        with respx.mock(base_url=URL) as mock:
            route = mock.get("/api/logs/stats").mock(return_value=httpx.Response(503, json={}))
            client = LogClient(URL, retries=retries, sleep=clock.sleep, clock=clock)
            with client, pytest.raises(Unavailable):
                client.stats()
        assert route.call_count == 4


def test_a_short_deadline_without_a_count() -> None:
    clock = Clock()
    policy = RetryPolicy(deadline=1.0, backoff_base=0.1, backoff_max=0.2)
    attempts = Attempts(policy, RequestSpec("GET", "/x", idempotent=True), random.Random(0), clock)
    waited = 0.0
    while (delay := attempts.on_response(503, {}, b"")) is not None:
        clock.sleep(delay)
        waited += delay
    assert waited == pytest.approx(1.0)
    assert attempts.retries >= 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retries": None, "deadline": None},
        {"retries": -1},
        {"deadline": -1.0},
        {"deadline": float("nan")},
        {"backoff_max": -1.0},
    ],
)
def test_policies_that_would_never_end_or_make_no_sense_are_refused(
    kwargs: dict[str, float | None],
) -> None:
    with pytest.raises(ValueError, match=r"must|never gives up"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


async def test_the_async_client_has_the_same_deadline() -> None:
    clock = Clock()
    with respx.mock(base_url=URL) as mock:
        route = mock.post("/api/logs").mock(
            side_effect=down_until(clock, 2.5, httpx.Response(201, json=batch_result(1)))
        )
        async with AsyncLogClient(
            URL, sleep=clock.asleep, clock=clock, rng=random.Random(9)
        ) as client:
            assert (await client.log_many(["a"]))[0].count == 1
        assert len({c.request.headers["Idempotency-Key"] for c in route.calls}) == 1
        clock2 = Clock()
        mock.post("/api/log").mock(side_effect=httpx.ConnectError("refused"))
        async with AsyncLogClient(URL, sleep=clock2.asleep, clock=clock2) as client:
            with pytest.raises(Unavailable):
                await client.log("x")
    assert sum(clock2.sleeps) == pytest.approx(30.0)
