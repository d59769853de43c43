"""Passive health of the load balancer's pool: which answers eject an instance, the cap on
ejections, and panic mode (issue 15, item 2).

The rules are checked on `InstancePool` directly (a fake clock, no sockets), then panic mode
through the whole load balancer over real sockets, with tiny in-process upstream servers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from aygolog.balancing import make_strategy
from aygolog.errors import NoHealthyInstance, Unavailable
from aygolog.lb import InstancePool, PoolOptions
from aygolog.lb.outliers import Verdict, classify
from aygolog.lb.upstream import UpstreamFailure
from aygolog.models import InstanceStatus, ServiceInstance
from aygolog.registry import InMemoryServiceRegistry
from lb_support import AUTH, TinyInstance, serving, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def instance(name: str, port: int, *, expired: bool = False) -> ServiceInstance:
    now = datetime.now(UTC)
    return ServiceInstance(
        name=name,
        url=f"http://127.0.0.1:{port}",
        registered_at=now - timedelta(seconds=60),
        last_heartbeat=now,
        status=InstanceStatus.EXPIRED if expired else InstanceStatus.HEALTHY,
    )


def make_pool(n: int, clock: Clock | None = None, **opts: Any) -> InstancePool:
    pool = InstancePool(
        InMemoryServiceRegistry(),
        make_strategy("round_robin"),
        options=PoolOptions(**opts),
        clock=clock or Clock(),
    )
    pool.replace([instance(f"i{k}", 5000 + k) for k in range(n)])
    return pool


def finish(pool: InstancePool, name: str, status: int | None, error: object = None) -> None:
    pool.started(name)
    pool.finished(name, status, 0.001, error)


def metric(pool: InstancePool, line_start: str) -> float:
    for line in pool.metrics.render().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- which answers count ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "verdict"),
    [
        (None, UpstreamFailure.CONNECT_REFUSED, Verdict.CONNECT_FAILURE),
        (None, UpstreamFailure.CONNECT_TIMEOUT, Verdict.CONNECT_FAILURE),
        (None, UpstreamFailure.CONNECT_FAILED, Verdict.CONNECT_FAILURE),
        (None, "connect refused", Verdict.CONNECT_FAILURE),  # as a plain str
        (None, UpstreamFailure.RESET, Verdict.GATEWAY_FAILURE),
        (None, UpstreamFailure.TIMEOUT, Verdict.GATEWAY_FAILURE),
        (None, UpstreamFailure.INVALID_RESPONSE, Verdict.GATEWAY_FAILURE),
        (200, UpstreamFailure.RESET, Verdict.GATEWAY_FAILURE),  # cut in the middle of the body
        (502, None, Verdict.GATEWAY_FAILURE),
        (504, None, Verdict.GATEWAY_FAILURE),
        (200, None, Verdict.ANSWERED),
        (201, None, Verdict.ANSWERED),
        (304, None, Verdict.ANSWERED),
        (400, None, Verdict.ANSWERED),
        (404, None, Verdict.ANSWERED),
        (422, None, Verdict.ANSWERED),
        (429, None, Verdict.ANSWERED),
        (500, None, Verdict.ANSWERED),
        (501, None, Verdict.ANSWERED),
        (503, None, Verdict.ANSWERED),
        (499, None, Verdict.UNKNOWN),
        (None, None, Verdict.UNKNOWN),
    ],
)
def test_classify(status: int | None, error: object, verdict: Verdict) -> None:
    assert classify(status, error) is verdict


def test_answers_blaming_the_request_or_a_shared_dependency_never_eject() -> None:
    # The cascade of issue 15: six 503s (a bad cursor reaching Redis, Redis out of memory)
    # ejected all three instances and every good request then got 503.
    pool = make_pool(3)
    statuses = [400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 431, 500, 501, 503, 505, 499]
    for k in range(1000):
        finish(pool, f"i{k % 3}", statuses[k % len(statuses)])
    assert sorted(pool.routable()) == ["i0", "i1", "i2"]
    assert not pool.in_panic()
    assert [v.ejections for v in pool.views()] == [0, 0, 0]
    assert [v.recent_failures for v in pool.views()] == [0, 0, 0]
    assert "aygolog_lb_ejections_total{" not in pool.metrics.render()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (502, None),
        (504, None),
        (None, UpstreamFailure.RESET),
        (None, UpstreamFailure.TIMEOUT),
        (None, UpstreamFailure.INVALID_RESPONSE),
    ],
    ids=["502", "504", "reset", "timeout", "invalid"],
)
def test_gateway_failures_eject_after_three_in_a_row(status: int | None, error: object) -> None:
    pool = make_pool(3)
    finish(pool, "i0", status, error)
    finish(pool, "i0", status, error)
    finish(pool, "i0", 503)  # an answer: the instance is up; the streak starts again
    finish(pool, "i0", status, error)
    finish(pool, "i0", status, error)
    assert "i0" in pool.routable()
    finish(pool, "i0", status, error)
    assert "i0" not in pool.routable()
    assert {v.name: v.status for v in pool.views()}["i0"] == "ejected"


def test_a_connect_failure_ejects_at_once() -> None:
    pool = make_pool(3)
    finish(pool, "i1", None, UpstreamFailure.CONNECT_REFUSED)
    assert sorted(pool.routable()) == ["i0", "i2"]


# -- the cap ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "percent", "most"),
    [(1, 50, 1), (2, 50, 1), (3, 50, 1), (4, 50, 2), (10, 30, 3), (5, 100, 5), (4, 0, 0)],
)
def test_the_max_ejected_share_holds_when_every_instance_fails(
    n: int, percent: int, most: int
) -> None:
    pool = make_pool(n, max_ejected_fraction=percent / 100)
    for _ in range(10):
        for k in range(n):
            finish(pool, f"i{k}", None, UpstreamFailure.CONNECT_REFUSED)
            finish(pool, f"i{k}", 502)
    ejected = [v.name for v in pool.views() if v.status == "ejected"]
    assert len(ejected) == most
    assert len(pool.routable()) == n - most
    overflow = 'aygolog_lb_ejections_overflow_total{instance="'
    assert (overflow in pool.metrics.render()) == (most < n)


# -- panic mode ---------------------------------------------------------------------------


def test_panic_sends_to_every_live_instance_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    pool = make_pool(3, clock=clock)
    pool.replace(
        [*[instance(f"i{k}", 5000 + k) for k in range(3)], instance("gone", 1, expired=True)]
    )
    assert not pool.in_panic()
    assert metric(pool, "aygolog_lb_panic") == 0
    with caplog.at_level(logging.INFO, logger="aygolog.lb.pool"):
        for name in ("i0", "i1", "i2"):  # every one fails its health checks (e.g. a bad check)
            for _ in range(3):
                pool.record_probe(name, f"http://127.0.0.1:{5000 + int(name[1])}", False)
        assert pool.routable() == []
        assert pool.in_panic()
        picks = [pool.pick().name for _ in range(30)]
        assert {p: picks.count(p) for p in set(picks)} == {"i0": 10, "i1": 10, "i2": 10}
        assert pool.pick(exclude={"i0", "i1"}).name == "i2"  # a retry goes elsewhere still
        for _ in range(5):
            pool.replace([*[instance(f"i{k}", 5000 + k) for k in range(3)]])  # polls: rebuilds
        text = pool.metrics.render()
        assert "aygolog_lb_panic 1" in text
        assert metric(pool, "aygolog_lb_panic_requests_total") == 31
        assert metric(pool, "aygolog_lb_no_healthy_instance_total") == 0
        for _ in range(2):
            pool.record_probe("i1", "http://127.0.0.1:5001", True)  # one comes back
        assert not pool.in_panic()
        assert {pool.pick().name for _ in range(6)} == {"i1"}
        assert metric(pool, "aygolog_lb_panic") == 0
    panics = [r.getMessage() for r in caplog.records if "PANIC" in r.getMessage()]
    assert len(panics) == 1
    assert "0 ejected, 3 failing health checks" in panics[0]
    assert "all 3 live instances" in panics[0]
    assert len([r for r in caplog.records if "panic over" in r.getMessage()]) == 1


def test_panic_includes_ejected_instances_and_ends_when_an_ejection_does() -> None:
    clock = Clock()
    pool = make_pool(1, clock=clock)
    finish(pool, "i0", None, UpstreamFailure.CONNECT_REFUSED)
    assert pool.routable() == []
    assert pool.in_panic()
    assert pool.pick().name == "i0"
    clock.now += 5.1
    assert not pool.in_panic()
    assert pool.routable() == ["i0"]


def test_panic_ends_when_the_last_live_instance_expires(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = make_pool(1)
    finish(pool, "i0", None, UpstreamFailure.CONNECT_REFUSED)
    assert pool.in_panic()
    with caplog.at_level(logging.INFO, logger="aygolog.lb.pool"):
        pool.replace([instance("i0", 5000, expired=True)])
    assert not pool.in_panic()
    assert "panic over: no live instance left" in caplog.text
    with pytest.raises(NoHealthyInstance):
        pool.pick()


def test_no_live_instance_is_not_panic() -> None:
    pool = make_pool(0)
    pool.replace([instance("gone", 1, expired=True)])
    assert not pool.in_panic()
    with pytest.raises(Exception, match="no healthy Log API instance"):
        pool.pick()


# -- panic mode through the load balancer, over real sockets ------------------------------


async def test_every_instance_failing_its_health_check_still_serves_in_panic() -> None:
    instances = [await TinyInstance(f"api-{k}").start() for k in range(3)]
    try:
        async with serving() as (url, _app), httpx.AsyncClient(base_url=url, timeout=5) as c:
            for inst in instances:
                body = {"name": inst.name, "url": f"http://127.0.0.1:{inst.port}"}
                assert (await c.post("/api/registration", json=body, headers=AUTH)).is_success

            async def statuses(want: str) -> bool:
                listed = (await c.get("/api/registration/services")).json()
                return [s["status"] for s in listed] == [want] * 3

            await wait_for(lambda: statuses("healthy"))
            for inst in instances:
                inst.health_status = 503  # e.g. a health check that depends on a shared thing
            await wait_for(lambda: statuses("unhealthy"))
            health = (await c.get("/health")).json()
            assert (health["healthy_instances"], health["panic"]) == (0, True)
            answers = [await c.get("/api/log") for _ in range(9)]
            assert [a.status_code for a in answers] == [200] * 9
            assert sorted(a.headers["X-Served-By"] for a in answers) == sorted(
                [i.name for i in instances] * 3
            )
            metrics = (await c.get("/metrics")).text
            assert "aygolog_lb_panic 1" in metrics
            assert "aygolog_lb_panic_requests_total 9" in metrics
            instances[0].health_status = 200
            await wait_for(lambda: _healthy_count(c, 1))
            assert (await c.get("/health")).json()["panic"] is False
            answers = [await c.get("/api/log") for _ in range(4)]
            assert {a.headers["X-Served-By"] for a in answers} == {"api-0"}
    finally:
        for inst in instances:
            await inst.close()


async def _healthy_count(c: httpx.AsyncClient, n: int) -> bool:
    listed = (await c.get("/api/registration/services")).json()
    return bool(sum(s["status"] == "healthy" for s in listed) == n)


# -- a full (or down) Redis does not expire instances that keep heartbeating ----------------


class FullRegistry(InMemoryServiceRegistry):
    """A registry whose writes fail while `full`, as Redis's do when out of memory: heartbeats
    and sweeps (reads still work)."""

    full = False

    async def heartbeat(self, name: str) -> ServiceInstance:
        if self.full:
            raise Unavailable("Redis: the store is full", retry_after=1.0)
        return await super().heartbeat(name)

    async def sweep(self) -> list[str]:
        if self.full:
            raise Unavailable("Redis: the store is full", retry_after=1.0)
        return await super().sweep()


def test_a_heartbeat_heard_keeps_an_instance_the_registry_calls_expired() -> None:
    clock = Clock()
    pool = make_pool(2, clock=clock, heartbeat_ttl=6.0)
    pool.heard("i0")
    clock.now += 5
    pool.replace([instance("i0", 5000, expired=True), instance("i1", 5001, expired=True)])
    assert pool.routable() == ["i0"]
    clock.now += 1.5  # 6.5 s since i0 was heard
    pool.replace([instance("i0", 5000, expired=True), instance("i1", 5001, expired=True)])
    assert pool.routable() == []
    pool.heard("i1")  # heartbeating to this load balancer again: alive at once
    assert pool.routable() == ["i1"]


async def test_instances_heartbeating_through_a_full_redis_stay_when_it_comes_back() -> None:
    # While Redis is full no heartbeat is stored; when it has room again the first sweep finds
    # every heartbeat older than the TTL. Without the load balancer's own record of the
    # heartbeats it received, every instance expired at once then, and every request got 503
    # until each instance's next heartbeat.
    offset = [0.0]
    registry = FullRegistry(ttl=timedelta(seconds=6), clock=lambda: time.time() + offset[0])
    inst = await TinyInstance("api-1").start()
    try:
        async with (
            serving(registry=registry, registry_poll_interval=0.02, heartbeat_ttl=2) as (url, _),
            httpx.AsyncClient(base_url=url, timeout=5) as c,
        ):
            body = {"name": "api-1", "url": f"http://127.0.0.1:{inst.port}"}
            assert (await c.post("/api/registration", json=body, headers=AUTH)).is_success
            registry.full = True
            for _ in range(5):  # 10 s of heartbeats that cannot be stored
                offset[0] += 2
                beat = await c.put("/api/registration/api-1/heartbeat", headers=AUTH)
                assert beat.status_code == 503
                assert (await c.get("/api/log")).status_code == 200
            registry.full = False  # the next polls sweep: the stored heartbeat is 10 s old
            await wait_for(lambda: _swept(registry))
            for _ in range(10):
                answer = await c.get("/api/log")
                assert answer.status_code == 200, answer.text
                (listed,) = (await c.get("/api/registration/services")).json()
                assert listed["status"] == "healthy"
                await asyncio.sleep(0.02)
            offset[0] += 7  # and when the heartbeats stop for good, it does expire
            await wait_for(lambda: _status(c, "expired"), within=8)
    finally:
        await inst.close()


async def _swept(registry: FullRegistry) -> bool:
    return [i.status for i in await registry.instances()] == [InstanceStatus.EXPIRED]


async def _status(c: httpx.AsyncClient, status: str) -> bool:
    (listed,) = (await c.get("/api/registration/services")).json()
    return bool(listed["status"] == status)
